package calls

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/proto"
)

// errIdle ends an assignment whose channel has had no new audio for
// Limits.IdleRelease: the worker slot goes back to the pool, and the
// channel is assigned again (resuming from its checkpoint) when audio comes.
var errIdle = errors.New("no new audio: worker slot released")

// workerError is an error the worker itself reported on an assignment.
type workerError struct {
	msg   string
	frame *uint32
}

func (e *workerError) Error() string { return "worker error: " + e.msg }

// runChannel keeps one channel of a call on a worker until it is decoded to
// its end. A worker slot is taken only while the channel has audio to
// decode. When the worker fails, the channel moves to another worker and
// resumes from the checkpoint of its last persisted final.
func (m *Manager) runChannel(ctx context.Context, cl *call, idx int) {
	ch := cl.chans[idx]
	log := m.log.With("call", cl.id, "channel", idx)
	failures := 0       // consecutive failed assignments
	var failedAt uint32 // where the last failure resumed from
	resumed := cl.recovered
	needAudio := true // wait for audio before taking a slot (not after a failure)
	for ctx.Err() == nil {
		cl.mu.Lock()
		complete := ch.complete
		cl.mu.Unlock()
		if complete {
			m.channelComplete(cl, ch)
			return
		}
		if needAudio && !m.awaitAudio(ctx, cl, ch) {
			return
		}
		needAudio = false
		lost := time.Now()
		w, release, err := m.cfg.Workers.Acquire(ctx, cl.rec.Model)
		if err != nil {
			return
		}
		from, err := m.dispatchOnce(ctx, cl, ch, w, resumed, lost)
		release()
		switch {
		case err == nil:
			m.channelComplete(cl, ch)
			return
		case ctx.Err() != nil:
			return
		case errors.Is(err, errIdle):
			log.Info("channel idle: worker slot released", "worker", w.ID())
			m.obs.IdleRelease()
			failures, resumed, needAudio = 0, false, true
			continue
		}
		if failures > 0 && from == failedAt {
			failures++
		} else {
			failures, failedAt = 1, from
		}
		resumed = true
		var we *workerError
		if errors.As(err, &we) && we.frame != nil && failures >= 2 {
			// A worker failed twice on the same frame: the frame is treated
			// as lost (concealed) from now on rather than moving the channel
			// for ever. It stays in the store untouched.
			if m.skipFrame(ctx, cl, ch, *we.frame, we.msg) {
				failures = 0
			}
		}
		log.Warn("channel lost its worker: moving it", "worker", w.ID(), "err", err, "failures_here", failures)
		m.obs.Failover()

		// A broken worker connection is removed at once so the next
		// acquire does not pick it again.
		if w.Broken() {
			m.cfg.Workers.Remove(w, "connection lost")
		}
		// Failing again and again at the same point is not a reason to
		// spin: back off, up to 30 s, and say so once each time it grows.
		delay := min(time.Duration(failures)*tuning.RetryStep, tuning.RetryQuickMax)
		if failures >= tuning.RetrySlowAfter {
			delay = min(tuning.RetrySlowBase<<min(failures-tuning.RetrySlowAfter, 5), tuning.RetrySlowMax)
			log.Error("channel keeps failing at the same point: backing off", "from_seq", from, "failures", failures, "retry_in", delay)
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return
		case <-cl.gone:
			return
		}
	}
}

