package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/callscribe/callscribe/bench"
)

// The slow-disk section's sizes: 20 calls of 20 s at each write-IOPS limit
// (0: none) keep it under about 3 minutes.
const (
	slowCalls    = 20
	slowDuration = 20 * time.Second
	slowImage    = 1 << 30
	probeFor     = 2 * time.Second
)

var slowLimits = []int{0, 400, 100, 40, 20}

// slowRow is one limit's measurement.
type slowRow struct {
	limit      int
	probe      bench.FsyncProbe
	probeIOs   int64
	load       bench.LoadResult
	window     time.Duration
	writes     bench.Histogram // writes per group commit, over the run
	commitSecs bench.Histogram // one group commit's time, over the run
	frames     float64         // frames stored over the run
	finals     float64         // finals persisted over the run
	ios        int64           // write requests the appliance issued to the disk over the run
	bytes      int64           // bytes it wrote to the disk over the run
	held       int64           // bytes its data directory's files hold on disk after the run
	errs       []string
}

// slowDiskSection puts the appliance's data directory on an ext4 loop
// device whose writes are throttled (cgroup v1 blkio) and drives it with 20
// QUIC consoles at falling write IOPS: the acks should slow down, the
// transcript not.
func slowDiskSection(ctx context.Context, w, log func(string, ...any), dir, bin string) error {
	start := time.Now()
	w("\n## A slow disk: does it slow the acks and not the transcript?\n\n")
	if why := bench.SlowDiskUnavailable(); why != "" {
		w("Not measured on this machine: %s.\n", why)
		log("slow disk: skipped: %s", why)
		return nil
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM) // clean up on ^C too
	defer stop()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bin, err = filepath.Abs(bin)
	if err != nil {
		return err
	}
	d, err := bench.NewSlowDisk(ctx, dir, slowImage)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w("Not measured on this machine: cannot make the slow disk: %v.\n", err)
		log("slow disk: skipped: %v", err)
		return nil
	}
	defer func() {
		if err := d.Close(); err != nil {
			w("\n**Clean-up failed**: %v.\n", err)
			log("slow disk: clean-up: %v", err)
		}
	}()
	log("slow disk: %s on %s (%s), cgroup %s", d.Mount, d.Loop, d.MajMin, d.Cgroup)
	w("The appliance's data directory is on an ext4 filesystem made by the benchmark on a loop device (%s, a sparse %d GiB image in the scratch directory, so unthrottled it syncs at the scratch disk's speed). `callscribe bench appliance` — the coordinator with the instant fake engine that `bench load --engine fake` starts — runs as a process of its own, started inside a cgroup v1 blkio group (it joins `cgroup.procs` before it execs, so all its threads are in it from its first write), with `blkio.throttle.write_iops_device` set to the limit once it is ready. Throttling applies to the write requests its own threads issue, which are the ones Badger syncs (`msync`); the ext4 journal's commits are made by the kernel's jbd2 thread and are not throttled. `callscribe bench load --transport quic` (outside the group) then drives %d consoles, one 100 ms L16 frame per call every 100 ms for %v, with acks pipelined (many frames of a channel in flight). The appliance's `/metrics` is read before and after the load: *writes per commit* is the `callscribe_store_commit_writes` histogram's difference (a write is one channel's batch of frames, a final or a call record; the max is the histogram bucket it fell in), *frames per commit* is `callscribe_frames_stored_total`'s difference over the commits', *write requests* and *KiB per commit* are what the group issued to the loop device (`blkio.throttle.io_serviced`, `io_service_bytes`) over the commits, *committer busy* is the commits' time over the run's. *End → finalised* is from a console's last frame to its call finalised at the console. A *commit period* is the run's time over its commits (when the committer is busy all the time, one commit's duration). A fresh appliance and data directory for each limit.\n\n",
		d.Loop, slowImage>>30, slowCalls, slowDuration)

	var rows []*slowRow
	for _, limit := range slowLimits {
		r, err := slowDiskRow(ctx, log, d, self, bin, limit)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			w("The run at %s failed: %v.\n\n", limitName(limit), err)
			log("slow disk %s: %v", limitName(limit), err)
			break
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		return nil
	}

	w("### Does the throttle throttle? 4 KiB append + fdatasync, one at a time, for %v inside the group\n\n", probeFor)
	w("| write IOPS limit | fdatasyncs | per second | write requests per fdatasync | fdatasync p50 / p99 ms | |\n|---|---|---|---|---|---|\n")
	for _, r := range rows {
		w("| %s | %d | **%.0f** | %.2f | %s / %s | %s |\n", limitName(r.limit), r.probe.Syncs, r.probe.PerSecond(), perSync(r), bench.MS(r.probe.Latency.P50), bench.MS(r.probe.Latency.P99), throttleVerdict(r))
	}

	w("\n### The calls at each limit\n\n")
	w("| write IOPS limit | console ack p50 / p99 / max ms | end → finalised p50 / p99 ms | frames sent / lost | finalised | commits per s | commit mean ms | committer busy | writes per commit mean / max | frames per commit | write requests per commit | KiB per commit | ack p50 / end → finalised p50 in commit periods |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		l := r.load
		n := r.writes.Count
		w("| %s | %s / **%s** / %s | %s / **%s** | %d / %d | %d / %d | %.1f | %.1f | %.0f %% | %.1f / %s | %.1f | %.1f | %.1f | %.1f / %.1f |\n", limitName(r.limit),
			bench.MS(l.Ack.P50), bench.MS(l.Ack.P99), bench.MS(l.Ack.Max), bench.MS(l.EndToFinal.P50), bench.MS(l.EndToFinal.P99), l.Sent, l.Lost, l.Finalised, l.Calls,
			r.commitsPerSec(), 1000*r.commitSecs.Mean(), 100*r.busy(), r.writes.Mean(), bucketName(r.writes),
			r.frames/n, float64(r.ios)/n, float64(r.bytes)/n/1024, r.inPeriods(l.Ack.P50), r.inPeriods(l.EndToFinal.P50))
		for _, e := range r.errs {
			w("\n- at %s: %s", limitName(r.limit), e)
		}
	}
	w("\n%s\n", slowVerdict(rows))
	took := time.Since(start)
	log("slow disk: section took %s", took.Round(time.Second))
	w("\nThe section took %.0f s, making and removing the filesystem included.\n", took.Seconds())
	return nil
}

