package proto

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"

	"github.com/callscribe/callscribe/internal/auth"
)

// CallID names a call; consoles choose it.
type CallID string

// ConsoleID names a console.
type ConsoleID string

// NodeID names a server running an agent.
type NodeID string

// WorkerID names a worker process.
type WorkerID string

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)

// ValidID reports whether s is acceptable as any callscribe identifier.
func ValidID(s string) bool { return idRE.MatchString(s) }

// Codec names an audio encoding.
type Codec string

// Codecs. L16 here is signed 16-bit little-endian PCM at 16 kHz, mono per
// channel; PCMU/PCMA are G.711 at 8 kHz; Opus packets decode at 16 kHz.
const (
	CodecL16  Codec = "l16"
	CodecPCMU Codec = "pcmu"
	CodecPCMA Codec = "pcma"
	CodecOpus Codec = "opus"
)

// Rate returns the codec's sample rate, or 0 for an unknown codec.
func (c Codec) Rate() int {
	switch c {
	case CodecL16:
		return 16000
	case CodecPCMU, CodecPCMA:
		return 8000
	case CodecOpus:
		return 48000
	}
	return 0
}

// Standard channel labels.
const (
	ChannelCaller    = "caller"
	ChannelCallTaker = "call-taker"
)

// MaxChannels is the most channels one call may have.
const MaxChannels = 2

// Hello opens (or resumes) a call on a console stream.
type Hello struct {
	Version   int       `json:"version"`
	Token     string    `json:"token"`
	CallID    CallID    `json:"call_id"`
	ConsoleID ConsoleID `json:"console_id"` // ignored: the credential names the console
	Channels  []string  `json:"channels"`
	Codec     Codec     `json:"codec"`
	Model     string    `json:"model,omitempty"`
	// NextFinal is, per channel, the index of the first final the console
	// has not yet got (0 for a new call). The coordinator resends from there.
	NextFinal []uint32 `json:"next_final,omitempty"`
	// Remote is the address the hello came from, set by the transport that
	// received it (never on the wire).
	Remote netip.Addr `json:"-"`
	// Principal is who the credential names, set by the transport once
	// it authenticated the hello (never on the wire). ConsoleID is set
	// from it: what a client claims there is ignored.
	Principal auth.Principal `json:"-"`
}

// Welcome answers Hello.
type Welcome struct {
	Version int    `json:"version"`
	CallID  CallID `json:"call_id"`
	State   string `json:"state"`
	// NextSeq is, per channel, the sequence number the coordinator expects
	// next: every frame below it is durable. A new call has all zeros.
	NextSeq []uint32 `json:"next_seq"`
	Resumed bool     `json:"resumed"`
}

// End says the console has sent its last frame. Frames gives the number of
// frames sent per channel, so the coordinator can tell a complete call.
type End struct {
	Frames []uint32 `json:"frames"`
}

// Audio is one frame of one channel. An empty Payload is a loss marker: the
// transport lost that packet, and the decoder conceals one packet time
// (LossFrameMS) in its place. Only the coordinator writes loss markers;
// consoles must send audio (ingest refuses empty frames).
type Audio struct {
	Channel uint8
	Seq     uint32
	// Capture is the capture time in microseconds since the Unix epoch.
	Capture int64
	Payload []byte
}

// AppendAudio encodes a into a frame appended to dst.
func AppendAudio(dst []byte, a Audio) []byte {
	var h [HeaderSize + audioHeader]byte
	h[0] = byte(TAudio)
	binary.BigEndian.PutUint32(h[1:], uint32(audioHeader+len(a.Payload)))
	h[5] = a.Channel
	binary.BigEndian.PutUint32(h[6:], a.Seq)
	binary.BigEndian.PutUint64(h[10:], uint64(a.Capture))
	dst = append(dst, h[:]...)
	return append(dst, a.Payload...)
}

// LossFrameMS is the audio a loss marker stands for: one WebRTC packet time.
const LossFrameMS = 20

