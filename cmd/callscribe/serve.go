package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/callscribe/callscribe/agent"
	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/coordinator/scaling"
	"github.com/callscribe/callscribe/internal/audit"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/config"
	"github.com/callscribe/callscribe/internal/integrity"
	"github.com/callscribe/callscribe/internal/loop"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/internal/sdnotify"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/proto"
)

// coordinatorConfig is coordinator.toml. Each key is also a flag (dashes for
// underscores) and a CALLSCRIBE_* environment variable.
type coordinatorConfig struct {
	Data          string          `toml:"data" help:"state directory (store, CA, tokens)"`
	HTTP          string          `toml:"http" help:"HTTP listen address"`
	HTTPTLS       bool            `toml:"http_tls" help:"serve the HTTP API over TLS (required off loopback)"`
	QUIC          string          `toml:"quic" help:"QUIC listen address (consoles, agents, workers)"`
	Hosts         []string        `toml:"hosts" help:"names and addresses the serving certificate covers"`
	Workers       int             `toml:"workers" help:"fewest workers of the default model the rack runs"`
	IdleSlots     int             `toml:"idle_slots" help:"idle call-channel slots to keep ready (reloadable)"`
	CheckInterval config.Duration `toml:"check_interval" help:"how often the scaling policy runs"`
	AbandonAfter  config.Duration `toml:"abandon_after" help:"end a call whose console has been gone this long (reloadable)"`
	Models        string          `toml:"models" help:"directory of extra model manifests"`
	ConsoleTokens []string        `toml:"console_tokens" help:"console credentials besides DATA/console.token: NAME:TOKEN names the console; a bare TOKEN is the console named console (reloadable)"`
	AuthFailures  int             `toml:"auth_failures_per_minute" help:"failed authentications one address may make in a minute before it is refused for a while"`
	MetricsOpen   bool            `toml:"metrics_open" help:"serve /metrics without a credential (default: operators only)"`
	AudioRet      config.Duration `toml:"audio_retention" help:"delete a call's audio this long after it is finalised (0: keep)"`
	TranscriptRet config.Duration `toml:"transcript_retention" help:"delete a whole call this long after it is finalised (0: keep)"`
	ExportURL     string          `toml:"export_url" help:"HTTPS endpoint that receives every finalised transcript (empty: no export)"`
	ExportCA      string          `toml:"export_ca" help:"CA file for the export endpoint (default: the system's)"`
	ExportToken   string          `toml:"export_token" help:"bearer token for the export endpoint"`
	LogLevel      string          `toml:"log_level" help:"debug, info, warn or error (reloadable)"`
	Vocabulary    string          `toml:"vocabulary" help:"file of extra words and their phones for new calls (reloadable)"`
	WebRTCPorts   string          `toml:"webrtc_udp_ports" help:"UDP port range for WebRTC (WHIP) media, e.g. 50000-50999 (empty: any)"`
	WebRTCMax     int             `toml:"webrtc_max_sessions" help:"most concurrent WebRTC sessions"`
	WebRTCNets    []string        `toml:"webrtc_allowed_networks" help:"networks (CIDR) remote ICE candidates may point into (empty: loopback and this host's networks)"`
	WebRTCMDNS    bool            `toml:"webrtc_allow_mdns" help:"accept mDNS (.local) ICE candidates"`
	WebRTCCands   int             `toml:"webrtc_max_candidates" help:"most ICE candidates per WebRTC session (offer and trickle)"`
	WebRTCConnect config.Duration `toml:"webrtc_connect_timeout" help:"close a WebRTC session not connected this long after its answer"`
	WebRTCIdle    config.Duration `toml:"webrtc_idle_timeout" help:"close a WebRTC session with no audio this long"`
	WebRTCPendIP  int             `toml:"webrtc_max_pending_per_remote" help:"most WebRTC sessions being set up per console address"`
	WebRTCPending int             `toml:"webrtc_max_pending" help:"most WebRTC sessions being set up in all"`
	DiskReserveMB int             `toml:"disk_reserve_mb" help:"free space (MiB) kept beyond what the store may still need; below it audio is refused (retryable), metadata goes on to a quarter of it"`
	MaxSettingUp  int             `toml:"max_setting_up" help:"most calls opened without audio yet, in all (more get a retryable error)"`
	MaxSetUpPer   int             `toml:"max_setting_up_per_console" help:"most calls opened without audio yet, per console"`
	MaxSetUpIP    int             `toml:"max_setting_up_per_remote" help:"most calls opened without audio yet, per console address"`
	FirstAudio    config.Duration `toml:"first_audio_timeout" help:"close a new call's stream that sends no audio this long after the welcome"`
	IdleRelease   config.Duration `toml:"idle_release" help:"give a channel's worker slot back after this long without new audio"`
	WorkerPing    config.Duration `toml:"worker_ping" help:"how often workers send a liveness ping"`
	WorkerTimeout config.Duration `toml:"worker_timeout" help:"drop a worker (its calls move) silent this long"`
	StoreKeyFile  string          `toml:"store_key_file" help:"the store's encryption key (32 bytes; created with a new store; default DATA/keys/store.key; systemd's store.key credential wins)"`
	ClusterName   string          `toml:"cluster_name" help:"this coordinator's name in its cluster (default: the host name, kept from the first start)"`
	ClusterListen string          `toml:"cluster_listen" help:"address the coordinator listens on for the other coordinators of its cluster (empty: a cluster of one)"`
	ClusterAdv    string          `toml:"cluster_advertise" help:"address the other coordinators dial (default: cluster_listen)"`
	ClusterCert   string          `toml:"cluster_cert" help:"this coordinator's certificate for its cluster (default DATA/coordinator.pem; callscribe ca issue --kind coordinator)"`
	ClusterKey    string          `toml:"cluster_key" help:"its key (default DATA/coordinator-key.pem)"`
	ClusterQUIC   string          `toml:"cluster_quic" help:"the QUIC address clients are sent to for this coordinator (default: quic, when it names a host)"`
	ClusterHTTP   string          `toml:"cluster_http" help:"the HTTP address clients are sent to for this coordinator (default: http, when it names a host)"`
	ClusterSnapN  int             `toml:"cluster_snapshot_entries" help:"take a snapshot (a checkpoint of the store) once the log has grown this many entries since the last one"`
	ClusterSnapIv config.Duration `toml:"cluster_snapshot_interval" help:"how often the member checks whether a snapshot is due"`
	ClusterTrail  int             `toml:"cluster_trailing_entries" help:"entries kept in the log behind a snapshot, for members that fall a little behind (further behind, a member is sent a snapshot of the store)"`
}

