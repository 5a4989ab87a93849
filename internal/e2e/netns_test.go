package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/internal/pki"
)

// caFor maps a coordinator's HTTP address to its CA file.
var caFor = map[string]string{}

// tokFor maps a coordinator's HTTP address to its operator token file.
var tokFor = map[string]string{}

// pair is two network namespaces made by the test, joined by a veth pair.
// Addresses exist only inside them.
type pair struct {
	a, b     string // namespace names
	va, vb   string // veth ends
	ipA, ipB string
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v\n%s", args, err, out)
	}
}

func newPair(t *testing.T) *pair {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("iproute2 not installed")
	}
	n := os.Getpid() % 250
	p := &pair{a: fmt.Sprintf("csa%d", os.Getpid()), b: fmt.Sprintf("csb%d", os.Getpid()),
		va: fmt.Sprintf("csva%d", n), vb: fmt.Sprintf("csvb%d", n),
		ipA: fmt.Sprintf("10.213.%d.1", n), ipB: fmt.Sprintf("10.213.%d.2", n)}
	if out, err := exec.Command("ip", "netns", "add", p.a).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace here: %v %s", err, out)
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", p.a).Run()
		exec.Command("ip", "netns", "del", p.b).Run()
	})
	ipCmd(t, "netns", "add", p.b)
	ipCmd(t, "link", "add", p.va, "type", "veth", "peer", "name", p.vb)
	ipCmd(t, "link", "set", p.va, "netns", p.a)
	ipCmd(t, "link", "set", p.vb, "netns", p.b)
	ipCmd(t, "-n", p.a, "addr", "add", p.ipA+"/24", "dev", p.va)
	ipCmd(t, "-n", p.b, "addr", "add", p.ipB+"/24", "dev", p.vb)
	for _, ns := range []struct{ n, v string }{{p.a, p.va}, {p.b, p.vb}} {
		ipCmd(t, "-n", ns.n, "link", "set", "lo", "up")
		ipCmd(t, "-n", ns.n, "link", "set", ns.v, "up")
	}
	return p
}

// statusIn reads the coordinator's status over HTTPS from inside ns (off
// loopback the API is HTTPS only), trusting the CA recorded in caFor.
func statusIn(t *testing.T, ns, http string) (coordinator.Status, bool) {
	out, err := exec.Command("ip", "netns", "exec", ns, binPath, "status", "--json", "--server", "https://"+http, "--ca", caFor[http], "--token-file", tokFor[http]).Output()
	var st coordinator.Status
	if err != nil || json.Unmarshal(out, &st) != nil {
		return st, false
	}
	return st, true
}

// An agent in its own network namespace is cut off mid-call: it is declared
// lost, its call moves to a worker on the other node and resumes from the
// last checkpoint, and the console's transcript equals a fault-free run.
func TestAgentPartitionedMidCall(t *testing.T) {
	p := newPair(t)
	want := run(t, "transcribe", demoCall)
	dir := t.TempDir()
	http, quic := p.ipA+":8080", p.ipA+":4433"
	caFor[http] = filepath.Join(dir, pki.CAFile)
	tokFor[http] = filepath.Join(dir, pki.OperatorToken)
	start(t, "netns-exec", p.a, "coordinator", "--data", dir, "--http", http, "--http-tls", "--quic", quic, "--hosts", "localhost,"+p.ipA, "--workers", "2")
	waitUntil(t, "coordinator up", 60*time.Second, func() bool { _, ok := statusIn(t, p.a, http); return ok })
	token := filepath.Join(dir, pki.NodeToken)
	// The victim registers first, so the placement puts the workers there.
	start(t, "netns-exec", p.b, "agent", "--coordinator", quic, "--ca", filepath.Join(dir, pki.CAFile), "--node", "victim", "--token-file", token, "--state", t.TempDir(),
		"--cert", filepath.Join(dir, pki.NodeCert), "--key", filepath.Join(dir, pki.NodeKey))
	waitUntil(t, "workers on the victim", 60*time.Second, func() bool {
		st, ok := statusIn(t, p.a, http)
		return ok && len(st.Workers) >= 2
	})
	tok, err := pki.ReadToken(filepath.Join(dir, pki.ConsoleToken))
	if err != nil {
		t.Fatal(err)
	}
	// The call starts while only the victim has workers; then the survivor
	// joins and gets the spare worker the N+1 policy places there.
	console := start(t, "netns-exec", p.a, "stream", "--server", quic, "--ca", filepath.Join(dir, pki.CAFile), "--token", tok, "--call", "partition-call", "--speed", "3", "--quiet", demoCall)
	start(t, "netns-exec", p.a, "agent", "--coordinator", quic, "--ca", filepath.Join(dir, pki.CAFile), "--node", "survivor", "--token-file", token, "--state", t.TempDir(),
		"--cert", filepath.Join(dir, pki.NodeCert), "--key", filepath.Join(dir, pki.NodeKey))
	waitUntil(t, "a spare worker on the survivor", 60*time.Second, func() bool {
		st, ok := statusIn(t, p.a, http)
		for _, w := range st.Workers {
			if ok && w.Node == "survivor" {
				return true
			}
		}
		return false
	})
	time.Sleep(500 * time.Millisecond) // the call is under way on the victim's workers
	cut := time.Now()
	ipCmd(t, "-n", p.b, "link", "set", p.vb, "down")
	var lostAfter time.Duration
	waitUntil(t, "the victim declared lost", 10*time.Second, func() bool {
		st, ok := statusIn(t, p.a, http)
		if !ok {
			return false
		}
		for _, n := range st.Nodes {
			if n.ID == "victim" && n.Lost {
				lostAfter = time.Since(cut)
				return true
			}
		}
		return false
	})
	t.Logf("victim declared lost %v after the cut (status polled by a subprocess)", lostAfter.Round(time.Millisecond))
	select {
	case <-console.done:
	case <-time.After(3 * time.Minute):
		t.Fatal("console did not finish")
	}
	if console.cmd.ProcessState.ExitCode() != 0 {
		t.Fatalf("console exited %d:\n%s", console.cmd.ProcessState.ExitCode(), console.output())
	}
	// stdout and stderr share the buffer: the ordered transcript (stdout)
	// comes last, after the live lines and resume notices (stderr).
	got := console.output()
	if !strings.HasSuffix(got, "\n"+want) {
		t.Fatalf("transcript after the partition:\n got  %q\n want it to end with %q", got, want)
	}
	if !strings.Contains(got, "transcription resumed on another worker") {
		t.Fatalf("the console was not told its call moved:\n%s", got)
	}
}
