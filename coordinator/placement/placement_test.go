package placement

import (
	"errors"
	"testing"

	"github.com/callscribe/callscribe/agent/gpu"
	"github.com/callscribe/callscribe/agent/gpu/gpusim"
)

// dgx builds a node from go-nvml's simulated DGX A100, with per-GPU
// utilisation and temperature set on the simulator.
func dgx(t *testing.T, id string, set func(s *gpusim.Server)) Node {
	t.Helper()
	sim, err := gpusim.New("dgxa100")
	if err != nil {
		t.Fatal(err)
	}
	if set != nil {
		set(sim)
	}
	c, err := gpu.New(sim)
	if err != nil {
		t.Fatal(err)
	}
	devs, err := c.Devices()
	if err != nil {
		t.Fatal(err)
	}
	n := Node{ID: id, CPUs: 64, MemMB: 512 << 10}
	for _, d := range devs {
		g := GPU{UUID: d.UUID, MemTotalMB: d.MemTotalMB, MemFreeMB: d.MemFreeMB, Healthy: d.Healthy}
		if d.UtilPct != nil {
			g.UtilPct = *d.UtilPct
		}
		if d.TempC != nil {
			g.TempC = *d.TempC
		}
		n.GPUs = append(n.GPUs, g)
	}
	return n
}

var (
	bigModel = Needs{GPUMemMB: 16000, CPU: 2, MemMB: 2000}
	cpuModel = Needs{CPU: 1, MemMB: 110}
)

