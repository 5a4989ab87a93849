// Package coordinator is the centre of a callscribe appliance. It accepts
// console streams (through ingest), makes every frame durable in the store
// before acknowledging it, registers agents and workers, dispatches each
// call channel to a worker in order, persists finals with their engine
// checkpoints, moves channels to another worker when one fails, and serves
// the HTTP API.
package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callscribe/callscribe/coordinator/calls"
	"github.com/callscribe/callscribe/coordinator/rack"
	"github.com/callscribe/callscribe/coordinator/scaling"
	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/ingest/whip"
	"github.com/callscribe/callscribe/internal/audit"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/integrity"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

// Coordinator is a running coordinator.
type Coordinator struct {
	cfg   Config
	log   *slog.Logger
	store *store.Store
	// rack is the agents, workers and their placement (package rack).
	rack *rack.Rack
	// abandonAfter is the reloadable AbandonAfter.
	abandonAfter atomic.Int64
	metrics      metrics
	ingest       *ingest.Server
	whip         *whip.Server
	// closing is closed when shutdown starts, ending long-lived HTTP
	// responses (server-sent events).
	closing chan struct{}

	auth *auth.Registry
	// deniedAt rate-limits audit entries of refused requests per
	// credential (audithooks.go).
	deniedMu   sync.Mutex
	deniedAt   map[string]time.Time
	vocabulary atomic.Pointer[[]proto.Word]

	exportKick chan struct{}
	// auditKick wakes the exporter for new audit entries (not while it
	// waits out a backoff).
	auditKick chan struct{}
	// auditTo replaces the store as the audit log's destination (tests).
	auditTo atomic.Pointer[auditAppender]
	// auditExportFails counts failed audit export attempts in a row (the
	// exporter's goroutine only).
	auditExportFails int

	// calls is the live-call path (package calls).
	calls *calls.Manager

	// member is the store and cluster member this term serves from;
	// owned: New opened it and shutdown closes it. lost is closed when the
	// member stops leading, which ends the term.
	member *Member
	owned  bool
	lost   <-chan struct{}

	mu    sync.Mutex
	conns map[*quic.Conn]struct{}

	runCtx context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup

	qt *quic.Transport
	// closeQUIC closes the listener, the transport and its socket.
	closeQUIC func()
	ql        *quic.Listener
	httpLn    net.Listener
	httpSrv   *http.Server
	probeMu   sync.Mutex
	probeAt   time.Time
	probeErr  error
	probing   bool // a probe is under way (probeMu)
}

