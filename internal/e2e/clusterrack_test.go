package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/internal/pki"
)

// clusterRack is a cluster of three coordinators, each alone in its own
// network namespace (its machine), joined by a wire with a delay on every
// link; the agent (and its workers), the consoles and the operator's
// command line share a fourth namespace, the clients'. Every member is
// set up by hand as an operator would: one CA and one set of tokens
// copied to each, a coordinator certificate issued per member, then
// `cluster init` on the first and `cluster join` on the others.
type clusterRack struct {
	w       *wire
	clients *wireHost
	shared  string // the operator's copies: CA, tokens, the agent's certificate
	members []*clusterMember
	agent   *proc
	api     *http.Client // from the clients' namespace
	opToken string
	joinTok string
	workers int
	// procs is every coordinator process started, for the logs.
	procs []namedProc
}

type namedProc struct {
	name string
	p    *proc
}

// The members' snapshot settings: far below the defaults (tuning's
// ClusterSnapshotThreshold, ClusterTrailingLogs), which a test's calls
// never reach.
const (
	clusterSnapshotEntries = 128
	clusterTrailingEntries = 32
)

// snapshotInstalled reports whether a member's log says it installed a
// snapshot sent by the leader.
func snapshotInstalled(p *proc) bool {
	return strings.Contains(p.output(), "Installed remote snapshot")
}

// clusterMember is one coordinator: its machine (a host on the wire) and
// data directory.
type clusterMember struct {
	name string
	host *wireHost
	idx  byte
	dir  string
	args []string
	p    *proc
	dead bool // its process is not running
	gone bool // its machine is lost (data deleted, off the wire)
}

func (m *clusterMember) quic() string    { return m.host.ip + ":4433" }
func (m *clusterMember) httpURL() string { return "https://" + m.host.ip + ":8080" }

// chaosDelay is the wire's one-way delay: CALLSCRIBE_CHAOS_DELAY (a Go
// duration), else 2 ms.
func chaosDelay(t *testing.T) time.Duration {
	if s := os.Getenv("CALLSCRIBE_CHAOS_DELAY"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("CALLSCRIBE_CHAOS_DELAY: %v", err)
		}
		return d
	}
	return 2 * time.Millisecond
}

