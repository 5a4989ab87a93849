package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callscribe/callscribe/internal/pki"
	"golang.org/x/sys/unix"
)

// chaosRack is a coordinator and two agents in test-made namespaces: the
// "victim" alone in namespace b (so it can be cut off), registered first so
// the workers land there, and the "survivor" with the coordinator in a.
type chaosRack struct {
	p               *pair
	dir, http, quic string
	coord, victim   *proc
	survivor        *proc
	coordArgs       []string
	addSurvivor     func()
}

func newChaosRack(t *testing.T) *chaosRack {
	p := newPair(t)
	r := &chaosRack{p: p, dir: t.TempDir(), http: p.ipA + ":8080", quic: p.ipA + ":4433"}
	caFor[r.http] = filepath.Join(r.dir, pki.CAFile)
	tokFor[r.http] = filepath.Join(r.dir, pki.OperatorToken)
	r.coordArgs = []string{"netns-exec", p.a, "coordinator", "--data", r.dir, "--http", r.http, "--http-tls", "--quic", r.quic, "--hosts", "localhost," + p.ipA, "--workers", "2"}
	r.coord = start(t, r.coordArgs...)
	waitUntil(t, "coordinator up", 60*time.Second, func() bool { _, ok := statusIn(t, p.a, r.http); return ok })
	agent := func(ns, node string) *proc {
		return start(t, "netns-exec", ns, "agent", "--coordinator", r.quic, "--ca", filepath.Join(r.dir, pki.CAFile), "--node", node,
			"--token-file", filepath.Join(r.dir, pki.NodeToken), "--state", t.TempDir(),
			"--cert", filepath.Join(r.dir, pki.NodeCert), "--key", filepath.Join(r.dir, pki.NodeKey))
	}
	r.victim = agent(p.b, "victim")
	waitUntil(t, "workers on the victim", 60*time.Second, func() bool { st, ok := statusIn(t, p.a, r.http); return ok && len(st.Workers) >= 2 })
	r.addSurvivor = func() { r.survivor = agent(p.a, "survivor") }
	return r
}

// survivorReady starts the second agent and waits for the spare worker the
// N+1 policy places on it.
func (r *chaosRack) survivorReady(t *testing.T) {
	r.addSurvivor()
	waitUntil(t, "a spare worker on the survivor", 60*time.Second, func() bool {
		st, ok := statusIn(t, r.p.a, r.http)
		if !ok {
			return false
		}
		for _, w := range st.Workers {
			if w.Node == "survivor" {
				return true
			}
		}
		return false
	})
}

func enterNetns(name string) error {
	f, err := os.Open("/var/run/netns/" + name)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
}

// pinToNetns locks the calling goroutine to its thread for good and moves
// the thread into namespace name: every socket or device the goroutine
// opens then lives there, and the thread is discarded when the goroutine
// ends.
func pinToNetns(name string) error {
	runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
	return enterNetns(name)
}

// inNetns runs fn on a goroutine pinned to namespace ns and returns what
// it returns.
func inNetns[T any](ns string, fn func() (T, error)) (T, error) {
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() {
		if err := pinToNetns(ns); err != nil {
			ch <- res{err: err}
			return
		}
		v, err := fn()
		ch <- res{v, err}
	}()
	r := <-ch
	return r.v, r.err
}

// call starts a console in namespace a, in this process.
func (r *chaosRack) call(t *testing.T, id, wavPath string, speed float64) *sentCall {
	return startCall(t, callTarget{quic: r.quic, dir: r.dir, consoleID: "chaos-console", netns: r.p.a}, id, wavPath, speed)
}

// resumedAfter is how long after the fault the last affected channel was
// resumed (0 if none was).
func (c *sentCall) resumedAfter(fault time.Time) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var worst time.Duration
	for _, ts := range c.resumedAt {
		for _, at := range ts {
			if at.After(fault) {
				worst = max(worst, at.Sub(fault))
				break
			}
		}
	}
	return worst
}

// ackedLost stops the coordinator and counts frames the console had
// acknowledged that are missing from the store or differ from what was sent.
func (r *chaosRack) ackedLost(t *testing.T, id string, c *sentCall) int {
	t.Helper()
	r.coord.kill(syscall.SIGTERM)
	return ackedLostIn(t, r.dir, id, c)
}

type chaosResult struct {
	name, fault string
	resumed     time.Duration
	ackedLost   int
	identical   bool
	note        string
}

