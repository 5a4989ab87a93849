package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/internal/tuning"
)

// clusterCall is one call run through a fault: its audio and pace.
type clusterCall struct {
	name, wav string
	speed     float64
}

// clusterFault is a fault done to the cluster while calls run. inject
// does it; once every call has resumed, recover undoes it (a restart, a
// replacement machine, a healed partition) while the calls go on.
type clusterFault struct {
	name, what string
	inject     func(t *testing.T, r *clusterRack, f *faultRun)
	recover    func(t *testing.T, r *clusterRack, f *faultRun)
	// quiet: the calls must not notice (no reconnect, no error).
	quiet bool
	// killsLeader: the leader's process is killed.
	killsLeader bool
	// check, if set, checks the calls' acknowledgements once they end and
	// returns notes for the report.
	check func(t *testing.T, f *faultRun) []string
}

// faultRun is one fault's calls and what was seen of it.
type faultRun struct {
	fault     *clusterFault
	at        time.Time
	leader    *clusterMember // the leader when the fault came
	victim    *clusterMember // the member the fault hit
	newLeader *clusterMember
	elected   time.Duration // from the fault to a new leader (polled)
	// appliedAtFault is the leader's applied index at the fault.
	appliedAtFault uint64
	ids            []string
	specs          []clusterCall
	calls          []*sentCall
	ackedAt        [][]uint32 // per call and channel: acknowledged at the fault
	reconnAt       []int      // per call: reconnects at the fault
	errsAt         []int      // per call: connection errors at the fault
	notes          []string
}

func (f *faultRun) note(format string, args ...any) {
	f.notes = append(f.notes, fmt.Sprintf(format, args...))
}

// clusterResult is one row of the report's cluster table.
type clusterResult struct {
	name, what string
	resumed    time.Duration
	resumedPer []time.Duration
	ackedLost  int
	identical  bool
	notes      []string
}

// ackedBy is, per channel, the highest acknowledgement received by t.
func ackedBy(recs []ackRecord, channels int, t time.Time) []uint32 {
	out := make([]uint32, channels)
	for _, a := range recs {
		if !a.at.After(t) {
			out[a.ch] = max(out[a.ch], a.next)
		}
	}
	return out
}

// resumedAt is the time of the first ack after the fault, from another
// coordinator than the one the fault hit (victim), that acknowledged a
// frame not yet acknowledged at the fault (zero if none has come yet).
func resumedAt(recs []ackRecord, fault time.Time, at []uint32, victim string) time.Time {
	for _, a := range recs {
		if !a.welcome && a.at.After(fault) && a.addr != victim && a.next > at[a.ch] {
			return a.at
		}
	}
	return time.Time{}
}

// regressions counts acknowledgements (welcomes) below what the console
// already had acknowledged on that channel: a coordinator that did not
// hold frames another had acknowledged.
func regressions(recs []ackRecord) int {
	high := map[int]uint32{}
	n := 0
	for _, a := range recs {
		if a.next < high[a.ch] {
			n++
		}
		high[a.ch] = max(high[a.ch], a.next)
	}
	return n
}

// snapshotNote says whether the member was sent a snapshot.
func snapshotNote(p *proc) string {
	if snapshotInstalled(p) {
		return " (sent a snapshot of the leader's store, then the log)"
	}
	return " (from the log alone)"
}