// newClusterRack sets up the cluster and an agent given every member's
// address, and waits for the leader to have workers of its own (with
// workers 0, no agent).
func newClusterRack(t *testing.T, workers int) *clusterRack {
	t.Helper()
	r := &clusterRack{w: newWire(t, chaosDelay(t)), shared: t.TempDir(), workers: workers}
	if dir := os.Getenv("CALLSCRIBE_CHAOS_LOGS"); dir != "" {
		t.Cleanup(func() { r.saveLogs(t, dir) })
	}
	r.clients = r.w.add(t, 100, "clients")
	// One CA and one set of tokens for the whole cluster.
	run(t, "ca", "init", "--dir", r.shared)
	for _, f := range []string{pki.OperatorToken, pki.ConsoleToken, pki.NodeToken} {
		if _, err := pki.EnsureToken(filepath.Join(r.shared, f)); err != nil {
			t.Fatal(err)
		}
	}
	run(t, "ca", "issue", "--dir", r.shared, "--kind", pki.KindNode, "--name", "rack1", "--out", filepath.Join(r.shared, "node"))
	tok, err := pki.ReadToken(filepath.Join(r.shared, pki.OperatorToken))
	if err != nil {
		t.Fatal(err)
	}
	r.opToken = tok
	pool, err := pki.CertPool(filepath.Join(r.shared, pki.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	dial := nsDialer(r.clients.ns, 2*time.Second)
	r.api = &http.Client{Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(_ context.Context, n, a string) (net.Conn, error) { return dial(n, a) },
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for i := byte(1); i <= 3; i++ {
		r.addMember(t, i, fmt.Sprintf("c%d", i))
	}
	for _, m := range r.members {
		r.waitServing(t, m)
	}
	out := r.cli(t, "cluster", "init", "--server", r.members[0].httpURL())
	r.joinTok = regexp.MustCompile(`cj_[0-9a-f]+`).FindString(out)
	if r.joinTok == "" {
		t.Fatalf("cluster init printed no join token:\n%s", out)
	}
	for _, m := range r.members[1:] {
		r.cli(t, "cluster", "join", "--server", m.httpURL(), "--leader", r.members[0].httpURL(), "--join-token", r.joinTok)
	}
	r.converged(t, "the cluster formed", 60*time.Second)
	if workers == 0 {
		return r
	}
	r.agent = start(t, "netns-exec", r.clients.ns, "agent", "--coordinator", strings.Join(r.quics(), ","),
		"--ca", filepath.Join(r.shared, pki.CAFile), "--node", "rack1", "--token-file", filepath.Join(r.shared, pki.NodeToken), "--state", t.TempDir(),
		"--cert", filepath.Join(r.shared, "node.pem"), "--key", filepath.Join(r.shared, "node-key.pem"))
	r.waitWorkers(t)
	return r
}

// addMember prepares a new machine (newMember) and starts its coordinator
// as a member of the rack.
func (r *clusterRack) addMember(t *testing.T, i byte, name string) *clusterMember {
	t.Helper()
	m := r.newMember(t, i, name, r.workers)
	m.p = start(t, m.args...)
	r.procs = append(r.procs, namedProc{name, m.p})
	r.members = append(r.members, m)
	return m
}

// newMember prepares a new machine (host i on the wire) and data
// directory — the CA and the tokens copied in, a coordinator certificate
// issued for its address — and the arguments of its coordinator (with
// workers local workers), not started.
func (r *clusterRack) newMember(t *testing.T, i byte, name string, workers int) *clusterMember {
	t.Helper()
	m := &clusterMember{name: name, idx: i, host: r.w.add(t, i, name), dir: t.TempDir()}
	for _, f := range []string{pki.CAFile, pki.CAKeyFile, pki.OperatorToken, pki.ConsoleToken, pki.NodeToken} {
		b, err := os.ReadFile(filepath.Join(r.shared, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(m.dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run(t, "ca", "issue", "--dir", r.shared, "--kind", pki.KindCoordinator, "--name", name, "--host", m.host.ip, "--out", filepath.Join(m.dir, "coordinator"))
	m.args = []string{"netns-exec", m.host.ns, "coordinator", "--data", m.dir, "--quic", m.quic(), "--http", m.host.ip + ":8080", "--http-tls",
		"--hosts", "localhost," + m.host.ip, "--cluster-listen", m.host.ip + ":7000", "--cluster-name", name, "--workers", fmt.Sprint(workers),
		// Snapshots (and log compaction) every few seconds of calls, so
		// that a member joining or coming back far behind is sent one, as
		// after hours of service.
		"--cluster-snapshot-entries", fmt.Sprint(clusterSnapshotEntries), "--cluster-trailing-entries", fmt.Sprint(clusterTrailingEntries), "--cluster-snapshot-interval", "1s"}
	return m
}

// restart starts a member's coordinator again on its data directory.
func (r *clusterRack) restart(t *testing.T, m *clusterMember) {
	t.Helper()
	m.p = start(t, m.args...)
	r.procs = append(r.procs, namedProc{m.name, m.p})
	m.dead = false
}

// kill SIGKILLs a member's coordinator.
func (r *clusterRack) kill(m *clusterMember) {
	m.p.killLeader()
	m.dead = true
}

// live lists the members whose process runs.
func (r *clusterRack) live() []*clusterMember {
	var out []*clusterMember
	for _, m := range r.members {
		if !m.dead && !m.gone {
			out = append(out, m)
		}
	}
	return out
}

// quics are the QUIC addresses of the members not lost.
func (r *clusterRack) quics() []string {
	var out []string
	for _, m := range r.members {
		if !m.gone {
			out = append(out, m.quic())
		}
	}
	return out
}

// urls are the HTTPS base URLs of the members not lost.
func (r *clusterRack) urls() string {
	var out []string
	for _, m := range r.members {
		if !m.gone {
			out = append(out, m.httpURL())
		}
	}
	return strings.Join(out, ",")
}

// cli runs the command line in the clients' namespace as the operator
// (the operator token, the CA) and returns its output; it fails the test
// if the command fails.
func (r *clusterRack) cli(t *testing.T, args ...string) string {
	t.Helper()
	out, err := r.cliErr(args...)
	if err != nil {
		t.Fatalf("callscribe %v: %v\n%s", args, err, out)
	}
	return out
}

func (r *clusterRack) cliErr(args ...string) (string, error) {
	return r.cliIn(r.clients.ns, args...)
}

// cliIn is cliErr from namespace ns.
func (r *clusterRack) cliIn(ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// The credential flags go right after the command's words (flags end
	// at the first positional argument: cluster remove FLAGS NAME).
	words := 1
	if args[0] == "cluster" {
		words = 2
	}
	full := append([]string{"netns", "exec", ns, binPath}, args[:words]...)
	full = append(full, "--ca", filepath.Join(r.shared, pki.CAFile), "--token-file", filepath.Join(r.shared, pki.OperatorToken))
	full = append(full, args[words:]...)
	var b bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", full...)
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}

// get reads an operator API path from a member (no redirect followed).
func (r *clusterRack) get(m *clusterMember, path string, v any) (int, error) {
	req, _ := http.NewRequest(http.MethodGet, m.httpURL()+path, nil)
	req.Header.Set("Authorization", "Bearer "+r.opToken)
	resp, err := r.api.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, fmt.Errorf("GET %s%s: %d %s", m.name, path, resp.StatusCode, bytes.TrimSpace(b))
	}
	if v != nil {
		if raw, ok := v.(*[]byte); ok {
			*raw = b
			return resp.StatusCode, nil
		}
		return resp.StatusCode, json.Unmarshal(b, v)
	}
	return resp.StatusCode, nil
}

// view is a member's view of the cluster (GET /v1/cluster).
func (r *clusterRack) view(m *clusterMember) (coordinator.ClusterView, error) {
	var v coordinator.ClusterView
	_, err := r.get(m, "/v1/cluster", &v)
	return v, err
}

func (r *clusterRack) waitServing(t *testing.T, m *clusterMember) {
	t.Helper()
	waitUntil(t, m.name+" serving its API", 60*time.Second, func() bool {
		select {
		case <-m.p.done:
			t.Fatalf("%s exited:\n%s", m.name, m.p.output())
		default:
		}
		_, err := r.view(m)
		return err == nil
	})
}

// leader is the member that leads in the view of a majority of the live
// members (nil if none does yet).
func (r *clusterRack) leader() *clusterMember {
	votes := map[string]int{}
	live := r.live()
	for _, m := range live {
		if v, err := r.view(m); err == nil && v.Status.Leader != "" {
			votes[v.Status.Leader]++
		}
	}
	for _, m := range live {
		if votes[m.name] >= 2 {
			if v, err := r.view(m); err == nil && v.Status.State == "leader" {
				return m
			}
		}
	}
	return nil
}

func (r *clusterRack) waitLeader(t *testing.T, what string) *clusterMember {
	t.Helper()
	var l *clusterMember
	waitUntil(t, what, 60*time.Second, func() bool { l = r.leader(); return l != nil })
	return l
}

// converged waits until every live member sees the same leader, the same
// voters (every member not lost) and has applied the same index.
func (r *clusterRack) converged(t *testing.T, what string, d time.Duration) *clusterMember {
	t.Helper()
	var want []string
	for _, m := range r.members {
		if !m.gone {
			want = append(want, m.name)
		}
	}
	slices.Sort(want)
	var last string
	deadline := time.Now().Add(d)
	for {
		l, ok := r.convergedOnce(want, &last)
		if ok {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (r *clusterRack) convergedOnce(want []string, last *string) (*clusterMember, bool) {
	var leader string
	var applied uint64
	var lm *clusterMember
	for i, m := range r.live() {
		v, err := r.view(m)
		if err != nil {
			*last = err.Error()
			return nil, false
		}
		var voters []string
		for _, x := range v.Status.Members {
			if x.Voter {
				voters = append(voters, x.Name)
			}
		}
		slices.Sort(voters)
		*last = fmt.Sprintf("%s: %s, leader %q, applied %d, voters %v (want %v)", m.name, v.Status.State, v.Status.Leader, v.Status.AppliedIndex, voters, want)
		if i == 0 {
			leader, applied = v.Status.Leader, v.Status.AppliedIndex
		}
		if v.Status.Leader == "" || v.Status.Leader != leader || v.Status.AppliedIndex != applied || !slices.Equal(voters, want) {
			return nil, false
		}
		if v.Status.State == "leader" {
			lm = m
		}
	}
	return lm, lm != nil
}

// caughtUp waits until m follows the leader and has applied at least
// the index the leader had applied just before (read first), and returns
// the leader. Unlike converged it holds while calls keep writing.
func (r *clusterRack) caughtUp(t *testing.T, m *clusterMember, d time.Duration) *clusterMember {
	t.Helper()
	var last string
	deadline := time.Now().Add(d)
	for {
		l := r.leader()
		if l == m {
			return l // it leads again: it has every committed entry
		}
		if l != nil {
			lv, lerr := r.view(l)
			v, err := r.view(m)
			switch {
			case lerr != nil:
				last = lerr.Error()
			case err != nil:
				last = err.Error()
			default:
				last = fmt.Sprintf("%s %s of %q, applied %d; leader %s applied %d", m.name, v.Status.State, v.Status.Leader, v.Status.AppliedIndex, l.name, lv.Status.AppliedIndex)
				if v.Status.State == "follower" && v.Status.Leader == l.name && v.Status.AppliedIndex >= lv.Status.AppliedIndex {
					return l
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s to catch up with the leader: %s", m.name, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// status is the leader's status (its rack: nodes, workers).
func (r *clusterRack) status(m *clusterMember) (coordinator.Status, error) {
	var st coordinator.Status
	_, err := r.get(m, "/v1/status", &st)
	return st, err
}

// waitWorkers waits until the leader has the rack's workers.
func (r *clusterRack) waitWorkers(t *testing.T) {
	t.Helper()
	waitUntil(t, "workers registered with the leader", 120*time.Second, func() bool {
		l := r.leader()
		if l == nil {
			return false
		}
		st, err := r.status(l)
		return err == nil && len(st.Workers) >= r.workers
	})
}

// call starts a console in the clients' namespace given every member's
// address.
func (r *clusterRack) call(t *testing.T, id, wavPath string, speed float64) *sentCall {
	return startCall(t, callTarget{servers: r.quics(), dir: r.shared, consoleID: "cluster-console", netns: r.clients.ns}, id, wavPath, speed)
}

// stopAll stops the agent and then every live member (SIGTERM), so their
// stores can be opened.
func (r *clusterRack) stopAll() {
	if r.agent != nil {
		r.agent.kill(syscall.SIGTERM)
	}
	for _, m := range r.live() {
		m.p.kill(syscall.SIGTERM)
		m.dead = true
	}
}

// saveLogs writes every coordinator's log (one file per process, in start
// order) and the agent's into dir (CALLSCRIBE_CHAOS_LOGS).
func (r *clusterRack) saveLogs(t *testing.T, dir string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Error(err)
		return
	}
	for i, np := range r.procs {
		_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%02d-%s.log", t.Name(), i, np.name)), []byte(np.p.output()), 0o644)
	}
	if r.agent != nil {
		_ = os.WriteFile(filepath.Join(dir, t.Name()+"-agent.log"), []byte(r.agent.output()), 0o644)
	}
}

// elections counts the times any member became leader.
func (r *clusterRack) elections() int {
	n := 0
	for _, np := range r.procs {
		n += strings.Count(np.p.output(), "entering leader state")
	}
	return n
}
