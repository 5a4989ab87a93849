package coordinator

import (
	"time"

	"github.com/callscribe/callscribe/internal/auth"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// prom holds the coordinator's Prometheus instruments, served at /metrics.
type prom struct {
	reg        *prometheus.Registry
	framesRecv prometheus.Counter
	framesDup  prometheus.Counter
	framesStor prometheus.Counter
	framesDec  prometheus.Counter
	framesLost prometheus.Counter
	// framesConceal counts loss markers: packets lost in transit (WebRTC).
	framesConceal prometheus.Counter
	failovers     prometheus.Counter
	placements    *prometheus.CounterVec
	finals        prometheus.Counter
	ack           prometheus.Histogram
	toWorker      prometheus.Histogram
	toConsole     prometheus.Histogram
	resume        prometheus.Histogram
	commitTime    prometheus.Histogram
	commitWrites  prometheus.Histogram
	// framesUndecodable counts frames no decoder could read (concealed).
	framesUndecodable prometheus.Counter
	// admissions counts new calls refused while being set up, by reason.
	admissions *prometheus.CounterVec
	// idleReleases counts worker slots given back by channels without audio.
	idleReleases prometheus.Counter
	// workersUnresponsive counts workers dropped for missing liveness pings.
	workersUnresponsive prometheus.Counter
	// authRefused counts requests and streams refused for their credential,
	// by reason (no_credential, invalid, throttled, forbidden).
	authRefused *prometheus.CounterVec
	// sessionsEnded counts live sessions ended by a revocation or transfer.
	sessionsEnded *prometheus.CounterVec
}

// commit observes one group commit of the store (store.Options.OnCommit).
func (p *prom) commit(writes, _ int, took time.Duration) {
	p.commitTime.Observe(took.Seconds())
	p.commitWrites.Observe(float64(writes))
}

func newProm(c *Coordinator) *prom {
	lat := func(name, help string) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "callscribe", Name: name, Help: help,
			Buckets: []float64{.0005, .001, .002, .003, .005, .0075, .01, .02, .05, .1, .25, .5, 1, 2.5}})
	}
	ctr := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "callscribe", Name: name, Help: help})
	}
	p := &prom{
		reg:           prometheus.NewRegistry(),
		framesRecv:    ctr("frames_received_total", "Audio frames received from consoles, resends included."),
		framesDup:     ctr("frames_duplicate_total", "Resent frames that were already durable (acked again, stored once)."),
		framesStor:    ctr("frames_stored_total", "Audio frames made durable (synced) and acknowledged."),
		framesDec:     ctr("frames_decoded_total", "Audio frames decoded by workers, as of their last report."),
		framesConceal: ctr("frames_concealed_total", "WebRTC packets lost in transit, stored as loss markers and concealed by the decoder."),
		framesLost:    ctr("frames_lost_total", "Frames refused because they could not be stored (not acked: the console resends them)."),
		failovers:     ctr("failovers_total", "Call channels moved to another worker after a failure."),
		placements: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "callscribe", Name: "placements_total",
			Help: "Worker instances placed, by kind (gpu, cpu, degraded)."}, []string{"kind"}),
		finals:    ctr("finals_total", "Final utterances persisted."),
		ack:       lat("ack_latency_seconds", "Frame received to durable (synced) ack."),
		toWorker:  lat("frame_to_worker_seconds", "Frame received to written to its worker."),
		toConsole: lat("final_to_console_seconds", "Worker final received to persisted and queued to the console."),
		resume:    lat("resume_seconds", "Channel lost its worker to assigned to another."),
		commitTime: lat("store_commit_seconds", "One group commit of the store: replicated to a quorum of the cluster's logs (each one fdatasync) and applied to the leader's store; "+
			"in a cluster of one, the log's write and sync and the apply. Ack latency is the wait for the commit in progress plus its own."),
		commitWrites: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "callscribe", Name: "store_commit_writes",
			Help: "Writes (frame batches, finals, call records) carried by one group commit.", Buckets: prometheus.ExponentialBuckets(1, 2, 11)}),
		framesUndecodable: ctr("frames_undecodable_total", "Stored frames no decoder could read (corrupt Opus, odd-length L16): concealed as lost packets, the call goes on."),
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "callscribe", Name: "calls_refused_total",
			Help: "New calls refused with a retryable error, by reason (global_limit, console_limit: too many calls being set up without audio)."}, []string{"reason"}),
		idleReleases:        ctr("worker_slot_idle_releases_total", "Worker slots given back because a channel had no new audio (reassigned when audio returns)."),
		workersUnresponsive: ctr("workers_unresponsive_total", "Workers dropped because they stopped sending liveness pings (frozen or wedged); their channels moved."),
		authRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "callscribe", Name: "auth_refused_total",
			Help: "Requests and console streams refused for their credential, by reason: no_credential, invalid (wrong or revoked), throttled (too many failures from the address), forbidden (valid, but not allowed)."}, []string{"reason"}),
		sessionsEnded: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "callscribe", Name: "sessions_ended_total",
			Help: "Live console streams and transcript streams ended by the coordinator, by why (revoked: their credential was revoked or removed)."}, []string{"why"}),
	}
	p.reg.MustRegister(p.framesRecv, p.framesDup, p.framesStor, p.framesDec, p.framesLost, p.framesConceal, p.failovers, p.placements, p.finals,
		p.ack, p.toWorker, p.toConsole, p.resume, p.commitTime, p.commitWrites,
		p.framesUndecodable, p.admissions, p.idleReleases, p.workersUnresponsive, p.authRefused, p.sessionsEnded, &stateCollector{c: c}, &clusterCollector{m: func() *Member { return c.member }},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Every reason is exported from the start (at 0), so that rates and
	// alerts see the first refusal.
	for _, r := range []string{"no_credential", "invalid", "throttled", "forbidden"} {
		p.authRefused.WithLabelValues(r)
	}
	p.sessionsEnded.WithLabelValues("revoked")
	return p
}