// ParseAudio decodes an audio body. Payload aliases b; it is empty for a
// loss marker.
func ParseAudio(b []byte) (Audio, error) {
	if len(b) < audioHeader {
		return Audio{}, fmt.Errorf("%w: audio frame of %d bytes", ErrMalformed, len(b))
	}
	a := Audio{Channel: b[0], Seq: binary.BigEndian.Uint32(b[1:]), Capture: int64(binary.BigEndian.Uint64(b[5:])), Payload: b[audioHeader:]}
	if len(a.Payload) > MaxAudioPayload {
		return Audio{}, fmt.Errorf("%w: audio payload %d bytes (limit %d)", ErrTooLarge, len(a.Payload), MaxAudioPayload)
	}
	return a, nil
}

// Ack says every frame of Channel below NextSeq is durable.
type Ack struct {
	Channel uint8
	NextSeq uint32
}

// EncodeAck returns an ack body.
func EncodeAck(a Ack) []byte {
	b := make([]byte, 5)
	b[0] = a.Channel
	binary.BigEndian.PutUint32(b[1:], a.NextSeq)
	return b
}

// ParseAck decodes an ack body.
func ParseAck(b []byte) (Ack, error) {
	if len(b) != 5 {
		return Ack{}, fmt.Errorf("%w: ack of %d bytes", ErrMalformed, len(b))
	}
	return Ack{Channel: b[0], NextSeq: binary.BigEndian.Uint32(b[1:])}, nil
}

// Transcript event kinds.
const (
	KindPartial = "partial"
	KindFinal   = "final"
	KindResumed = "resumed"
)

// Transcript is a transcript event pushed to consoles.
type Transcript struct {
	Kind    string `json:"kind"`
	Channel int    `json:"channel"`
	Label   string `json:"label"`
	Index   uint32 `json:"index"`
	Text    string `json:"text,omitempty"`
	StartMS int64  `json:"start_ms"`
	EndMS   int64  `json:"end_ms"`
}

// Finalised says every channel has been decoded to its end.
type Finalised struct {
	CallID CallID   `json:"call_id"`
	Finals []uint32 `json:"finals"` // finals per channel
}

// Error codes.
const (
	CodeBadVersion   = "bad_version"
	CodeUnauthorized = "unauthorized"
	CodeBadRequest   = "bad_request"
	CodeUnknownCodec = "unknown_codec"
	CodeUnknownModel = "unknown_model"
	CodeCallInUse    = "call_in_use"
	CodeOutOfOrder   = "out_of_order"
	CodeTooLarge     = "too_large"
	CodeStorage      = "storage"
	CodeUnavailable  = "unavailable"
	CodeInternal     = "internal"
	// CodeForbidden: the credential is valid but may not do this (another
	// console's call, or a role that does not stream).
	CodeForbidden = "forbidden"
	// CodeThrottled: too many failed authentications from this address;
	// retry_after_ms says when to try again.
	CodeThrottled = "throttled"
	// CodeTransferred: a supervisor handed the call to another console.
	CodeTransferred = "transferred"
	// CodeNotLeader: this coordinator is a follower in a cluster and
	// serves no client; leader names the one that does (empty while an
	// election is under way) and members lists every coordinator. Sent as
	// the answer to a client's first message, then the stream is closed.
	CodeNotLeader = "not_leader"
)

// Error is sent before a stream is closed because of a problem. Fatal
// errors end the stream; the others reject one message.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Fatal   bool   `json:"fatal"`
	// RetryAfterMS is set with CodeThrottled.
	RetryAfterMS int64 `json:"retry_after_ms,omitempty"`
	// Leader is set with CodeNotLeader: the leader's QUIC address (host:port)
	// for this kind of client; empty while an election is under way.
	Leader string `json:"leader,omitempty"`
	// Members is set with CodeNotLeader: every coordinator's QUIC address,
	// so a client given one address learns the others.
	Members []string `json:"members,omitempty"`
	// cause is the error behind it on this side (never sent): errors.Is
	// and errors.As see through an Error to, say, a storage error.
	cause error
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

// Unwrap returns the error behind e on this side (nil for one received).
func (e *Error) Unwrap() error { return e.cause }

// Wrap returns an Error of code whose message is the formatted text, a
// colon and err's text, and which unwraps to err.
func Wrap(code string, err error, format string, a ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, a...) + ": " + err.Error(), cause: err}
}

