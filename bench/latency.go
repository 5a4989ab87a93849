// Package bench measures callscribe's durable path and pipeline on this
// machine. Its results are written by `make bench` (bench/cmd/benchreport);
// nothing here asserts a time. It is also the load generator behind
// `callscribe bench load`, so it is linked into the product binary: what
// needs a broker or draws charts lives in bench/brokers and bench/plot.
package bench

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// Recorder collects latencies.
type Recorder struct {
	mu sync.Mutex
	d  []time.Duration
}

// Add records one latency.
func (r *Recorder) Add(d time.Duration) {
	r.mu.Lock()
	r.d = append(r.d, d)
	r.mu.Unlock()
}

// Reset forgets what was recorded.
func (r *Recorder) Reset() {
	r.mu.Lock()
	r.d = nil
	r.mu.Unlock()
}

// Mean is the mean of what was recorded (0 for nothing).
func (r *Recorder) Mean() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.d) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range r.d {
		sum += d
	}
	return sum / time.Duration(len(r.d))
}

// Summary is a latency distribution.
type Summary struct {
	N             int
	P50, P99, Max time.Duration
}

// Summary sorts and summarises what was recorded.
func (r *Recorder) Summary() Summary {
	r.mu.Lock()
	d := slices.Clone(r.d)
	r.mu.Unlock()
	if len(d) == 0 {
		return Summary{}
	}
	slices.Sort(d)
	return Summary{N: len(d), P50: d[len(d)/2], P99: d[min(len(d)-1, len(d)*99/100)], Max: d[len(d)-1]}
}

// MS formats a duration in milliseconds.
func MS(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }
