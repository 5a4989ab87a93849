package coordinator

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/callscribe/callscribe/coordinator/scaling"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/proto"
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
	// Cluster makes the coordinator a member of a cluster (zero: a cluster
	// of one, on the same code path).
	Cluster ClusterConfig
	// Member, when set, is the open store and cluster member this
	// coordinator serves from while its member leads (Run's); New does
	// not close it. Otherwise New opens a cluster of one and owns it.
	Member *Member
	Logger *slog.Logger
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
		l.MaxSettingUp = tuning.MaxSettingUp
	}
	if l.MaxSettingUpPerConsole == 0 {
		l.MaxSettingUpPerConsole = tuning.MaxSettingUpPerConsole
	}
	if l.MaxSettingUpPerRemote == 0 {
		l.MaxSettingUpPerRemote = tuning.MaxSettingUpPerRemote
	}
	def(&l.FirstAudio, tuning.FirstAudio)
	def(&l.IdleRelease, tuning.IdleRelease)
	def(&l.WorkerPing, tuning.WorkerPing)
	def(&l.WorkerTimeout, tuning.WorkerTimeout)
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
