// Package cluster makes the coordinator a cluster of coordinators on Raft
// (hashicorp/raft): the store's group commits become entries of a
// replicated log, acknowledged once a quorum has them on disk and applied
// to every member's store in the same order. Only the leader serves
// consoles, agents and workers; the others follow the log and send clients
// to the leader. A coordinator without a cluster configuration is a cluster
// of one on the same code path, with no network between members.
//
// It holds the Raft node and what it needs: the log (internal/raftlog), the
// snapshot store (snapshots.go: checkpoints of the store, no copies), the
// mutual-TLS transport between members (transport.go) and the adapter from
// the store to Raft's state machine (fsm.go).
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callscribe/callscribe/internal/raftlog"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Config configures a Node.
type Config struct {
	// Dir holds the log and the snapshots (DATA/raft).
	Dir string
	// Name is this member's ID in the cluster (unique, stable).
	Name string
	// Bind is the address the member listens on for the others (TCP);
	// empty: a cluster of one, without a network.
	Bind string
	// Advertise is the address the others dial (default: Bind).
	Advertise string
	// Cert and CAs: this member's coordinator certificate and the
	// appliance's CA (required with Bind).
	Cert tls.Certificate
	CAs  *x509.CertPool
	// Key encrypts the log at rest (the store's key; nil: plain).
	Key []byte
	// FSM is the store.
	FSM FSM
	// ClusterID returns the cluster's ID ("" before it has one).
	ClusterID func() string
	Logger    *slog.Logger
	// SnapshotThreshold, SnapshotInterval and TrailingLogs override
	// tuning's (zero: those).
	SnapshotThreshold, TrailingLogs uint64
	SnapshotInterval                time.Duration
}

// Node is this coordinator's member of the cluster.
type Node struct {
	cfg   Config
	log   *slog.Logger
	r     *raft.Raft
	logs  *raftlog.Log
	snaps *snapStore
	fsm   FSM
	trans raft.Transport
	// stream is the TLS transport between members (nil alone).
	stream *streamLayer
	close  func() error

	leaderChanges atomic.Uint64
	failOnce      sync.Once
	failed        chan struct{}
	failErr       error
	obs           chan raft.Observation
	observer      *raft.Observer
	notify        chan bool
	done          chan struct{}
	single        bool

	// stopMu orders Shutdown after the writes in flight (held shared by
	// Replicate): Raft leaves a write queued at shutdown unanswered.
	stopMu  sync.RWMutex
	stopped bool

	leadMu  sync.Mutex
	leading bool
	changed chan struct{} // closed at the next change of leading
	// unreachable: members the leader's heartbeats do not reach, with
	// when they last answered.
	unreachable map[string]time.Time
}

// Timing of a cluster: a follower that hears nothing from the leader for
// HeartbeatTimeout (randomised up to twice that) starts an election; a
// leader that cannot reach a quorum for LeaderLease steps down, and so
// stops acknowledging.
func raftConfig(name string, single bool, log hclog.Logger) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(name)
	c.Logger = log
	c.HeartbeatTimeout = tuning.ClusterHeartbeatTimeout
	c.ElectionTimeout = tuning.ClusterHeartbeatTimeout
	c.LeaderLeaseTimeout = tuning.ClusterLeaderLease
	if single {
		// Alone, there is no one to wait for: lead at once.
		c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = 20*time.Millisecond, 20*time.Millisecond, 10*time.Millisecond
	}
	c.CommitTimeout = 5 * time.Millisecond
	c.MaxAppendEntries = 256
	c.BatchApplyCh = true
	c.SnapshotInterval = tuning.ClusterSnapshotInterval
	c.SnapshotThreshold = tuning.ClusterSnapshotThreshold
	c.TrailingLogs = tuning.ClusterTrailingLogs
	c.NoSnapshotRestoreOnStart = true
	return c
}

