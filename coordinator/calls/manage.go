package calls

import (
	"context"
	"fmt"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/integrity"
	"github.com/callscribe/callscribe/proto"
)

// EndSessions tells why to the sessions and watchers whose principal
// matches, and closes them (a revoked credential). It returns how many.
func (m *Manager) EndSessions(match func(auth.Principal) bool, why *proto.Error) int {
	m.mu.Lock()
	calls := make([]*call, 0, len(m.calls))
	for _, cl := range m.calls {
		calls = append(calls, cl)
	}
	m.mu.Unlock()
	n := 0
	for _, cl := range calls {
		cl.mu.Lock()
		if s := cl.sess; s != nil && match(s.principal) {
			s.pushLocked(ingest.Event{Error: why})
			s.closeLocked()
			cl.sess = nil
			n++
		}
		for s := range cl.watchers {
			if match(s.principal) {
				s.pushLocked(ingest.Event{Error: why})
				s.closeLocked()
				delete(cl.watchers, s)
				n++
			}
		}
		cl.mu.Unlock()
	}
	return n
}

// Transfer hands a call to another console (a supervisor's act): the
// current console's stream is told and closed, and only the new console
// may stream to, resume or end the call from now on.
func (m *Manager) Transfer(ctx context.Context, id proto.CallID, to proto.ConsoleID) (from proto.ConsoleID, err error) {
	if !proto.ValidID(string(to)) {
		return "", perr(proto.CodeBadRequest, "console %q is not a valid console id", to)
	}
	cl, err := m.callByID(id)
	if err != nil {
		return "", err
	}
	// In memory first: cl.recMu is held until the write is queued.
	cl.recMu.Lock()
	queued := false
	defer func() {
		if !queued {
			cl.recMu.Unlock()
		}
	}()
	cl.mu.Lock()
	if cl.rec.State == store.StateFinalised || cl.rec.State == store.StateEnded {
		cl.mu.Unlock()
		return "", perr(proto.CodeCallInUse, "call %s has %s: there is nothing to transfer", id, cl.rec.State)
	}
	if cl.settingUpLocked() {
		cl.mu.Unlock()
		return "", perr(proto.CodeCallInUse, "call %s has no audio yet: there is nothing to transfer (the new console opens its own call)", id)
	}
	from = cl.rec.Console
	if from == to {
		cl.mu.Unlock()
		return from, nil
	}
	// Memory first, so that any later write of the record carries the new
	// owner; then the record, durably, before the answer.
	cl.rec.Console = to
	rec := *cl.rec
	gone := &proto.Error{Code: proto.CodeTransferred, Fatal: true, Message: fmt.Sprintf("call %s was transferred to console %s", id, to)}
	if s := cl.sess; s != nil {
		s.pushLocked(ingest.Event{Error: gone})
		s.closeLocked()
		cl.sess = nil
	}
	// The former owner's views of the call end too: it may no longer read
	// it (supervisors' views go on).
	for s := range cl.watchers {
		if s.principal.Role == auth.Console && s.principal.Name == string(from) {
			s.pushLocked(ingest.Event{Error: gone})
			s.closeLocked()
			delete(cl.watchers, s)
		}
	}
	cl.mu.Unlock()
	pend, err := m.store.SubmitCall(ctx, &rec)
	queued = true
	cl.recMu.Unlock()
	if err == nil {
		err = pend.Wait()
	}
	if err != nil {
		cl.mu.Lock()
		if cl.rec.Console == to {
			cl.rec.Console = from
		}
		cl.mu.Unlock()
		return "", proto.Wrap(proto.CodeStorage, err, "transfer not recorded")
	}
	m.log.Info("call transferred", "call", id, "from", from, "to", to)
	return from, nil
}

