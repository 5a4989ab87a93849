package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/internal/loop"
	"github.com/callscribe/callscribe/proto"
)

// call is a live (not yet finalised, or recently finalised) call.
type call struct {
	id    proto.CallID
	mu    sync.Mutex
	rec   *store.Call
	chans []*channel
	sess  *session
	// watchers follow the call's transcript read-only (SSE supervisors).
	watchers map[*session]struct{}
	// lastActive is when a console last attached or sent audio.
	lastActive time.Time
	// recovered is set for a call reloaded from the store after a restart:
	// its channels resume rather than start.
	recovered bool
	// done is closed once the call is finalised.
	done chan struct{}
}

// channel is one audio channel of a call.
type channel struct {
	idx      int
	label    string
	appendMu sync.Mutex // serialises appends of this channel
	// The following are guarded by call.mu.
	nextSeq  uint32 // frames below are durable
	ended    bool
	finals   uint32 // finals persisted
	decoded  uint32
	complete bool
	received uint64 // frames received, duplicates included
	// concealed counts loss markers stored: packets the transport lost.
	concealed uint64
	// resumedUnseen: the channel moved to a worker while no console was
	// attached; the console is told when it reattaches.
	resumedUnseen bool
	recvAt        map[uint32]time.Time
	notify        chan struct{}
}

func (ch *channel) signal() {
	select {
	case ch.notify <- struct{}{}:
	default:
	}
}

// session is a console's attachment to a call.
type session struct {
	c         *Coordinator
	call      *call
	console   proto.ConsoleID
	events    chan ingest.Event
	nextFinal []uint32 // guarded by call.mu
	closed    bool     // guarded by call.mu
	watch     bool     // a read-only watcher, not the console
}

var _ ingest.Sink = (*Coordinator)(nil)

func perr(code, format string, a ...any) *proto.Error {
	return &proto.Error{Code: code, Message: fmt.Sprintf(format, a...)}
}