// Start opens the log and starts the member. A member without state is
// bootstrapped as a cluster of one when it has no network (Bind empty);
// with a network it waits to be bootstrapped (Bootstrap, `cluster init`)
// or added by a leader (`cluster join`).
func Start(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Name == "" {
		return nil, errors.New("cluster: a member needs a name")
	}
	if cfg.ClusterID == nil {
		cfg.ClusterID = func() string { return "" }
	}
	n := &Node{cfg: cfg, log: cfg.Logger, fsm: cfg.FSM, failed: make(chan struct{}), notify: make(chan bool, 16), done: make(chan struct{}),
		single: cfg.Bind == "", changed: make(chan struct{}), unreachable: map[string]time.Time{}}
	cfg.FSM.OnApplyFailure(func(err error) {
		n.fail(fmt.Errorf("cluster: this member cannot apply the log and stops: %w", err))
	})
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	logs, err := raftlog.Open(filepath.Join(cfg.Dir, "log"), raftlog.Options{Key: cfg.Key, Logger: cfg.Logger,
		OnFailure: func(err error) { n.fail(fmt.Errorf("cluster: this member's log failed and it stops: %w", err)) }})
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	n.logs = logs
	snaps, err := newSnapStore(filepath.Join(cfg.Dir, "snapshots"), cfg.FSM, cfg.Logger)
	if err != nil {
		logs.Close()
		return nil, err
	}
	n.snaps = snaps
	hl := hclogAdapter(cfg.Logger)
	var closeTrans func() error
	if n.single {
		addr, t := raft.NewInmemTransport(raft.ServerAddress("local"))
		_ = addr
		n.trans, closeTrans = t, t.Close
	} else {
		if len(cfg.Cert.Certificate) == 0 || cfg.CAs == nil {
			logs.Close()
			return nil, errors.New("cluster: members need a coordinator certificate and the appliance's CA (cluster.cert, cluster.key; `callscribe ca issue --kind coordinator`)")
		}
		sl, err := newStreamLayer(cfg.Bind, cfg.Advertise, peerTLS(cfg.Cert, cfg.CAs), cfg.ClusterID, cfg.Logger.With("component", "cluster"))
		if err != nil {
			logs.Close()
			return nil, err
		}
		t := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: sl, MaxPool: 4, Timeout: 10 * time.Second, Logger: hl})
		n.trans, closeTrans, n.stream = t, t.Close, sl
	}
	n.close = func() error {
		err := closeTrans()
		if cerr := logs.Close(); err == nil {
			err = cerr
		}
		return err
	}
	rc := raftConfig(cfg.Name, n.single, hl)
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}
	if cfg.SnapshotInterval > 0 {
		rc.SnapshotInterval = cfg.SnapshotInterval
	}
	rc.NotifyCh = n.notify
	has, err := raft.HasExistingState(logs, logs, snaps)
	if err != nil {
		_ = n.close()
		return nil, fmt.Errorf("cluster: %w", err)
	}
	r, err := raft.NewRaft(rc, fsm{n}, logs, logs, snaps, n.trans)
	if err != nil {
		_ = n.close()
		return nil, fmt.Errorf("cluster: start: %w", err)
	}
	n.r = r
	n.obs = make(chan raft.Observation, 64)
	n.observer = raft.NewObserver(n.obs, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation:
			return true
		}
		return false
	})
	r.RegisterObserver(n.observer)
	go n.watch()
	if !has && n.single {
		if err := n.Bootstrap(); err != nil {
			_ = n.Shutdown()
			return nil, err
		}
	}
	if !has && !n.single {
		n.log.Info("cluster: this member has no state yet: waiting for `callscribe cluster init` (a new cluster) or `callscribe cluster join` (an existing one)", "name", cfg.Name, "address", n.trans.LocalAddr())
	}
	return n, nil
}

// watch counts leader changes and follows this member's leadership.
func (n *Node) watch() {
	for {
		select {
		case l := <-n.notify:
			n.leadMu.Lock()
			if n.leading != l {
				n.leading = l
				close(n.changed)
				n.changed = make(chan struct{})
			}
			n.leadMu.Unlock()
		case o := <-n.obs:
			switch d := o.Data.(type) {
			case raft.LeaderObservation:
				n.leaderChanges.Add(1)
				n.log.Info("cluster: leader", "leader", d.LeaderID, "address", d.LeaderAddr)
				n.leadMu.Lock()
				clear(n.unreachable)
				n.leadMu.Unlock()
			case raft.FailedHeartbeatObservation:
				n.leadMu.Lock()
				if _, ok := n.unreachable[string(d.PeerID)]; !ok {
					n.log.Warn("cluster: a member does not answer the leader", "member", d.PeerID, "last_contact", d.LastContact)
				}
				n.unreachable[string(d.PeerID)] = d.LastContact
				n.leadMu.Unlock()
			case raft.ResumedHeartbeatObservation:
				n.leadMu.Lock()
				delete(n.unreachable, string(d.PeerID))
				n.leadMu.Unlock()
				n.log.Info("cluster: a member answers the leader again", "member", d.PeerID)
			}
		case <-n.done:
			return
		}
	}
}

