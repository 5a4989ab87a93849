// Package tuning is the one place for callscribe's timings and limits: every
// interval, timeout, queue length and reserve that shapes how the appliance
// behaves under failure and load is named here, with why it has the value it
// has. Values an operator may need to change are also configuration keys
// (callscribe serve's --help lists them); those here are their defaults.
// Everything else is a constant because changing it alone would break an
// assumption written next to it.
//
// It imports nothing of callscribe, so every component (coordinator, agent,
// worker, console, ingest) can use it.
package tuning

import "time"

// QUIC idle timeouts and keep-alives. QUIC takes the smaller of the two
// peers' idle timeouts, so each client's value is the one that counts on
// its connections; the coordinator's is only an upper bound. A keep-alive
// is sent well inside the idle timeout (a third or less) so that one or two
// lost keep-alives do not end a healthy connection. The timeouts are short
// on purpose: a peer that died without a word (power loss, a killed
// process whose stateless reset did not reach an idle connection) is
// noticed within the timeout, and the dialer reconnects elsewhere.
const (
	// CoordinatorQUICIdle and CoordinatorQUICKeepAlive are the
	// coordinator's listener values: the loosest, since each client
	// chooses its own tighter timeout.
	CoordinatorQUICIdle      = 5 * time.Second
	CoordinatorQUICKeepAlive = time.Second
	// CoordinatorQUICStreams bounds concurrent bidirectional streams per
	// connection: a console opens one per call, a worker's connection
	// carries one per assigned channel.
	CoordinatorQUICStreams = 4096

	// AgentQUICIdle: an agent notices a dead coordinator within 2 s and
	// redials (its workers keep running meanwhile).
	AgentQUICIdle      = 2 * time.Second
	AgentQUICKeepAlive = 500 * time.Millisecond

	// WorkerQUICIdle: a worker notices a dead coordinator within 1.5 s,
	// where no stateless reset reaches an idle connection (seen in the
	// chaos suite), and re-registers with the restarted one.
	WorkerQUICIdle      = 1500 * time.Millisecond
	WorkerQUICKeepAlive = 300 * time.Millisecond
	// WorkerQUICStreams bounds the assignment streams a worker accepts.
	WorkerQUICStreams = 1024

	// ConsoleQUICIdle: a console notices a dead coordinator (a leader
	// whose machine died: no stateless reset comes) within 1.2 s and
	// resumes its calls from the acks it has at the new leader, which the
	// others elect meanwhile (a heartbeat timeout, 0.4 to 0.8 s): calls
	// resume within 2 s of a leader's loss. Keep-alives every 300 ms
	// keep a live but quiet connection from timing out (four in a row
	// would have to be lost on a LAN).
	ConsoleQUICIdle      = 1200 * time.Millisecond
	ConsoleQUICKeepAlive = 300 * time.Millisecond

	// DialTimeout bounds one QUIC dial: a dead coordinator sends no ICMP
	// answer over QUIC, so a short timeout and quick retries find a
	// restarted coordinator at once.
	DialTimeout = time.Second
)

// Reconnecting to a coordinator (consoles, agents, workers; see
// internal/leader). A client given several coordinators tries the next at
// once when one cannot be reached, and pauses only when all of them have
// failed in a row; a follower's not_leader answer naming the leader is
// followed at once.
const (
	// ReconnectMin and ReconnectMax bound the pause between rounds: it
	// starts at ReconnectMin and doubles up to ReconnectMax, so a restarted
	// coordinator is found within half a second. Each pause is jittered
	// between half and all of its value, so clients cut off together do not
	// come back in step.
	ReconnectMin = 50 * time.Millisecond
	ReconnectMax = 500 * time.Millisecond
	// ReconnectStable: a session that lasted this long ends a run of
	// failures, and the pause starts again from ReconnectMin.
	ReconnectStable = 10 * time.Second
	// RedirectHops is how many not_leader answers in a row are followed at
	// once; beyond it (followers that disagree, or name a dead leader) each
	// waits a pause, so a client never spins.
	RedirectHops = 8
	// MaxCoordinators bounds the addresses a client learns from not_leader
	// answers (the configured ones are always kept): a cluster has a
	// handful, and a malicious or broken answer must not grow the list.
	MaxCoordinators = 16
)

