package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/proto"
)

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestFramesAreDurableAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	ctx := context.Background()
	const calls, frames = 20, 50
	var wg sync.WaitGroup
	for c := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range frames {
				id := proto.CallID(fmt.Sprintf("call-%d", c))
				if err := s.PutFrames(ctx, id, i%2, []Frame{{Seq: uint32(i / 2), Capture: int64(i), Payload: []byte(fmt.Sprintf("%d/%d", c, i))}}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir)
	defer s.Close()
	for c := range calls {
		id := proto.CallID(fmt.Sprintf("call-%d", c))
		for ch := range 2 {
			n, err := s.NextSeq(id, ch)
			if err != nil || n != frames/2 {
				t.Fatalf("%s/%d: NextSeq %d %v", id, ch, n, err)
			}
			cnt, _ := s.CountFrames(id, ch)
			if cnt != frames/2 {
				t.Fatalf("%s/%d: %d frames", id, ch, cnt)
			}
			seq := uint32(5)
			err = s.Frames(id, ch, 5, 3, func(f Frame) error {
				want := fmt.Sprintf("%d/%d", c, int(f.Seq)*2+ch)
				if f.Seq != seq || string(f.Payload) != want || f.Capture != int64(f.Seq*2)+int64(ch) {
					return fmt.Errorf("frame %+v, want seq %d payload %s", f, seq, want)
				}
				seq++
				return nil
			})
			if err != nil || seq != 8 {
				t.Fatalf("Frames: %v (stopped at %d)", err, seq)
			}
		}
	}
	if n, _ := s.NextSeq("nobody", 0); n != 0 {
		t.Fatalf("NextSeq of an unknown call: %d", n)
	}
}

