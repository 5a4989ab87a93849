package calls

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// counts is an Observer that counts.
type counts struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counts) add(k string, d int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[k] += d
}

func (c *counts) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

func (c *counts) FrameReceived()          { c.add("received", 1) }
func (c *counts) FrameDuplicate()         { c.add("duplicate", 1) }
func (c *counts) FrameConcealed()         { c.add("concealed", 1) }
func (c *counts) FrameLost()              { c.add("lost", 1) }
func (c *counts) FrameUndecodable()       { c.add("undecodable", 1) }
func (c *counts) FramesDecoded(n uint32)  { c.add("decoded", int(n)) }
func (c *counts) Acked(time.Duration)     { c.add("acked", 1) }
func (c *counts) ToWorker(time.Duration)  { c.add("to_worker", 1) }
func (c *counts) Resumed(time.Duration)   { c.add("resumed", 1) }
func (c *counts) FinalSent(time.Duration) { c.add("finals", 1) }
func (c *counts) StoreError()             { c.add("store_errors", 1) }
func (c *counts) Failover()               { c.add("failovers", 1) }
func (c *counts) IdleRelease()            { c.add("idle_releases", 1) }
func (c *counts) Refused(reason string)   { c.add("refused_"+reason, 1) }
func (c *counts) Finalised()              { c.add("finalised", 1) }

type anyModel struct{}

func (anyModel) Get(name string) (*models.Manifest, error) {
	if name == "" {
		name = models.Default
	}
	return &models.Manifest{Name: name}, nil
}

// pipeStream is a Stream over one end of a net.Pipe.
type pipeStream struct{ net.Conn }

func (p pipeStream) CancelRead(quic.StreamErrorCode)  { _ = p.Conn.Close() }
func (p pipeStream) CancelWrite(quic.StreamErrorCode) { _ = p.Conn.Close() }

// pipeWorker is a worker at the other end of a pipe, scripted by two
// hooks: audio is called for every frame of an assignment (n frames so
// far, this one included), end when the console's end arrives; either may
// write worker events. The assignment ends when end returns.
type pipeWorker struct {
	id    proto.WorkerID
	audio func(w *proto.Writer, a proto.Assign, f proto.Audio, n uint32)
	end   func(w *proto.Writer, a proto.Assign, n uint32)
	wg    sync.WaitGroup
}

func (w *pipeWorker) ID() proto.WorkerID { return w.id }
func (w *pipeWorker) Broken() bool       { return false }

func (w *pipeWorker) OpenStream(ctx context.Context) (Stream, error) {
	here, there := net.Pipe()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer there.Close()
		r, wr := proto.NewReader(there), proto.NewWriter(there)
		var a proto.Assign
		if err := r.ReadJSON(proto.TAssign, &a); err != nil {
			return
		}
		frames := uint32(0)
		for {
			m, err := r.Read()
			if err != nil {
				return
			}
			switch m.Type {
			case proto.TAudio:
				frames++
				if w.audio != nil {
					f, _ := proto.ParseAudio(m.Body)
					w.audio(wr, a, f, frames)
				}
			case proto.TEnd:
				if w.end != nil {
					w.end(wr, a, frames)
				}
				_, _ = io.Copy(io.Discard, there)
				return
			}
		}
	}()
	return pipeStream{here}, nil
}

// newFakeWorker decodes every channel it is assigned to one final,
// "hello", once the channel ends.
func newFakeWorker() *pipeWorker {
	return &pipeWorker{id: "fake-w0", end: func(wr *proto.Writer, a proto.Assign, frames uint32) {
		_ = wr.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerFinal, Index: 0, Text: "hello", End: 16000, Decoded: frames, NextSeq: a.FromSeq + frames})
		_ = wr.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerDone, Decoded: frames})
	}}
}

// oneWorker lends its worker to every channel at once.
type oneWorker struct{ w Worker }

func (o oneWorker) Acquire(ctx context.Context, model string) (Worker, func(), error) {
	return o.w, func() {}, nil
}
func (o oneWorker) Remove(Worker, string) {}

// noWorkers never lends a worker.
type noWorkers struct{}

func (noWorkers) Acquire(ctx context.Context, model string) (Worker, func(), error) {
	<-ctx.Done()
	return nil, nil, ctx.Err()
}
func (noWorkers) Remove(Worker, string) {}

