package bench

import (
	"testing"
	"time"
)

// The relay delays each direction: a round trip through it takes at least
// twice its delay, and what is sent comes back whole.
func TestRelayDelaysBothWays(t *testing.T) {
	const d = 5 * time.Millisecond
	s, err := EchoRTT(d, 5)
	if err != nil {
		t.Fatal(err)
	}
	if s.N != 5 || s.P50 < 2*d {
		t.Fatalf("round trips %+v through a relay of %v each way", s, d)
	}
}
