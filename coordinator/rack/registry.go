package rack

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/callscribe/callscribe/coordinator/calls"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

// workerConn is a registered worker.
type workerConn struct {
	hello  proto.WorkerHello
	conn   *quic.Conn
	used   int
	since  time.Time
	closed bool
}

// ID implements calls.Worker.
func (w *workerConn) ID() proto.WorkerID { return w.hello.WorkerID }

// OpenStream implements calls.Worker.
func (w *workerConn) OpenStream(ctx context.Context) (calls.Stream, error) {
	return w.conn.OpenStreamSync(ctx)
}

// Broken implements calls.Worker.
func (w *workerConn) Broken() bool { return w.conn.Context().Err() != nil }

// rackWorkers lends the registry's workers to the live-call path.
type rackWorkers struct{ r *registry }

var _ calls.Workers = rackWorkers{}

// Acquire implements calls.Workers: a slot on a ready worker of model.
func (rw rackWorkers) Acquire(ctx context.Context, model string) (calls.Worker, func(), error) {
	w, release, err := rw.r.acquire(ctx, model)
	if err != nil {
		return nil, nil, err
	}
	return w, release, nil
}

// Remove implements calls.Workers: the worker failed and leaves the rack.
func (rw rackWorkers) Remove(w calls.Worker, why string) { rw.r.removeWorker(w.(*workerConn), why) }

// node is a registered agent.
type node struct {
	id       proto.NodeID
	hello    proto.AgentHello
	last     proto.Heartbeat
	lastSeen time.Time
	lost     bool
	send     func(proto.Command) error
	ttl      *time.Timer
	conn     *quic.Conn
}

// registry tracks agents and workers and lends worker slots.
type registry struct {
	log     *slog.Logger
	mu      sync.Mutex
	workers map[proto.WorkerID]*workerConn
	nodes   map[proto.NodeID]*node
	changed chan struct{} // closed and replaced when a slot may have freed

	planned    map[proto.WorkerID]*plannedWorker
	draining   map[proto.NodeID]bool
	lastChange map[string]time.Time
	lastReason map[string]string
	seq        int
	kick       chan struct{}
}

func newRegistry(log *slog.Logger) *registry {
	return &registry{log: log, workers: map[proto.WorkerID]*workerConn{}, nodes: map[proto.NodeID]*node{}, changed: make(chan struct{}),
		planned: map[proto.WorkerID]*plannedWorker{}, draining: map[proto.NodeID]bool{}, lastChange: map[string]time.Time{},
		lastReason: map[string]string{}, kick: make(chan struct{}, 1)}
}

func (r *registry) wakeLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// addWorker registers a worker, replacing an earlier instance of the same ID.
func (r *registry) addWorker(h proto.WorkerHello, conn *quic.Conn) *workerConn {
	r.mu.Lock()
	var replaced *quic.Conn
	if old, ok := r.workers[h.WorkerID]; ok {
		old.closed = true
		replaced = old.conn
	}
	w := &workerConn{hello: h, conn: conn, since: time.Now()}
	r.workers[h.WorkerID] = w
	r.wakeLocked()
	r.mu.Unlock()
	if replaced != nil {
		_ = replaced.CloseWithError(0, "replaced by a newer instance")
	}
	return w
}

// removeWorker unregisters w (if it is still the registered instance) and
// closes its connection, which fails its assignment streams at once.
func (r *registry) removeWorker(w *workerConn, why string) {
	r.mu.Lock()
	removed := r.removeLocked(w, why)
	r.mu.Unlock()
	if removed {
		_ = w.conn.CloseWithError(0, why)
	}
}

// removeLocked unregisters w and reports whether it did; the caller closes
// the connection of what was removed after unlocking (closeRemoved): no
// network I/O under the registry's lock.
func (r *registry) removeLocked(w *workerConn, why string) bool {
	if w.closed {
		return false
	}
	w.closed = true
	if cur := r.workers[w.hello.WorkerID]; cur == w {
		delete(r.workers, w.hello.WorkerID)
	}
	r.log.Info("worker removed", "worker", w.hello.WorkerID, "node", w.hello.NodeID, "why", why)
	r.wakeLocked()
	r.kickReconcile()
	return true
}

// closeRemoved closes the connections of removed workers, which fails
// their assignment streams at once. Call it without r.mu.
func (r *registry) closeRemoved(ws []*workerConn, why string) {
	for _, w := range ws {
		_ = w.conn.CloseWithError(0, why)
	}
}

