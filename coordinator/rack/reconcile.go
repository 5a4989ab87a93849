package rack

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/callscribe/callscribe/coordinator/placement"
	"github.com/callscribe/callscribe/coordinator/scaling"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/proto"
)

// plannedWorker is a worker instance the coordinator has placed (or
// adopted): it should be running on its node.
type plannedWorker struct {
	id       proto.WorkerID
	node     proto.NodeID
	gpu      string
	model    string
	needs    placement.Needs
	since    time.Time
	degraded bool
}

func needsOf(m *models.Manifest) placement.Needs {
	return placement.Needs{GPUMemMB: uint64(m.Resources.GPUMemoryMB), CPU: max(m.Resources.CPUThreads, 0), MemMB: uint64(m.Resources.MemoryMB)}
}

// kickReconcile asks for a reconcile round soon.
func (r *registry) kickReconcile() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// placementViewLocked builds placement's picture of the rack. Caller holds reg.mu.
func (c *Rack) placementViewLocked() ([]placement.Node, []placement.Instance) {
	var ns []placement.Node
	for _, n := range c.reg.nodes {
		host := n.last.Host
		if host.Hostname == "" {
			host = n.hello.Host
		}
		mem := host.MemTotalMB
		if mem > tuning.NodeMemReserveMB {
			mem -= tuning.NodeMemReserveMB
		}
		pn := placement.Node{ID: string(n.id), Draining: c.reg.draining[n.id], Lost: n.lost, CPUs: host.CPUs, MemMB: mem}
		gpus := n.last.GPUs
		if gpus == nil {
			gpus = n.hello.GPUs
		}
		for _, g := range gpus {
			pg := placement.GPU{UUID: g.UUID, MemTotalMB: g.MemTotalMB, MemFreeMB: g.MemFreeMB, Healthy: g.Healthy, Excluded: g.Excluded}
			if g.UtilPct != nil {
				pg.UtilPct = *g.UtilPct
			}
			if g.TempC != nil {
				pg.TempC = *g.TempC
			}
			pn.GPUs = append(pn.GPUs, pg)
		}
		ns = append(ns, pn)
	}
	sort.Slice(ns, func(i, j int) bool { return ns[i].ID < ns[j].ID })
	var in []placement.Instance
	for _, p := range c.reg.planned {
		pi := placement.Instance{Node: string(p.node), GPU: p.gpu, CPU: p.needs.CPU, MemMB: p.needs.MemMB}
		if p.gpu != "" {
			pi.MemMB = p.needs.GPUMemMB
		}
		in = append(in, pi)
	}
	return ns, in
}

type nodeCommand struct {
	node proto.NodeID
	cmd  proto.Command
}

// reconcile runs one round: workers on draining nodes or unhealthy GPUs are
// stopped (their calls move), and each model's policy adds or removes
// instances. Every change is logged with its reason.
func (c *Rack) reconcile(now time.Time) {
	var cmds []nodeCommand
	c.reg.mu.Lock()
	unhealthy := map[string]string{}
	for _, n := range c.reg.nodes {
		for _, g := range n.last.GPUs {
			switch {
			case !g.Healthy:
				unhealthy[g.UUID] = g.Unhealthy
			case g.Excluded != "":
				unhealthy[g.UUID] = "excluded by the node profile: " + g.Excluded
			}
		}
	}
	for id, p := range c.reg.planned {
		n := c.reg.nodes[p.node]
		var why string
		switch {
		case n == nil || n.lost:
			why = "node lost"
		case c.reg.draining[p.node]:
			why = "node draining"
		case p.gpu != "" && unhealthy[p.gpu] != "":
			why = "GPU unhealthy: " + unhealthy[p.gpu]
		}
		if why == "" {
			continue
		}
		delete(c.reg.planned, id)
		c.reg.lastChange[p.model] = now
		c.log.Warn("scaling: worker withdrawn, its calls move", "worker", id, "node", p.node, "why", why)
		if n != nil && !n.lost {
			cmds = append(cmds, nodeCommand{p.node, proto.Command{Op: proto.OpStopWorker, WorkerID: id}})
		}
	}
	for _, name := range c.cfg.Models.Names() {
		pol, ok := c.cfg.Scaling[name]
		if !ok {
			continue
		}
		m, _ := c.cfg.Models.Get(name)
		cmds = append(cmds, c.scaleModelLocked(m, pol, now)...)
	}
	c.reg.mu.Unlock()
	c.send(cmds)
}

