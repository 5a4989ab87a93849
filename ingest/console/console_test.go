package console

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callscribe/callscribe/internal/leader"
	"github.com/callscribe/callscribe/internal/leader/leadertest"
	"github.com/callscribe/callscribe/proto"
)

// fakeLeader is the leader's side of a call: it welcomes a hello with
// next_seq (what it already holds), acks every frame, and after end sends
// final text and finalised. It records the hellos and the frames it got.
type fakeLeader struct {
	nextSeq uint32
	text    string

	mu     sync.Mutex
	hellos []proto.Hello
	frames []uint32
	end    *proto.End
}

func (l *fakeLeader) serve(_ context.Context, first proto.Msg, r *proto.Reader, w *proto.Writer) {
	var h proto.Hello
	if first.Type != proto.THello || proto.Unmarshal(first, &h) != nil {
		_ = w.WriteJSON(proto.TError, &proto.Error{Code: proto.CodeBadRequest, Fatal: true})
		return
	}
	l.mu.Lock()
	l.hellos = append(l.hellos, h)
	l.mu.Unlock()
	if w.WriteJSON(proto.TWelcome, proto.Welcome{Version: proto.Version, CallID: h.CallID, NextSeq: []uint32{l.nextSeq}, Resumed: l.nextSeq > 0}) != nil {
		return
	}
	next := l.nextSeq
	for {
		m, err := r.Read()
		if err != nil {
			return
		}
		switch m.Type {
		case proto.TAudio:
			a, err := proto.ParseAudio(m.Body)
			if err != nil || a.Seq != next {
				_ = w.WriteJSON(proto.TError, &proto.Error{Code: proto.CodeOutOfOrder, Fatal: true})
				return
			}
			next++
			l.mu.Lock()
			l.frames = append(l.frames, a.Seq)
			l.mu.Unlock()
			_ = w.Write(proto.TAck, proto.EncodeAck(proto.Ack{Channel: 0, NextSeq: next}))
		case proto.TEnd:
			var e proto.End
			_ = proto.Unmarshal(m, &e)
			l.mu.Lock()
			l.end = &e
			l.mu.Unlock()
			idx := uint32(0)
			if len(h.NextFinal) > 0 {
				idx = h.NextFinal[0]
			}
			_ = w.WriteJSON(proto.TTranscript, proto.Transcript{Kind: proto.KindFinal, Index: idx, Label: proto.ChannelCaller, Text: l.text})
			_ = w.WriteJSON(proto.TFinalised, proto.Finalised{CallID: h.CallID, Finals: []uint32{idx + 1}})
			return
		}
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// runCall streams frames frames of one channel and returns the finals the
// console delivered and Run's error.
func runCall(t *testing.T, c *Call, frames int) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for i := range frames {
		if _, err := c.Send(0, []byte{byte(i), 0}, time.Now()); err != nil {
			break // the call is over: Run's error says why
		}
	}
	c.End()
	var finals []string
	for ev := range c.Events() {
		if ev.Transcript != nil && ev.Transcript.Kind == proto.KindFinal {
			finals = append(finals, ev.Transcript.Text)
		}
	}
	return finals, <-done
}

func config(p *leadertest.PKI, servers ...string) Config {
	return Config{Servers: servers, RootCAs: p.Pool, ServerName: "localhost", Token: "t", CallID: "call-1", ConsoleID: "c1",
		Channels: []string{proto.ChannelCaller}, Codec: proto.CodecL16, Logger: quiet()}
}

// A console given only a follower's address goes where it says: no leader
// yet (it waits and asks again), then the leader, where the call runs to
// its end. Being sent on before the first welcome is not a reconnect.
func TestConsoleFollowsTheLeader(t *testing.T) {
	p := leadertest.NewPKI(t)
	ldr := &fakeLeader{text: "at the leader"}
	ls := leadertest.Serve(t, p, proto.ALPNConsole, ldr.serve)
	var asked atomic.Int32
	fol := leadertest.Follower(t, p, proto.ALPNConsole, func() *proto.Error {
		if asked.Add(1) == 1 {
			return proto.NotLeader("", nil) // an election is under way
		}
		return proto.NotLeader(ls.Addr, []string{"127.0.0.1:1", ls.Addr})
	})
	c := New(Config{Server: fol.Addr, RootCAs: p.Pool, ServerName: "localhost", Token: "t", CallID: "call-1", ConsoleID: "c1",
		Channels: []string{proto.ChannelCaller}, Codec: proto.CodecL16, Logger: quiet()})
	finals, err := runCall(t, c, 5)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if !slices.Equal(finals, []string{"at the leader"}) {
		t.Fatalf("finals %q", finals)
	}
	if n := len(fol.Firsts()); n != 2 {
		t.Fatalf("the follower was asked %d times, want 2 (no leader, then the leader's name)", n)
	}
	for _, m := range fol.Firsts() {
		if m.Type != proto.THello {
			t.Fatalf("the follower got message type %d first", m.Type)
		}
	}
	ldr.mu.Lock()
	defer ldr.mu.Unlock()
	if len(ldr.hellos) != 1 || ldr.hellos[0].CallID != "call-1" || !slices.Equal(ldr.frames, []uint32{0, 1, 2, 3, 4}) || ldr.end == nil || ldr.end.Frames[0] != 5 {
		t.Fatalf("the leader got hellos %+v, frames %v, end %+v", ldr.hellos, ldr.frames, ldr.end)
	}
	if c.Reconnects() != 0 {
		t.Fatalf("%d reconnects: a redirect before the first welcome is not one", c.Reconnects())
	}
	if a := c.Acked(); a[0] != 5 {
		t.Fatalf("acked %v", a)
	}
}

// A call running at a leader that steps down resumes at the new one
// through the ordinary resume path, whether the old leader just ends the
// stream (the console dials the next address, a follower, and is sent on)
// or answers not_leader itself: the console reaches the new leader
// (learned from the answer, not configured) and resumes with the same call
// id and its next_final; the new leader's next_seq says where to send
// from, and every final is delivered once.
func TestConsoleResumesAtTheNewLeader(t *testing.T) {
	for _, c := range []struct {
		name         string
		notLeader    bool // the old leader says not_leader (else its stream just ends)
		followerAsks int
	}{{"stream ends", false, 1}, {"leader steps down", true, 0}} {
		t.Run(c.name, func(t *testing.T) { resumeAtNewLeader(t, c.notLeader, c.followerAsks) })
	}
}

func resumeAtNewLeader(t *testing.T, notLeader bool, followerAsks int) {
	p := leadertest.NewPKI(t)
	// B already holds frames 0 and 1 (replicated from A).
	b := &fakeLeader{nextSeq: 2, text: "second"}
	bs := leadertest.Serve(t, p, proto.ALPNConsole, b.serve)
	var aStreams atomic.Int32
	aHello := make(chan proto.Hello, 1)
	as := leadertest.Serve(t, p, proto.ALPNConsole, func(_ context.Context, first proto.Msg, r *proto.Reader, w *proto.Writer) {
		if aStreams.Add(1) > 1 { // a follower now
			_ = w.WriteJSON(proto.TError, proto.NotLeader(bs.Addr, nil))
			return
		}
		var h proto.Hello
		_ = proto.Unmarshal(first, &h)
		aHello <- h
		_ = w.WriteJSON(proto.TWelcome, proto.Welcome{Version: proto.Version, CallID: h.CallID, NextSeq: []uint32{0}})
		for {
			m, err := r.Read()
			if err != nil {
				return
			}
			if a, err := proto.ParseAudio(m.Body); m.Type == proto.TAudio && err == nil && a.Seq == 1 {
				_ = w.Write(proto.TAck, proto.EncodeAck(proto.Ack{Channel: 0, NextSeq: 2}))
				_ = w.WriteJSON(proto.TTranscript, proto.Transcript{Kind: proto.KindFinal, Index: 0, Text: "first"})
				if notLeader {
					_ = w.WriteJSON(proto.TError, proto.NotLeader(bs.Addr, []string{bs.Addr}))
				}
				return // A steps down: the stream ends
			}
		}
	})
	f := leadertest.Follower(t, p, proto.ALPNConsole, func() *proto.Error { return proto.NotLeader(bs.Addr, []string{as.Addr, bs.Addr}) })
	cfg := config(p, as.Addr, f.Addr)
	type connect struct {
		addr string
		next []uint32
	}
	var mu sync.Mutex
	var connects []connect
	cfg.OnConnect = func(addr string, next []uint32) {
		mu.Lock()
		defer mu.Unlock()
		connects = append(connects, connect{addr, next})
	}
	call := New(cfg)
	finals, err := runCall(t, call, 6)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if !slices.Equal(finals, []string{"first", "second"}) {
		t.Fatalf("finals %q, want each once", finals)
	}
	if h := <-aHello; len(h.NextFinal) != 1 || h.NextFinal[0] != 0 {
		t.Fatalf("first hello %+v", h)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.hellos) != 1 || b.hellos[0].CallID != "call-1" || !slices.Equal(b.hellos[0].NextFinal, []uint32{1}) {
		t.Fatalf("the new leader got hellos %+v, want one resume with next_final [1]", b.hellos)
	}
	if !slices.Equal(b.frames, []uint32{2, 3, 4, 5}) || b.end == nil || b.end.Frames[0] != 6 {
		t.Fatalf("the new leader got frames %v, end %+v: want 2.. (its next_seq)", b.frames, b.end)
	}
	if n := len(f.Firsts()); n != followerAsks {
		t.Fatalf("the follower was asked %d times, want %d", n, followerAsks)
	}
	if call.Reconnects() != 1 {
		t.Fatalf("%d reconnects, want 1", call.Reconnects())
	}
	// OnConnect names who welcomed the call, and what it held: A from 0,
	// then B from 2 (the followers that only redirected are not named).
	mu.Lock()
	defer mu.Unlock()
	if len(connects) != 2 || connects[0].addr != as.Addr || !slices.Equal(connects[0].next, []uint32{0}) ||
		connects[1].addr != bs.Addr || !slices.Equal(connects[1].next, []uint32{2}) {
		t.Fatalf("OnConnect saw %+v, want %s [0] then %s [2]", connects, as.Addr, bs.Addr)
	}
}

// A console given only dead coordinators gives up after ReconnectFor with
// an error naming every address it tried.
func TestConsoleNoCoordinatorReachable(t *testing.T) {
	p := leadertest.NewPKI(t)
	d1, d2 := leadertest.DeadAddr(t), leadertest.DeadAddr(t)
	cfg := config(p, d1, d2)
	cfg.ReconnectFor = time.Nanosecond
	var seen []string
	cfg.OnError = func(err error) { seen = append(seen, err.Error()) }
	c := New(cfg)
	_, err := runCall(t, c, 1)
	var ue *leader.UnreachableError
	if !errors.As(err, &ue) || !slices.Equal(ue.Addrs, []string{d1, d2}) {
		t.Fatalf("got %v, want an UnreachableError for %s and %s", err, d1, d2)
	}
	if msg := err.Error(); !strings.Contains(msg, "no coordinator reachable at "+d1+", "+d2+": ") {
		t.Fatalf("message %q", msg)
	}
	if errors.Is(err, ErrRefused) {
		t.Fatal("unreachable reported as refused")
	}
	// The first dead address was followed by the second at once, without
	// giving up in between.
	if len(seen) != 1 || !strings.Contains(seen[0], d1) {
		t.Fatalf("errors before giving up: %q", seen)
	}
}

// Refusals other than not_leader still end the call, redirect or not.
func TestConsoleRefusedAtTheLeader(t *testing.T) {
	p := leadertest.NewPKI(t)
	ls := leadertest.Follower(t, p, proto.ALPNConsole, func() *proto.Error {
		return &proto.Error{Code: proto.CodeUnauthorized, Message: "bad token", Fatal: true}
	})
	fol := leadertest.Follower(t, p, proto.ALPNConsole, func() *proto.Error { return proto.NotLeader(ls.Addr, nil) })
	_, err := runCall(t, New(config(p, fol.Addr)), 1)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "bad token") {
		t.Fatalf("got %v", err)
	}
}

func TestConsoleNeedsAnAddress(t *testing.T) {
	p := leadertest.NewPKI(t)
	if _, err := runCall(t, New(config(p)), 0); err == nil || !strings.Contains(err.Error(), "no coordinator address") {
		t.Fatalf("got %v", err)
	}
}
