package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/callscribe/callscribe/bench"
	"github.com/callscribe/callscribe/bench/plot"
	"github.com/callscribe/callscribe/models"
)

// capacitySection drives N QUIC consoles (a separate `callscribe bench
// load` process) against an in-process appliance with the fast fake engine,
// for growing N, and writes the capacity table and its plots.
func capacitySection(ctx context.Context, w, log func(string, ...any), dir, bin string, dur time.Duration, rtf float64, rtfErr error, embedded *bench.LoadResult) error {
	w("\n## Capacity: how many calls, as N grows\n\n")
	w("`callscribe bench load --transport quic` (a separate process) drives N consoles, one call each, one 100 ms L16 frame (3,200 B) per call every 100 ms for %v, against an in-process coordinator (real QUIC, real Badger) with the fast fake engine, so this is the system's own cost. *Console ack* is frame sent → durable ack received, at the console. *System-added* latencies are the coordinator's: frame received → written to the worker's stream (durable first), and worker final → persisted and queued to the console (p99 over its last 8,192 events). CPU and memory are the coordinator process's over the steady state (every call started, none ended); the load generator runs on the same 2 cores. The 500-call run is profiled (below).\n\n", dur)
	w("| calls | frames sent | lost | finalised | console ack p50 / p99 ms | frame → worker p50 / p99 ms | final → console p50 / p99 ms | coordinator CPU | per stream | streams per core | memory per call |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	var ackS, wrkS, conS, cpuS plot.Series
	ackS.Name, wrkS.Name, conS.Name, cpuS.Name = "console ack p99", "frame -> worker p99", "final -> console p99", "coordinator CPU % of a core"
	carried := 0
	var at500, atCarried *bench.LoadResult
	var profile, profileCum string
	for _, n := range []int{10, 100, 500, 1000} {
		p, _ := fresh(dir, "cap")
		app, err := bench.StartAppliance(ctx, p, n+8)
		if err != nil {
			return err
		}
		var prof *os.File
		if n == 500 {
			prof, _ = os.Create(filepath.Join(dir, "cpu.pprof"))
			if prof != nil {
				_ = pprof.StartCPUProfile(prof)
			}
		}
		r, loadErr := benchLoad(ctx, bin, "--transport", "quic", "--calls", fmt.Sprint(n), "--duration", dur.String(),
			"--server", app.Coordinator.QUICAddr().String(), "--http", "http://"+app.Coordinator.HTTPAddr().String(), "--ca", filepath.Join(p, "ca.pem"),
			"--token", app.Token, "--operator-token", bench.OperatorToken, "--prefix", fmt.Sprintf("cap%d", n))
		if prof != nil {
			pprof.StopCPUProfile()
			prof.Close()
			out, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=18", prof.Name()).Output()
			if err == nil {
				profile = string(out)
			}
			if out, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=200", prof.Name()).Output(); err == nil {
				profileCum = ownFrames(string(out), 24)
			}
		}
		app.Stop()
		if loadErr == nil && r.Server == nil {
			loadErr = fmt.Errorf("no appliance figures: %v", r.Errors)
		}
		if loadErr != nil {
			return fmt.Errorf("bench load %d calls: %w", n, loadErr)
		}
		s := r.Server
		log("capacity %d calls: lost %d ack p99 %s to worker p99 %.2f cpu %.0f%%", n, r.Lost, bench.MS(r.Ack.P99), s.ToWorker.P99MS, s.CPUTotal)
		w("| %d | %d | %d | %d | %s / %s | %.2f / %.2f | %.2f / %.2f | %.0f %% | %.3f %% | %.0f | %.0f KiB |\n", n, r.Sent, r.Lost, r.Finalised,
			bench.MS(r.Ack.P50), bench.MS(r.Ack.P99), s.ToWorker.P50MS, s.ToWorker.P99MS, s.ToConsole.P50MS, s.ToConsole.P99MS,
			s.CPUTotal, s.CPUPerStream, 100/s.CPUPerStream, s.RSSPerCall/1024)
		x := float64(n)
		ackS.X, ackS.Y = append(ackS.X, x), append(ackS.Y, float64(r.Ack.P99.Microseconds())/1000)
		wrkS.X, wrkS.Y = append(wrkS.X, x), append(wrkS.Y, s.ToWorker.P99MS)
		conS.X, conS.Y = append(conS.X, x), append(conS.Y, s.ToConsole.P99MS)
		cpuS.X, cpuS.Y = append(cpuS.X, x), append(cpuS.Y, s.CPUTotal)
		if r.Lost == 0 && r.Connected == n && r.Ack.P99 < 20*time.Millisecond {
			carried, atCarried = n, &r
		}
		if n == 500 {
			at500 = &r
		}
	}
	plots := "bench/plots"
	if err := os.MkdirAll(plots, 0o755); err != nil {
		return err
	}
	if err := plot.PNG(filepath.Join(plots, "latency.png"), "p99 latency vs concurrent calls (QUIC, fake engine)", "concurrent calls (log)", "ms", []plot.Series{ackS, wrkS, conS}); err != nil {
		return err
	}
	if err := plot.PNG(filepath.Join(plots, "cpu.png"), "coordinator CPU vs concurrent calls (QUIC, fake engine)", "concurrent calls (log)", "% of one core", []plot.Series{cpuS}); err != nil {
		return err
	}
	w("\nMemory per call is the growth of resident memory, which the garbage collector makes noisy (it can shrink between runs). Past the point where the coordinator keeps up, its latencies grow without bound while nothing is lost: frames wait in the consoles' send windows until they are acknowledged.\n")
	w("\n![p99 latency vs calls](bench/plots/latency.png)\n![coordinator CPU vs calls](bench/plots/cpu.png)\n\n")
	w("### Capacity table\n\n| question | answer on this machine |\n|---|---|\n")
	if embedded != nil {
		per := embedded.Server.ApplianceCPUPerStream
		w("| call channels per CPU core with the embedded engine, whole appliance (coordinator, agent, %s workers, partials on), measured with %d channels of real speech | **%.1f** channels, i.e. **%.1f** two-channel calls |\n", models.Default, embedded.Calls, 100/per, 50/per)
	}
	if rtfErr == nil {
		w("| the same for the decoder alone, finals only (%s RTF %.3f on the librivox clips) | %.1f channels; %.1f two-channel calls |\n", models.Default, rtf, 1/rtf, 1/(2*rtf))
	}
	if embedded != nil {
		w("| call channels the largest whole-appliance run carried (one worker per `streams_per_instance` channels) | %d, end → final p99 %s ms |\n", embedded.Calls, bench.MS(embedded.EndToFinal.P99))
	}
	w("| calls the coordinator carried on %d cores with the fast engine (0 lost, console ack p99 < 20 ms), of the steps run | %d |\n", runtime.NumCPU(), carried)
	w("\n### Targets\n\n")
	if at500 != nil {
		s := at500.Server
		worst := math.Max(s.ToWorker.P99MS, s.ToConsole.P99MS)
		verdict := "met"
		if worst > 5 || at500.Lost != 0 {
			verdict = fmt.Sprintf("**missed** by %.1f ms (%.1f×)", worst-5, worst/5)
		}
		w("- System-added latency p99 ≤ 5 ms at 500 calls with the fast engine, 0 lost: frame → worker %.2f ms, final → console %.2f ms, %d lost — %s.\n", s.ToWorker.P99MS, s.ToConsole.P99MS, at500.Lost, verdict)
	}
	if atCarried != nil {
		// Measured where the coordinator still keeps up: past that point it
		// is starved of CPU and its per-stream cost reads low.
		perCore := 100 / atCarried.Server.CPUPerStream
		verdict := "met"
		if perCore < 150 {
			verdict = fmt.Sprintf("**missed**: %.0f (%.0f %% of the target)", perCore, 100*perCore/150)
		}
		w("- At least 150 ingest streams per core: %.0f streams per core of coordinator CPU at %d calls (the most it carried; beyond, it is starved of CPU by the load generator on the same 2 cores and its per-stream cost reads low) — %s.\n", perCore, carried, verdict)
	}
	if profile != "" {
		w("\nWhere the coordinator's CPU goes at 500 calls (`go tool pprof -top` of the run; the process also runs the fake worker):\n\n```\n%s```\n", profile)
	}
	if profileCum != "" {
		w("\nThe same profile by cumulative time, callscribe's, quic-go's and Badger's own functions only (`go tool pprof -top -cum`, filtered): which paths spend those system calls and copies.\n\n```\n%s```\n", profileCum)
	}
	return nil
}

