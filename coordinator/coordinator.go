// Package coordinator is the centre of a callscribe appliance. It accepts
// console streams (through ingest), makes every frame durable in the store
// before acknowledging it, registers agents and workers, dispatches each
// call channel to a worker in order, persists finals with their engine
// checkpoints, moves channels to another worker when one fails, and serves
// the HTTP API.
package coordinator

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callscribe/callscribe/coordinator/scaling"
	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/ingest/whip"
	"github.com/callscribe/callscribe/internal/audit"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/integrity"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

// Config configures a coordinator.
type Config struct {
	DataDir  string
	QUICAddr string
	HTTPAddr string
	// HTTPTLS serves the HTTP API over TLS with the serving certificate.
	// Plain HTTP is allowed on loopback addresses only.
	HTTPTLS bool
	TLS     *tls.Config // serving certificate
	// ConsoleTokens are tokens of the console named "console" (dev's
	// DATA/console.token and bare console_tokens).
	ConsoleTokens []string
	// Credentials are further tokens from files and the configuration,
	// each naming a principal and its role (DATA/operator.token,
	// console_tokens = ["NAME:TOKEN"]). Tokens made by `callscribe token
	// add` live in the store.
	Credentials []auth.Static
	// AuthFailuresPerMinute is how many failed authentications one address
	// may make in a minute before it is refused for a while (default 10).
	AuthFailuresPerMinute int
	// MetricsOpen serves /metrics without a credential (default: operators
	// only), for a Prometheus on a trusted network.
	MetricsOpen bool
	NodeTokens  []string
	// NodeCAs, when set, makes the node plane mutual TLS: agents and
	// workers must present a client certificate of kind "node" from these
	// CAs (a certificate from any other CA fails the handshake).
	NodeCAs *x509.CertPool
	Models  models.Catalog
	// MinWorkers is the fewest workers of the default model the rack runs.
	MinWorkers int
	// IdleSlots is the default model's target of idle call-channel slots
	// (the reference design's SCALING_TARGET).
	IdleSlots int
	// Scaling overrides the policy per model; models without one are not
	// scaled (their workers are started by hand or by another policy).
	Scaling map[string]scaling.Policy
	// CheckInterval is how often the scaling policy runs (CHECK_INTERVAL).
	CheckInterval time.Duration
	// HeartbeatInterval and HeartbeatTTL are handed to agents: an agent
	// silent for TTL is declared lost.
	HeartbeatInterval time.Duration
	HeartbeatTTL      time.Duration
	// AbandonAfter ends a call whose console has been gone, with no new
	// audio, this long (default 2 minutes): it is finalised with what was
	// received, and its workers are freed.
	AbandonAfter time.Duration
	// AudioRetention deletes a call's audio this long after it was
	// finalised (0: keep); TranscriptRetention deletes the whole call
	// (0: keep transcripts for ever). RetentionInterval is how often the
	// policy and Badger's value-log GC run (default 10 minutes).
	AudioRetention      time.Duration
	TranscriptRetention time.Duration
	RetentionInterval   time.Duration
	// Export sends finalised transcripts upstream (off when URL is empty).
	Export ExportConfig
	// WebRTC configures the WHIP endpoint.
	WebRTC WebRTCConfig
	// Vocabulary is the extra words new calls are decoded with (reloadable;
	// a call keeps the words it opened with).
	Vocabulary []proto.Word
	// Limits bounds what set-up calls, idle channels and silent workers
	// may cost (zero fields take their defaults).
	Limits Limits
	// DiskReserve is the free space the store keeps beyond what Badger may
	// still need before it refuses audio (0: store.DefaultDiskReserve).
	DiskReserve int64
	// Signer signs the integrity statements served with transcripts (nil:
	// DATA/keys/signing.key, created if missing).
	Signer ed25519.PrivateKey
	// StoreKey is the store's encryption key (store.Options.Key; nil: none)
	// and StoreKeyFile where it came from, for errors.
	StoreKey     []byte
	StoreKeyFile string
	Logger       *slog.Logger
}