func (c *Rack) scaleModelLocked(m *models.Manifest, pol scaling.Policy, now time.Time) []nodeCommand {
	st := scaling.State{Slots: m.Resources.StreamsPerInstance, LastChange: c.reg.lastChange[m.Name]}
	for _, p := range c.reg.planned {
		if p.model == m.Name {
			st.Instances++
		}
	}
	// Only the policy's own instances count: a worker started by hand is
	// neither capacity nor load for it.
	var idle []*workerConn
	for _, w := range c.reg.workers {
		if _, planned := c.reg.planned[w.hello.WorkerID]; !planned || w.hello.Model != m.Name || w.closed {
			continue
		}
		st.Used += w.used
		if w.used == 0 {
			idle = append(idle, w)
		}
	}
	st.IdleInstance = len(idle)
	nodes, placed := c.placementViewLocked()
	// N+1: with two or more usable nodes, the idle slots that count are
	// those that would survive losing the node holding the most slots.
	usable := 0
	for _, n := range nodes {
		if !n.Draining && !n.Lost {
			usable++
		}
	}
	if usable >= 2 {
		slots, used := map[proto.NodeID]int{}, map[proto.NodeID]int{}
		for _, p := range c.reg.planned {
			if p.model == m.Name {
				slots[p.node] += st.Slots
			}
		}
		for _, w := range c.reg.workers {
			if p, ok := c.reg.planned[w.hello.WorkerID]; ok && p.model == m.Name {
				used[p.node] += w.used
			}
		}
		var biggest proto.NodeID
		for n, k := range slots {
			if k > slots[biggest] || k == slots[biggest] && n < biggest {
				biggest = n
			}
		}
		st.NodeLossAware = true
		st.SpareIdle = (st.Instances*st.Slots - st.Used) - (slots[biggest] - used[biggest])
	}
	need, fallback := needsOf(m), c.fallbackNeeds()
	// Capacity: how many more instances fit (CPU fallback included).
	sim := append([]placement.Instance(nil), placed...)
	for st.Capacity < tuning.MaxCapacityProbe {
		d, err := placement.Place(nodes, sim, need, fallback)
		if err != nil {
			break
		}
		sim = append(sim, instanceOf(d, need, fallback))
		st.Capacity++
	}
	d := pol.Decide(st, now)
	if d.Reason != c.reg.lastReason[m.Name] {
		lvl := c.log.Debug
		if d.Delta != 0 {
			lvl = c.log.Info
		}
		lvl("scaling decision", "model", m.Name, "delta", d.Delta, "reason", d.Reason, "instances", st.Instances, "used_slots", st.Used)
		c.reg.lastReason[m.Name] = d.Reason
	}
	var cmds []nodeCommand
	switch {
	case d.Delta > 0:
		for range d.Delta {
			dec, err := placement.Place(nodes, placed, need, fallback)
			if err != nil {
				c.log.Warn("scaling: nothing can hold another instance", "model", m.Name, "err", err)
				break
			}
			model := m.Name
			if dec.Degraded {
				model = models.Default
			}
			id := c.newWorkerIDLocked(proto.NodeID(dec.Node))
			p := &plannedWorker{id: id, node: proto.NodeID(dec.Node), gpu: dec.GPU, model: model, needs: need, since: now, degraded: dec.Degraded}
			if dec.GPU == "" {
				p.needs = fallback
				if !dec.Degraded {
					p.needs = need
				}
			}
			c.reg.planned[id] = p
			placed = append(placed, instanceOf(dec, need, fallback))
			kind := "cpu"
			switch {
			case dec.Degraded:
				kind = "degraded"
			case dec.GPU != "":
				kind = "gpu"
			}
			c.obs.Placed(kind)
			c.log.Info("scaling: starting worker", "worker", id, "model", model, "node", dec.Node, "gpu", dec.GPU, "degraded", dec.Degraded, "why", dec.Reason)
			cmds = append(cmds, nodeCommand{p.node, proto.Command{Op: proto.OpStartWorker, WorkerID: id, Model: model, GPU: dec.GPU}})
		}
		c.reg.lastChange[m.Name] = now
	case d.Delta < 0 && len(idle) > 0:
		// Stop the youngest idle instance (degraded ones first).
		sort.Slice(idle, func(i, j int) bool {
			pi, pj := c.reg.planned[idle[i].hello.WorkerID], c.reg.planned[idle[j].hello.WorkerID]
			if pi.degraded != pj.degraded {
				return pi.degraded
			}
			return pi.since.After(pj.since)
		})
		w := idle[0]
		delete(c.reg.planned, w.hello.WorkerID)
		c.reg.lastChange[m.Name] = now
		c.log.Info("scaling: stopping idle worker", "worker", w.hello.WorkerID, "node", w.hello.NodeID, "why", d.Reason)
		cmds = append(cmds, nodeCommand{w.hello.NodeID, proto.Command{Op: proto.OpStopWorker, WorkerID: w.hello.WorkerID}})
	}
	return cmds
}