// ownFrames keeps the header and the first n rows of a `pprof -top` listing
// that belong to callscribe, quic-go or Badger, dropping the runtime's and
// the standard library's frames.
func ownFrames(top string, n int) string {
	var b strings.Builder
	rows := 0
	for _, l := range strings.Split(top, "\n") {
		f := strings.Fields(l)
		own := len(f) >= 6 && (strings.Contains(f[5], "callscribe/") || strings.Contains(f[5], "quic-go/") || strings.Contains(f[5], "badger/"))
		switch {
		case strings.HasPrefix(strings.TrimSpace(l), "flat"):
			b.WriteString(l + "\n")
		case own && rows < n:
			b.WriteString(l + "\n")
			rows++
		}
	}
	if rows == 0 {
		return ""
	}
	return b.String()
}

// verdictAtMost says whether got met a target of at most want, and if not by
// how much.
func verdictAtMost(got, want float64, unit string) string {
	if got <= want {
		return "met"
	}
	return fmt.Sprintf("**missed** by %.2f%s (%.0f %% over)", got-want, unit, 100*(got/want-1))
}

// realEngineSection drives the appliance with its real engine
// (default-model workers, `bench load --engine real`) and real speech, for
// growing numbers of call channels up to what placement allows on this
// machine, and returns the largest run.
func realEngineSection(ctx context.Context, w, log func(string, ...any), bin string) (*bench.LoadResult, error) {
	const dur = 20 * time.Second
	const clip = "assets/demo-call.wav"
	w("\n## Capacity with the embedded engine (%s workers, whole appliance)\n\n", models.Default)
	w("`callscribe bench load --engine real --audio %s` starts a whole appliance (`callscribe dev`: coordinator, agent and worker processes of the default model, one worker per `streams_per_instance` channels) on loopback, waits until every channel has a worker slot, and drives N consoles, one channel each, looping the bundled call recording's caller channel, each from its own offset, at real-time pace for %v. *Appliance CPU* is every appliance process's CPU (read from /proc over the steady state), the load generator's not counted. *End → final* is from a console's last frame to its call finalised: it stays a few hundred ms while the workers keep up and grows with the run when they do not.\n\n", clip, dur)
	w("| channels | frames sent | lost | finalised | end → final p50 / p99 ms | final → console p99 ms | appliance CPU | per channel | channels per core | coordinator CPU per channel |\n|---|---|---|---|---|---|---|---|---|---|\n")
	var last *bench.LoadResult
	for _, n := range []int{1, 4, 8, 12} {
		r, err := benchLoad(ctx, bin, "--engine", "real", "--transport", "quic", "--calls", fmt.Sprint(n), "--duration", dur.String(), "--audio", clip, "--prefix", fmt.Sprintf("real%d", n))
		if err == nil && (r.Server == nil || r.Server.ApplianceCPUPerStream <= 0) {
			err = fmt.Errorf("no appliance figures: %v", r.Errors)
		}
		if err != nil {
			w("\nThe run with %d channels failed: %v.\n", n, err)
			log("real engine %d channels: %v", n, err)
			break
		}
		s := r.Server
		log("real engine %d channels: lost %d end→final p99 %s appliance %.0f%% (%.1f%%/channel)", n, r.Lost, bench.MS(r.EndToFinal.P99), s.ApplianceCPUTotal, s.ApplianceCPUPerStream)
		w("| %d | %d | %d | %d | %s / %s | %.2f | %.0f %% | %.1f %% | %.1f | %.2f %% |\n", n, r.Sent, r.Lost, r.Finalised, bench.MS(r.EndToFinal.P50), bench.MS(r.EndToFinal.P99),
			s.ToConsole.P99MS, s.ApplianceCPUTotal, s.ApplianceCPUPerStream, 100/s.ApplianceCPUPerStream, s.CPUPerStream)
		last = &r
	}
	return last, nil
}

