package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/callscribe/callscribe/bench"
	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/pki"
)

// The memory soak's sizes: 10 waves of 100 calls (70 ended by their
// consoles through `bench load`, 30 abandoned) = 1,000 calls, about 3
// minutes with the settling.
const (
	soakWaves     = 10
	soakEnded     = 70
	soakAbandoned = 30
	soakAudio     = 2 * time.Second // what an ended call sends
	soakAbandonAt = 10              // frames an abandoned call sends
	soakAbandon   = 2 * time.Second // the appliance's abandon timeout
	// soakSettle is past the Go runtime's own forced GC (every 2 minutes
	// without one), after which its scavenger returns freed memory.
	soakSettle = 150 * time.Second
	// The targets: anonymous resident memory back within 20 % or 16 MiB
	// of the baseline (whichever is more), goroutines within 5.
	soakRSSPct     = 0.20
	soakRSSSlack   = 16 << 20
	soakGoroutines = 5
)

// soakSample is one reading of the appliance's memory.
type soakSample struct {
	proc       bench.ProcMemory
	rss        float64 // process_resident_memory_bytes
	heap       float64 // go_memstats_heap_inuse_bytes
	goroutines float64
	inMemory   float64 // callscribe_calls_in_memory
}

const (
	mRSS   = "process_resident_memory_bytes"
	mHeap  = "go_memstats_heap_inuse_bytes"
	mGo    = "go_goroutines"
	mInMem = "callscribe_calls_in_memory"
)

func soakRead(ctx context.Context, client *http.Client, app *bench.ApplianceProcess) (soakSample, error) {
	var s soakSample
	var err error
	if s.proc, err = bench.ReadProcMemory(app.Cmd.Process.Pid); err != nil {
		return s, err
	}
	m, err := bench.ReadMetrics(ctx, client, app.HTTP, mRSS, mHeap, mGo, mInMem)
	if err != nil {
		return s, err
	}
	s.rss, s.heap, s.goroutines, s.inMemory = m[mRSS], m[mHeap], m[mGo], m[mInMem]
	return s, nil
}

// soakPeak keeps the highest of each reading.
func soakPeak(p *soakSample, s soakSample) {
	p.proc.RSS, p.proc.Anon = max(p.proc.RSS, s.proc.RSS), max(p.proc.Anon, s.proc.Anon)
	p.rss, p.heap = max(p.rss, s.rss), max(p.heap, s.heap)
	p.goroutines, p.inMemory = max(p.goroutines, s.goroutines), max(p.inMemory, s.inMemory)
}