// logTime is the time of the first line of a coordinator's log (slog's
// text format) holding substr and dated after after (zero if none).
func logTime(out, substr string, after time.Time) time.Time {
	for _, l := range strings.Split(out, "\n") {
		if !strings.Contains(l, substr) || !strings.HasPrefix(l, "time=") {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err == nil && at.After(after) {
			return at
		}
	}
	return time.Time{}
}

// concatWAV writes the mono clips one after another, half a second of
// silence between them, to a new file.
func concatWAV(t *testing.T, clips ...string) string {
	t.Helper()
	var samples []int16
	for _, c := range clips {
		w, err := audio.ReadWAVFile(c)
		if err != nil {
			t.Fatal(err)
		}
		if w.Channels != 1 || w.Rate != 16000 {
			t.Fatalf("%s: %d channels at %d Hz, want mono 16 kHz", c, w.Channels, w.Rate)
		}
		samples = append(append(samples, w.Samples...), make([]int16, 8000)...)
	}
	p := filepath.Join(t.TempDir(), "clips.wav")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := audio.WriteWAV(f, 16000, 1, samples); err != nil {
		t.Fatal(err)
	}
	return p
}

func librivox(names ...string) []string {
	var out []string
	for _, n := range names {
		out = append(out, filepath.Join(testData, "librivox", "sense_and_sensibility_01_austen_64kb-"+n+".wav"))
	}
	return out
}

// Faults. Each is done to whichever member holds the part it needs when
// it comes (the leader, a follower).
var (
	leaderLost = &clusterFault{name: "leader lost", what: "SIGKILL to the leader mid-call and its data directory deleted; then `cluster remove` of it and a fresh coordinator (new name, new address, empty data directory) joined with `cluster join`", killsLeader: true,
		inject: func(t *testing.T, r *clusterRack, f *faultRun) {
			f.victim = f.leader
			r.kill(f.victim)
			r.w.remove(f.victim.idx)
			f.victim.gone = true
			if err := os.RemoveAll(f.victim.dir); err != nil {
				t.Fatal(err)
			}
		},
		recover: func(t *testing.T, r *clusterRack, f *faultRun) {
			r.cli(t, "cluster", "remove", "--server", r.urls(), f.victim.name)
			idx := byte(len(r.members) + 1)
			m := r.addMember(t, idx, fmt.Sprintf("c%d", idx))
			r.waitServing(t, m)
			t0 := time.Now()
			l := r.waitLeader(t, "a leader for the join")
			r.cli(t, "cluster", "join", "--server", m.httpURL(), "--leader", l.httpURL(), "--join-token", r.joinTok)
			r.caughtUp(t, m, 60*time.Second)
			took := time.Since(t0)
			v, _ := r.view(m)
			how := "from a snapshot of the leader's store, then the log"
			if !snapshotInstalled(m.p) {
				how = "from the log alone"
				t.Errorf("%s caught up without a snapshot: the leader's log was not compacted (--cluster-snapshot-entries %d)", m.name, clusterSnapshotEntries)
			}
			f.note("%s removed; %s joined and caught up (applied index %d, the leader's) %v after `cluster join`, %s", f.victim.name, m.name,
				v.Status.AppliedIndex, took.Round(time.Millisecond), how)
		}}
	leaderPartitioned = &clusterFault{name: "leader partitioned", what: "the leader's links to the other two coordinators cut (its packets to and from them dropped; consoles and the agent still reach it), healed once the calls had moved",
		inject: func(t *testing.T, r *clusterRack, f *faultRun) {
			f.victim = f.leader
			var others []byte
			for _, m := range r.live() {
				if m != f.victim {
					others = append(others, m.idx)
				}
			}
			r.w.partition(f.victim.idx, others, true)
		},
		recover: func(t *testing.T, r *clusterRack, f *faultRun) {
			// The old leader, still reachable from the clients, must no
			// longer lead; its log says when it stepped down.
			waitUntil(t, "the old leader to step down", 30*time.Second, func() bool {
				v, err := r.view(f.victim)
				return err == nil && v.Status.State != "leader"
			})
			stepped := "at a time its log does not say"
			if at := logTime(f.victim.p.output(), "stepping down", f.at); !at.IsZero() {
				stepped = at.Sub(f.at).Round(time.Millisecond).String() + " after the cut"
			}
			ended := "?"
			if at := logTime(f.victim.p.output(), "no longer leads", f.at); !at.IsZero() {
				ended = at.Sub(f.at).Round(time.Millisecond).String()
			}
			var others []byte
			for _, m := range r.live() {
				if m != f.victim {
					others = append(others, m.idx)
				}
			}
			r.w.partition(f.victim.idx, others, false)
			healed := time.Now()
			l := r.caughtUp(t, f.victim, 60*time.Second)
			took := time.Since(healed)
			v, _ := r.view(f.victim)
			f.note("%s stepped down %s (its log; its term's coordinator closed at %s); healed: it rejoined as %s of %s and caught up %v after the heal%s",
				f.victim.name, stepped, ended, v.Status.State, l.name, took.Round(time.Millisecond), snapshotNote(f.victim.p))
			if l == f.victim {
				f.note("it was elected again after the heal")
			}
		},
		check: partitionAcks}
	followerKilled = &clusterFault{name: "follower killed", what: "SIGKILL to a follower mid-call, restarted 3 s later on its data directory", quiet: true,
		inject: func(t *testing.T, r *clusterRack, f *faultRun) {
			for _, m := range r.live() {
				if m != f.leader {
					f.victim = m
					break
				}
			}
			r.kill(f.victim)
		},
		recover: func(t *testing.T, r *clusterRack, f *faultRun) {
			time.Sleep(3 * time.Second)
			r.restart(t, f.victim)
			t0 := time.Now()
			r.waitServing(t, f.victim)
			r.caughtUp(t, f.victim, 60*time.Second)
			f.note("%s restarted: caught up (applied index the leader's) %v after its restart%s", f.victim.name, time.Since(t0).Round(time.Millisecond), snapshotNote(f.victim.p))
		}}
	staleLeader = &clusterFault{name: "old leader back with stale data", what: "SIGKILL to the leader mid-call (data kept); the others go on for 5 s; then it is restarted on its stale data directory", killsLeader: true,
		inject: func(t *testing.T, r *clusterRack, f *faultRun) {
			f.victim = f.leader
			r.kill(f.victim)
		},
		recover: func(t *testing.T, r *clusterRack, f *faultRun) {
			time.Sleep(5 * time.Second)
			before, _ := r.view(r.waitLeader(t, "the new leader"))
			r.restart(t, f.victim)
			t0 := time.Now()
			r.waitServing(t, f.victim)
			l := r.caughtUp(t, f.victim, 60*time.Second)
			took := time.Since(t0)
			v, _ := r.view(f.victim)
			if l == f.victim {
				t.Errorf("%s, back with stale data, leads", f.victim.name)
			}
			f.note("%s restarted about %d entries behind; it rejoined as %s of %s and caught up %v after its restart%s",
				f.victim.name, before.Status.AppliedIndex-min(before.Status.AppliedIndex, f.appliedAtFault), v.Status.State, l.name, took.Round(time.Millisecond), snapshotNote(f.victim.p))
		}}
)

// runClusterChaos runs the faults in turn on one cluster, each against
// calls of its own started before it, and returns one result per fault.
// It fails the test if an acknowledged frame is lost, a transcript
// differs from a fault-free decode of its audio, or a fault's own checks
// fail.
func runClusterChaos(t *testing.T, workers int, calls []clusterCall, faults []*clusterFault) ([]clusterResult, string) {
	requireWire(t) // before the reference transcripts
	want := map[string][][]string{}
	for _, c := range calls {
		if _, ok := want[c.wav]; !ok {
			want[c.wav] = transcribeChannels(t, c.wav)
		}
	}
	r := newClusterRack(t, workers)
	var runs []*faultRun
	for i, fault := range faults {
		f := &faultRun{fault: fault, specs: calls}
		runs = append(runs, f)
		for _, c := range calls {
			id := fmt.Sprintf("cluster-%d-%s", i+1, c.name)
			f.ids = append(f.ids, id)
			f.calls = append(f.calls, r.call(t, id, c.wav, c.speed))
		}
		// Every call is under way (a final each) before the fault.
		waitUntil(t, "every call under way", 90*time.Second, func() bool {
			for _, c := range f.calls {
				if len(c.texts()[0]) == 0 {
					return false
				}
			}
			return true
		})
		// The leader now (a leader may have changed under load meanwhile).
		f.leader = r.waitLeader(t, "a leader before "+fault.name)
		if v, err := r.view(f.leader); err == nil {
			f.appliedAtFault = v.Status.AppliedIndex
		}
		f.at = time.Now()
		fault.inject(t, r, f)
		for _, c := range f.calls {
			f.ackedAt = append(f.ackedAt, ackedBy(c.ackRecords(), len(c.frames), f.at))
			f.reconnAt = append(f.reconnAt, c.call.Reconnects())
			f.errsAt = append(f.errsAt, c.connErrors())
		}
		t.Logf("%s: %s hit at %s (leader %s)", fault.name, f.victim.name, f.at.UTC().Format("15:04:05.000"), f.leader.name)
		if f.victim == f.leader {
			waitUntil(t, "a new leader", 60*time.Second, func() bool {
				l := r.leader()
				if l != nil && l != f.victim {
					f.newLeader, f.elected = l, time.Since(f.at)
					return true
				}
				return false
			})
			// When, by its own log, the new leader was elected and began to
			// serve (its term's coordinator listening).
			el, serving := logTime(f.newLeader.p.output(), "entering leader state", f.at), logTime(f.newLeader.p.output(), "coordinator: leading", f.at)
			if !el.IsZero() && !serving.IsZero() {
				f.elected = el.Sub(f.at)
				f.note("%s elected %v after the fault and serving %v after it (its log)", f.newLeader.name, f.elected.Round(time.Millisecond), serving.Sub(f.at).Round(time.Millisecond))
			} else {
				f.note("%s elected %v after the fault (polled)", f.newLeader.name, f.elected.Round(time.Millisecond))
			}
		}
		waitUntil(t, "every call resumed", 90*time.Second, func() bool {
			for i, c := range f.calls {
				if resumedAt(c.ackRecords(), f.at, f.ackedAt[i], f.victim.quic()).IsZero() && c.call.Acked()[0] < uint32(len(c.frames[0])) {
					return false
				}
			}
			return true
		})
		fault.recover(t, r, f)
		for _, c := range f.calls {
			c.wait(t)
		}
	}
	// Every acknowledged frame must be in every remaining member's store,
	// byte for byte: the cluster converges, then stops, and each store
	// is read.
	r.converged(t, "the cluster converged at the end", 60*time.Second)
	r.stopAll()
	leaderHit := 0
	for _, f := range runs {
		if f.victim == f.leader {
			leaderHit++
		}
	}
	elections := r.elections()
	summary := fmt.Sprintf("%d leader elections in all: the first, %d after the faults that hit the leader, %d others", elections, leaderHit, elections-1-leaderHit)
	if elections-1-leaderHit > 0 {
		summary += " (a leader missed its heartbeats under load: the calls moved, as after a fault; see the consoles' errors before the faults)"
	}
	t.Log(summary)
	var results []clusterResult
	for _, f := range runs {
		res := clusterResult{name: f.fault.name, what: f.fault.what, identical: true, notes: f.notes}
		for i, c := range f.calls {
			recs := c.ackRecords()
			if at := resumedAt(recs, f.at, f.ackedAt[i], f.victim.quic()); !at.IsZero() {
				d := at.Sub(f.at)
				res.resumedPer = append(res.resumedPer, d)
				res.resumed = max(res.resumed, d)
			}
			if got := c.texts(); !reflect.DeepEqual(got, want[f.specs[i].wav]) {
				res.identical = false
				t.Errorf("%s: call %s transcript differs from a fault-free decode:\n got  %q\n want %q", f.fault.name, f.ids[i], got, want[f.specs[i].wav])
			}
			if n := regressions(recs); n > 0 {
				t.Errorf("%s: call %s was welcomed %d times below what it had acknowledged", f.fault.name, f.ids[i], n)
				res.notes = append(res.notes, fmt.Sprintf("%d welcomes below the acknowledged frames", n))
			}
			if f.fault.quiet {
				if rc, ec := c.call.Reconnects()-f.reconnAt[i], c.connErrors()-f.errsAt[i]; rc != 0 || ec != 0 {
					t.Errorf("%s: call %s noticed the fault: %d reconnects, %d connection errors", f.fault.name, f.ids[i], rc, ec)
					res.notes = append(res.notes, fmt.Sprintf("call %s: %d reconnects, %d connection errors", f.ids[i], rc, ec))
				}
			}
		}
		if f.fault.quiet {
			res.notes = append(res.notes, "the calls saw nothing: no reconnect, no connection error; acks went on from the leader")
		}
		if f.fault.killsLeader {
			// Where the console went once the dead leader's connection
			// idled out: the dead address again costs a dial timeout.
			redialled := 0
			for _, c := range f.calls {
				for _, e := range c.errorsAfter(f.at) {
					if strings.Contains(e, "dial "+f.victim.quic()) {
						redialled++
						break
					}
				}
			}
			if redialled > 0 {
				res.notes = append(res.notes, fmt.Sprintf("%d of %d calls dialled the dead leader again first when its connection idled out (%v lost to the dial timeout: the console's next address in turn was the one it had just lost)", redialled, len(f.calls), tuning.DialTimeout))
			}
		}
		if f.fault.check != nil {
			res.notes = append(res.notes, f.fault.check(t, f)...)
		}
		for _, m := range r.members {
			if m.gone {
				continue
			}
			lost := 0
			for i, c := range f.calls {
				lost += ackedLostIn(t, m.dir, f.ids[i], c)
			}
			if lost > 0 {
				t.Errorf("%s: %d acknowledged frames missing or different in %s's store", f.fault.name, lost, m.name)
			}
			res.ackedLost = max(res.ackedLost, lost)
		}
		t.Logf("%s: resumed after %v (per call %v), acked frames lost %d, identical %v; %s", res.name, res.resumed.Round(time.Millisecond),
			roundAll(res.resumedPer), res.ackedLost, res.identical, strings.Join(res.notes, "; "))
		results = append(results, res)
	}
	return results, summary
}

// partitionAcks checks the acknowledgements of a partitioned leader: none
// may come later than the cut plus the leader lease (it cannot reach a
// quorum, so it commits nothing after the cut and steps down within the
// lease).
func partitionAcks(t *testing.T, f *faultRun) []string {
	t.Helper()
	old := f.victim.quic()
	var late, afterCut, frames int
	var lastOld time.Time
	for i, c := range f.calls {
		high := map[int]uint32{}
		for _, a := range c.ackRecords() {
			if a.addr == old && a.at.After(f.at) {
				afterCut++
				lastOld = a.at
				if a.at.After(f.at.Add(tuning.ClusterLeaderLease)) {
					late++
				}
				if a.next > max(high[a.ch], f.ackedAt[i][a.ch]) {
					frames += int(a.next - max(high[a.ch], f.ackedAt[i][a.ch]))
				}
			}
			high[a.ch] = max(high[a.ch], a.next)
		}
	}
	if late > 0 {
		t.Errorf("%s: %d acks from the old leader %s came later than the cut + the lease (%v)", f.fault.name, late, f.victim.name, tuning.ClusterLeaderLease)
	}
	last := "none"
	if !lastOld.IsZero() {
		last = lastOld.Sub(f.at).Round(time.Millisecond).String()
	}
	return []string{fmt.Sprintf("acks from the old leader after the cut: %d (the last %s after it; %d frames first acknowledged by them, committed before the cut), later than the cut + lease (%v): %d",
		afterCut, last, frames, tuning.ClusterLeaderLease, late)}
}

func roundAll(ds []time.Duration) []time.Duration {
	out := slices.Clone(ds)
	for i := range out {
		out[i] = out[i].Round(time.Millisecond)
	}
	return out
}

// TestClusterChaos runs the four cluster faults — leader lost (and
// replaced), leader partitioned, follower killed, old leader back with
// stale data — on a three-member cluster with three concurrent calls,
// and writes the report's cluster section to CALLSCRIBE_CHAOS_REPORT
// (make chaos). Without it the test is skipped: make test runs the
// smaller TestClusterFailover.
func TestClusterChaos(t *testing.T) {
	report := os.Getenv("CALLSCRIBE_CHAOS_REPORT")
	if report == "" {
		t.Skip("set CALLSCRIBE_CHAOS_REPORT (make chaos)")
	}
	austen := concatWAV(t, librivox("0870", "0880", "0890", "0920", "0930")...)
	calls := []clusterCall{{"demo", demoCall, 2}, {"austen", austen, 2}, {"demo-slow", demoCall, 1.5}}
	t0 := time.Now()
	res, summary := runClusterChaos(t, 2, calls, []*clusterFault{leaderLost, leaderPartitioned, followerKilled, staleLeader})
	writeClusterReport(t, report, res, summary, calls, chaosDelay(t), time.Since(t0))
}

// TestClusterFailover is make test's cluster chaos: the leader lost (and
// replaced) and the leader partitioned, each during two short calls.
func TestClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	calls := []clusterCall{{"short", concatWAV(t, librivox("0880", "0930")...), 1}, {"longer", concatWAV(t, librivox("0870", "0890", "0920")...), 2}}
	runClusterChaos(t, 2, calls, []*clusterFault{leaderLost, leaderPartitioned})
}