// slowDiskRow measures one limit: the fdatasync probe in the group, then a
// fresh appliance in the group under load.
func slowDiskRow(ctx context.Context, log func(string, ...any), d *bench.SlowDisk, self, bin string, limit int) (*slowRow, error) {
	r := &slowRow{limit: limit}
	if err := d.Throttle(limit); err != nil {
		return nil, err
	}
	io0, err := d.WriteIOs()
	if err != nil {
		return nil, err
	}
	out, err := d.Command(ctx, self, "-fsync-probe", d.Mount, "-probe-for", probeFor.String()).Output()
	if err != nil {
		return nil, fmt.Errorf("fdatasync probe: %w", err)
	}
	if err := json.Unmarshal(out, &r.probe); err != nil {
		return nil, fmt.Errorf("fdatasync probe: %w: %s", err, out)
	}
	io1, err := d.WriteIOs()
	if err != nil {
		return nil, err
	}
	r.probeIOs = io1 - io0
	log("slow disk %s: probe %d fdatasyncs in %s (%.0f/s), %d write requests", limitName(limit), r.probe.Syncs, r.probe.Elapsed.Round(time.Millisecond), r.probe.PerSecond(), r.probeIOs)

	// The appliance starts unthrottled (its start is not what is measured)
	// and is throttled once ready.
	if err := d.Throttle(0); err != nil {
		return nil, err
	}
	data := filepath.Join(d.Mount, fmt.Sprintf("appliance-%d", limit))
	defer os.RemoveAll(data)
	app, err := bench.StartApplianceProcess(ctx, d.Command, bin, data, slowCalls+8)
	if err != nil {
		return nil, err
	}
	defer app.Stop()
	defer d.Throttle(0) // (deferred first: runs before Stop) a throttled Badger closes slowly
	if !slices.Contains(d.Procs(), app.Cmd.Process.Pid) {
		return nil, fmt.Errorf("the appliance (pid %d) is not in %s", app.Cmd.Process.Pid, d.Cgroup)
	}
	if err := d.Throttle(limit); err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: 5 * time.Second}
	m0, err := bench.MetricsText(ctx, client, app.HTTP)
	if err != nil {
		return nil, err
	}
	io0, err = d.WriteIOs()
	if err != nil {
		return nil, err
	}
	b0, err := d.WriteBytes()
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	lctx, cancel := context.WithTimeout(ctx, slowDuration+2*time.Minute)
	defer cancel()
	r.load, err = benchLoad(lctx, bin, "--transport", "quic", "--calls", fmt.Sprint(slowCalls), "--duration", slowDuration.String(),
		"--server", app.QUIC, "--http", app.HTTP, "--ca", app.CA, "--token", app.Token, "--operator-token", bench.OperatorToken, "--prefix", fmt.Sprintf("slow%d", limit))
	if err != nil {
		return nil, fmt.Errorf("bench load: %w", err)
	}
	r.window = time.Since(t0)
	m1, err := bench.MetricsText(ctx, client, app.HTTP)
	if err != nil {
		return nil, err
	}
	io1, err = d.WriteIOs()
	if err != nil {
		return nil, err
	}
	b1, err := d.WriteBytes()
	if err != nil {
		return nil, err
	}
	r.ios, r.bytes = io1-io0, b1-b0
	r.held = allocated(data)
	if r.writes, err = histogramDiff(m0, m1, "callscribe_store_commit_writes"); err != nil {
		return nil, err
	}
	if r.commitSecs, err = histogramDiff(m0, m1, "callscribe_store_commit_seconds"); err != nil {
		return nil, err
	}
	const stored, finals = "callscribe_frames_stored_total", "callscribe_finals_total"
	s0, err0 := bench.Samples(m0, stored, finals)
	s1, err1 := bench.Samples(m1, stored, finals)
	if err := errors.Join(err0, err1); err != nil {
		return nil, err
	}
	r.frames, r.finals = s1[stored]-s0[stored], s1[finals]-s0[finals]
	if r.writes.Count == 0 {
		return nil, errors.New("no group commits during the load")
	}
	r.errs = r.load.Errors
	l := r.load
	log("slow disk %s: ack p50 %s p99 %s, %.1f commits/s, %.1f writes/commit, %.1f frames/commit, %.1f IOs/commit, lost %d, finalised %d/%d, end→final p99 %s",
		limitName(limit), bench.MS(l.Ack.P50), bench.MS(l.Ack.P99), r.writes.Count/r.window.Seconds(), r.writes.Mean(), r.frames/r.writes.Count,
		float64(r.ios)/r.writes.Count, l.Lost, l.Finalised, l.Calls, bench.MS(l.EndToFinal.P99))
	return r, nil
}