func instanceOf(d placement.Decision, need, fallback placement.Needs) placement.Instance {
	if d.GPU != "" {
		return placement.Instance{Node: d.Node, GPU: d.GPU, MemMB: need.GPUMemMB}
	}
	n := need
	if d.Degraded {
		n = fallback
	}
	return placement.Instance{Node: d.Node, CPU: n.CPU, MemMB: n.MemMB}
}

func (c *Rack) fallbackNeeds() placement.Needs {
	m, err := c.cfg.Models.Get(models.Default)
	if err != nil {
		return placement.Needs{CPU: 1, MemMB: 256}
	}
	return needsOf(m)
}

// newWorkerIDLocked returns an unused worker ID on a node.
func (c *Rack) newWorkerIDLocked(node proto.NodeID) proto.WorkerID {
	for {
		id := proto.WorkerID(fmt.Sprintf("%s-w%d", node, c.reg.seq))
		c.reg.seq++
		if _, used := c.reg.planned[id]; !used {
			if _, reg := c.reg.workers[id]; !reg {
				return id
			}
		}
	}
}

// send delivers commands to agents (outside the registry lock).
func (c *Rack) send(cmds []nodeCommand) {
	for _, nc := range cmds {
		c.reg.mu.Lock()
		n := c.reg.nodes[nc.node]
		skip := n == nil || n.lost
		c.reg.mu.Unlock()
		if skip {
			continue
		}
		if err := n.send(nc.cmd); err != nil {
			c.log.Warn("command not delivered", "node", nc.node, "op", nc.cmd.Op, "worker", nc.cmd.WorkerID, "err", err)
		}
	}
}

// ErrUnknownNode is returned for a node the coordinator has never seen.
var ErrUnknownNode = errors.New("unknown node")

// SetDraining drains (or undrains) a node: no new calls go to it, its
// workers stop, and their calls move to other nodes and resume. The state
// survives a coordinator restart.
func (c *Rack) SetDraining(ctx context.Context, node proto.NodeID, drain bool) error {
	if !proto.ValidID(string(node)) {
		return fmt.Errorf("invalid node id %q", node)
	}
	c.reg.mu.Lock()
	_, known := c.reg.nodes[node]
	known = known || c.reg.draining[node]
	c.reg.mu.Unlock()
	if !known {
		stored, err := c.store.Nodes()
		if err != nil {
			return err
		}
		for _, n := range stored {
			known = known || n.ID == node
		}
	}
	if !known {
		// A node that has never connected is not drained on a guess: a
		// typo would otherwise be stored as a node.
		return fmt.Errorf("%w: %q (nodes that have connected are known; see callscribe status)", ErrUnknownNode, node)
	}
	if err := c.store.PutNode(ctx, storeNode(node, drain)); err != nil {
		return err
	}
	c.reg.mu.Lock()
	if drain {
		c.reg.draining[node] = true
	} else {
		delete(c.reg.draining, node)
	}
	c.reg.mu.Unlock()
	c.log.Warn("node drain changed", "node", node, "draining", drain)
	c.reg.kickReconcile()
	return nil
}
