package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/hashicorp/raft"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type testCA struct {
	dir  string
	pool *x509.CertPool
}

func newCA(t *testing.T) *testCA {
	dir := t.TempDir()
	ca, _, err := pki.EnsureCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testCA{dir: dir, pool: pool}
}

func (c *testCA) cert(t *testing.T, name, kind string) tls.Certificate {
	ca, key, err := pki.LoadCA(c.dir)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), name)
	if kind == pki.KindCoordinator {
		err = pki.IssueCoordinator(ca, key, name, []string{"127.0.0.1"}, out+".pem", out+"-key.pem")
	} else {
		err = pki.IssueClient(ca, key, name, kind, out+".pem", out+"-key.pem")
	}
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.LoadClientCert(out+".pem", out+"-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// member is a store and its node.
type member struct {
	name, dir, bind string
	st              *store.Store
	n               *Node
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startMember(t *testing.T, ca *testCA, cert tls.Certificate, name, dir, bind string, snap uint64) *member {
	t.Helper()
	st, err := store.Open(filepath.Join(dir, "store"), store.Options{Logger: quiet, Replicated: true})
	if err != nil {
		t.Fatal(err)
	}
	n, err := Start(Config{Dir: filepath.Join(dir, "raft"), Name: name, Bind: bind, Cert: cert, CAs: ca.pool, FSM: st, Logger: quiet,
		ClusterID: func() string {
			ci, _ := st.Cluster()
			if ci == nil {
				return ""
			}
			return ci.ID
		}, SnapshotThreshold: snap, TrailingLogs: snap})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	st.SetReplicator(n)
	return &member{name: name, dir: dir, bind: bind, st: st, n: n}
}

func (m *member) stop() {
	_ = m.n.Shutdown()
	_ = m.st.Close()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func leaderOf(ms ...*member) *member {
	for _, m := range ms {
		if m != nil && m.n.IsLeader() {
			return m
		}
	}
	return nil
}

func put(t *testing.T, m *member, i int) {
	t.Helper()
	if err := m.st.PutMember(context.Background(), store.MemberInfo{Name: fmt.Sprintf("k%04d", i), Raft: "127.0.0.1:1", QUIC: "127.0.0.1:2", HTTP: "127.0.0.1:3"}); err != nil {
		t.Fatalf("write %d on %s: %v", i, m.name, err)
	}
}

func count(t *testing.T, m *member) int {
	ms, err := m.st.Members()
	if err != nil {
		t.Fatal(err)
	}
	return len(ms)
}

// Three members: writes are acknowledged by the leader once a quorum has
// them and every member applies them; the leader's loss elects another,
// which goes on; the old leader comes back with its data and converges.
func TestThreeMembersFailOverAndRejoin(t *testing.T) {
	ca := newCA(t)
	var ms [3]*member
	for i := range ms {
		name := fmt.Sprintf("m%d", i+1)
		ms[i] = startMember(t, ca, ca.cert(t, name, pki.KindCoordinator), name, t.TempDir(), freeAddr(t), 0)
	}
	defer func() {
		for _, m := range ms {
			if m != nil {
				m.stop()
			}
		}
	}()
	if err := ms[0].n.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "m1 to lead", ms[0].n.IsLeader)
	for _, m := range ms[1:] {
		if err := ms[0].n.AddVoter(m.name, m.n.Address()); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50 {
		put(t, ms[0], i)
	}
	for _, m := range ms {
		waitFor(t, m.name+" to apply 50 writes", func() bool { return count(t, m) == 50 })
	}
	// The leader dies.
	old := ms[0]
	old.stop()
	ms[0] = nil
	waitFor(t, "a new leader", func() bool { return leaderOf(ms[1], ms[2]) != nil })
	lead := leaderOf(ms[1], ms[2])
	for i := 50; i < 80; i++ {
		put(t, lead, i)
	}
	// It comes back with its stale data and follows.
	ms[0] = startMember(t, ca, ca.cert(t, "m1", pki.KindCoordinator), "m1", old.dir, old.bind, 0)
	waitFor(t, "m1 to catch up", func() bool { return count(t, ms[0]) == 80 })
	if ms[0].n.IsLeader() && leaderOf(ms[1], ms[2]) != nil {
		t.Fatal("two leaders")
	}
	for _, m := range ms {
		if got := count(t, m); got != 80 {
			t.Fatalf("%s holds %d writes, want 80", m.name, got)
		}
	}
}

// A member whose log was compacted away catches up from a snapshot: a
// backup of the leader's store, streamed.
func TestNewMemberCatchesUpFromSnapshot(t *testing.T) {
	ca := newCA(t)
	a := startMember(t, ca, ca.cert(t, "a", pki.KindCoordinator), "a", t.TempDir(), freeAddr(t), 16)
	defer a.stop()
	if err := a.n.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to lead", a.n.IsLeader)
	for i := range 100 {
		put(t, a, i)
	}
	if err := a.n.Snapshot(); err != nil {
		t.Fatal(err)
	}
	if first, _ := a.n.logs.FirstIndex(); first <= 1 {
		t.Fatalf("the log was not compacted (first index %d)", first)
	}
	b := startMember(t, ca, ca.cert(t, "b", pki.KindCoordinator), "b", t.TempDir(), freeAddr(t), 16)
	defer b.stop()
	if err := a.n.AddVoter("b", b.n.Address()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to catch up", func() bool { return count(t, b) == 100 })
	put(t, a, 100)
	waitFor(t, "b to apply after the snapshot", func() bool { return count(t, b) == 101 })
	if b.st.Applied() != a.st.Applied() {
		t.Fatalf("applied: b %d, a %d", b.st.Applied(), a.st.Applied())
	}
}

// A peer with another CA's certificate, a certificate of another kind, or
// from another cluster is refused.
func TestForeignPeersRefused(t *testing.T) {
	ca := newCA(t)
	other := newCA(t)
	listen := func(cert tls.Certificate, pool *x509.CertPool, cluster string) *streamLayer {
		sl, err := newStreamLayer("127.0.0.1:0", "", peerTLS(cert, pool), func() string { return cluster }, quiet)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sl.Close() })
		go func() {
			for {
				c, err := sl.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					_, _ = c.Read(make([]byte, 1))
				}()
			}
		}()
		return sl
	}
	srv := listen(ca.cert(t, "srv", pki.KindCoordinator), ca.pool, "cs-one")
	dial := func(cert tls.Certificate, pool *x509.CertPool, cluster string) error {
		cl := &streamLayer{tls: peerTLS(cert, pool), cluster: func() string { return cluster }, log: quiet}
		c, err := cl.Dial(raft.ServerAddress("127.0.0.1:"+portOf(srv.Addr())), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(ca.cert(t, "good", pki.KindCoordinator), ca.pool, "cs-one"); err != nil {
		t.Fatalf("a member of the same cluster was refused: %v", err)
	}
	if err := dial(ca.cert(t, "new", pki.KindCoordinator), ca.pool, ""); err != nil {
		t.Fatalf("a member without a cluster yet (joining) was refused: %v", err)
	}
	for name, err := range map[string]error{
		"another CA":      dial(other.cert(t, "x", pki.KindCoordinator), other.pool, "cs-one"),
		"a console cert":  dial(ca.cert(t, "y", pki.KindConsole), ca.pool, "cs-one"),
		"another cluster": dial(ca.cert(t, "z", pki.KindCoordinator), ca.pool, "cs-two"),
	} {
		if err == nil {
			t.Errorf("%s: the connection was accepted", name)
		}
	}
}

func portOf(a net.Addr) string {
	_, p, _ := net.SplitHostPort(a.String())
	return p
}

// A cluster of one without a network leads at once, and a write that
// fails to replicate (the member stopped) is reported, never acknowledged.
func TestSingleMemberAndStoppedWrites(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "store"), store.Options{Logger: quiet, Replicated: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	n, err := Start(Config{Dir: filepath.Join(dir, "raft"), Name: "solo", FSM: st, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	st.SetReplicator(n)
	waitFor(t, "solo to lead", n.IsLeader)
	if err := st.PutMember(context.Background(), store.MemberInfo{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	err = st.PutMember(context.Background(), store.MemberInfo{Name: "b"})
	if err == nil || !strings.Contains(err.Error(), "shutdown") && !errors.Is(err, ErrNotLeader) {
		t.Fatalf("a write after the member stopped: %v", err)
	}
}

// Probe passes for a coordinator of this cluster's CA and fails for one
// whose certificate comes from another CA, or where nothing listens.
func TestProbe(t *testing.T) {
	ca, other := newCA(t), newCA(t)
	a := startMember(t, ca, ca.cert(t, "a", pki.KindCoordinator), "a", t.TempDir(), freeAddr(t), 0)
	defer a.stop()
	if err := a.n.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to lead", a.n.IsLeader)
	b := startMember(t, ca, ca.cert(t, "b", pki.KindCoordinator), "b", t.TempDir(), freeAddr(t), 0)
	defer b.stop()
	if err := a.n.Probe(b.n.Address()); err != nil {
		t.Fatalf("a coordinator of the same CA: %v", err)
	}
	f := startMember(t, other, other.cert(t, "f", pki.KindCoordinator), "f", t.TempDir(), freeAddr(t), 0)
	defer f.stop()
	if err := a.n.Probe(f.n.Address()); err == nil || !strings.Contains(err.Error(), "CA") {
		t.Fatalf("a coordinator of another CA: %v", err)
	}
	if err := a.n.Probe(freeAddr(t)); err == nil {
		t.Fatal("an address where nothing listens passed")
	}
	ms, err := a.n.Members()
	if err != nil || len(ms) != 1 {
		t.Fatalf("probing changed the configuration: %v %v", ms, err)
	}
}