// New opens the store and recovers in-flight calls. Call Listen, then Serve.
func New(cfg Config) (*Coordinator, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = tuning.HeartbeatInterval
	}
	if cfg.HeartbeatTTL == 0 {
		cfg.HeartbeatTTL = tuning.HeartbeatTTL
	}
	if cfg.AbandonAfter == 0 {
		cfg.AbandonAfter = tuning.AbandonAfter
	}
	if cfg.RetentionInterval == 0 {
		cfg.RetentionInterval = tuning.RetentionInterval
	}
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = tuning.CheckInterval
	}
	cfg.Limits = cfg.Limits.withDefaults()
	if cfg.Scaling == nil {
		cfg.Scaling = map[string]scaling.Policy{models.Default: {TargetIdle: cfg.IdleSlots, Hysteresis: tuning.ScalingHysteresis, Cooldown: tuning.ScalingCooldown, Min: cfg.MinWorkers}}
	}
	if cfg.Models == nil {
		cat, err := models.Load("")
		if err != nil {
			return nil, err
		}
		cfg.Models = cat
	}
	if cfg.Signer == nil {
		key, err := integrity.EnsureSigningKey(cfg.DataDir)
		if err != nil {
			return nil, fmt.Errorf("coordinator: signing key: %w", err)
		}
		cfg.Signer = key
	}
	c := &Coordinator{cfg: cfg, log: cfg.Logger, conns: map[*quic.Conn]struct{}{}, exportKick: make(chan struct{}, 1), auditKick: make(chan struct{}, 1)}
	c.metrics.p = newProm(c)
	c.abandonAfter.Store(int64(cfg.AbandonAfter))
	m := cfg.Member
	if m == nil {
		if cfg.Cluster.Bind != "" {
			return nil, errors.New("coordinator: a cluster member is run by coordinator.Run")
		}
		var err error
		if m, err = OpenMember(cfg, c.metrics.p.commit); err != nil {
			return nil, err
		}
		c.owned = true
	} else {
		observe := c.metrics.p.commit
		m.onCommit.Store(&observe)
	}
	c.member = m
	closeMember := func() {
		if c.owned {
			_ = m.Close()
		}
	}
	// A term as leader begins once every earlier write is applied here.
	lctx, lcancel := context.WithTimeout(context.Background(), tuning.ClusterApplyTimeout)
	err := m.waitLeader(lctx)
	if err == nil {
		var leading bool
		if leading, c.lost = m.Node.Leading(); !leading {
			err = ErrNotLeader
		}
	}
	if err == nil {
		err = m.lead(lctx)
	}
	lcancel()
	if err != nil {
		closeMember()
		return nil, err
	}
	st := m.Store
	c.store = st
	c.runCtx, c.stop = context.WithCancel(context.Background())
	c.auth, err = auth.NewRegistry(st, staticCredentials(cfg.ConsoleTokens, cfg.Credentials), auth.Options{
		FailuresPerMinute: cfg.AuthFailuresPerMinute, Logger: cfg.Logger.With("component", "auth"), OnRevoke: c.revoked})
	if err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	vocab := slices.Clone(cfg.Vocabulary)
	c.vocabulary.Store(&vocab)
	lim := cfg.Limits
	c.rack = rack.New(rack.Config{Store: st, Observer: &c.metrics, Models: cfg.Models, Scaling: cfg.Scaling, CheckInterval: cfg.CheckInterval,
		HeartbeatInterval: cfg.HeartbeatInterval, HeartbeatTTL: cfg.HeartbeatTTL, Limits: rack.Limits{WorkerPing: lim.WorkerPing, WorkerTimeout: lim.WorkerTimeout},
		NodeTokens: cfg.NodeTokens, NodeCAs: cfg.NodeCAs, Log: cfg.Logger})
	c.calls = calls.New(calls.Config{Store: st, Workers: c.rack.Workers(), Observer: &c.metrics, Models: cfg.Models, Log: cfg.Logger,
		Limits:       calls.Limits{MaxSettingUp: lim.MaxSettingUp, MaxSettingUpPerConsole: lim.MaxSettingUpPerConsole, MaxSettingUpPerRemote: lim.MaxSettingUpPerRemote, IdleRelease: lim.IdleRelease},
		AbandonAfter: func() time.Duration { return time.Duration(c.abandonAfter.Load()) },
		Vocabulary:   func() []proto.Word { return *c.vocabulary.Load() },
		Export:       cfg.Export.URL != "",
		Seal:         c.sealTranscript,
		OnFinalised: func() {
			select {
			case c.exportKick <- struct{}{}:
			default:
			}
		}})
	c.ingest = &ingest.Server{Sink: c.calls, Log: cfg.Logger.With("component", "ingest"), Auth: c.Authenticate, FirstAudio: cfg.Limits.FirstAudio}
	c.closing = make(chan struct{})
	c.whip, err = whip.New(whip.Config{Sink: c.calls, Auth: c.Authenticate, Log: cfg.Logger.With("component", "whip"),
		MaxSessions: cfg.WebRTC.MaxSessions, UDPPortMin: cfg.WebRTC.UDPPortMin, UDPPortMax: cfg.WebRTC.UDPPortMax, Loopback: true,
		AllowedNetworks: cfg.WebRTC.AllowedNetworks, AllowMDNS: cfg.WebRTC.AllowMDNS, MaxCandidates: cfg.WebRTC.MaxCandidates,
		ConnectTimeout: cfg.WebRTC.ConnectTimeout, IdleTimeout: cfg.WebRTC.IdleTimeout,
		MaxPendingPerRemote: cfg.WebRTC.MaxPendingPerRemote, MaxPending: cfg.WebRTC.MaxPending})
	if err != nil {
		closeMember()
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	return c, nil
}