func secs(d time.Duration) float64 { return d.Seconds() }

// stateCollector reports gauges read at scrape time: calls by state,
// workers by state, nodes, and every GPU's readings and health.
type stateCollector struct{ c *Coordinator }

var (
	descCalls   = prometheus.NewDesc("callscribe_calls", "Calls held in memory by state.", []string{"state"}, nil)
	descWorkers = prometheus.NewDesc("callscribe_workers", "Workers by node and state as their agents report them.", []string{"node", "state"}, nil)
	descSlots   = prometheus.NewDesc("callscribe_worker_slots", "Call-channel slots of registered workers, by use.", []string{"use"}, nil)
	descNode    = prometheus.NewDesc("callscribe_node_up", "1 for a node heard from within its TTL, 0 for a lost one.", []string{"node", "draining"}, nil)
	descGPUMem  = prometheus.NewDesc("callscribe_gpu_memory_bytes", "GPU memory by kind (total, used, free).", []string{"node", "gpu", "kind"}, nil)
	descGPUUtil = prometheus.NewDesc("callscribe_gpu_utilization_ratio", "GPU utilisation, 0-1.", []string{"node", "gpu"}, nil)
	descGPUTemp = prometheus.NewDesc("callscribe_gpu_temperature_celsius", "GPU temperature.", []string{"node", "gpu"}, nil)
	descGPUPow  = prometheus.NewDesc("callscribe_gpu_power_watts", "GPU power draw.", []string{"node", "gpu"}, nil)
	descGPUOK   = prometheus.NewDesc("callscribe_gpu_healthy", "1 when the GPU is healthy.", []string{"node", "gpu"}, nil)
	descFree    = prometheus.NewDesc("callscribe_data_disk_free_bytes", "Bytes available to the coordinator on the filesystem holding its data directory.", nil, nil)
	descSize    = prometheus.NewDesc("callscribe_data_disk_size_bytes", "Size of the filesystem holding the coordinator's data directory.", nil, nil)
	descNeed    = prometheus.NewDesc("callscribe_store_disk_needed_bytes", "Free bytes the store needs to accept writes of a kind (audio, meta): what Badger may still allocate plus the reserve; below it they are refused.", []string{"kind"}, nil)
	descComply  = prometheus.NewDesc("callscribe_gpu_compliant", "1 when the GPU complies with its node-class profile, 0 when it is excluded from placement.", []string{"node", "gpu"}, nil)
	descOutbox  = prometheus.NewDesc("callscribe_export_outbox_calls", "Finalised calls waiting in the durable export outbox (0 when export is off).", nil, nil)
	descRefuse  = prometheus.NewDesc("callscribe_store_refusing", "1 while the store refuses writes of this kind for lack of disk space (audio, meta).", []string{"kind"}, nil)
	descRefused = prometheus.NewDesc("callscribe_store_writes_refused_total", "Store writes refused for lack of disk space, by kind (audio, meta).", []string{"kind"}, nil)
	descCreds   = prometheus.NewDesc("callscribe_credentials", "Active credentials (tokens) by role.", []string{"role"}, nil)
	descInMem   = prometheus.NewDesc("callscribe_calls_in_memory", "Calls the coordinator holds in memory: live calls, and finalised ones only while a session still uses them (it does not grow with history).", nil, nil)
	descEncrypt = prometheus.NewDesc("callscribe_store_encrypted", "1 when the store is encrypted at rest, 0 for a store written before encryption (see the README to migrate it).", nil, nil)
)