// loadDigest returns channel i's durable frame digest for a call loaded
// from the store, n its stored frames. The digest is written with every
// batch of frames; frames stored after it (a commit Badger split at a
// crash) extend it; a call stored before digests were kept has it computed
// once from its frames and stored.
func (m *Manager) loadDigest(rec *store.Call, i int, n uint32) (integrity.Digest, error) {
	d, ok, err := m.store.Digest(rec.ID, i)
	if err != nil {
		return d, err
	}
	switch {
	case ok && d.Next == n:
		return d, nil
	case ok && rec.AudioDeleted != nil:
		return d, nil // the frames are gone, the digest stands
	case ok && d.Next < n:
		// Legitimate only when a crash cut a commit after its frames and
		// before its digest; otherwise frames were added to the store
		// behind the coordinator's back. Said loudly either way.
		m.log.Warn("integrity: frames stored past the frame digest: extending it over them (a commit cut by a crash, or frames written outside the coordinator)",
			"call", rec.ID, "channel", i, "digest_frames", d.Next, "stored", n)
		err = m.store.Frames(rec.ID, i, d.Next, 0, func(f store.Frame) error { return d.Add(f.Seq, f.Capture, f.Payload) })
	case ok:
		m.log.Error("integrity: the frame digest covers frames that are no longer stored: recomputing it from the frames that are",
			"call", rec.ID, "channel", i, "digest_frames", d.Next, "stored", n)
		d, err = m.store.ComputeDigest(rec.ID, i)
	case rec.AudioDeleted != nil || n == 0:
		return d, nil
	default:
		d, err = m.store.ComputeDigest(rec.ID, i)
	}
	if err == nil && d.Next != n {
		err = fmt.Errorf("its frames stop at %d of %d", d.Next, n)
	}
	if err != nil {
		return d, fmt.Errorf("integrity: frame digest of call %s channel %d: %w", rec.ID, i, err)
	}
	if err := m.store.PutDigest(m.runCtx, rec.ID, i, d); err != nil {
		return d, fmt.Errorf("integrity: store frame digest of call %s channel %d: %w", rec.ID, i, err)
	}
	return d, nil
}

// LoadDigest is loadDigest for a call that is not in memory (the integrity
// statement of a stored call).
func (m *Manager) LoadDigest(rec *store.Call, i int, n uint32) (integrity.Digest, error) {
	return m.loadDigest(rec, i, n)
}

// ChannelInfo is a live channel as the HTTP API shows it.
type ChannelInfo struct {
	Label     string `json:"label"`
	Received  uint64 `json:"frames_received"`
	Concealed uint64 `json:"frames_concealed,omitempty"`
	// Undecodable counts frames no decoder could read (concealed).
	Undecodable uint64 `json:"frames_undecodable,omitempty"`
	Stored      uint32 `json:"frames_stored"`
	Decoded     uint32 `json:"frames_decoded"`
	Finals      uint32 `json:"finals"`
	Complete    bool   `json:"complete"`
	EndFrames   uint32 `json:"end_frames,omitempty"`
}

// View returns a copy of a call's record and its channels as they are in
// memory, and whether the call is in memory at all.
func (m *Manager) View(id proto.CallID) (store.Call, []ChannelInfo, bool) {
	cl := m.held(id)
	if cl == nil {
		return store.Call{}, nil, false
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var chans []ChannelInfo
	for _, ch := range cl.chans {
		chans = append(chans, ChannelInfo{Label: ch.label, Received: ch.received, Concealed: ch.concealed, Undecodable: ch.undecodable,
			Stored: ch.nextSeq, Decoded: ch.decoded, Finals: ch.finals, Complete: ch.complete})
	}
	return *cl.rec, chans, true
}

// Digests returns a copy of a call's record and each channel's frame
// digest of what is durable now, if the call is in memory.
func (m *Manager) Digests(id proto.CallID) (store.Call, []integrity.Digest, bool) {
	cl := m.held(id)
	if cl == nil {
		return store.Call{}, nil, false
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	ds := make([]integrity.Digest, len(cl.chans))
	for i, ch := range cl.chans {
		ds[i] = ch.digest
	}
	return *cl.rec, ds, true
}

// States counts the calls in memory by state.
func (m *Manager) States() map[string]int {
	states := map[string]int{store.StateOpen: 0, store.StateStreaming: 0, store.StateEnded: 0, store.StateFinalised: 0}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, cl := range m.calls {
		cl.mu.Lock()
		states[cl.rec.State]++
		cl.mu.Unlock()
	}
	return states
}

// Live counts the calls in memory not yet finalised.
func (m *Manager) Live() int {
	n := 0
	for st, k := range m.States() {
		if st != store.StateFinalised {
			n += k
		}
	}
	return n
}

// Forget drops a call from memory (retention deleted it).
func (m *Manager) Forget(id proto.CallID) {
	m.mu.Lock()
	delete(m.calls, id)
	m.mu.Unlock()
}

// SetAudioDeleted records in memory that a call's audio was deleted at t
// (retention) and returns the record to store, if the call is in memory.
func (m *Manager) SetAudioDeleted(id proto.CallID, t time.Time) (store.Call, bool) {
	cl := m.held(id)
	if cl == nil {
		return store.Call{}, false
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.rec.AudioDeleted = &t
	return *cl.rec, true
}

// FinaliseRecord takes a call whose channels are all complete from its
// record and finalises it the way its last channel's completion does
// (tools and tests that build a call's history directly in the store).
func (m *Manager) FinaliseRecord(rec *store.Call) {
	cl := m.buildCall(rec)
	m.mu.Lock()
	m.calls[rec.ID] = cl
	m.mu.Unlock()
	m.channelComplete(cl, nil)
}

// held returns the call if it is in memory.
func (m *Manager) held(id proto.CallID) *call {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.calls[id]
}
