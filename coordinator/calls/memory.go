package calls

import "github.com/callscribe/callscribe/coordinator/store"

// A finalised call leaves memory as soon as nothing uses it — no open
// console session, no open watcher — and a finalised call loaded from the
// store to serve a resume or a watch is never kept (loadCall): everything
// about it is in the store, so memory holds live calls only, whatever the
// history.

// forgetFinalised drops cl from memory if it is finalised and no open
// session or watcher holds it. finalise calls it once the call is
// finalised (every session is then closed), and a session's Close calls it
// for a call finalised while it was attached.
func (m *Manager) forgetFinalised(cl *call) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if m.calls[cl.id] != cl || cl.rec.State != store.StateFinalised {
		return
	}
	if cl.sess != nil && !cl.sess.closed {
		return
	}
	for w := range cl.watchers {
		if !w.closed {
			return
		}
	}
	delete(m.calls, cl.id)
}

// InMemory is how many calls the manager holds in memory.
func (m *Manager) InMemory() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.calls)
}
