package main

// The durable ack of a single coordinator and of a 3-coordinator cluster,
// beside the disk's floor and Badger alone, taking turns.
//
// The cluster's members talk over TCP with a delay added between them.
// The delay is netem on `lo` (tc qdisc add dev lo root netem delay D), and
// so that it delays only the benchmark's own loopback, the comparison runs
// in a child process in a network namespace of its own: benchreport
// re-executes itself under `unshare -n` (-cluster-child), the child brings
// its `lo` up, adds the qdisc, runs every turn (the floor and the stores
// touch no network, so the namespace changes nothing for them) and prints
// the section, which the parent copies into the report. Re-executing, not
// setns on one locked thread: every socket Raft opens (its listener, and
// its dials from whatever thread its goroutines run on) must be in the
// namespace, which only a whole process in it guarantees.
//
// Where the kernel has no netem (CONFIG_NET_SCH_NETEM off), or with
// -cluster-link relay, the delay is added in user space instead: each
// member advertises a bench.Relay on 127.0.0.1 that forwards to it after
// the delay, each way. Where no namespace can be made, netem cannot be
// used without delaying the host's loopback: the relay is used (-cluster-link
// auto) or the cluster's row is skipped with a note (-cluster-link netem).
// Either way the section says which, and measures the round trip the
// members see.

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/callscribe/callscribe/bench"
)

// clusterHeading starts the section (-cluster-turns-only replaces the
// section that starts with it).
const clusterHeading = "### A single coordinator and a 3-coordinator cluster against the floor, taking turns"

// netnsEnv is set in the child that runs in the benchmark's network
// namespace.
const netnsEnv = "CALLSCRIBE_BENCH_NETNS"

// clusterOpts are the comparison's settings (flags).
type clusterOpts struct {
	delay time.Duration // one-way delay between members
	link  string        // auto, netem or relay
	turns int           // turns per store and number of calls
}

// args are the child's command-line flags for the same settings.
func (o clusterOpts) args(dir string, dur time.Duration) []string {
	return []string{"-cluster-child", "-dir", dir, "-duration", dur.String(), "-cluster-delay", o.delay.String(), "-cluster-link", o.link, "-cluster-turns", fmt.Sprint(o.turns)}
}

// clusterSection writes the comparison: from a child in a network
// namespace of its own where one can be made, else in this process.
func clusterSection(ctx context.Context, w, log func(string, ...any), dir string, dur time.Duration, o clusterOpts) error {
	if os.Getenv(netnsEnv) != "" {
		return clusterTurns(ctx, w, log, dir, dur, o, true, "")
	}
	if out, err := exec.CommandContext(ctx, "unshare", "-n", "true").CombinedOutput(); err != nil {
		why := fmt.Sprintf("no network namespace could be made here (`unshare -n`: %s)", oneLine(out, err))
		log("cluster: %s", why)
		return clusterTurns(ctx, w, log, dir, dur, o, false, why)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "unshare", append([]string{"-n", "--", exe}, o.args(abs, dur)...)...)
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	w("%s", out)
	if err != nil {
		return fmt.Errorf("the cluster comparison (in its network namespace): %w", err)
	}
	return nil
}

// oneLine is a command's output, or its error, on one line.
func oneLine(out []byte, err error) string {
	s := strings.Join(strings.Fields(string(out)), " ")
	if s == "" {
		s = err.Error()
	}
	return s
}