// awaitAudio waits until the channel has audio no worker has been sent yet,
// or has ended. It reports false when the call is dropped or ctx ends.
func (m *Manager) awaitAudio(ctx context.Context, cl *call, ch *channel) bool {
	for {
		cl.mu.Lock()
		ready := ch.ended || ch.nextSeq > ch.fed
		cl.mu.Unlock()
		if ready {
			return true
		}
		select {
		case <-ch.notify:
		case <-cl.gone:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// skipFrame records that frame seq of a channel is concealed instead of
// decoded (durably, so a resumed channel decodes the same). It reports
// whether the frame is now skipped.
func (m *Manager) skipFrame(ctx context.Context, cl *call, ch *channel, seq uint32, why string) bool {
	cl.recMu.Lock() // durable first, then settled: held through both
	defer cl.recMu.Unlock()
	cl.mu.Lock()
	for len(cl.rec.Skipped) < len(cl.chans) {
		cl.rec.Skipped = append(cl.rec.Skipped, nil)
	}
	if slices.Contains(cl.rec.Skipped[ch.idx], seq) {
		cl.mu.Unlock()
		return false
	}
	rec := *cl.rec
	rec.Skipped = slices.Clone(rec.Skipped)
	rec.Skipped[ch.idx] = append(slices.Clone(rec.Skipped[ch.idx]), seq)
	cl.mu.Unlock()
	if err := m.store.PutCall(ctx, &rec); err != nil {
		m.log.Error("cannot record a skipped frame", "call", cl.id, "channel", ch.idx, "frame", seq, "err", err)
		return false
	}
	cl.mu.Lock()
	cl.rec.Skipped = rec.Skipped
	ch.undecodable++
	cl.mu.Unlock()
	m.obs.FrameUndecodable()
	m.log.Error("frame concealed after workers failed on it twice", "call", cl.id, "channel", ch.idx, "frame", seq, "worker_error", why)
	return true
}

// dispatchOnce runs one assignment of a channel on worker w. It returns nil
// once the worker has decoded the channel to its end, and the frame the
// assignment resumed from.
func (m *Manager) dispatchOnce(ctx context.Context, cl *call, ch *channel, w Worker, resumed bool, lostAt time.Time) (uint32, error) {
	last, err := m.resumePoint(cl.id, ch.idx)
	if err != nil {
		return 0, err
	}
	a := proto.Assign{CallID: cl.id, Channel: ch.idx, Label: ch.label, Codec: cl.rec.Codec, Model: cl.rec.Model, Vocabulary: cl.rec.Vocabulary}
	if last != nil {
		a.FromSeq, a.Checkpoint = last.NextSeq, last.Checkpoint
	}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := w.OpenStream(actx)
	if err != nil {
		return a.FromSeq, fmt.Errorf("open stream: %w", err)
	}
	defer st.CancelRead(0)
	defer st.Close()
	// A cancelled assignment (shutdown) must not stay blocked in a read.
	stopRead := context.AfterFunc(actx, func() { st.CancelRead(0) })
	defer stopRead()
	pw, pr := proto.NewWriter(st), proto.NewReader(st)
	if err := pw.WriteJSON(proto.TAssign, a); err != nil {
		return a.FromSeq, fmt.Errorf("assign: %w", err)
	}
	m.log.Info("channel assigned", "call", cl.id, "channel", ch.idx, "worker", w.ID(), "from_seq", a.FromSeq, "resumed", resumed)
	if resumed {
		cl.mu.Lock()
		cl.rec.Resumes++
		ev := ingest.Event{Transcript: &proto.Transcript{Kind: proto.KindResumed, Channel: ch.idx, Label: ch.label}}
		if cl.sess == nil {
			ch.resumedUnseen = true
		}
		cl.eachLocked(func(s *session) { s.pushLocked(ev) })
		cl.mu.Unlock()
		m.obs.Resumed(time.Since(lostAt))
	}
	// The sender is this assignment's: it is stopped and waited for
	// before dispatchOnce returns (a write blocked on a worker that does
	// not read is cancelled).
	sendErr := make(chan error, 1)
	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		err := m.sendFrames(actx, cl, ch, a.FromSeq, pw)
		sendErr <- err
		if err != nil {
			cancel() // ends the read below
		}
	}()
	defer func() {
		cancel()
		select {
		case <-sendDone:
		default:
			st.CancelWrite(0)
			<-sendDone
		}
	}()
	for {
		msg, err := pr.Read()
		if err != nil {
			select {
			case e := <-sendErr:
				if e != nil {
					return a.FromSeq, e
				}
			default:
			}
			return a.FromSeq, fmt.Errorf("worker stream: %w", err)
		}
		if msg.Type != proto.TWorkerEvent {
			return a.FromSeq, fmt.Errorf("worker sent message type %d", msg.Type)
		}
		var ev proto.WorkerEvent
		if err := proto.Unmarshal(msg, &ev); err != nil {
			return a.FromSeq, err
		}
		switch ev.Kind {
		case proto.WorkerPartial:
			cl.mu.Lock()
			if ev.Index >= ch.finals {
				pe := ingest.Event{Transcript: &proto.Transcript{Kind: proto.KindPartial, Channel: ch.idx, Label: ch.label,
					Index: ev.Index, Text: ev.Text, StartMS: SamplesToMS(ev.Start), EndMS: SamplesToMS(ev.End)}}
				cl.eachLocked(func(s *session) { s.pushLocked(pe) })
			}
			cl.mu.Unlock()
		case proto.WorkerFinal:
			if err := m.persistFinal(ctx, cl, ch, ev, w.ID()); err != nil {
				return a.FromSeq, err
			}
		case proto.WorkerUndecodable:
			if ev.Frame != nil {
				m.undecodable(cl, ch, *ev.Frame, ev.Error)
			}
		case proto.WorkerDone:
			return a.FromSeq, m.persistComplete(ctx, cl, ch, ev.Decoded)
		case proto.WorkerError:
			return a.FromSeq, &workerError{msg: ev.Error, frame: ev.Frame}
		default:
			return a.FromSeq, fmt.Errorf("worker sent event kind %q", ev.Kind)
		}
	}
}

// undecodable counts a frame a worker could not decode (once, however
// often the channel is replayed over it).
func (m *Manager) undecodable(cl *call, ch *channel, seq uint32, why string) {
	cl.mu.Lock()
	fresh := seq >= ch.undecodableNext
	if fresh {
		ch.undecodableNext = seq + 1
		ch.undecodable++
		u := make([]uint64, len(cl.chans)) // copy on write: snapshots share the old slice
		copy(u, cl.rec.Undecodable)
		u[ch.idx] = ch.undecodable
		cl.rec.Undecodable = u
	}
	cl.mu.Unlock()
	if fresh {
		m.obs.FrameUndecodable()
		m.log.Warn("undecodable frame concealed", "call", cl.id, "channel", ch.idx, "frame", seq, "err", why)
	}
}

// resumePoint is the last final that carries a checkpoint, or nil to start
// the channel from its first frame.
func (m *Manager) resumePoint(id proto.CallID, ch int) (*store.Final, error) {
	last, err := m.store.LastFinal(id, ch)
	if err != nil || last == nil || len(last.Checkpoint) > 0 {
		return last, err
	}
	// The last final closed the channel without a checkpoint; continue from
	// the one before it (its finals are recognised as duplicates).
	fs, err := m.store.Finals(id, ch, 0)
	if err != nil {
		return nil, err
	}
	for i := len(fs) - 1; i >= 0; i-- {
		if len(fs[i].Checkpoint) > 0 {
			return &fs[i], nil
		}
	}
	return nil, nil
}

// sendFrames streams durable frames from seq on, then End once the console
// has ended the call and every frame is sent. Frames the call skips go as
// loss markers. It returns errIdle when no new frame has come for
// Limits.IdleRelease.
func (m *Manager) sendFrames(ctx context.Context, cl *call, ch *channel, seq uint32, pw *proto.Writer) error {
	var buf []byte
	idleAfter := m.limits().IdleRelease
	idle := time.NewTimer(idleAfter)
	defer idle.Stop()
	for {
		cl.mu.Lock()
		next, ended := ch.nextSeq, ch.ended
		var skip []uint32
		if ch.idx < len(cl.rec.Skipped) {
			skip = cl.rec.Skipped[ch.idx]
		}
		cl.mu.Unlock()
		if seq < next {
			// At most FramesPerRead frames per read transaction: a slow
			// worker must not hold one open.
			// The frames are encoded (copied) inside the read transaction
			// and written to the worker after it: no network write holds a
			// transaction open.
			from := seq
			buf = buf[:0]
			err := m.store.Frames(cl.id, ch.idx, seq, int(min(next-seq, tuning.FramesPerRead)), func(f store.Frame) error {
				if f.Seq != seq {
					return fmt.Errorf("frame %d missing from the store (found %d)", seq, f.Seq)
				}
				a := proto.Audio{Channel: uint8(ch.idx), Seq: f.Seq, Capture: f.Capture, Payload: f.Payload}
				if slices.Contains(skip, f.Seq) {
					a.Payload = nil
				}
				buf = proto.AppendAudio(buf, a)
				seq++
				return nil
			})
			if err == nil && len(buf) > 0 {
				_, err = pw.WriteRaw(buf)
			}
			if err != nil {
				return fmt.Errorf("send frames: %w", err)
			}
			now := time.Now()
			cl.mu.Lock()
			for s := from; s < seq; s++ {
				if t, ok := ch.recvAt[s]; ok {
					m.obs.ToWorker(now.Sub(t))
					delete(ch.recvAt, s)
				}
			}
			ch.fed = max(ch.fed, seq)
			cl.mu.Unlock()
			idle.Reset(idleAfter)
			continue
		}
		if ended {
			return pw.Write(proto.TEnd, []byte(`{}`))
		}
		select {
		case <-ch.notify:
		case <-idle.C:
			return errIdle
		case <-ctx.Done():
			return nil
		}
	}
}

// persistFinal stores a final (once: a resumed worker repeats finals the
// store already has, and those are skipped) and sends it to the console.
func (m *Manager) persistFinal(ctx context.Context, cl *call, ch *channel, ev proto.WorkerEvent, w proto.WorkerID) error {
	got := time.Now()
	cl.mu.Lock()
	have := ch.finals
	cl.mu.Unlock()
	if ev.Index < have {
		return nil // a replayed final: already stored and sent
	}
	if ev.Index > have {
		return fmt.Errorf("worker skipped finals: got %d, want %d", ev.Index, have)
	}
	f := store.Final{Channel: ch.idx, Index: ev.Index, Text: ev.Text, Heard: ev.Heard, Start: ev.Start, End: ev.End, NextSeq: ev.NextSeq, Checkpoint: ev.Checkpoint, Worker: string(w)}
	cl.recMu.Lock() // durable first, then settled: held through both
	defer cl.recMu.Unlock()
	cl.mu.Lock()
	rec := *cl.rec
	rec.Decoded = append([]uint32(nil), rec.Decoded...)
	rec.Decoded[ch.idx] = ev.Decoded
	final := len(ev.Checkpoint) == 0
	if final {
		rec.Complete = append([]bool(nil), rec.Complete...)
		rec.Complete[ch.idx] = true
	}
	cl.mu.Unlock()
	if err := m.store.PutFinal(ctx, cl.id, f, &rec); err != nil {
		return fmt.Errorf("persist final: %w", err)
	}
	cl.mu.Lock()
	ch.finals = ev.Index + 1
	if ev.Decoded > ch.decoded {
		d := ev.Decoded - ch.decoded
		m.obs.FramesDecoded(d)
	}
	ch.decoded = ev.Decoded
	// Copy on write: record snapshots (views, writes on their way) share
	// the old slices.
	cl.rec.Decoded = setAt(cl.rec.Decoded, ch.idx, ev.Decoded)
	if final {
		ch.complete = true
		cl.rec.Complete = setAt(cl.rec.Complete, ch.idx, true)
	}
	cl.eachLocked(func(s *session) { s.sendFinalLocked(cl, f) })
	cl.mu.Unlock()
	m.obs.FinalSent(time.Since(got))
	return nil
}
