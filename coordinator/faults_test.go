package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

// fakeWorker is a version-2 worker that registers, pings (unless frozen)
// and records what it is assigned; it decodes nothing.
type fakeWorker struct {
	t       *testing.T
	conn    *quic.Conn
	mu      sync.Mutex
	assigns []proto.Assign
	frames  [][]uint32 // per assignment: frame seqs received
	closed  []bool     // per assignment: the coordinator closed the stream
	welcome proto.WorkerWelcome
}

func (tc *testCoord) worker(t *testing.T, id string, slots int, ping bool) *fakeWorker {
	t.Helper()
	fw := &fakeWorker{t: t, conn: tc.dial(t, proto.ALPNNode)}
	st, err := fw.conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r, w := proto.NewReader(st), proto.NewWriter(st)
	h := proto.WorkerHello{Version: proto.Version, Token: "node-token-0123456789", WorkerID: proto.WorkerID(id), NodeID: "n1", Model: "moonshine-base", Slots: slots, SelfTest: "ok"}
	if err := w.WriteJSON(proto.TWorkerHello, h); err != nil {
		t.Fatal(err)
	}
	if err := r.ReadJSON(proto.TWorkerWelcome, &fw.welcome); err != nil {
		t.Fatal(err)
	}
	if ping {
		go func() {
			for fw.conn.Context().Err() == nil {
				if w.Write(proto.TWorkerPing, nil) != nil {
					return
				}
				time.Sleep(time.Duration(fw.welcome.PingIntervalMS) * time.Millisecond)
			}
		}()
	}
	go func() {
		for {
			s, err := fw.conn.AcceptStream(context.Background())
			if err != nil {
				return
			}
			go fw.serve(s)
		}
	}()
	return fw
}

func (fw *fakeWorker) serve(st *quic.Stream) {
	r := proto.NewReader(st)
	var a proto.Assign
	if err := r.ReadJSON(proto.TAssign, &a); err != nil {
		return
	}
	fw.mu.Lock()
	i := len(fw.assigns)
	fw.assigns = append(fw.assigns, a)
	fw.frames = append(fw.frames, nil)
	fw.closed = append(fw.closed, false)
	fw.mu.Unlock()
	for {
		m, err := r.Read()
		if err != nil {
			fw.mu.Lock()
			fw.closed[i] = true
			fw.mu.Unlock()
			return
		}
		if m.Type == proto.TAudio {
			au, _ := proto.ParseAudio(m.Body)
			fw.mu.Lock()
			fw.frames[i] = append(fw.frames[i], au.Seq)
			fw.mu.Unlock()
		}
	}
}

func (fw *fakeWorker) state() ([]proto.Assign, [][]uint32, []bool) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fr := make([][]uint32, len(fw.frames))
	for i := range fw.frames {
		fr[i] = append([]uint32(nil), fw.frames[i]...)
	}
	return append([]proto.Assign(nil), fw.assigns...), fr, append([]bool(nil), fw.closed...)
}

func (tc *testCoord) usedSlots() int {
	_, ws := tc.c.rack.Snapshot()
	n := 0
	for _, w := range ws {
		n += w.Used
	}
	return n
}

// A console may send many frames without waiting: each is acked once it
// is durable, in order, and every one is in the store.
func TestFramesArePipelined(t *testing.T) {
	tc := startCoordinator(t)
	s := tc.stream(t)
	s.open(hello("pipelined"))
	const n = 300
	for i := range uint32(n) {
		s.audio(0, i)
	}
	last := uint32(0)
	for last < n {
		m := s.next()
		if m.Type != proto.TAck {
			t.Fatalf("want acks, got type %d %s", m.Type, m.Body)
		}
		a, _ := proto.ParseAck(m.Body)
		if a.NextSeq <= last {
			t.Fatalf("ack %d after %d: acks must grow", a.NextSeq, last)
		}
		last = a.NextSeq
	}
	if c, _ := tc.c.store.CountFrames("pipelined", 0); c != n {
		t.Fatalf("%d frames stored, want %d", c, n)
	}
}

