package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/proto"
)

// openTemp opens a store in a new temporary directory (an in-memory
// Badger keeps values only up to its value threshold: no call records).
func openTemp(t *testing.T) *Store {
	t.Helper()
	s := open(t, t.TempDir())
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// putCalls stores n calls created a second apart from base, ids in an
// order unrelated to time, consoles and states in turn; it returns them
// newest first.
func putCalls(t *testing.T, s *Store, n int, base time.Time, console func(i int) proto.ConsoleID) []*Call {
	t.Helper()
	states := []string{StateOpen, StateStreaming, StateEnded, StateFinalised}
	calls := make([]*Call, n)
	for i := range n {
		calls[i] = &Call{ID: proto.CallID(fmt.Sprintf("id-%08x-%d", rand.Uint32(), i)), Console: console(i), Channels: []string{"caller"},
			State: states[i%len(states)], Created: base.Add(time.Duration(i) * time.Second).UTC(), Decoded: []uint32{0}}
	}
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				if err := s.PutCall(context.Background(), calls[i]); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	slices.Reverse(calls)
	return calls
}

// walk lists every page of f with limit, and the number of pages.
func walk(t *testing.T, s *Store, f CallFilter, limit int) ([]proto.CallID, int) {
	t.Helper()
	var ids []proto.CallID
	cursor, pages := "", 0
	for {
		page, next, err := s.CallsPage(f, cursor, limit)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(page) > limit {
			t.Fatalf("a page of %d calls, limit %d", len(page), limit)
		}
		for _, c := range page {
			ids = append(ids, c.ID)
		}
		if next == "" {
			return ids, pages
		}
		if pages > 10000 {
			t.Fatal("the listing does not end")
		}
		cursor = next
	}
}

func idsOf(calls []*Call, keep func(*Call) bool) []proto.CallID {
	var out []proto.CallID
	for _, c := range calls {
		if keep(c) {
			out = append(out, c.ID)
		}
	}
	return out
}

func TestCallsPageNewestFirstFiltered(t *testing.T) {
	s := openTemp(t)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	all := putCalls(t, s, 1000, base, func(i int) proto.ConsoleID { return proto.ConsoleID(fmt.Sprintf("console-%d", i%3)) })
	for _, limit := range []int{1, 7, 100, 1000} {
		got, pages := walk(t, s, CallFilter{}, limit)
		if want := idsOf(all, func(*Call) bool { return true }); !slices.Equal(got, want) {
			t.Fatalf("limit %d: %d calls listed, want the %d newest first", limit, len(got), len(want))
		}
		if want := (1000 + limit - 1) / limit; pages < want || pages > want+1 {
			t.Errorf("limit %d: %d pages, want %d", limit, pages, want)
		}
	}
	since := base.Add(900 * time.Second)
	for _, f := range []CallFilter{{State: StateFinalised}, {Console: "console-1"}, {Since: since}, {State: StateOpen, Console: "console-2", Since: since}} {
		got, _ := walk(t, s, f, 50)
		want := idsOf(all, func(c *Call) bool {
			return (f.State == "" || c.State == f.State) && (f.Console == "" || c.Console == f.Console) && !c.Created.Before(f.Since)
		})
		if len(want) == 0 || !slices.Equal(got, want) {
			t.Errorf("%+v: %d calls listed, want %d", f, len(got), len(want))
		}
	}
	// Updating a record does not list it twice; deleting it unlists it and
	// removes its index key.
	upd := *all[10]
	upd.State = StateFinalised
	if err := s.PutCall(context.Background(), &upd); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteCall(context.Background(), all[20].ID); err != nil {
		t.Fatal(err)
	}
	got, _ := walk(t, s, CallFilter{}, 100)
	if len(got) != 999 || slices.Contains(got, all[20].ID) || !slices.Contains(got, all[10].ID) {
		t.Errorf("after an update and a delete: %d calls listed, want 999 without the deleted one", len(got))
	}
	if n, _ := s.countKeys(timePrefix); n != 999 {
		t.Errorf("%d index keys for 999 calls", n)
	}
	for _, bad := range []string{"x", "!!!", "AAAA"} {
		if _, _, err := s.CallsPage(CallFilter{}, bad, 10); !errors.Is(err, ErrBadCursor) {
			t.Errorf("cursor %q: %v, want ErrBadCursor", bad, err)
		}
	}
}

// A filter that matches a few calls among many returns short pages, each
// examining a bounded number of calls, and still finds them all.
func TestCallsPageBoundedScan(t *testing.T) {
	s := openTemp(t)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	n := 2*scanPerPage + 100
	all := putCalls(t, s, n, base, func(i int) proto.ConsoleID {
		if i == 5 || i == n/2 || i == n-5 {
			return "rare"
		}
		return "busy"
	})
	got, pages := walk(t, s, CallFilter{Console: "rare"}, 100)
	if want := idsOf(all, func(c *Call) bool { return c.Console == "rare" }); !slices.Equal(got, want) {
		t.Fatalf("rare console: listed %v, want %v", got, want)
	}
	if pages < 3 {
		t.Errorf("%d calls examined in %d pages: a page examines at most %d", n, pages, scanPerPage)
	}
}

// A store whose records have no index keys (written before the index) is
// indexed when it opens, and index keys without a record are removed.
func TestCallIndexRebuiltOnOpen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	ctx := context.Background()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var es []entry
	for i := range 300 {
		c := &Call{ID: proto.CallID(fmt.Sprintf("old-%03d", 299-i)), Console: "c", State: StateFinalised, Created: base.Add(time.Duration(i) * time.Minute)}
		ce, err := callEntries(c)
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, ce[0]) // the record alone, as before the index
	}
	es = append(es, entry{key: timeKey("gone", base), val: []byte{}})
	if err := s.write(ctx, false, es...); err != nil {
		t.Fatal(err)
	}
	if got, _ := walk(t, s, CallFilter{}, 100); len(got) != 0 {
		t.Fatalf("%d calls listed before the index is rebuilt", len(got))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir)
	defer s.Close()
	got, _ := walk(t, s, CallFilter{}, 64)
	if len(got) != 300 || got[0] != "old-000" || got[299] != "old-299" {
		t.Fatalf("after reopening: %d calls listed (first %v), want 300 newest first", len(got), got[:min(len(got), 1)])
	}
	if n, _ := s.countKeys(timePrefix); n != 300 {
		t.Errorf("%d index keys for 300 calls: the orphan stays", n)
	}
}

func TestEachCallInBatches(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	n := 3*eachBatch + 17
	all := putCalls(t, s, n, time.Now(), func(int) proto.ConsoleID { return "c" })
	var seen []proto.CallID
	// fn may write: delete every other call as it goes.
	err := s.EachCall(ctx, func(c *Call) error {
		seen = append(seen, c.ID)
		if len(seen)%2 == 0 {
			return s.DeleteCall(ctx, c.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := idsOf(all, func(*Call) bool { return true })
	slices.Sort(want)
	if !slices.Equal(seen, want) {
		t.Fatalf("EachCall saw %d calls, want each of %d once in id order", len(seen), len(want))
	}
	left := 0
	if err := s.EachCall(ctx, func(*Call) error { left++; return nil }); err != nil || left != n-n/2 {
		t.Errorf("%d calls left (%v), want %d", left, err, n-n/2)
	}
	stop := errors.New("stop")
	calls := 0
	if err := s.EachCall(ctx, func(*Call) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Errorf("fn's error: %v after %d calls", err, calls)
	}
}
