package calls

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/proto"
)

// Open implements ingest.Sink: it opens a new call or resumes an existing one.
func (m *Manager) Open(ctx context.Context, h *proto.Hello) (ingest.Session, *proto.Welcome, error) {
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
	mf, err := m.cfg.Models.Get(h.Model)
	if err != nil {
		return nil, nil, proto.Wrap(proto.CodeUnknownModel, err, "model %q", h.Model)
	}
	var cl *call
	var finals [][]store.Final
	resumed := false
	// created is the call this Open made, until its session is installed:
	// if the Open fails, the call is dropped as a set-up that came to
	// nothing.
	var created *call
	defer func() {
		if created != nil {
			created.mu.Lock()
			created.opening = false
			created.mu.Unlock()
			m.dropIfUnstarted(created)
		}
	}()
	for {
		cl, err = m.callByID(h.CallID)
		resumed = err == nil
		switch {
		case errors.Is(err, store.ErrNotFound):
			if err := m.admit(h.ConsoleID, h.Remote); err != nil {
				return nil, nil, err
			}
			var mine bool
			if cl, mine, err = m.newCall(ctx, h, mf.Name); err != nil {
				return nil, nil, err
			}
			if mine {
				created = cl
			}
		case err != nil:
			return nil, nil, err
		}
		// Frames of an earlier stream still on their way to the disk
		// settle first, so the welcome's next_seq is exact.
		finals, err = m.lockCaughtUp(cl, h.NextFinal, true, func() error {
			if cl.isGone() {
				return errGone
			}
			return m.mayStreamLocked(cl, h, resumed)
		})
		if errors.Is(err, errGone) {
			continue // dropped while we looked it up: open it anew
		}
		if err != nil {
			return nil, nil, err
		}
		break
	}
	// Nothing below can fail: a session is installed only when it is
	// returned.
	defer cl.mu.Unlock()
	rec := cl.rec
	if cl.sess != nil {
		m.log.Info("console reconnected: replacing its previous stream", "call", h.CallID)
		cl.sess.closeLocked()
	}
	s := m.newSessionLocked(cl, h.Principal, h.NextFinal)
	cl.sess = s
	cl.opening, created = false, nil
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
	s.catchUpLocked(finals)
	return s, wel, nil
}

// errGone is lockCaughtUp's check refusing a call dropped meanwhile.
var errGone = errors.New("call dropped")

// mayStreamLocked refuses a hello for a call that belongs to another
// console or does not match how the call was opened. Caller holds cl.mu.
func (m *Manager) mayStreamLocked(cl *call, h *proto.Hello, resumed bool) error {
	rec := cl.rec
	if rec.Console != h.ConsoleID {
		m.log.Warn("call refused: it belongs to another console", "call", h.CallID, "console", h.ConsoleID, "owner", rec.Console, "remote", h.Remote)
		return perr(proto.CodeForbidden, "call %s belongs to another console: only the console that opened it (or one a supervisor transferred it to) may stream to it, resume it or end it", h.CallID)
	}
	if resumed && (rec.Codec != h.Codec || len(rec.Channels) != len(h.Channels)) {
		return perr(proto.CodeBadRequest, "call %s was opened with codec %s and %d channels", h.CallID, rec.Codec, len(rec.Channels))
	}
	return nil
}

// lockCaughtUp locks cl and returns, with cl.mu held, each channel's finals
// from from[i] up to the channel's count of persisted finals. The finals
// are read from the store without the lock (no disk read under a call's
// lock); if more were persisted meanwhile, the rest is read and the lock
// taken again. With settle, it first waits (lock released) until no frames
// are on their way to the store. check runs with the lock held before
// anything is read; its error is returned, unlocked.
func (m *Manager) lockCaughtUp(cl *call, from []uint32, settle bool, check func() error) ([][]store.Final, error) {
	n := len(cl.chans)
	finals := make([][]store.Final, n)
	next := make([]uint32, n)
	copy(next, from)
	want := make([]uint32, n)
	for {
		cl.mu.Lock()
		for settle && cl.writingLocked() {
			cl.idle.Wait()
		}
		if check != nil {
			if err := check(); err != nil {
				cl.mu.Unlock()
				return nil, err
			}
		}
		short := false
		for i, ch := range cl.chans {
			want[i] = ch.finals
			short = short || next[i] < ch.finals
		}
		if !short {
			return finals, nil
		}
		cl.mu.Unlock()
		for i := range want {
			if next[i] >= want[i] {
				continue
			}
			fs, err := m.store.Finals(cl.id, i, next[i])
			if err != nil {
				return nil, proto.Wrap(proto.CodeStorage, err, "read finals")
			}
			for _, f := range fs {
				if f.Index >= want[i] {
					break
				}
				finals[i] = append(finals[i], f)
			}
			next[i] = want[i]
		}
	}
}