func defaultCoordinatorConfig(data string) *coordinatorConfig {
	return &coordinatorConfig{Data: data, HTTP: "127.0.0.1:8080", QUIC: "127.0.0.1:4433", Hosts: []string{"localhost", "127.0.0.1", "::1"},
		Workers: 2, IdleSlots: 2, CheckInterval: config.Duration{Duration: tuning.CheckInterval}, AbandonAfter: config.Duration{Duration: tuning.AbandonAfter}, LogLevel: "info",
		AudioRet: config.Duration{Duration: 30 * 24 * time.Hour}, WebRTCCands: 20, WebRTCConnect: config.Duration{Duration: 10 * time.Second},
		WebRTCIdle: config.Duration{Duration: 15 * time.Second}, WebRTCPendIP: 16, WebRTCPending: 64, DiskReserveMB: 256, MaxSettingUp: tuning.MaxSettingUp, MaxSetUpPer: tuning.MaxSettingUpPerConsole, MaxSetUpIP: tuning.MaxSettingUpPerRemote, AuthFailures: 10, FirstAudio: config.Duration{Duration: tuning.FirstAudio},
		IdleRelease: config.Duration{Duration: tuning.IdleRelease}, WorkerPing: config.Duration{Duration: tuning.WorkerPing}, WorkerTimeout: config.Duration{Duration: tuning.WorkerTimeout},
		ClusterSnapN: tuning.ClusterSnapshotThreshold, ClusterSnapIv: config.Duration{Duration: tuning.ClusterSnapshotInterval}, ClusterTrail: tuning.ClusterTrailingLogs}
}

// loaded is a resolved configuration and how to reload it.
type loaded struct {
	cfg    *coordinatorConfig
	src    config.Source
	reload func() (*coordinatorConfig, error)
}

