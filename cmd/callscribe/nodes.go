package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/callscribe/callscribe/agent"
	"github.com/callscribe/callscribe/agent/firmware"
	"github.com/callscribe/callscribe/agent/gpu"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/internal/sdnotify"
	"github.com/callscribe/callscribe/proto"
	"github.com/callscribe/callscribe/worker"
)

func nodeToken(file string) (string, error) {
	if t := os.Getenv("CALLSCRIBE_NODE_TOKEN"); t != "" {
		return t, nil
	}
	if file == "" {
		return "", errors.New("no node token: set CALLSCRIBE_NODE_TOKEN or --token-file")
	}
	return pki.ReadToken(file)
}

// cmdWorker runs one ASR worker process (normally started by an agent).
func cmdWorker(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg worker.Config
	var id, node, tokenFile, level string
	fs.StringVar(&cfg.Coordinator, "coordinator", "127.0.0.1:4433", "coordinator QUIC address")
	fs.StringVar(&cfg.CAFile, "ca", "", "CA certificate file")
	fs.StringVar(&cfg.ServerName, "server-name", "localhost", "coordinator certificate name")
	fs.StringVar(&id, "worker-id", "", "worker id")
	fs.StringVar(&node, "node", "local", "node id")
	fs.StringVar(&cfg.Model, "model", "", "model name")
	fs.StringVar(&cfg.ModelDir, "models", "", "directory of extra model manifests")
	fs.IntVar(&cfg.Slots, "slots", 0, "concurrent channels (default: the model's streams_per_instance)")
	fs.StringVar(&tokenFile, "token-file", "", "node token file (or CALLSCRIBE_NODE_TOKEN)")
	fs.StringVar(&level, "log-level", "info", "log level")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if id == "" || cfg.CAFile == "" {
		fmt.Fprintln(stderr, "worker: --worker-id and --ca are required")
		return errUsage
	}
	tok, err := nodeToken(tokenFile)
	if err != nil {
		return err
	}
	cfg.Token, cfg.WorkerID, cfg.NodeID = tok, proto.WorkerID(id), proto.NodeID(node)
	cfg.Logger = newLogger(stderr, level)
	return worker.Run(ctx, cfg)
}

// cmdAgent runs a node agent.
func cmdAgent(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg agent.Config
	var node, tokenFile, level, sim string
	fs.StringVar(&cfg.Coordinator, "coordinator", "127.0.0.1:4433", "coordinator QUIC address")
	fs.StringVar(&cfg.CAFile, "ca", "/var/lib/callscribe/ca.pem", "CA certificate file")
	fs.StringVar(&cfg.ServerName, "server-name", "localhost", "coordinator certificate name")
	fs.StringVar(&node, "node", hostnameOr("node"), "node id")
	fs.StringVar(&tokenFile, "token-file", "", "node token file (or CALLSCRIBE_NODE_TOKEN)")
	fs.StringVar(&cfg.ModelDir, "models", "", "directory of extra model manifests")
	fs.StringVar(&cfg.StateDir, "state", "/var/lib/callscribe", "state directory (its disk is reported)")
	fs.StringVar(&sim, "sim-gpus", "", "simulate a GPU server instead of NVML (dgxa100)")
	profile := fs.String("profile", "", "node-class profile (a file from firmware-configs/)")
	fs.BoolVar(&cfg.Apply, "apply", false, "set what NVML can set to match the profile (persistence mode, power limit)")
	xids := fs.String("ignore-xids", "13,31,43,45,68,109", "XIDs caused by applications, which do not make a GPU unhealthy")
	fs.StringVar(&level, "log-level", "info", "log level")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	tok, err := nodeToken(tokenFile)
	if err != nil {
		return err
	}
	cfg.Token, cfg.NodeID = tok, proto.NodeID(node)
	cfg.Logger = newLogger(stderr, level)
	for _, x := range strings.Split(*xids, ",") {
		if x = strings.TrimSpace(x); x == "" {
			continue
		}
		n, err := strconv.ParseUint(x, 10, 64)
		if err != nil {
			return fmt.Errorf("--ignore-xids: %q is not a number", x)
		}
		cfg.IgnoredXIDs = append(cfg.IgnoredXIDs, n)
	}
	if *profile != "" {
		p, err := firmware.Load(*profile)
		if err != nil {
			return err
		}
		cfg.Profile = p
	}
	if cfg.IgnoredXIDs == nil {
		cfg.IgnoredXIDs = []uint64{} // an empty flag ignores none
	}
	if cfg.WorkerCommand, err = workerCommand(); err != nil {
		return err
	}
	if sim != "" {
		s, err := gpu.NewSim(sim)
		if err != nil {
			return err
		}
		if cfg.GPUs, err = gpu.New(s); err != nil {
			return err
		}
	}
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	go watchdog(ctx, func(context.Context) error { return nil })
	_ = sdnotify.Ready("agent " + node + " running")
	err = a.Run(ctx)
	_ = sdnotify.Stopping("stopped")
	return err
}

func workerCommand() ([]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	exe, _ = filepath.EvalSymlinks(exe)
	return []string{exe, "worker"}, nil
}

func hostnameOr(d string) string {
	h, err := os.Hostname()
	if err != nil || !proto.ValidID(h) {
		return d
	}
	return h
}
