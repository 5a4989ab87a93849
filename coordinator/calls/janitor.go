package calls

import (
	"context"
	"fmt"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/loop"
	"github.com/callscribe/callscribe/internal/tuning"
)

// janitor ends calls whose console has been gone, with no audio, for
// AbandonAfter (they are finalised with what was received), and drops calls
// that never received audio and have no console.
func (m *Manager) janitor(ctx context.Context) {
	// Every 2 s at most: calls that never started (recovered after a
	// restart with no console) are dropped promptly.
	loop.Every(ctx, min(m.cfg.AbandonAfter()/4, tuning.JanitorMaxInterval), nil, func() { m.endAbandoned(ctx) })
}

func (m *Manager) endAbandoned(ctx context.Context) {
	after := m.cfg.AbandonAfter() // reloadable
	m.mu.Lock()
	var idle []*call
	var unstarted []*call
	for _, cl := range m.calls {
		cl.mu.Lock()
		live := cl.rec.State == store.StateOpen || cl.rec.State == store.StateStreaming
		switch {
		case cl.sess == nil && cl.settingUpLocked() && !cl.opening:
			unstarted = append(unstarted, cl)
		case live && cl.sess == nil && time.Since(cl.lastActive) > after:
			idle = append(idle, cl)
		}
		cl.mu.Unlock()
	}
	m.mu.Unlock()
	for _, cl := range unstarted {
		m.dropIfUnstarted(cl)
	}
	for _, cl := range idle {
		why := fmt.Sprintf("console gone for %v", after)
		if err := m.endCall(ctx, cl, why); err != nil {
			m.log.Error("cannot end abandoned call", "call", cl.id, "err", err)
			continue
		}
		m.log.Warn("call abandoned by its console: ending it with the audio received", "call", cl.id, "why", why)
	}
}
