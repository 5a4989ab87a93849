package audit

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func chain(t *testing.T, n int) []Entry {
	t.Helper()
	var out []Entry
	var head Head
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	for i := range n {
		e := Seal(Entry{Time: t0.Add(time.Duration(i) * time.Second), Actor: "sup-1", Role: "supervisor", Remote: "10.0.0.7",
			Action: ActionTranscriptRead, Target: fmt.Sprintf("call-%d", i), Outcome: OutcomeOK}, head)
		head = Head{Seq: e.Seq, Hash: e.Hash}
		out = append(out, e)
	}
	return out
}

func wantBroken(t *testing.T, err error, seq uint64) {
	t.Helper()
	var ce *ChainError
	if !errors.As(err, &ce) {
		t.Fatalf("Verify = %v, want a ChainError at seq %d", err, seq)
	}
	if ce.Seq != seq {
		t.Fatalf("Verify named seq %d (%v), want %d", ce.Seq, err, seq)
	}
}

func TestIntactChain(t *testing.T) {
	es := chain(t, 5)
	if es[0].Seq != 1 || es[0].Prev != ZeroHash || es[4].Seq != 5 {
		t.Fatalf("seqs %d..%d, first prev %s", es[0].Seq, es[4].Seq, es[0].Prev)
	}
	if err := Verify(es, ZeroHash); err != nil {
		t.Fatal(err)
	}
	if err := Verify(es[2:], es[1].Hash); err != nil {
		t.Fatalf("a run from the middle: %v", err)
	}
	if err := Verify(nil, ""); err != nil {
		t.Fatal(err)
	}
}

// The hash is the one the package comment defines, byte for byte.
func TestHashDefinition(t *testing.T) {
	e := Entry{Seq: 1, Time: time.Date(2025, 3, 1, 12, 0, 0, 500000000, time.UTC), Actor: "op", Action: "node.drain", Target: "n1", Outcome: "ok", Prev: ZeroHash}
	// printf 'callscribe-audit-1\n64:%s,1:1,22:2025-03-01T12:00:00.5Z,2:op,0:,0:,10:node.drain,2:n1,2:ok,0:,' 000…0 | sha256sum
	const want = "f2162aecdd92b6e632bd1da619d328e27b26cb201fbc5b7fc84572b0c43922a3"
	if got := ComputeHash(e); got != want {
		t.Errorf("ComputeHash = %s, want %s (the definition is public: change it only with a new version prefix)", got, want)
	}
}

func TestTamperedField(t *testing.T) {
	es := chain(t, 5)
	es[2].Outcome = "denied"
	wantBroken(t, Verify(es, ZeroHash), 3)
	es = chain(t, 5)
	es[3].Time = es[3].Time.Add(time.Nanosecond)
	wantBroken(t, Verify(es, ZeroHash), 4)
}

func TestDeletedMiddleEntry(t *testing.T) {
	es := chain(t, 5)
	es = append(es[:2], es[3:]...)
	wantBroken(t, Verify(es, ZeroHash), 4)
}

func TestDeletedFirstEntry(t *testing.T) {
	es := chain(t, 3)
	wantBroken(t, Verify(es[1:], ZeroHash), 2)
}

func TestSwappedPair(t *testing.T) {
	es := chain(t, 5)
	es[1], es[2] = es[2], es[1]
	wantBroken(t, Verify(es, ZeroHash), 3)
	// Swapped and renumbered: the links break.
	es = chain(t, 5)
	es[1], es[2] = es[2], es[1]
	es[1].Seq, es[2].Seq = 2, 3
	wantBroken(t, Verify(es, ZeroHash), 2)
}

// An entry changed and given a matching hash no longer links to its
// successor.
func TestRehashedButUnlinked(t *testing.T) {
	es := chain(t, 5)
	es[2].Actor = "someone-else"
	es[2].Hash = ComputeHash(es[2])
	err := Verify(es, ZeroHash)
	wantBroken(t, err, 4)
	var ce *ChainError
	errors.As(err, &ce)
	if ce.Index != 3 {
		t.Errorf("index %d, want 3", ce.Index)
	}
}

// Pages verified one after another are checked as one chain.
func TestChainAcrossPages(t *testing.T) {
	es := chain(t, 7)
	c := &Chain{}
	for _, page := range [][]Entry{es[:3], es[3:6], es[6:]} {
		for _, e := range page {
			if err := c.Add(e); err != nil {
				t.Fatal(err)
			}
		}
	}
	if c.Len() != 7 || c.Head().Hash != es[6].Hash {
		t.Fatalf("len %d head %+v", c.Len(), c.Head())
	}
	c = &Chain{}
	for _, e := range append(es[:3:3], es[4:]...) {
		if err := c.Add(e); err != nil {
			wantBroken(t, err, 5)
			return
		}
	}
	t.Fatal("a page boundary hid a missing entry")
}
