package rack

import (
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/agent/gpu"
	"github.com/callscribe/callscribe/agent/gpu/gpusim"
	"github.com/callscribe/callscribe/coordinator/scaling"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/proto"
)

const gpuModel = `name = "big-gpu"
engine = "pocketsphinx"
language = "en-US"
sample_rate = 16000
[files]
hmm = "/x"
dict = "/y"
[resources]
gpu_memory_mb = 16000
cpu_threads = 2
memory_mb = 2000
streams_per_instance = 8
`

type nopObserver struct{}

func (nopObserver) Placed(string)       {}
func (nopObserver) WorkerUnresponsive() {}

type sent struct {
	mu   sync.Mutex
	cmds []proto.Command
	to   []proto.NodeID
}

func (s *sent) take() ([]proto.Command, []proto.NodeID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, t := s.cmds, s.to
	s.cmds, s.to = nil, nil
	return c, t
}

// rack builds a coordinator without network: nodes are simulated DGX A100s
// whose agents record the commands they are sent.
func rack(t *testing.T, pol map[string]scaling.Policy, nodes ...string) (*Rack, *sent) {
	t.Helper()
	cat, err := models.Load("")
	if err != nil {
		t.Fatal(err)
	}
	m, err := models.Parse("big-gpu.toml", []byte(gpuModel))
	if err != nil {
		t.Fatal(err)
	}
	cat[m.Name] = m
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	c := &Rack{cfg: Config{Models: cat, Scaling: pol}, log: log, reg: newRegistry(log), obs: nopObserver{}}
	out := &sent{}
	for _, id := range nodes {
		sim, _ := gpusim.New("dgxa100")
		col, _ := gpu.New(sim)
		gs, _ := col.Devices()
		nid := proto.NodeID(id)
		c.reg.nodes[nid] = &node{id: nid, lastSeen: time.Now(),
			hello: proto.AgentHello{NodeID: nid, GPUs: gs, Host: proto.Host{Hostname: id, CPUs: 8, MemTotalMB: 64000}},
			last:  proto.Heartbeat{GPUs: gs, Host: proto.Host{Hostname: id, CPUs: 8, MemTotalMB: 64000}},
			send: func(cmd proto.Command) error {
				out.mu.Lock()
				defer out.mu.Unlock()
				out.cmds, out.to = append(out.cmds, cmd), append(out.to, nid)
				return nil
			}}
	}
	return c, out
}

func TestReconcileStartsTheMinimumOnCPU(t *testing.T) {
	c, out := rack(t, map[string]scaling.Policy{models.Default: {Min: 3}}, "a")
	c.reconcile(time.Unix(100, 0))
	cmds, _ := out.take()
	if len(cmds) != 3 {
		t.Fatalf("want 3 starts, got %+v", cmds)
	}
	for _, cmd := range cmds {
		if cmd.Op != proto.OpStartWorker || cmd.Model != models.Default || cmd.GPU != "" {
			t.Fatalf("bad command %+v", cmd)
		}
	}
	c.reconcile(time.Unix(101, 0))
	if cmds, _ := out.take(); len(cmds) != 0 {
		t.Fatalf("steady state sent %+v", cmds)
	}
}

func TestUnhealthyGPUWorkerIsReplacedOnAnotherGPU(t *testing.T) {
	c, out := rack(t, map[string]scaling.Policy{"big-gpu": {Min: 1}}, "a")
	c.reconcile(time.Unix(100, 0))
	cmds, _ := out.take()
	if len(cmds) != 1 || cmds[0].GPU == "" || cmds[0].Model != "big-gpu" {
		t.Fatalf("want one start on a GPU, got %+v", cmds)
	}
	bad, id := cmds[0].GPU, cmds[0].WorkerID
	n := c.reg.nodes["a"]
	for i := range n.last.GPUs {
		if n.last.GPUs[i].UUID == bad {
			n.last.GPUs[i].Healthy, n.last.GPUs[i].Unhealthy = false, "XID 79"
		}
	}
	c.reconcile(time.Unix(101, 0))
	cmds, _ = out.take()
	if len(cmds) != 2 || cmds[0].Op != proto.OpStopWorker || cmds[0].WorkerID != id {
		t.Fatalf("want stop of %s then a start, got %+v", id, cmds)
	}
	if cmds[1].Op != proto.OpStartWorker || cmds[1].GPU == "" || cmds[1].GPU == bad {
		t.Fatalf("replacement %+v must be on another GPU than %s", cmds[1], bad)
	}
}

func TestDrainMovesWorkersAndLostNodesAreNotSent(t *testing.T) {
	c, out := rack(t, map[string]scaling.Policy{models.Default: {Min: 2}}, "a", "b")
	c.reconcile(time.Unix(100, 0))
	_, to := out.take()
	if len(to) != 2 || to[0] == to[1] { // CPU instances spread over nodes
		t.Fatalf("placements went to %v", to)
	}
	c.reg.draining["a"] = true
	c.reconcile(time.Unix(101, 0))
	cmds, to := out.take()
	stops, starts := 0, 0
	for i, cmd := range cmds {
		switch {
		case cmd.Op == proto.OpStopWorker && to[i] == "a":
			stops++
		case cmd.Op == proto.OpStartWorker && to[i] == "b":
			starts++
		default:
			t.Fatalf("unexpected %s to %s", cmd.Op, to[i])
		}
	}
	if stops != 1 || starts != 1 {
		t.Fatalf("drain: %d stops on a, %d starts on b", stops, starts)
	}
	c.reg.nodes["b"].lost = true
	c.reg.draining["a"] = false
	c.reconcile(time.Unix(102, 0))
	cmds, to = out.take()
	for i := range cmds {
		if to[i] == "b" {
			t.Fatalf("command sent to a lost node: %+v", cmds[i])
		}
	}
	if len(cmds) != 2 {
		t.Fatalf("want 2 replacements on a, got %+v", cmds)
	}
}

func TestGPUModelDegradesToCPUWhenNoGPUFits(t *testing.T) {
	c, out := rack(t, map[string]scaling.Policy{"big-gpu": {Min: 1}}, "a")
	n := c.reg.nodes["a"]
	for i := range n.last.GPUs {
		n.last.GPUs[i].Healthy = false
	}
	c.reconcile(time.Unix(100, 0))
	cmds, _ := out.take()
	if len(cmds) != 1 || cmds[0].GPU != "" || cmds[0].Model != models.Default {
		t.Fatalf("want a degraded CPU start of %s, got %+v", models.Default, cmds)
	}
}
