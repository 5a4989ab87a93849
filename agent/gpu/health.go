package gpu

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// DefaultIgnoredXIDs are XIDs caused by applications, not by the GPU: a
// crashing CUDA program must not take a GPU out of service.
var DefaultIgnoredXIDs = []uint64{13, 31, 43, 45, 68, 109}

// HealthConfig tunes the health watcher.
type HealthConfig struct {
	// IgnoredXIDs are not health problems (DefaultIgnoredXIDs when nil).
	IgnoredXIDs []uint64
	// RecoverAfter is how long a GPU must stay free of critical events to
	// be healthy again (default 5 minutes).
	RecoverAfter time.Duration
	// Wait is one event-wait (default 1 s; the context is checked between).
	Wait time.Duration
	// Now is the clock (tests set it).
	Now func() time.Time
	Log *slog.Logger
}

// WatchHealth waits on NVML events until ctx ends: an XID critical error
// (other than an ignored one) or a double-bit ECC error marks the GPU
// unhealthy; a GPU with no such event for RecoverAfter is healthy again.
// It returns nil when the platform has no event support (logged once).
func (n *NVML) WatchHealth(ctx context.Context, cfg HealthConfig) error {
	if cfg.IgnoredXIDs == nil {
		cfg.IgnoredXIDs = DefaultIgnoredXIDs
	}
	if cfg.RecoverAfter == 0 {
		cfg.RecoverAfter = 5 * time.Minute
	}
	if cfg.Wait == 0 {
		cfg.Wait = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	ignored := map[uint64]bool{}
	for _, x := range cfg.IgnoredXIDs {
		ignored[x] = true
	}
	es, ret := n.lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		cfg.Log.Warn("GPU health events unavailable: health from readings only", "nvml", ret.Error())
		return nil
	}
	defer es.Free()
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("gpu: device count: %v", ret)
	}
	byHandle := map[nvml.Device]string{}
	for i := range count {
		d, ret := n.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		uuid, _ := d.GetUUID()
		byHandle[d] = uuid
		mask := uint64(nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError)
		if ret := d.RegisterEvents(mask, es); ret != nvml.SUCCESS {
			cfg.Log.Warn("GPU does not report health events", "gpu", uuid, "nvml", ret.Error())
		}
	}
	var mu sync.Mutex
	lastBad := map[string]time.Time{}
	for ctx.Err() == nil {
		ev, ret := es.Wait(uint32(cfg.Wait.Milliseconds()))
		now := cfg.Now()
		switch {
		case ret == nvml.ERROR_TIMEOUT:
		case ret != nvml.SUCCESS:
			cfg.Log.Warn("GPU event wait failed", "nvml", ret.Error())
			select {
			case <-ctx.Done():
			case <-time.After(cfg.Wait):
			}
		case ev.EventType == nvml.EventTypeXidCriticalError && ignored[ev.EventData]:
			cfg.Log.Info("application XID ignored", "gpu", byHandle[ev.Device], "xid", ev.EventData)
		default:
			why := fmt.Sprintf("XID %d", ev.EventData)
			if ev.EventType == nvml.EventTypeDoubleBitEccError {
				why = "double-bit ECC error"
			}
			targets := []string{byHandle[ev.Device]}
			if ev.Device == nil { // the event concerns every GPU
				targets = targets[:0]
				for _, u := range byHandle {
					targets = append(targets, u)
				}
			}
			for _, u := range targets {
				mu.Lock()
				lastBad[u] = now
				mu.Unlock()
				n.SetHealth(u, why+" at "+now.UTC().Format(time.RFC3339))
				cfg.Log.Error("GPU unhealthy", "gpu", u, "why", why)
			}
		}
		mu.Lock()
		for u, t := range lastBad {
			if now.Sub(t) >= cfg.RecoverAfter {
				delete(lastBad, u)
				n.SetHealth(u, "")
				cfg.Log.Info("GPU healthy again", "gpu", u, "quiet_for", cfg.RecoverAfter)
			}
		}
		mu.Unlock()
	}
	return nil
}
