package bench

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/callscribe/callscribe/coordinator/cluster"
	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/proto"
)

// quietLog drops Raft's and the store's chatter (elections, snapshots),
// keeping errors.
var quietLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

// member is one coordinator of a benchmark cluster: its store and its node.
type member struct {
	st *store.Store
	n  *cluster.Node
}

func (m *member) close() {
	if m.n != nil {
		_ = m.n.Shutdown()
	}
	_ = m.st.Close()
}

// startMember opens a store in dir/store (encrypted with key, replicated)
// and starts its member of the cluster with its log in dir/raft, as
// coordinator.OpenMember does; bind "" is a cluster of one.
func startMember(dir, name, bind, advertise string, key []byte, cert tls.Certificate, cas *x509.CertPool, onCommit func(int, int, time.Duration), log *slog.Logger) (*member, error) {
	if log == nil {
		log = quietLog
	}
	st, err := store.Open(filepath.Join(dir, "store"), store.Options{Key: key, Logger: log, OnCommit: onCommit, Replicated: true})
	if err != nil {
		return nil, err
	}
	cfg := cluster.Config{Dir: filepath.Join(dir, "raft"), Name: name, Bind: bind, Advertise: advertise, Key: key, FSM: st, Logger: log.With("member", name),
		ClusterID: func() string {
			ci, err := st.Cluster()
			if err != nil || ci == nil {
				return ""
			}
			return ci.ID
		}}
	if bind != "" {
		cfg.Cert, cfg.CAs = cert, cas
	}
	n, err := cluster.Start(cfg)
	if err != nil {
		st.Close()
		return nil, err
	}
	st.SetReplicator(n)
	return &member{st: st, n: n}, nil
}