// histogramDiff is histogram name's observations between two /metrics texts.
func histogramDiff(before, after, name string) (bench.Histogram, error) {
	b, err := bench.ParseHistogram(before, name)
	if err != nil {
		return bench.Histogram{}, err
	}
	a, err := bench.ParseHistogram(after, name)
	if err != nil {
		return bench.Histogram{}, err
	}
	return a.Sub(b)
}

func limitName(limit int) string {
	if limit == 0 {
		return "none"
	}
	return fmt.Sprint(limit)
}

// bucketName writes the bucket of a count histogram's largest observation
// ("17–32", or "1").
func bucketName(h bench.Histogram) string {
	lo, hi := h.MaxBucket()
	switch {
	case h.Count == 0:
		return "—"
	case math.IsInf(hi, 1):
		return fmt.Sprintf("> %g", lo)
	case math.Floor(lo)+1 >= hi:
		return fmt.Sprintf("%g", hi)
	}
	return fmt.Sprintf("%g–%g", math.Floor(lo)+1, hi)
}

func perSync(r *slowRow) float64 {
	if r.probe.Syncs == 0 {
		return 0
	}
	return float64(r.probeIOs) / float64(r.probe.Syncs)
}

// throttleVerdict says whether the probe's write requests kept to the
// limit: more than 10 % over it is no throttle; well under it, the disk was
// slower than the limit at the time.
func throttleVerdict(r *slowRow) string {
	if r.limit == 0 {
		return "the disk's own rate"
	}
	ios := r.probe.PerSecond() * perSync(r)
	pct := 100 * ios / float64(r.limit)
	switch {
	case ios > 1.1*float64(r.limit):
		return fmt.Sprintf("**not throttled**: %.0f write requests/s over a limit of %d", ios, r.limit)
	case ios < 0.8*float64(r.limit):
		return fmt.Sprintf("under the limit (%.0f %%): the disk itself was slower than the limit then", pct)
	}
	return fmt.Sprintf("throttled to the limit (%.0f %%)", pct)
}

