package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/internal/audit"
	badger "github.com/dgraph-io/badger/v4"
)

func appendN(t *testing.T, s *Store, n int, target string) []audit.Entry {
	t.Helper()
	var out []audit.Entry
	for i := range n {
		e, err := s.AppendAudit(context.Background(), audit.Entry{Time: time.Now(), Actor: "sup", Role: "supervisor", Remote: "10.1.2.3",
			Action: audit.ActionTranscriptRead, Target: fmt.Sprintf("%s-%d", target, i), Outcome: audit.OutcomeOK})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

func verifyStored(t *testing.T, s *Store) ([]audit.Entry, error) {
	t.Helper()
	es, err := s.AuditEntries(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return es, audit.Verify(es, audit.ZeroHash)
}

// Appends from many goroutines at once form one contiguous, intact chain,
// and it continues across a reopen.
func TestAuditConcurrentAppendsFormIntactChain(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	const writers, each = 16, 40
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := s.AppendAudit(context.Background(), audit.Entry{Time: time.Now(), Actor: fmt.Sprintf("w%d", w), Action: audit.ActionCallsList, Target: fmt.Sprint(i), Outcome: audit.OutcomeOK}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	es, err := verifyStored(t, s)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != writers*each || es[len(es)-1].Seq != writers*each {
		t.Fatalf("%d entries, last seq %d", len(es), es[len(es)-1].Seq)
	}
	head := s.AuditHead()
	if head.Seq != writers*each || head.Hash != es[len(es)-1].Hash {
		t.Fatalf("head %+v", head)
	}
	if page, _ := s.AuditEntries(100, 10); len(page) != 10 || page[0].Seq != 101 || page[9].Seq != 110 {
		t.Fatalf("page after 100: %d entries from %d", len(page), page[0].Seq)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir)
	defer s.Close()
	if h := s.AuditHead(); h != head {
		t.Fatalf("head after reopen %+v, want %+v", h, head)
	}
	appendN(t, s, 3, "after")
	es, err = verifyStored(t, s)
	if err != nil || len(es) != writers*each+3 {
		t.Fatalf("after reopen: %d entries, %v", len(es), err)
	}
}

// An entry changed, or removed, in Badger itself is caught by Verify,
// which names it.
func TestAuditTamperedInStoreIsDetected(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	appendN(t, s, 10, "call")
	raw := func(seq uint64) []byte {
		var v []byte
		if err := s.db.View(func(txn *badger.Txn) error {
			it, err := txn.Get(auditKey(seq))
			if err != nil {
				return err
			}
			v, err = it.ValueCopy(nil)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return v
	}
	orig := raw(5)
	forged := bytes.Replace(orig, []byte(`"outcome":"ok"`), []byte(`"outcome":"denied"`), 1)
	if bytes.Equal(orig, forged) {
		t.Fatalf("nothing to tamper in %s", orig)
	}
	if err := s.write(context.Background(), false, entry{key: auditKey(5), val: forged}); err != nil {
		t.Fatal(err)
	}
	_, err := verifyStored(t, s)
	var ce *audit.ChainError
	if !errors.As(err, &ce) || ce.Seq != 5 {
		t.Fatalf("a changed entry 5: %v", err)
	}
	t.Log(err)
	// Put it back; remove entry 7.
	if err := s.write(context.Background(), false, entry{key: auditKey(5), val: orig}, entry{key: auditKey(7), del: true}); err != nil {
		t.Fatal(err)
	}
	_, err = verifyStored(t, s)
	if !errors.As(err, &ce) || ce.Seq != 8 {
		t.Fatalf("entry 7 removed: %v", err)
	}
	t.Log(err)
}

// A write that fails takes the entries queued after it with it, and the
// next entry takes its seq: the chain never has a hole.
func TestAuditFailedWriteLeavesNoHole(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	appendN(t, s, 3, "ok")
	l := &s.audit
	// Entry 4 is on its way and will fail (as a refused or failed commit
	// leaves it); entry 5 follows it.
	l.mu.Lock()
	e4 := audit.Seal(audit.Entry{Time: time.Now(), Actor: "x", Action: audit.ActionCallsList, Outcome: audit.OutcomeOK}, l.head)
	p4 := &Pending{r: newReq(false, nil)}
	p4.r.err = ErrDiskFull
	w4 := &auditWrite{e: e4, prev: l.last}
	l.flight[4] = w4
	l.head, l.last = audit.Head{Seq: 4, Hash: e4.Hash}, p4
	l.mu.Unlock()
	if _, err := s.AppendAudit(context.Background(), audit.Entry{Time: time.Now(), Actor: "y", Action: audit.ActionCallsList, Outcome: audit.OutcomeOK}); !errors.Is(err, ErrPredecessor) {
		t.Fatalf("entry 5 after a failed entry 4: %v", err)
	}
	if err := l.settle(w4, p4, ErrDiskFull); !errors.Is(err, ErrDiskFull) {
		t.Fatal(err)
	}
	if h := s.AuditHead(); h.Seq != 3 {
		t.Fatalf("head %+v after the failure, want seq 3", h)
	}
	es := appendN(t, s, 2, "again")
	if es[0].Seq != 4 {
		t.Fatalf("the next entry is seq %d, want 4", es[0].Seq)
	}
	stored, err := verifyStored(t, s)
	if err != nil || len(stored) != 5 {
		t.Fatalf("%d entries: %v", len(stored), err)
	}
}

func TestAuditExportCursor(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	if n, err := s.AuditExported(); n != 0 || err != nil {
		t.Fatalf("fresh cursor %d %v", n, err)
	}
	if err := s.SetAuditExported(context.Background(), 42); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir)
	defer s.Close()
	if n, err := s.AuditExported(); n != 42 || err != nil {
		t.Fatalf("cursor after reopen %d %v", n, err)
	}
}

// On a disk that fills, audit writes are refused (ErrDiskFull, or
// ErrPredecessor for those queued behind a refused one) while appenders
// keep going; once space returns the chain goes on. Every entry reported
// durable is stored as it was returned, and the whole chain verifies: no
// hole, no entry acknowledged and then overwritten.
func TestAuditDiskFullLeavesIntactChain(t *testing.T) {
	mnt := tmpfs(t, 256<<20)
	s, err := Open(filepath.Join(mnt, "store"), Options{DiskReserve: 48 << 20, MetaReserve: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var (
		mu      sync.Mutex
		acked   = map[uint64]string{}
		refused int
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				e, err := s.AppendAudit(context.Background(), audit.Entry{Time: time.Now(), Actor: fmt.Sprintf("w%d", w), Action: audit.ActionTranscriptRead, Target: fmt.Sprint(i), Outcome: audit.OutcomeOK, Detail: strings.Repeat("x", 200)})
				mu.Lock()
				if err == nil {
					acked[e.Seq] = e.Hash
				} else if errors.Is(err, ErrDiskFull) || errors.Is(err, ErrPredecessor) {
					refused++
				} else {
					t.Error(err)
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	filler := filepath.Join(mnt, "filler")
	fill(t, filler, 1<<20, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return refused > 50
	})
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n > before+100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("appends did not resume once space returned (%d acked before, %d now)", before, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	es, err := verifyStored(t, s)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d entries stored, %d acknowledged, %d refused", len(es), len(acked), refused)
	stored := map[uint64]string{}
	for _, e := range es {
		stored[e.Seq] = e.Hash
	}
	for seq, h := range acked {
		if stored[seq] != h {
			t.Fatalf("entry %d was acknowledged with hash %s but the store holds %q", seq, h, stored[seq])
		}
	}
	if h := s.AuditHead(); h.Seq != es[len(es)-1].Seq || h.Hash != es[len(es)-1].Hash {
		t.Fatalf("head %+v, newest stored %d", h, es[len(es)-1].Seq)
	}
}