// waitUntil polls cond every 10 ms for at most d.
func waitUntil(d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// framesSink writes each frame through st exactly as BadgerSink does.
func framesSink(st *store.Store) Sink {
	return func(ctx context.Context, call, seq int, payload []byte) error {
		return st.PutFrames(ctx, proto.CallID(fmt.Sprintf("bench-%d", call)), 0, []store.Frame{{Seq: uint32(seq), Payload: payload}})
	}
}

func newKey() ([]byte, error) {
	key := make([]byte, store.KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	return key, nil
}

// SingleSink is a single coordinator as the product runs one now: its
// store replicated (Options.Replicated) through a cluster of one without
// a network (cluster.Start with no Bind), so a group commit is one entry
// of the Raft log, made durable by the log's fdatasync and then applied to
// Badger unsynced. The store and the log are encrypted with a throwaway
// key. Commits, if not nil, records the store's group commits (each taking
// the whole replicated write).
func SingleSink(dir string, commits *Commits) (Sink, func(), error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	m, err := startMember(dir, "bench", "", "", key, tls.Certificate{}, nil, func(writes, _ int, took time.Duration) { commits.add(writes, took) }, nil)
	if err != nil {
		return nil, nil, err
	}
	if err := waitUntil(10*time.Second, "the cluster of one to lead", m.n.IsLeader); err != nil {
		m.close()
		return nil, nil, err
	}
	return framesSink(m.st), m.close, nil
}

// ClusterOptions configures ClusterSink.
type ClusterOptions struct {
	// Members is the cluster's size (default 3).
	Members int
	// LinkDelay, if not zero, relays each member's traffic through a Relay
	// that delays it this much each way (the members advertise the relay's
	// address). Zero: the members talk straight to each other over
	// 127.0.0.1 (delayed, if at all, by the network stack: netem).
	LinkDelay time.Duration
	// Commits, if not nil, records the group commits of the store written
	// to (the leader's).
	Commits *Commits
	// Logger gets the members' logs (nil: errors, to stderr).
	Logger *slog.Logger
}

// Cluster is a running benchmark cluster (ClusterSink).
type Cluster struct {
	members []*member
	relays  []*Relay
	// lead is the member writes go to: the leader when last looked.
	lead      atomic.Pointer[member]
	failovers atomic.Int64
}

// leader returns the member that leads, waiting for one for at most d.
func (c *Cluster) leader(d time.Duration) (*member, error) {
	if m := c.lead.Load(); m != nil && m.n.IsLeader() {
		return m, nil
	}
	var found *member
	err := waitUntil(d, "a leader", func() bool {
		for _, m := range c.members {
			if m.n.IsLeader() {
				found = m
				return true
			}
		}
		return false
	})
	if err != nil {
		return nil, err
	}
	c.lead.Store(found)
	return found, nil
}

// sink writes through the leader's store; a write the member refuses as no
// longer the leader is written again through the new one (as a console
// follows the leader), its ack latency counting the wait.
func (c *Cluster) sink() Sink {
	return func(ctx context.Context, call, seq int, payload []byte) error {
		for attempt := 0; ; attempt++ {
			m, err := c.leader(10 * time.Second)
			if err != nil {
				return err
			}
			err = framesSink(m.st)(ctx, call, seq, payload)
			if err == nil || !errors.Is(err, cluster.ErrNotLeader) || attempt == 3 {
				return err
			}
			c.failovers.Add(1)
		}
	}
}

// RecordRelays starts or stops recording the relays' lateness (no relays:
// nothing).
func (c *Cluster) RecordRelays(on bool) {
	for _, r := range c.relays {
		r.Record(on)
	}
}

// RelayLateness pools the relays' lateness recorded since the last reset,
// and forgets it if reset (ok false: the cluster has no relays).
func (c *Cluster) RelayLateness(reset bool) (s Summary, ok bool) {
	var all Recorder
	for _, r := range c.relays {
		r.late.mu.Lock()
		all.d = append(all.d, r.late.d...)
		r.late.mu.Unlock()
		if reset {
			r.late.Reset()
		}
	}
	return all.Summary(), len(c.relays) > 0
}

// Failovers is how many writes were refused by a member that had stopped
// leading and written again through the new leader.
func (c *Cluster) Failovers() int64 { return c.failovers.Load() }

// LeaderChanges is how many leaders the first member saw elected, the
// first included.
func (c *Cluster) LeaderChanges() uint64 { return c.members[0].n.Status().LeaderChanges }

// Close stops every member and relay.
func (c *Cluster) Close() {
	for _, m := range c.members {
		m.close()
	}
	for _, r := range c.relays {
		r.Close()
	}
}

// ClusterSink is a cluster of coordinators in this process: each member a
// real store and Raft log in its own directory under dir, encrypted with
// one throwaway key, the members talking Raft over TCP with mutual TLS
// (certificates from a CA made in dir), on 127.0.0.1. The first member is
// bootstrapped and adds the others; frames are written through its store
// as BadgerSink writes them (through the new leader's after an election),
// and acknowledged once a quorum has them in its log and the leader has
// applied them.
func ClusterSink(dir string, o ClusterOptions) (Sink, *Cluster, error) {
	if o.Members == 0 {
		o.Members = 3
	}
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	ca, err := newCerts(filepath.Join(dir, "ca"))
	if err != nil {
		return nil, nil, err
	}
	c := &Cluster{}
	for i := range o.Members {
		name := fmt.Sprintf("m%d", i+1)
		cert, err := ca.coordinator(name)
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		bind, err := freeAddr()
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		advertise := ""
		if o.LinkDelay > 0 {
			r, err := NewRelay(bind, o.LinkDelay)
			if err != nil {
				c.Close()
				return nil, nil, err
			}
			c.relays = append(c.relays, r)
			advertise = r.Addr()
		}
		// Only the store written to commits: the leader's.
		onCommit := func(writes, _ int, took time.Duration) { o.Commits.add(writes, took) }
		m, err := startMember(filepath.Join(dir, name), name, bind, advertise, key, cert, ca.pool, onCommit, o.Logger)
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		c.members = append(c.members, m)
	}
	lead := c.members[0]
	if err := lead.n.Bootstrap(); err != nil {
		c.Close()
		return nil, nil, err
	}
	if err := waitUntil(15*time.Second, "m1 to lead", lead.n.IsLeader); err != nil {
		c.Close()
		return nil, nil, err
	}
	for i, m := range c.members[1:] {
		if err := lead.n.AddVoter(fmt.Sprintf("m%d", i+2), m.n.Address()); err != nil {
			c.Close()
			return nil, nil, err
		}
	}
	// Every member has the configuration before the first write.
	want := lead.st.Applied()
	for i, m := range c.members {
		if err := waitUntil(15*time.Second, fmt.Sprintf("m%d to catch up", i+1), func() bool { return m.st.Applied() >= want }); err != nil {
			c.Close()
			return nil, nil, err
		}
	}
	c.lead.Store(lead)
	return c.sink(), c, nil
}

// freeAddr is a free TCP port on 127.0.0.1.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// certs is a throwaway appliance CA and the coordinator certificates it
// issues, as `callscribe ca issue --kind coordinator` makes them.
type certs struct {
	dir  string
	pool *x509.CertPool
}

func newCerts(dir string) (*certs, error) {
	ca, _, err := pki.EnsureCA(dir)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &certs{dir: dir, pool: pool}, nil
}

// coordinator issues name's certificate for 127.0.0.1.
func (c *certs) coordinator(name string) (tls.Certificate, error) {
	ca, key, err := pki.LoadCA(c.dir)
	if err != nil {
		return tls.Certificate{}, err
	}
	out := filepath.Join(c.dir, name)
	if err := pki.IssueCoordinator(ca, key, name, []string{"127.0.0.1"}, out+".pem", out+"-key.pem"); err != nil {
		return tls.Certificate{}, err
	}
	return pki.LoadClientCert(out+".pem", out+"-key.pem")
}