// setupLink prepares the members' link in this process's namespace and
// says how the delay is added: relay is the one-way delay the cluster's
// relays must add (0: the network stack adds it), skip is why the cluster
// cannot be measured ("" when it can).
func setupLink(ctx context.Context, o clusterOpts, inNetns bool, why string) (desc string, relay time.Duration, skip string) {
	relayed := func(reason string) (string, time.Duration, string) {
		return fmt.Sprintf("added by a relay in this process (`bench.Relay`: each member advertises a relay on 127.0.0.1 that forwards its traffic after %v, each way), because %s", o.delay, reason), o.delay, ""
	}
	if o.delay == 0 {
		return "none (the members talk over loopback as it is)", 0, ""
	}
	if !inNetns {
		if o.link == "netem" {
			return "", 0, why + ", and netem on the host's own `lo` would delay everything else on it"
		}
		return relayed(why)
	}
	if out, err := exec.CommandContext(ctx, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return "", 0, "`ip link set lo up` in the benchmark's network namespace failed: " + oneLine(out, err)
	}
	if o.link == "relay" {
		return relayed("`-cluster-link relay` was asked for")
	}
	ms := fmt.Sprintf("%gms", float64(o.delay)/float64(time.Millisecond))
	if out, err := exec.CommandContext(ctx, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", ms).CombinedOutput(); err != nil {
		reason := fmt.Sprintf("this kernel has no netem (`tc qdisc add dev lo root netem delay %s`: %s)", ms, oneLine(out, err))
		if o.link == "netem" {
			return "", 0, reason
		}
		return relayed(reason)
	}
	return fmt.Sprintf("`tc qdisc add dev lo root netem delay %s` on the loopback of a network namespace the benchmark made (`unshare -n`), where the members listen on 127.0.0.1: every packet between them waits %v", ms, o.delay), 0, ""
}

// side is one store of the comparison, kept open across its turns.
type side struct {
	name    string
	sink    bench.Sink
	commits bench.Commits
	acks    bench.Recorder
	errors  int
	p99s    []time.Duration
	cpu     time.Duration     // this process's CPU time during its turns
	stages  *bench.RaftStages // Raft's timers during its turns (Raft sides)
	// networked: a member with peers (the cluster).
	networked bool
}