// workerExited is called when an agent reports a worker is not running.
func (r *registry) workerExited(id proto.WorkerID, why string) {
	r.mu.Lock()
	var removed []*workerConn
	if w, ok := r.workers[id]; ok && r.removeLocked(w, why) {
		removed = append(removed, w)
	}
	r.mu.Unlock()
	r.closeRemoved(removed, why)
}

// nodeLost removes every worker of a node.
func (r *registry) nodeLost(id proto.NodeID, why string) {
	r.mu.Lock()
	var removed []*workerConn
	for _, w := range r.workers {
		if w.hello.NodeID == id && r.removeLocked(w, why) {
			removed = append(removed, w)
		}
	}
	r.mu.Unlock()
	r.closeRemoved(removed, why)
}

// acquire waits for a worker of model with a free slot and takes the slot.
// It prefers the worker with the most free slots, never one on a draining or
// lost node. A model with no worker at all is served, degraded, by the
// default model's workers: calls keep flowing.
func (r *registry) acquire(ctx context.Context, model string) (*workerConn, func(), error) {
	for {
		r.mu.Lock()
		var cands []*workerConn
		any := false
		usable := func(w *workerConn) bool {
			if w.closed || r.draining[w.hello.NodeID] {
				return false
			}
			n, ok := r.nodes[w.hello.NodeID]
			return !ok || !n.lost
		}
		for _, w := range r.workers {
			if w.hello.Model == model && usable(w) {
				any = true
				if w.used < w.hello.Slots {
					cands = append(cands, w)
				}
			}
		}
		if !any && model != models.Default {
			for _, w := range r.workers {
				if w.hello.Model == models.Default && usable(w) && w.used < w.hello.Slots {
					cands = append(cands, w)
				}
			}
		}
		if len(cands) > 0 {
			sort.Slice(cands, func(i, j int) bool {
				fi, fj := cands[i].hello.Slots-cands[i].used, cands[j].hello.Slots-cands[j].used
				if fi != fj {
					return fi > fj
				}
				return cands[i].hello.WorkerID < cands[j].hello.WorkerID
			})
			w := cands[0]
			w.used++
			r.mu.Unlock()
			var once sync.Once
			return w, func() {
				once.Do(func() {
					r.mu.Lock()
					w.used--
					r.wakeLocked()
					r.mu.Unlock()
				})
			}, nil
		}
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// readyWorkers counts registered workers (each passed its test decode).
func (r *registry) readyWorkers() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.workers)
}

// WorkerInfo is a worker as the API shows it.
type WorkerInfo struct {
	ID       proto.WorkerID `json:"id"`
	Node     proto.NodeID   `json:"node"`
	Model    string         `json:"model"`
	Slots    int            `json:"slots"`
	Used     int            `json:"used"`
	PID      int            `json:"pid"`
	Since    time.Time      `json:"since"`
	SelfTest string         `json:"self_test"`
}

// NodeInfo is a node as the API shows it.
type NodeInfo struct {
	ID       proto.NodeID         `json:"id"`
	Lost     bool                 `json:"lost"`
	Draining bool                 `json:"draining"`
	LastSeen time.Time            `json:"last_seen"`
	CPUOnly  bool                 `json:"cpu_only"`
	Host     proto.Host           `json:"host"`
	GPUs     []proto.GPU          `json:"gpus"`
	Workers  []proto.WorkerStatus `json:"workers"`
}

func (r *registry) snapshot() ([]NodeInfo, []WorkerInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ns []NodeInfo
	for _, n := range r.nodes {
		gpus := n.last.GPUs
		if gpus == nil {
			gpus = n.hello.GPUs
		}
		host := n.last.Host
		if host.Hostname == "" {
			host = n.hello.Host
		}
		ns = append(ns, NodeInfo{ID: n.id, Lost: n.lost, Draining: r.draining[n.id], LastSeen: n.lastSeen, CPUOnly: n.hello.CPUOnly, Host: host, GPUs: gpus, Workers: n.last.Workers})
	}
	var ws []WorkerInfo
	for _, w := range r.workers {
		ws = append(ws, WorkerInfo{ID: w.hello.WorkerID, Node: w.hello.NodeID, Model: w.hello.Model, Slots: w.hello.Slots, Used: w.used, PID: w.hello.PID, Since: w.since, SelfTest: w.hello.SelfTest})
	}
	sort.Slice(ns, func(i, j int) bool { return ns[i].ID < ns[j].ID })
	sort.Slice(ws, func(i, j int) bool { return ws[i].ID < ws[j].ID })
	return ns, ws
}
