package bench

import (
	"context"
	"testing"
	"time"
)

// A single coordinator (a cluster of one) and a cluster of three, relayed
// with a delay, acknowledge every frame of a small workload, and the
// leader's group commits account for every write.
func TestSingleAndClusterSinksAckEveryFrame(t *testing.T) {
	type mk func(dir string, c *Commits) (Sink, func(), error)
	var failovers func() int64
	cluster := func(delay time.Duration) mk {
		return func(dir string, c *Commits) (Sink, func(), error) {
			sink, cl, err := ClusterSink(dir, ClusterOptions{LinkDelay: delay, Commits: c})
			if err != nil {
				return nil, nil, err
			}
			failovers = cl.Failovers
			return sink, cl.Close, nil
		}
	}
	for name, mk := range map[string]mk{"single": SingleSink, "cluster": cluster(0), "cluster, relayed 1 ms": cluster(time.Millisecond)} {
		t.Run(name, func(t *testing.T) {
			failovers = func() int64 { return 0 }
			c := &Commits{}
			sink, closeFn, err := mk(t.TempDir(), c)
			if err != nil {
				t.Fatal(err)
			}
			defer closeFn()
			r := Workload{Calls: 10, FrameSize: 400, Interval: 100 * time.Millisecond, Duration: 500 * time.Millisecond}.Run(context.Background(), sink)
			if r.Frames != 50 || r.Errors != 0 || len(r.Latencies) != 50 {
				t.Fatalf("%d frames, %d errors, %d latencies", r.Frames, r.Errors, len(r.Latencies))
			}
			if n := failovers(); n > 0 {
				// A write refused by a member that stopped leading
				// (a loaded machine) is written again: counted twice.
				t.Logf("%d writes followed a new leader", n)
				return
			}
			if n, writes := c.Count(), 50+warmupWrites; n == 0 || n > writes || c.PerCommit()*float64(n) < float64(writes)-0.5 || c.PerCommit()*float64(n) > float64(writes)+0.5 {
				t.Errorf("%d commits of %.2f writes each for %d writes", n, c.PerCommit(), writes)
			}
		})
	}
}
