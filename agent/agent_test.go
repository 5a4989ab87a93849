package agent

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/agent/firmware"
	"github.com/callscribe/callscribe/agent/gpu"
	"github.com/callscribe/callscribe/agent/gpu/gpusim"
	"github.com/callscribe/callscribe/internal/leader/leadertest"
	"github.com/callscribe/callscribe/proto"
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

// redirectAgent is an agent on a simulated GPU server that reaches the
// coordinators at addrs, logging into logs.
func redirectAgent(t *testing.T, p *leadertest.PKI, addrs ...string) (*Agent, *syncBuf) {
	t.Helper()
	s, _ := gpusim.New("dgxa100")
	n, err := gpu.New(s)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{}
	a, err := New(Config{NodeID: "n1", Coordinators: addrs, CAFile: p.CAFile, ServerName: "localhost", Token: "node-token", GPUs: n,
		WorkerCommand: []string{"/usr/bin/callscribe", "worker"}, StateDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return a, logs
}

// An agent given only a follower's address registers with the leader the
// follower names, and starts its workers with every coordinator it now
// knows.
func TestAgentFollowsTheLeader(t *testing.T) {
	p := leadertest.NewPKI(t)
	hellos := make(chan proto.AgentHello, 4)
	ls := leadertest.Serve(t, p, proto.ALPNNode, func(ctx context.Context, first proto.Msg, r *proto.Reader, w *proto.Writer) {
		var h proto.AgentHello
		if first.Type != proto.TAgentHello || proto.Unmarshal(first, &h) != nil {
			return
		}
		if w.WriteJSON(proto.TAgentWelcome, proto.AgentWelcome{Version: proto.Version, IntervalMS: 50, TTLMS: 1000}) != nil {
			return
		}
		hellos <- h
		for { // heartbeats until the agent stops
			if _, err := r.Read(); err != nil {
				return
			}
		}
	})
	fol := leadertest.Follower(t, p, proto.ALPNNode, func() *proto.Error { return proto.NotLeader(ls.Addr, []string{ls.Addr, "127.0.0.1:9"}) })
	a, logs := redirectAgent(t, p, fol.Addr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case h := <-hellos:
		if h.NodeID != "n1" || h.Token != "node-token" {
			t.Errorf("the leader got %+v", h)
		}
	case err := <-done:
		t.Fatalf("agent stopped: %v\n%s", err, logs.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("the agent never registered with the leader:\n%s", logs.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if f := fol.Firsts(); len(f) != 1 || f[0].Type != proto.TAgentHello {
		t.Fatalf("the follower got %v", f)
	}
	spec := a.workerSpec(proto.Command{Op: proto.OpStartWorker, WorkerID: "w1", Model: "m"})
	i := slices.Index(spec.Args, "--coordinator")
	if want := fol.Addr + "," + ls.Addr + ",127.0.0.1:9"; i < 0 || spec.Args[i+1] != want {
		t.Fatalf("worker args %q, want --coordinator %s", spec.Args, want)
	}
}

// An agent given only dead coordinators says so, naming each, and keeps
// trying until it is stopped.
func TestAgentNoCoordinatorReachable(t *testing.T) {
	p := leadertest.NewPKI(t)
	d1, d2 := leadertest.DeadAddr(t), leadertest.DeadAddr(t)
	a, logs := redirectAgent(t, p, d1, d2)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	want := "no coordinator reachable at " + d1 + ", " + d2
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), want) {
		select {
		case err := <-done:
			t.Fatalf("agent gave up: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("no %q in the log:\n%s", want, logs.String())
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}

func TestAgentNeedsACoordinator(t *testing.T) {
	p := leadertest.NewPKI(t)
	a, _ := redirectAgent(t, p)
	if err := a.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "no coordinator address") {
		t.Fatalf("got %v", err)
	}
}