// clusterTurns measures, in this process, the ack latency of the floor,
// Badger alone, a single coordinator and a 3-coordinator cluster at 1 and
// 200 calls, in alternating turns, and writes the section.
func clusterTurns(ctx context.Context, w, log func(string, ...any), dir string, dur time.Duration, o clusterOpts, inNetns bool, why string) error {
	const size = 3200
	turnLen := map[int]time.Duration{1: 4 * dur / 10, 200: 2 * dur / 10}
	link, relay, skip := setupLink(ctx, o, inNetns, why)
	w("\n%s (targets: the cluster's ack p99 ≤ 2× the single coordinator's; the single coordinator's ≤ 1.3× the floor's)\n\n", clusterHeading)
	w("Since the coordinator became a Raft cluster, a *single coordinator* is a cluster of one: its store (`Replicated`) hands each group commit to Raft, which makes it durable with one write and one fdatasync of its log (internal/raftlog); the write is acknowledged once committed, and the store's applier writes it to Badger behind, unsynced (reads wait for it); that is the product's default path. The *3-coordinator cluster* is three such members in this process, each with its own store and log in its own directory on the same disk, talking Raft over TCP with mutual TLS (a CA and coordinator certificates made for the run); frames are written through the leader's store and acknowledged once two of the three logs have them on disk (the leader sends each batch to the followers while it syncs its own log: third_party/raft/PATCHES.md). *Badger alone* is the store synced by itself, as the coordinator wrote before the cluster (the Badger rows above), kept for reference; the *floor* is the append-only file with group commit and fdatasync. Every store writes each frame with `PutFrames`, as the rows above. The stores are opened once and kept open; for each number of calls they take %d turns each — the order rotating by one each turn — of one 3,200 B frame per call every 100 ms, %v per turn at 1 call and %v at 200, and every ack (submit → durable) of all turns is pooled per store. A *commit* is one group commit of the store (for the single coordinator and the cluster: the whole replicated write, propose → committed and handed to the store).\n\n", o.turns, turnLen[1], turnLen[200])

	// The disk, as this section found it.
	p, _ := fresh(dir, "cl-fsync")
	defer os.RemoveAll(p)
	fs, err := bench.FsyncLatency(p, 300)
	if err != nil {
		return err
	}
	sides := []*side{{name: "floor"}, {name: "Badger alone, synced (before the cluster)"}, {name: "single coordinator (a cluster of one)", stages: bench.NewRaftStages()},
		{name: fmt.Sprintf("3-coordinator cluster, +%v each way", o.delay), stages: bench.NewRaftStages(), networked: true}}
	mks := []func(string, *bench.Commits) (bench.Sink, func(), error){bench.FloorSink, bench.BadgerSink, bench.SingleSink, nil}
	var cl *bench.Cluster
	if skip == "" {
		mks[3] = func(p string, c *bench.Commits) (bench.Sink, func(), error) {
			sink, c2, err := bench.ClusterSink(p, bench.ClusterOptions{LinkDelay: relay, Commits: c,
				Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
			if err != nil {
				return nil, nil, err
			}
			cl = c2
			return sink, c2.Close, nil
		}
	} else {
		sides = sides[:3]
	}
	for k, sd := range sides {
		p, _ := fresh(dir, fmt.Sprintf("cl-%d", k))
		defer os.RemoveAll(p) // after the store's close, deferred below
		sink, closeFn, err := mks[k](p, &sd.commits)
		if err != nil {
			return fmt.Errorf("%s: %w", sd.name, err)
		}
		defer closeFn()
		sd.sink = sink
	}
	var rtt bench.Summary
	if skip == "" {
		if rtt, err = bench.EchoRTT(relay, 100); err != nil {
			return fmt.Errorf("round trip between members: %w", err)
		}
		w("The delay between the members (`-cluster-delay`; by default 250 µs each way, a round trip of 0.5 ms: a loaded LAN, where one centre's coordinators sit): %s. A 64-byte round trip between two sockets on 127.0.0.1 here, by the same path, took p50 %s ms, p99 %s ms (100 in a row). The disk, measured at the start of this section: 4 KiB write + fdatasync, one at a time, p50 %s ms, p99 %s ms, max %s ms (300).\n\n",
			link, bench.MS(rtt.P50), bench.MS(rtt.P99), bench.MS(fs.P50), bench.MS(fs.P99), bench.MS(fs.Max))
	} else {
		w("**The cluster is not measured here**: %s.\n\nThe disk, measured at the start of this section: 4 KiB write + fdatasync, one at a time, p50 %s ms, p99 %s ms, max %s ms (300).\n\n", skip, bench.MS(fs.P50), bench.MS(fs.P99), bench.MS(fs.Max))
	}
	log("cluster section: link %q; rtt p50 %s; fsync p50 %s p99 %s", link, bench.MS(rtt.P50), bench.MS(fs.P50), bench.MS(fs.P99))

	type ratio struct {
		name   string
		num    int // sides index
		den    int
		target float64
	}
	ratios := []ratio{{"single coordinator / floor", 2, 0, 1.3}}
	if skip == "" {
		ratios = append([]ratio{{"cluster / single coordinator", 3, 2, 2}}, ratios...)
	}
	ratios = append(ratios, ratio{"Badger alone / floor (for reference)", 1, 0, 0})
	w("| calls | store | acks | errors | ack p50 / p99 / max ms | commits/s | writes per commit | commit p50 / p99 ms | CPU, %% of one core |\n|---|---|---|---|---|---|---|---|---|\n")
	var summary, stages, explain strings.Builder
	var loads []float64          // the 1-minute load average at each turn's start
	missed := map[string][]int{} // ratio → the numbers of calls where it missed
	defer bench.StopRaftStages()
	for _, calls := range []int{1, 200} {
		slice := turnLen[calls]
		for _, sd := range sides {
			sd.acks.Reset()
			sd.commits.Reset()
			sd.p99s, sd.errors, sd.cpu = nil, 0, 0
			if sd.stages != nil {
				sd.stages.Reset()
			}
		}
		for i := range o.turns {
			for k := range sides {
				sd := sides[(i+k)%len(sides)]
				bench.StopRaftStages()
				if sd.stages != nil {
					sd.stages.Install()
				}
				if cl != nil && sd.networked {
					cl.RecordRelays(true)
				}
				if l, ok := loadAvg(); ok {
					loads = append(loads, l)
				}
				c0 := cpuTime()
				r := bench.Workload{Calls: calls, FrameSize: size, Interval: 100 * time.Millisecond, Duration: slice}.Run(ctx, sd.sink)
				sd.cpu += cpuTime() - c0
				if cl != nil {
					cl.RecordRelays(false)
				}
				for _, d := range r.Latencies {
					sd.acks.Add(d)
				}
				sd.errors += r.Errors
				sd.p99s = append(sd.p99s, r.Latency.P99)
			}
		}
		timed := time.Duration(o.turns) * slice
		for _, sd := range sides {
			a, c := sd.acks.Summary(), sd.commits.Summary()
			log("%d calls, %s: ack p50 %s p99 %s; %d commits of %.2f writes, p50 %s", calls, sd.name, bench.MS(a.P50), bench.MS(a.P99), c.N, sd.commits.PerCommit(), bench.MS(c.P50))
			w("| %d | %s | %d | %d | %s / **%s** / %s | %.0f | %.2f | %s / %s | %.0f %% |\n", calls, sd.name, a.N, sd.errors, bench.MS(a.P50), bench.MS(a.P99), bench.MS(a.Max),
				float64(c.N)/timed.Seconds(), sd.commits.PerCommit(), bench.MS(c.P50), bench.MS(c.P99), 100*sd.cpu.Seconds()/timed.Seconds())
		}
		writeStages(&stages, calls, sides)
		if cl != nil {
			late, relayed := cl.RelayLateness(true)
			explainPhase(&explain, calls, o.delay, sides, late, relayed)
		}
		for _, rt := range ratios {
			num, den := sides[rt.num].acks.Summary().P99, sides[rt.den].acks.Summary().P99
			r := float64(num) / float64(den)
			var per []float64
			met := 0
			for i := range o.turns {
				x := float64(sides[rt.num].p99s[i]) / float64(sides[rt.den].p99s[i])
				per = append(per, x)
				if rt.target > 0 && x <= rt.target {
					met++
				}
			}
			if rt.target > 0 && r > rt.target {
				missed[rt.name] = append(missed[rt.name], calls)
			}
			verdict := ""
			if rt.target > 0 {
				verdict = fmt.Sprintf(" — target ≤ %g×: %s; turn by turn the median is %.2f×, the target met in %d of %d turns", rt.target, verdictAtMost(r, rt.target, "×"), median(per), met, o.turns)
			} else {
				verdict = fmt.Sprintf("; turn by turn the median is %.2f×", median(per))
			}
			log("%d calls: %s p99 %.2f×", calls, rt.name, r)
			fmt.Fprintf(&summary, "- %d call%s: %s ack p99 **%.2f×**%s.\n", calls, plural(calls), rt.name, r, verdict)
		}
	}
	// One more turn of the single coordinator at 200 calls, under the CPU
	// profiler.
	prof := profileTurn(ctx, dir, sides[2].sink, size, turnLen[200])
	w("\n%s", summary.String())
	if len(loads) > 0 {
		w("\nThe machine's 1-minute load average at the start of each turn (this benchmark's own work included; anything else running on the machine shows here): median %.2f, max %.2f, on %d cores.\n", median(loads), slices.Max(loads), runtime.NumCPU())
	}
	w("\n#### Where a replicated commit's time goes\n\nRaft's own timers (hashicorp/raft reports them through go-metrics; recorded during each store's turns only, so the single coordinator's and the cluster's are apart), pooled over the same turns, beside the store's whole commit and the floor's. Each cell is p50 / p99 / max ms and the mean; *n* is how many samples. In the cluster the follower rows pool both followers, and *apply* pools all three members.\n\n%s", stages.String())
	w("%s", explain.String())
	for _, calls := range missed["single coordinator / floor"] {
		if calls == 1 {
			w("\nWhy the single coordinator misses 1.3× at 1 call: its log's write + fdatasync is about the floor's whole commit (the stage table), and what it adds is Raft's hand-offs between goroutines — with one write every 100 ms every goroutine on the way is asleep and must be woken — on top of a disk whose own tail varies from turn to turn as much as the margin (see the turn-by-turn medians).\n")
			continue
		}
		w("\nWhy the single coordinator misses 1.3× at %d calls: its log's write + fdatasync is about the floor's whole commit at p50 (the stage table); at the tail that fdatasync shares the disk with Badger's own writes, which the applier makes behind the ack — Badger stalls now and then (a value-log file filling or rotating: 25–70 ms, measured while preparing this section), and its writes then reach the disk in bursts. Before the applier (acks waited for the apply) the single coordinator's ack p99 here was 6.1× the floor's at 200 calls.\n", calls)
	}
	if len(missed["cluster / single coordinator"]) > 0 {
		w("\nWhy the cluster misses 2× (at %s): a replicated commit is at least the link's round trip and a follower's write + fdatasync — the leader's own fdatasync now runs alongside (third_party/raft/PATCHES.md) — and a follower writes each AppendEntries it is sent with its own fdatasync. Its 3 members share this one disk (three streams of fdatasyncs, three Badger appliers) and the 2 cores with the calls and the relays, which separate machines would not; as the load grows, so does each commit, and an ack waits for the commit under way before its own. Measured while preparing this section, in separate alternating runs (not in this report's run): keeping 2 or 4 group commits in flight through Raft — the store proposing the next before the last is committed, so an ack would wait for its own commit only — made things worse here, not better, both before the leader's parallel write (the cluster's ack p50 from 6.8–6.9 ms to 7.6–8.2 ms at 1 ms of delay) and after it (at 250 µs and 200 calls, the cluster's ack p99 from 7.4 ms to 26 ms and the single coordinator's from 2.1 to 3.4 ms), since smaller, more numerous Raft entries mean more fdatasyncs from the three members on the one disk and more work on the two cores; it was not kept.\n", callsList(missed["cluster / single coordinator"]))
	}
	if prof != "" {
		w("\nWhere the single coordinator's CPU goes: one more turn of it at 200 calls (%v) under Go's CPU profiler; the heaviest frames of callscribe, Raft, Badger and the crypto they use, by cumulative time (`go tool pprof -top -cum`):\n\n```\n%s```\n", turnLen[200], prof)
	}
	if cl != nil {
		changes := cl.LeaderChanges()
		w("\nThe cluster's leadership changed %d time%s after its first election, as its first member observed it (a leader lost counts, as does the next one elected: a leader steps down when it has not heard from a quorum for 300 ms, which a stall of this machine can cause); %d write%s refused by a member that had stopped leading went again through the new leader, its ack latency counting the wait.\n", max(changes, 1)-1, plural(int(max(changes, 1)-1)), cl.Failovers(), plural(int(cl.Failovers())))
	}
	return nil
}

// explainPhase says, from one number of calls' measurements, what a
// replicated commit is made of, for the single coordinator (sides[2])
// against the floor (sides[0]) and for the cluster (sides[3]).
func explainPhase(b *strings.Builder, calls int, delay time.Duration, sides []*side, late bench.Summary, relayed bool) {
	floor, single, cl := sides[0], sides[2], sides[3]
	p50 := func(sd *side, key string) float64 {
		s, _ := sd.stages.Stage(key)
		return ms(s.P50)
	}
	fc, sc, cc := ms(floor.commits.Summary().P50), ms(single.commits.Summary().P50), ms(cl.commits.Summary().P50)
	relay := ""
	if relayed {
		relay = fmt.Sprintf(", the relay writing each chunk %s ms late at p50 and %s ms at p99 — what it adds beyond the delay, which netem would not", bench.MS(late.P50), bench.MS(late.P99))
	}
	fmt.Fprintf(b, "At %d call%s, at p50: the single coordinator's commit (%.2f ms) is its log's write + fdatasync (%.2f ms; the floor's whole commit %.2f ms), then Raft's hand-offs between goroutines (committer → Raft's leader loop → its FSM goroutine, which hands the entry to the store's applier (%.2f ms), and back). The cluster's commit (%.2f ms) is the leader's write (%.2f ms; its fdatasync runs alongside) and the entries' round trip to a follower, of which a bare heartbeat takes %.2f ms (2 × %v of delay, TLS, Raft's RPC handling%s) and the follower's write + fdatasync %.2f ms. An ack waits for the commit under way, then its own (the store proposes one group commit at a time): the cluster's ack p50 is %s ms, %.1f of its commits.\n\n",
		calls, plural(calls), sc, p50(single, "raft.leader.dispatchLog"), fc, p50(single, "raft.fsm.apply"),
		cc, p50(cl, "raft.leader.dispatchLog"), p50(cl, "raft.replication.heartbeat"), delay, relay, p50(cl, "raft.rpc.appendEntries.storeLogs"),
		bench.MS(cl.acks.Summary().P50), ms(cl.acks.Summary().P50)/cc)
}

// callsList names numbers of calls: "1 call and 200 calls".
func callsList(calls []int) string {
	var names []string
	for _, c := range calls {
		names = append(names, fmt.Sprintf("%d call%s", c, plural(c)))
	}
	return strings.Join(names, " and ")
}

// loadAvg is the 1-minute load average.
func loadAvg() (float64, bool) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, false
	}
	var l float64
	if _, err := fmt.Sscan(string(b), &l); err != nil {
		return 0, false
	}
	return l, true
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// profileTurn runs one turn of sink at 200 calls under the CPU profiler
// and returns the heaviest frames of the replicate path ("" when the
// profile could not be taken or read).
func profileTurn(ctx context.Context, dir string, sink bench.Sink, size int, slice time.Duration) string {
	f, err := os.Create(filepath.Join(dir, "single.pprof"))
	if err != nil {
		return ""
	}
	defer os.Remove(f.Name())
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return ""
	}
	bench.Workload{Calls: 200, FrameSize: size, Interval: 100 * time.Millisecond, Duration: slice}.Run(ctx, sink)
	pprof.StopCPUProfile()
	f.Close()
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-cum", "-nodecount=300", f.Name()).Output()
	if err != nil {
		return ""
	}
	return pathFrames(string(out), 18)
}