// admit refuses a new call when too many calls are being set up (opened,
// no audio yet), in all, from this console or from this address: a flood of
// hellos or offers that never send audio cannot crowd out real calls (the
// address bound holds whatever console ids a flood claims). Calls already
// carrying audio, and resumes, are never refused here.
func (m *Manager) admit(console proto.ConsoleID, remote netip.Addr) error {
	lim := m.limits()
	total, mine, here := 0, 0, 0
	m.mu.Lock()
	for _, cl := range m.calls {
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
	m.mu.Unlock()
	switch {
	case lim.MaxSettingUp > 0 && total >= lim.MaxSettingUp:
		m.obs.Refused("global_limit")
		return perr(proto.CodeUnavailable, "%d calls are being set up (the limit): retry shortly", total)
	case lim.MaxSettingUpPerConsole > 0 && mine >= lim.MaxSettingUpPerConsole:
		m.obs.Refused("console_limit")
		return perr(proto.CodeUnavailable, "console %s has %d calls being set up (the limit): retry shortly", console, mine)
	case lim.MaxSettingUpPerRemote > 0 && here >= lim.MaxSettingUpPerRemote:
		m.obs.Refused("remote_limit")
		return perr(proto.CodeUnavailable, "%d calls from %s are being set up (the limit): retry shortly", here, remote)
	}
	return nil
}

// dropIfUnstarted forgets a call that never received audio once no console
// is attached: a hello or offer that came to nothing leaves nothing behind.
func (m *Manager) dropIfUnstarted(cl *call) {
	m.mu.Lock()
	cl.mu.Lock()
	drop := m.calls[cl.id] == cl && cl.sess == nil && len(cl.watchers) == 0 && cl.settingUpLocked() && !cl.isGone() && !cl.opening
	if drop {
		close(cl.gone)
		delete(m.calls, cl.id)
	}
	cl.mu.Unlock()
	m.mu.Unlock()
	if !drop {
		return
	}
	if err := m.store.DeleteCall(m.runCtx, cl.id); err != nil && m.runCtx.Err() == nil {
		m.log.Warn("cannot delete a call that never received audio", "call", cl.id, "err", err)
		return
	}
	m.log.Info("call dropped: its console left before sending audio", "call", cl.id)
}

// Watch follows a call's transcript read-only, as a supervisor does: the
// finals from nextFinal on (per channel) first, then partials and finals
// live, then the Finalised event. It does not disturb the console's session.
// Watch follows a call's transcript for p (the caller checked p may read
// it); revoking p's credential ends it.
func (m *Manager) Watch(p auth.Principal, id proto.CallID, nextFinal []uint32) (ingest.Watcher, error) {
	cl, err := m.callByID(id)
	if err != nil {
		return nil, err
	}
	finals, err := m.lockCaughtUp(cl, nextFinal, false, nil)
	if err != nil {
		return nil, err
	}
	defer cl.mu.Unlock()
	s := m.newSessionLocked(cl, p, nextFinal)
	s.watch = true
	if cl.watchers == nil {
		cl.watchers = map[*session]struct{}{}
	}
	cl.watchers[s] = struct{}{}
	s.catchUpLocked(finals)
	return s, nil
}

// callByID returns a call from memory or, loading it, from the store.
// Errors are *proto.Error; an unknown call wraps store.ErrNotFound.
func (m *Manager) callByID(id proto.CallID) (*call, error) {
	m.mu.Lock()
	cl, ok := m.calls[id]
	m.mu.Unlock()
	if ok {
		return cl, nil
	}
	rec, err := m.store.Call(id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("call %s: %w", id, err)
	}
	if err == nil {
		// A call we know but do not hold: finalised calls are not kept in
		// memory. Load it to serve its transcript.
		cl, err = m.loadCall(rec)
	}
	if err != nil {
		return nil, proto.Wrap(proto.CodeStorage, err, "load call")
	}
	return cl, nil
}

func (m *Manager) newSessionLocked(cl *call, p auth.Principal, nextFinal []uint32) *session {
	s := &session{m: m, call: cl, principal: p, events: make(chan ingest.Event, tuning.SessionEvents), nextFinal: make([]uint32, len(cl.chans))}
	copy(s.nextFinal, nextFinal)
	return s
}

// catchUpLocked sends a new session the finals it has not got (read by
// lockCaughtUp), and the end of a finalised call.
func (s *session) catchUpLocked(finals [][]store.Final) {
	cl := s.call
	for _, fs := range finals {
		for _, f := range fs {
			s.sendFinalLocked(cl, f)
		}
	}
	if cl.rec.State == store.StateFinalised {
		s.finalisedLocked(cl)
	}
}

// newCall creates a call for a hello and makes its record durable; mine is
// false when another hello created it first (that Open installs it).
func (m *Manager) newCall(ctx context.Context, h *proto.Hello, model string) (*call, bool, error) {
	m.mu.Lock()
	if cl, ok := m.calls[h.CallID]; ok { // lost a race with another Hello
		m.mu.Unlock()
		return cl, false, nil
	}
	rec := &store.Call{ID: h.CallID, Console: h.ConsoleID, Channels: h.Channels, Codec: h.Codec, Model: model, Vocabulary: m.cfg.Vocabulary(),
		State: store.StateOpen, Created: time.Now().UTC(), Decoded: make([]uint32, len(h.Channels)), Complete: make([]bool, len(h.Channels))}
	cl := m.buildCall(rec)
	cl.remote = h.Remote
	cl.opening = true // until its Open installs a session (or gives up)
	m.calls[h.CallID] = cl
	m.mu.Unlock()
	if err := m.store.PutCall(ctx, rec); err != nil {
		m.mu.Lock()
		delete(m.calls, h.CallID)
		m.mu.Unlock()
		return nil, false, proto.Wrap(proto.CodeStorage, err, "store call")
	}
	m.log.Info("call opened", "call", h.CallID, "console", h.ConsoleID, "codec", h.Codec, "channels", h.Channels, "model", model)
	m.startCall(cl)
	return cl, true, nil
}

func (m *Manager) loadCall(rec *store.Call) (*call, error) {
	cl := m.buildCall(rec)
	cl.recovered = true
	for i, ch := range cl.chans {
		n, err := m.store.NextSeq(rec.ID, i)
		if err != nil {
			return nil, err
		}
		ch.nextSeq, ch.queuedNext = n, n
		if ch.digest, err = m.loadDigest(rec, i, n); err != nil {
			// The call goes on; its statement will not match its audio,
			// which is what a verifier must be told.
			m.log.Error("integrity: the frame digest cannot cover the stored frames: the call continues, and its audio will not verify",
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
		last, err := m.store.LastFinal(rec.ID, i)
		if err != nil {
			return nil, err
		}
		if last != nil {
			ch.finals = last.Index + 1
		}
		ch.ended = rec.State == store.StateEnded || rec.State == store.StateFinalised
	}
	m.mu.Lock()
	if cur, ok := m.calls[rec.ID]; ok {
		m.mu.Unlock()
		return cur, nil
	}
	if rec.State == store.StateFinalised {
		// Served once (a resume, a watch), never kept: memory holds live
		// calls only (memory.go).
		m.mu.Unlock()
		return cl, nil
	}
	m.calls[rec.ID] = cl
	m.mu.Unlock()
	m.startCall(cl)
	return cl, nil
}

// startCall starts one dispatcher per channel.
func (m *Manager) startCall(cl *call) {
	for i := range cl.chans {
		m.group.Go(func() { m.runChannel(m.runCtx, cl, i) })
	}
}
