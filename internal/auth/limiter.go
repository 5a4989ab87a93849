package auth

import (
	"net/netip"
	"sync"
	"time"
)

// limiter counts failed authentications per address over a window (an
// IPv6 address by its /64: one host holds a whole prefix), and remembers
// which credentials succeeded from where.
type limiter struct {
	mu        sync.Mutex
	max       int
	window    time.Duration
	fails     map[netip.Addr][]time.Time
	goods     map[goodKey]time.Time
	lastSweep time.Time
}

type goodKey struct {
	addr netip.Addr
	cred string
}

// maxTracked bounds the addresses (and credential/address pairs) the
// limiter remembers.
const maxTracked = 100000

func newLimiter(max int, window time.Duration) *limiter {
	return &limiter{max: max, window: window, fails: map[netip.Addr][]time.Time{}, goods: map[goodKey]time.Time{}}
}

// key is what failures are counted under.
func key(a netip.Addr) netip.Addr {
	if a.Is6() && !a.Is4In6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a.Unmap()
}

// good remembers that cred authenticated from remote (for an hour).
func (l *limiter) good(remote netip.Addr, cred string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.goods) >= maxTracked {
		now := time.Now()
		for k, t := range l.goods {
			if now.Sub(t) > time.Hour {
				delete(l.goods, k)
			}
		}
		if len(l.goods) >= maxTracked {
			return
		}
	}
	l.goods[goodKey{key(remote), cred}] = time.Now()
}

func (l *limiter) knownGood(remote netip.Addr, cred string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.goods[goodKey{key(remote), cred}]
	return ok && time.Since(t) < time.Hour
}

// blocked returns how long remote must wait (0: it may try).
func (l *limiter) blocked(remote netip.Addr) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.prune(key(remote), time.Now())
	if len(f) < l.max {
		return 0
	}
	return time.Until(f[0].Add(l.window))
}

func (l *limiter) fail(remote netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	k := key(remote)
	if _, ok := l.fails[k]; !ok && len(l.fails) >= maxTracked {
		// Bounded memory under a spray of addresses: sweep at most once
		// a second, and past the bound, track no new address.
		if now.Sub(l.lastSweep) > time.Second {
			l.lastSweep = now
			for a := range l.fails {
				l.prune(a, now)
			}
		}
		if len(l.fails) >= maxTracked {
			return
		}
	}
	l.fails[k] = append(l.prune(k, now), now)
}

// prune drops failures older than the window. Caller holds l.mu.
func (l *limiter) prune(remote netip.Addr, now time.Time) []time.Time {
	f := l.fails[remote]
	i := 0
	for i < len(f) && now.Sub(f[i]) >= l.window {
		i++
	}
	f = f[i:]
	if len(f) == 0 {
		delete(l.fails, remote)
		return nil
	}
	l.fails[remote] = f
	return f
}
