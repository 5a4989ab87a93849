package bench

import (
	"math"
	"strings"
	"testing"
)

// Two readings of the coordinator's writes-per-commit histogram, as
// client_golang writes them, around a run of 10 commits: 2 of 1 write, 3 of
// 2 to 4 writes (3+4+4) and 5 of 17 to 32 writes (5×20).
const metricsBefore = `# HELP callscribe_store_commit_writes Writes carried by one group commit.
# TYPE callscribe_store_commit_writes histogram
callscribe_store_commit_writes_bucket{le="1"} 4
callscribe_store_commit_writes_bucket{le="2"} 5
callscribe_store_commit_writes_bucket{le="4"} 5
callscribe_store_commit_writes_bucket{le="8"} 5
callscribe_store_commit_writes_bucket{le="16"} 5
callscribe_store_commit_writes_bucket{le="32"} 5
callscribe_store_commit_writes_bucket{le="+Inf"} 5
callscribe_store_commit_writes_sum 6
callscribe_store_commit_writes_count 5
callscribe_store_commit_writes_total_bogus 99
callscribe_frames_stored_total 0
`

const metricsAfter = `# TYPE callscribe_store_commit_writes histogram
callscribe_store_commit_writes_bucket{le="1"} 6
callscribe_store_commit_writes_bucket{le="2"} 7
callscribe_store_commit_writes_bucket{le="4"} 10
callscribe_store_commit_writes_bucket{le="8"} 10
callscribe_store_commit_writes_bucket{le="16"} 10
callscribe_store_commit_writes_bucket{le="32"} 15
callscribe_store_commit_writes_bucket{le="+Inf"} 15
callscribe_store_commit_writes_sum 119
callscribe_store_commit_writes_count 15
callscribe_frames_stored_total 100
`

func TestHistogramDifference(t *testing.T) {
	b, err := ParseHistogram(metricsBefore, "callscribe_store_commit_writes")
	if err != nil {
		t.Fatal(err)
	}
	a, err := ParseHistogram(metricsAfter, "callscribe_store_commit_writes")
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Bounds) != 7 || !math.IsInf(a.Bounds[6], 1) || a.Count != 15 || a.Sum != 119 {
		t.Fatalf("parsed %+v", a)
	}
	d, err := a.Sub(b)
	if err != nil {
		t.Fatal(err)
	}
	if d.Count != 10 || d.Sum != 113 || d.Mean() != 11.3 {
		t.Errorf("difference: %g commits, %g writes, mean %g; want 10, 113, 11.3", d.Count, d.Sum, d.Mean())
	}
	if lo, hi := d.MaxBucket(); lo != 16 || hi != 32 {
		t.Errorf("largest commit in (%g, %g], want (16, 32]", lo, hi)
	}
	// Before the run, every commit carried 1 or 2 writes.
	if lo, hi := b.MaxBucket(); lo != 1 || hi != 2 {
		t.Errorf("before: largest in (%g, %g], want (1, 2]", lo, hi)
	}
	if _, err := b.Sub(a); err == nil {
		t.Error("after minus before the wrong way round: no error")
	}
	var empty Histogram
	if d, err := a.Sub(a); err != nil || d.Mean() != 0 {
		t.Errorf("nothing observed: mean %g, %v", d.Mean(), err)
	} else if lo, hi := d.MaxBucket(); lo != 0 || hi != 0 {
		t.Errorf("nothing observed: max in (%g, %g]", lo, hi)
	}
	if _, err := a.Sub(empty); err == nil {
		t.Error("different bucket layouts: no error")
	}
}

func TestHistogramOverflowAndErrors(t *testing.T) {
	over := strings.Replace(metricsAfter, `{le="32"} 15`, `{le="32"} 14`, 1)
	h, err := ParseHistogram(over, "callscribe_store_commit_writes")
	if err != nil {
		t.Fatal(err)
	}
	if lo, hi := h.MaxBucket(); lo != 32 || !math.IsInf(hi, 1) {
		t.Errorf("one commit past the last bound: (%g, %g]", lo, hi)
	}
	if _, err := ParseHistogram(metricsAfter, "callscribe_store_commit_seconds"); err == nil {
		t.Error("a histogram that is not there: no error")
	}
	noInf := strings.Replace(metricsAfter, `callscribe_store_commit_writes_bucket{le="+Inf"} 15`+"\n", "", 1)
	if _, err := ParseHistogram(noInf, "callscribe_store_commit_writes"); err == nil {
		t.Error("no +Inf bucket: no error")
	}
	shuffled := strings.Replace(metricsAfter, `{le="2"} 7`, `{le="2"} 5`, 1)
	if _, err := ParseHistogram(shuffled, "callscribe_store_commit_writes"); err == nil {
		t.Error("cumulative counts going down: no error")
	}
	if m, err := Samples(metricsAfter, "callscribe_frames_stored_total"); err != nil || m["callscribe_frames_stored_total"] != 100 {
		t.Errorf("frames stored: %v %v", m, err)
	}
}

func TestIOServiced(t *testing.T) {
	text := "7:0 Read 12\n7:0 Write 300\n7:0 Sync 300\n7:0 Total 312\n7:10 Write 5\nTotal 317\n"
	for _, c := range []struct {
		dev, op string
		want    int64
	}{{"7:0", "Write", 300}, {"7:0", "Read", 12}, {"7:10", "Write", 5}, {"7:1", "Write", 0}} {
		if got, err := ioServiced(text, c.dev, c.op); err != nil || got != c.want {
			t.Errorf("%s %s: %d %v, want %d", c.dev, c.op, got, err, c.want)
		}
	}
}
