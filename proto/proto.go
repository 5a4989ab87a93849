// Package proto is callscribe's wire protocol: the framing and every message
// exchanged between consoles, the coordinator, agents and workers. It is the
// only package that knows the byte layout; PROTOCOL.md documents it.
//
// Every message is a frame: type (1 byte) | length (4 bytes, big endian) |
// body. Audio and acks have fixed binary bodies; everything else is JSON.
package proto

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Version is the protocol version this build speaks. Peers send theirs in
// their first message; the coordinator accepts MinVersion..Version.
//
// History:
//
//	1: first version: console Hello/Welcome, audio frames with per-channel
//	   sequence numbers, cumulative durable acks, transcript events
//	   (partial, final, resumed), Finalised; agent and worker control.
//	2: worker liveness: a worker sends worker_ping on its control stream
//	   every WorkerWelcome.PingIntervalMS, and the coordinator drops a
//	   worker silent for TimeoutMS (a frozen process is noticed in well
//	   under a second); worker_event "undecodable" reports a frame no
//	   decoder could read (concealed, counted, the channel goes on); the
//	   error event may name the frame it failed on. Version 1 workers are
//	   still accepted (without liveness).
//	3: coordinator clusters: a follower answers a client's first message
//	   with not_leader, naming the leader and the members; clients follow
//	   it. The messages are those of version 2: older peers are still
//	   accepted (a version-2 coordinator refuses version-3 clients).
const Version = 3

// MinVersion is the oldest version still accepted.
const MinVersion = 1

// ALPN protocol IDs, one per kind of peer.
const (
	ALPNConsole = "callscribe-console/1"
	ALPNNode    = "callscribe-node/1"
)

// Type identifies a message.
type Type uint8

// Message types. Numbers are part of the protocol: never reuse one.
const (
	// console → coordinator
	THello Type = 1 // JSON Hello
	TAudio Type = 2 // binary Audio
	TEnd   Type = 3 // JSON End

	// coordinator → console
	TWelcome    Type = 10 // JSON Welcome
	TAck        Type = 11 // binary Ack
	TTranscript Type = 12 // JSON Transcript
	TError      Type = 13 // JSON Error
	TFinalised  Type = 14 // JSON Finalised

	// agent ↔ coordinator (first stream of a node connection)
	TAgentHello   Type = 20 // JSON AgentHello
	THeartbeat    Type = 21 // JSON Heartbeat
	TAgentWelcome Type = 22 // JSON AgentWelcome
	TCommand      Type = 23 // JSON Command

	// worker ↔ coordinator
	TWorkerHello   Type = 30 // JSON WorkerHello (worker's first stream)
	TWorkerWelcome Type = 31 // JSON WorkerWelcome
	TAssign        Type = 32 // JSON Assign (first message of an assignment stream)
	TWorkerEvent   Type = 33 // JSON WorkerEvent
	TWorkerPing    Type = 34 // empty: a worker (version 2 and later) is alive (control stream)
)

// Limits.
const (
	HeaderSize      = 5
	MaxBody         = 256 << 10 // no message body may exceed this
	MaxAudioPayload = 64 << 10  // 2 s of L16 16 kHz
	audioHeader     = 13
)

// Errors returned by the decoder.
var (
	ErrTooLarge    = errors.New("proto: message too large")
	ErrUnknownType = errors.New("proto: unknown message type")
	ErrMalformed   = errors.New("proto: malformed message")
)

var known = map[Type]bool{
	THello: true, TAudio: true, TEnd: true, TWelcome: true, TAck: true, TTranscript: true,
	TError: true, TFinalised: true, TAgentHello: true, THeartbeat: true, TAgentWelcome: true,
	TCommand: true, TWorkerHello: true, TWorkerWelcome: true, TAssign: true, TWorkerEvent: true, TWorkerPing: true,
}

// Msg is one decoded frame. Body aliases the reader's buffer until the next
// Read.
type Msg struct {
	Type Type
	Body []byte
}

// Reader reads frames.
type Reader struct {
	r   *bufio.Reader
	buf []byte
}