// Limits are the coordinator's admission and liveness bounds.
type Limits struct {
	// MaxSettingUp bounds calls opened but without audio yet (a hello or a
	// WHIP offer that has not sent a frame), in all (default 64) and per
	// console (MaxSettingUpPerConsole, default 8). Beyond them a new call
	// gets a retryable "unavailable" (WHIP: 503 with Retry-After). Calls
	// with audio, and resumes, are never refused by these limits.
	MaxSettingUp, MaxSettingUpPerConsole int
	// MaxSettingUpPerRemote bounds the same per address the calls come
	// from (default 16), whatever console ids they claim.
	MaxSettingUpPerRemote int
	// FirstAudio closes a console stream of a call without audio that has
	// sent nothing within it (default 10 s); the call, never started, is
	// dropped.
	FirstAudio time.Duration
	// IdleRelease gives a channel's worker slot back after this long
	// without new audio (default 5 s); the channel is assigned again,
	// resuming from its checkpoint, when audio returns.
	IdleRelease time.Duration
	// WorkerPing is how often workers send a liveness ping (default
	// 100 ms); a worker silent for WorkerTimeout (default 600 ms) is
	// dropped and its channels move, as after a crash.
	WorkerPing, WorkerTimeout time.Duration
}

func (l Limits) withDefaults() Limits {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if l.MaxSettingUp == 0 {
		l.MaxSettingUp = 64
	}
	if l.MaxSettingUpPerConsole == 0 {
		l.MaxSettingUpPerConsole = 8
	}
	if l.MaxSettingUpPerRemote == 0 {
		l.MaxSettingUpPerRemote = 16
	}
	def(&l.FirstAudio, 10*time.Second)
	def(&l.IdleRelease, 5*time.Second)
	def(&l.WorkerPing, 100*time.Millisecond)
	def(&l.WorkerTimeout, 600*time.Millisecond)
	return l
}

// Check reports limits that cannot work.
func (l Limits) Check() error {
	switch {
	case l.MaxSettingUp < 0 || l.MaxSettingUpPerConsole < 0 || l.MaxSettingUpPerRemote < 0:
		return fmt.Errorf("max_setting_up %d / max_setting_up_per_console %d / max_setting_up_per_remote %d: must not be negative", l.MaxSettingUp, l.MaxSettingUpPerConsole, l.MaxSettingUpPerRemote)
	case l.FirstAudio < 0 || l.IdleRelease < 0 || l.WorkerPing < 0 || l.WorkerTimeout < 0:
		return errors.New("first_audio_timeout, idle_release, worker_ping and worker_timeout must not be negative")
	case l.WorkerPing > 0 && l.WorkerTimeout > 0 && l.WorkerTimeout < 3*l.WorkerPing:
		return fmt.Errorf("worker_timeout %v must be at least 3 × worker_ping %v, or one late ping drops a healthy worker", l.WorkerTimeout, l.WorkerPing)
	}
	return nil
}

// limits returns the coordinator's limits.
func (c *Coordinator) limits() Limits { return c.cfg.Limits }

// WebRTCConfig configures WebRTC (WHIP) ingest.
type WebRTCConfig struct {
	// UDPPortMin and UDPPortMax bound ICE's UDP ports (0: any), for
	// firewalls.
	UDPPortMin, UDPPortMax uint16
	// MaxSessions bounds concurrent WebRTC sessions (default 1000).
	MaxSessions int
	// AllowedNetworks are the networks remote ICE candidates may point
	// into (nil: loopback and this host's attached networks); AllowMDNS
	// accepts .local candidates; MaxCandidates bounds candidates per
	// session. See whip.Config.
	AllowedNetworks []netip.Prefix
	AllowMDNS       bool
	MaxCandidates   int
	// ConnectTimeout and IdleTimeout close sessions that never connect or
	// stop sending audio; MaxPendingPerRemote and MaxPending bound
	// sessions not yet connected (0: whip's defaults).
	ConnectTimeout, IdleTimeout     time.Duration
	MaxPendingPerRemote, MaxPending int
}

