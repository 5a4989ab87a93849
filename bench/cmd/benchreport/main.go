// Command benchreport runs callscribe's benchmarks on this machine and
// writes the results as markdown (make bench → BENCHMARKS.md).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/callscribe/callscribe/bench"
	"github.com/callscribe/callscribe/bench/brokers"
	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/models/engine"
)

func main() {
	out := flag.String("out", "BENCHMARKS.md", "report file")
	work := flag.String("dir", ".bench", "scratch directory (on the disk under test)")
	dur := flag.Duration("duration", 10*time.Second, "duration of each timed run")
	bin := flag.String("bin", "bin/callscribe", "the callscribe binary (its bench load drives the WebRTC consoles)")
	enginesOnly := flag.Bool("engines-only", false, "measure only the engines (accuracy, live channels) and print the section")
	vocabOnly := flag.Bool("vocabulary-only", false, "measure only the vocabulary pass and print its table")
	slowOnly := flag.Bool("slow-disk-only", false, "measure only the slow disk (needs root, cgroup v1 blkio and loop devices; skips otherwise) and print the section")
	soakOnly := flag.Bool("memory-soak-only", false, "run only the memory soak (1,000 calls through the bench appliance) and print the section")
	clusterOnly := flag.Bool("cluster-turns-only", false, "measure only the single coordinator and the 3-coordinator cluster against the floor (taking turns) and replace that section of -out")
	var co clusterOpts
	flag.DurationVar(&co.delay, "cluster-delay", 250*time.Microsecond, "one-way delay added between the cluster's members (250µs: a round trip of 0.5 ms, a loaded LAN, where one centre's coordinators sit)")
	flag.StringVar(&co.link, "cluster-link", "auto", "how the delay is added: netem (tc, in a network namespace), relay (in user space), or auto (netem where the kernel has it)")
	flag.IntVar(&co.turns, "cluster-turns", 25, "turns per store and number of calls in the cluster comparison")
	clusterChild := flag.Bool("cluster-child", false, "(internal) run the cluster comparison here, in the benchmark's network namespace, and print the section")
	probeDir := flag.String("fsync-probe", "", "(internal) run the fdatasync probe in this directory and print its result as JSON")
	probeDur := flag.Duration("probe-for", 2*time.Second, "(internal) how long the fdatasync probe runs")
	flag.Parse()
	if *probeDir != "" {
		if err := fsyncProbe(*probeDir, *probeDur); err != nil {
			fmt.Fprintln(os.Stderr, "benchreport:", err)
			os.Exit(1)
		}
		return
	}
	if co.link != "auto" && co.link != "netem" && co.link != "relay" {
		fmt.Fprintf(os.Stderr, "benchreport: -cluster-link %q: want auto, netem or relay\n", co.link)
		os.Exit(2)
	}
	if *clusterChild || *clusterOnly {
		if err := clusterOnlyRun(*clusterChild, *out, *work, *dur, co); err != nil {
			fmt.Fprintln(os.Stderr, "benchreport:", err)
			os.Exit(1)
		}
		return
	}
	if *slowOnly || *soakOnly {
		var b strings.Builder
		w := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
		log := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
		_ = os.MkdirAll(*work, 0o700)
		section := slowDiskSection
		if *soakOnly {
			section = memorySoakSection
		}
		err := section(context.Background(), w, log, *work, *bin)
		fmt.Print(b.String())
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchreport:", err)
			os.Exit(1)
		}
		return
	}
	if *enginesOnly || *vocabOnly {
		var b strings.Builder
		w := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
		log := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
		_ = os.MkdirAll(*work, 0o700)
		section := engineSection
		if *vocabOnly {
			section = vocabularyOnly
		}
		err := section(context.Background(), w, log, *work)
		fmt.Print(b.String())
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchreport:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*out, *work, *bin, *dur, co); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func fresh(dir, name string) (string, error) {
	p := filepath.Join(dir, name)
	if err := os.RemoveAll(p); err != nil {
		return "", err
	}
	// A store opened at p keeps its state record beside it: a new store
	// there must not be taken for the old one, damaged.
	if err := os.Remove(store.StatePath(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	return p, os.MkdirAll(p, 0o700)
}

// clusterOnlyRun runs the cluster comparison alone: as the child in the
// network namespace (print the section), or for -cluster-turns-only
// (replace the section in out, keeping the rest of the report).
func clusterOnlyRun(child bool, out, dir string, dur time.Duration, co clusterOpts) error {
	var b strings.Builder
	w := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	log := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	err := clusterSection(context.Background(), w, log, dir, dur, co)
	if child {
		fmt.Print(b.String())
		return err
	}
	if err != nil {
		return err
	}
	old, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	doc := replaceSection(string(old), clusterHeading, "### Most durable frames per second", b.String())
	if err := os.WriteFile(out, []byte(doc), 0o644); err != nil {
		return err
	}
	log("replaced the cluster comparison in %s", out)
	return nil
}

func run(out, dir, bin string, dur time.Duration, co clusterOpts) error {
	ctx := context.Background()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var b strings.Builder
	w := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	log := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }

	w("# callscribe benchmarks\n\n")
	w("Written by `make bench` (bench/cmd/benchreport) on %s. Every figure below comes from one run on this machine; re-run to regenerate.\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	w("| machine | |\n|---|---|\n| CPU | %s × %d |\n| kernel | %s |\n| Go | %s |\n| Badger | %s |\n| quic-go | %s |\n| scratch dir | `%s` (%s) |\n\n",
		cpuModel(), runtime.NumCPU(), kernel(), runtime.Version(), modVersion("github.com/dgraph-io/badger/v4"), modVersion("github.com/quic-go/quic-go"), dir, fsType(dir))

	// 0. The engines first (what a call-taker reads): accuracy per model
	// and path, the vocabulary pass, live channels per core.
	if err := engineSection(ctx, w, log, dir); err != nil {
		return err
	}

	// 1. The disk itself.
	p, _ := fresh(dir, "fsync")
	fs, err := bench.FsyncLatency(p, 300)
	if err != nil {
		return err
	}
	log("fsync: p50 %s p99 %s", bench.MS(fs.P50), bench.MS(fs.P99))
	w("## The disk: 4 KiB write + fdatasync, one at a time\n\n| n | p50 ms | p99 ms | max ms |\n|---|---|---|---|\n| %d | %s | %s | %s |\n\n", fs.N, bench.MS(fs.P50), bench.MS(fs.P99), bench.MS(fs.Max))

	// 2. Durable hand-off: Badger store as the coordinator uses it vs the floor.
	w("## Durable ack latency: one 100 ms frame per call every 100 ms, ack after fsync\n\n")
	// The brokers the reference design used for the same hand-off, where
	// they can be had on this machine.
	type sinkMaker func(string) (bench.Sink, func(), error)
	sinks := []struct {
		name string
		mk   sinkMaker
	}{{"floor", func(p string) (bench.Sink, func(), error) { return bench.FloorSink(p, nil) }},
		{"badger", func(p string) (bench.Sink, func(), error) { return bench.BadgerSink(p, nil) }}}
	var skipped []string
	versions := []string{"Badger " + modVersion("github.com/dgraph-io/badger/v4")}
	if _, err := os.Stat("/usr/lib/rabbitmq/bin/rabbitmq-server"); err == nil {
		versions = append(versions, "RabbitMQ "+brokers.RabbitMQVersion()+" (Debian)")
		sinks = append(sinks, struct {
			name string
			mk   sinkMaker
		}{"rabbitmq quorum", func(p string) (bench.Sink, func(), error) { return brokers.RabbitMQ(ctx, p) }})
	} else {
		skipped = append(skipped, "RabbitMQ: Debian's rabbitmq-server is not installed (`make bench` installs it)")
	}
	natsDir, _ := filepath.Abs(filepath.Join(dir, "..", ".bench-bin"))
	_ = os.MkdirAll(natsDir, 0o755)
	if bin, err := brokers.NATSServer(ctx, natsDir); err == nil {
		versions = append(versions, brokers.NATSVersion(bin)+" (go install)")
		sinks = append(sinks, struct {
			name string
			mk   sinkMaker
		}{"jetstream sync", func(p string) (bench.Sink, func(), error) { return brokers.JetStream(ctx, p, bin) }})
	} else {
		skipped = append(skipped, "NATS JetStream: "+err.Error())
	}
	w("Each frame is acknowledged only once it is on disk. *Floor* is a plain append-only file with group commit and fdatasync — the best any durable store can do on this disk. *Badger* is callscribe's segment store synced by itself, as the coordinator used it before it became a Raft cluster (group commit across calls, `SyncWrites`, `ValueThreshold` 64); the coordinator's path now, through its Raft log, is measured against the floor in the turns below. *RabbitMQ quorum* (the reference design's broker) is a durable quorum queue taking persistent messages, one channel per call, each publish waiting for its publisher confirm. *JetStream sync* is a NATS file-storage stream with `sync_interval: always` (fsync before every ack), each publish waiting for its ack. The brokers run on 127.0.0.1, started and stopped by the benchmark. Each store first takes 20 untimed writes (creating and mapping its files is paid once per process, not per call). %v per run. Versions: %s.\n\n", dur, strings.Join(versions, ", "))
	for _, s := range skipped {
		w("Skipped: %s.\n\n", s)
	}
	w("| store | calls | frame bytes | frames | p50 ms | p99 ms | max ms | errors |\n|---|---|---|---|---|---|---|---|\n")
	p99 := map[string]time.Duration{}
	for _, calls := range []int{1, 200} {
		for _, size := range []int{3200, 400} {
			if calls == 1 && size == 400 {
				continue
			}
			for _, s := range sinks {
				p, _ := fresh(dir, s.name)
				sink, closeFn, err := s.mk(p)
				if err != nil {
					return err
				}
				r := bench.Workload{Calls: calls, FrameSize: size, Interval: 100 * time.Millisecond, Duration: dur}.Run(ctx, sink)
				closeFn()
				p99[fmt.Sprintf("%s/%d/%d", s.name, calls, size)] = r.Latency.P99
				log("%s %d calls %d B: p50 %s p99 %s", s.name, calls, size, bench.MS(r.Latency.P50), bench.MS(r.Latency.P99))
				w("| %s | %d | %d | %d | %s | %s | %s | %d |\n", s.name, calls, size, r.Frames, bench.MS(r.Latency.P50), bench.MS(r.Latency.P99), bench.MS(r.Latency.Max), r.Errors)
			}
		}
	}
	if f, g := p99["floor/200/3200"], p99["badger/200/3200"]; f > 0 {
		w("\nAt 200 calls with 3,200-byte frames, in this table's single runs, Badger's p99 is %.2f× the floor's (the turns below are the measure of that target)", float64(g)/float64(f))
		for _, b := range []string{"rabbitmq quorum", "jetstream sync"} {
			if r := p99[b+"/200/3200"]; r > 0 {
				w(", and **%.2f×** %s's (target ≤ 0.5×: %s)", float64(g)/float64(r), b, verdictAtMost(float64(g)/float64(r), 0.5, "×"))
			}
		}
		w(".\n")
	}
	if err := floorTurns(ctx, w, log, dir, dur); err != nil {
		return err
	}
	if err := clusterSection(ctx, w, log, dir, dur, co); err != nil {
		return err
	}
	w("\n### Most durable frames per second (3,200 B, 64 writers, as fast as acks allow, 5 s)\n\n| store | frames/s |\n|---|---|\n")
	for _, s := range sinks {
		p, _ := fresh(dir, s.name)
		sink, closeFn, err := s.mk(p)
		if err != nil {
			return err
		}
		fps := bench.MaxThroughput(ctx, sink, 64, 3200, 5*time.Second)
		closeFn()
		log("%s max %.0f frames/s", s.name, fps)
		w("| %s | %.0f |\n", s.name, fps)
	}

	// 3. The whole pipeline over QUIC with a fast fake engine.
	w("\n## Pipeline: consoles → QUIC → coordinator → worker → console (fake instant engine)\n\n")
	w("Real QUIC on loopback, real Badger on disk, real console clients; the worker speaks the real worker protocol but answers instantly (a final every 10 frames), so this is callscribe's own cost. The console clients run in the same process, on the same 2 cores, as the coordinator: at 200 calls their QUIC stacks compete with it for CPU, which a real deployment (consoles on other machines) does not. *Ack* is measured at the console (frame sent → durable ack back), leaving out each call's first second (its QUIC handshake). *To worker* is frame received → written to the worker's stream (durable first). *Final → console* is a worker's final received → persisted (synced) and queued to the console. %v per run.\n\n", dur)
	w("| calls | frames acked | lost | finalised | ack p50 ms | ack p99 ms | to worker p50 / p99 ms | final → console p50 / p99 ms |\n|---|---|---|---|---|---|---|---|\n")
	for _, calls := range []int{1, 200} {
		p, _ := fresh(dir, "pipe")
		r, err := bench.Pipeline(ctx, p, calls, dur)
		if err != nil {
			return err
		}
		log("pipeline %d calls: ack p50 %s p99 %s; to worker p99 %.2f; final→console p99 %.2f", calls, bench.MS(r.Ack.P50), bench.MS(r.Ack.P99), r.Stats.ToWorker.P99MS, r.Stats.ToConsole.P99MS)
		w("| %d | %d | %d | %d/%d | %s | %s | %.2f / %.2f | %.2f / %.2f |\n", calls, r.Frames, r.FramesLost, r.Finalised, calls, bench.MS(r.Ack.P50), bench.MS(r.Ack.P99),
			r.Stats.ToWorker.P50MS, r.Stats.ToWorker.P99MS, r.Stats.ToConsole.P50MS, r.Stats.ToConsole.P99MS)
	}

	// 3b. The same pipeline on a slow disk: acks slow down, the transcript
	// must not.
	if err := slowDiskSection(ctx, w, log, dir, bin); err != nil {
		return err
	}

	// 4. Capacity: QUIC consoles from a separate load generator.
	rtf, audioS, rtfErr := engineRTF() // measured before the loaded runs
	embedded, err := realEngineSection(ctx, w, log, bin)
	if err != nil {
		return err
	}
	if err := capacitySection(ctx, w, log, dir, bin, dur, rtf, rtfErr, embedded); err != nil {
		return err
	}

	// 5. WebRTC consoles.
	if err := whipSection(ctx, w, log, dir, bin, dur); err != nil {
		return err
	}

	// 6. Memory: 1,000 calls come and go.
	if err := memorySoakSection(ctx, w, log, dir, bin); err != nil {
		return err
	}

	_ = audioS
	if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
		return err
	}
	log("wrote %s", out)
	return nil
}

// engineRTF decodes the librivox clips on one decoder and returns CPU
// seconds per audio second.
func engineRTF() (float64, float64, error) {
	cat, err := models.Load("")
	if err != nil {
		return 0, 0, err
	}
	m, _ := cat.Get("")
	f, err := engine.NewFactory(m)
	if err != nil {
		return 0, 0, err
	}
	in, err := f()
	if err != nil {
		return 0, 0, err
	}
	defer in.Close()
	clips, _ := filepath.Glob("/usr/share/pocketsphinx/test/data/librivox/*.wav")
	if len(clips) == 0 {
		return 0, 0, fmt.Errorf("pocketsphinx-testdata not installed")
	}
	var samples int
	var cpu time.Duration
	for _, c := range clips {
		w, err := audio.ReadWAVFile(c)
		if err != nil {
			return 0, 0, err
		}
		pcm := w.Channel(0)
		samples += len(pcm)
		t0 := cpuTime()
		if _, err := engine.Transcribe(in, pcm); err != nil {
			return 0, 0, err
		}
		cpu += cpuTime() - t0
	}
	a := float64(samples) / 16000
	return cpu.Seconds() / a, a, nil
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

func modVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == path {
				return d.Version
			}
		}
	}
	return "?"
}