// Open implements ingest.Sink: it opens a new call or resumes an existing one.
func (c *Coordinator) Open(ctx context.Context, h *proto.Hello) (ingest.Session, *proto.Welcome, error) {
	if !proto.ValidID(string(h.CallID)) || !proto.ValidID(string(h.ConsoleID)) {
		return nil, nil, perr(proto.CodeBadRequest, "call_id and console_id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
	}
	if h.Codec.Rate() == 0 {
		return nil, nil, perr(proto.CodeUnknownCodec, "codec %q is not supported (l16, pcmu, pcma, opus)", h.Codec)
	}
	if len(h.Channels) < 1 || len(h.Channels) > proto.MaxChannels {
		return nil, nil, perr(proto.CodeBadRequest, "a call has 1 or 2 channels, got %d", len(h.Channels))
	}
	m, err := c.cfg.Models.Get(h.Model)
	if err != nil {
		return nil, nil, perr(proto.CodeUnknownModel, "%v", err)
	}
	cl, err := c.callByID(h.CallID)
	resumed := err == nil
	switch {
	case errors.Is(err, store.ErrNotFound):
		if cl, err = c.newCall(ctx, h, m.Name); err != nil {
			return nil, nil, err
		}
	case err != nil:
		return nil, nil, err
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	rec := cl.rec
	if rec.Console != h.ConsoleID {
		return nil, nil, perr(proto.CodeCallInUse, "call %s belongs to console %s", h.CallID, rec.Console)
	}
	if resumed && (rec.Codec != h.Codec || len(rec.Channels) != len(h.Channels)) {
		return nil, nil, perr(proto.CodeBadRequest, "call %s was opened with codec %s and %d channels", h.CallID, rec.Codec, len(rec.Channels))
	}
	if cl.sess != nil {
		c.log.Info("console reconnected: replacing its previous stream", "call", h.CallID)
		cl.sess.closeLocked()
	}
	s := c.newSessionLocked(cl, h.ConsoleID, h.NextFinal)
	cl.sess = s
	cl.lastActive = time.Now()
	wel := &proto.Welcome{Version: proto.Version, CallID: h.CallID, State: rec.State, Resumed: resumed, NextSeq: make([]uint32, len(cl.chans))}
	for i, ch := range cl.chans {
		wel.NextSeq[i] = ch.nextSeq
		if ch.resumedUnseen {
			ch.resumedUnseen = false
			s.pushLocked(ingest.Event{Transcript: &proto.Transcript{Kind: proto.KindResumed, Channel: i, Label: ch.label}})
		}
	}
	if err := c.catchUpLocked(s); err != nil {
		return nil, nil, err
	}
	return s, wel, nil
}

// Watch follows a call's transcript read-only, as a supervisor does: the
// finals from nextFinal on (per channel) first, then partials and finals
// live, then the Finalised event. It does not disturb the console's session.
func (c *Coordinator) Watch(id proto.CallID, nextFinal []uint32) (ingest.Watcher, error) {
	cl, err := c.callByID(id)
	if err != nil {
		return nil, err
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	s := c.newSessionLocked(cl, "", nextFinal)
	s.watch = true
	if cl.watchers == nil {
		cl.watchers = map[*session]struct{}{}
	}
	cl.watchers[s] = struct{}{}
	if err := c.catchUpLocked(s); err != nil {
		return nil, err
	}
	return s, nil
}

// callByID returns a call from memory or, loading it, from the store.
// Errors are *proto.Error; an unknown call wraps store.ErrNotFound.
func (c *Coordinator) callByID(id proto.CallID) (*call, error) {
	c.mu.Lock()
	cl, ok := c.calls[id]
	c.mu.Unlock()
	if ok {
		return cl, nil
	}
	rec, err := c.store.Call(id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("call %s: %w", id, err)
	}
	if err == nil {
		// A call we know but do not hold: finalised calls are not kept in
		// memory. Load it to serve its transcript.
		cl, err = c.loadCall(rec)
	}
	if err != nil {
		return nil, perr(proto.CodeStorage, "load call: %v", err)
	}
	return cl, nil
}

func (c *Coordinator) newSessionLocked(cl *call, console proto.ConsoleID, nextFinal []uint32) *session {
	s := &session{c: c, call: cl, console: console, events: make(chan ingest.Event, 4096), nextFinal: make([]uint32, len(cl.chans))}
	copy(s.nextFinal, nextFinal)
	return s
}

// catchUpLocked sends a new session the finals it has not got, and the end
// of a finalised call.
func (c *Coordinator) catchUpLocked(s *session) error {
	cl := s.call
	for i, ch := range cl.chans {
		if s.nextFinal[i] >= ch.finals {
			continue
		}
		fs, err := c.store.Finals(cl.id, i, s.nextFinal[i])
		if err != nil {
			return perr(proto.CodeStorage, "read finals: %v", err)
		}
		for _, f := range fs {
			if f.Index >= ch.finals {
				break
			}
			s.sendFinalLocked(cl, f)
		}
	}
	if cl.rec.State == store.StateFinalised {
		s.finalisedLocked(cl)
	}
	return nil
}

// eachLocked calls f for the console's session and every watcher.
func (cl *call) eachLocked(f func(s *session)) {
	if cl.sess != nil {
		f(cl.sess)
	}
	for w := range cl.watchers {
		f(w)
	}
}

func (c *Coordinator) newCall(ctx context.Context, h *proto.Hello, model string) (*call, error) {
	c.mu.Lock()
	if cl, ok := c.calls[h.CallID]; ok { // lost a race with another Hello
		c.mu.Unlock()
		return cl, nil
	}
	rec := &store.Call{ID: h.CallID, Console: h.ConsoleID, Channels: h.Channels, Codec: h.Codec, Model: model, Vocabulary: *c.vocabulary.Load(),
		State: store.StateOpen, Created: time.Now().UTC(), Decoded: make([]uint32, len(h.Channels)), Complete: make([]bool, len(h.Channels))}
	cl := c.buildCall(rec)
	c.calls[h.CallID] = cl
	c.mu.Unlock()
	if err := c.store.PutCall(ctx, rec); err != nil {
		c.mu.Lock()
		delete(c.calls, h.CallID)
		c.mu.Unlock()
		return nil, perr(proto.CodeStorage, "store call: %v", err)
	}
	c.log.Info("call opened", "call", h.CallID, "console", h.ConsoleID, "codec", h.Codec, "channels", h.Channels, "model", model)
	c.startCall(cl)
	return cl, nil
}

func (c *Coordinator) buildCall(rec *store.Call) *call {
	cl := &call{id: rec.ID, rec: rec, done: make(chan struct{}), lastActive: time.Now()}
	for len(rec.Decoded) < len(rec.Channels) {
		rec.Decoded = append(rec.Decoded, 0)
	}
	for len(rec.Complete) < len(rec.Channels) {
		rec.Complete = append(rec.Complete, false)
	}
	for i, l := range rec.Channels {
		cl.chans = append(cl.chans, &channel{idx: i, label: l, notify: make(chan struct{}, 1), recvAt: map[uint32]time.Time{},
			decoded: rec.Decoded[i], complete: rec.Complete[i]})
	}
	if rec.State == store.StateFinalised {
		close(cl.done)
	}
	return cl
}

// loadCall rebuilds a call from the store (after a restart, or for a
// finalised call a console asks about).
func (c *Coordinator) loadCall(rec *store.Call) (*call, error) {
	cl := c.buildCall(rec)
	cl.recovered = true
	for i, ch := range cl.chans {
		n, err := c.store.NextSeq(rec.ID, i)
		if err != nil {
			return nil, err
		}
		ch.nextSeq = n
		if i < len(rec.Received) {
			ch.received = rec.Received[i]
		}
		if i < len(rec.Concealed) {
			ch.concealed = rec.Concealed[i]
		}
		last, err := c.store.LastFinal(rec.ID, i)
		if err != nil {
			return nil, err
		}
		if last != nil {
			ch.finals = last.Index + 1
		}
		ch.ended = rec.State == store.StateEnded || rec.State == store.StateFinalised
	}
	c.mu.Lock()
	if cur, ok := c.calls[rec.ID]; ok {
		c.mu.Unlock()
		return cur, nil
	}
	c.calls[rec.ID] = cl
	c.mu.Unlock()
	if rec.State != store.StateFinalised {
		c.startCall(cl)
	}
	return cl, nil
}

// startCall starts one dispatcher per channel.
func (c *Coordinator) startCall(cl *call) {
	for i := range cl.chans {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.runChannel(c.runCtx, cl, i)
		}()
	}
}

// Append implements ingest.Session.
func (s *session) Append(ctx context.Context, a proto.Audio) (proto.Ack, error) {
	cl := s.call
	if s.watch {
		return proto.Ack{}, perr(proto.CodeBadRequest, "a watcher cannot send audio")
	}
	if int(a.Channel) >= len(cl.chans) {
		return proto.Ack{}, perr(proto.CodeBadRequest, "channel %d does not exist (call has %d)", a.Channel, len(cl.chans))
	}
	ch := cl.chans[a.Channel]
	ch.appendMu.Lock()
	defer ch.appendMu.Unlock()
	now := time.Now()
	cl.mu.Lock()
	if s.closed {
		cl.mu.Unlock()
		return proto.Ack{}, perr(proto.CodeCallInUse, "this stream was replaced by a newer one for the same call")
	}
	next, ended := ch.nextSeq, ch.ended
	ch.received++
	s.c.metrics.inc(func(p *prom) { p.framesRecv.Inc() })
	first := cl.rec.State == store.StateOpen
	cl.mu.Unlock()
	switch {
	case a.Seq < next: // a resend of a durable frame: ack, do not store again
		s.c.metrics.inc(func(p *prom) { p.framesDup.Inc() })
		return proto.Ack{Channel: a.Channel, NextSeq: next}, nil
	case ended:
		return proto.Ack{}, perr(proto.CodeBadRequest, "channel %d has ended at frame %d", a.Channel, next)
	case a.Seq > next:
		return proto.Ack{}, perr(proto.CodeOutOfOrder, "channel %d: frame %d arrived, expected %d", a.Channel, a.Seq, next)
	}
	if err := s.c.store.PutFrames(ctx, cl.id, ch.idx, []store.Frame{{Seq: a.Seq, Capture: a.Capture, Payload: a.Payload}}); err != nil {
		s.c.log.Error("frame not stored", "call", cl.id, "channel", ch.idx, "seq", a.Seq, "err", err)
		s.c.metrics.storeErrors.Add(1)
		s.c.metrics.inc(func(p *prom) { p.framesLost.Inc() })
		return proto.Ack{}, perr(proto.CodeStorage, "frame %d not stored: %v", a.Seq, err)
	}
	s.c.metrics.observeAck(time.Since(now))
	cl.mu.Lock()
	ch.nextSeq = a.Seq + 1
	ch.recvAt[a.Seq] = now
	if len(a.Payload) == 0 {
		ch.concealed++
		s.c.metrics.inc(func(p *prom) { p.framesConceal.Inc() })
	}
	cl.lastActive = now
	var rec store.Call
	if first = first && cl.rec.State == store.StateOpen; first {
		cl.rec.State = store.StateStreaming
		rec = *cl.rec
	}
	cl.mu.Unlock()
	ch.signal()
	if first { // open → streaming is durable too
		if err := s.c.store.PutCall(ctx, &rec); err != nil {
			s.c.log.Error("cannot record streaming state", "call", cl.id, "err", err)
		}
	}
	return proto.Ack{Channel: a.Channel, NextSeq: a.Seq + 1}, nil
}

// End implements ingest.Session.
func (s *session) End(ctx context.Context, e proto.End) error {
	cl := s.call
	if s.watch {
		return perr(proto.CodeBadRequest, "a watcher cannot end a call")
	}
	cl.mu.Lock()
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
	if err := s.c.endCall(ctx, cl, ""); err != nil {
		return perr(proto.CodeStorage, "store end: %v", err)
	}
	s.c.log.Info("call ended by console", "call", cl.id, "frames", e.Frames)
	return nil
}

// endCall marks a call ended at the frames it has stored (durably first);
// the dispatchers then finish its channels. why is recorded when the
// coordinator, not the console, ends it.
func (c *Coordinator) endCall(ctx context.Context, cl *call, why string) error {
	cl.mu.Lock()
	if cl.rec.State == store.StateEnded || cl.rec.State == store.StateFinalised {
		cl.mu.Unlock()
		return nil
	}
	now := time.Now().UTC()
	rec := *cl.rec
	rec.State, rec.Ended, rec.EndReason = store.StateEnded, &now, why
	rec.EndFrames = make([]uint32, len(cl.chans))
	rec.Received = make([]uint64, len(cl.chans))
	rec.Concealed = make([]uint64, len(cl.chans))
	for i, ch := range cl.chans {
		rec.EndFrames[i], rec.Received[i], rec.Concealed[i] = ch.nextSeq, ch.received, ch.concealed
	}
	cl.mu.Unlock()
	if err := c.store.PutCall(ctx, &rec); err != nil {
		return err
	}
	cl.mu.Lock()
	cl.rec.State, cl.rec.Ended, cl.rec.EndFrames, cl.rec.EndReason, cl.rec.Received, cl.rec.Concealed = rec.State, rec.Ended, rec.EndFrames, rec.EndReason, rec.Received, rec.Concealed
	for _, ch := range cl.chans {
		ch.ended = true
		ch.signal()
	}
	cl.mu.Unlock()
	return nil
}

// janitor ends calls whose console has been gone, with no audio, for
// AbandonAfter: they are finalised with what was received.
func (c *Coordinator) janitor(ctx context.Context) {
	loop.Every(ctx, min(c.cfg.AbandonAfter/4, 10*time.Second), nil, func() { c.endAbandoned(ctx) })
}

func (c *Coordinator) endAbandoned(ctx context.Context) {
	c.reg.mu.Lock() // AbandonAfter is reloadable
	after := c.cfg.AbandonAfter
	c.reg.mu.Unlock()
	c.mu.Lock()
	var idle []*call
	for _, cl := range c.calls {
		cl.mu.Lock()
		live := cl.rec.State == store.StateOpen || cl.rec.State == store.StateStreaming
		if live && cl.sess == nil && time.Since(cl.lastActive) > after {
			idle = append(idle, cl)
		}
		cl.mu.Unlock()
	}
	c.mu.Unlock()
	for _, cl := range idle {
		why := fmt.Sprintf("console gone for %v", after)
		if err := c.endCall(ctx, cl, why); err != nil {
			c.log.Error("cannot end abandoned call", "call", cl.id, "err", err)
			continue
		}
		c.log.Warn("call abandoned by its console: ending it with the audio received", "call", cl.id, "why", why)
	}
}

// Events implements ingest.Session.
func (s *session) Events() <-chan ingest.Event { return s.events }

// Close implements ingest.Session.
func (s *session) Close() {
	s.call.mu.Lock()
	defer s.call.mu.Unlock()
	if s.call.sess == s {
		s.call.sess = nil
	}
	delete(s.call.watchers, s)
	s.closeLocked()
}

func (s *session) closeLocked() {
	if !s.closed {
		s.closed = true
		close(s.events)
	}
}

// push queues an event; a console too slow to keep up is disconnected (it
// reconnects and resumes from the finals it has).
func (s *session) pushLocked(ev ingest.Event) {
	if s.closed {
		return
	}
	select {
	case s.events <- ev:
	default:
		s.c.log.Warn("console too slow for its transcript: disconnecting it", "call", s.call.id, "watcher", s.watch)
		s.closeLocked()
	}
}

func (s *session) sendFinalLocked(cl *call, f store.Final) {
	if f.Index != s.nextFinal[f.Channel] {
		return
	}
	s.nextFinal[f.Channel]++
	s.pushLocked(ingest.Event{Transcript: &proto.Transcript{Kind: proto.KindFinal, Channel: f.Channel, Label: cl.chans[f.Channel].label,
		Index: f.Index, Text: f.Text, StartMS: samplesToMS(f.Start), EndMS: samplesToMS(f.End)}})
}

func (s *session) finalisedLocked(cl *call) {
	fin := &proto.Finalised{CallID: cl.id}
	for _, ch := range cl.chans {
		fin.Finals = append(fin.Finals, ch.finals)
	}
	s.pushLocked(ingest.Event{Finalised: fin})
	s.closeLocked()
}

func samplesToMS(n int64) int64 { return n * 1000 / 16000 }