// Store returns the coordinator's store (for tests and tools in-process).
func (c *Coordinator) Store() *store.Store { return c.store }

// Listen binds the QUIC and HTTP listeners and recovers in-flight calls.
func (c *Coordinator) Listen() error {
	qt, ql, closeQUIC, err := bindQUIC(c.cfg)
	if err != nil {
		return err
	}
	c.qt, c.closeQUIC = qt, closeQUIC
	hl, err := bindHTTP(c.cfg)
	if err != nil {
		closeQUIC()
		return err
	}
	c.ql, c.httpLn = ql, hl
	pctx, pcancel := context.WithTimeout(context.Background(), tuning.ClusterApplyTimeout)
	err = c.member.publish(pctx, advertised(c.cfg.Cluster.QUIC, ql.Addr().String()), advertised(c.cfg.Cluster.HTTP, hl.Addr().String()))
	pcancel()
	if err == nil {
		if err = c.rack.LoadDraining(); err != nil {
			err = fmt.Errorf("coordinator: load nodes: %w", err)
		}
	}
	if err == nil {
		if err = c.calls.Recover(); err != nil {
			err = fmt.Errorf("coordinator: %w", err)
		}
	}
	if err != nil {
		// Recovery may have started dispatchers: stop and wait for them.
		c.stop()
		c.wg.Wait()
		c.calls.Stop()
		closeQUIC()
		_ = hl.Close()
	}
	return err
}

// bindQUIC binds the QUIC listener of consoles and nodes.
func bindQUIC(cfg Config) (*quic.Transport, *quic.Listener, func(), error) {
	tc := cfg.TLS.Clone()
	tc.NextProtos = []string{proto.ALPNConsole, proto.ALPNNode}
	tc.MinVersion = tls.VersionTLS13
	if cfg.NodeCAs != nil {
		// Consoles may come without a certificate; whatever certificate is
		// presented must verify, and node connections must present one.
		tc.ClientAuth, tc.ClientCAs = tls.VerifyClientCertIfGiven, cfg.NodeCAs
	}
	// A stateless-reset key that survives restarts: packets for the
	// connections of a killed coordinator are answered with a reset, so
	// consoles, agents and workers reconnect at once instead of waiting out
	// their idle timeout.
	key, err := pki.EnsureKey(filepath.Join(cfg.DataDir, "quic-reset.key"))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("coordinator: stateless reset key: %w", err)
	}
	srk := quic.StatelessResetKey(key)
	ua, err := net.ResolveUDPAddr("udp", cfg.QUICAddr)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("coordinator: quic address %s: %w", cfg.QUICAddr, err)
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("coordinator: listen quic %s: %w", cfg.QUICAddr, err)
	}
	qt := &quic.Transport{Conn: udp, StatelessResetKey: &srk}
	ql, err := qt.Listen(tc, &quic.Config{
		MaxIdleTimeout:        tuning.CoordinatorQUICIdle,
		KeepAlivePeriod:       tuning.CoordinatorQUICKeepAlive,
		MaxIncomingStreams:    tuning.CoordinatorQUICStreams,
		MaxIncomingUniStreams: -1,
	})
	if err != nil {
		_ = qt.Close()
		udp.Close()
		return nil, nil, nil, fmt.Errorf("coordinator: listen quic %s: %w", cfg.QUICAddr, err)
	}
	// A failed Listen leaves nothing running: the transport's goroutines
	// end with it.
	return qt, ql, func() {
		_ = ql.Close()
		_ = qt.Close()
		_ = udp.Close()
	}, nil
}

// bindHTTP binds the HTTP listener (TLS when configured).
func bindHTTP(cfg Config) (net.Listener, error) {
	if !cfg.HTTPTLS && !loopback(cfg.HTTPAddr) {
		return nil, fmt.Errorf("coordinator: plain HTTP on %s would send transcripts in the clear: set http_tls = true or listen on loopback", cfg.HTTPAddr)
	}
	hl, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("coordinator: listen http %s: %w", cfg.HTTPAddr, err)
	}
	if cfg.HTTPTLS {
		htc := cfg.TLS.Clone()
		htc.MinVersion, htc.NextProtos = tls.VersionTLS12, []string{"h2", "http/1.1"}
		if cfg.NodeCAs != nil {
			// Consoles may present a console certificate instead of a
			// token (WHIP and the transcript API).
			htc.ClientAuth, htc.ClientCAs = tls.VerifyClientCertIfGiven, cfg.NodeCAs
		}
		hl = tls.NewListener(hl, htc)
	}
	return hl, nil
}