// pathFrames keeps the header and the first n frames of the replicate
// path (callscribe, hashicorp/raft, Badger, crypto, syscalls) of a pprof
// -top listing.
func pathFrames(top string, n int) string {
	var b strings.Builder
	rows := 0
	for _, l := range strings.Split(top, "\n") {
		f := strings.Fields(l)
		switch {
		case strings.HasPrefix(strings.TrimSpace(l), "flat"), strings.HasPrefix(l, "Showing nodes"), strings.HasPrefix(l, "Duration:"):
			b.WriteString(l + "\n")
		case len(f) >= 6 && rows < n && (strings.Contains(f[5], "callscribe/") || strings.Contains(f[5], "hashicorp/raft") ||
			strings.Contains(f[5], "badger/") || strings.HasPrefix(f[5], "crypto/") || strings.HasPrefix(f[5], "syscall.") || strings.HasPrefix(f[5], "internal/runtime/syscall")):
			b.WriteString(l + "\n")
			rows++
		}
	}
	if rows == 0 {
		return ""
	}
	return b.String()
}

// raftStages are the timers of the replicate path, in its order.
// network: only a member with peers has it (the single coordinator's
// column would show the idle cluster's).
var raftStages = []struct {
	key, label string
	network    bool
}{
	{"raft.leader.dispatchLog", "leader: the batch written to its log (`raft.leader.dispatchLog`; alone, with its fdatasync; in the cluster the fdatasync runs alongside the round trip)", false},
	{"raft.replication.appendEntries.rpc", "leader → follower: AppendEntries sent → answered, pipelined, empty ones (sent every `CommitTimeout`) included (`raft.replication.appendEntries.rpc`)", true},
	{"raft.rpc.appendEntries.storeLogs", "follower: the entries written to its log + fdatasync (`raft.rpc.appendEntries.storeLogs`)", true},
	{"raft.replication.heartbeat", "leader → follower: a heartbeat's round trip, the link's own (`raft.replication.heartbeat`)", true},
	{"raft.commitTime", "leader: dispatched → committed (`raft.commitTime`)", false},
	{"raft.fsm.apply", "handed to the store, per entry (`raft.fsm.apply`; Badger applies it behind the ack)", false},
}

