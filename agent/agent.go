// Package agent is the node agent: it registers its server with the
// coordinator, reports GPU and host telemetry in heartbeats, and starts and
// supervises the worker processes the coordinator places on it. Workers keep
// running while the agent reconnects, and stop with the agent.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/callscribe/callscribe/agent/firmware"
	"github.com/callscribe/callscribe/agent/gpu"
	"github.com/callscribe/callscribe/agent/host"
	"github.com/callscribe/callscribe/agent/supervisor"
	"github.com/callscribe/callscribe/internal/leader"
	"github.com/callscribe/callscribe/internal/owner"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

// Config configures an agent.
type Config struct {
	NodeID proto.NodeID
	// Coordinator is the coordinator's QUIC host:port. Coordinators lists
	// the coordinators of a cluster (after Coordinator, if both are set):
	// the agent dials them in turn and follows the leader a follower names
	// (internal/leader), and hands the list to the workers it starts.
	Coordinator  string
	Coordinators []string
	CAFile       string
	CertFile     string // client certificate (mutual TLS), passed on to workers
	KeyFile      string
	ServerName   string
	Token        string
	// WorkerCommand is the worker executable and the arguments that come
	// before the per-worker ones (normally: callscribe worker).
	WorkerCommand []string
	ModelDir      string
	StateDir      string
	// IgnoredXIDs do not make a GPU unhealthy (nil: gpu.DefaultIgnoredXIDs).
	IgnoredXIDs []uint64
	// Profile is this node's class (firmware-configs/): a GPU that breaks it
	// is reported excluded, with the reason, and is not used for placement.
	Profile *firmware.Profile
	// Apply sets at start what NVML can set to match the profile
	// (persistence mode, power limit) and reports what it cannot.
	Apply bool
	// GPUs overrides NVML discovery (a simulated server, in tests and
	// demos). Nil means: use NVML, or run CPU-only without a driver.
	GPUs   gpu.Collector
	Logger *slog.Logger
}

// healthWatcher is a Collector that can also watch NVML health events.
type healthWatcher interface {
	WatchHealth(ctx context.Context, cfg gpu.HealthConfig) error
}

// Agent is a running node agent.
type Agent struct {
	cfg     Config
	mu      sync.Mutex
	lastWhy map[string]string // GPU → last reported non-compliance
	log     *slog.Logger
	gpus    gpu.Collector
	host    *host.Sampler
	sup     *supervisor.Supervisor
	kick    chan struct{}
	cpuOnly string // why NVML is not used ("" when it is)
	// targets are the coordinators, with the members learned from
	// not_leader answers (workers are started with them all).
	targets *leader.Targets
}

// New prepares an agent. Without an NVIDIA driver it runs CPU-only and says
// so once.
func New(cfg Config) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if !proto.ValidID(string(cfg.NodeID)) {
		return nil, fmt.Errorf("agent: invalid node id %q", cfg.NodeID)
	}
	a := &Agent{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeID), host: host.New(cfg.StateDir), kick: make(chan struct{}, 1), lastWhy: map[string]string{},
		targets: leader.New(append([]string{cfg.Coordinator}, cfg.Coordinators...))}
	a.gpus = cfg.GPUs
	if a.gpus == nil {
		g, err := gpu.New(nil)
		switch {
		case errors.Is(err, gpu.ErrNoDriver):
			a.cpuOnly = err.Error()
			a.log.Info("no NVIDIA driver found: running CPU-only", "detail", err)
		case err != nil:
			a.cpuOnly = err.Error()
			a.log.Warn("NVML unavailable: running CPU-only", "err", err)
		default:
			a.gpus = g
			a.log.Info("NVML ready", "driver", g.Driver())
		}
	}
	a.sup = supervisor.New(a.log.With("component", "supervisor"), supervisor.DefaultPolicy, a.nudge)
	if cfg.Apply {
		a.applyProfile()
	}
	if cfg.Profile != nil {
		a.gpuList() // check compliance now, and say so
	}
	return a, nil
}

// Probe is one reading of what this node offers: what the agent would
// report to the coordinator, without connecting to it.
type Probe struct {
	Node proto.NodeID `json:"node"`
	// Driver is the NVIDIA driver version; empty when CPU-only.
	Driver string `json:"driver,omitempty"`
	// CPUOnly says why no GPU is used ("" when NVML answered).
	CPUOnly string      `json:"cpu_only,omitempty"`
	Profile string      `json:"profile,omitempty"`
	GPUs    []proto.GPU `json:"gpus"`
	Host    proto.Host  `json:"host"`
}

// Probe reads the GPUs (checked against the node profile, if any) and the
// host load once.
func (a *Agent) Probe(ctx context.Context) Probe {
	p := Probe{Node: a.cfg.NodeID, CPUOnly: a.cpuOnly, GPUs: a.gpuList(), Host: a.host.Sample(ctx)}
	if p.GPUs == nil {
		p.GPUs = []proto.GPU{}
	}
	if a.gpus != nil {
		p.Driver = a.gpus.Driver()
	}
	if a.cfg.Profile != nil {
		p.Profile = a.cfg.Profile.Class
	}
	return p
}

