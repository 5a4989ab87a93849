package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/callscribe/callscribe/bench"
	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/internal/leader"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/models"
)

// cmdBench is `callscribe bench load` (simulated consoles against an
// appliance) and `callscribe bench appliance` (an appliance with the fast
// fake engine, for load tests).
func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "appliance" {
		return cmdBenchAppliance(ctx, args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "load" {
		fmt.Fprintln(stderr, "usage: callscribe bench load [flags]        drive simulated consoles against an appliance")
		fmt.Fprintln(stderr, "       callscribe bench appliance [flags]   an appliance with the fast fake engine (load tests only)")
		return errUsage
	}
	fs := flag.NewFlagSet("bench load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	transport := fs.String("transport", "quic", "quic or whip")
	calls := fs.Int("calls", 10, "simulated consoles, each one call at real-time pace")
	dur := fs.Duration("duration", 10*time.Second, "audio each call sends")
	quicAddr := fs.String("server", "127.0.0.1:4433", "coordinator QUIC address (quic), or a comma-separated list of coordinators (a cluster: the consoles follow its leader)")
	httpURL := fs.String("http", "http://127.0.0.1:8080", "coordinator HTTP(S) base URL (whip, and call checks; a cluster's leader)")
	caFile := fs.String("ca", "", "CA certificate of the coordinator")
	serverName := fs.String("server-name", "localhost", "coordinator certificate name")
	token := fs.String("token", os.Getenv("CALLSCRIBE_TOKEN"), "console token (or CALLSCRIBE_TOKEN)")
	opToken := fs.String("operator-token", os.Getenv("CALLSCRIBE_OPERATOR_TOKEN"), "operator token, to read the appliance's /v1/stats (or CALLSCRIBE_OPERATOR_TOKEN)")
	prefix := fs.String("prefix", fmt.Sprintf("load-%d", time.Now().Unix()), "call id prefix")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	audioFile := fs.String("audio", "", "16 kHz WAV every console loops (its first channel), each call from its own offset; default noise (enough for the fake engine, not for the real one)")
	engine := fs.String("engine", "", "start a local appliance first and drive it: fake (instant engine: the system's own cost) or real (PocketSphinx workers: capacity); empty drives the appliance at --server/--http")
	if err := fs.Parse(args[1:]); err != nil {
		return errUsage
	}
	var pcm []int16
	if *audioFile != "" {
		w, err := audio.ReadWAVFile(*audioFile)
		if err != nil {
			return err
		}
		if w.Rate != 16000 {
			return fmt.Errorf("bench load: %s is %d Hz; the consoles send 16 kHz", *audioFile, w.Rate)
		}
		pcm = w.Channel(0)
	}
	treePID := 0
	if *engine != "" {
		app, err := startLocalAppliance(ctx, *engine, *calls, stderr)
		if err != nil {
			return err
		}
		defer app.stop()
		*quicAddr, *httpURL, *caFile, *token, *opToken = app.quic, "http://"+app.http, filepath.Join(app.dir, pki.CAFile), app.token, app.operator
		treePID = app.cmd.Process.Pid
	}
	if *token == "" || *calls < 1 || (*transport == "quic" && *caFile == "") {
		fmt.Fprintln(stderr, "usage: callscribe bench load --transport quic|whip --calls N --duration D --token T [--ca FILE] [--server ADDR] [--http URL]")
		return errUsage
	}
	if _, err := leader.ParseList(*quicAddr); err != nil {
		return fmt.Errorf("--server: %w", err)
	}
	var pool *x509.CertPool
	if *caFile != "" {
		var err error
		if pool, err = pki.CertPool(*caFile); err != nil {
			return err
		}
	}
	res, err := bench.Load(ctx, bench.LoadConfig{Transport: *transport, QUIC: *quicAddr, HTTP: *httpURL, RootCAs: pool, ServerName: *serverName,
		Token: *token, OperatorToken: *opToken, Calls: *calls, Duration: *dur, Prefix: *prefix, Audio: pcm, TreePID: treePID})
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(res)
	}
	fmt.Fprintf(stdout, "%s: %d calls (%d connected, %d finalised) in %s\n", res.Transport, res.Calls, res.Connected, res.Finalised, res.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(stdout, "frames sent %d, stored %d, lost %d\n", res.Sent, res.Stored, res.Lost)
	if res.Ack.N > 0 {
		fmt.Fprintf(stdout, "durable ack at the console: p50 %s ms, p99 %s ms, max %s ms\n", bench.MS(res.Ack.P50), bench.MS(res.Ack.P99), bench.MS(res.Ack.Max))
	}
	if res.EndToFinal.N > 0 {
		fmt.Fprintf(stdout, "end of audio → call finalised at the console: p50 %s ms, p99 %s ms\n", bench.MS(res.EndToFinal.P50), bench.MS(res.EndToFinal.P99))
	}
	if s := res.Server; s != nil {
		fmt.Fprintf(stdout, "coordinator: CPU %.1f %% of a core (%.2f %% per stream), memory %.0f MiB (%.0f KiB per call)\n", s.CPUTotal, s.CPUPerStream, s.RSS/(1<<20), s.RSSPerCall/1024)
		if s.ApplianceCPUTotal > 0 {
			fmt.Fprintf(stdout, "whole appliance (coordinator, agent, workers): CPU %.1f %% of a core (%.2f %% per stream)\n", s.ApplianceCPUTotal, s.ApplianceCPUPerStream)
		}
		fmt.Fprintf(stdout, "system-added latency p50/p99 ms: ack %.2f/%.2f, frame → worker %.2f/%.2f, final → console %.2f/%.2f\n",
			s.Ack.P50MS, s.Ack.P99MS, s.ToWorker.P50MS, s.ToWorker.P99MS, s.ToConsole.P50MS, s.ToConsole.P99MS)
	}
	for _, e := range res.Errors {
		fmt.Fprintln(stdout, "error:", e)
	}
	if res.Lost != 0 || res.Connected != res.Calls {
		return fmt.Errorf("%d frames lost, %d of %d calls connected", res.Lost, res.Connected, res.Calls)
	}
	return nil
}

// cmdBenchAppliance runs a coordinator with the fast fake engine until it is
// signalled: the system's own cost under load, without ASR. Not for calls.
func cmdBenchAppliance(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench appliance", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("data", "", "state directory (created)")
	quicAddr := fs.String("quic", "127.0.0.1:4433", "QUIC address")
	httpAddr := fs.String("http", "127.0.0.1:8080", "HTTP address")
	slots := fs.Int("slots", 1000, "call-channel slots of the fake worker")
	abandon := fs.Duration("abandon-after", 0, "end a call whose console has been gone this long (0: the coordinator's default)")
	if err := fs.Parse(args); err != nil || *dir == "" {
		fmt.Fprintln(stderr, "usage: callscribe bench appliance --data DIR [--quic ADDR] [--http ADDR] [--slots N] [--abandon-after D]")
		return errUsage
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	app, err := bench.StartApplianceAtWith(ctx, *dir, *quicAddr, *httpAddr, *slots, *abandon)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "bench appliance (fake engine) on %s (QUIC) and %s (HTTP); token in %s\n", *quicAddr, *httpAddr, filepath.Join(*dir, pki.ConsoleToken))
	<-ctx.Done()
	app.Stop()
	return nil
}

// localAppliance is an appliance process bench load started for itself.
type localAppliance struct {
	dir, quic, http, token, operator string
	cmd                              *exec.Cmd
}

func (a *localAppliance) stop() {
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = a.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = a.cmd.Process.Kill()
		<-done
	}
	os.RemoveAll(a.dir)
}

// startLocalAppliance starts this binary as an appliance on loopback: the
// fake engine (`bench appliance`) or the real one (`dev` with enough
// PocketSphinx workers for the calls), and waits until it is ready.
func startLocalAppliance(ctx context.Context, engine string, calls int, stderr io.Writer) (*localAppliance, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "callscribe-load-")
	if err != nil {
		return nil, err
	}
	q, err1 := bench.FreeAddr("udp")
	h, err2 := bench.FreeAddr("tcp")
	if err1 != nil || err2 != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: no free port: %v %v", err1, err2)
	}
	var args []string
	switch engine {
	case "fake":
		args = []string{"bench", "appliance", "--data", dir, "--quic", q, "--http", h, "--slots", fmt.Sprint(calls + 8)}
	case "real":
		per := 2
		if cat, err := models.Load(""); err == nil {
			if m, err := cat.Get(""); err == nil {
				per = m.Resources.StreamsPerInstance
			}
		}
		// Every simulated console comes from 127.0.0.1 and they all start
		// at once: the set-up limits are sized to the load.
		args = []string{"dev", "--data", dir, "--quic", q, "--http", h, "--workers", fmt.Sprint(max(1, (calls+per-1)/per)),
			"--max-setting-up", fmt.Sprint(calls + 64), "--max-setting-up-per-remote", fmt.Sprint(calls + 64), "--max-setting-up-per-console", fmt.Sprint(calls + 64), "--metrics-open", "--webrtc-max-pending", fmt.Sprint(calls + 64), "--webrtc-max-pending-per-remote", fmt.Sprint(calls + 64)}
	default:
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: engine %q (fake or real)", engine)
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	a := &localAppliance{dir: dir, quic: q, http: h, cmd: cmd}
	fmt.Fprintf(stderr, "started a local appliance (%s engine) on %s / %s\n", engine, q, h)
	deadline := time.Now().Add(90 * time.Second)
	for {
		if r, err := http.Get("http://" + h + "/readyz"); err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			a.stop()
			return nil, fmt.Errorf("bench: the local appliance was not ready in 90 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if a.token, err = pki.ReadToken(filepath.Join(dir, pki.ConsoleToken)); err != nil {
		a.stop()
		return nil, err
	}
	if a.operator, err = pki.ReadToken(filepath.Join(dir, pki.OperatorToken)); err != nil {
		a.stop()
		return nil, err
	}
	// Every call must find a worker waiting: otherwise the first seconds of
	// audio queue while workers start, and decoding starts behind.
	for free := 0.0; free < float64(calls); {
		if time.Now().After(deadline) || ctx.Err() != nil {
			a.stop()
			return nil, fmt.Errorf("bench: %0.f worker slots free after 90 s, want %d (placement gives each worker instance the cores its manifest asks for: fewer calls, or a bigger machine)", free, calls)
		}
		time.Sleep(200 * time.Millisecond)
		const slots = `callscribe_worker_slots{use="free"}`
		m, _ := bench.ReadMetrics(ctx, http.DefaultClient, "http://"+h, slots) // nil (0 free) until it answers
		free = m[slots]
	}
	return a, nil
}
