package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/integrity"
	"github.com/callscribe/callscribe/internal/loop"
	"github.com/callscribe/callscribe/proto"
)

// call is a live call (or a finalised one while it is being served).
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
	// remote is the address the call was opened from (set-up limits).
	remote netip.Addr
	// recovered is set for a call reloaded from the store after a restart:
	// its channels resume rather than start.
	recovered bool
	// done is closed once the call is finalised.
	done chan struct{}
	// gone is closed when a call that never received audio is dropped
	// (its console went away during set-up): its dispatchers stop.
	gone chan struct{}
	// idle is broadcast (with mu) when a channel's store write completes.
	idle *sync.Cond
	// finalising is set once one goroutine has taken on finalising the
	// call (its channels may complete at the same moment).
	finalising bool
}

// channel is one audio channel of a call.
type channel struct {
	idx   int
	label string
	// The following are guarded by call.mu.
	nextSeq uint32 // frames below are durable
	// digest is the frame digest of the durable frames (digest.Next ==
	// nextSeq), as stored with the last batch (internal/integrity).
	digest integrity.Digest
	// queued holds frames accepted from the console and waiting for the
	// store; queuedNext is the next frame accepted (nextSeq + in flight +
	// queued). One write per channel is in flight at a time (writing), so
	// frames become durable strictly in order, and frames arriving while a
	// write is in flight go to the store together in the next one: the
	// slower the disk, the bigger the batch.
	queued     []queuedFrame
	queuedNext uint32
	writing    bool
	more       chan struct{} // wakes the writer: frames were queued
	// fed is one past the last frame sent to a worker (this process's
	// life): a channel released for lack of audio is reassigned only when
	// audio beyond it arrives.
	fed      uint32
	ended    bool
	finals   uint32 // finals persisted
	decoded  uint32
	complete bool
	received uint64 // frames received, duplicates included
	// concealed counts loss markers stored: packets the transport lost.
	concealed uint64
	// undecodable counts frames no decoder could read (concealed by the
	// worker); undecodableNext dedupes the reports of a replayed channel.
	undecodable     uint64
	undecodableNext uint32
	// resumedUnseen: the channel moved to a worker while no console was
	// attached; the console is told when it reattaches.
	resumedUnseen bool
	recvAt        map[uint32]time.Time
	notify        chan struct{}
}

