// Package supervisor runs worker processes: it starts each in its own process
// group, restarts it with backoff when it exits, and kills the whole group on
// stop. The restart decision is a pure function, tested on its own.
package supervisor

import "time"

// Policy bounds restarts.
type Policy struct {
	// Attempts within Interval before the worker is declared failed.
	Attempts int
	Interval time.Duration
	// Delay is the first backoff; it doubles up to MaxDelay.
	Delay    time.Duration
	MaxDelay time.Duration
}

// DefaultPolicy restarts fast at first (a crashed worker holds calls) and
// gives up after 10 crashes in a minute.
var DefaultPolicy = Policy{Attempts: 10, Interval: time.Minute, Delay: 100 * time.Millisecond, MaxDelay: 10 * time.Second}

// Decide says whether to restart after an exit, and after what delay, given
// the times of earlier exits (oldest first) and now.
func (p Policy) Decide(exits []time.Time, now time.Time) (restart bool, delay time.Duration) {
	recent := 0
	for _, t := range exits {
		if now.Sub(t) <= p.Interval {
			recent++
		}
	}
	if recent >= p.Attempts {
		return false, 0
	}
	delay = p.Delay
	for i := 1; i < recent && delay < p.MaxDelay; i++ {
		delay *= 2
	}
	return true, min(delay, p.MaxDelay)
}
