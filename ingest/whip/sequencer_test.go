package whip

import (
	"fmt"
	"testing"
	"time"
)

// run feeds packets (seq numbers, payload = its own number) at 20 ms
// intervals and returns the released sequence as strings ("-" = lost).
func run(s *sequencer, seqs []uint16) []string {
	t0 := time.Unix(0, 0)
	var out []string
	add := func(ps [][]byte) {
		for _, p := range ps {
			if p == nil {
				out = append(out, "-")
			} else {
				out = append(out, string(p))
			}
		}
	}
	for i, q := range seqs {
		add(s.push(q, []byte(fmt.Sprint(q)), t0.Add(time.Duration(i)*20*time.Millisecond)))
	}
	add(s.flush())
	return out
}

func TestSequencer(t *testing.T) {
	for _, c := range []struct {
		name            string
		seqs            []uint16
		want            string
		lost, late, dup uint64
		span            uint64
	}{
		{"in order", []uint16{10, 11, 12}, "10 11 12", 0, 0, 0, 3},
		{"wraps", []uint16{65534, 65535, 0, 1}, "65534 65535 0 1", 0, 0, 0, 4},
		{"reordered", []uint16{1, 3, 2, 4}, "1 2 3 4", 0, 0, 0, 4},
		{"reordered across the wrap", []uint16{65535, 1, 0, 2}, "65535 0 1 2", 0, 0, 0, 4},
		{"lost at the end is concealed on flush", []uint16{5, 7}, "5 - 7", 1, 0, 0, 3},
		{"duplicate held", []uint16{1, 3, 3, 2}, "1 2 3", 0, 0, 1, 3},
		{"duplicate released", []uint16{1, 2, 2, 3}, "1 2 3", 0, 1, 0, 3},
		{"earlier than the first", []uint16{100, 99, 101}, "100 101", 0, 1, 0, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newSequencer(25, 150*time.Millisecond)
			got := fmt.Sprint(run(s, c.seqs))
			if got != "["+c.want+"]" {
				t.Errorf("released %s, want [%s]", got, c.want)
			}
			if s.lost != c.lost || s.late != c.late || s.dup != c.dup {
				t.Errorf("lost %d late %d dup %d, want %d %d %d", s.lost, s.late, s.dup, c.lost, c.late, c.dup)
			}
			if s.span() != c.span {
				t.Errorf("span %d, want %d", s.span(), c.span)
			}
		})
	}
}

func TestSequencerReleasesAGapAfterTheWait(t *testing.T) {
	s := newSequencer(25, 150*time.Millisecond)
	t0 := time.Unix(0, 0)
	if out := s.push(1, []byte("1"), t0); len(out) != 1 {
		t.Fatalf("first packet: %d released", len(out))
	}
	if out := s.push(3, []byte("3"), t0.Add(40*time.Millisecond)); len(out) != 0 {
		t.Fatalf("packet behind a gap released at once: %d", len(out))
	}
	if out := s.expire(t0.Add(100 * time.Millisecond)); len(out) != 0 {
		t.Fatalf("gap released before the wait: %d", len(out))
	}
	out := s.expire(t0.Add(200 * time.Millisecond))
	if len(out) != 2 || out[0] != nil || string(out[1]) != "3" {
		t.Fatalf("after the wait: %q", out)
	}
	// The lost packet turning up later is counted, not stored.
	if out := s.push(2, []byte("2"), t0.Add(220*time.Millisecond)); len(out) != 0 || s.late != 1 {
		t.Fatalf("late packet: released %d, late %d", len(out), s.late)
	}
}

func TestSequencerWindowBoundsTheWait(t *testing.T) {
	s := newSequencer(4, time.Hour)
	t0 := time.Unix(0, 0)
	var got int
	got += len(s.push(0, []byte{0}, t0))
	for q := uint16(2); q < 6; q++ { // 1 never comes
		got += len(s.push(q, []byte{byte(q)}, t0))
	}
	if got != 6 || s.lost != 1 {
		t.Fatalf("released %d (want 6: 0, lost 1, 2..5), lost %d", got, s.lost)
	}
}

func TestSequencerResyncsAfterAJump(t *testing.T) {
	s := newSequencer(25, 150*time.Millisecond)
	out := run(s, []uint16{1, 2, 30000, 30001})
	if fmt.Sprint(out) != "[1 2 30000 30001]" || s.resyncs != 1 || s.lost != 0 {
		t.Fatalf("released %v resyncs %d lost %d", out, s.resyncs, s.lost)
	}
	if s.span() != 4 {
		t.Fatalf("span %d after a resync, want 4", s.span())
	}
}
