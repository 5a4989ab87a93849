package coordinator

import (
	"context"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/loop"
)

// retentionLoop applies the retention policy every RetentionInterval: the
// audio of a call finalised more than AudioRetention ago is deleted (its
// transcript stays), a call finalised more than TranscriptRetention ago is
// deleted whole (0 keeps transcripts for ever), and Badger's value log is
// garbage-collected.
func (c *Coordinator) retentionLoop(ctx context.Context) {
	loop.Every(ctx, c.cfg.RetentionInterval, nil, func() { c.applyRetention(ctx, time.Now()) })
}

func (c *Coordinator) applyRetention(ctx context.Context, now time.Time) {
	// The store is walked a batch at a time (store.EachCall): a pass holds
	// a few hundred records, not the history.
	err := c.store.EachCall(ctx, func(rec *store.Call) error {
		if rec.State != store.StateFinalised || rec.Finalised == nil {
			return nil
		}
		age := now.Sub(*rec.Finalised)
		switch {
		case c.cfg.TranscriptRetention > 0 && age > c.cfg.TranscriptRetention:
			if _, err := c.store.DeleteAudio(ctx, rec.ID); err != nil {
				c.log.Error("retention: delete audio", "call", rec.ID, "err", err)
				return nil
			}
			if err := c.store.DeleteCall(ctx, rec.ID); err != nil {
				c.log.Error("retention: delete call", "call", rec.ID, "err", err)
				return nil
			}
			c.calls.Forget(rec.ID)
			c.log.Info("retention: call deleted", "call", rec.ID, "finalised", rec.Finalised)
		case c.cfg.AudioRetention > 0 && age > c.cfg.AudioRetention && rec.AudioDeleted == nil:
			n, err := c.store.DeleteAudio(ctx, rec.ID)
			if err != nil {
				c.log.Error("retention: delete audio", "call", rec.ID, "err", err)
				return nil
			}
			t := now.UTC()
			rec.AudioDeleted = &t
			if err := c.store.PutCall(ctx, rec); err != nil {
				c.log.Error("retention: record", "call", rec.ID, "err", err)
				return nil
			}
			c.log.Info("retention: audio deleted", "call", rec.ID, "frames", n, "finalised", rec.Finalised)
		}
		return nil
	})
	if err != nil && ctx.Err() == nil {
		c.log.Error("retention: cannot list calls", "err", err)
		return
	}
	if n := c.store.CollectGarbage(); n > 0 {
		c.log.Info("retention: value log files rewritten", "files", n)
	}
}
