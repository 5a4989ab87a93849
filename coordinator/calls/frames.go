package calls

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/integrity"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/proto"
)

// Append implements ingest.Session: Submit, then wait for the outcome.
func (s *session) Append(ctx context.Context, a proto.Audio) (proto.Ack, error) {
	type result struct {
		ack proto.Ack
		err error
	}
	res := make(chan result, 1)
	s.Submit(a, func(ack proto.Ack, err error) { res <- result{ack, err} })
	// Once accepted, a frame's write happens: its outcome is awaited even
	// if ctx ends, so a caller never acks or un-acks on a guess.
	r := <-res
	return r.ack, r.err
}

// Submit implements ingest.Submitter: it accepts a frame in order and calls
// done (from another goroutine, in sequence order per channel) once the
// frame is durable, with the cumulative ack, or with the error that kept
// it from the disk. Many frames of a channel can be in flight at once, so
// acks keep pace with a slow disk by carrying more frames per commit.
// a.Payload is copied.
func (s *session) Submit(a proto.Audio, done func(proto.Ack, error)) {
	cl := s.call
	if s.watch {
		done(proto.Ack{}, perr(proto.CodeBadRequest, "a watcher cannot send audio"))
		return
	}
	if int(a.Channel) >= len(cl.chans) {
		done(proto.Ack{}, perr(proto.CodeBadRequest, "channel %d does not exist (call has %d)", a.Channel, len(cl.chans)))
		return
	}
	ch := cl.chans[a.Channel]
	now := time.Now()
	cl.mu.Lock()
	if s.closed {
		cl.mu.Unlock()
		done(proto.Ack{}, perr(proto.CodeCallInUse, "this stream was replaced by a newer one for the same call"))
		return
	}
	ch.received++
	s.m.obs.FrameReceived()
	var refuse *proto.Error
	switch {
	case a.Seq < ch.nextSeq: // a resend of a durable frame: ack, do not store again
		next := ch.nextSeq
		cl.mu.Unlock()
		s.m.obs.FrameDuplicate()
		done(proto.Ack{Channel: a.Channel, NextSeq: next}, nil)
		return
	case a.Seq < ch.queuedNext:
		refuse = perr(proto.CodeOutOfOrder, "channel %d: frame %d sent twice on one stream", a.Channel, a.Seq)
	case ch.ended:
		refuse = perr(proto.CodeBadRequest, "channel %d has ended at frame %d", a.Channel, ch.nextSeq)
	case a.Seq > ch.queuedNext:
		refuse = perr(proto.CodeOutOfOrder, "channel %d: frame %d arrived, expected %d", a.Channel, a.Seq, ch.queuedNext)
	case len(ch.queued) >= tuning.MaxQueuedFrames:
		refuse = perr(proto.CodeUnavailable, "channel %d: %d frames are waiting for the disk: retry shortly", a.Channel, len(ch.queued))
	}
	if refuse != nil {
		cl.mu.Unlock()
		done(proto.Ack{}, refuse)
		return
	}
	a.Payload = append([]byte(nil), a.Payload...)
	ch.queued = append(ch.queued, queuedFrame{a: a, at: now, done: done})
	ch.queuedNext++
	cl.lastActive = now
	start := !ch.writing
	ch.writing = true
	cl.mu.Unlock()
	select {
	case ch.more <- struct{}{}:
	default:
	}
	if start {
		if !s.m.group.Go(func() { s.m.writeFrames(cl, ch) }) {
			// Stopping: nothing is written any more; the frames are
			// refused (the console resends them to the next coordinator).
			cl.mu.Lock()
			ch.writing = false
			cl.idle.Broadcast()
			cl.mu.Unlock()
			s.m.framesWritten(cl, ch, nil, integrity.Digest{}, store.ErrClosed)
		}
	}
}