// benchLoad runs the load generator (`bin bench load ARGS --json`) and
// decodes its result (a run that lost frames decodes too: its result says
// how many).
func benchLoad(ctx context.Context, bin string, args ...string) (bench.LoadResult, error) {
	var r bench.LoadResult
	cmd := exec.CommandContext(ctx, bin, append(append([]string{"bench", "load"}, args...), "--json")...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		return r, fmt.Errorf("%v (%v): %s %s", err, runErr, stdout.String(), stderr.String())
	}
	return r, nil
}

// whipSection measures WebRTC (WHIP) ingest: the coordinator's CPU per
// stream and the most concurrent calls it carries with ack p99 under 20 ms.
func whipSection(ctx context.Context, w, log func(string, ...any), dir, bin string, dur time.Duration) error {
	w("\n## WebRTC consoles (WHIP): CPU per stream and the most concurrent calls\n\n")
	w("An in-process coordinator (real Badger, real pion WebRTC, the fake instant worker) takes N WHIP calls from `callscribe bench load --transport whip`, a separate process of real pion consoles each sending one 20 ms Opus packet every 20 ms for %v. *CPU* is the coordinator process's (and its fake worker's) CPU time per stream, in %% of one core; the consoles' own CPU is not counted, but they run on the same 2 cores and compete with it. *Ack* is the coordinator's RTP packet received → durable in Badger (WebRTC has no acks back; p99 over the last 8,192 packets of the run). *Lost* is packets sent minus frames stored. The steps stop at the first N where ack p99 passes 20 ms, a packet is lost or a call cannot connect.\n\n", dur)
	w("| calls | connected | packets sent | lost | finalised | ack p50 ms | ack p99 ms | to worker p99 ms | coordinator CPU per stream | coordinator CPU total |\n|---|---|---|---|---|---|---|---|---|---|\n")
	best, firstN, firstCPU := 0, 0, 0.0
	var marginal []string
	for _, n := range []int{10, 25, 50, 75, 100, 150, 200, 300} {
		p, _ := fresh(dir, "whip")
		app, err := bench.StartAppliance(ctx, p, n+8)
		if err != nil {
			return err
		}
		c0, t0 := cpuTime(), time.Now()
		r, loadErr := benchLoad(ctx, bin, "--transport", "whip", "--calls", fmt.Sprint(n), "--duration", dur.String(),
			"--http", "http://"+app.Coordinator.HTTPAddr().String(), "--token", app.Token, "--operator-token", bench.OperatorToken, "--prefix", fmt.Sprintf("whip%d", n))
		cpu, wall := cpuTime()-c0, time.Since(t0)
		st := app.Coordinator.Stats()
		app.Stop()
		if loadErr != nil {
			return fmt.Errorf("bench load %d WHIP calls: %w", n, loadErr)
		}
		perStream := 100 * cpu.Seconds() / wall.Seconds() / float64(n)
		total := 100 * cpu.Seconds() / wall.Seconds()
		if firstN == 0 {
			firstN, firstCPU = n, total
		} else {
			marginal = append(marginal, fmt.Sprintf("%.2f %% (%d→%d)", (total-firstCPU)/float64(n-firstN), firstN, n))
		}
		log("whip %d calls: connected %d lost %d ack p99 %.2f cpu/stream %.2f%%", n, r.Connected, r.Lost, st.Ack.P99MS, perStream)
		w("| %d | %d | %d | %d | %d | %.2f | %.2f | %.2f | %.2f %% | %.0f %% |\n", n, r.Connected, r.Sent, r.Lost, r.Finalised, st.Ack.P50MS, st.Ack.P99MS, st.ToWorker.P99MS,
			perStream, 100*cpu.Seconds()/wall.Seconds())
		if r.Lost != 0 || r.Connected != n || st.Ack.P99MS >= 20 {
			break
		}
		best = n
	}
	w("\nMost concurrent WHIP calls sustained with ack p99 under 20 ms and nothing lost: **%d** (of the steps tried).\n", best)
	w("CPU per stream includes fixed costs (the fake worker, timers) that shrink per stream as N grows; the marginal cost of one more stream, from the first step to each later one: %s.\n", strings.Join(marginal, ", "))
	return nil
}