// Calls being set up (opened, no audio) are limited in all and per
// console with a retryable error; a stream that sends nothing is closed
// after FirstAudio and its call forgotten; calls with audio are untouched.
func TestSetUpCallsAreBoundedAndExpire(t *testing.T) {
	tc := startCoordinatorWith(t, func(c *Config) {
		c.Limits = Limits{MaxSettingUp: 3, MaxSettingUpPerConsole: 2, FirstAudio: 700 * time.Millisecond}
	})
	as := func(id, console string) proto.Hello {
		h := hello(id)
		h.Token = consoleToken[console]
		return h
	}
	a1, a2 := tc.stream(t), tc.stream(t)
	a1.open(as("a1", "console-a"))
	a2.open(as("a2", "console-a"))
	a3 := tc.stream(t)
	if err := a3.w.WriteJSON(proto.THello, as("a3", "console-a")); err != nil {
		t.Fatal(err)
	}
	a3.expectError(proto.CodeUnavailable)
	b1 := tc.stream(t)
	b1.open(as("b1", "console-b"))
	c1 := tc.stream(t)
	if err := c1.w.WriteJSON(proto.THello, as("c1", "console-c")); err != nil {
		t.Fatal(err)
	}
	c1.expectError(proto.CodeUnavailable)
	// Audio on a1: it is a live call now, and console-a may set up another.
	a1.audio(0, 0)
	a1.expectAck(1)
	a4 := tc.stream(t)
	a4.open(as("a4", "console-a"))
	// The silent streams are closed and their calls dropped; a1 stays.
	for _, s := range []*rawStream{a2, b1, a4} {
		s.expectError(proto.CodeBadRequest)
	}
	for _, id := range []proto.CallID{"a2", "b1", "a4", "a3", "c1"} {
		waitFor(t, string(id)+" dropped", 5*time.Second, func() bool {
			_, err := tc.c.store.Call(id)
			return errors.Is(err, store.ErrNotFound)
		})
	}
	if rec, err := tc.c.store.Call("a1"); err != nil || rec.State != store.StateStreaming {
		t.Fatalf("the live call: %+v %v", rec, err)
	}
	if !strings.Contains(tc.logs.String(), "calls being set up") {
		t.Fatal("no log line for the refused call")
	}
}

// A worker that stops pinging (frozen) is dropped well within a second;
// one that pings stays.
func TestFrozenWorkerIsDropped(t *testing.T) {
	tc := startCoordinatorWith(t, func(c *Config) {
		c.Limits = Limits{WorkerPing: 50 * time.Millisecond, WorkerTimeout: 300 * time.Millisecond}
	})
	live := tc.worker(t, "n1-live", 1, true)
	if live.welcome.PingIntervalMS != 50 || live.welcome.TimeoutMS != 300 {
		t.Fatalf("welcome %+v", live.welcome)
	}
	frozen := tc.worker(t, "n1-frozen", 1, false)
	t0 := time.Now()
	waitFor(t, "the frozen worker dropped", 2*time.Second, func() bool { return frozen.conn.Context().Err() != nil })
	if took := time.Since(t0); took > time.Second {
		t.Errorf("frozen worker dropped after %v", took)
	}
	time.Sleep(time.Second)
	if live.conn.Context().Err() != nil {
		t.Fatal("a pinging worker was dropped")
	}
	_, ws := tc.c.rack.Snapshot()
	if len(ws) != 1 || ws[0].ID != "n1-live" {
		t.Fatalf("registered workers %+v", ws)
	}
	if !strings.Contains(tc.logs.String(), "worker unresponsive") {
		t.Fatal("no log line for the frozen worker")
	}
}

// A channel takes a worker slot only once audio flows, gives it back when
// audio stops, and resumes (from its checkpoint) when audio returns.
func TestWorkerSlotFollowsAudio(t *testing.T) {
	tc := startCoordinatorWith(t, func(c *Config) { c.Limits = Limits{IdleRelease: 400 * time.Millisecond} })
	fw := tc.worker(t, "n1-w", 1, true)
	s := tc.stream(t)
	s.open(hello("slot-call"))
	time.Sleep(300 * time.Millisecond)
	if as, _, _ := fw.state(); len(as) != 0 || tc.usedSlots() != 0 {
		t.Fatalf("a call without audio took a worker: %d assignments, %d slots used", len(as), tc.usedSlots())
	}
	for i := range uint32(3) {
		s.audio(0, i)
		s.expectAck(i + 1)
	}
	waitFor(t, "the channel assigned with its frames", 5*time.Second, func() bool {
		as, fr, _ := fw.state()
		return len(as) == 1 && len(fr[0]) == 3
	})
	waitFor(t, "the slot given back", 5*time.Second, func() bool {
		_, _, closed := fw.state()
		return closed[0] && tc.usedSlots() == 0
	})
	s.audio(0, 3)
	s.expectAck(4)
	waitFor(t, "the channel assigned again", 5*time.Second, func() bool {
		as, fr, _ := fw.state()
		return len(as) == 2 && len(fr[1]) == 4
	})
	as, _, _ := fw.state()
	if as[1].FromSeq != 0 || as[1].CallID != "slot-call" {
		t.Fatalf("second assignment %+v", as[1])
	}
}

// Calls being set up are bounded per address too, whatever console ids a
// flood claims.
func TestSetUpCallsAreBoundedPerAddress(t *testing.T) {
	tc := startCoordinatorWith(t, func(c *Config) { c.Limits = Limits{MaxSettingUpPerRemote: 2} })
	for i, console := range []string{"console-a", "console-b"} {
		h := hello(fmt.Sprint("per-remote-", i))
		h.Token = consoleToken[console]
		tc.stream(t).open(h)
	}
	s := tc.stream(t)
	h := hello("per-remote-2")
	h.Token = testTokenC
	if err := s.w.WriteJSON(proto.THello, h); err != nil {
		t.Fatal(err)
	}
	s.expectError(proto.CodeUnavailable)
	if !strings.Contains(tc.logs.String(), "calls from 127.0.0.1 are being set up") {
		t.Fatal("the refusal does not name the address")
	}
}