// Coordinator is a running coordinator.
type Coordinator struct {
	cfg     Config
	log     *slog.Logger
	store   *store.Store
	reg     *registry
	metrics metrics
	ingest  *ingest.Server
	whip    *whip.Server
	// closing is closed when shutdown starts, ending long-lived HTTP
	// responses (server-sent events).
	closing chan struct{}

	auth       *auth.Registry
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

	mu    sync.Mutex
	calls map[proto.CallID]*call
	conns map[*quic.Conn]struct{}

	runCtx context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup

	qt       *quic.Transport
	ql       *quic.Listener
	httpLn   net.Listener
	httpSrv  *http.Server
	probeMu  sync.Mutex
	probeAt  time.Time
	probeErr error
}

// New opens the store and recovers in-flight calls. Call Listen, then Serve.
func New(cfg Config) (*Coordinator, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = 250 * time.Millisecond
	}
	if cfg.HeartbeatTTL == 0 {
		cfg.HeartbeatTTL = 850 * time.Millisecond // + up to 10 % jitter: lost within 1 s
	}
	if cfg.AbandonAfter == 0 {
		cfg.AbandonAfter = 2 * time.Minute
	}
	if cfg.RetentionInterval == 0 {
		cfg.RetentionInterval = 10 * time.Minute
	}
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = time.Second
	}
	cfg.Limits = cfg.Limits.withDefaults()
	if cfg.Scaling == nil {
		cfg.Scaling = map[string]scaling.Policy{models.Default: {TargetIdle: cfg.IdleSlots, Hysteresis: 2, Cooldown: time.Minute, Min: cfg.MinWorkers}}
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
	c := &Coordinator{cfg: cfg, log: cfg.Logger, reg: newRegistry(cfg.Logger.With("component", "registry")), calls: map[proto.CallID]*call{}, conns: map[*quic.Conn]struct{}{}, exportKick: make(chan struct{}, 1), auditKick: make(chan struct{}, 1)}
	c.metrics.p = newProm(c)
	st, err := store.Open(cfg.DataDir+"/store", store.Options{Logger: cfg.Logger.With("component", "store"), OnCommit: c.metrics.p.commit, DiskReserve: cfg.DiskReserve,
		Key: cfg.StoreKey, KeyFile: cfg.StoreKeyFile})
	if err != nil {
		return nil, err
	}
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
	c.ingest = &ingest.Server{Sink: c, Log: cfg.Logger.With("component", "ingest"), Auth: c.Authenticate, FirstAudio: cfg.Limits.FirstAudio}
	c.closing = make(chan struct{})
	c.whip, err = whip.New(whip.Config{Sink: c, Auth: c.Authenticate, Log: cfg.Logger.With("component", "whip"),
		MaxSessions: cfg.WebRTC.MaxSessions, UDPPortMin: cfg.WebRTC.UDPPortMin, UDPPortMax: cfg.WebRTC.UDPPortMax, Loopback: true,
		AllowedNetworks: cfg.WebRTC.AllowedNetworks, AllowMDNS: cfg.WebRTC.AllowMDNS, MaxCandidates: cfg.WebRTC.MaxCandidates,
		ConnectTimeout: cfg.WebRTC.ConnectTimeout, IdleTimeout: cfg.WebRTC.IdleTimeout,
		MaxPendingPerRemote: cfg.WebRTC.MaxPendingPerRemote, MaxPending: cfg.WebRTC.MaxPending})
	if err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	return c, nil
}

// Store returns the coordinator's store (for tests and tools in-process).
func (c *Coordinator) Store() *store.Store { return c.store }