// loopback reports whether a listen address is on the loopback interface.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// QUICAddr is the bound QUIC address.
func (c *Coordinator) QUICAddr() net.Addr { return c.ql.Addr() }

// HTTPAddr is the bound HTTP address.
func (c *Coordinator) HTTPAddr() net.Addr { return c.httpLn.Addr() }

// Serve runs until ctx is cancelled, then shuts down: it stops accepting,
// lets in-flight writes finish and closes the store.
func (c *Coordinator) Serve(ctx context.Context) error {
	c.httpSrv = &http.Server{Handler: c.routes(), ReadHeaderTimeout: tuning.ReadHeaderTimeout}
	// Every goroutine below, and every one they start (connections,
	// streams, dispatchers, writers), is in c.wg: shutdown waits for all.
	errc := make(chan error, 2)
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		if err := c.httpSrv.Serve(c.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	}()
	go func() {
		defer c.wg.Done()
		errc <- c.acceptLoop()
	}()
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		c.rack.Run(c.runCtx)
	}()
	go func() {
		defer c.wg.Done()
		c.retentionLoop(c.runCtx)
	}()
	if c.cfg.Export.URL != "" {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.exporter(c.runCtx)
		}()
	}
	c.calls.Run()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	case <-c.lost:
		err = ErrNotLeader
		c.log.Warn("coordinator: this member no longer leads: its term ends; clients move to the new leader")
	case <-c.member.Node.Failed():
		err = c.member.Node.Err()
	}
	c.shutdown()
	return err
}

// ErrNotLeader ends Serve when the member stops leading (Run then follows
// the new leader).
var ErrNotLeader = errors.New("coordinator: no longer the leader")

// Close releases a coordinator that will not Serve (Listen failed, or the
// caller gave up before serving): its listeners, the live-call path and
// the store, which is closed cleanly.
func (c *Coordinator) Close() error {
	c.stop()
	c.calls.Cancel()
	c.whip.Close()
	if c.ql != nil {
		_ = c.ql.Close()
	}
	if c.closeQUIC != nil {
		c.closeQUIC()
	}
	if c.httpLn != nil {
		_ = c.httpLn.Close()
	}
	c.wg.Wait()
	c.calls.Stop()
	if c.owned {
		return c.member.Close()
	}
	return nil
}

// shutdown stops the coordinator in this order:
//
//  1. Stop accepting: event streams end (closing), WHIP sessions close
//     (their calls go on; consoles resume them), the HTTP server stops
//     and waits for its handlers, the QUIC listener closes.
//  2. End sessions: the run context and the live-call path's are
//     cancelled, which ends the janitor, reconciler, retention and
//     exporter loops and every dispatcher (before any worker connection
//     closes: no failover is counted for a shutdown); every
//     console, agent and worker connection is closed, which ends their
//     streams (sessions close, a worker's assignment fails).
//  3. Wait for every goroutine (c.wg), then stop the live-call path
//     (calls.Manager.Stop: dispatchers, frame writers and the janitor end
//     and are waited for, the writers settling their last writes with the
//     store still open).
//  4. Close the store last: its committer drains, failing any write still
//     queued with store.ErrClosed, and Badger closes.
func (c *Coordinator) shutdown() {
	sctx, cancel := context.WithTimeout(context.Background(), tuning.ShutdownTimeout)
	defer cancel()
	close(c.closing)
	c.whip.Close()
	if err := c.httpSrv.Shutdown(sctx); err != nil {
		// Handlers that outlived the grace (a slow audio download) are cut
		// off: none may read the store after it closes.
		_ = c.httpSrv.Close()
	}
	c.stop()
	c.calls.Cancel()
	_ = c.ql.Close()
	defer c.closeQUIC()
	// In-flight appends have finished or failed with the cancelled context;
	// close every connection so consoles and workers reconnect elsewhere (or
	// to this coordinator once restarted).
	c.mu.Lock()
	conns := make([]*quic.Conn, 0, len(c.conns))
	for conn := range c.conns {
		conns = append(conns, conn)
	}
	c.mu.Unlock()
	for _, conn := range conns {
		_ = conn.CloseWithError(0, "coordinator shutting down")
	}
	c.wg.Wait()
	c.calls.Stop()
	if c.owned {
		if err := c.member.Close(); err != nil {
			c.log.Error("store close", "err", err)
		}
	}
	c.log.Info("coordinator stopped")
}