func (r *slowRow) commitsPerSec() float64 { return r.writes.Count / r.window.Seconds() }

// busy is the share of the run the committer spent committing.
func (r *slowRow) busy() float64 { return r.commitSecs.Sum / r.window.Seconds() }

// inPeriods is d in commit periods (the run's time over its commits).
func (r *slowRow) inPeriods(d time.Duration) float64 { return d.Seconds() * r.commitsPerSec() }

// slowVerdict sums up the rows: how the acks and the lag moved from the
// fastest to the slowest disk, whether the target held, and why, in
// commit periods, where the committer was saturated.
func slowVerdict(rows []*slowRow) string {
	first, last := rows[0], rows[len(rows)-1]
	lost := 0
	var late []string
	for _, r := range rows {
		lost += r.load.Lost + (r.load.Calls - r.load.Finalised)
		if r.load.EndToFinal.P99 > time.Second {
			late = append(late, fmt.Sprintf("%s IOPS (p50 %s ms, p99 %s ms)", limitName(r.limit), bench.MS(r.load.EndToFinal.P50), bench.MS(r.load.EndToFinal.P99)))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "From %s to %s write IOPS, console ack p50 went from %s ms to %s ms and p99 from %s ms to %s ms; end → finalised p50 went from %s ms to %s ms and p99 from %s ms to %s ms. %d frames were lost and %d calls not finalised in all the runs. ",
		limitName(first.limit), limitName(last.limit), bench.MS(first.load.Ack.P50), bench.MS(last.load.Ack.P50), bench.MS(first.load.Ack.P99), bench.MS(last.load.Ack.P99),
		bench.MS(first.load.EndToFinal.P50), bench.MS(last.load.EndToFinal.P50), bench.MS(first.load.EndToFinal.P99), bench.MS(last.load.EndToFinal.P99), lostFrames(rows), lost-lostFrames(rows))
	if len(late) == 0 && lost == 0 {
		b.WriteString("Target — nothing lost, every call finalised within a second (p99) of its end at every limit: **met**.")
	} else if lost == 0 {
		fmt.Fprintf(&b, "Target — nothing lost, every call finalised within a second (p99) of its end: **missed** at %s.", strings.Join(late, ", "))
	} else {
		b.WriteString("Target — nothing lost, every call finalised within a second (p99) of its end: **missed**: frames were lost or calls not finalised.")
	}
	var sat []*slowRow
	for _, r := range rows {
		if r.limit > 0 && r.busy() >= 0.9 {
			sat = append(sat, r)
		}
	}
	if len(sat) == 0 {
		return b.String()
	}
	var ios, acks, ends, batches, preds, kib []string
	for _, r := range sat {
		perCommit := float64(r.ios) / r.writes.Count
		ios = append(ios, fmt.Sprintf("%.1f at %d", perCommit, r.limit))
		acks = append(acks, fmt.Sprintf("%.1f", r.inPeriods(r.load.Ack.P50)))
		ends = append(ends, fmt.Sprintf("%.1f", r.inPeriods(r.load.EndToFinal.P50)))
		batches = append(batches, fmt.Sprintf("%.1f at %d", r.writes.Mean()-r.finals/r.writes.Count, r.limit))
		kib = append(kib, fmt.Sprintf("%.0f KiB per commit (%.1f MB/s) at %d", float64(r.bytes)/r.writes.Count/1024, float64(r.bytes)/r.window.Seconds()/1e6, r.limit))
		preds = append(preds, fmt.Sprintf("%.2f s at %d (measured p50 %.2f s)", 6*perCommit/float64(r.limit), r.limit, r.load.EndToFinal.P50.Seconds()))
	}
	fmt.Fprintf(&b, "\n\nWhy the transcript slows down too. With the writes throttled to %s IOPS the committer is busy all the time, and the write requests per second set the pace, not the bytes: the throttle counts requests whatever their size (the appliance wrote %s; at %s IOPS that is %.1f× the audio's bytes, while its data directory held %.1f MB at the end for %.1f MB of audio: each commit's msync rewrites the pages at the tail of the value log and of the WAL). A group commit is Badger's two syncs one after the other (value log, then WAL, as the syscall profile of the durable-ack section shows), which cost the appliance %s write requests per commit (data and cache flushes; the ext4 journal's own writes are not counted), so at L IOPS it makes at most L / (write requests per commit) commits per second. A write that depends on an earlier one is submitted just after the commit that carried the earlier one, when the next commit has already started: it waits for that one, then rides the one after — two commit periods per dependent write. A channel has up to two store writes on their way (`writeFrames`: the second follows the first, so nothing is stored across a gap), so its frames ride every commit — commits carried %s channel batches each (writes less finals) of the %d channels — and an ack waits about two periods: for the commit under way, then its own (measured ack p50: %s periods). The end of a call is a chain of three dependent writes, two periods each: the last frames; the worker's last final with its checkpoint (the call's `ended` record is queued before the worker is told, so it rides alongside); and the last channel's completion, which finalises the call in the same write; about 6 periods (measured end → finalised p50: %s periods). So end → finalised grows as about 6 × (write requests per commit) / L seconds: %s. The remaining serialisation is the commit's two syncs and that short chain of records, not the audio: pipelined acks keep the audio flowing (nothing lost, batches grow as the disk slows), but each record that finishes a call still pays two commits.",
		joinLimits(sat), strings.Join(kib, ", "), limitName(last.limit), amplification(last), float64(last.held)/1e6, last.frames*3200/1e6, strings.Join(ios, ", "), strings.Join(batches, ", "), slowCalls, strings.Join(acks, ", "), strings.Join(ends, ", "), strings.Join(preds, "; "))
	return b.String()
}

// allocated is the disk space the files under dir take (their blocks).
func allocated(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, e os.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			if fi, err := e.Info(); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					n += st.Blocks * 512
				}
			}
		}
		return nil
	})
	return n
}

// amplification is the bytes the appliance wrote over the audio's bytes.
func amplification(r *slowRow) float64 {
	if r.frames == 0 {
		return 0
	}
	return float64(r.bytes) / (r.frames * 3200)
}

func lostFrames(rows []*slowRow) int {
	n := 0
	for _, r := range rows {
		n += r.load.Lost
	}
	return n
}

func joinLimits(rows []*slowRow) string {
	var s []string
	for _, r := range rows {
		s = append(s, limitName(r.limit))
	}
	return strings.Join(s, ", ")
}

// fsyncProbe is the hidden -fsync-probe mode: the fdatasync loop the slow
// disk section runs inside the throttled group, its result as JSON.
func fsyncProbe(dir string, d time.Duration) error {
	p, err := bench.FsyncRate(dir, d, 100000)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(p)
}
