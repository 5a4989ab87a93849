package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/callscribe/callscribe/bench"
	"github.com/callscribe/callscribe/internal/pki"
)

// cmdBench runs load against a running appliance: `callscribe bench load`.
func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "load" {
		fmt.Fprintln(stderr, "usage: callscribe bench load [flags]   (drive simulated consoles against a running appliance)")
		return errUsage
	}
	fs := flag.NewFlagSet("bench load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	transport := fs.String("transport", "quic", "quic or whip")
	calls := fs.Int("calls", 10, "simulated consoles, each one call at real-time pace")
	dur := fs.Duration("duration", 10*time.Second, "audio each call sends")
	quicAddr := fs.String("server", "127.0.0.1:4433", "coordinator QUIC address (quic)")
	httpURL := fs.String("http", "http://127.0.0.1:8080", "coordinator HTTP(S) base URL (whip, and call checks)")
	caFile := fs.String("ca", "", "CA certificate of the coordinator")
	serverName := fs.String("server-name", "localhost", "coordinator certificate name")
	token := fs.String("token", os.Getenv("CALLSCRIBE_TOKEN"), "console token (or CALLSCRIBE_TOKEN)")
	prefix := fs.String("prefix", fmt.Sprintf("load-%d", time.Now().Unix()), "call id prefix")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := fs.Parse(args[1:]); err != nil {
		return errUsage
	}
	if *token == "" || *calls < 1 || (*transport == "quic" && *caFile == "") {
		fmt.Fprintln(stderr, "usage: callscribe bench load --transport quic|whip --calls N --duration D --token T [--ca FILE] [--server ADDR] [--http URL]")
		return errUsage
	}
	var pool *x509.CertPool
	if *caFile != "" {
		var err error
		if pool, err = pki.CertPool(*caFile); err != nil {
			return err
		}
	}
	res, err := bench.Load(ctx, bench.LoadConfig{Transport: *transport, QUIC: *quicAddr, HTTP: *httpURL, RootCAs: pool, ServerName: *serverName,
		Token: *token, Calls: *calls, Duration: *dur, Prefix: *prefix})
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
	if s := res.Server; s != nil {
		fmt.Fprintf(stdout, "appliance: CPU %.1f %% of a core (%.2f %% per stream), memory %.0f MiB (%.0f KiB per call)\n", s.CPUTotal, s.CPUPerStream, s.RSS/(1<<20), s.RSSPerCall/1024)
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