// NewReader wraps r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 32<<10)} }

// Read returns the next frame. A clean end of stream is io.EOF; a frame cut
// short is io.ErrUnexpectedEOF.
func (r *Reader) Read() (Msg, error) {
	var h [HeaderSize]byte
	if _, err := io.ReadFull(r.r, h[:]); err != nil {
		return Msg{}, err
	}
	return r.body(h)
}

func (r *Reader) body(h [HeaderSize]byte) (Msg, error) {
	t, n := Type(h[0]), binary.BigEndian.Uint32(h[1:])
	if !known[t] {
		return Msg{}, fmt.Errorf("%w %d", ErrUnknownType, t)
	}
	if n > MaxBody {
		return Msg{}, fmt.Errorf("%w: %d bytes (limit %d)", ErrTooLarge, n, MaxBody)
	}
	if cap(r.buf) < int(n) {
		r.buf = make([]byte, n)
	}
	b := r.buf[:n]
	if _, err := io.ReadFull(r.r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Msg{}, err
	}
	return Msg{Type: t, Body: b}, nil
}

// Decode parses a frame from a byte slice; it returns the message and the
// bytes consumed. Used by fuzzing and by datagram-style callers.
func Decode(b []byte) (Msg, int, error) {
	if len(b) < HeaderSize {
		return Msg{}, 0, io.ErrUnexpectedEOF
	}
	t, n := Type(b[0]), binary.BigEndian.Uint32(b[1:])
	if !known[t] {
		return Msg{}, 0, fmt.Errorf("%w %d", ErrUnknownType, t)
	}
	if n > MaxBody {
		return Msg{}, 0, fmt.Errorf("%w: %d bytes (limit %d)", ErrTooLarge, n, MaxBody)
	}
	if len(b)-HeaderSize < int(n) {
		return Msg{}, 0, io.ErrUnexpectedEOF
	}
	return Msg{Type: t, Body: b[HeaderSize : HeaderSize+int(n)]}, HeaderSize + int(n), nil
}

// Writer writes frames; it is safe for concurrent use.
type Writer struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// NewWriter wraps w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write sends one frame.
func (w *Writer) Write(t Type, body []byte) error {
	if len(body) > MaxBody {
		return fmt.Errorf("%w: %d bytes", ErrTooLarge, len(body))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = AppendFrame(w.buf[:0], t, body)
	_, err := w.w.Write(w.buf)
	return err
}

// WriteJSON sends v as a JSON frame.
func (w *Writer) WriteJSON(t Type, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("proto: encode %d: %w", t, err)
	}
	return w.Write(t, b)
}

// AppendFrame appends a framed message to dst.
func AppendFrame(dst []byte, t Type, body []byte) []byte {
	var h [HeaderSize]byte
	h[0] = byte(t)
	binary.BigEndian.PutUint32(h[1:], uint32(len(body)))
	dst = append(dst, h[:]...)
	return append(dst, body...)
}

// ReadJSON reads the next frame, which must be of type want, into v.
func (r *Reader) ReadJSON(want Type, v any) error {
	m, err := r.Read()
	if err != nil {
		return err
	}
	if m.Type == TError && want != TError {
		var e Error
		if json.Unmarshal(m.Body, &e) == nil {
			return &e
		}
	}
	if m.Type != want {
		return fmt.Errorf("%w: got type %d, want %d", ErrMalformed, m.Type, want)
	}
	return Unmarshal(m, v)
}

// Unmarshal decodes a JSON body. Unknown fields are ignored, so a peer of a
// newer minor version can add optional fields; required fields are checked
// by the receiver.
func Unmarshal(m Msg, v any) error {
	if err := json.Unmarshal(m.Body, v); err != nil {
		return fmt.Errorf("%w: type %d: %w", ErrMalformed, m.Type, err)
	}
	return nil
}

// WriteRaw writes bytes that already hold whole frames (see AppendFrame and
// AppendAudio).
func (w *Writer) WriteRaw(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(b)
}
