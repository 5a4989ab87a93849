package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/callscribe/callscribe/coordinator"
)

// scrape reads the coordinator's process CPU seconds and resident memory
// from /metrics.
func (cfg LoadConfig) scrape(ctx context.Context) (cpu, rss float64, err error) {
	m, err := ReadMetrics(ctx, cfg.client, cfg.HTTP, "process_cpu_seconds_total", "process_resident_memory_bytes")
	if err != nil {
		return 0, 0, err
	}
	return m["process_cpu_seconds_total"], m["process_resident_memory_bytes"], nil
}

// ReadMetrics reads the named samples (a metric name with its labels, as
// /metrics writes them) from an appliance's /metrics at base, and fails if
// one is missing.
func ReadMetrics(ctx context.Context, client *http.Client, base string, names ...string) (map[string]float64, error) {
	text, err := MetricsText(ctx, client, base)
	if err != nil {
		return nil, err
	}
	m, err := Samples(text, names...)
	if err != nil {
		return nil, fmt.Errorf("bench: %s/metrics: %w", base, err)
	}
	return m, nil
}

// MetricsText reads an appliance's /metrics at base.
func MetricsText(ctx context.Context, client *http.Client, base string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return "", err
	}
	res, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return "", err
	}
	if res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("bench: %s/metrics: %s", base, res.Status)
	}
	return string(b), nil
}

// Samples reads the named samples (a metric name with its labels, as
// /metrics writes them) from the text of a /metrics, and fails if one is
// missing.
func Samples(text string, names ...string) (map[string]float64, error) {
	m := map[string]float64{}
	for _, l := range strings.Split(text, "\n") {
		for _, n := range names {
			if v, ok := strings.CutPrefix(l, n+" "); ok {
				if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
					m[n] = f
				}
			}
		}
	}
	for _, n := range names {
		if _, ok := m[n]; !ok {
			return nil, fmt.Errorf("lacks %s", n)
		}
	}
	return m, nil
}

func (cfg LoadConfig) stats(ctx context.Context) (coordinator.Stats, error) {
	var st coordinator.Stats
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cfg.HTTP+"/v1/stats", nil)
	req.Header.Set("Authorization", "Bearer "+cfg.OperatorToken)
	res, err := cfg.client.Do(req)
	if err != nil {
		return st, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return st, fmt.Errorf("bench: %s/v1/stats: %s (an operator token is needed)", cfg.HTTP, res.Status)
	}
	return st, json.NewDecoder(res.Body).Decode(&st)
}

// observe measures the appliance over a run's steady state: from when every
// call has started (plus a second) to just before the first ends.
func (cfg LoadConfig) observe(ctx context.Context, t0 time.Time) (*ServerFigures, error) {
	_, rss0, err := cfg.scrape(ctx)
	if err != nil {
		return nil, err
	}
	from, to := t0.Add(2*time.Second), t0.Add(cfg.Duration)
	if to.Sub(from) < time.Second {
		return nil, errors.New("bench: run too short for a steady state (want ≥ 3 s)")
	}
	time.Sleep(time.Until(from))
	cpuA, rssA, err := cfg.scrape(ctx)
	if err != nil {
		return nil, err
	}
	treeA, treeErr := treeCPU(cfg.TreePID)
	time.Sleep(time.Until(to))
	cpuB, _, err := cfg.scrape(ctx)
	if err != nil {
		return nil, err
	}
	treeB, treeErrB := treeCPU(cfg.TreePID)
	st, err := cfg.stats(ctx)
	if err != nil {
		return nil, err
	}
	n, secs := float64(cfg.Calls), to.Sub(from).Seconds()
	total := 100 * (cpuB - cpuA) / secs
	f := &ServerFigures{CPUTotal: total, CPUPerStream: total / n, RSS: rssA, RSSPerCall: (rssA - rss0) / n,
		Ack: st.Ack, ToWorker: st.ToWorker, ToConsole: st.ToConsole}
	if cfg.TreePID != 0 {
		if err := errors.Join(treeErr, treeErrB); err != nil {
			return f, err
		}
		f.ApplianceCPUTotal = 100 * (treeB - treeA) / secs
		f.ApplianceCPUPerStream = f.ApplianceCPUTotal / n
	}
	return f, nil
}

// treeCPU is the CPU seconds used by process pid and every process under
// it, read from /proc (0 and no error for pid 0).
func treeCPU(pid int) (float64, error) {
	if pid == 0 {
		return 0, nil
	}
	type proc struct {
		ppid int
		cpu  float64
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	procs := map[int]proc{}
	for _, e := range ents {
		id, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone since the listing
		}
		// pid (comm) state ppid … utime stime cutime cstime: fields 4,
		// 14-17; comm may hold spaces and parentheses.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 15 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		var ticks float64
		for _, k := range f[11:15] {
			v, _ := strconv.ParseFloat(k, 64)
			ticks += v
		}
		procs[id] = proc{ppid: ppid, cpu: ticks / clockTicks}
	}
	if _, ok := procs[pid]; !ok {
		return 0, fmt.Errorf("bench: process %d not found", pid)
	}
	total := 0.0
	for id, p := range procs {
		for a, hops := id, 0; a > 0 && hops < 64; a, hops = procs[a].ppid, hops+1 {
			if a == pid {
				total += p.cpu
				break
			}
		}
	}
	return total, nil
}
