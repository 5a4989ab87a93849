package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/proto"
	badger "github.com/dgraph-io/badger/v4"
)

// loopback replicates to itself: each batch is applied at the next index,
// as a cluster of one would, and every command is kept.
type loopback struct {
	mu   sync.Mutex
	s    *Store
	next uint64
	cmds [][]byte
}

func (l *loopback) Replicate(cmd []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.next++
	l.cmds = append(l.cmds, append([]byte(nil), cmd...))
	return l.s.Apply(l.next, cmd)
}

func openReplicated(t *testing.T, dir string) (*Store, *loopback) {
	t.Helper()
	s, err := Open(dir, Options{Replicated: true})
	if err != nil {
		t.Fatal(err)
	}
	l := &loopback{s: s, next: s.Applied()}
	s.SetReplicator(l)
	return s, l
}

// Every write goes through the replicator; what it applies is what a
// reader sees; a replayed command (at or below Applied) is skipped; the
// applied index survives a reopen.
func TestReplicatedWritesApplyOnce(t *testing.T) {
	dir := t.TempDir()
	s, l := openReplicated(t, dir)
	ctx := context.Background()
	for i := range 10 {
		if err := s.PutFrames(ctx, "call-r", 0, []Frame{{Seq: uint32(i), Capture: 1, Payload: []byte{byte(i), 1, 2}}}); err != nil {
			t.Fatal(err)
		}
	}
	if len(l.cmds) == 0 || s.Handed() != l.next {
		t.Fatalf("%d commands, handed %d, next %d", len(l.cmds), s.Handed(), l.next)
	}
	// A replay of the first command does nothing (it would otherwise
	// rewrite frame 0 over nothing: it is already there).
	if err := s.Apply(1, l.cmds[0]); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.NextSeq("call-r", 0); n != 10 {
		t.Fatalf("next seq %d, want 10", n)
	}
	// The read waited for every acknowledged write to be applied.
	applied := s.Applied()
	if applied != l.next {
		t.Fatalf("applied %d after a read, want %d", applied, l.next)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, _ := openReplicated(t, dir)
	defer s2.Close()
	if s2.Applied() != applied {
		t.Fatalf("applied %d after reopen, want %d", s2.Applied(), applied)
	}
}

// A command that does not decode is refused, not half-applied.
func TestApplyRefusesGarbage(t *testing.T) {
	s, _ := openReplicated(t, t.TempDir())
	defer s.Close()
	for _, cmd := range [][]byte{{7}, {0, 200}, {0, 1, 'k', 5, 'v'}} {
		if _, err := decodeBatch(cmd); !errors.Is(err, errBadCommand) {
			t.Errorf("%v: %v", cmd, err)
		}
	}
	good := encodeBatch([]*req{newReq(false, []entry{{key: []byte("m/x"), val: []byte("1")}, {key: []byte("m/y"), del: true}})})
	es, err := decodeBatch(good)
	if err != nil || len(es) != 2 || string(es[0].key) != "m/x" || !es[1].del {
		t.Fatalf("round trip: %+v %v", es, err)
	}
	// Refused, and for good: a later command is not applied past it (the
	// store would miss one), and reads fail.
	ix := s.Handed() + 1
	if err := s.Apply(ix, []byte{7}); !errors.Is(err, errBadCommand) {
		t.Fatalf("garbage applied: %v", err)
	}
	if err := s.Apply(ix+1, good); !errors.Is(err, errBadCommand) {
		t.Fatalf("a command after a refused one: %v", err)
	}
	if _, err := s.Cluster(); err == nil {
		t.Fatal("a read after a refused command")
	}
}

// Backup and Restore carry everything but the member's own bookkeeping,
// and the applied index with the data; a store left half-restored is
// refused at open.
func TestBackupRestore(t *testing.T) {
	a, _ := openReplicated(t, t.TempDir())
	defer a.Close()
	ctx := context.Background()
	for c := range 5 {
		id := proto.CallID(fmt.Sprintf("call-%d", c))
		if err := a.PutFrames(ctx, id, 0, []Frame{{Seq: 0, Capture: 1, Payload: bytes.Repeat([]byte{byte(c)}, 100)}}); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := a.Backup(&buf); err != nil {
		t.Fatal(err)
	}
	bdir := t.TempDir()
	b, _ := openReplicated(t, bdir)
	if err := b.PutFrames(ctx, "stale", 0, []Frame{{Seq: 0, Capture: 1, Payload: []byte("old")}}); err != nil {
		t.Fatal(err)
	}
	idB := identityOf(t, b)
	if err := b.Restore(&buf); err != nil {
		t.Fatal(err)
	}
	if b.Applied() != a.Applied() {
		t.Fatalf("applied %d after restore, want %d", b.Applied(), a.Applied())
	}
	if n, _ := b.NextSeq("stale", 0); n != 0 {
		t.Fatal("the restored store kept what it held before")
	}
	for c := range 5 {
		if n, _ := b.NextSeq(proto.CallID(fmt.Sprintf("call-%d", c)), 0); n != 1 {
			t.Fatalf("call-%d missing after restore", c)
		}
	}
	if identityOf(t, b) != idB {
		t.Fatal("the restore replaced the member's own identity")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopens cleanly; a leftover marker is refused.
	b2, err := Open(bdir, Options{Replicated: true})
	if err != nil {
		t.Fatalf("reopen after restore: %v", err)
	}
	b2.Close()
	if err := os.WriteFile(restoringPath(filepath.Clean(bdir)), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(bdir, Options{Replicated: true}); !errors.Is(err, ErrRestoreInterrupted) {
		t.Fatalf("a half-restored store opened: %v", err)
	}
}

func identityOf(t *testing.T, s *Store) string {
	t.Helper()
	var id []byte
	err := s.view(func(txn *badger.Txn) error {
		it, err := txn.Get(identityKey)
		if err != nil {
			return err
		}
		id, err = it.ValueCopy(nil)
		return err
	})
	if err != nil || len(id) == 0 {
		t.Fatalf("no identity: %v", err)
	}
	return string(id)
}

// A command is acknowledged once handed over, before Badger holds it; a
// read waits until what was handed over before it is applied, so it sees
// every acknowledged write; Close applies what is queued.
func TestApplyAcksBeforeBadgerAndReadsWait(t *testing.T) {
	dir := t.TempDir()
	s, l := openReplicated(t, dir)
	gate := make(chan struct{})
	s.apply.mu.Lock()
	s.apply.hook = func() error { <-gate; return nil }
	s.apply.mu.Unlock()
	ctx := context.Background()
	// Acknowledged while the applier is held.
	for i := range 3 {
		if err := s.PutFrames(ctx, "call-q", 0, []Frame{{Seq: uint32(i), Capture: 1, Payload: []byte{byte(i)}}}); err != nil {
			t.Fatal(err)
		}
	}
	if s.Handed() != l.next || s.Applied() >= l.next {
		t.Fatalf("handed %d, applied %d, next %d: the ack waited for Badger", s.Handed(), s.Applied(), l.next)
	}
	read := make(chan uint32, 1)
	go func() {
		n, err := s.NextSeq("call-q", 0)
		if err != nil {
			t.Error(err)
		}
		read <- n
	}()
	select {
	case n := <-read:
		t.Fatalf("a read ran before the acknowledged writes were applied (next %d)", n)
	case <-time.After(100 * time.Millisecond):
	}
	close(gate)
	if n := <-read; n != 3 {
		t.Fatalf("next seq %d after the apply, want 3", n)
	}
	// Queued at Close: applied, and found after a reopen.
	gate2 := make(chan struct{})
	s.apply.mu.Lock()
	s.apply.hook = func() error { <-gate2; return nil }
	s.apply.mu.Unlock()
	if err := s.PutFrames(ctx, "call-q", 0, []Frame{{Seq: 3, Capture: 1, Payload: []byte{3}}}); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(50*time.Millisecond, func() { close(gate2) })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, _ := openReplicated(t, dir)
	defer s2.Close()
	if n, _ := s2.NextSeq("call-q", 0); n != 4 || s2.Applied() != l.next {
		t.Fatalf("after reopen: next seq %d (want 4), applied %d (want %d)", n, s2.Applied(), l.next)
	}
}

// An apply that fails stops the applier: the member is told (its node
// stops), later commands and reads are refused, nothing is applied past it.
func TestApplyFailureStopsApplying(t *testing.T) {
	s, l := openReplicated(t, t.TempDir())
	defer s.Close()
	failed := make(chan error, 1)
	s.OnApplyFailure(func(err error) { failed <- err })
	boom := errors.New("disk on fire")
	s.apply.mu.Lock()
	s.apply.hook = func() error { return boom }
	s.apply.mu.Unlock()
	ctx := context.Background()
	if err := s.PutFrames(ctx, "call-f", 0, []Frame{{Seq: 0, Capture: 1, Payload: []byte{1}}}); err != nil {
		t.Fatal(err) // committed to the log: acknowledged
	}
	select {
	case err := <-failed:
		if !errors.Is(err, boom) {
			t.Fatalf("failure reported as %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the failed apply was not reported")
	}
	if _, err := s.NextSeq("call-f", 0); !errors.Is(err, boom) {
		t.Fatalf("a read after a failed apply: %v", err)
	}
	if err := s.Apply(l.next+1, encodeBatch([]*req{newReq(false, []entry{{key: []byte("m/x"), val: []byte("1")}})})); !errors.Is(err, boom) {
		t.Fatalf("a command after a failed apply: %v", err)
	}
	if s.Applied() >= l.next {
		t.Fatalf("applied %d past the failure", s.Applied())
	}
}
