package calls

import (
	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/proto"
)

// session is a console's attachment to a call (or a watcher's).
type session struct {
	m         *Manager
	call      *call
	principal auth.Principal // who opened it (revocation ends it)
	events    chan ingest.Event
	nextFinal []uint32 // guarded by call.mu
	closed    bool     // guarded by call.mu
	watch     bool     // a read-only watcher, not the console
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
		s.m.dropIfUnstarted(cl)
	}
	s.m.forgetFinalised(cl)
}

func (s *session) closeLocked() {
	if !s.closed {
		s.closed = true
		close(s.events)
	}
}

// pushLocked queues an event; a console too slow to keep up is disconnected (it
// reconnects and resumes from the finals it has).
func (s *session) pushLocked(ev ingest.Event) {
	if s.closed {
		return
	}
	select {
	case s.events <- ev:
	default:
		s.m.log.Warn("console too slow for its transcript: disconnecting it", "call", s.call.id, "watcher", s.watch)
		s.closeLocked()
	}
}

func (s *session) sendFinalLocked(cl *call, f store.Final) {
	if f.Index != s.nextFinal[f.Channel] {
		return
	}
	s.nextFinal[f.Channel]++
	s.pushLocked(ingest.Event{Transcript: &proto.Transcript{Kind: proto.KindFinal, Channel: f.Channel, Label: cl.chans[f.Channel].label,
		Index: f.Index, Text: f.Text, StartMS: SamplesToMS(f.Start), EndMS: SamplesToMS(f.End)}})
}

func (s *session) finalisedLocked(cl *call) {
	fin := &proto.Finalised{CallID: cl.id}
	for _, ch := range cl.chans {
		fin.Finals = append(fin.Finals, ch.finals)
	}
	s.pushLocked(ingest.Event{Finalised: fin})
	s.closeLocked()
}
