package agent

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/callscribe/callscribe/agent/firmware"
	"github.com/callscribe/callscribe/agent/gpu"
	"github.com/callscribe/callscribe/agent/gpu/gpusim"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func simAgent(t *testing.T, profile string, apply bool, tweak func(*gpu.NVML)) (*Agent, *syncBuf) {
	t.Helper()
	s, _ := gpusim.New("dgxa100")
	n, err := gpu.New(s)
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(n)
	}
	p, err := firmware.Load("../firmware-configs/" + profile + ".toml")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{}
	a, err := New(Config{NodeID: "n1", GPUs: n, Profile: p, Apply: apply, StateDir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return a, logs
}

func TestProfileComplianceIsReported(t *testing.T) {
	a, _ := simAgent(t, "a100-sxm-40", false, nil)
	for _, g := range a.gpuList() {
		if g.Excluded != "" {
			t.Fatalf("GPU %s excluded under its own profile: %s", g.UUID, g.Excluded)
		}
	}
	b, logs := simAgent(t, "h100-sxm", false, nil)
	gs := b.gpuList()
	if len(gs) != 8 {
		t.Fatalf("%d GPUs", len(gs))
	}
	for _, g := range gs {
		if !strings.Contains(g.Excluded, "model") {
			t.Fatalf("an A100 under the H100 profile not excluded: %+v", g)
		}
	}
	if n := strings.Count(logs.String(), "breaks the node profile"); n != 8 {
		t.Fatalf("want one warning per GPU (logged on change only), got %d", n)
	}
}

func TestApplySetsWhatNVMLCan(t *testing.T) {
	var uuid string
	a, logs := simAgent(t, "a100-sxm-40", true, func(n *gpu.NVML) {
		ds, _ := n.Devices()
		uuid = ds[4].UUID
		off := false
		n.Apply(uuid, gpu.Settings{Persistence: &off, PowerLimitW: 250})
	})
	for _, g := range a.gpuList() {
		if g.Excluded != "" {
			t.Fatalf("--apply left %s non-compliant: %s", g.UUID, g.Excluded)
		}
	}
	if !strings.Contains(logs.String(), uuid+": power limit set to 400 W") || !strings.Contains(logs.String(), uuid+": persistence mode set to true") {
		t.Fatalf("apply not reported:\n%s", logs.String())
	}
}

func TestProbeReadsGPUsAndHost(t *testing.T) {
	a, _ := simAgent(t, "h100-sxm", false, nil)
	p := a.Probe(t.Context())
	if p.Node != "n1" || p.Profile != "h100-sxm" || p.CPUOnly != "" {
		t.Fatalf("probe header: %+v", p)
	}
	if p.Driver == "" || len(p.GPUs) != 8 {
		t.Fatalf("driver %q, %d GPUs", p.Driver, len(p.GPUs))
	}
	for _, g := range p.GPUs {
		if g.MemTotalMB == 0 || g.TempC == nil || g.Excluded == "" {
			t.Fatalf("GPU reading incomplete or A100 not excluded under the H100 profile: %+v", g)
		}
	}
	if p.Host.CPUs == 0 || p.Host.MemTotalMB == 0 || p.Host.DiskTotalMB == 0 {
		t.Fatalf("host not read: %+v", p.Host)
	}
}
