// Package packaging holds the checks of what make deb ships: the monitoring
// files against the coordinator's real /metrics (here, part of go test ./...),
// the alerting rules with promtool, and the .deb itself with lintian and in a
// debootstrapped Debian 12 root (deb_test.go, run by make test-deb).
package packaging

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	dashboardFile = "../monitoring/grafana/callscribe-dashboard.json"
	rulesFile     = "../monitoring/prometheus/callscribe-rules.yml"
	pendingFile   = "../monitoring/pending_metrics.txt"
)

// external are names queried that Prometheus itself makes, not the coordinator.
var external = map[string]bool{"up": true}

// TestMonitoringMetricsExported proves that every metric the dashboard and
// the alerting rules query is one the coordinator really exports: it starts
// a whole appliance (callscribe dev, with a simulated GPU server so that
// node, worker, GPU and placement series exist) and reads its /metrics.
// Names in monitoring/pending_metrics.txt are allowed while they are not
// exported, and must go from that list once they are.
func TestMonitoringMetricsExported(t *testing.T) {
	queried := map[string][]string{} // name -> where
	for _, q := range dashboardQueries(t) {
		for _, n := range metricNames(q.expr) {
			queried[n] = append(queried[n], q.where)
		}
	}
	for _, q := range ruleQueries(t) {
		for _, n := range metricNames(q.expr) {
			queried[n] = append(queried[n], q.where)
		}
	}
	if len(queried) < 15 {
		t.Fatalf("only %d metric names found in the dashboard and rules: is the parser broken?", len(queried))
	}
	pending := pendingMetrics(t)
	exported := scrapeAppliance(t)

	for _, n := range sortedKeys(queried) {
		switch {
		case external[n]:
		case exported.has(n) && pending[n]:
			t.Errorf("%s is exported now: remove it from monitoring/pending_metrics.txt", n)
		case exported.has(n):
		case pending[n]:
			t.Logf("pending (not exported yet, listed in pending_metrics.txt): %s, used by %s", n, strings.Join(uniq(queried[n]), "; "))
		default:
			t.Errorf("%s is not exported by the coordinator (used by %s); export it, fix the query, or list it in monitoring/pending_metrics.txt",
				n, strings.Join(uniq(queried[n]), "; "))
		}
	}
	for n := range pending {
		if _, ok := queried[n]; !ok {
			t.Errorf("monitoring/pending_metrics.txt lists %s, which nothing queries", n)
		}
	}
}

