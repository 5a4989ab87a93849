// Package rack is the coordinator's side of the rack: the agents and
// workers connected to it (their hellos, heartbeats and liveness), the
// registry that lends worker slots to the live-call path, and the
// reconciler that places, replaces and stops workers by each model's
// scaling policy.
//
// It declares what it needs as small interfaces — Store (the node records)
// and Observer (metrics) — and no lock of it is held across network or
// disk I/O. It imports calls (the worker interfaces it implements),
// placement, scaling, store, models, proto, pki and tuning; never the
// coordinator that wires it.
package rack

import (
	"context"
	"crypto/x509"
	"log/slog"
	"time"

	"github.com/callscribe/callscribe/coordinator/calls"
	"github.com/callscribe/callscribe/coordinator/scaling"
	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/loop"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/proto"
)

// Store is what the rack needs of the store (*store.Store satisfies it).
type Store interface {
	Nodes() ([]store.Node, error)
	PutNode(ctx context.Context, n store.Node) error
}

var _ Store = (*store.Store)(nil)

// Observer counts what happens in the rack (the coordinator's metrics).
type Observer interface {
	// Placed counts a worker instance placed, by kind (gpu, cpu,
	// degraded).
	Placed(kind string)
	// WorkerUnresponsive counts a worker dropped for missing pings.
	WorkerUnresponsive()
}

// Models is the model catalog (models.Catalog satisfies it).
type Models interface {
	Get(name string) (*models.Manifest, error)
	Names() []string
}

// Limits are the worker liveness bounds (see coordinator.Limits).
type Limits struct {
	WorkerPing, WorkerTimeout time.Duration
}

// Config configures a Rack.
type Config struct {
	Store    Store
	Observer Observer
	Models   Models
	// Scaling is the policy per model (SetScaling replaces it).
	Scaling map[string]scaling.Policy
	// CheckInterval is how often the policy runs.
	CheckInterval time.Duration
	// HeartbeatInterval and HeartbeatTTL are handed to agents.
	HeartbeatInterval, HeartbeatTTL time.Duration
	Limits                          Limits
	NodeTokens                      []string
	// NodeCAs, when set, requires node certificates from these CAs.
	NodeCAs *x509.CertPool
	Log     *slog.Logger
}

// Rack is the coordinator's view of the rack.
type Rack struct {
	cfg   Config
	log   *slog.Logger
	store Store
	obs   Observer
	reg   *registry
}

// New returns a Rack; LoadDraining reads the drained nodes, Run runs the
// reconciler, ServeNode serves each node connection.
func New(cfg Config) *Rack {
	return &Rack{cfg: cfg, log: cfg.Log, store: cfg.Store, obs: cfg.Observer, reg: newRegistry(cfg.Log.With("component", "registry"))}
}

func (c *Rack) limits() Limits { return c.cfg.Limits }

// LoadDraining marks the nodes drained before a restart.
func (c *Rack) LoadDraining() error {
	nodes, err := c.store.Nodes()
	if err != nil {
		return err
	}
	c.reg.mu.Lock()
	defer c.reg.mu.Unlock()
	for _, n := range nodes {
		if n.Draining {
			c.reg.draining[n.ID] = true
		}
	}
	return nil
}

// Run runs the scaling policy every CheckInterval and whenever nodes or
// workers change, until ctx ends.
func (c *Rack) Run(ctx context.Context) {
	loop.Every(ctx, c.cfg.CheckInterval, c.reg.kick, func() { c.reconcile(time.Now()) })
}

// SetScaling replaces the scaling policies (a reload).
func (c *Rack) SetScaling(p map[string]scaling.Policy) {
	c.reg.mu.Lock()
	c.cfg.Scaling = p
	c.reg.mu.Unlock()
	c.reg.kickReconcile()
}

// Workers lends the registry's worker slots to the live-call path.
func (c *Rack) Workers() calls.Workers { return rackWorkers{c.reg} }

// Snapshot returns the nodes and workers as the API shows them.
func (c *Rack) Snapshot() ([]NodeInfo, []WorkerInfo) { return c.reg.snapshot() }

// ReadyWorkers counts registered workers (each passed its test decode).
func (c *Rack) ReadyWorkers() int { return c.reg.readyWorkers() }

// Draining reports whether a node is drained.
func (c *Rack) Draining(id proto.NodeID) bool {
	c.reg.mu.Lock()
	defer c.reg.mu.Unlock()
	return c.reg.draining[id]
}

// NodeGauges is one node's state for metrics.
type NodeGauges struct {
	ID             proto.NodeID
	Lost, Draining bool
	// Workers and GPUs are from the last heartbeat (heartbeats replace
	// them whole, never in place: safe to read without the lock).
	Workers []proto.WorkerStatus
	GPUs    []proto.GPU
}

// Gauges returns the worker slots in use and free, and every node's state,
// copied under the registry's lock (a scrape does not hold it).
func (c *Rack) Gauges() (used, free int, nodes []NodeGauges) {
	c.reg.mu.Lock()
	defer c.reg.mu.Unlock()
	for _, w := range c.reg.workers {
		used += w.used
		free += w.hello.Slots - w.used
	}
	for _, n := range c.reg.nodes {
		nodes = append(nodes, NodeGauges{ID: n.id, Lost: n.lost, Draining: c.reg.draining[n.id], Workers: n.last.Workers, GPUs: n.last.GPUs})
	}
	return used, free, nodes
}
