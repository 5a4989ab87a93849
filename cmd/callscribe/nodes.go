package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/callscribe/callscribe/agent"
	"github.com/callscribe/callscribe/agent/firmware"
	"github.com/callscribe/callscribe/agent/gpu"
	"github.com/callscribe/callscribe/internal/config"
	"github.com/callscribe/callscribe/internal/leader"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/internal/sdnotify"
	"github.com/callscribe/callscribe/models"
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
	var id, node, tokenFile, level, coordinators string
	fs.StringVar(&coordinators, "coordinator", "127.0.0.1:4433", "coordinator QUIC address, or a comma-separated list of coordinators")
	fs.StringVar(&cfg.CAFile, "ca", "", "CA certificate file")
	fs.StringVar(&cfg.CertFile, "cert", "", "client certificate (mutual TLS)")
	fs.StringVar(&cfg.KeyFile, "key", "", "client certificate key")
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
	list, err := leader.ParseList(coordinators)
	if err != nil {
		return fmt.Errorf("worker: --coordinator: %w", err)
	}
	cfg.Coordinators = list
	tok, err := nodeToken(tokenFile)
	if err != nil {
		return err
	}
	cfg.Token, cfg.WorkerID, cfg.NodeID = tok, proto.WorkerID(id), proto.NodeID(node)
	cfg.Logger = newLogger(stderr, level)
	return worker.Run(ctx, cfg)
}

// agentConfig is agent.toml; each key is also a flag and a CALLSCRIBE_*
// environment variable.
type agentConfig struct {
	Coordinator  string   `toml:"coordinator" help:"coordinator QUIC address, or a comma-separated list of coordinators"`
	Coordinators []string `toml:"coordinators" help:"the coordinators' QUIC addresses, a list (a cluster: the agent follows its leader); when set, coordinator is not used"`
	CA           string   `toml:"ca" help:"CA certificate file"`
	Cert         string   `toml:"cert" help:"this node's client certificate (callscribe ca issue --kind node)"`
	Key          string   `toml:"key" help:"its key"`
	ServerName   string   `toml:"server_name" help:"name in the coordinator's certificate"`
	Node         string   `toml:"node" help:"node id"`
	TokenFile    string   `toml:"token_file" help:"node token file (or CALLSCRIBE_NODE_TOKEN)"`
	Models       string   `toml:"models" help:"directory of extra model manifests"`
	State        string   `toml:"state" help:"state directory (its disk is reported)"`
	Profile      string   `toml:"profile" help:"node-class profile (a file from firmware-configs/)"`
	Apply        bool     `toml:"apply" help:"set what NVML can set to match the profile (persistence mode, power limit)"`
	IgnoreXIDs   []uint64 `toml:"ignore_xids" help:"XIDs caused by applications, which do not make a GPU unhealthy"`
	SimGPUs      string   `toml:"sim_gpus" help:"simulate a GPU server instead of NVML (dgxa100; development builds only: -tags simgpus)"`
	LogLevel     string   `toml:"log_level" help:"debug, info, warn or error"`
}

// coordinatorList is the coordinators the agent reaches: coordinators when
// set, else coordinator (one address, or several separated by commas).
// Every address must be host:port.
func (ac *agentConfig) coordinatorList() ([]string, error) {
	if len(ac.Coordinators) == 0 {
		l, err := leader.ParseList(ac.Coordinator)
		if err != nil {
			return nil, fmt.Errorf("coordinator: %w", err)
		}
		return l, nil
	}
	l, err := leader.ParseList(strings.Join(ac.Coordinators, ","))
	if err != nil {
		return nil, fmt.Errorf("coordinators: %w", err)
	}
	return l, nil
}

func defaultAgentConfig() *agentConfig {
	return &agentConfig{Coordinator: "127.0.0.1:4433", CA: "/etc/callscribe/ca.pem", Cert: "/etc/callscribe/node.pem", Key: "/etc/callscribe/node-key.pem", ServerName: "localhost", Node: hostnameOr("node"),
		State: "/var/lib/callscribe-agent", IgnoreXIDs: append([]uint64(nil), gpu.DefaultIgnoredXIDs...), LogLevel: "info"}
}

