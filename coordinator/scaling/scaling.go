// Package scaling is the "keep N idle call slots" policy of the design
// callscribe replaces (its SCALING_TARGET and CHECK_INTERVAL), made safe
// against flapping: scale up at once when idle slots fall below the target,
// scale down one surplus idle instance at a time only when idle slots exceed
// the target by more than the hysteresis, and never within the cooldown of
// the last change. It is pure: the coordinator feeds it counts and logs
// every decision with its reason.
package scaling

import (
	"fmt"
	"time"
)

// Policy for one model.
type Policy struct {
	// TargetIdle is the number of free call-channel slots to keep ready.
	TargetIdle int
	// Hysteresis is how many idle slots above the target are tolerated
	// before scaling down.
	Hysteresis int
	// Cooldown separates a scale-down from the previous change.
	Cooldown time.Duration
	// Min and Max bound the number of instances (Max 0: no bound but the
	// hardware's).
	Min, Max int
}

// State is a model's current situation.
type State struct {
	Instances    int // running or starting
	Slots        int // slots per instance
	Used         int // slots in use
	IdleInstance int // instances with no slot in use (only those may stop)
	// Capacity is how many more instances the hardware can hold.
	Capacity   int
	LastChange time.Time
	// NodeLossAware, when set, makes SpareIdle the idle slots that count:
	// those left if the node holding the most slots were lost, so a failed
	// node's calls find warm workers elsewhere (N+1).
	NodeLossAware bool
	SpareIdle     int
}

// Decision is how many instances to add (positive) or stop (negative).
type Decision struct {
	Delta  int
	Reason string
}

// Decide applies the policy.
func (p Policy) Decide(s State, now time.Time) Decision {
	if s.Slots < 1 {
		return Decision{Reason: "model has no slots per instance"}
	}
	idle := s.Instances*s.Slots - s.Used
	what := "idle slots"
	if s.NodeLossAware && s.SpareIdle < idle {
		idle, what = s.SpareIdle, "idle slots outside the busiest node"
	}
	switch {
	case s.Instances < p.Min:
		n := min(p.Min-s.Instances, s.Capacity)
		if n == 0 {
			return Decision{Reason: fmt.Sprintf("below minimum %d but the hardware holds no more", p.Min)}
		}
		return Decision{Delta: n, Reason: fmt.Sprintf("%d instances, minimum %d", s.Instances, p.Min)}
	case idle < p.TargetIdle:
		n := ceilDiv(p.TargetIdle-idle, s.Slots)
		if p.Max > 0 {
			n = min(n, p.Max-s.Instances)
		}
		n = min(n, s.Capacity)
		if n <= 0 {
			return Decision{Reason: fmt.Sprintf("%d idle slots, target %d, but at the limit (max %d, hardware room %d)", idle, p.TargetIdle, p.Max, s.Capacity)}
		}
		return Decision{Delta: n, Reason: fmt.Sprintf("%d %s below target %d: +%d instances of %d slots", idle, what, p.TargetIdle, n, s.Slots)}
	case idle >= p.TargetIdle+p.Hysteresis+s.Slots && s.IdleInstance > 0 && s.Instances > p.Min:
		if now.Sub(s.LastChange) < p.Cooldown {
			return Decision{Reason: fmt.Sprintf("%d idle slots above target %d+%d, in cooldown for %v", idle, p.TargetIdle, p.Hysteresis, (p.Cooldown - now.Sub(s.LastChange)).Round(time.Second))}
		}
		return Decision{Delta: -1, Reason: fmt.Sprintf("%d idle slots exceed target %d by more than %d: stop one idle instance", idle, p.TargetIdle, p.Hysteresis)}
	}
	return Decision{Reason: fmt.Sprintf("%d idle slots, target %d: steady", idle, p.TargetIdle)}
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
