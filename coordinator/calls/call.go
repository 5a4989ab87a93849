package calls

import (
	"net/netip"
	"sync"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/integrity"
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
	// recMu orders the writes of the call's record: a writer holds it from
	// its snapshot until its write is queued (changes made in memory
	// first), or until the write is durable and settled in memory (changes
	// made durable first), so a later snapshot always includes an earlier
	// change and is committed after it: no record write ever brings back
	// an older owner, state or skip list. Only record writers take it,
	// never under cl.mu.
	recMu sync.Mutex
	// opening is set while the Open that created the call has not yet
	// installed its session: a call being opened is not "unstarted" (the
	// janitor and dropIfUnstarted leave it alone). Guarded by mu.
	opening bool
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

// eachLocked calls f for the console's session and every watcher. Caller
// holds cl.mu.
func (cl *call) eachLocked(f func(s *session)) {
	if cl.sess != nil {
		f(cl.sess)
	}
	for w := range cl.watchers {
		f(w)
	}
}

func (m *Manager) buildCall(rec *store.Call) *call {
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

// setAt returns a copy of s with s[i] = v. A call's record is copied
// shallowly into snapshots (views, store writes on their way) under its
// lock and read after it: its slices are replaced, never written in place.
func setAt[T any](s []T, i int, v T) []T {
	out := make([]T, max(len(s), i+1))
	copy(out, s)
	out[i] = v
	return out
}