// writeFrames makes a channel's queued frames durable until none are
// queued. Two writes of a channel may be on their way at once — one in the
// group commit under way, the next queued for the commit after it — so a
// channel has frames in every commit however slow the disk. The second
// follows the first (store.SubmitFrames' after): if the first fails, so
// does the second, unwritten, and so does every frame queued behind them:
// nothing is stored across a gap, and the console resends them all from
// the next welcome.
func (m *Manager) writeFrames(cl *call, ch *channel) {
	type flight struct {
		batch []queuedFrame
		d     integrity.Digest // the channel's digest after the batch
		p     *store.Pending
		err   error // a write that could not even be queued
	}
	var inflight []flight
	// tip is the digest after the last batch submitted: each batch's
	// write carries the digest it brings the channel to. After a failed
	// write it is the durable digest again (every write queued behind the
	// failed one fails too, and the frames come again from nextSeq).
	cl.mu.Lock()
	tip := ch.digest
	cl.mu.Unlock()
	for {
		cl.mu.Lock()
		var batch []queuedFrame
		// A write that could not be queued is settled before the next is
		// submitted: with no write to follow, that one would be stored
		// across the gap.
		if n := len(inflight); n < 2 && (n == 0 || inflight[n-1].err == nil) {
			batch, ch.queued = ch.queued, nil
		}
		if len(batch) == 0 && len(inflight) == 0 {
			ch.writing = false
			cl.idle.Broadcast()
			cl.mu.Unlock()
			return
		}
		cl.mu.Unlock()
		if len(batch) > 0 {
			fs := make([]store.Frame, len(batch))
			for i, q := range batch {
				fs[i] = store.Frame{Seq: q.a.Seq, Capture: q.a.Capture, Payload: q.a.Payload}
			}
			var after *store.Pending
			if n := len(inflight); n > 0 {
				after = inflight[n-1].p
			}
			d := tip
			var p *store.Pending
			var err error
			for _, f := range fs {
				if err = d.Add(f.Seq, f.Capture, f.Payload); err != nil {
					break
				}
			}
			if err == nil {
				p, err = m.store.SubmitFramesDigest(m.runCtx, cl.id, ch.idx, fs, d, after)
			}
			if err == nil {
				tip = d
			}
			inflight = append(inflight, flight{batch: batch, d: d, p: p, err: err})
			continue
		}
		// Wait for the oldest write, or for more frames while there is room
		// for another write.
		f := inflight[0]
		err := f.err
		if err == nil {
			var more <-chan struct{}
			if len(inflight) < 2 {
				more = ch.more
			}
			select {
			case err = <-f.p.Done():
			case <-more:
				continue
			}
		}
		inflight = inflight[1:]
		m.framesWritten(cl, ch, f.batch, f.d, err)
		if err != nil {
			cl.mu.Lock()
			tip = ch.digest
			cl.mu.Unlock()
		}
	}
}

// framesWritten settles one write of a channel's frames: acks on success
// (d, the digest written with them, becomes the channel's durable digest);
// on failure the frames, and every frame queued behind them, are refused.
func (m *Manager) framesWritten(cl *call, ch *channel, batch []queuedFrame, d integrity.Digest, err error) {
	now := time.Now()
	cl.mu.Lock()
	var rec store.Call
	first := false
	if err != nil {
		batch = append(batch, ch.queued...)
		ch.queued = nil
		ch.queuedNext = ch.nextSeq
	} else {
		ch.nextSeq = batch[len(batch)-1].a.Seq + 1
		ch.digest = d
		for _, q := range batch {
			ch.recvAt[q.a.Seq] = q.at
			if len(q.a.Payload) == 0 {
				ch.concealed++
				m.obs.FrameConcealed()
			}
		}
		if first = cl.rec.State == store.StateOpen; first {
			cl.rec.State = store.StateStreaming
			rec = *cl.rec
		}
	}
	cl.mu.Unlock()
	if err != nil {
		if len(batch) == 0 {
			return
		}
		if !errors.Is(err, store.ErrPredecessor) {
			m.log.Error("frames not stored", "call", cl.id, "channel", ch.idx, "from", batch[0].a.Seq, "frames", len(batch), "err", err)
			m.obs.StoreError()
		}
		code := proto.CodeStorage
		msg := fmt.Sprintf("frames from %d not stored: %v", batch[0].a.Seq, err)
		if errors.Is(err, context.Canceled) || errors.Is(err, store.ErrClosed) {
			code, msg = proto.CodeUnavailable, "coordinator shutting down"
		}
		for _, q := range batch {
			m.obs.FrameLost()
			q.done(proto.Ack{}, &proto.Error{Code: code, Message: msg})
		}
		return
	}
	ch.signal()
	for _, q := range batch {
		m.obs.Acked(now.Sub(q.at))
		q.done(proto.Ack{Channel: q.a.Channel, NextSeq: q.a.Seq + 1}, nil)
	}
	if first { // open → streaming is durable too
		// In memory first: the snapshot is taken again, in write order.
		cl.recMu.Lock()
		cl.mu.Lock()
		rec = *cl.rec
		cl.mu.Unlock()
		p, err := m.store.SubmitCall(m.runCtx, &rec)
		cl.recMu.Unlock()
		if err == nil {
			err = p.Wait()
		}
		if err != nil {
			m.log.Error("cannot record streaming state", "call", cl.id, "err", err)
		}
	}
}