// cmdAgent runs a node agent.
func cmdAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ac := defaultAgentConfig()
	config.Bind(fs, ac)
	file := fs.String("config", "/etc/callscribe/agent.toml", "configuration file (drop-ins in FILE.d/)")
	probe := fs.Bool("probe", false, "read the GPUs (NVML) and host load once, print them as JSON and exit; needs no coordinator")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	required := false
	fs.Visit(func(f *flag.Flag) { required = required || f.Name == "config" })
	src, err := config.Resolve(fs, ac, *file, required)
	if err != nil {
		return err
	}
	log := newLogger(stderr, ac.LogLevel)
	for _, line := range config.Effective(ac, src) {
		log.Info("config", "effective", line)
	}
	var tok string
	var coordinators []string
	if !*probe {
		if coordinators, err = ac.coordinatorList(); err != nil {
			return err
		}
		if len(ac.Coordinators) > 0 && src["coordinator"] != "default" {
			log.Warn("config: coordinator is not used: coordinators is set", "coordinator", ac.Coordinator, "from", src["coordinator"])
		}
		if tok, err = nodeToken(ac.TokenFile); err != nil {
			return err
		}
	}
	cfg := agent.Config{NodeID: proto.NodeID(ac.Node), Coordinators: coordinators, CAFile: ac.CA, CertFile: ac.Cert, KeyFile: ac.Key, ServerName: ac.ServerName, Token: tok,
		ModelDir: ac.Models, StateDir: ac.State, Apply: ac.Apply && !*probe, IgnoredXIDs: ac.IgnoreXIDs, Logger: log}
	if cfg.IgnoredXIDs == nil {
		cfg.IgnoredXIDs = []uint64{} // an empty list ignores none
	}
	if cfg.WorkerCommand, err = workerCommand(); err != nil {
		return err
	}
	if ac.Profile != "" {
		if cfg.Profile, err = firmware.Load(ac.Profile); err != nil {
			return err
		}
	}
	if ac.SimGPUs != "" {
		if cfg.GPUs, err = simulatedGPUs(ac.SimGPUs); err != nil {
			return err
		}
	}
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	if *probe {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(a.Probe(ctx))
	}
	go watchdog(ctx, func(context.Context) error { return nil })
	_ = sdnotify.Ready("agent " + ac.Node + " running")
	err = a.Run(ctx)
	_ = sdnotify.Stopping("stopped")
	return err
}

// cmdConfig checks a configuration file: `callscribe config check FILE`.
func cmdConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) != 2 || args[0] != "check" {
		fmt.Fprintln(stderr, "usage: callscribe config check FILE   (coordinator.toml, agent.toml or a profile from firmware-configs/)")
		return errUsage
	}
	path := args[1]
	fs := flag.NewFlagSet("config", flag.ContinueOnError)
	var target any
	switch base := filepath.Base(path); {
	case strings.Contains(base, "agent"):
		target = defaultAgentConfig()
	case strings.Contains(base, "coordinator"):
		target = defaultCoordinatorConfig("/var/lib/callscribe")
	default:
		p, err := firmware.Load(path)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: node-class profile %q is valid\n", path, p.Class)
		return nil
	}
	src, err := config.Resolve(fs, target, path, true)
	if err != nil {
		return err
	}
	if c, ok := target.(*agentConfig); ok {
		if _, err := c.coordinatorList(); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	if c, ok := target.(*coordinatorConfig); ok && c.Vocabulary != "" {
		ws, err := models.LoadVocabulary(c.Vocabulary)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %d extra words\n", c.Vocabulary, len(ws))
	}
	fmt.Fprintf(stdout, "%s: valid; effective configuration:\n", path)
	for _, l := range config.Effective(target, src) {
		fmt.Fprintln(stdout, "  "+l)
	}
	return nil
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