func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCalls, descWorkers, descSlots, descNode, descGPUMem, descGPUUtil, descGPUTemp, descGPUPow, descGPUOK, descFree, descSize, descNeed, descComply, descOutbox, descRefuse, descRefused, descEncrypt, descCreds, descInMem} {
		ch <- d
	}
}

func (s *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c := s.c
	for st, n := range c.calls.States() {
		ch <- prometheus.MustNewConstMetric(descCalls, prometheus.GaugeValue, float64(n), st)
	}
	ch <- prometheus.MustNewConstMetric(descInMem, prometheus.GaugeValue, float64(c.calls.InMemory()))
	d := c.store.Disk()
	ch <- prometheus.MustNewConstMetric(descFree, prometheus.GaugeValue, float64(d.Free))
	ch <- prometheus.MustNewConstMetric(descSize, prometheus.GaugeValue, float64(d.Total))
	ch <- prometheus.MustNewConstMetric(descNeed, prometheus.GaugeValue, float64(d.AudioNeeds), "audio")
	ch <- prometheus.MustNewConstMetric(descNeed, prometheus.GaugeValue, float64(d.MetaNeeds), "meta")
	if n, err := c.store.OutboxLen(); err == nil {
		ch <- prometheus.MustNewConstMetric(descOutbox, prometheus.GaugeValue, float64(n))
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(descRefuse, prometheus.GaugeValue, b2f(d.AudioRefused), "audio")
	ch <- prometheus.MustNewConstMetric(descRefuse, prometheus.GaugeValue, b2f(d.MetaRefused), "meta")
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(d.RefusedAudio), "audio")
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(d.RefusedMeta), "meta")
	ch <- prometheus.MustNewConstMetric(descEncrypt, prometheus.GaugeValue, b2f(c.store.Encrypted()))
	roles := map[auth.Role]float64{auth.Console: 0, auth.Supervisor: 0, auth.Operator: 0}
	for _, cr := range c.auth.List() {
		if cr.Revoked == nil {
			roles[cr.Role]++
		}
	}
	for r, n := range roles {
		ch <- prometheus.MustNewConstMetric(descCreds, prometheus.GaugeValue, n, string(r))
	}
	// The registry is copied under its lock and the metrics sent after:
	// a slow scrape must not hold up heartbeats and dispatch.
	used, free, nodes := c.rack.Gauges()
	ch <- prometheus.MustNewConstMetric(descSlots, prometheus.GaugeValue, float64(used), "used")
	ch <- prometheus.MustNewConstMetric(descSlots, prometheus.GaugeValue, float64(free), "free")
	for _, n := range nodes {
		node := string(n.ID)
		up := 1.0
		if n.Lost {
			up = 0
		}
		drain := "false"
		if n.Draining {
			drain = "true"
		}
		ch <- prometheus.MustNewConstMetric(descNode, prometheus.GaugeValue, up, node, drain)
		byState := map[string]int{}
		for _, w := range n.Workers {
			byState[w.State]++
		}
		for st, k := range byState {
			ch <- prometheus.MustNewConstMetric(descWorkers, prometheus.GaugeValue, float64(k), node, st)
		}
		for _, g := range n.GPUs {
			ch <- prometheus.MustNewConstMetric(descGPUMem, prometheus.GaugeValue, float64(g.MemTotalMB<<20), node, g.UUID, "total")
			ch <- prometheus.MustNewConstMetric(descGPUMem, prometheus.GaugeValue, float64(g.MemUsedMB<<20), node, g.UUID, "used")
			ch <- prometheus.MustNewConstMetric(descGPUMem, prometheus.GaugeValue, float64(g.MemFreeMB<<20), node, g.UUID, "free")
			if g.UtilPct != nil {
				ch <- prometheus.MustNewConstMetric(descGPUUtil, prometheus.GaugeValue, float64(*g.UtilPct)/100, node, g.UUID)
			}
			if g.TempC != nil {
				ch <- prometheus.MustNewConstMetric(descGPUTemp, prometheus.GaugeValue, float64(*g.TempC), node, g.UUID)
			}
			if g.PowerW != nil {
				ch <- prometheus.MustNewConstMetric(descGPUPow, prometheus.GaugeValue, *g.PowerW, node, g.UUID)
			}
			ok := 0.0
			if g.Healthy {
				ok = 1
			}
			ch <- prometheus.MustNewConstMetric(descGPUOK, prometheus.GaugeValue, ok, node, g.UUID)
			comply := 1.0
			if g.Excluded != "" {
				comply = 0
			}
			ch <- prometheus.MustNewConstMetric(descComply, prometheus.GaugeValue, comply, node, g.UUID)
		}
	}
}