func loadCoordinatorConfig(fs *flag.FlagSet, args []string, defData, defFile string, stderr io.Writer) (*loaded, []string, error) {
	cfg := defaultCoordinatorConfig(defData)
	config.Bind(fs, cfg)
	file := fs.String("config", defFile, "configuration file (drop-ins in FILE.d/)")
	if err := fs.Parse(args); err != nil {
		return nil, nil, errUsage
	}
	required := false
	fs.Visit(func(f *flag.Flag) { required = required || f.Name == "config" })
	src, err := config.Resolve(fs, cfg, *file, required)
	if err != nil {
		return nil, nil, err
	}
	l := &loaded{cfg: cfg, src: src}
	l.reload = func() (*coordinatorConfig, error) {
		c := defaultCoordinatorConfig(defData)
		if _, err := config.Resolve(fs, c, *file, required); err != nil {
			return nil, err
		}
		return c, nil
	}
	return l, fs.Args(), nil
}

// setup prepares the state directory (CA, serving certificate, tokens)
// and the coordinator's configuration.
func (l *loaded) setup(log *slog.Logger) (coordinator.Config, string, string, error) {
	f := l.cfg
	var cfg coordinator.Config
	if f.Data == "" {
		return cfg, "", "", errors.New("--data DIR is required")
	}
	ca, caKey, err := pki.EnsureCA(f.Data)
	if err != nil {
		return cfg, "", "", fmt.Errorf("CA: %w", err)
	}
	cert, err := pki.EnsureServerCert(f.Data, ca, caKey, f.Hosts)
	if err != nil {
		return cfg, "", "", fmt.Errorf("server certificate: %w", err)
	}
	if err := pki.EnsureNodeCert(f.Data, ca, caKey); err != nil {
		return cfg, "", "", fmt.Errorf("node certificate: %w", err)
	}
	nodeCAs := x509.NewCertPool()
	nodeCAs.AddCert(ca)
	signer, err := integrity.EnsureSigningKey(f.Data)
	if err != nil {
		return cfg, "", "", fmt.Errorf("signing key: %w", err)
	}
	ctoken, err := pki.EnsureToken(filepath.Join(f.Data, pki.ConsoleToken))
	if err != nil {
		return cfg, "", "", err
	}
	ntoken, err := pki.EnsureToken(filepath.Join(f.Data, pki.NodeToken))
	if err != nil {
		return cfg, "", "", err
	}
	otoken, err := pki.EnsureToken(filepath.Join(f.Data, pki.OperatorToken))
	if err != nil {
		return cfg, "", "", err
	}
	bare, creds, err := consoleCredentials(f.ConsoleTokens)
	if err != nil {
		return cfg, "", "", err
	}
	creds = append(creds, auth.Static{Name: "operator", Role: auth.Operator, Token: otoken, Source: "file"})
	if f.AuthFailures < 1 {
		return cfg, "", "", fmt.Errorf("auth_failures_per_minute %d: must be at least 1", f.AuthFailures)
	}
	cat, err := models.Load(f.Models)
	if err != nil {
		return cfg, "", "", err
	}
	var export coordinator.ExportConfig
	if f.ExportURL != "" {
		if !strings.HasPrefix(f.ExportURL, "https://") {
			return cfg, "", "", fmt.Errorf("export_url %q: transcripts leave only over HTTPS", f.ExportURL)
		}
		export = coordinator.ExportConfig{URL: f.ExportURL, Token: f.ExportToken}
		if f.ExportCA != "" {
			if export.RootCAs, err = pki.CertPool(f.ExportCA); err != nil {
				return cfg, "", "", err
			}
		}
	}
	var rtc coordinator.WebRTCConfig
	if f.WebRTCPorts != "" {
		var lo, hi uint16
		if _, err := fmt.Sscanf(f.WebRTCPorts, "%d-%d", &lo, &hi); err != nil || lo == 0 || lo > hi {
			return cfg, "", "", fmt.Errorf("webrtc_udp_ports %q: want a range such as 50000-50999", f.WebRTCPorts)
		}
		rtc.UDPPortMin, rtc.UDPPortMax = lo, hi
	}
	if f.WebRTCMax < 0 {
		return cfg, "", "", fmt.Errorf("webrtc_max_sessions %d: must be positive", f.WebRTCMax)
	}
	rtc.MaxSessions = f.WebRTCMax
	for _, n := range f.WebRTCNets {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			a, aerr := netip.ParseAddr(n)
			if aerr != nil {
				return cfg, "", "", fmt.Errorf("webrtc_allowed_networks: %q is neither a network (10.20.0.0/16) nor an address", n)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		rtc.AllowedNetworks = append(rtc.AllowedNetworks, p.Masked())
	}
	if f.WebRTCCands < 0 || f.WebRTCPendIP < 0 || f.WebRTCPending < 0 || f.WebRTCConnect.Duration < 0 || f.WebRTCIdle.Duration < 0 {
		return cfg, "", "", errors.New("webrtc_max_candidates, webrtc_max_pending(_per_remote) and the webrtc timeouts must not be negative")
	}
	rtc.AllowMDNS, rtc.MaxCandidates, rtc.ConnectTimeout, rtc.IdleTimeout = f.WebRTCMDNS, f.WebRTCCands, f.WebRTCConnect.Duration, f.WebRTCIdle.Duration
	rtc.MaxPendingPerRemote, rtc.MaxPending = f.WebRTCPendIP, f.WebRTCPending
	vocab, err := models.LoadVocabulary(f.Vocabulary)
	if err != nil {
		return cfg, "", "", err
	}
	lim := coordinator.Limits{MaxSettingUp: f.MaxSettingUp, MaxSettingUpPerConsole: f.MaxSetUpPer, MaxSettingUpPerRemote: f.MaxSetUpIP, FirstAudio: f.FirstAudio.Duration,
		IdleRelease: f.IdleRelease.Duration, WorkerPing: f.WorkerPing.Duration, WorkerTimeout: f.WorkerTimeout.Duration}
	if err := lim.Check(); err != nil {
		return cfg, "", "", err
	}
	if f.DiskReserveMB < 1 {
		return cfg, "", "", fmt.Errorf("disk_reserve_mb %d: must be at least 1 (MiB)", f.DiskReserveMB)
	}
	skey, skeyFile, err := storeKey(f.Data, f.StoreKeyFile, log)
	if err != nil {
		return cfg, "", "", err
	}
	cfg = coordinator.Config{StoreKey: skey, StoreKeyFile: skeyFile, DataDir: f.Data, Export: export, WebRTC: rtc, Vocabulary: vocab, HTTPTLS: f.HTTPTLS, QUICAddr: f.QUIC, HTTPAddr: f.HTTP, TLS: &tls.Config{Certificates: []tls.Certificate{cert}},
		ConsoleTokens: append([]string{ctoken}, bare...), Credentials: creds, AuthFailuresPerMinute: f.AuthFailures, MetricsOpen: f.MetricsOpen, NodeTokens: []string{ntoken}, NodeCAs: nodeCAs, Models: cat,
		MinWorkers: f.Workers, IdleSlots: f.IdleSlots, AbandonAfter: f.AbandonAfter.Duration, CheckInterval: f.CheckInterval.Duration,
		AudioRetention: f.AudioRet.Duration, TranscriptRetention: f.TranscriptRet.Duration, Limits: lim, DiskReserve: int64(f.DiskReserveMB) << 20, Signer: signer,
		Logger: log.With("component", "coordinator")}
	if f.ClusterSnapN < 1 || f.ClusterTrail < 1 || f.ClusterSnapIv.Duration < 100*time.Millisecond {
		return cfg, "", "", errors.New("cluster_snapshot_entries and cluster_trailing_entries must be at least 1, cluster_snapshot_interval at least 100ms")
	}
	cfg.Cluster = coordinator.ClusterConfig{Name: f.ClusterName, Bind: f.ClusterListen, Advertise: f.ClusterAdv, QUIC: f.ClusterQUIC, HTTP: f.ClusterHTTP,
		SnapshotThreshold: uint64(f.ClusterSnapN), TrailingLogs: uint64(f.ClusterTrail), SnapshotInterval: f.ClusterSnapIv.Duration}
	if f.ClusterListen != "" {
		cp, kp := f.ClusterCert, f.ClusterKey
		if cp == "" {
			cp = filepath.Join(f.Data, pki.CoordinatorCert)
		}
		if kp == "" {
			kp = filepath.Join(f.Data, pki.CoordinatorKey)
		}
		pc, err := pki.LoadClientCert(cp, kp)
		if err != nil {
			return cfg, "", "", fmt.Errorf("cluster_listen is set, but this coordinator's certificate cannot be loaded (issue one with `callscribe ca issue --kind coordinator` on the first member and copy it here with the CA): %w", err)
		}
		cfg.Cluster.Cert = pc
		cfg.Cluster.CAs = x509.NewCertPool()
		cfg.Cluster.CAs.AddCert(ca)
	}
	for _, line := range config.Effective(f, l.src) {
		log.Info("config", "effective", line)
	}
	return cfg, ctoken, ntoken, nil
}

// consoleCredentials reads console_tokens: "NAME:TOKEN" is the console
// NAME's token; a bare token is the console named "console" (as
// DATA/console.token).
func consoleCredentials(list []string) (bare []string, named []auth.Static, err error) {
	for _, t := range list {
		name, tok, ok := strings.Cut(t, ":")
		if !ok {
			bare = append(bare, t)
			continue
		}
		if !proto.ValidID(name) || len(tok) < 16 {
			return nil, nil, fmt.Errorf("console_tokens: %q: want NAME:TOKEN with a console id and a token of at least 16 characters", name+":…")
		}
		named = append(named, auth.Static{Name: name, Role: auth.Console, Token: tok, Source: "config"})
	}
	for _, t := range bare {
		if len(t) < 16 {
			return nil, nil, errors.New("console_tokens: a token is shorter than 16 characters")
		}
	}
	return bare, named, nil
}

// reloadOnHUP re-reads the configuration on SIGHUP and applies what can
// change without a restart: console tokens, scaling targets, the abandon
// timeout and the log level.
func reloadOnHUP(ctx context.Context, l *loaded, c *coordinator.Service, ctoken string, level *slog.LevelVar, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		_ = sdnotify.Notify("RELOADING=1\nSTATUS=reloading configuration")
		nc, err := l.reload()
		var vocab []proto.Word
		if err == nil {
			vocab, err = models.LoadVocabulary(nc.Vocabulary)
		}
		if err != nil {
			log.Error("reload refused: configuration kept as it was", "err", err)
			_ = c.AuditAs(ctx, coordinator.ActorSystem, audit.ActionConfigReload, "", audit.ErrorOutcome(err), "configuration kept as it was")
			_ = sdnotify.Notify("READY=1\nSTATUS=reload failed: " + err.Error())
			continue
		}
		bare, creds, err := consoleCredentials(nc.ConsoleTokens)
		if err == nil {
			var otoken string
			if otoken, err = pki.ReadToken(filepath.Join(nc.Data, pki.OperatorToken)); err == nil {
				creds = append(creds, auth.Static{Name: "operator", Role: auth.Operator, Token: otoken, Source: "file"})
			}
		}
		if err != nil {
			log.Error("reload refused: configuration kept as it was", "err", err)
			_ = sdnotify.Notify("READY=1\nSTATUS=reload failed: " + err.Error())
			continue
		}
		c.Reload(coordinator.Reloadable{
			ConsoleTokens: append([]string{ctoken}, bare...),
			Credentials:   creds,
			Scaling:       map[string]scaling.Policy{models.Default: {TargetIdle: nc.IdleSlots, Hysteresis: tuning.ScalingHysteresis, Cooldown: tuning.ScalingCooldown, Min: nc.Workers}},
			AbandonAfter:  nc.AbandonAfter.Duration,
			Vocabulary:    vocab,
		})
		level.Set(parseLevel(nc.LogLevel))
		log.Info("configuration reloaded", "idle_slots", nc.IdleSlots, "workers", nc.Workers, "console_tokens", len(nc.ConsoleTokens)+1, "log_level", nc.LogLevel,
			"vocabulary_words", len(vocab))
		_ = sdnotify.Notify("READY=1\nSTATUS=serving (configuration reloaded)")
	}
}