func TestCallsAndFinals(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	if _, err := s.Call("x"); err != ErrNotFound {
		t.Fatalf("missing call: %v", err)
	}
	c := &Call{ID: "x", Console: "c", Channels: []string{"caller"}, Codec: proto.CodecL16, State: StateOpen, Created: time.Now()}
	if err := s.PutCall(ctx, c); err != nil {
		t.Fatal(err)
	}
	if last, _ := s.LastFinal("x", 0); last != nil {
		t.Fatalf("last final of a new call: %+v", last)
	}
	for i := range 300 { // crosses a byte boundary of the index
		f := Final{Channel: 0, Index: uint32(i), Text: fmt.Sprint("u", i), NextSeq: uint32(i * 10), Checkpoint: json.RawMessage(`{"a":1}`)}
		c.State = StateStreaming
		if err := s.PutFinal(ctx, "x", f, c); err != nil {
			t.Fatal(err)
		}
	}
	last, err := s.LastFinal("x", 0)
	if err != nil || last.Index != 299 || last.Text != "u299" {
		t.Fatalf("last final %+v %v", last, err)
	}
	fs, _ := s.Finals("x", 0, 250)
	if len(fs) != 50 || fs[0].Index != 250 {
		t.Fatalf("finals from 250: %d", len(fs))
	}
	got, _ := s.Call("x")
	if got.State != StateStreaming {
		t.Fatalf("call record not updated with the final: %+v", got)
	}
	all := 0
	if err := s.EachCall(ctx, func(*Call) error { all++; return nil }); err != nil || all != 1 {
		t.Fatalf("calls: %d, %v", all, err)
	}
	if err := s.Probe(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestBigBatchSplitsTransactions(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	fs := make([]Frame, 20000)
	for i := range fs {
		fs[i] = Frame{Seq: uint32(i), Payload: make([]byte, 3200)}
	}
	if err := s.PutFrames(context.Background(), "big", 0, fs); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.CountFrames("big", 0); n != 20000 {
		t.Fatalf("stored %d", n)
	}
}

// Concurrent writers share group commits, and OnCommit accounts for every
// write exactly once.
func TestOnCommitCountsEveryWriteOnce(t *testing.T) {
	var mu sync.Mutex
	writes, commits, bytes := 0, 0, 0
	s, err := Open(t.TempDir(), Options{OnCommit: func(w, b int, took time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if took <= 0 {
			t.Errorf("commit took %v", took)
		}
		writes, commits, bytes = writes+w, commits+1, bytes+b
	}})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 50, 20
	var wg sync.WaitGroup
	for c := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := s.PutFrames(t.Context(), proto.CallID(fmt.Sprint("c", c)), 0, []Frame{{Seq: uint32(i), Payload: make([]byte, 3200)}}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if writes != writers*each || bytes < writes*3200 {
		t.Fatalf("OnCommit saw %d writes (%d bytes), want %d (≥ %d bytes)", writes, bytes, writers*each, writers*each*3200)
	}
	if commits >= writes {
		t.Fatalf("%d commits for %d concurrent writes: no group commit", commits, writes)
	}
	t.Logf("%d writes in %d commits", writes, commits)
}

// Close fails the writes still queued (ErrClosed) instead of leaving their
// writers waiting for ever, and later writes fail at once.
func TestCloseFailsQueuedWrites(t *testing.T) {
	s := open(t, t.TempDir())
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := map[string]int{}
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				err := s.PutFrames(context.Background(), proto.CallID(fmt.Sprint("c", w)), 0, []Frame{{Seq: uint32(i), Payload: make([]byte, 3200)}})
				k := "ok"
				if err != nil {
					k = err.Error()
					if !errors.Is(err, ErrClosed) {
						t.Errorf("write: %v", err)
					}
				}
				mu.Lock()
				errs[k]++
				mu.Unlock()
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("writers still waiting after Close")
	}
	if errs[ErrClosed.Error()] == 0 {
		t.Fatalf("no write saw ErrClosed: %v", errs)
	}
	if err := s.PutCall(context.Background(), &Call{ID: "late"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	t.Logf("%v", errs)
}

// A value that does not decode is an error naming the store and the key,
// wrapping both ErrDamaged and the decoder's error.
func TestUndecodableValueNamesStoreAndKey(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	defer s.Close()
	ctx := context.Background()
	if err := s.write(ctx, false, entry{key: callKey("bad"), val: []byte(`{"id":"bad","console":"c","channels":["caller"],"state":"open","created":"2026-01-01T00:00:00Z","decoded":[0],"resumes":`)}); err != nil {
		t.Fatal(err)
	}
	if err := s.write(ctx, false, entry{key: finalKey("bad", 0, 3), val: []byte(`{"channel":0,"index":3,"text":"half a fin`)}); err != nil {
		t.Fatal(err)
	}
	check := func(what string, err error, key string) {
		t.Helper()
		var se *json.SyntaxError
		if err == nil || !errors.Is(err, ErrDamaged) || !errors.As(err, &se) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), key) {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s: %v", what, err)
	}
	_, err := s.Call("bad")
	check("Call", err, `"c/bad"`)
	err = s.EachCall(t.Context(), func(*Call) error { return nil })
	check("EachCall", err, `"c/bad"`)
	_, err = s.Finals("bad", 0, 0)
	check("Finals", err, `f/bad`)
	_, err = s.LastFinal("bad", 0)
	check("LastFinal", err, `f/bad`)
}

// A write submitted after another is written only if that one was: a
// channel's frames are never stored across a gap.
func TestSubmitFramesFollowsItsPredecessor(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	frames := func(from uint32) []Frame {
		return []Frame{{Seq: from, Payload: make([]byte, 320)}, {Seq: from + 1, Payload: make([]byte, 320)}}
	}
	ok, err := s.SubmitFrames(ctx, "c", 0, frames(0), nil)
	if err != nil {
		t.Fatal(err)
	}
	next, err := s.SubmitFrames(ctx, "c", 0, frames(2), ok)
	if err != nil {
		t.Fatal(err)
	}
	if err := ok.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := next.Wait(); err != nil {
		t.Fatalf("a write after a good one: %v", err)
	}
	// A predecessor that failed (as a refused or failed commit leaves it).
	failed := &Pending{r: newReq(true, nil)}
	failed.r.err = ErrDiskFull
	after, err := s.SubmitFrames(ctx, "c", 0, frames(5), failed)
	if err != nil {
		t.Fatal(err)
	}
	if err := after.Wait(); !errors.Is(err, ErrPredecessor) || !errors.Is(err, ErrDiskFull) {
		t.Fatalf("a write after a failed one: %v", err)
	}
	if n, _ := s.CountFrames("c", 0); n != 4 {
		t.Fatalf("%d frames stored, want 4 (none after the failed write)", n)
	}
}
