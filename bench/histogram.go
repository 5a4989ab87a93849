package bench

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Histogram is a Prometheus histogram as /metrics writes it: cumulative
// counts by bucket upper bound (ascending, +Inf last), the sum of the
// observations and their count.
type Histogram struct {
	Bounds []float64
	Counts []float64
	Sum    float64
	Count  float64
}

// ParseHistogram reads the histogram name (without labels other than le)
// from the text of a /metrics.
func ParseHistogram(text, name string) (Histogram, error) {
	var h Histogram
	var haveSum, haveCount bool
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		switch {
		case strings.HasPrefix(l, name+"_bucket{"):
			_, rest, _ := strings.Cut(l, `le="`)
			le, rest, ok := strings.Cut(rest, `"`)
			_, val, ok2 := strings.Cut(rest, "} ")
			if !ok || !ok2 {
				return h, fmt.Errorf("bench: %s: bad bucket line %q", name, l)
			}
			b, err := strconv.ParseFloat(le, 64) // ParseFloat reads "+Inf"
			if err != nil {
				return h, fmt.Errorf("bench: %s: bucket %q: %w", name, le, err)
			}
			c, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err != nil {
				return h, fmt.Errorf("bench: %s: bucket %q count: %w", name, le, err)
			}
			if n := len(h.Bounds); n > 0 && (b <= h.Bounds[n-1] || c < h.Counts[n-1]) {
				return h, fmt.Errorf("bench: %s: buckets out of order at le=%q", name, le)
			}
			h.Bounds, h.Counts = append(h.Bounds, b), append(h.Counts, c)
		case strings.HasPrefix(l, name+"_sum "):
			v, err := strconv.ParseFloat(strings.TrimSpace(l[len(name)+5:]), 64)
			if err != nil {
				return h, fmt.Errorf("bench: %s_sum: %w", name, err)
			}
			h.Sum, haveSum = v, true
		case strings.HasPrefix(l, name+"_count "):
			v, err := strconv.ParseFloat(strings.TrimSpace(l[len(name)+7:]), 64)
			if err != nil {
				return h, fmt.Errorf("bench: %s_count: %w", name, err)
			}
			h.Count, haveCount = v, true
		}
	}
	switch {
	case len(h.Bounds) == 0 || !haveSum || !haveCount:
		return h, fmt.Errorf("bench: no histogram %s (buckets, _sum and _count)", name)
	case !math.IsInf(h.Bounds[len(h.Bounds)-1], 1) || h.Counts[len(h.Counts)-1] != h.Count:
		return h, fmt.Errorf("bench: histogram %s does not end with a +Inf bucket of its count", name)
	}
	return h, nil
}

// Sub is what was observed between before and h (two readings of the same
// histogram, before first).
func (h Histogram) Sub(before Histogram) (Histogram, error) {
	if len(h.Bounds) != len(before.Bounds) {
		return Histogram{}, fmt.Errorf("bench: histograms of %d and %d buckets", len(h.Bounds), len(before.Bounds))
	}
	d := Histogram{Bounds: h.Bounds, Counts: make([]float64, len(h.Counts)), Sum: h.Sum - before.Sum, Count: h.Count - before.Count}
	for i := range h.Bounds {
		if h.Bounds[i] != before.Bounds[i] {
			return Histogram{}, fmt.Errorf("bench: bucket %d is le=%g, was le=%g", i, h.Bounds[i], before.Bounds[i])
		}
		d.Counts[i] = h.Counts[i] - before.Counts[i]
		if d.Counts[i] < 0 {
			return Histogram{}, fmt.Errorf("bench: bucket le=%g went down (%g → %g): not the same histogram", h.Bounds[i], before.Counts[i], h.Counts[i])
		}
	}
	return d, nil
}

// Mean is the mean observation (0 with none).
func (h Histogram) Mean() float64 {
	if h.Count == 0 {
		return 0
	}
	return h.Sum / h.Count
}

// MaxBucket is the bucket the largest observation fell in: it was above lo
// and at most hi (hi is +Inf past the last bound). Both are 0 with no
// observations.
func (h Histogram) MaxBucket() (lo, hi float64) {
	if h.Count == 0 {
		return 0, 0
	}
	for i, c := range h.Counts {
		if c == h.Count { // the first bound every observation is under
			if i > 0 {
				lo = h.Bounds[i-1]
			} else if h.Bounds[0] > 0 {
				lo = 0
			} else {
				lo = math.Inf(-1)
			}
			return lo, h.Bounds[i]
		}
	}
	return h.Bounds[len(h.Bounds)-1], math.Inf(1)
}
