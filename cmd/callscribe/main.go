// Command callscribe is the single binary of the callscribe appliance: the
// coordinator, the node agent, the ASR worker, a whole appliance for one
// machine (dev), and the console-side tools (stream, transcribe).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

var version = "dev"

var errUsage = errors.New("usage")

type command struct {
	run  func(ctx context.Context, args []string, stdout, stderr io.Writer) error
	help string
}

var commands = map[string]command{
	"transcribe":  {cmdTranscribe, "decode a WAV file with the embedded engine"},
	"stream":      {cmdStream, "stream a WAV file as a console would"},
	"dev":         {cmdDev, "run a whole appliance on this machine (coordinator, agent, workers)"},
	"coordinator": {cmdCoordinator, "run the coordinator"},
	"agent":       {cmdAgent, "run a node agent"},
	"worker":      {cmdWorker, "run one ASR worker (started by an agent)"},
	"status":      {cmdStatus, "show nodes, GPUs, workers and calls (--json)"},
	"node":        {cmdNode, "drain or undrain a node"},
	"cluster":     {cmdCluster, "status, init, join or remove members of the coordinator cluster (operator)"},
	"token":       {cmdToken, "add, list or revoke credentials on a running coordinator (operator)"},
	"audit":       {cmdAudit, "print the audit trail, or verify its hash chain (--verify)"},
	"verify":      {cmdVerify, "check a call's signed integrity statement against its stored audio and transcript"},
	"config":      {cmdConfig, "check a configuration file or node profile"},
	"ca":          {cmdCA, "create the local CA and issue node and console certificates"},
	"models":      {cmdModels, "install the pinned model files (checked by hash) or check them"},
	"bench":       {cmdBench, "bench load: drive simulated consoles (QUIC or WHIP) against a running appliance"},
	"store":       {cmdStore, "store check DIR: report read-only whether the coordinator's store is intact; store rotate-key: change its encryption key"},
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "callscribe %s: live transcription of emergency calls\n\nusage: callscribe COMMAND [flags]\n\n", version)
	for _, n := range []string{"dev", "coordinator", "agent", "worker", "stream", "transcribe", "status", "node", "cluster", "token", "audit", "verify", "config", "ca", "models", "bench", "store", "version"} {
		if c, ok := commands[n]; ok {
			fmt.Fprintf(w, "  %-12s %s\n", n, c.help)
		}
	}
}

func main() {
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "version" || name == "--version" {
		fmt.Println(version)
		return
	}
	if name == "help" || name == "-h" || name == "--help" {
		usage(os.Stdout)
		return
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "callscribe: unknown command %q\n\n", name)
		usage(os.Stderr)
		os.Exit(2)
	}
	ctx, stop := signalContext()
	defer stop()
	err := c.run(ctx, os.Args[2:], os.Stdout, os.Stderr)
	switch {
	case err == nil, errors.Is(err, context.Canceled):
	case errors.Is(err, errUsage):
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "callscribe %s: %v\n", name, err)
		os.Exit(1)
	}
}

// signalContext is cancelled by the first SIGINT/SIGTERM; a second one exits
// at once (the two-stage shutdown).
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ch
		cancel()
		<-ch
		fmt.Fprintln(os.Stderr, "callscribe: second signal, exiting now")
		os.Exit(130)
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}
