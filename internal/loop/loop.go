// Package loop runs periodic background work: every interval, or at once
// when kicked, until the context ends.
package loop

import (
	"context"
	"time"
)

// Every calls fn every interval and whenever kick receives (kick may be
// nil), until ctx is done.
func Every(ctx context.Context, interval time.Duration, kick <-chan struct{}, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-kick:
		}
		fn()
	}
}