// queuedFrame is a frame waiting for the store, with its console's
// callback.
type queuedFrame struct {
	a    proto.Audio
	at   time.Time
	done func(proto.Ack, error)
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
	principal auth.Principal // who opened it (revocation ends it)
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
	// The call belongs to the console the credential names, whatever the
	// hello claims.
	if h.Principal.Role != auth.Console {
		return nil, nil, perr(proto.CodeForbidden, "only a console credential may stream a call")
	}
	h.ConsoleID = proto.ConsoleID(h.Principal.Name)
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
	var cl *call
	resumed := false
	for {
		cl, err = c.callByID(h.CallID)
		resumed = err == nil
		switch {
		case errors.Is(err, store.ErrNotFound):
			if err := c.admit(h.ConsoleID, h.Remote); err != nil {
				return nil, nil, err
			}
			if cl, err = c.newCall(ctx, h, m.Name); err != nil {
				return nil, nil, err
			}
		case err != nil:
			return nil, nil, err
		}
		cl.mu.Lock()
		if !cl.isGone() {
			break
		}
		cl.mu.Unlock() // dropped while we looked it up: open it anew
	}
	defer cl.mu.Unlock()
	// Frames of an earlier stream still on their way to the disk settle
	// first, so the welcome's next_seq is exact.
	for cl.writingLocked() {
		cl.idle.Wait()
	}
	rec := cl.rec
	if rec.Console != h.ConsoleID {
		c.log.Warn("call refused: it belongs to another console", "call", h.CallID, "console", h.ConsoleID, "owner", rec.Console, "remote", h.Remote)
		return nil, nil, perr(proto.CodeForbidden, "call %s belongs to another console: only the console that opened it (or one a supervisor transferred it to) may stream to it, resume it or end it", h.CallID)
	}
	if resumed && (rec.Codec != h.Codec || len(rec.Channels) != len(h.Channels)) {
		return nil, nil, perr(proto.CodeBadRequest, "call %s was opened with codec %s and %d channels", h.CallID, rec.Codec, len(rec.Channels))
	}
	if cl.sess != nil {
		c.log.Info("console reconnected: replacing its previous stream", "call", h.CallID)
		cl.sess.closeLocked()
	}
	s := c.newSessionLocked(cl, h.Principal, h.NextFinal)
	cl.sess = s
	cl.lastActive = time.Now()
	wel := &proto.Welcome{Version: proto.Version, CallID: h.CallID, State: rec.State, Resumed: resumed, NextSeq: make([]uint32, len(cl.chans))}
	for i, ch := range cl.chans {
		wel.NextSeq[i] = ch.nextSeq
		ch.queuedNext = ch.nextSeq
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

// isGone reports whether the call was dropped. Caller holds cl.mu.
func (cl *call) isGone() bool {
	select {
	case <-cl.gone:
		return true
	default:
		return false
	}
}

// writingLocked reports whether a channel has frames on their way to the
// store. Caller holds cl.mu.
func (cl *call) writingLocked() bool {
	for _, ch := range cl.chans {
		if ch.writing {
			return true
		}
	}
	return false
}

// settingUpLocked reports whether the call is still being set up: opened,
// no audio received. Caller holds cl.mu.
func (cl *call) settingUpLocked() bool {
	if cl.rec.State != store.StateOpen {
		return false
	}
	for _, ch := range cl.chans {
		if ch.queuedNext > 0 || ch.nextSeq > 0 {
			return false
		}
	}
	return true
}

// admit refuses a new call when too many calls are being set up (opened,
// no audio yet), in all, from this console or from this address: a flood of
// hellos or offers that never send audio cannot crowd out real calls (the
// address bound holds whatever console ids a flood claims). Calls already
// carrying audio, and resumes, are never refused here.
func (c *Coordinator) admit(console proto.ConsoleID, remote netip.Addr) error {
	lim := c.limits()
	total, mine, here := 0, 0, 0
	c.mu.Lock()
	for _, cl := range c.calls {
		cl.mu.Lock()
		if cl.settingUpLocked() && !cl.isGone() {
			total++
			if cl.rec.Console == console {
				mine++
			}
			if remote.IsValid() && cl.remote == remote {
				here++
			}
		}
		cl.mu.Unlock()
	}
	c.mu.Unlock()
	switch {
	case lim.MaxSettingUp > 0 && total >= lim.MaxSettingUp:
		c.metrics.inc(func(p *prom) { p.admissions.WithLabelValues("global_limit").Inc() })
		return perr(proto.CodeUnavailable, "%d calls are being set up (the limit): retry shortly", total)
	case lim.MaxSettingUpPerConsole > 0 && mine >= lim.MaxSettingUpPerConsole:
		c.metrics.inc(func(p *prom) { p.admissions.WithLabelValues("console_limit").Inc() })
		return perr(proto.CodeUnavailable, "console %s has %d calls being set up (the limit): retry shortly", console, mine)
	case lim.MaxSettingUpPerRemote > 0 && here >= lim.MaxSettingUpPerRemote:
		c.metrics.inc(func(p *prom) { p.admissions.WithLabelValues("remote_limit").Inc() })
		return perr(proto.CodeUnavailable, "%d calls from %s are being set up (the limit): retry shortly", here, remote)
	}
	return nil
}

// dropIfUnstarted forgets a call that never received audio once no console
// is attached: a hello or offer that came to nothing leaves nothing behind.
func (c *Coordinator) dropIfUnstarted(cl *call) {
	c.mu.Lock()
	cl.mu.Lock()
	drop := c.calls[cl.id] == cl && cl.sess == nil && len(cl.watchers) == 0 && cl.settingUpLocked() && !cl.isGone()
	if drop {
		close(cl.gone)
		delete(c.calls, cl.id)
	}
	cl.mu.Unlock()
	c.mu.Unlock()
	if !drop {
		return
	}
	if err := c.store.DeleteCall(c.runCtx, cl.id); err != nil && c.runCtx.Err() == nil {
		c.log.Warn("cannot delete a call that never received audio", "call", cl.id, "err", err)
		return
	}
	c.log.Info("call dropped: its console left before sending audio", "call", cl.id)
}

// Watch follows a call's transcript read-only, as a supervisor does: the
// finals from nextFinal on (per channel) first, then partials and finals
// live, then the Finalised event. It does not disturb the console's session.
// Watch follows a call's transcript for p (the caller checked p may read
// it); revoking p's credential ends it.
func (c *Coordinator) Watch(p auth.Principal, id proto.CallID, nextFinal []uint32) (ingest.Watcher, error) {
	cl, err := c.callByID(id)
	if err != nil {
		return nil, err
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	s := c.newSessionLocked(cl, p, nextFinal)
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

func (c *Coordinator) newSessionLocked(cl *call, p auth.Principal, nextFinal []uint32) *session {
	s := &session{c: c, call: cl, principal: p, events: make(chan ingest.Event, 4096), nextFinal: make([]uint32, len(cl.chans))}
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
	cl.remote = h.Remote
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
	cl := &call{id: rec.ID, rec: rec, done: make(chan struct{}), gone: make(chan struct{}), lastActive: time.Now()}
	cl.idle = sync.NewCond(&cl.mu)
	for len(rec.Decoded) < len(rec.Channels) {
		rec.Decoded = append(rec.Decoded, 0)
	}
	for len(rec.Complete) < len(rec.Channels) {
		rec.Complete = append(rec.Complete, false)
	}
	for i, l := range rec.Channels {
		cl.chans = append(cl.chans, &channel{idx: i, label: l, notify: make(chan struct{}, 1), more: make(chan struct{}, 1), recvAt: map[uint32]time.Time{},
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
		ch.nextSeq, ch.queuedNext = n, n
		if ch.digest, err = c.loadDigest(rec, i, n); err != nil {
			// The call goes on; its statement will not match its audio,
			// which is what a verifier must be told.
			c.log.Error("integrity: the frame digest cannot cover the stored frames: the call continues, and its audio will not verify",
				"call", rec.ID, "channel", i, "frames", n, "err", err)
			ch.digest.Next = n
		}
		if i < len(rec.Received) {
			ch.received = rec.Received[i]
		}
		if i < len(rec.Concealed) {
			ch.concealed = rec.Concealed[i]
		}
		if i < len(rec.Undecodable) {
			ch.undecodable = rec.Undecodable[i]
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
	if rec.State == store.StateFinalised {
		// Served once (a resume, a watch), never kept: memory holds live
		// calls only (memory.go).
		c.mu.Unlock()
		return cl, nil
	}
	c.calls[rec.ID] = cl
	c.mu.Unlock()
	c.startCall(cl)
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

// maxQueuedFrames bounds the frames of one channel waiting for the store
// (about 40 s of 20 ms packets): past it the disk cannot carry the call,
// and the console is told to retry rather than the coordinator buffering
// without end.
const maxQueuedFrames = 2048

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
	s.c.metrics.inc(func(p *prom) { p.framesRecv.Inc() })
	var refuse *proto.Error
	switch {
	case a.Seq < ch.nextSeq: // a resend of a durable frame: ack, do not store again
		next := ch.nextSeq
		cl.mu.Unlock()
		s.c.metrics.inc(func(p *prom) { p.framesDup.Inc() })
		done(proto.Ack{Channel: a.Channel, NextSeq: next}, nil)
		return
	case a.Seq < ch.queuedNext:
		refuse = perr(proto.CodeOutOfOrder, "channel %d: frame %d sent twice on one stream", a.Channel, a.Seq)
	case ch.ended:
		refuse = perr(proto.CodeBadRequest, "channel %d has ended at frame %d", a.Channel, ch.nextSeq)
	case a.Seq > ch.queuedNext:
		refuse = perr(proto.CodeOutOfOrder, "channel %d: frame %d arrived, expected %d", a.Channel, a.Seq, ch.queuedNext)
	case len(ch.queued) >= maxQueuedFrames:
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
		s.c.wg.Add(1)
		go func() {
			defer s.c.wg.Done()
			s.c.writeFrames(cl, ch)
		}()
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
func (c *Coordinator) writeFrames(cl *call, ch *channel) {
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
				p, err = c.store.SubmitFramesDigest(c.runCtx, cl.id, ch.idx, fs, d, after)
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
		c.framesWritten(cl, ch, f.batch, f.d, err)
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
func (c *Coordinator) framesWritten(cl *call, ch *channel, batch []queuedFrame, d integrity.Digest, err error) {
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
				c.metrics.inc(func(p *prom) { p.framesConceal.Inc() })
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
			c.log.Error("frames not stored", "call", cl.id, "channel", ch.idx, "from", batch[0].a.Seq, "frames", len(batch), "err", err)
			c.metrics.storeErrors.Add(1)
		}
		code := proto.CodeStorage
		msg := fmt.Sprintf("frames from %d not stored: %v", batch[0].a.Seq, err)
		if errors.Is(err, context.Canceled) || errors.Is(err, store.ErrClosed) {
			code, msg = proto.CodeUnavailable, "coordinator shutting down"
		}
		for _, q := range batch {
			c.metrics.inc(func(p *prom) { p.framesLost.Inc() })
			q.done(proto.Ack{}, &proto.Error{Code: code, Message: msg})
		}
		return
	}
	ch.signal()
	for _, q := range batch {
		c.metrics.observeAck(now.Sub(q.at))
		q.done(proto.Ack{Channel: q.a.Channel, NextSeq: q.a.Seq + 1}, nil)
	}
	if first { // open → streaming is durable too
		if err := c.store.PutCall(c.runCtx, &rec); err != nil {
			c.log.Error("cannot record streaming state", "call", cl.id, "err", err)
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

// endCall marks a call ended at the frames it has stored. The end is
// queued for the store first, then the dispatchers are told at once — their
// workers finish decoding while it is being made durable, and the record
// that finalises the call, queued later, is written after it. why is
// recorded when the coordinator, not the console, ends it.
func (c *Coordinator) endCall(ctx context.Context, cl *call, why string) error {
	cl.mu.Lock()
	if cl.rec.State == store.StateEnded || cl.rec.State == store.StateFinalised || cl.finalising {
		cl.mu.Unlock()
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
	p, err := c.store.SubmitCall(ctx, &rec)
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

// janitor ends calls whose console has been gone, with no audio, for
// AbandonAfter (they are finalised with what was received), and drops calls
// that never received audio and have no console.
func (c *Coordinator) janitor(ctx context.Context) {
	// Every 2 s at most: calls that never started (recovered after a
	// restart with no console) are dropped promptly.
	loop.Every(ctx, min(c.cfg.AbandonAfter/4, 2*time.Second), nil, func() { c.endAbandoned(ctx) })
}

func (c *Coordinator) endAbandoned(ctx context.Context) {
	c.reg.mu.Lock() // AbandonAfter is reloadable
	after := c.cfg.AbandonAfter
	c.reg.mu.Unlock()
	c.mu.Lock()
	var idle []*call
	var unstarted []*call
	for _, cl := range c.calls {
		cl.mu.Lock()
		live := cl.rec.State == store.StateOpen || cl.rec.State == store.StateStreaming
		switch {
		case cl.sess == nil && cl.settingUpLocked():
			unstarted = append(unstarted, cl)
		case live && cl.sess == nil && time.Since(cl.lastActive) > after:
			idle = append(idle, cl)
		}
		cl.mu.Unlock()
	}
	c.mu.Unlock()
	for _, cl := range unstarted {
		c.dropIfUnstarted(cl)
	}
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

// Close implements ingest.Session. A call whose console leaves before
// sending any audio is dropped.
func (s *session) Close() {
	cl := s.call
	cl.mu.Lock()
	if cl.sess == s {
		cl.sess = nil
	}
	delete(cl.watchers, s)
	s.closeLocked()
	unstarted := cl.sess == nil && cl.settingUpLocked()
	cl.mu.Unlock()
	if unstarted {
		s.c.dropIfUnstarted(cl)
	}
	s.c.forgetFinalised(cl)
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
