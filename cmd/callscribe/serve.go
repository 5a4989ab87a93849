package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/callscribe/callscribe/agent"
	"github.com/callscribe/callscribe/agent/gpu"
	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/internal/sdnotify"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/proto"
)

type serveFlags struct {
	data, http, quic, hosts, level, modelDir string
	workers, idle                            int
	abandon, check                           time.Duration
}

func (f *serveFlags) register(fs *flag.FlagSet, defData string) {
	fs.StringVar(&f.data, "data", defData, "state directory (store, CA, tokens)")
	fs.StringVar(&f.http, "http", "127.0.0.1:8080", "HTTP listen address")
	fs.StringVar(&f.quic, "quic", "127.0.0.1:4433", "QUIC listen address")
	fs.StringVar(&f.hosts, "hosts", "localhost,127.0.0.1,::1", "names and addresses the serving certificate covers")
	fs.IntVar(&f.workers, "workers", 2, "fewest workers of the default model the rack runs")
	fs.IntVar(&f.idle, "idle-slots", 2, "idle call-channel slots to keep ready (more workers start when fewer are free, as the hardware allows)")
	fs.StringVar(&f.modelDir, "models", "", "directory of extra model manifests")
	fs.StringVar(&f.level, "log-level", "info", "log level")
	fs.DurationVar(&f.abandon, "abandon-after", 2*time.Minute, "end a call whose console has been gone this long")
	fs.DurationVar(&f.check, "check-interval", time.Second, "how often the scaling policy runs")
}

// setup prepares the state directory: CA, serving certificate and tokens.
func (f *serveFlags) setup(log *slog.Logger) (coordinator.Config, string, string, error) {
	var cfg coordinator.Config
	ca, caKey, err := pki.EnsureCA(f.data)
	if err != nil {
		return cfg, "", "", fmt.Errorf("CA: %w", err)
	}
	cert, err := pki.EnsureServerCert(f.data, ca, caKey, strings.Split(f.hosts, ","))
	if err != nil {
		return cfg, "", "", fmt.Errorf("server certificate: %w", err)
	}
	ctoken, err := pki.EnsureToken(filepath.Join(f.data, pki.ConsoleToken))
	if err != nil {
		return cfg, "", "", err
	}
	ntoken, err := pki.EnsureToken(filepath.Join(f.data, pki.NodeToken))
	if err != nil {
		return cfg, "", "", err
	}
	cat, err := models.Load(f.modelDir)
	if err != nil {
		return cfg, "", "", err
	}
	cfg = coordinator.Config{DataDir: f.data, QUICAddr: f.quic, HTTPAddr: f.http, TLS: &tls.Config{Certificates: []tls.Certificate{cert}},
		ConsoleTokens: []string{ctoken}, NodeTokens: []string{ntoken}, Models: cat, MinWorkers: f.workers, IdleSlots: f.idle, AbandonAfter: f.abandon, CheckInterval: f.check, Logger: log.With("component", "coordinator")}
	return cfg, ctoken, ntoken, nil
}

// cmdCoordinator runs the coordinator alone.
func cmdCoordinator(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f serveFlags
	f.register(fs, "/var/lib/callscribe")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	log := newLogger(stderr, f.level)
	cfg, _, _, err := f.setup(log)
	if err != nil {
		return err
	}
	c, err := coordinator.New(cfg)
	if err != nil {
		return err
	}
	if err := c.Listen(); err != nil {
		return err
	}
	log.Info("coordinator listening", "quic", c.QUICAddr().String(), "http", c.HTTPAddr().String(), "data", f.data)
	go watchdog(ctx, c.Healthy)
	_ = sdnotify.Ready("serving: quic " + c.QUICAddr().String() + ", http " + c.HTTPAddr().String())
	err = c.Serve(ctx)
	_ = sdnotify.Stopping("stopped")
	return err
}

// cmdDev runs a whole appliance on this machine: coordinator, one agent and
// its workers, on loopback.
func cmdDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f serveFlags
	f.register(fs, "")
	node := fs.String("node", "local", "node id of the local agent")
	sim := fs.String("sim-gpus", "", "give the local agent a simulated GPU server (dgxa100) instead of NVML")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if f.data == "" {
		fmt.Fprintln(stderr, "dev: --data DIR is required")
		return errUsage
	}
	log := newLogger(stderr, f.level)
	cfg, ctoken, ntoken, err := f.setup(log)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "token: %s\n", ctoken)
	c, err := coordinator.New(cfg)
	if err != nil {
		return err
	}
	if err := c.Listen(); err != nil {
		return err
	}
	wc, err := workerCommand()
	if err != nil {
		return err
	}
	acfg := agent.Config{NodeID: proto.NodeID(*node), Coordinator: c.QUICAddr().String(), CAFile: filepath.Join(f.data, pki.CAFile),
		ServerName: "localhost", Token: ntoken, WorkerCommand: wc, ModelDir: f.modelDir, StateDir: f.data, Logger: log.With("component", "agent")}
	if *sim != "" {
		s, err := gpu.NewSim(*sim)
		if err != nil {
			return err
		}
		if acfg.GPUs, err = gpu.New(s); err != nil {
			return err
		}
	}
	a, err := agent.New(acfg)
	if err != nil {
		return err
	}
	log.Info("callscribe dev appliance", "quic", c.QUICAddr().String(), "http", c.HTTPAddr().String(), "data", f.data,
		"ca", filepath.Join(f.data, pki.CAFile), "workers", f.workers)
	actx, acancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := a.Run(actx); err != nil {
			log.Error("agent", "err", err)
		}
	}()
	err = c.Serve(ctx)
	acancel() // the agent stops its workers
	wg.Wait()
	return err
}

// watchdog pings systemd's watchdog while healthy reports no error, so a
// coordinator whose store stops accepting writes is restarted.
func watchdog(ctx context.Context, healthy func(context.Context) error) {
	iv := sdnotify.WatchdogInterval()
	if iv == 0 {
		return
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if healthy(ctx) == nil {
				_ = sdnotify.Watchdog()
			}
		}
	}
}