// NotLeader is a follower's answer to a client's first message: leader is
// the leader's QUIC address for this kind of client ("" while no leader
// is elected), members every coordinator's. It is fatal: the follower
// closes the stream after it.
func NotLeader(leader string, members []string) *Error {
	msg := "not the leader; no leader elected yet"
	if leader != "" {
		msg = "not the leader; the leader is " + leader
	}
	return &Error{Code: CodeNotLeader, Message: msg, Fatal: true, Leader: leader, Members: members}
}

// Retryable reports whether a console should reconnect after this error.
// An out_of_order frame is one of them (PROTOCOL.md: reconnect and
// resume): after a refused write the coordinator expects the refused frame
// again, and a frame already sent behind it is refused as out of order;
// the welcome's next_seq puts the console back in step. A not_leader
// answer is another: the client reconnects to the leader it names (or,
// while none is elected, to another coordinator after a pause).
func (e *Error) Retryable() bool {
	switch e.Code {
	case CodeStorage, CodeUnavailable, CodeInternal, CodeOutOfOrder, CodeNotLeader:
		return true
	}
	return false
}

// GPU is one GPU as an agent reports it. Optional readings are nil when the
// device could not provide them.
type GPU struct {
	Index      int    `json:"index"`
	UUID       string `json:"uuid"`
	Name       string `json:"name"`
	MemTotalMB uint64 `json:"mem_total_mb"`
	MemUsedMB  uint64 `json:"mem_used_mb"`
	// MemReservedMB is what the driver holds back (not in used or free);
	// 0 where NVML reports only version 1 memory figures.
	MemReservedMB uint64   `json:"mem_reserved_mb,omitempty"`
	MemFreeMB     uint64   `json:"mem_free_mb"`
	UtilPct       *uint32  `json:"util_pct,omitempty"`
	TempC         *uint32  `json:"temp_c,omitempty"`
	PowerW        *float64 `json:"power_w,omitempty"`
	Healthy       bool     `json:"healthy"`
	Unhealthy     string   `json:"unhealthy,omitempty"`
	DriverVer     string   `json:"driver,omitempty"`
	Persistence   *bool    `json:"persistence,omitempty"`
	VBIOS         string   `json:"vbios,omitempty"`
	ECC           *bool    `json:"ecc,omitempty"`
	MIG           *bool    `json:"mig,omitempty"`
	PowerLimitW   *float64 `json:"power_limit_w,omitempty"`
	// Excluded is why the GPU breaks its node-class profile (it is then
	// not used for placement); "" when it complies or no profile is set.
	Excluded string `json:"excluded,omitempty"`
}

// Host is an agent's host load.
type Host struct {
	Hostname    string  `json:"hostname"`
	CPUs        int     `json:"cpus"`
	CPUPct      float64 `json:"cpu_pct"`
	Load1       float64 `json:"load1"`
	MemTotalMB  uint64  `json:"mem_total_mb"`
	MemAvailMB  uint64  `json:"mem_avail_mb"`
	DiskFreeMB  uint64  `json:"disk_free_mb"`
	DiskTotalMB uint64  `json:"disk_total_mb"`
}

// Worker states reported by agents.
const (
	WorkerStarting = "starting"
	WorkerRunning  = "running"
	WorkerBackoff  = "backoff"
	WorkerStopped  = "stopped"
	WorkerFailed   = "failed"
)

// WorkerStatus is one supervised worker as its agent sees it.
type WorkerStatus struct {
	ID       WorkerID `json:"id"`
	Model    string   `json:"model"`
	GPU      string   `json:"gpu,omitempty"` // UUID; "" for CPU
	State    string   `json:"state"`
	PID      int      `json:"pid,omitempty"`
	Restarts int      `json:"restarts"`
	LastExit string   `json:"last_exit,omitempty"`
}

// AgentHello registers an agent.
type AgentHello struct {
	Version int      `json:"version"`
	Token   string   `json:"token"`
	NodeID  NodeID   `json:"node_id"`
	CPUOnly bool     `json:"cpu_only"`
	GPUs    []GPU    `json:"gpus"`
	Host    Host     `json:"host"`
	Models  []string `json:"models"`
	// Workers already running under this agent (after a reconnect); the
	// coordinator adopts them instead of starting new ones.
	Workers []WorkerStatus `json:"workers,omitempty"`
}