// End implements ingest.Session.
func (s *session) End(ctx context.Context, e proto.End) error {
	cl := s.call
	if s.watch {
		return perr(proto.CodeBadRequest, "a watcher cannot end a call")
	}
	cl.mu.Lock()
	for cl.writingLocked() { // frames sent before the end settle first
		cl.idle.Wait()
	}
	if s.closed || cl.sess != s {
		// Replaced, transferred or revoked: this stream no longer holds
		// the call, and may not end it.
		cl.mu.Unlock()
		return perr(proto.CodeForbidden, "this stream no longer holds call %s: it cannot end it", cl.id)
	}
	if len(e.Frames) != len(cl.chans) {
		cl.mu.Unlock()
		return perr(proto.CodeBadRequest, "end lists %d channels, call has %d", len(e.Frames), len(cl.chans))
	}
	for i, ch := range cl.chans {
		if e.Frames[i] != ch.nextSeq {
			cl.mu.Unlock()
			return perr(proto.CodeBadRequest, "end declares %d frames on channel %d but %d are stored: send the rest first", e.Frames[i], i, ch.nextSeq)
		}
	}
	cl.mu.Unlock()
	if err := s.m.endCall(ctx, cl, ""); err != nil {
		return proto.Wrap(proto.CodeStorage, err, "store end")
	}
	s.m.log.Info("call ended by console", "call", cl.id, "frames", e.Frames)
	return nil
}

// endCall marks a call ended at the frames it has stored. The end is
// queued for the store first, then the dispatchers are told at once — their
// workers finish decoding while it is being made durable, and the record
// that finalises the call, queued later, is written after it. why is
// recorded when the coordinator, not the console, ends it.
func (m *Manager) endCall(ctx context.Context, cl *call, why string) error {
	cl.recMu.Lock() // in memory first: held until the write is queued
	cl.mu.Lock()
	if cl.rec.State == store.StateEnded || cl.rec.State == store.StateFinalised || cl.finalising {
		cl.mu.Unlock()
		cl.recMu.Unlock()
		return nil
	}
	now := time.Now().UTC()
	cl.rec.State, cl.rec.Ended, cl.rec.EndReason = store.StateEnded, &now, why
	cl.rec.EndFrames = make([]uint32, len(cl.chans))
	cl.rec.Received = make([]uint64, len(cl.chans))
	cl.rec.Concealed = make([]uint64, len(cl.chans))
	cl.rec.Integrity = make([]store.ChannelIntegrity, len(cl.chans))
	for i, ch := range cl.chans {
		cl.rec.EndFrames[i], cl.rec.Received[i], cl.rec.Concealed[i] = ch.nextSeq, ch.received, ch.concealed
		cl.rec.Integrity[i] = store.ChannelIntegrity{Frames: ch.digest.Next, SHA256: ch.digest.Hex()}
	}
	rec := *cl.rec
	cl.mu.Unlock()
	p, err := m.store.SubmitCall(ctx, &rec)
	cl.recMu.Unlock()
	cl.mu.Lock()
	for _, ch := range cl.chans {
		ch.ended = true
		ch.signal()
	}
	cl.mu.Unlock()
	if err != nil {
		return err
	}
	return p.Wait()
}
