package bench

import (
	"strings"
	"sync"
	"time"

	metrics "github.com/hashicorp/go-metrics"
)

// RaftStages records how long Raft's stages take, from the timers
// hashicorp/raft reports through go-metrics' global sink, while it is
// installed (Install … StopRaftStages). The sink is the process's: the
// samples of every Raft node in it are pooled, so record one cluster's
// turn at a time.
type RaftStages struct {
	mu   sync.Mutex
	recs map[string]*Recorder
	sums map[string]time.Duration
}

// NewRaftStages returns an empty record.
func NewRaftStages() *RaftStages {
	return &RaftStages{recs: map[string]*Recorder{}, sums: map[string]time.Duration{}}
}

// Install makes r go-metrics' global sink (until another is installed).
func (r *RaftStages) Install() { setMetricsSink(r) }

// Reset forgets what was recorded.
func (r *RaftStages) Reset() {
	r.mu.Lock()
	r.recs, r.sums = map[string]*Recorder{}, map[string]time.Duration{}
	r.mu.Unlock()
}

// StopRaftStages makes go-metrics' global sink one that drops everything.
func StopRaftStages() { setMetricsSink(&metrics.BlackholeSink{}) }

func setMetricsSink(s metrics.MetricSink) {
	cfg := metrics.DefaultConfig("")
	cfg.EnableHostname, cfg.EnableRuntimeMetrics = false, false
	_, _ = metrics.NewGlobal(cfg, s)
}

// Stage summarises one timer ("raft.leader.dispatchLog"), and its mean.
func (r *RaftStages) Stage(key string) (Summary, time.Duration) {
	r.mu.Lock()
	rec, sum := r.recs[key], r.sums[key]
	r.mu.Unlock()
	if rec == nil {
		return Summary{}, 0
	}
	s := rec.Summary()
	if s.N == 0 {
		return s, 0
	}
	return s, sum / time.Duration(s.N)
}

// AddSample records a timer's sample (milliseconds, go-metrics' default
// granularity).
func (r *RaftStages) AddSample(key []string, val float32) {
	k := strings.Join(key, ".")
	d := time.Duration(float64(val) * float64(time.Millisecond))
	r.mu.Lock()
	rec := r.recs[k]
	if rec == nil {
		rec = &Recorder{}
		r.recs[k] = rec
	}
	r.sums[k] += d
	r.mu.Unlock()
	rec.Add(d)
}

// AddSampleWithLabels records the sample under its key (labels dropped).
func (r *RaftStages) AddSampleWithLabels(key []string, val float32, _ []metrics.Label) {
	r.AddSample(key, val)
}

// SetGauge, EmitKey and IncrCounter are dropped.
func (r *RaftStages) SetGauge([]string, float32)                               {}
func (r *RaftStages) SetGaugeWithLabels([]string, float32, []metrics.Label)    {}
func (r *RaftStages) EmitKey([]string, float32)                                {}
func (r *RaftStages) IncrCounter([]string, float32)                            {}
func (r *RaftStages) IncrCounterWithLabels([]string, float32, []metrics.Label) {}
