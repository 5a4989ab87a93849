package coordinator

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// clusterCollector reports this member's view of the cluster, at scrape
// time, on the leader and on every follower (scrape them all: a member's
// lag is its commit index against the leader's).
type clusterCollector struct{ m func() *Member }

var (
	descLeader   = prometheus.NewDesc("callscribe_cluster_leader", "1 on the member that leads the cluster, 0 on the others.", nil, nil)
	descChanges  = prometheus.NewDesc("callscribe_cluster_leader_changes_total", "Leader changes this member has seen since it started (elections won or lost anywhere, and leaderless spells).", nil, nil)
	descTerm     = prometheus.NewDesc("callscribe_cluster_term", "The Raft term this member is in.", nil, nil)
	descIndex    = prometheus.NewDesc("callscribe_cluster_log_index", "This member's log: last (written), commit (known committed) and applied (in its store). The leader's commit minus a follower's applied is that follower's replication lag.", []string{"kind"}, nil)
	descApplyLag = prometheus.NewDesc("callscribe_cluster_apply_lag_entries", "Entries known committed that this member's store has not applied yet.", nil, nil)
	descContact  = prometheus.NewDesc("callscribe_cluster_last_contact_seconds", "On a follower: seconds since it last heard from the leader.", nil, nil)
	descMembers  = prometheus.NewDesc("callscribe_cluster_members", "Members of the cluster's configuration.", nil, nil)
	descPeerUp   = prometheus.NewDesc("callscribe_cluster_member_reachable", "On the leader: 1 for each member its heartbeats reach (itself included), 0 for one they do not.", []string{"member"}, nil)
	descLogBytes = prometheus.NewDesc("callscribe_cluster_log_bytes", "Bytes of this member's log on disk (it is compacted after each snapshot).", nil, nil)
)

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLeader, descChanges, descTerm, descIndex, descApplyLag, descContact, descMembers, descPeerUp, descLogBytes} {
		ch <- d
	}
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m()
	if m == nil {
		return
	}
	s := m.Node.Status()
	g := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	lead := 0.0
	if s.State == "leader" {
		lead = 1
	}
	g(descLeader, lead)
	ch <- prometheus.MustNewConstMetric(descChanges, prometheus.CounterValue, float64(s.LeaderChanges))
	g(descTerm, float64(s.Term))
	g(descIndex, float64(s.LastIndex), "last")
	g(descIndex, float64(s.CommitIndex), "commit")
	g(descIndex, float64(s.AppliedIndex), "applied")
	lag := 0.0
	if s.CommitIndex > s.AppliedIndex {
		lag = float64(s.CommitIndex - s.AppliedIndex)
	}
	g(descApplyLag, lag)
	if !s.LastContact.IsZero() {
		g(descContact, max(0, time.Since(s.LastContact).Seconds()))
	}
	g(descMembers, float64(len(s.Members)))
	if lead == 1 {
		for _, m := range s.Members {
			up := 1.0
			if _, ok := s.Unreachable[m.Name]; ok {
				up = 0
			}
			g(descPeerUp, up, m.Name)
		}
	}
	g(descLogBytes, float64(s.LogBytes))
}

// followerMetrics is a follower's /metrics: its view of the cluster and
// the process.
func followerMetrics(m *Member) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&clusterCollector{m: func() *Member { return m }}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