// Agent liveness. The coordinator hands each agent its heartbeat interval
// and a TTL; an agent silent for the TTL is declared lost and its workers'
// channels move.
const (
	// HeartbeatInterval is how often agents report (default of
	// coordinator.Config.HeartbeatInterval): three heartbeats fit in the
	// TTL, so one lost datagram-sized delay does not lose a node.
	HeartbeatInterval = 250 * time.Millisecond
	// HeartbeatTTL is how long the coordinator waits for a heartbeat
	// (default of coordinator.Config.HeartbeatTTL). Each node's TTL gets up
	// to HeartbeatJitter more, so nodes registered together are not all
	// judged in the same instant; 850 ms + 10 % keeps "a node lost is
	// noticed within one second", the rack's promise.
	HeartbeatTTL = 850 * time.Millisecond
	// HeartbeatJitter is the fraction of the TTL added at random per node.
	HeartbeatJitter = 0.10
	// AgentStopTimeout bounds an agent's stopping of its workers when it
	// stops (each gets SIGTERM, then SIGKILL).
	AgentStopTimeout = 10 * time.Second
	// AgentHeartbeatFallback is the interval an agent uses when a
	// coordinator of an old protocol version names none.
	AgentHeartbeatFallback = time.Second
)

// Node connections.
const (
	// NodeHelloTimeout bounds how long a node connection may take to open
	// its control stream and send its hello.
	NodeHelloTimeout = 10 * time.Second
	// RefusalLinger is how long a refused node's connection stays open
	// after the error message, so the message arrives before the close.
	RefusalLinger = 50 * time.Millisecond
	// WorkerPing and WorkerTimeout are the defaults of coordinator
	// Limits.WorkerPing and Limits.WorkerTimeout (worker_ping,
	// worker_timeout): a worker silent for six pings is frozen or wedged
	// and its channels move; the timeout must stay at least three pings.
	WorkerPing    = 100 * time.Millisecond
	WorkerTimeout = 600 * time.Millisecond
)

// Calls.
const (
	// SessionEvents is the queue of transcript events per console session
	// or watcher. A call produces a few events a second per channel, so
	// 4,096 is minutes of transcript: a console that falls that far behind
	// is disconnected (it reconnects and catches up from the store) instead
	// of the coordinator buffering for it without end.
	SessionEvents = 4096
	// MaxQueuedFrames bounds one channel's frames waiting for the store
	// (about 40 s of 20 ms packets): past it the disk cannot carry the
	// call, and the console is told to retry.
	MaxQueuedFrames = 2048
	// StreamDrain is how long a console stream that has ended may take to
	// write its last transcript events; a console that does not read them
	// is cut off after it, so its stream's goroutines end.
	StreamDrain = 5 * time.Second
	// FramesPerRead bounds the frames read for a worker in one store read
	// transaction: a slow worker must not hold a transaction open.
	FramesPerRead = 64
	// FinaliseRetry is the wait between attempts to make a finalisation
	// durable (it must not be lost to a passing storage error).
	FinaliseRetry = time.Second
	// JanitorMaxInterval is the longest wait between checks for abandoned
	// and never-started calls (a quarter of abandon_after when shorter).
	JanitorMaxInterval = 2 * time.Second
	// AbandonAfter is the default of abandon_after.
	AbandonAfter = 2 * time.Minute
	// FirstAudio and IdleRelease are the defaults of first_audio_timeout
	// and idle_release (see coordinator.Limits).
	FirstAudio  = 10 * time.Second
	IdleRelease = 5 * time.Second
	// MaxSettingUp, MaxSettingUpPerConsole and MaxSettingUpPerRemote are
	// the defaults of the set-up limits (see coordinator.Limits).
	MaxSettingUp, MaxSettingUpPerConsole, MaxSettingUpPerRemote = 64, 8, 16
)