func newManager(t *testing.T, w Workers, lim Limits) (*Manager, *counts, *store.Store) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.Open(t.TempDir()+"/store", store.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	obs := &counts{}
	if lim.IdleRelease == 0 {
		lim.IdleRelease = 5 * time.Second
	}
	m := New(Config{Store: st, Workers: w, Observer: obs, Models: anyModel{}, Limits: lim, Log: log,
		AbandonAfter: func() time.Duration { return time.Minute }, Vocabulary: func() []proto.Word { return nil }})
	m.Run()
	t.Cleanup(func() {
		m.Stop() // before the store closes: writers settle first
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	return m, obs, st
}

func hello(id string) *proto.Hello {
	return &proto.Hello{Version: proto.Version, CallID: proto.CallID(id), Channels: []string{"caller"}, Codec: proto.CodecL16,
		Principal: auth.Principal{Name: "console-1", Role: auth.Console}}
}

func audio(seq uint32) proto.Audio {
	return proto.Audio{Channel: 0, Seq: seq, Payload: make([]byte, 320)}
}

// A call goes the whole live path with a fake worker: frames acked once
// durable, in order; the end; the worker's final persisted and sent to the
// console; the call finalised in the store.
func TestCallThroughFakeWorker(t *testing.T) {
	fw := newFakeWorker()
	m, obs, st := newManager(t, oneWorker{fw}, Limits{})
	defer fw.wg.Wait()
	ctx := t.Context()
	sess, wel, err := m.Open(ctx, hello("call-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if wel.Resumed || len(wel.NextSeq) != 1 || wel.NextSeq[0] != 0 {
		t.Fatalf("welcome %+v", wel)
	}
	for seq := range uint32(3) {
		ack, err := sess.Append(ctx, audio(seq))
		if err != nil || ack.NextSeq != seq+1 {
			t.Fatalf("frame %d: ack %+v, %v", seq, ack, err)
		}
	}
	if _, err := sess.Append(ctx, audio(7)); err == nil {
		t.Fatal("a frame out of order was accepted")
	}
	if err := sess.End(ctx, proto.End{Frames: []uint32{3}}); err != nil {
		t.Fatal(err)
	}
	var got []string
	timeout := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case ev, ok := <-sess.Events():
			if !ok {
				done = true
				break
			}
			switch {
			case ev.Transcript != nil && ev.Transcript.Kind == proto.KindFinal:
				got = append(got, ev.Transcript.Text)
			case ev.Finalised != nil:
				if len(ev.Finalised.Finals) != 1 || ev.Finalised.Finals[0] != 1 {
					t.Fatalf("finalised %+v", ev.Finalised)
				}
			}
		case <-timeout:
			t.Fatal("the call was not finalised")
		}
	}
	if len(got) != 1 || got[0] != "hello" {
		t.Fatalf("finals %q", got)
	}
	rec, err := st.Call("call-1")
	if err != nil || rec.State != store.StateFinalised {
		t.Fatalf("stored call %+v, %v", rec, err)
	}
	for k, want := range map[string]int{"acked": 3, "to_worker": 3, "finals": 1, "finalised": 1, "decoded": 3} {
		if n := obs.get(k); n != want {
			t.Errorf("%s = %d, want %d", k, n, want)
		}
	}
}

// A call being set up (no audio yet) counts against the set-up limit; a
// resume of it does not; a call refused is counted by reason.
func TestSetUpLimit(t *testing.T) {
	m, obs, _ := newManager(t, noWorkers{}, Limits{MaxSettingUp: 1})
	ctx := t.Context()
	s1, _, err := m.Open(ctx, hello("call-a"))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = m.Open(ctx, hello("call-b"))
	var pe *proto.Error
	if !errors.As(err, &pe) || pe.Code != proto.CodeUnavailable {
		t.Fatalf("second call while one is set up: %v", err)
	}
	if n := obs.get("refused_global_limit"); n != 1 {
		t.Fatalf("refusals counted %d", n)
	}
	// The console reconnects to its call: a resume, not a new call.
	s2, wel, err := m.Open(ctx, hello("call-a"))
	if err != nil || !wel.Resumed {
		t.Fatalf("resume refused: %+v %v", wel, err)
	}
	// The replaced stream is closed.
	select {
	case _, ok := <-s1.Events():
		if ok {
			t.Fatal("the replaced session got an event")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the replaced session was not closed")
	}
	s2.Close() // no audio ever: the call is dropped
	if m.Live() != 0 {
		t.Fatalf("%d live calls after the console left before any audio", m.Live())
	}
}

// A call belongs to the console that opened it.
func TestAnotherConsoleRefused(t *testing.T) {
	m, _, _ := newManager(t, noWorkers{}, Limits{})
	ctx := t.Context()
	s, _, err := m.Open(ctx, hello("call-x"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Append(ctx, audio(0)); err != nil {
		t.Fatal(err)
	}
	h := hello("call-x")
	h.Principal.Name = "console-2"
	_, _, err = m.Open(ctx, h)
	var pe *proto.Error
	if !errors.As(err, &pe) || pe.Code != proto.CodeForbidden {
		t.Fatalf("another console's hello: %v", err)
	}
	var _ ingest.Session = s
}