// Supervisor exposes the worker supervisor (tests use it to find PIDs).
func (a *Agent) Supervisor() *supervisor.Supervisor { return a.sup }

func (a *Agent) nudge() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Run connects to the coordinator and serves it until ctx ends, then stops
// every worker.
func (a *Agent) Run(ctx context.Context) error {
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), tuning.AgentStopTimeout)
		defer cancel()
		a.sup.StopAll(sctx)
		if a.gpus != nil {
			_ = a.gpus.Close()
		}
		a.log.Info("agent stopped")
	}()
	// Run owns its goroutines: on return they are stopped (cancel, run
	// first) and waited for, before the workers are stopped.
	var group owner.Group
	defer group.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if w, ok := a.gpus.(healthWatcher); ok {
		group.Go(func() {
			if err := w.WatchHealth(ctx, gpu.HealthConfig{IgnoredXIDs: a.cfg.IgnoredXIDs, Log: a.log.With("component", "gpu-health")}); err != nil {
				a.log.Error("GPU health watcher stopped", "err", err)
			}
		})
	}
	pool, err := pki.CertPool(a.cfg.CAFile)
	if err != nil {
		return err
	}
	tc := &tls.Config{RootCAs: pool, ServerName: a.cfg.ServerName, NextProtos: []string{proto.ALPNNode}, MinVersion: tls.VersionTLS13}
	if a.cfg.CertFile != "" {
		cert, err := pki.LoadClientCert(a.cfg.CertFile, a.cfg.KeyFile)
		if err != nil {
			return err
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if len(a.targets.Addrs()) == 0 {
		return errors.New("agent: no coordinator address")
	}
	// Retried until stopped: the next coordinator at once when one cannot
	// be reached, a pause once all have failed (back to the shortest after
	// a session of tuning.ReconnectStable), the leader at once when a
	// follower names it.
	for ctx.Err() == nil {
		addr := a.targets.Next()
		err := a.session(ctx, tc, addr)
		var pe *proto.Error
		if errors.As(err, &pe) && !pe.Retryable() {
			return fmt.Errorf("agent: coordinator refused: %w", err)
		}
		if ctx.Err() != nil {
			break
		}
		var wait time.Duration
		if pe != nil && pe.Code == proto.CodeNotLeader {
			wait = a.targets.Redirect(pe)
			a.log.Info("coordinator is a follower: going to the leader", "addr", addr, "leader", pe.Leader, "in", wait)
		} else {
			wait, err = a.targets.Failed(addr, err)
			a.log.Warn("coordinator session ended: reconnecting", "addr", addr, "err", err, "in", wait)
		}
		if wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
			}
		}
	}
	return nil
}

func (a *Agent) gpuList() []proto.GPU {
	if a.gpus == nil {
		return nil
	}
	gs, err := a.gpus.Devices()
	if err != nil {
		a.log.Warn("GPU readings failed", "err", err)
	}
	if a.cfg.Profile != nil {
		why := a.cfg.Profile.Check(a.gpus.Driver(), gs)
		a.mu.Lock()
		for i := range gs {
			gs[i].Excluded = why[gs[i].UUID]
			if a.lastWhy[gs[i].UUID] != gs[i].Excluded { // log changes, not every reading
				if gs[i].Excluded != "" {
					a.log.Warn("GPU breaks the node profile: excluded from placement", "gpu", gs[i].UUID, "profile", a.cfg.Profile.Class, "why", gs[i].Excluded)
				} else {
					a.log.Info("GPU complies with the node profile", "gpu", gs[i].UUID, "profile", a.cfg.Profile.Class)
				}
				a.lastWhy[gs[i].UUID] = gs[i].Excluded
			}
		}
		a.mu.Unlock()
	}
	return gs
}

// applier is a Collector that can change GPU settings.
type applier interface {
	Apply(uuid string, want gpu.Settings) []string
}

// applyProfile sets what NVML can set to match the profile and logs what
// it cannot (driver, VBIOS, ECC and MIG need an operator and a reset).
func (a *Agent) applyProfile() {
	p := a.cfg.Profile
	ap, ok := a.gpus.(applier)
	if p == nil || !ok {
		return
	}
	gs, err := a.gpus.Devices()
	if err != nil {
		a.log.Error("--apply: cannot read GPUs", "err", err)
		return
	}
	for _, g := range gs {
		var want gpu.Settings
		if p.GPU.Persistence != nil && (g.Persistence == nil || *g.Persistence != *p.GPU.Persistence) {
			want.Persistence = p.GPU.Persistence
		}
		if p.GPU.PowerLimitW > 0 && (g.PowerLimitW == nil || int(*g.PowerLimitW+0.5) != p.GPU.PowerLimitW) {
			want.PowerLimitW = p.GPU.PowerLimitW
		}
		for _, line := range ap.Apply(g.UUID, want) {
			a.log.Info("--apply", "result", line)
		}
	}
	for _, g := range a.gpuList() {
		if g.Excluded != "" {
			a.log.Warn("--apply cannot fix this: an operator must", "gpu", g.UUID, "why", g.Excluded)
		}
	}
}