// Failover back-off: a channel failing at the same frame again and again
// must not spin. The first retries are quick (a crashed worker's channel
// should move at once), then the wait doubles.
const (
	// RetryStep is added per consecutive failure, up to RetryQuickMax.
	RetryStep     = 10 * time.Millisecond
	RetryQuickMax = 500 * time.Millisecond
	// RetrySlowAfter failures at the same point, the wait is RetrySlowBase
	// doubled per further failure, up to RetrySlowMax.
	RetrySlowAfter = 3
	RetrySlowBase  = time.Second
	RetrySlowMax   = 30 * time.Second
)

// Rack.
const (
	// CheckInterval is the default of check_interval: how often the
	// scaling policy runs (it also runs whenever nodes or workers change).
	CheckInterval = time.Second
	// ScalingCooldown is the default policy's wait between changes.
	ScalingCooldown = time.Minute
	// ScalingHysteresis is the default policy's dead band, in slots.
	ScalingHysteresis = 2
	// NodeMemReserveMB is memory placement leaves on every node for the
	// system, the agent and page cache: workers are placed into what is
	// left (nodes with less than it are taken as they report).
	NodeMemReserveMB = 1024
	// MaxCapacityProbe bounds how many more instances placement simulates
	// when the policy asks what would still fit.
	MaxCapacityProbe = 64
)

// HTTP and housekeeping.
const (
	// ReadHeaderTimeout bounds a client's request headers (slowloris).
	ReadHeaderTimeout = 10 * time.Second
	// ShutdownTimeout bounds each stage of a shutdown that waits on
	// clients (HTTP responses in flight).
	ShutdownTimeout = 5 * time.Second
	// SSEKeepAlive is how often an idle event stream gets a comment, so
	// proxies do not close it.
	SSEKeepAlive = 15 * time.Second
	// ProbeEvery caches the store's writability probe (readiness and the
	// watchdog ask often); ProbeTimeout bounds one probe.
	ProbeEvery   = time.Second
	ProbeTimeout = 2 * time.Second
	// RetentionInterval is the default of the retention policy's period
	// (it also runs Badger's value-log GC).
	RetentionInterval = 10 * time.Minute
	// AuditTimeout bounds recording a system audit entry (a reload).
	AuditTimeout = 5 * time.Second
	// StatsWindow is how many observations each /v1/stats latency window
	// keeps.
	StatsWindow = 8192
)

// The coordinator cluster (coordinator/cluster).
const (
	// ClusterHeartbeatTimeout: a follower that hears nothing from the
	// leader for this long (randomised up to twice it) calls an election.
	// A LAN answers in well under a millisecond; 400 ms rides out a busy
	// member's pauses and still resumes calls within a second or so of a
	// leader's death.
	ClusterHeartbeatTimeout = 400 * time.Millisecond
	// ClusterLeaderLease: a leader that has not heard from a quorum for
	// this long steps down (it stops acknowledging: on the minority side of
	// a partition no frame is acknowledged after it).
	ClusterLeaderLease = 300 * time.Millisecond
	// ClusterApplyTimeout bounds one replicated write (and a barrier, and
	// a membership change): past it the write fails and the console
	// resends from its last ack.
	ClusterApplyTimeout = 5 * time.Second
	// ClusterSnapshotInterval and ClusterSnapshotThreshold: how often a
	// member checks, and after how many entries it takes a snapshot (a
	// checkpoint of the store: a sync, no copy), after which the log
	// before it, less ClusterTrailingLogs, is deleted.
	ClusterSnapshotInterval  = 30 * time.Second
	ClusterSnapshotThreshold = 8192
	ClusterTrailingLogs      = 2048
)