// clusterHeading starts the report's cluster section, which
// TestClusterChaos writes and TestChaos keeps.
const clusterHeading = "## Coordinator cluster"

// reportSection returns the section of doc that starts at heading (up to
// the next section), or "".
func reportSection(doc, heading string) string {
	i := strings.Index(doc, "\n"+heading+"\n")
	if i < 0 {
		return ""
	}
	rest := doc[i+1:]
	if j := strings.Index(rest[len(heading):], "\n## "); j >= 0 {
		return rest[:len(heading)+j]
	}
	return rest
}

// withSection returns doc with the section starting at heading replaced
// by body (which starts with the heading), or body appended.
func withSection(doc, heading, body string) string {
	old := reportSection(doc, heading)
	if old == "" {
		return strings.TrimRight(doc, "\n") + "\n\n" + body
	}
	return strings.Replace(doc, old, body, 1)
}

// writeClusterReport writes the cluster section into the report at path
// (the rest of it, from TestChaos, is kept).
func writeClusterReport(t *testing.T, path string, rs []clusterResult, summary string, calls []clusterCall, delay, took time.Duration) {
	t.Helper()
	doc := "# callscribe chaos report\n"
	if b, err := os.ReadFile(path); err == nil {
		doc = string(b)
	}
	var cs []string
	for _, c := range calls {
		w, err := audio.ReadWAVFile(c.wav)
		if err != nil {
			t.Fatal(err)
		}
		src := filepath.Base(c.wav)
		if c.wav != demoCall {
			src = "librivox clips of pocketsphinx-testdata one after another"
		}
		cs = append(cs, fmt.Sprintf("*%s* (%s, %d channel(s), %.0f s, at %g× real time)", c.name, src, w.Channels, float64(len(w.Samples)/w.Channels)/float64(w.Rate), c.speed))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\nWritten by `make chaos` (TestClusterChaos) on %s; the run took %v. Three coordinators in a Raft cluster, each alone in its own network namespace (its machine), set up as an operator would by hand: one CA and one set of tokens copied to each, a coordinator certificate issued per member, `callscribe cluster init` on the first and `cluster join` on the others. One agent with two Moonshine workers, the consoles and the operator's command line share a fourth namespace; every client is given the three addresses and follows the leader by itself. Every packet between namespaces is delayed %v one way: the test forwards them itself, through a TUN device in each namespace, rather than with tc's netem, which not every kernel has (and it can cut the leader off from the other two coordinators while consoles and the agent still reach it). The faults come one after another on the same cluster, each during calls of its own started before it (each call had a final): %s. The leader lease is %v. Members take a snapshot every %d log entries and keep %d behind it (`cluster_snapshot_entries`, `cluster_trailing_entries`; the defaults, %d and %d, are never reached by a test's calls), so that a member joining, or coming back far behind, is sent a snapshot of the leader's store.\n\n",
		clusterHeading, time.Now().UTC().Format("2006-01-02 15:04 MST"), took.Round(time.Second), delay, strings.Join(cs, ", "), tuning.ClusterLeaderLease,
		clusterSnapshotEntries, clusterTrailingEntries, tuning.ClusterSnapshotThreshold, tuning.ClusterTrailingLogs)
	fmt.Fprintf(&b, "*Resumed after* is from the fault to the first ack, on the slowest call, of a frame the console had not had acknowledged at the fault (each call's in the notes). A console notices a killed leader only when its QUIC connection idles out (tuning.ConsoleQUICIdle, %v): that is most of it where the leader was killed, the election being shorter (in the notes); a partitioned leader ends its calls' streams when it steps down, and they move at once. *Acked frames lost* compares every remaining member's store — read after the last fault, the cluster converged and stopped — with every frame the consoles had had acknowledged, byte for byte (the largest count of any store). *Identical* compares every call's transcript with `callscribe transcribe` of its audio (a fault-free run).\n\n", tuning.ConsoleQUICIdle)
	b.WriteString("| fault | what was done | resumed after | acked frames lost | transcripts identical | notes |\n|---|---|---|---|---|---|\n")
	for _, r := range rs {
		notes := append([]string{fmt.Sprintf("per call %v", roundAll(r.resumedPer))}, r.notes...)
		fmt.Fprintf(&b, "| %s | %s | %d ms | %d | %v | %s |\n", r.name, r.what, r.resumed.Milliseconds(), r.ackedLost, r.identical, strings.ReplaceAll(strings.Join(notes, "; "), "|", "/"))
	}
	fmt.Fprintf(&b, "\nOver the run: %s.\n", summary)
	if err := os.WriteFile(path, []byte(withSection(doc, clusterHeading, b.String())), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The report's cluster section is replaced in place, or appended, and the
// rest of the report is kept.
func TestReportSections(t *testing.T) {
	top := "# callscribe chaos report\n\nintro\n\n| a |\n\n## Disks\n\n| b |\n"
	one := clusterHeading + "\n\nfirst\n"
	two := clusterHeading + "\n\nsecond\n"
	doc := withSection(top, clusterHeading, one)
	if doc != top+"\n"+one || reportSection(doc, clusterHeading) != one {
		t.Fatalf("appended:\n%q", doc)
	}
	if got := withSection(doc, clusterHeading, two); got != top+"\n"+two {
		t.Fatalf("replaced:\n%q", got)
	}
	// A section followed by another is cut at it.
	mid := "# r\n\n" + one + "\n## Later\n\nx\n"
	if got := withSection(mid, clusterHeading, two); got != "# r\n\n"+two+"\n## Later\n\nx\n" {
		t.Fatalf("replaced in the middle:\n%q", got)
	}
	if reportSection(top, clusterHeading) != "" {
		t.Fatal("found a section that is not there")
	}
}