// Bootstrap makes this member, alone, a new cluster.
func (n *Node) Bootstrap() error {
	f := n.r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: raft.ServerID(n.cfg.Name), Address: n.trans.LocalAddr()}}})
	if err := f.Error(); err != nil {
		return fmt.Errorf("cluster: bootstrap: %w", err)
	}
	return nil
}

// Single reports whether the member is a cluster of one without a network.
func (n *Node) Single() bool { return n.single }

// Address is this member's address for the others.
func (n *Node) Address() string { return string(n.trans.LocalAddr()) }

// Logger is the member's logger.
func (n *Node) Logger() *slog.Logger { return n.log }

// Name is this member's name.
func (n *Node) Name() string { return n.cfg.Name }

// ErrNotLeader is wrapped by writes refused because this member is not
// (or no longer) the leader.
var ErrNotLeader = errors.New("cluster: not the leader")

// Replicate makes cmd durable on a quorum and hands it to the store
// (store.Replicator).
func (n *Node) Replicate(cmd []byte) error {
	n.stopMu.RLock()
	defer n.stopMu.RUnlock()
	if n.stopped {
		return fmt.Errorf("%w: the member is shutting down", ErrNotLeader)
	}
	f := n.r.Apply(cmd, tuning.ClusterApplyTimeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			return fmt.Errorf("%w: %w", ErrNotLeader, err)
		}
		return fmt.Errorf("cluster: replicate: %w", err)
	}
	if err, ok := f.Response().(error); ok && err != nil {
		return err
	}
	return nil
}

// IsLeader reports whether this member leads.
func (n *Node) IsLeader() bool { return n.r.State() == raft.Leader }

// Leader names the leader and its cluster address ("" when unknown).
func (n *Node) Leader() (name, addr string) {
	a, id := n.r.LeaderWithID()
	return string(id), string(a)
}

// Leading reports whether this member leads, and a channel closed when
// that changes.
func (n *Node) Leading() (bool, <-chan struct{}) {
	n.leadMu.Lock()
	defer n.leadMu.Unlock()
	return n.leading, n.changed
}

// Failed is closed when the member cannot go on (it could not apply a
// committed entry); Err says why.
func (n *Node) Failed() <-chan struct{} { return n.failed }

// Err is why the member failed.
func (n *Node) Err() error {
	select {
	case <-n.failed:
		return n.failErr
	default:
		return nil
	}
}

func (n *Node) fail(err error) {
	n.failOnce.Do(func() {
		n.failErr = err
		n.log.Error(err.Error())
		close(n.failed)
	})
}

// Barrier waits until every entry committed before it is applied here (a
// new leader's first step before it serves).
func (n *Node) Barrier(ctx context.Context) error {
	timeout := tuning.ClusterApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := n.r.Barrier(timeout).Error(); err != nil {
		return fmt.Errorf("cluster: barrier: %w", err)
	}
	return nil
}

// probeTimeout bounds Probe's connection and handshakes.
const probeTimeout = 5 * time.Second

// Probe connects to the coordinator at addr over the members' transport
// (mutual TLS: each side checks that the other's certificate is a
// coordinator's from this appliance's CA, then the cluster ID) and hangs
// up. A member must pass it before it is added: raft would otherwise make
// a coordinator it can never reach (a certificate from another CA, a
// wrong address) a voter, which counts towards every quorum from then on.
func (n *Node) Probe(addr string) error {
	if n.stream == nil {
		return errors.New("cluster: a cluster of one has no transport to other members")
	}
	c, err := n.stream.Dial(raft.ServerAddress(addr), probeTimeout)
	if err != nil {
		return fmt.Errorf("cluster: the coordinator at %s cannot be reached as a member: %w", addr, err)
	}
	return c.Close()
}

// AddVoter adds (or re-addresses) a member.
func (n *Node) AddVoter(name, addr string) error {
	if err := n.r.AddVoter(raft.ServerID(name), raft.ServerAddress(addr), 0, tuning.ClusterApplyTimeout).Error(); err != nil {
		return fmt.Errorf("cluster: add %s at %s: %w", name, addr, err)
	}
	return nil
}

