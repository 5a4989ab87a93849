// Package placement decides where worker instances run. It is pure: given
// the nodes (their GPUs, health and load), the instances already placed and
// what a model needs, it returns a decision and why. The coordinator feeds
// it what agents report; tests feed it go-nvml's simulated servers.
package placement

import (
	"errors"
	"fmt"
	"sort"
)

// GPU is one GPU as placement sees it.
type GPU struct {
	UUID       string
	MemTotalMB uint64
	MemFreeMB  uint64
	UtilPct    uint32
	TempC      uint32
	Healthy    bool
	// Excluded is why the GPU must not be used (non-compliant with its
	// node-class profile, say); "" when it may.
	Excluded string
}

// Node is one server.
type Node struct {
	ID       string
	Draining bool
	Lost     bool
	CPUs     int
	MemMB    uint64 // available memory
	GPUs     []GPU
}

// Instance is a worker instance already placed (or being started).
type Instance struct {
	Node  string
	GPU   string // "" for a CPU instance
	MemMB uint64 // GPU memory for GPU instances, host memory for CPU ones
	CPU   int    // CPU threads
}

// Needs is what one instance of a model takes.
type Needs struct {
	GPUMemMB uint64 // 0: a CPU engine
	CPU      int
	MemMB    uint64
}

// Decision is where to start an instance.
type Decision struct {
	Node string
	GPU  string // "" means CPU
	// Degraded is set when a GPU model falls back to a CPU engine because
	// no GPU fits: calls keep flowing, slower.
	Degraded bool
	Reason   string
}

// ErrNoCapacity means nothing can hold another instance.
var ErrNoCapacity = errors.New("placement: no capacity")

// Place chooses where the next instance goes. A GPU model goes to the
// healthy GPU with room for it (free memory after what is already placed),
// preferring low utilisation, then low temperature, then most room; several
// instances share a GPU while memory allows. When no GPU fits, or for a CPU
// model, it goes to the node with the most free CPU. Draining and lost nodes
// and unhealthy or excluded GPUs are never used. cpuFallback is what a CPU
// instance of the fallback engine needs.
func Place(nodes []Node, placed []Instance, need Needs, cpuFallback Needs) (Decision, error) {
	gpuUsed := map[string]uint64{}
	cpuUsed := map[string]int{}
	memUsed := map[string]uint64{}
	for _, in := range placed {
		if in.GPU != "" {
			gpuUsed[in.GPU] += in.MemMB
		} else {
			cpuUsed[in.Node] += in.CPU
			memUsed[in.Node] += in.MemMB
		}
	}
	var why []string
	fellBack := false
	if need.GPUMemMB > 0 {
		type cand struct {
			node string
			g    GPU
			room uint64
		}
		var cs []cand
		for _, n := range nodes {
			if n.Draining || n.Lost {
				continue
			}
			for _, g := range n.GPUs {
				switch {
				case !g.Healthy:
					why = append(why, fmt.Sprintf("%s/%s unhealthy", n.ID, short(g.UUID)))
					continue
				case g.Excluded != "":
					why = append(why, fmt.Sprintf("%s/%s excluded: %s", n.ID, short(g.UUID), g.Excluded))
					continue
				}
				room := roomOn(g, gpuUsed[g.UUID])
				if room < need.GPUMemMB {
					why = append(why, fmt.Sprintf("%s/%s has %d MB free, needs %d", n.ID, short(g.UUID), room, need.GPUMemMB))
					continue
				}
				cs = append(cs, cand{n.ID, g, room})
			}
		}
		if len(cs) > 0 {
			sort.Slice(cs, func(i, j int) bool {
				a, b := cs[i], cs[j]
				if a.g.UtilPct != b.g.UtilPct {
					return a.g.UtilPct < b.g.UtilPct
				}
				if a.g.TempC != b.g.TempC {
					return a.g.TempC < b.g.TempC
				}
				if a.room != b.room {
					return a.room > b.room
				}
				if a.node != b.node {
					return a.node < b.node
				}
				return a.g.UUID < b.g.UUID
			})
			c := cs[0]
			return Decision{Node: c.node, GPU: c.g.UUID, Reason: fmt.Sprintf("GPU %s on %s: %d%% busy, %d°C, %d MB free after placement",
				short(c.g.UUID), c.node, c.g.UtilPct, c.g.TempC, c.room-need.GPUMemMB)}, nil
		}
		need, fellBack = cpuFallback, true
	}
	type cpuCand struct {
		node string
		free int
	}
	var cs []cpuCand
	for _, n := range nodes {
		if n.Draining || n.Lost {
			continue
		}
		free := n.CPUs - cpuUsed[n.ID]
		if free < need.CPU {
			why = append(why, fmt.Sprintf("%s: %d CPU threads free, needs %d", n.ID, free, need.CPU))
			continue
		}
		if memUsed[n.ID]+need.MemMB > n.MemMB {
			why = append(why, fmt.Sprintf("%s: %d MB memory free, needs %d", n.ID, n.MemMB-min(n.MemMB, memUsed[n.ID]), need.MemMB))
			continue
		}
		cs = append(cs, cpuCand{n.ID, free})
	}
	if len(cs) == 0 {
		return Decision{}, fmt.Errorf("%w: %v", ErrNoCapacity, why)
	}
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].free != cs[j].free {
			return cs[i].free > cs[j].free
		}
		return cs[i].node < cs[j].node
	})
	d := Decision{Node: cs[0].node, Reason: fmt.Sprintf("CPU on %s: %d threads free", cs[0].node, cs[0].free)}
	if fellBack {
		d.Degraded = true
		d.Reason += " (degraded: no GPU fits: " + fmt.Sprint(why) + ")"
	}
	return d, nil
}

// roomOn is a GPU's memory left for new instances: what the device reports
// free, but never more than its total less what is already placed (an
// instance just started may not show in the readings yet).
func roomOn(g GPU, placedMB uint64) uint64 {
	byPlan := uint64(0)
	if g.MemTotalMB > placedMB {
		byPlan = g.MemTotalMB - placedMB
	}
	return min(g.MemFreeMB, byPlan)
}

func short(uuid string) string {
	if len(uuid) > 12 {
		return uuid[:12]
	}
	return uuid
}