func (a *Agent) session(ctx context.Context, tc *tls.Config, addr string) error {
	dctx, cancel := context.WithTimeout(ctx, tuning.DialTimeout)
	conn, err := quic.DialAddr(dctx, addr, tc, &quic.Config{MaxIdleTimeout: tuning.AgentQUICIdle, KeepAlivePeriod: tuning.AgentQUICKeepAlive})
	cancel()
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.CloseWithError(0, "agent session ended")
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	r, w := proto.NewReader(st), proto.NewWriter(st)
	hello := proto.AgentHello{Version: proto.Version, Token: a.cfg.Token, NodeID: a.cfg.NodeID, CPUOnly: a.gpus == nil,
		GPUs: a.gpuList(), Host: a.host.Sample(ctx), Workers: a.sup.Status()}
	if err := w.WriteJSON(proto.TAgentHello, hello); err != nil {
		return err
	}
	var wel proto.AgentWelcome
	if err := r.ReadJSON(proto.TAgentWelcome, &wel); err != nil {
		return err
	}
	interval := time.Duration(wel.IntervalMS) * time.Millisecond
	if interval <= 0 {
		interval = tuning.AgentHeartbeatFallback
	}
	a.targets.Connected(addr)
	a.log.Info("registered with coordinator", "addr", addr, "heartbeat", interval, "ttl_ms", wel.TTLMS)
	// The command reader ends when the connection closes; it is waited for
	// (this defer runs before the plain close above).
	errc := make(chan error, 1)
	cmdDone := make(chan struct{})
	go func() {
		defer close(cmdDone)
		errc <- a.commands(ctx, r)
	}()
	defer func() {
		_ = conn.CloseWithError(0, "agent session ended")
		<-cmdDone
	}()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var seq uint64
	for {
		seq++
		hb := proto.Heartbeat{Seq: seq, GPUs: a.gpuList(), Host: a.host.Sample(ctx), Workers: a.sup.Status()}
		if err := w.WriteJSON(proto.THeartbeat, hb); err != nil {
			return err
		}
		select {
		case <-tick.C:
		case <-a.kick: // a worker changed state: tell the coordinator now
		case err := <-errc:
			return err
		case <-ctx.Done():
			return nil
		}
	}
}

func (a *Agent) commands(ctx context.Context, r *proto.Reader) error {
	for {
		m, err := r.Read()
		if err != nil {
			return err
		}
		switch m.Type {
		case proto.TCommand:
			var c proto.Command
			if err := proto.Unmarshal(m, &c); err != nil {
				a.log.Warn("bad command", "err", err)
				continue
			}
			a.apply(c)
		case proto.TError:
			var e proto.Error
			_ = proto.Unmarshal(m, &e)
			return &e
		}
	}
}

func (a *Agent) apply(c proto.Command) {
	switch c.Op {
	case proto.OpStartWorker:
		if !proto.ValidID(string(c.WorkerID)) {
			a.log.Warn("start refused: bad worker id", "worker", c.WorkerID)
			return
		}
		a.sup.Start(a.workerSpec(c))
	case proto.OpStopWorker:
		a.sup.Stop(c.WorkerID)
	default:
		a.log.Warn("unknown command", "op", c.Op)
	}
}

// workerSpec is the worker process a start_worker command asks for. It is
// given every coordinator the agent knows (the configured ones and the
// members learned from not_leader answers), so it finds the leader as the
// agent does.
func (a *Agent) workerSpec(c proto.Command) supervisor.Spec {
	args := append(append([]string(nil), a.cfg.WorkerCommand[1:]...),
		"--coordinator", a.targets.String(), "--ca", a.cfg.CAFile, "--server-name", a.cfg.ServerName,
		"--worker-id", string(c.WorkerID), "--node", string(a.cfg.NodeID), "--model", c.Model)
	if a.cfg.ModelDir != "" {
		args = append(args, "--models", a.cfg.ModelDir)
	}
	if a.cfg.CertFile != "" {
		args = append(args, "--cert", a.cfg.CertFile, "--key", a.cfg.KeyFile)
	}
	env := []string{"CALLSCRIBE_NODE_TOKEN=" + a.cfg.Token}
	if c.GPU != "" { // the engine sees only its GPU
		env = append(env, "CUDA_VISIBLE_DEVICES="+c.GPU, "CALLSCRIBE_GPU="+c.GPU)
	}
	return supervisor.Spec{ID: c.WorkerID, Model: c.Model, GPU: c.GPU, Path: a.cfg.WorkerCommand[0], Args: args, Env: env}
}