// cmdCoordinator runs the coordinator alone.
func cmdCoordinator(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	l, _, err := loadCoordinatorConfig(fs, args, "/var/lib/callscribe", "/etc/callscribe/coordinator.toml", stderr)
	if err != nil {
		return err
	}
	log, level := newLeveledLogger(stderr, l.cfg.LogLevel)
	cfg, ctoken, _, err := l.setup(log)
	if err != nil {
		return err
	}
	c, err := coordinator.NewService(cfg)
	if err != nil {
		return err
	}
	// The watchdog and the reloader are owned here: they end with Run.
	sctx, scancel := context.WithCancel(ctx)
	var side sync.WaitGroup
	side.Add(3)
	go func() { defer side.Done(); watchdog(sctx, c.Healthy) }()
	go func() { defer side.Done(); reloadOnHUP(sctx, l, c, ctoken, level, log) }()
	go func() {
		defer side.Done()
		select {
		case <-c.Bound():
			log.Info("coordinator listening", "quic", c.QUICAddr().String(), "http", c.HTTPAddr().String(), "data", l.cfg.Data)
			_ = sdnotify.Ready("serving: quic " + c.QUICAddr().String() + ", http " + c.HTTPAddr().String())
		case <-sctx.Done():
		}
	}()
	err = c.Run(ctx)
	scancel()
	side.Wait()
	_ = sdnotify.Stopping("stopped")
	return err
}

