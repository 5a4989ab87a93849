package coordinator

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callscribe/callscribe/coordinator/calls"
	"github.com/callscribe/callscribe/coordinator/rack"
	"github.com/callscribe/callscribe/internal/tuning"
)

// metrics are the coordinator's counters and latency windows, served at
// /v1/stats.
type metrics struct {
	storeErrors atomic.Int64
	failovers   atomic.Int64
	finals      atomic.Int64
	finalised   atomic.Int64
	ack         window // frame received → durable
	toWorker    window // frame received → written to the worker
	resume      window // worker lost → channel reassigned
	toConsole   window // final received from a worker → queued to the console (persist included)
	p           *prom  // Prometheus instruments (nil in tests that build a bare Coordinator)
}

func (m *metrics) observeAck(d time.Duration) {
	m.ack.add(d)
	if m.p != nil {
		m.p.ack.Observe(secs(d))
		m.p.framesStor.Inc()
	}
}

func (m *metrics) observeToWorker(d time.Duration) {
	m.toWorker.add(d)
	if m.p != nil {
		m.p.toWorker.Observe(secs(d))
	}
}

func (m *metrics) observeResume(d time.Duration) {
	m.resume.add(d)
	if m.p != nil {
		m.p.resume.Observe(secs(d))
	}
}

func (m *metrics) observeToConsole(d time.Duration) {
	m.toConsole.add(d)
	if m.p != nil {
		m.p.toConsole.Observe(secs(d))
		m.p.finals.Inc()
	}
}

var (
	_ calls.Observer = (*metrics)(nil)
	_ rack.Observer  = (*metrics)(nil)
)

// Placed implements the calls and rack Observers.
func (m *metrics) Placed(kind string) {
	m.inc(func(p *prom) { p.placements.WithLabelValues(kind).Inc() })
}

// WorkerUnresponsive implements the calls and rack Observers.
func (m *metrics) WorkerUnresponsive() { m.inc(func(p *prom) { p.workersUnresponsive.Inc() }) }

// FrameReceived implements the calls and rack Observers.
func (m *metrics) FrameReceived() { m.inc(func(p *prom) { p.framesRecv.Inc() }) }

// FrameDuplicate implements the calls and rack Observers.
func (m *metrics) FrameDuplicate() { m.inc(func(p *prom) { p.framesDup.Inc() }) }

// FrameConcealed implements the calls and rack Observers.
func (m *metrics) FrameConcealed() { m.inc(func(p *prom) { p.framesConceal.Inc() }) }

// FrameLost implements the calls and rack Observers.
func (m *metrics) FrameLost() { m.inc(func(p *prom) { p.framesLost.Inc() }) }

// FrameUndecodable implements the calls and rack Observers.
func (m *metrics) FrameUndecodable() {
	m.inc(func(p *prom) { p.framesUndecodable.Inc() })
}

// FramesDecoded implements the calls and rack Observers.
func (m *metrics) FramesDecoded(n uint32) { m.inc(func(p *prom) { p.framesDec.Add(float64(n)) }) }

// Acked implements the calls and rack Observers.
func (m *metrics) Acked(d time.Duration) { m.observeAck(d) }

// ToWorker implements the calls and rack Observers.
func (m *metrics) ToWorker(d time.Duration) {
	m.observeToWorker(d)
}

// Resumed implements the calls and rack Observers.
func (m *metrics) Resumed(d time.Duration) { m.observeResume(d) }

// FinalSent implements the calls and rack Observers.
func (m *metrics) FinalSent(d time.Duration) {
	m.observeToConsole(d)
	m.finals.Add(1)
}

// StoreError implements the calls and rack Observers.
func (m *metrics) StoreError() { m.storeErrors.Add(1) }

// Failover implements the calls and rack Observers.
func (m *metrics) Failover() {
	m.failovers.Add(1)
	m.inc(func(p *prom) { p.failovers.Inc() })
}

// IdleRelease implements the calls and rack Observers.
func (m *metrics) IdleRelease() { m.inc(func(p *prom) { p.idleReleases.Inc() }) }

// Refused implements the calls and rack Observers.
func (m *metrics) Refused(reason string) {
	m.inc(func(p *prom) { p.admissions.WithLabelValues(reason).Inc() })
}

// Finalised implements the calls and rack Observers.
func (m *metrics) Finalised() { m.finalised.Add(1) }

// inc bumps a Prometheus counter when metrics are enabled.
func (m *metrics) inc(f func(*prom)) {
	if m.p != nil {
		f(m.p)
	}
}

// window keeps the last tuning.StatsWindow observations.
type window struct {
	mu  sync.Mutex
	buf []time.Duration
	pos int
	n   int64
}

func (w *window) add(d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf == nil {
		w.buf = make([]time.Duration, 0, tuning.StatsWindow)
	}
	if len(w.buf) < cap(w.buf) {
		w.buf = append(w.buf, d)
	} else {
		w.buf[w.pos] = d
		w.pos = (w.pos + 1) % len(w.buf)
	}
	w.n++
}

// Quantiles summarises a window.
type Quantiles struct {
	Count int64   `json:"count"`
	P50MS float64 `json:"p50_ms"`
	P99MS float64 `json:"p99_ms"`
	MaxMS float64 `json:"max_ms"`
}

func (w *window) quantiles() Quantiles {
	w.mu.Lock()
	s := slices.Clone(w.buf)
	n := w.n
	w.mu.Unlock()
	if len(s) == 0 {
		return Quantiles{}
	}
	slices.Sort(s)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return Quantiles{Count: n, P50MS: ms(s[len(s)/2]), P99MS: ms(s[min(len(s)-1, len(s)*99/100)]), MaxMS: ms(s[len(s)-1])}
}

// Stats is the /v1/stats document.
type Stats struct {
	StoreErrors int64     `json:"store_errors"`
	Failovers   int64     `json:"failovers"`
	Finals      int64     `json:"finals"`
	Finalised   int64     `json:"calls_finalised"`
	Ack         Quantiles `json:"ack_latency"`
	ToWorker    Quantiles `json:"frame_to_worker_latency"`
	Resume      Quantiles `json:"resume_latency"`
	ToConsole   Quantiles `json:"final_to_console_latency"`
}

func (m *metrics) stats() Stats {
	return Stats{StoreErrors: m.storeErrors.Load(), Failovers: m.failovers.Load(), Finals: m.finals.Load(), Finalised: m.finalised.Load(),
		Ack: m.ack.quantiles(), ToWorker: m.toWorker.quantiles(), Resume: m.resume.quantiles(), ToConsole: m.toConsole.quantiles()}
}