// TestChaos runs every fault against a live call and writes the report
// named by CALLSCRIBE_CHAOS_REPORT (make chaos). Without it the suite is
// skipped: make test runs the worker-kill and partition cases on their own.
func TestChaos(t *testing.T) {
	report := os.Getenv("CALLSCRIBE_CHAOS_REPORT")
	if report == "" {
		t.Skip("set CALLSCRIBE_CHAOS_REPORT (make chaos)")
	}
	want := transcribeChannels(t, demoCall)
	type scenario struct {
		name, fault string
		inject      func(t *testing.T, r *chaosRack)
	}
	scenarios := []scenario{
		{"worker killed", "SIGKILL to a worker process holding the call", func(t *testing.T, r *chaosRack) {
			st, _ := statusIn(t, r.p.a, r.http)
			for _, w := range st.Workers {
				if w.Used > 0 {
					syscall.Kill(w.PID, syscall.SIGKILL)
					return
				}
			}
			t.Fatal("no busy worker")
		}},
		{"agent killed", "SIGKILL to the agent whose workers hold the call (its workers die with it)", func(t *testing.T, r *chaosRack) {
			r.victim.killLeader()
		}},
		{"coordinator killed", "SIGKILL to the coordinator, restarted at once on the same data directory", func(t *testing.T, r *chaosRack) {
			r.coord.killLeader()
			r.coord = start(t, r.coordArgs...)
		}},
		{"agent partitioned", "the victim's network link cut (its namespace's veth down)", func(t *testing.T, r *chaosRack) {
			ipCmd(t, "-n", r.p.b, "link", "set", r.p.vb, "down")
		}},
		{"worker frozen", "SIGSTOP to a worker process holding the call (alive, silent)", func(t *testing.T, r *chaosRack) {
			st, _ := statusIn(t, r.p.a, r.http)
			for _, w := range st.Workers {
				if w.Used > 0 {
					syscall.Kill(w.PID, syscall.SIGSTOP)
					t.Cleanup(func() { syscall.Kill(w.PID, syscall.SIGKILL) })
					return
				}
			}
			t.Fatal("no busy worker")
		}},
	}
	var results []chaosResult
	var mu sync.Mutex
	for _, sc := range scenarios {
		t.Run(strings.ReplaceAll(sc.name, " ", "-"), func(t *testing.T) {
			r := newChaosRack(t)
			id := "chaos-" + strings.ReplaceAll(sc.name, " ", "-")
			// The call starts while only the victim has workers, so the fault
			// hits the node carrying it; then the survivor joins.
			c := r.call(t, id, demoCall, 2)
			r.survivorReady(t)
			waitUntil(t, "a final", 60*time.Second, func() bool { return len(c.texts()[0]) >= 1 })
			fault := time.Now()
			sc.inject(t, r)
			c.wait(t)
			res := chaosResult{name: sc.name, fault: sc.fault, resumed: c.resumedAfter(fault)}
			if os.Getenv("CHAOS_DEBUG") != "" {
				t.Logf("fault at %s\n%s", fault.UTC().Format("15:04:05.000"), r.coord.output())
			}
			got := c.texts()
			res.identical = reflect.DeepEqual(got, want)
			res.ackedLost = r.ackedLost(t, id, c)
			if res.resumed == 0 {
				res.note = "no channel needed to move"
			}
			mu.Lock()
			results = append(results, res)
			mu.Unlock()
			t.Logf("%s: resumed after %v, acked frames lost %d, identical %v", sc.name, res.resumed.Round(time.Millisecond), res.ackedLost, res.identical)
			if res.ackedLost != 0 || !res.identical || res.resumed == 0 {
				t.Errorf("%s: acked lost %d, identical %v (got %q), resumed %v", sc.name, res.ackedLost, res.identical, got, res.resumed)
			}
		})
	}
	var faults []faultResult
	for _, f := range []struct {
		name string
		run  func(t *testing.T) faultResult
	}{
		{"disk-full", diskFullFault},
		{"poisoned-frame", poisonedFrameFault},
		{"junk-flood", junkFloodFault},
		{"damaged-manifest", func(t *testing.T) faultResult { return damagedStoreFault(t, "manifest") }},
		{"damaged-vlog", func(t *testing.T) faultResult { return damagedStoreFault(t, "vlog") }},
	} {
		t.Run(f.name, func(t *testing.T) {
			r := f.run(t)
			r.check(t)
			mu.Lock()
			faults = append(faults, r)
			mu.Unlock()
		})
	}
	writeChaosReport(t, report, results, faults)
}

func writeChaosReport(t *testing.T, path string, rs []chaosResult, fs []faultResult) {
	var b strings.Builder
	fmt.Fprintf(&b, "# callscribe chaos report\n\nWritten by `make chaos` on %s. Each fault hits a live two-channel call (assets/demo-call.wav streamed at 2× real time) on a rack of one coordinator and two agents in network namespaces made by the test: the *victim*, alone in its namespace, holds the call's workers; the *survivor* shares the coordinator's namespace and joins after the call has started, receiving the spare worker the N+1 policy places. *Resumed after* is from the fault to the console's `resumed` event on the last affected channel (so it includes the coordinator's restart where it was killed). *Acked frames lost* compares the store, read after the call, with every frame the console had acknowledged. *Identical* compares the console's transcript with `callscribe transcribe` on the same audio (a fault-free run).\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	b.WriteString("| fault | what was done | resumed after | acked frames lost | transcript identical |\n|---|---|---|---|---|\n")
	for _, r := range rs {
		res := fmt.Sprintf("%d ms", r.resumed.Milliseconds())
		if r.note != "" {
			res = r.note
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %v |\n", r.name, r.fault, res, r.ackedLost, r.identical)
	}
	b.WriteString("\n## Disks, bad frames, junk and damaged stores\n\nEach on a whole appliance (`callscribe dev`, two Moonshine workers) with a live two-channel call of assets/demo-call.wav. *Recovered* is, for a full disk, from space freed to the console's next ack; for a junk flood, from the real call's start to its first final; for a damaged store, the time to start on the backup. *Complete* compares the console's transcript with `callscribe transcribe` of the audio it sent (for the poisoned frame, with that frame's 100 ms silenced, as the worker conceals it).\n\n")
	b.WriteString("| fault | what was done | what the console (or operator) saw | recovered | acked frames lost | transcript complete | notes |\n|---|---|---|---|---|---|---|\n")
	for _, r := range fs {
		fmt.Fprintf(&b, "| %s | %s | %s | %d ms | %d | %v | %s |\n", r.name, r.fault, strings.ReplaceAll(r.consoleSaw, "|", "/"), r.recovered.Milliseconds(), r.ackedLost, r.complete, strings.ReplaceAll(r.note, "|", "/"))
	}
	// The cluster's section (TestClusterChaos) is kept.
	if old, err := os.ReadFile(path); err == nil {
		if sec := reportSection(string(old), clusterHeading); sec != "" {
			b.WriteString("\n" + sec)
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
