package raftlog

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// fsm records the commands applied to it.
type fsm struct {
	mu      sync.Mutex
	applied []string
}

func (f *fsm) Apply(e *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, string(e.Data))
	return nil
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fsmSnapshot(slices.Clone(f.applied)), nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var a []string
	if err := json.NewDecoder(rc).Decode(&a); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = a
	return nil
}

func (f *fsm) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.applied)
}

type fsmSnapshot []string

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode([]string(s)); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (fsmSnapshot) Release() {}

// node is a single-node raft on a Log.
type node struct {
	r     *raft.Raft
	trans *raft.InmemTransport
}

// startNode starts raft on l (bootstrapping a one-node cluster if asked)
// and waits until it leads.
func startNode(t *testing.T, l *Log, snaps raft.SnapshotStore, f raft.FSM, bootstrap bool) *node {
	t.Helper()
	conf := raft.DefaultConfig()
	conf.LocalID = "n1"
	conf.LogOutput = io.Discard
	conf.HeartbeatTimeout = 50 * time.Millisecond
	conf.ElectionTimeout = 50 * time.Millisecond
	conf.LeaderLeaseTimeout = 50 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	conf.SnapshotThreshold = 1 << 40 // snapshots only when the test asks
	conf.SnapshotInterval = time.Hour
	conf.TrailingLogs = 50
	notify := make(chan bool, 16)
	conf.NotifyCh = notify
	addr, trans := raft.NewInmemTransport("n1")
	if bootstrap {
		c := raft.Configuration{Servers: []raft.Server{{ID: conf.LocalID, Address: addr}}}
		if err := raft.BootstrapCluster(conf, l, l, snaps, trans, c); err != nil {
			t.Fatalf("BootstrapCluster: %v", err)
		}
	}
	r, err := raft.NewRaft(conf, f, l, l, snaps, trans)
	if err != nil {
		t.Fatalf("NewRaft: %v", err)
	}
	n := &node{r: r, trans: trans}
	// A failsafe only: leadership is awaited as raft's notification.
	guard := time.NewTimer(time.Minute)
	defer guard.Stop()
	for leader := false; !leader; {
		select {
		case leader = <-notify:
		case <-guard.C:
			n.stop(t)
			t.Fatal("no leadership")
		}
	}
	return n
}

func (n *node) stop(t *testing.T) {
	t.Helper()
	if err := n.r.Shutdown().Error(); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	n.trans.Close()
}

// apply applies the commands from..to-1 ("cmd-N") concurrently, so raft
// hands the log batches, and waits for them all.
func (n *node) apply(t *testing.T, from, to int) {
	t.Helper()
	var fs []raft.ApplyFuture
	for i := from; i < to; i++ {
		fs = append(fs, n.r.Apply(fmt.Appendf(nil, "cmd-%d", i), 0))
	}
	for i, f := range fs {
		if err := f.Error(); err != nil {
			t.Fatalf("Apply cmd-%d: %v", from+i, err)
		}
	}
}

func commands(from, to int) []string {
	var c []string
	for i := from; i < to; i++ {
		c = append(c, fmt.Sprintf("cmd-%d", i))
	}
	return c
}

// A real raft node on the log: applies, a snapshot and its compaction,
// a shutdown and reopen, then term, logs and applies carry on.
func TestRaft(t *testing.T) {
	dir := t.TempDir()
	snaps := raft.NewInmemSnapshotStore()
	l := openLog(t, dir, testKey, 64<<10)
	f1 := &fsm{}
	n := startNode(t, l, snaps, f1, true)
	n.apply(t, 0, 300)
	if err := n.r.Snapshot().Error(); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	n.apply(t, 300, 400)
	if err := n.r.Barrier(0).Error(); err != nil {
		t.Fatal(err)
	}
	n.stop(t)
	if got := f1.commands(); !slices.Equal(got, commands(0, 400)) {
		t.Fatalf("applied %d commands, want 400 in order", len(got))
	}
	term1, err := l.GetUint64([]byte("CurrentTerm"))
	if err != nil || term1 == 0 {
		t.Fatalf("CurrentTerm = %d, %v", term1, err)
	}
	first1, _ := l.FirstIndex()
	last1, _ := l.LastIndex()
	if first1 <= 1 || last1 < 400 {
		t.Fatalf("log holds %d..%d: want compacted by the snapshot, and every entry", first1, last1)
	}
	var tail raft.Log
	if err := l.GetLog(last1, &tail); err != nil {
		t.Fatal(err)
	}
	closeLog(t, l)

	l = openLog(t, dir, testKey, 64<<10)
	if term, err := l.GetUint64([]byte("CurrentTerm")); term != term1 || err != nil {
		t.Fatalf("CurrentTerm after reopen = %d, %v; want %d", term, err, term1)
	}
	first, _ := l.FirstIndex()
	last, _ := l.LastIndex()
	if first != first1 || last != last1 {
		t.Fatalf("log holds %d..%d after reopen, want %d..%d", first, last, first1, last1)
	}
	var e raft.Log
	if err := l.GetLog(last1, &e); err != nil || !sameLog(&e, &tail) {
		t.Fatalf("GetLog(%d) after reopen: %v", last1, err)
	}
	if ok, err := raft.HasExistingState(l, l, snaps); !ok || err != nil {
		t.Fatalf("HasExistingState = %v, %v", ok, err)
	}

	f2 := &fsm{}
	n = startNode(t, l, snaps, f2, false)
	n.apply(t, 400, 450)
	if err := n.r.Barrier(0).Error(); err != nil {
		t.Fatal(err)
	}
	n.stop(t)
	if got := f2.commands(); !slices.Equal(got, commands(0, 450)) {
		t.Fatalf("after restart: applied %d commands, want 450 in order", len(got))
	}
	if term, _ := l.GetUint64([]byte("CurrentTerm")); term <= term1 {
		t.Fatalf("CurrentTerm %d after a new election, was %d", term, term1)
	}
	if last, _ := l.LastIndex(); last <= last1+50 {
		t.Fatalf("LastIndex %d, was %d before 50 applies", last, last1)
	}
}