// TestDashboardWellFormed checks what Grafana needs to provision the
// dashboard: a stable uid, a Prometheus data source variable used by every
// panel, unique panel ids, and a query in every panel.
func TestDashboardWellFormed(t *testing.T) {
	var d struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Templating struct {
			List []struct{ Name, Type string } `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int                     `json:"id"`
			Type       string                  `json:"type"`
			Title      string                  `json:"title"`
			Datasource struct{ UID string }    `json:"datasource"`
			Targets    []struct{ Expr string } `json:"targets"`
		} `json:"panels"`
	}
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard needs a uid and a title (provisioning keys on the uid)")
	}
	if !slices.ContainsFunc(d.Templating.List, func(v struct{ Name, Type string }) bool { return v.Name == "datasource" && v.Type == "datasource" }) {
		t.Errorf("dashboard has no `datasource` variable of type datasource")
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: data source %q, want ${datasource}", p.Title, p.Datasource.UID)
		}
		if len(p.Targets) == 0 || p.Targets[0].Expr == "" {
			t.Errorf("panel %q has no query", p.Title)
		}
	}
}

func TestMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`histogram_quantile(0.99, sum by (le) (rate(callscribe_ack_latency_seconds_bucket[$__rate_interval])))`: {"callscribe_ack_latency_seconds_bucket"},
		`sum by (node) (callscribe_workers{state=~"failed|backoff"}) > 0`:                                       {"callscribe_workers"},
		`callscribe_data_disk_free_bytes / callscribe_data_disk_size_bytes < 0.10`:                              {"callscribe_data_disk_free_bytes", "callscribe_data_disk_size_bytes"},
		`count(callscribe_gpu_healthy == 0) or vector(0)`:                                                       {"callscribe_gpu_healthy"},
		`predict_linear(x_bytes[6h], 24 * 3600) < 1e3`:                                                          {"x_bytes"},
		`up{job="callscribe"} == 0`:                                                                             {"up"},
		`a and on (node) group_left (gpu) b offset 5m unless ignoring (x) c`:                                    {"a", "b", "c"},
		`label_values(callscribe_node_up, node)`:                                                                {"callscribe_node_up"},
		`rate(process_cpu_seconds_total{job="callscribe"}[5m]) / 2^30`:                                          {"process_cpu_seconds_total"},
	} {
		if got := metricNames(expr); !slices.Equal(got, want) {
			t.Errorf("metricNames(%q) = %q, want %q", expr, got, want)
		}
	}
}

type query struct{ expr, where string }

// dashboardQueries returns every panel target and query variable.
func dashboardQueries(t *testing.T) []query {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var qs []query
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			qs = append(qs, query{tg.Expr, "dashboard panel " + p.Title})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct{ Query string }
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var s string
			if json.Unmarshal(v.Query, &s) != nil {
				t.Fatalf("dashboard variable %s: query is neither a string nor {query: …}", v.Name)
			}
			q.Query = s
		}
		qs = append(qs, query{q.Query, "dashboard variable " + v.Name})
	}
	return qs
}

// ruleQueries returns every rule's expr (each on one line: the rules file
// keeps them so, and this test refuses block scalars rather than misread them).
func ruleQueries(t *testing.T) []query {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var qs []query
	name := ""
	for i, line := range strings.Split(string(b), "\n") {
		l := strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(l, "- alert:"); ok {
			name = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(l, "- record:"); ok {
			name = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(l, "expr:"); ok {
			v = strings.TrimSpace(v)
			if v == "" || v[0] == '|' || v[0] == '>' {
				t.Fatalf("%s:%d: keep each expr on one line (this test reads them line by line)", rulesFile, i+1)
			}
			qs = append(qs, query{strings.Trim(v, `"'`), "rule " + name})
		}
	}
	return qs
}

var (
	pqStrings  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	pqMatchers = regexp.MustCompile(`\{[^}]*\}`)
	pqRanges   = regexp.MustCompile(`\[[^\]]*\]`)
	pqGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	pqToken    = regexp.MustCompile(`[0-9][0-9a-zA-Z_.]*|[a-zA-Z_:][a-zA-Z0-9_:]*`) // numbers and durations (5m, 1e3), or names
	pqKeywords = map[string]bool{"and": true, "or": true, "unless": true, "by": true, "without": true, "on": true, "ignoring": true,
		"group_left": true, "group_right": true, "bool": true, "offset": true, "inf": true, "nan": true, "Inf": true, "NaN": true}
)

// metricNames lists the metric names a PromQL expression selects, in order
// of first use: identifiers that are not functions or aggregations (followed
// by "("), keywords, label names or numbers. Strings, label matchers, ranges
// and grouping clauses are removed first; label_values(metric, label) names
// its metric.
func metricNames(expr string) []string {
	if m := regexp.MustCompile(`^\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`).FindStringSubmatch(expr); m != nil {
		return []string{m[1]}
	}
	s := pqStrings.ReplaceAllString(expr, `""`)
	s = pqMatchers.ReplaceAllString(s, " ")
	s = pqRanges.ReplaceAllString(s, " ")
	s = pqGrouping.ReplaceAllString(s, " ")
	var names []string
	for _, loc := range pqToken.FindAllStringIndex(s, -1) {
		tok := s[loc[0]:loc[1]]
		if tok[0] >= '0' && tok[0] <= '9' || pqKeywords[tok] {
			continue
		}
		if rest := strings.TrimLeft(s[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") {
			continue // a function or an aggregation
		}
		if !slices.Contains(names, tok) {
			names = append(names, tok)
		}
	}
	return names
}

// pendingMetrics reads monitoring/pending_metrics.txt: one name per line,
// then its type, labels and meaning.
func pendingMetrics(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(pendingFile)
	if err != nil {
		t.Fatal(err)
	}
	p := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l == "" || l[0] == '#' {
			continue
		}
		p[strings.Fields(l)[0]] = true
	}
	return p
}