// AgentWelcome answers AgentHello and every Heartbeat. The agent sends its
// next heartbeat within IntervalMS; the coordinator declares it lost after
// TTLMS without one.
type AgentWelcome struct {
	Version    int   `json:"version"`
	IntervalMS int64 `json:"interval_ms"`
	TTLMS      int64 `json:"ttl_ms"`
}

// Heartbeat carries an agent's telemetry and worker states.
type Heartbeat struct {
	Seq     uint64         `json:"seq"`
	GPUs    []GPU          `json:"gpus"`
	Host    Host           `json:"host"`
	Workers []WorkerStatus `json:"workers"`
}

// Command ops.
const (
	OpStartWorker = "start_worker"
	OpStopWorker  = "stop_worker"
)

// Command asks an agent to start or stop a worker.
type Command struct {
	Op       string   `json:"op"`
	WorkerID WorkerID `json:"worker_id"`
	Model    string   `json:"model,omitempty"`
	GPU      string   `json:"gpu,omitempty"` // UUID, or "" for CPU
}

// WorkerHello registers a worker once its engine passed a test decode.
type WorkerHello struct {
	Version  int      `json:"version"`
	Token    string   `json:"token"`
	WorkerID WorkerID `json:"worker_id"`
	NodeID   NodeID   `json:"node_id"`
	Model    string   `json:"model"`
	Slots    int      `json:"slots"`
	SelfTest string   `json:"self_test"` // what the test decode produced
	PID      int      `json:"pid"`
}

// WorkerWelcome answers WorkerHello. A worker of version 2 or later sends
// worker_ping on its control stream every PingIntervalMS; the coordinator
// drops it (and moves its channels) after TimeoutMS without one.
type WorkerWelcome struct {
	Version        int   `json:"version"`
	PingIntervalMS int64 `json:"ping_interval_ms,omitempty"`
	TimeoutMS      int64 `json:"timeout_ms,omitempty"`
}

// Assign starts decoding one channel of a call on a worker. Audio frames
// from FromSeq follow on the same stream, then End when the call has ended.
type Assign struct {
	CallID  CallID `json:"call_id"`
	Channel int    `json:"channel"`
	Label   string `json:"label"`
	Codec   Codec  `json:"codec"`
	Model   string `json:"model"`
	FromSeq uint32 `json:"from_seq"`
	// Checkpoint is the worker checkpoint stored with the last final (nil
	// for a channel decoded from its start). It is opaque to the coordinator.
	Checkpoint json.RawMessage `json:"checkpoint,omitempty"`
	// Vocabulary is the call's extra words (fixed when the call opened, so
	// a resumed channel decodes with exactly the words it started with).
	Vocabulary []Word `json:"vocabulary,omitempty"`
}

// Word is a vocabulary entry: a word the model's dictionary lacks (a
// street, a place, a drug) and its pronunciation in the model's phones,
// CMUdict style: {"motorway", "M OW T ER W EY"}.
type Word struct {
	Word   string `json:"word"`
	Phones string `json:"phones"`
}

// Worker event kinds.
const (
	WorkerPartial = "partial"
	WorkerFinal   = "final"
	WorkerDone    = "done"
	WorkerError   = "error"
	// WorkerUndecodable reports a frame no decoder could read (Frame): the
	// worker concealed it as a lost packet and went on.
	WorkerUndecodable = "undecodable"
)

// WorkerEvent is a worker's report on an assignment stream. Offsets are in
// samples at 16 kHz.
type WorkerEvent struct {
	Kind  string `json:"kind"`
	Index uint32 `json:"index"`
	Text  string `json:"text,omitempty"`
	// Heard is, on a final a vocabulary correction changed, what the
	// engine itself recognised (kept in the call record).
	Heard string `json:"heard,omitempty"`
	Start int64  `json:"start"`
	End   int64  `json:"end"`
	// Decoded is how many frames the worker has decoded.
	Decoded uint32 `json:"decoded"`
	// NextSeq and Checkpoint come with finals: resume from frame NextSeq
	// with this checkpoint.
	NextSeq    uint32          `json:"next_seq,omitempty"`
	Checkpoint json.RawMessage `json:"checkpoint,omitempty"`
	Error      string          `json:"error,omitempty"`
	// Frame is the frame an undecodable or error event is about.
	Frame *uint32 `json:"frame,omitempty"`
}