// cmdDev runs a whole appliance on this machine: coordinator, one local agent and
// its workers, on loopback.
func cmdDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	node := fs.String("node", "local", "node id of the local agent")
	sim := fs.String("sim-gpus", "", "give the local agent a simulated GPU server (dgxa100) instead of NVML (development builds only: -tags simgpus)")
	l, _, err := loadCoordinatorConfig(fs, args, "", "", stderr)
	if err != nil {
		return err
	}
	if l.cfg.Data == "" {
		fmt.Fprintln(stderr, "dev: --data DIR is required")
		return errUsage
	}
	log, level := newLeveledLogger(stderr, l.cfg.LogLevel)
	cfg, ctoken, ntoken, err := l.setup(log)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "token: %s\n", ctoken)
	fmt.Fprintf(stdout, "operator token: %s\n", filepath.Join(l.cfg.Data, pki.OperatorToken))
	c, err := coordinator.NewService(cfg)
	if err != nil {
		return err
	}
	// The service runs from here on; the agent is given its address once bound.
	runCtx, runCancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(runCtx) }()
	closeService := func() { runCancel(); <-runErr }
	select {
	case <-c.Bound():
	case err := <-runErr:
		runCancel()
		return err
	}
	wc, err := workerCommand()
	if err != nil {
		closeService()
		return err
	}
	acfg := agent.Config{NodeID: proto.NodeID(*node), Coordinator: c.QUICAddr().String(), CAFile: filepath.Join(l.cfg.Data, pki.CAFile),
		CertFile: filepath.Join(l.cfg.Data, pki.NodeCert), KeyFile: filepath.Join(l.cfg.Data, pki.NodeKey),
		ServerName: "localhost", Token: ntoken, WorkerCommand: wc, ModelDir: l.cfg.Models, StateDir: l.cfg.Data, Logger: log.With("component", "agent")}
	if *sim != "" {
		if acfg.GPUs, err = simulatedGPUs(*sim); err != nil {
			closeService()
			return err
		}
	}
	a, err := agent.New(acfg)
	if err != nil {
		closeService()
		return err
	}
	log.Info("callscribe dev appliance", "quic", c.QUICAddr().String(), "http", c.HTTPAddr().String(), "data", l.cfg.Data,
		"ca", filepath.Join(l.cfg.Data, pki.CAFile), "workers", l.cfg.Workers)
	actx, acancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); reloadOnHUP(actx, l, c, ctoken, level, log) }()
	go func() {
		defer wg.Done()
		if err := a.Run(actx); err != nil {
			log.Error("agent", "err", err)
		}
	}()
	select {
	case <-ctx.Done():
		runCancel()
		err = <-runErr
	case err = <-runErr:
		runCancel()
	}
	acancel() // the agent stops its workers; the reloader ends
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
	loop.Every(ctx, iv, nil, func() {
		if healthy(ctx) == nil {
			_ = sdnotify.Watchdog()
		}
	})
}
