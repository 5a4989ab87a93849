package supervisor

import (
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	p := Policy{Attempts: 3, Interval: time.Minute, Delay: 100 * time.Millisecond, MaxDelay: 300 * time.Millisecond}
	now := time.Unix(1000, 0)
	ago := func(d ...time.Duration) []time.Time {
		var ts []time.Time
		for _, x := range d {
			ts = append(ts, now.Add(-x))
		}
		return ts
	}
	cases := []struct {
		name    string
		exits   []time.Time
		restart bool
		delay   time.Duration
	}{
		{"first exit", ago(0), true, 100 * time.Millisecond},
		{"second exit doubles", ago(time.Second, 0), true, 200 * time.Millisecond},
		{"old exits forgotten", ago(2*time.Minute, 90*time.Second, 0), true, 100 * time.Millisecond},
		{"too many give up", ago(20*time.Second, 10*time.Second, 0), false, 0},
		{"delay capped", ago(3*time.Second, 2*time.Second, 0)[1:], true, 200 * time.Millisecond},
	}
	for _, c := range cases {
		r, d := p.Decide(c.exits, now)
		if r != c.restart || d != c.delay {
			t.Errorf("%s: got (%v, %v), want (%v, %v)", c.name, r, d, c.restart, c.delay)
		}
	}
	big := Policy{Attempts: 100, Interval: time.Minute, Delay: 100 * time.Millisecond, MaxDelay: 300 * time.Millisecond}
	if _, d := big.Decide(ago(5, 4, 3, 2, 1, 0), now); d != 300*time.Millisecond {
		t.Errorf("cap: got %v", d)
	}
}