// writeStages writes the table of Raft's stages at one number of calls:
// a column per Raft side, beside the floor's and each side's commit.
func writeStages(b *strings.Builder, calls int, sides []*side) {
	var raft []*side
	for _, sd := range sides {
		if sd.stages != nil {
			raft = append(raft, sd)
		}
	}
	cell := func(s bench.Summary, mean time.Duration) string {
		if s.N == 0 {
			return "—"
		}
		return fmt.Sprintf("%s / %s / %s, mean %s (n %d)", bench.MS(s.P50), bench.MS(s.P99), bench.MS(s.Max), bench.MS(mean), s.N)
	}
	fmt.Fprintf(b, "| %d call%s |", calls, plural(calls))
	for _, sd := range raft {
		fmt.Fprintf(b, " %s |", sd.name)
	}
	b.WriteString("\n|---|" + strings.Repeat("---|", len(raft)) + "\n")
	fmt.Fprintf(b, "| floor: its commit, write + fdatasync | %s |%s\n", cell(commitStats(sides[0])), strings.Repeat(" |", max(len(raft)-1, 0)))
	b.WriteString("| the store's commit, propose → committed (as in the table above) |")
	for _, sd := range raft {
		fmt.Fprintf(b, " %s |", cell(commitStats(sd)))
	}
	b.WriteString("\n")
	for _, st := range raftStages {
		fmt.Fprintf(b, "| %s |", st.label)
		for _, sd := range raft {
			if st.network && !sd.networked {
				b.WriteString(" — |") // no peers: the samples are the idle cluster's
				continue
			}
			fmt.Fprintf(b, " %s |", cell(sd.stages.Stage(st.key)))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

// commitStats are a side's commits, with their mean.
func commitStats(sd *side) (bench.Summary, time.Duration) {
	s := sd.commits.Summary()
	if s.N == 0 {
		return s, 0
	}
	return s, sd.commits.Mean()
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// replaceSection replaces, in the markdown doc, the section whose heading
// line starts with heading (up to the next heading of level 2 or 3) with
// section; without one, section goes before the line starting with before,
// or at the end.
func replaceSection(doc, heading, before, section string) string {
	section = strings.Trim(section, "\n") + "\n\n"
	lines := strings.SplitAfter(doc, "\n")
	start, end := -1, len(lines)
	for i, l := range lines {
		switch {
		case start < 0 && strings.HasPrefix(l, heading):
			start = i
		case start >= 0 && (strings.HasPrefix(l, "## ") || strings.HasPrefix(l, "### ")):
			end = i
		}
		if start >= 0 && end < len(lines) {
			break
		}
	}
	if start < 0 {
		start, end = len(lines), len(lines)
		for i, l := range lines {
			if strings.HasPrefix(l, before) {
				start, end = i, i
				break
			}
		}
	}
	var b bytes.Buffer
	b.WriteString(strings.Join(lines[:start], ""))
	if start > 0 && !strings.HasSuffix(b.String(), "\n\n") {
		b.WriteString("\n")
	}
	b.WriteString(section)
	b.WriteString(strings.Join(lines[end:], ""))
	return b.String()
}