// Remove removes a member.
func (n *Node) Remove(name string) error {
	if err := n.r.RemoveServer(raft.ServerID(name), 0, tuning.ClusterApplyTimeout).Error(); err != nil {
		return fmt.Errorf("cluster: remove %s: %w", name, err)
	}
	return nil
}

// Member is one member of the configuration.
type Member struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Voter   bool   `json:"voter"`
}

// Members lists the configuration.
func (n *Node) Members() ([]Member, error) {
	f := n.r.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("cluster: configuration: %w", err)
	}
	var ms []Member
	for _, s := range f.Configuration().Servers {
		ms = append(ms, Member{Name: string(s.ID), Address: string(s.Address), Voter: s.Suffrage == raft.Voter})
	}
	return ms, nil
}

// Status is a member's view of the cluster.
type Status struct {
	Name          string    `json:"name"`
	Address       string    `json:"address"`
	State         string    `json:"state"`
	Leader        string    `json:"leader"`
	LeaderAddress string    `json:"leader_address"`
	Term          uint64    `json:"term"`
	LastIndex     uint64    `json:"last_index"`
	CommitIndex   uint64    `json:"commit_index"`
	AppliedIndex  uint64    `json:"applied_index"`
	LastContact   time.Time `json:"last_contact,omitzero"`
	LeaderChanges uint64    `json:"leader_changes"`
	LogBytes      int64     `json:"log_bytes"`
	Members       []Member  `json:"members"`
	// Unreachable names the members the leader cannot reach (on the
	// leader), with when each last answered.
	Unreachable map[string]time.Time `json:"unreachable,omitempty"`
}

// Status reports this member's view.
func (n *Node) Status() Status {
	st := n.r.Stats()
	u := func(k string) uint64 {
		var v uint64
		_, _ = fmt.Sscan(st[k], &v)
		return v
	}
	name, addr := n.Leader()
	s := Status{Name: n.cfg.Name, Address: n.Address(), State: strings.ToLower(n.r.State().String()), Leader: name, LeaderAddress: addr,
		Term: u("term"), LastIndex: u("last_log_index"), CommitIndex: u("commit_index"), AppliedIndex: n.fsm.Applied(),
		LeaderChanges: n.leaderChanges.Load(), LogBytes: n.logs.Size()}
	if !n.IsLeader() {
		s.LastContact = n.r.LastContact()
	}
	s.Members, _ = n.Members()
	n.leadMu.Lock()
	if len(n.unreachable) > 0 && s.State == "leader" {
		s.Unreachable = maps.Clone(n.unreachable)
	}
	n.leadMu.Unlock()
	return s
}

// Handover asks another member to lead now (before this one stops), so
// that clients wait for no election timeout.
func (n *Node) Handover() error {
	if n.single || !n.IsLeader() {
		return nil
	}
	if err := n.r.LeadershipTransfer().Error(); err != nil {
		return fmt.Errorf("cluster: hand leadership over: %w", err)
	}
	return nil
}

// Snapshot takes a snapshot now (a checkpoint of the store) and compacts
// the log behind it.
func (n *Node) Snapshot() error {
	if err := n.r.Snapshot().Error(); err != nil {
		return fmt.Errorf("cluster: snapshot: %w", err)
	}
	return nil
}

// Shutdown stops the member (the log stays; a restart resumes it).
func (n *Node) Shutdown() error {
	n.stopMu.Lock()
	n.stopped = true
	n.stopMu.Unlock()
	var err error
	if n.r != nil {
		n.r.DeregisterObserver(n.observer)
		err = n.r.Shutdown().Error()
	}
	close(n.done)
	if cerr := n.close(); err == nil {
		err = cerr
	}
	return err
}

// hclogAdapter sends Raft's log to slog.
func hclogAdapter(l *slog.Logger) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Info, Output: slogWriter{l.With("component", "raft")}, DisableTime: true})
}

type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	lvl := slog.LevelInfo
	switch {
	case strings.HasPrefix(line, "[ERROR]"):
		lvl = slog.LevelError
	case strings.HasPrefix(line, "[WARN]"):
		lvl = slog.LevelWarn
	case strings.HasPrefix(line, "[DEBUG]"), strings.HasPrefix(line, "[TRACE]"):
		lvl = slog.LevelDebug
	}
	w.l.Log(context.Background(), lvl, line)
	return len(p), nil
}

var _ io.Writer = slogWriter{}
