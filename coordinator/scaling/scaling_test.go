package scaling

import (
	"strings"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	now := time.Unix(10000, 0)
	p := Policy{TargetIdle: 4, Hysteresis: 2, Cooldown: time.Minute, Min: 1, Max: 10}
	cases := []struct {
		name  string
		s     State
		delta int
	}{
		{"empty: reach the minimum", State{Instances: 0, Slots: 2, Capacity: 8}, 1},
		{"below target: add enough at once", State{Instances: 2, Slots: 2, Used: 3, Capacity: 8}, 2},
		{"exactly at target: steady", State{Instances: 3, Slots: 2, Used: 2, Capacity: 8}, 0},
		{"within hysteresis: steady", State{Instances: 4, Slots: 2, Used: 2, IdleInstance: 1, Capacity: 8, LastChange: now.Add(-time.Hour)}, 0},
		{"surplus: stop one", State{Instances: 6, Slots: 2, Used: 2, IdleInstance: 4, Capacity: 8, LastChange: now.Add(-time.Hour)}, -1},
		{"surplus in cooldown: wait", State{Instances: 6, Slots: 2, Used: 2, IdleInstance: 4, Capacity: 8, LastChange: now.Add(-10 * time.Second)}, 0},
		{"surplus but every instance busy: nothing to stop", State{Instances: 6, Slots: 2, Used: 2, IdleInstance: 0, LastChange: now.Add(-time.Hour)}, 0},
		{"bounded by the hardware", State{Instances: 1, Slots: 2, Used: 2, Capacity: 1}, 1},
		{"hardware full", State{Instances: 1, Slots: 2, Used: 2, Capacity: 0}, 0},
		{"bounded by max", State{Instances: 9, Slots: 2, Used: 18, Capacity: 8}, 1},
	}
	for _, c := range cases {
		d := p.Decide(c.s, now)
		if d.Delta != c.delta || d.Reason == "" {
			t.Errorf("%s: got %+v, want delta %d", c.name, d, c.delta)
		}
	}
}

func TestNeverBelowMin(t *testing.T) {
	p := Policy{TargetIdle: 0, Min: 3}
	s := State{Instances: 3, Slots: 2, IdleInstance: 3, Capacity: 8}
	if d := p.Decide(s, time.Unix(1e6, 0)); d.Delta != 0 {
		t.Fatalf("scaled below min: %+v", d)
	}
	s.Instances = 4
	if d := p.Decide(s, time.Unix(1e6, 0)); d.Delta != -1 {
		t.Fatalf("surplus above min not stopped: %+v", d)
	}
}

// A load that rises and falls never makes the policy flap: simulated over
// time, it scales up quickly and down slowly, one instance per cooldown.
func TestNoFlapping(t *testing.T) {
	p := Policy{TargetIdle: 2, Hysteresis: 2, Cooldown: 30 * time.Second, Min: 1}
	s := State{Instances: 1, Slots: 2, Capacity: 100}
	now := time.Unix(0, 0)
	changes := 0
	load := func(sec int) int { // 0 → 20 used slots and back
		if sec < 60 {
			return sec / 3
		}
		return max(0, 20-(sec-60)/3)
	}
	for sec := range 300 {
		now = now.Add(time.Second)
		s.Used = load(sec)
		s.IdleInstance = max(0, s.Instances-(s.Used+s.Slots-1)/s.Slots)
		d := p.Decide(s, now)
		if d.Delta != 0 {
			if d.Delta < 0 && changes > 0 && now.Sub(s.LastChange) < p.Cooldown {
				t.Fatalf("scale-down inside the cooldown at %v", now)
			}
			s.Instances += d.Delta
			s.LastChange = now
			changes++
		}
		if idle := s.Instances*s.Slots - s.Used; idle < 0 {
			t.Fatalf("at %ds more calls than slots: %+v", sec, s)
		}
	}
	if s.Instances > 3 {
		t.Fatalf("did not scale back down: %d instances", s.Instances)
	}
	if changes > 25 {
		t.Fatalf("%d changes: flapping", changes)
	}
}

// With node-loss awareness, idle slots on the busiest node do not count:
// the policy adds an instance (placed elsewhere) even though the rack as a
// whole has idle slots.
func TestNodeLossAwareness(t *testing.T) {
	p := Policy{TargetIdle: 2, Hysteresis: 2, Cooldown: time.Minute, Min: 2}
	s := State{Instances: 2, Slots: 2, Used: 2, Capacity: 4}
	if d := p.Decide(s, time.Unix(1e6, 0)); d.Delta != 0 {
		t.Fatalf("without awareness 2 idle slots meet the target: %+v", d)
	}
	s.NodeLossAware, s.SpareIdle = true, 0 // every slot is on one node
	if d := p.Decide(s, time.Unix(1e6, 0)); d.Delta != 1 || !strings.Contains(d.Reason, "outside the busiest node") {
		t.Fatalf("want +1 for N+1, got %+v", d)
	}
}
