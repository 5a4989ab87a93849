package calls

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/tuning"
)

// persistComplete records that a channel is decoded to its end. When it
// is the call's last channel, the same write finalises the call (one
// commit less at the end of every call).
func (m *Manager) persistComplete(ctx context.Context, cl *call, ch *channel, decoded uint32) error {
	cl.recMu.Lock() // durable first, then settled: held through both
	defer cl.recMu.Unlock()
	cl.mu.Lock()
	rec := *cl.rec
	rec.Decoded = append([]uint32(nil), rec.Decoded...)
	rec.Complete = append([]bool(nil), rec.Complete...)
	rec.Decoded[ch.idx], rec.Complete[ch.idx] = decoded, true
	last := cl.rec.State != store.StateFinalised && !cl.finalising
	for _, o := range cl.chans {
		last = last && (o == ch || o.complete)
	}
	if last {
		cl.finalising = true
	}
	cl.mu.Unlock()
	settle := func() {
		ch.complete, ch.decoded = true, decoded
		cl.rec.Decoded = setAt(cl.rec.Decoded, ch.idx, decoded) // copy on write
		cl.rec.Complete = setAt(cl.rec.Complete, ch.idx, true)
	}
	if last {
		m.finalise(cl, &rec, settle)
		return nil
	}
	if err := m.store.PutCall(ctx, &rec); err != nil {
		return fmt.Errorf("persist completion: %w", err)
	}
	cl.mu.Lock()
	settle()
	cl.mu.Unlock()
	return nil
}

// channelComplete finalises the call when its last channel completes (if
// that channel's completion did not already).
func (m *Manager) channelComplete(cl *call, _ *channel) {
	cl.recMu.Lock()
	defer cl.recMu.Unlock()
	cl.mu.Lock()
	for _, ch := range cl.chans {
		if !ch.complete {
			cl.mu.Unlock()
			return
		}
	}
	if cl.rec.State == store.StateFinalised || cl.finalising {
		cl.mu.Unlock()
		return
	}
	cl.finalising = true
	rec := *cl.rec
	cl.mu.Unlock()
	m.finalise(cl, &rec, func() {})
}

// finalise makes rec, the call's record, durable as finalised (queued for
// export in the same commit when export is on), then settles memory (with
// cl.mu held, settle first) and tells every session. It retries: a
// finalisation must not be lost to a passing storage error. The caller has
// set cl.finalising, so only one finalise runs per call, and holds
// cl.recMu.
func (m *Manager) finalise(cl *call, rec *store.Call, settle func()) {
	now := time.Now().UTC()
	rec.State, rec.Finalised = store.StateFinalised, &now
	if m.cfg.Seal != nil {
		m.cfg.Seal(rec)
	}
	for attempt := 0; ; attempt++ {
		put := m.store.PutCall
		if m.cfg.Export {
			put = m.store.PutCallExport // queued for export in the same commit
		}
		err := put(context.Background(), rec)
		if err == nil {
			if m.cfg.OnFinalised != nil {
				m.cfg.OnFinalised()
			}
			break
		}
		if attempt == 0 || errors.Is(err, context.Canceled) {
			m.log.Error("cannot persist finalisation: retrying", "call", cl.id, "err", err)
		}
		if m.runCtx.Err() != nil {
			return
		}
		time.Sleep(tuning.FinaliseRetry)
	}
	cl.mu.Lock()
	settle()
	cl.rec.State, cl.rec.Finalised, cl.rec.Transcript = rec.State, rec.Finalised, rec.Transcript
	cl.eachLocked(func(s *session) { s.finalisedLocked(cl) })
	close(cl.done)
	cl.mu.Unlock()
	m.obs.Finalised()
	m.log.Info("call finalised", "call", cl.id)
	// Every session has its transcript: the call is served from the store
	// from now on (memory.go).
	m.forgetFinalised(cl)
}