// memorySoakSection runs 1,000 calls through the bench appliance (its own
// process) in waves, some abandoned by their consoles, and compares its
// memory and goroutines after they have come and gone with before.
func memorySoakSection(ctx context.Context, w, log func(string, ...any), dir, bin string) error {
	start := time.Now()
	w("\n## Memory that does not grow with history: 1,000 calls come and go\n\n")
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	data, err := fresh(dir, "soak")
	if err != nil {
		return err
	}
	defer os.RemoveAll(data)
	app, err := bench.StartApplianceProcess(ctx, exec.CommandContext, bin, data, soakEnded+soakAbandoned+8, "--abandon-after", soakAbandon.String())
	if err != nil {
		return err
	}
	defer app.Stop()
	pool, err := pki.CertPool(app.CA)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 5 * time.Second}
	cold, err := soakRead(ctx, client, app)
	if err != nil {
		return err
	}
	total, abandoned := 0, 0
	var loadErrs []string
	// wave runs n ended and k abandoned calls at once.
	wave := func(name string, n, k int) error {
		var wg sync.WaitGroup
		var aerr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			aerr = bench.AbandonCalls(ctx, bench.AbandonConfig{QUIC: app.QUIC, RootCAs: pool, Token: app.Token, Prefix: name + "-gone", Calls: k, Frames: soakAbandonAt})
		}()
		r, err := benchLoad(ctx, bin, "--transport", "quic", "--calls", fmt.Sprint(n), "--duration", soakAudio.String(),
			"--server", app.QUIC, "--http", app.HTTP, "--ca", app.CA, "--token", app.Token, "--operator-token", bench.OperatorToken, "--prefix", name)
		wg.Wait()
		if err != nil {
			return fmt.Errorf("bench load: %w", err)
		}
		if aerr != nil {
			return fmt.Errorf("abandoned calls: %w", aerr)
		}
		if r.Lost != 0 || r.Finalised != n {
			loadErrs = append(loadErrs, fmt.Sprintf("%s: %d frames lost, %d of %d calls finalised at the console %v", name, r.Lost, r.Finalised, n, r.Errors))
		}
		total, abandoned = total+n+k, abandoned+k
		return nil
	}
	// settle waits until no call is in memory, then for d, and reads.
	settle := func(d time.Duration) (soakSample, time.Duration, error) {
		t0 := time.Now()
		for {
			s, err := soakRead(ctx, client, app)
			if err != nil {
				return s, 0, err
			}
			if s.inMemory == 0 {
				break
			}
			if time.Since(t0) > 2*time.Minute {
				return s, 0, fmt.Errorf("%v calls still in memory 2 minutes after the last wave", s.inMemory)
			}
			time.Sleep(250 * time.Millisecond)
		}
		gone := time.Since(t0)
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return soakSample{}, 0, ctx.Err()
		}
		s, err := soakRead(ctx, client, app)
		return s, gone, err
	}
	// A warm-up wave first: what the first calls allocate for good (QUIC
	// and TLS state, Badger's memtable, the Go heap's first growth) is not
	// history.
	if err := wave("warm", 10, 5); err != nil {
		return err
	}
	base, _, err := settle(10 * time.Second)
	if err != nil {
		return err
	}
	total, abandoned = 0, 0
	log("memory soak: cold RSS %s, baseline RSS %s heap %s, %v goroutines", mib(float64(cold.proc.RSS)), mib(float64(base.proc.RSS)), mib(base.heap), base.goroutines)

	// Sample through the waves for the peak.
	peak := base
	sctx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sctx.Err() == nil {
			if s, err := soakRead(sctx, client, app); err == nil {
				soakPeak(&peak, s)
			}
			select {
			case <-sctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()
	t0 := time.Now()
	var werr error
	var perWave []soakSample // read as each wave's consoles finish
	for i := range soakWaves {
		if werr = wave(fmt.Sprintf("soak%d", i), soakEnded, soakAbandoned); werr != nil {
			break
		}
		s, err := soakRead(ctx, client, app)
		if err != nil {
			werr = err
			break
		}
		perWave = append(perWave, s)
		log("memory soak: wave %d of %d done (%d calls): RSS %s anon %s heap %s, %v goroutines, %v calls in memory", i+1, soakWaves, total,
			mib(float64(s.proc.RSS)), mib(float64(s.proc.Anon)), mib(s.heap), s.goroutines, s.inMemory)
	}
	waves := time.Since(t0)
	stopSampling()
	<-sampled
	if werr != nil {
		return werr
	}
	after, gone, err := settle(soakSettle)
	if err != nil {
		return err
	}
	finalised, err := countFinalised(ctx, client, app)
	if err != nil {
		return err
	}
	log("memory soak: peak RSS %s, after RSS %s heap %s, %v goroutines; %d finalised", mib(float64(peak.proc.RSS)), mib(float64(after.proc.RSS)), mib(after.heap), after.goroutines, finalised)

	w("`callscribe bench appliance` (the coordinator with the instant fake engine) runs as its own process, its abandon timeout set to %v. A warm-up wave of 15 calls comes first; the *baseline* is read once it has left memory and 10 s have passed. Then %d waves of %d calls at once: %d consoles of `callscribe bench load --transport quic` each send %v of audio (100 ms L16 frames) and end their call, and %d more consoles send %d frames, wait for their acks and vanish (stream reset, connection closed, no end), so the coordinator ends each after %v and finalises it with what it received: %d calls in all, %d of them abandoned, in %.0f s. *Peak* is the highest reading, every 250 ms, during the waves; *after* is read %v after the last call left memory (%.1f s after the last wave). Nothing is forced: no GC, no debug endpoint. *RSS* and *anonymous* are the process's `VmRSS` and `RssAnon` (`/proc/PID/status`; the difference is file pages, Badger's memory-mapped tables and value log among them); *Go heap in use* is `go_memstats_heap_inuse_bytes` and *calls in memory* `callscribe_calls_in_memory` from its `/metrics`. %d of the %d calls are finalised in the store (counted through `GET /v1/calls?state=finalised`, a page at a time).\n\n",
		soakAbandon, soakWaves, soakEnded+soakAbandoned, soakEnded, soakAudio, soakAbandoned, soakAbandonAt, soakAbandon, total, abandoned, waves.Seconds(), soakSettle, gone.Seconds(), finalised, total+15)
	w("| | RSS | anonymous | `process_resident_memory_bytes` | Go heap in use | goroutines | calls in memory |\n|---|---|---|---|---|---|---|\n")
	for _, r := range []struct {
		name string
		s    soakSample
	}{{"fresh start", cold}, {"baseline (after the warm-up)", base}, {"peak (during the waves)", peak}, {"after", after}} {
		w("| %s | %s | %s | %s | %s | %.0f | %.0f |\n", r.name, mib(float64(r.s.proc.RSS)), mib(float64(r.s.proc.Anon)), mib(r.s.rss), mib(r.s.heap), r.s.goroutines, r.s.inMemory)
	}
	// The target is on the process's own (anonymous) memory: the file
	// pages in VmRSS are Badger's memory-mapped files, page cache the
	// kernel reclaims under pressure, which grow with the files written,
	// not with what the coordinator holds.
	// Badger's memtable is an arena filled by the bytes written since its
	// last flush: how full it is depends on when the last flush happened,
	// not on how many calls there have been, so the allowance is one
	// memtable beyond the slack. What must not happen is growth with the
	// calls: the second half of the waves may add at most the slack.
	limit := max(float64(base.proc.Anon)*(1+soakRSSPct), float64(base.proc.Anon)+soakRSSSlack) + store.MemTableSize
	growth := 0.0
	if n := len(perWave); n >= 2 {
		growth = float64(perWave[n-1].proc.Anon) - float64(perWave[n/2-1].proc.Anon)
	}
	ok := float64(after.proc.Anon) <= limit && growth <= soakRSSSlack && after.goroutines <= base.goroutines+soakGoroutines && after.inMemory == 0 && finalised == total+15 && len(loadErrs) == 0
	verdict := "**Met**"
	if !ok {
		verdict = "**Not met**"
	}
	w("\nTarget: after the calls have gone, anonymous memory within %.0f %% or %d MiB of the baseline, whichever is more, plus one Badger memtable (%d MiB, filled by recent writes whatever the history) (≤ %s); from the middle to the last wave it grows by at most %d MiB (%+.1f MiB); goroutines within %d of the baseline (≤ %.0f), no call in memory, every call finalised. %s: anonymous %s after (%+.1f MiB), Go heap in use %s (baseline %s), %.0f goroutines, %.0f calls in memory, %d of %d calls finalised. The whole VmRSS does not return: %s after against %s at the baseline, the difference being file pages of Badger's memory-mapped value log and tables (VmRSS − RssAnon: %s after, %s at the baseline), which grow with the files written and are page cache the kernel reclaims, not memory the coordinator holds.\n",
		100*soakRSSPct, soakRSSSlack>>20, store.MemTableSize>>20, mib(limit), soakRSSSlack>>20, growth/(1<<20), soakGoroutines, base.goroutines+soakGoroutines, verdict, mib(float64(after.proc.Anon)),
		float64(after.proc.Anon-base.proc.Anon)/(1<<20), mib(after.heap), mib(base.heap), after.goroutines, after.inMemory, finalised, total+15,
		mib(float64(after.proc.RSS)), mib(float64(base.proc.RSS)), mib(float64(after.proc.RSS-after.proc.Anon)), mib(float64(base.proc.RSS-base.proc.Anon)))
	for _, e := range loadErrs {
		w("\n- %s", e)
	}
	w("\nAs each wave's consoles finish (its abandoned calls not yet ended):\n\n| calls so far | RSS | anonymous | Go heap in use | goroutines | calls in memory |\n|---|---|---|---|---|---|\n")
	for i, s := range perWave {
		w("| %d | %s | %s | %s | %.0f | %.0f |\n", (i+1)*(soakEnded+soakAbandoned), mib(float64(s.proc.RSS)), mib(float64(s.proc.Anon)), mib(s.heap), s.goroutines, s.inMemory)
	}
	if n := len(perWave); n >= 2 {
		half, last := perWave[n/2-1], perWave[n-1]
		w("\nFrom %d to %d calls the anonymous memory went %s → %s (%+.1f MiB) and the Go heap in use %s → %s.\n", n/2*(soakEnded+soakAbandoned), n*(soakEnded+soakAbandoned),
			mib(float64(half.proc.Anon)), mib(float64(last.proc.Anon)), float64(last.proc.Anon-half.proc.Anon)/(1<<20), mib(half.heap), mib(last.heap))
	}
	took := time.Since(start)
	log("memory soak: section took %s", took.Round(time.Second))
	w("\nThe section took %.0f s.\n", took.Seconds())
	if !ok {
		log("memory soak: target not met")
	}
	return nil
}

// countFinalised counts the appliance's finalised calls a page at a time
// (GET /v1/calls with the console token: the bench calls are all its own).
func countFinalised(ctx context.Context, client *http.Client, app *bench.ApplianceProcess) (int, error) {
	n, cursor := 0, ""
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, app.HTTP+"/v1/calls?state=finalised&limit=1000&cursor="+url.QueryEscape(cursor), nil)
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+app.Token)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		var page struct {
			Calls      []json.RawMessage `json:"calls"`
			NextCursor string            `json:"next_cursor"`
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = errors.New(resp.Status)
		}
		if err != nil {
			return 0, fmt.Errorf("GET /v1/calls: %w", err)
		}
		n += len(page.Calls)
		if cursor = page.NextCursor; cursor == "" {
			return n, nil
		}
	}
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }
