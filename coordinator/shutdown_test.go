package coordinator

import (
	"strings"
	"testing"
	"time"
)

// A shutdown is not a failover: no channel is counted or logged as having
// lost its worker, and none is moved.
func TestShutdownCountsNoFailover(t *testing.T) {
	tc := startCoordinatorWith(t, func(c *Config) {})
	fw := tc.worker(t, "n1-w", 2, true)
	s := tc.stream(t)
	s.open(hello("sd-call"))
	for i := range uint32(3) {
		s.audio(0, i)
		s.expectAck(i + 1)
	}
	waitFor(t, "assigned", 5*time.Second, func() bool {
		as, fr, _ := fw.state()
		return len(as) == 1 && len(fr[0]) == 3
	})
	before := tc.c.metrics.failovers.Load()
	tc.stop()
	after := tc.c.metrics.failovers.Load()
	logs := tc.logs.String()
	t.Logf("failovers before %d after %d; 'lost its worker' in log: %v", before, after, strings.Contains(logs, "lost its worker"))
	if after != before || strings.Contains(logs, "lost its worker") {
		t.Errorf("shutdown counted %d failovers (log: %v)", after-before, strings.Contains(logs, "lost its worker"))
	}
}