// Listen binds the QUIC and HTTP listeners and recovers in-flight calls.
func (c *Coordinator) Listen() error {
	tc := c.cfg.TLS.Clone()
	tc.NextProtos = []string{proto.ALPNConsole, proto.ALPNNode}
	tc.MinVersion = tls.VersionTLS13
	if c.cfg.NodeCAs != nil {
		// Consoles may come without a certificate; whatever certificate is
		// presented must verify, and node connections must present one.
		tc.ClientAuth, tc.ClientCAs = tls.VerifyClientCertIfGiven, c.cfg.NodeCAs
	}
	// A stateless-reset key that survives restarts: packets for the
	// connections of a killed coordinator are answered with a reset, so
	// consoles, agents and workers reconnect at once instead of waiting out
	// their idle timeout.
	key, err := pki.EnsureKey(filepath.Join(c.cfg.DataDir, "quic-reset.key"))
	if err != nil {
		return fmt.Errorf("coordinator: stateless reset key: %w", err)
	}
	srk := quic.StatelessResetKey(key)
	ua, err := net.ResolveUDPAddr("udp", c.cfg.QUICAddr)
	if err != nil {
		return fmt.Errorf("coordinator: quic address %s: %w", c.cfg.QUICAddr, err)
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		return fmt.Errorf("coordinator: listen quic %s: %w", c.cfg.QUICAddr, err)
	}
	c.qt = &quic.Transport{Conn: udp, StatelessResetKey: &srk}
	ql, err := c.qt.Listen(tc, &quic.Config{
		MaxIdleTimeout:        5 * time.Second,
		KeepAlivePeriod:       time.Second,
		MaxIncomingStreams:    4096,
		MaxIncomingUniStreams: -1,
	})
	if err != nil {
		udp.Close()
		return fmt.Errorf("coordinator: listen quic %s: %w", c.cfg.QUICAddr, err)
	}
	if !c.cfg.HTTPTLS && !loopback(c.cfg.HTTPAddr) {
		ql.Close()
		return fmt.Errorf("coordinator: plain HTTP on %s would send transcripts in the clear: set http_tls = true or listen on loopback", c.cfg.HTTPAddr)
	}
	hl, err := net.Listen("tcp", c.cfg.HTTPAddr)
	if err != nil {
		ql.Close()
		return fmt.Errorf("coordinator: listen http %s: %w", c.cfg.HTTPAddr, err)
	}
	if c.cfg.HTTPTLS {
		htc := c.cfg.TLS.Clone()
		htc.MinVersion, htc.NextProtos = tls.VersionTLS12, []string{"h2", "http/1.1"}
		if c.cfg.NodeCAs != nil {
			// Consoles may present a console certificate instead of a
			// token (WHIP and the transcript API).
			htc.ClientAuth, htc.ClientCAs = tls.VerifyClientCertIfGiven, c.cfg.NodeCAs
		}
		hl = tls.NewListener(hl, htc)
	}
	c.ql, c.httpLn = ql, hl
	nodes, err := c.store.Nodes()
	if err != nil {
		return fmt.Errorf("coordinator: load nodes: %w", err)
	}
	for _, n := range nodes {
		if n.Draining {
			c.reg.draining[n.ID] = true
		}
	}
	return c.recover()
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

// recover reloads every call that was not finalised.
func (c *Coordinator) recover() error {
	n := 0
	err := c.store.EachCall(context.Background(), func(rec *store.Call) error { // a batch at a time
		if rec.State == store.StateFinalised {
			return nil
		}
		if _, err := c.loadCall(rec); err != nil {
			return fmt.Errorf("call %s: %w", rec.ID, err)
		}
		n++
		return nil
	})
	if err != nil {
		return fmt.Errorf("coordinator: recover: %w", err)
	}
	if n > 0 {
		c.log.Info("recovered in-flight calls", "calls", n)
	}
	return nil
}

// Serve runs until ctx is cancelled, then shuts down: it stops accepting,
// lets in-flight writes finish and closes the store.
func (c *Coordinator) Serve(ctx context.Context) error {
	c.httpSrv = &http.Server{Handler: c.routes(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() {
		if err := c.httpSrv.Serve(c.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	}()
	go func() { errc <- c.acceptLoop() }()
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		c.reconcileLoop(c.runCtx)
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
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.janitor(c.runCtx)
	}()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	c.shutdown()
	return err
}

func (c *Coordinator) shutdown() {
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	close(c.closing)
	c.whip.Close()
	_ = c.httpSrv.Shutdown(sctx)
	c.stop()
	_ = c.ql.Close()
	defer c.qt.Close()
	// In-flight appends have finished or failed with the cancelled context;
	// close every connection so consoles and workers reconnect elsewhere (or
	// to this coordinator once restarted).
	c.mu.Lock()
	for conn := range c.conns {
		_ = conn.CloseWithError(0, "coordinator shutting down")
	}
	c.mu.Unlock()
	c.wg.Wait()
	if err := c.store.Close(); err != nil {
		c.log.Error("store close", "err", err)
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
				c.serveNode(conn)
			default:
				_ = conn.CloseWithError(1, "unknown ALPN")
			}
		}()
	}
}

// serveNode handles an agent's or a worker's connection. Its first stream
// carries the hello and, for agents, heartbeats and commands.
func (c *Coordinator) serveNode(conn *quic.Conn) {
	hctx, cancel := context.WithTimeout(c.runCtx, 10*time.Second)
	st, err := conn.AcceptStream(hctx)
	cancel()
	if err != nil {
		_ = conn.CloseWithError(1, "no control stream")
		return
	}
	r, w := proto.NewReader(st), proto.NewWriter(st)
	if c.cfg.NodeCAs != nil && !pki.HasKind(conn.ConnectionState().TLS.VerifiedChains, pki.KindNode) {
		c.log.Warn("node refused: no node certificate", "remote", conn.RemoteAddr().String())
		_ = w.WriteJSON(proto.TError, &proto.Error{Code: proto.CodeUnauthorized, Message: "a node certificate from this coordinator's CA is required", Fatal: true})
		_ = st.Close()
		time.Sleep(50 * time.Millisecond)
		_ = conn.CloseWithError(1, proto.CodeUnauthorized)
		return
	}
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := r.Read()
	if err != nil {
		_ = conn.CloseWithError(1, "no hello")
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	refuse := func(code, msg string) {
		c.log.Warn("node refused", "remote", conn.RemoteAddr().String(), "code", code, "why", msg)
		_ = w.WriteJSON(proto.TError, &proto.Error{Code: code, Message: msg, Fatal: true})
		_ = st.Close()
		time.Sleep(50 * time.Millisecond)
		_ = conn.CloseWithError(1, code)
	}
	switch m.Type {
	case proto.TWorkerHello:
		var h proto.WorkerHello
		if err := proto.Unmarshal(m, &h); err != nil {
			refuse(proto.CodeBadRequest, err.Error())
			return
		}
		if code, msg := c.checkNode(h.Version, h.Token, string(h.WorkerID)); code != "" {
			refuse(code, msg)
			return
		}
		if _, err := c.cfg.Models.Get(h.Model); err != nil || h.Slots < 1 {
			refuse(proto.CodeUnknownModel, fmt.Sprintf("model %q with %d slots", h.Model, h.Slots))
			return
		}
		lim := c.limits()
		wel := proto.WorkerWelcome{Version: proto.Version}
		live := h.Version >= 2 // version-1 workers send no pings
		if live {
			wel.PingIntervalMS, wel.TimeoutMS = lim.WorkerPing.Milliseconds(), lim.WorkerTimeout.Milliseconds()
		}
		if err := w.WriteJSON(proto.TWorkerWelcome, wel); err != nil {
			return
		}
		wc := c.reg.addWorker(h, conn)
		c.log.Info("worker registered", "worker", h.WorkerID, "node", h.NodeID, "model", h.Model, "slots", h.Slots, "pid", h.PID, "self_test", h.SelfTest, "version", h.Version)
		// The control stream stays open for the worker's life; a version-2
		// worker pings on it, and one silent for WorkerTimeout is frozen or
		// wedged: it is dropped, so its channels move at once.
		why := "control stream closed"
		for {
			if live {
				_ = st.SetReadDeadline(time.Now().Add(lim.WorkerTimeout))
			}
			_, err := r.Read()
			if err == nil {
				continue
			}
			var ne net.Error
			if live && errors.As(err, &ne) && ne.Timeout() {
				why = fmt.Sprintf("no liveness ping for %v (frozen?)", lim.WorkerTimeout)
				c.log.Warn("worker unresponsive: dropping it, its channels move", "worker", h.WorkerID, "node", h.NodeID, "pid", h.PID, "timeout", lim.WorkerTimeout)
				c.metrics.inc(func(p *prom) { p.workersUnresponsive.Inc() })
				c.withdrawWorker(h.WorkerID, h.NodeID, why)
			}
			break
		}
		c.reg.removeWorker(wc, why)
	case proto.TAgentHello:
		var h proto.AgentHello
		if err := proto.Unmarshal(m, &h); err != nil {
			refuse(proto.CodeBadRequest, err.Error())
			return
		}
		if code, msg := c.checkNode(h.Version, h.Token, string(h.NodeID)); code != "" {
			refuse(code, msg)
			return
		}
		c.serveAgent(conn, h, r, w)
	default:
		refuse(proto.CodeBadRequest, fmt.Sprintf("first message type %d", m.Type))
	}
}

func (c *Coordinator) checkNode(version int, token, id string) (string, string) {
	switch {
	case version < proto.MinVersion || version > proto.Version:
		return proto.CodeBadVersion, fmt.Sprintf("protocol version %d not supported (want %d..%d)", version, proto.MinVersion, proto.Version)
	case !pki.TokenEqual(token, c.cfg.NodeTokens):
		return proto.CodeUnauthorized, "invalid node token"
	case !proto.ValidID(id):
		return proto.CodeBadRequest, fmt.Sprintf("invalid id %q", id)
	}
	return "", ""
}

// serveAgent runs an agent's control stream: welcome, worker commands,
// heartbeats, and loss on a missed TTL.
func (c *Coordinator) serveAgent(conn *quic.Conn, h proto.AgentHello, r *proto.Reader, w *proto.Writer) {
	log := c.log.With("node", h.NodeID)
	// Each node gets its own TTL, jittered by up to 10 %, so that nodes
	// registered together are not all judged in the same instant.
	ttl := c.cfg.HeartbeatTTL + time.Duration(rand.Int64N(int64(c.cfg.HeartbeatTTL/10)+1))
	welcome := proto.AgentWelcome{Version: proto.Version, IntervalMS: c.cfg.HeartbeatInterval.Milliseconds(), TTLMS: ttl.Milliseconds()}
	if err := w.WriteJSON(proto.TAgentWelcome, welcome); err != nil {
		return
	}
	n := &node{id: h.NodeID, hello: h, lastSeen: time.Now(), conn: conn, send: func(cmd proto.Command) error { return w.WriteJSON(proto.TCommand, cmd) }}
	lost := func(why string) {
		c.reg.mu.Lock()
		if c.reg.nodes[h.NodeID] != n || n.lost {
			c.reg.mu.Unlock()
			return
		}
		n.lost = true
		c.reg.mu.Unlock()
		log.Warn("node lost", "why", why)
		c.reg.nodeLost(h.NodeID, "node lost: "+why)
		c.reg.kickReconcile()
		_ = conn.CloseWithError(2, "node lost")
	}
	c.reg.mu.Lock()
	if old, ok := c.reg.nodes[h.NodeID]; ok && old.ttl != nil {
		old.ttl.Stop()
		old.lost = true
		_ = old.conn.CloseWithError(0, "replaced by a new agent session")
	}
	c.reg.nodes[h.NodeID] = n
	n.ttl = time.AfterFunc(ttl, func() { lost("no heartbeat within TTL") })
	c.reg.mu.Unlock()
	log.Info("agent registered", "cpu_only", h.CPUOnly, "gpus", len(h.GPUs), "host", h.Host.Hostname, "cpus", h.Host.CPUs)

	// Adopt the workers the agent already runs (after a reconnect or a
	// coordinator restart), and restart the ones placed here it lacks.
	var resend []nodeCommand
	c.reg.mu.Lock()
	reported := map[proto.WorkerID]bool{}
	for _, ws := range h.Workers {
		if ws.State == proto.WorkerFailed || ws.State == proto.WorkerStopped {
			continue
		}
		reported[ws.ID] = true
		if _, ok := c.reg.planned[ws.ID]; !ok {
			if m, err := c.cfg.Models.Get(ws.Model); err == nil {
				c.reg.planned[ws.ID] = &plannedWorker{id: ws.ID, node: h.NodeID, gpu: ws.GPU, model: m.Name, needs: needsOf(m), since: time.Now()}
				log.Info("adopted running worker", "worker", ws.ID, "model", ws.Model)
			}
		}
	}
	for id, p := range c.reg.planned {
		if p.node == h.NodeID && !reported[id] {
			resend = append(resend, nodeCommand{h.NodeID, proto.Command{Op: proto.OpStartWorker, WorkerID: id, Model: p.model, GPU: p.gpu}})
		}
	}
	c.reg.mu.Unlock()
	c.send(resend)
	c.reg.kickReconcile()
	for {
		m, err := r.Read()
		if err != nil {
			lost("control stream closed: " + err.Error())
			return
		}
		if m.Type != proto.THeartbeat {
			continue
		}
		var hb proto.Heartbeat
		if err := proto.Unmarshal(m, &hb); err != nil {
			log.Warn("bad heartbeat", "err", err)
			continue
		}
		c.reg.mu.Lock()
		n.last, n.lastSeen = hb, time.Now()
		n.ttl.Reset(ttl)
		c.reg.mu.Unlock()
		for _, ws := range hb.Workers {
			if ws.State != proto.WorkerRunning && ws.State != proto.WorkerStarting {
				c.reg.workerExited(ws.ID, "agent reports worker "+ws.State+": "+ws.LastExit)
			}
			if ws.State == proto.WorkerFailed { // the agent gave up: place a replacement
				c.reg.mu.Lock()
				if p, ok := c.reg.planned[ws.ID]; ok && p.node == h.NodeID {
					delete(c.reg.planned, ws.ID)
					log.Warn("worker failed for good: replacing it", "worker", ws.ID, "last_exit", ws.LastExit)
					c.reg.kickReconcile()
				}
				c.reg.mu.Unlock()
			}
		}
	}
}

// withdrawWorker forgets a placed worker and tells its agent to stop it
// (a frozen process is killed there), so the policy places a fresh one.
func (c *Coordinator) withdrawWorker(id proto.WorkerID, node proto.NodeID, why string) {
	c.reg.mu.Lock()
	p, planned := c.reg.planned[id]
	if planned {
		delete(c.reg.planned, id)
		c.reg.lastChange[p.model] = time.Now()
	}
	c.reg.mu.Unlock()
	if planned {
		c.log.Warn("scaling: worker withdrawn", "worker", id, "node", node, "why", why)
		c.send([]nodeCommand{{node, proto.Command{Op: proto.OpStopWorker, WorkerID: id}}})
		c.reg.kickReconcile()
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
	c.reg.mu.Lock()
	if r.Scaling != nil {
		c.cfg.Scaling = r.Scaling
	}
	if r.AbandonAfter > 0 {
		c.cfg.AbandonAfter = r.AbandonAfter
	}
	c.reg.mu.Unlock()
	c.reg.kickReconcile()
	actx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
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
	defer c.probeMu.Unlock()
	if time.Since(c.probeAt) < time.Second {
		return c.probeErr
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c.probeErr = c.store.Probe(pctx)
	c.probeAt = time.Now()
	return c.probeErr
}