func TestPlace(t *testing.T) {
	cases := []struct {
		name     string
		nodes    func(t *testing.T) []Node
		placed   func(ns []Node) []Instance
		need     Needs
		wantNode string
		wantGPU  int // index in that node's GPUs; -1 for CPU; -2 any GPU of the node
		notGPU   int // with -2: an index that must not be chosen (-1: none)
		degraded bool
		err      error
	}{
		{
			name: "least busy GPU wins",
			nodes: func(t *testing.T) []Node {
				return []Node{dgx(t, "a", func(s *gpusim.Server) { allBusy(s, 50); s.Set(5, 10, 40, 0) })}
			},
			need:     bigModel,
			wantNode: "a", wantGPU: 5,
		},
		{
			name: "cooler GPU breaks a utilisation tie",
			nodes: func(t *testing.T) []Node {
				return []Node{dgx(t, "a", func(s *gpusim.Server) { allBusy(s, 30); s.Set(2, 0, 70, 0); s.Set(6, 0, 45, 0) })}
			},
			need:     bigModel,
			wantNode: "a", wantGPU: 6,
		},
		{
			name: "instances share a GPU while memory allows",
			nodes: func(t *testing.T) []Node {
				return []Node{dgx(t, "a", func(s *gpusim.Server) { allBusy(s, 90); s.Set(0, 0, 30, 0) })}
			},
			placed: func(ns []Node) []Instance {
				return []Instance{{Node: "a", GPU: ns[0].GPUs[0].UUID, MemMB: 16000}}
			},
			need:     bigModel,
			wantNode: "a", wantGPU: 0,
		},
		{
			name: "a full GPU is passed over",
			nodes: func(t *testing.T) []Node {
				return []Node{dgx(t, "a", func(s *gpusim.Server) { allBusy(s, 90); s.Set(0, 0, 30, 0) })}
			},
			placed: func(ns []Node) []Instance {
				return []Instance{{Node: "a", GPU: ns[0].GPUs[0].UUID, MemMB: 30000}}
			},
			need:     bigModel,
			wantNode: "a", wantGPU: -2, notGPU: 0,
		},
		{
			name: "never an unhealthy GPU",
			nodes: func(t *testing.T) []Node {
				n := dgx(t, "a", func(s *gpusim.Server) { allBusy(s, 50); s.Set(3, 0, 30, 0); s.Set(4, 5, 30, 0) })
				n.GPUs[3].Healthy = false
				return []Node{n}
			},
			need:     bigModel,
			wantNode: "a", wantGPU: 4,
		},
		{
			name: "never an excluded GPU",
			nodes: func(t *testing.T) []Node {
				n := dgx(t, "a", func(s *gpusim.Server) { allBusy(s, 50); s.Set(3, 0, 30, 0); s.Set(4, 5, 30, 0) })
				n.GPUs[3].Excluded = "driver below profile"
				return []Node{n}
			},
			need:     bigModel,
			wantNode: "a", wantGPU: 4,
		},
		{
			name: "never a draining node",
			nodes: func(t *testing.T) []Node {
				a := dgx(t, "a", nil)
				a.Draining = true
				return []Node{a, dgx(t, "b", func(s *gpusim.Server) { allBusy(s, 80) })}
			},
			need:     bigModel,
			wantNode: "b", wantGPU: -2, notGPU: -1,
		},
		{
			name: "no GPU fits: degraded to CPU, never dropped",
			nodes: func(t *testing.T) []Node {
				n := dgx(t, "a", func(s *gpusim.Server) {
					for i := range 8 {
						s.Set(i, 50, 50, 39<<30)
					}
				})
				return []Node{n}
			},
			need:     bigModel,
			wantNode: "a", wantGPU: -1, degraded: true,
		},
		{
			name: "CPU model goes to the node with most free CPU",
			nodes: func(t *testing.T) []Node {
				return []Node{{ID: "small", CPUs: 2, MemMB: 4000}, {ID: "big", CPUs: 16, MemMB: 32000}}
			},
			placed:   func([]Node) []Instance { return []Instance{{Node: "big", CPU: 13, MemMB: 1000}} },
			need:     cpuModel,
			wantNode: "big", wantGPU: -1,
		},
		{
			name:  "nothing fits",
			nodes: func(t *testing.T) []Node { return []Node{{ID: "tiny", CPUs: 1, MemMB: 100}} },
			need:  cpuModel,
			err:   ErrNoCapacity,
		},
		{
			name: "lost nodes are skipped",
			nodes: func(t *testing.T) []Node {
				return []Node{{ID: "gone", CPUs: 64, MemMB: 64000, Lost: true}, {ID: "here", CPUs: 2, MemMB: 4000}}
			},
			need:     cpuModel,
			wantNode: "here", wantGPU: -1,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ns := c.nodes(t)
			var placed []Instance
			if c.placed != nil {
				placed = c.placed(ns)
			}
			d, err := Place(ns, placed, c.need, cpuModel)
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("want %v, got %+v %v", c.err, d, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wantGPU := ""
			for _, n := range ns {
				if n.ID != c.wantNode {
					continue
				}
				switch {
				case c.wantGPU >= 0:
					wantGPU = n.GPUs[c.wantGPU].UUID
				case c.wantGPU == -2:
					wantGPU = d.GPU
					if d.GPU == "" || c.notGPU >= 0 && d.GPU == n.GPUs[c.notGPU].UUID {
						t.Fatalf("got %+v", d)
					}
				}
			}
			if d.Node != c.wantNode || d.GPU != wantGPU || d.Degraded != c.degraded || d.Reason == "" {
				t.Fatalf("got %+v, want node %s gpu %q degraded %v", d, c.wantNode, wantGPU, c.degraded)
			}
		})
	}
}

// Filling a simulated rack: instances spread over GPUs, two per 40 GB GPU
// for a 16 GB model, then fall back to CPU.
func TestFillARack(t *testing.T) {
	ns := []Node{dgx(t, "a", nil), dgx(t, "b", nil)}
	var placed []Instance
	perGPU := map[string]int{}
	for i := range 40 {
		d, err := Place(ns, placed, bigModel, cpuModel)
		if err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
		if i < 32 && (d.GPU == "" || d.Degraded) {
			t.Fatalf("instance %d went to CPU while GPUs had room: %+v", i, d)
		}
		if i >= 32 && (d.GPU != "" || !d.Degraded) {
			t.Fatalf("instance %d: %+v, want degraded CPU", i, d)
		}
		in := Instance{Node: d.Node, GPU: d.GPU, MemMB: bigModel.GPUMemMB}
		if d.GPU == "" {
			in = Instance{Node: d.Node, CPU: cpuModel.CPU, MemMB: cpuModel.MemMB}
		}
		placed = append(placed, in)
		perGPU[d.GPU]++
	}
	for g, n := range perGPU {
		if g != "" && n != 2 {
			t.Errorf("GPU %s holds %d instances, want 2", g, n)
		}
	}
}

func allBusy(s *gpusim.Server, util uint32) {
	for i := range 8 {
		s.Set(i, util, 50, 0)
	}
}