func (c *Coordinator) acceptLoop() error {
	for {
		conn, err := c.ql.Accept(c.runCtx)
		if err != nil {
			if c.runCtx.Err() != nil || errors.Is(err, quic.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("quic accept: %w", err)
		}
		c.mu.Lock()
		c.conns[conn] = struct{}{}
		c.mu.Unlock()
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer func() {
				c.mu.Lock()
				delete(c.conns, conn)
				c.mu.Unlock()
			}()
			switch conn.ConnectionState().TLS.NegotiatedProtocol {
			case proto.ALPNConsole:
				c.ingest.ServeConn(c.runCtx, conn)
			case proto.ALPNNode:
				c.rack.ServeNode(c.runCtx, conn)
			default:
				_ = conn.CloseWithError(1, "unknown ALPN")
			}
		}()
	}
}

// Reloadable is the part of the configuration that changes without a
// restart (SIGHUP).
type Reloadable struct {
	// ConsoleTokens and Credentials replace those of Config (tokens made
	// by `token add` are not affected).
	ConsoleTokens []string
	Credentials   []auth.Static
	Scaling       map[string]scaling.Policy
	AbandonAfter  time.Duration
	// Vocabulary replaces the extra words for calls opened from now on.
	Vocabulary []proto.Word
}

// Reload applies a new reloadable configuration.
func (c *Coordinator) Reload(r Reloadable) {
	if err := c.auth.SetStatic(staticCredentials(r.ConsoleTokens, r.Credentials)); err != nil {
		c.log.Error("reload: credentials not changed", "err", err)
	}
	vocab := slices.Clone(r.Vocabulary)
	c.vocabulary.Store(&vocab)
	if r.Scaling != nil {
		c.rack.SetScaling(r.Scaling)
	}
	if r.AbandonAfter > 0 {
		c.abandonAfter.Store(int64(r.AbandonAfter))
	}
	actx, cancel := context.WithTimeout(context.Background(), tuning.AuditTimeout)
	defer cancel()
	_ = c.AuditAs(actx, ActorSystem, audit.ActionConfigReload, "", audit.OutcomeOK,
		fmt.Sprintf("%d static credentials, %d vocabulary words, abandon after %s", len(r.ConsoleTokens)+len(r.Credentials), len(vocab), r.AbandonAfter))
}

// Healthy reports whether the store accepts writes (the watchdog's check).
// A full disk is not a fault of the process: the store refuses writes on
// purpose and recovers by itself when space returns, so a restart would
// only make things worse; it is reported by /readyz, metrics and the log.
func (c *Coordinator) Healthy(ctx context.Context) error {
	err := c.probe(ctx)
	if errors.Is(err, store.ErrDiskFull) {
		return nil
	}
	return err
}

// probe reports whether the store is writable, at most once a second.
func (c *Coordinator) probe(ctx context.Context) error {
	c.probeMu.Lock()
	if time.Since(c.probeAt) < tuning.ProbeEvery || c.probing {
		// Fresh enough, or another caller is probing now: the last result
		// (the lock is never held across the store's write).
		err := c.probeErr
		c.probeMu.Unlock()
		return err
	}
	c.probing = true
	c.probeMu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, tuning.ProbeTimeout)
	defer cancel()
	err := c.store.Probe(pctx)
	c.probeMu.Lock()
	c.probeErr, c.probeAt, c.probing = err, time.Now(), false
	c.probeMu.Unlock()
	return err
}