// exportedSet is what a /metrics page holds: sample names and the names of
// metric families (a histogram's family is its base name; its samples are
// _bucket, _sum and _count).
type exportedSet map[string]bool

func (e exportedSet) has(n string) bool { return e[n] }

func parseExposition(r io.Reader) exportedSet {
	e := exportedSet{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if f := strings.Fields(l); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			e[f[2]] = true
			continue
		}
		if l == "" || l[0] == '#' {
			continue
		}
		if i := strings.IndexAny(l, "{ "); i > 0 {
			e[l[:i]] = true
		}
	}
	return e
}

// scrapeAppliance starts `callscribe dev` on loopback with one worker on a
// simulated DGX A100 and returns its /metrics once node, worker, GPU and
// placement series are there (they exist only once an agent has reported).
func scrapeAppliance(t *testing.T) exportedSet {
	t.Helper()
	bin := callscribeDevBinary(t)
	dir := t.TempDir()
	cmd := exec.Command(bin, "dev", "--data", dir, "--http", "127.0.0.1:0", "--quic", "127.0.0.1:0",
		"--sim-gpus", "dgxa100", "--workers", "1", "--idle-slots", "0", "--node", "metrics-test")
	cmd.Env = append(os.Environ(), "JOURNAL_STREAM=") // text logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var mu sync.Mutex
	var logs strings.Builder
	httpAddr := make(chan string, 1)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		pw.Close()
	})
	addrRe := regexp.MustCompile(`msg="callscribe dev appliance".* http=(\S+)`)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			mu.Lock()
			logs.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if m := addrRe.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case httpAddr <- m[1]:
				default:
				}
			}
		}
	}()
	dump := func() string { mu.Lock(); defer mu.Unlock(); return logs.String() }
	var addr string
	select {
	case addr = <-httpAddr:
	case <-time.After(60 * time.Second):
		t.Fatalf("callscribe dev did not start within 60 s:\n%s", dump())
	}
	want := []string{"callscribe_node_up", "callscribe_workers", "callscribe_gpu_healthy", "callscribe_gpu_memory_bytes", "callscribe_placements_total"}
	deadline := time.Now().Add(60 * time.Second)
	for {
		tok, _ := os.ReadFile(filepath.Join(dir, "operator.token")) // /metrics is an operator's
		e, err := scrape("http://"+addr+"/metrics", strings.TrimSpace(string(tok)))
		if err == nil && !slices.ContainsFunc(want, func(n string) bool { return !e.has(n) }) {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 60 s /metrics still lacks some of %v (err %v):\n%s", want, err, dump())
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func scrape(url, token string) (exportedSet, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return parseExposition(resp.Body), nil
}

// callscribeDevBinary is a development build of callscribe (-tags simgpus:
// it can simulate GPUs, which the product binary cannot): CALLSCRIBE_DEV_BIN,
// or one built here.
func callscribeDevBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("CALLSCRIBE_DEV_BIN"); b != "" {
		return b
	}
	b := filepath.Join(t.TempDir(), "callscribe-dev")
	out, err := exec.Command("go", "build", "-tags", "simgpus", "-o", b, "../cmd/callscribe").CombinedOutput()
	if err != nil {
		t.Fatalf("go build -tags simgpus: %v\n%s", err, out)
	}
	return b
}

func sortedKeys[V any](m map[string]V) []string {
	k := make([]string, 0, len(m))
	for n := range m {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}

func uniq(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return slices.Compact(s)
}
