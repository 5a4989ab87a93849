// Package ingest speaks the console side of callscribe's protocol: it reads
// a call's header and audio frames from a console stream, hands them to the
// coordinator through the small Sink interface, writes acks once the
// coordinator says a frame is durable, and pushes transcript events back on
// the same stream. It knows nothing of storage or workers, so every transport
// (QUIC here, WHIP next) drives the same Sink.
package ingest

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

// Sink is what ingest needs from the coordinator.
type Sink interface {
	// Open validates a Hello and opens or resumes its call. Errors are
	// *proto.Error when the console should see them as such.
	Open(ctx context.Context, h *proto.Hello) (Session, *proto.Welcome, error)
}

// Session is one console's hold on one call.
type Session interface {
	// Append stores a frame durably and returns the ack to send.
	Append(ctx context.Context, a proto.Audio) (proto.Ack, error)
	// End records the console's end of the call.
	End(ctx context.Context, e proto.End) error
	// Events delivers transcript events; it is closed when the session ends
	// (replaced by a reconnect, or the call finalised and drained).
	Events() <-chan Event
	// Close releases the session.
	Close()
}

// Submitter is a Session that can have many frames on their way to disk at
// once: Submit accepts a frame in order and calls done, from another
// goroutine and in order per channel, once it is durable (or could not be
// stored). Submit copies what it keeps of a.Payload. A session without it
// is driven one Append at a time.
type Submitter interface {
	Submit(a proto.Audio, done func(proto.Ack, error))
}

// Watcher follows one call's transcript without sending audio (a
// supervisor's view). Its events are those of a Session.
type Watcher interface {
	Events() <-chan Event
	Close()
}

// Event is one message for the console.
type Event struct {
	Transcript *proto.Transcript
	Finalised  *proto.Finalised
	Error      *proto.Error
}

// Authenticator names who presents a credential: a bearer token, or, when
// token is empty, the connection's verified client certificate (peer may
// be nil). Its errors are auth's (ErrNoCredential, ErrInvalid,
// *ThrottledError).
type Authenticator func(token string, peer *tls.ConnectionState, remote netip.Addr) (auth.Principal, error)

// Server serves console connections.
type Server struct {
	Sink Sink
	Auth Authenticator
	Log  *slog.Logger
	// HelloTimeout bounds the wait for a stream's Hello.
	HelloTimeout time.Duration
	// FirstAudio closes the stream of a call that has no audio yet when
	// the console sends nothing within it after the welcome (default
	// 10 s): a console that opens calls and never streams costs nothing.
	FirstAudio time.Duration
}

// ServeConn serves every stream of one console connection until it closes,
// and returns once every stream's goroutine has returned.
func (s *Server) ServeConn(ctx context.Context, conn *quic.Conn) {
	log := s.Log.With("remote", conn.RemoteAddr().String())
	var streams sync.WaitGroup
	defer streams.Wait()
	for {
		st, err := conn.AcceptStream(ctx)
		if err != nil {
			if ctx.Err() == nil {
				log.Debug("console connection closed", "err", err)
			}
			return
		}
		cs := conn.ConnectionState().TLS
		streams.Add(1)
		go func() {
			defer streams.Done()
			s.ServeStream(ctx, st, remoteAddr(conn.RemoteAddr()), &cs, log)
		}()
	}
}

// Stream is what a console stream needs of a transport stream.
type Stream interface {
	io.ReadWriter
	Close() error
	CancelRead(quic.StreamErrorCode)
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

var _ Stream = (*quic.Stream)(nil)

// ServeStream serves one call on one stream; peer is its connection's TLS
// state (client certificates).
func (s *Server) ServeStream(ctx context.Context, st Stream, remote netip.Addr, peer *tls.ConnectionState, log *slog.Logger) {
	r, w := proto.NewReader(st), proto.NewWriter(st)
	fail := func(e *proto.Error) {
		e.Fatal = true
		_ = w.WriteJSON(proto.TError, e)
		st.CancelRead(1)
		_ = st.Close()
	}
	to := s.HelloTimeout
	if to == 0 {
		to = 10 * time.Second
	}
	_ = st.SetReadDeadline(time.Now().Add(to))
	var h proto.Hello
	if err := r.ReadJSON(proto.THello, &h); err != nil {
		log.Warn("console stream: bad hello", "err", err)
		fail(&proto.Error{Code: proto.CodeBadRequest, Message: "first message must be a valid hello: " + err.Error()})
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	h.Remote = remote
	log = log.With("call", h.CallID)
	if h.Version < proto.MinVersion || h.Version > proto.Version {
		log.Warn("console stream: unsupported protocol version", "version", h.Version)
		fail(&proto.Error{Code: proto.CodeBadVersion, Message: fmt.Sprintf("protocol version %d not supported (want %d..%d)", h.Version, proto.MinVersion, proto.Version)})
		return
	}
	if s.Auth == nil {
		fail(&proto.Error{Code: proto.CodeUnauthorized, Message: "no credentials are accepted"})
		return
	}
	p, err := s.Auth(h.Token, peer, remote)
	if err != nil {
		log.Warn("console stream: not authenticated", "err", err)
		fail(AuthError(err))
		return
	}
	if pe := ConsoleOnly(p); pe != nil {
		log.Warn("console stream: credential is not a console's", "name", p.Name, "role", p.Role)
		fail(pe)
		return
	}
	if h.ConsoleID != "" && h.ConsoleID != proto.ConsoleID(p.Name) {
		log.Debug("console stream: claimed console id ignored: the credential names the console", "claimed", h.ConsoleID, "console", p.Name)
	}
	h.Principal, h.ConsoleID = p, proto.ConsoleID(p.Name)
	h.Token = ""
	sess, wel, err := s.Sink.Open(ctx, &h)
	if err != nil {
		log.Warn("console stream: call refused", "err", err)
		fail(AsProtoError(err))
		return
	}
	// The events goroutine below is waited for: the session's end closes
	// its events, and what is left of them gets tuning.StreamDrain to be
	// written before a console that does not read is cut off.
	evDone := make(chan struct{})
	defer func() {
		sess.Close()
		select {
		case <-evDone:
		case <-time.After(tuning.StreamDrain):
			_ = st.SetWriteDeadline(time.Now())
			<-evDone
		}
	}()
	if err := w.WriteJSON(proto.TWelcome, wel); err != nil {
		close(evDone)
		return
	}
	log.Info("console stream open", "resumed", wel.Resumed, "next_seq", wel.NextSeq)

	// Events flow to the console until the session ends; then the stream is
	// closed so the console sees the end.
	go func() {
		defer close(evDone)
		for ev := range sess.Events() {
			var err error
			switch {
			case ev.Transcript != nil:
				err = w.WriteJSON(proto.TTranscript, ev.Transcript)
			case ev.Finalised != nil:
				err = w.WriteJSON(proto.TFinalised, ev.Finalised)
			case ev.Error != nil:
				err = w.WriteJSON(proto.TError, ev.Error)
			}
			if err != nil {
				return
			}
		}
		// The session is over (finalised, replaced, transferred or
		// revoked): nothing more is read from this stream.
		_ = st.Close()
		st.CancelRead(0)
	}()

	// A call without any audio yet is being set up: the console must start
	// sending (or end it) promptly.
	fresh := true
	for _, n := range wel.NextSeq {
		fresh = fresh && n == 0
	}
	if fresh {
		fa := s.FirstAudio
		if fa == 0 {
			fa = 10 * time.Second
		}
		_ = st.SetReadDeadline(time.Now().Add(fa))
	}
	// Frames are handed on as they arrive and acknowledged as they become
	// durable, many in flight at once; a frame that could not be stored
	// fails the stream (the console resends from the next welcome).
	var failOnce sync.Once
	failAsync := func(e *proto.Error, msg string, args ...any) {
		failOnce.Do(func() {
			log.Warn(msg, append(args, "err", e)...)
			fail(e)
		})
	}
	submit := func(a proto.Audio) {
		done := func(ack proto.Ack, err error) {
			if err != nil {
				failAsync(AsProtoError(err), "console stream: frame refused", "channel", a.Channel, "seq", a.Seq)
				return
			}
			// Acks are written from the store's side (the channel's
			// writer): a console that stops reading them must not stall
			// it. Past the deadline the stream is failed; the console
			// resumes from the next welcome.
			_ = st.SetWriteDeadline(time.Now().Add(tuning.StreamDrain))
			if err := w.Write(proto.TAck, proto.EncodeAck(ack)); err != nil {
				failAsync(&proto.Error{Code: proto.CodeUnavailable, Message: "acks not read in time"}, "console stream: acks not read", "err", err)
				return
			}
			_ = st.SetWriteDeadline(time.Time{}) // transcript events may follow long after the last ack
		}
		if sub, ok := sess.(Submitter); ok {
			sub.Submit(a, done)
			return
		}
		done(sess.Append(ctx, a))
	}
	for {
		m, err := r.Read()
		if err != nil {
			var ne net.Error
			switch {
			case errors.Is(err, io.EOF):
			case fresh && errors.As(err, &ne) && ne.Timeout():
				failAsync(&proto.Error{Code: proto.CodeBadRequest, Message: "no audio within the set-up time after the welcome: stream closed"}, "console stream: no audio after the welcome")
			case errors.Is(err, proto.ErrTooLarge), errors.Is(err, proto.ErrUnknownType), errors.Is(err, io.ErrUnexpectedEOF):
				failAsync(&proto.Error{Code: proto.CodeBadRequest, Message: err.Error()}, "console stream: bad frame")
			default:
				log.Debug("console stream: read ended", "err", err)
			}
			return
		}
		if fresh {
			fresh = false
			_ = st.SetReadDeadline(time.Time{})
		}
		switch m.Type {
		case proto.TAudio:
			a, err := proto.ParseAudio(m.Body)
			if err == nil && len(a.Payload) == 0 {
				err = fmt.Errorf("%w: empty audio payload", proto.ErrMalformed)
			}
			if err != nil {
				failAsync(AsProtoError(err), "console stream: bad audio frame")
				return
			}
			submit(a)
		case proto.TEnd:
			var e proto.End
			if err := proto.Unmarshal(m, &e); err != nil {
				failAsync(AsProtoError(err), "console stream: bad end")
				return
			}
			if err := sess.End(ctx, e); err != nil {
				failAsync(AsProtoError(err), "console stream: end refused")
				return
			}
		default:
			failAsync(&proto.Error{Code: proto.CodeBadRequest, Message: fmt.Sprintf("unexpected message type %d on a console stream", m.Type)}, "console stream: unexpected message", "type", m.Type)
			return
		}
	}
}

// remoteAddr is the IP address of a connection's peer (the zero Addr when
// it is not an IP address).
func remoteAddr(a net.Addr) netip.Addr {
	if ua, ok := a.(*net.UDPAddr); ok {
		ip, _ := netip.AddrFromSlice(ua.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// ConsoleOnly refuses a principal that is not a console: only consoles
// stream calls (QUIC or WHIP).
func ConsoleOnly(p auth.Principal) *proto.Error {
	if p.Role == auth.Console {
		return nil
	}
	return &proto.Error{Code: proto.CodeForbidden, Message: fmt.Sprintf("credential %q has the role %s: only consoles stream calls", p.Name, p.Role)}
}

// AuthError is the error a client is sent for a failed authentication.
func AuthError(err error) *proto.Error {
	var te *auth.ThrottledError
	switch {
	case errors.As(err, &te):
		return &proto.Error{Code: proto.CodeThrottled, Message: te.Error(), RetryAfterMS: te.RetryAfter.Milliseconds()}
	case errors.Is(err, auth.ErrForbidden):
		return &proto.Error{Code: proto.CodeForbidden, Message: err.Error()}
	}
	return &proto.Error{Code: proto.CodeUnauthorized, Message: err.Error()}
}

// AsProtoError turns any error into the error a console is sent.
func AsProtoError(err error) *proto.Error {
	var pe *proto.Error
	if errors.As(err, &pe) {
		return pe
	}
	switch {
	case errors.Is(err, proto.ErrTooLarge):
		return &proto.Error{Code: proto.CodeTooLarge, Message: err.Error()}
	case errors.Is(err, proto.ErrMalformed):
		return &proto.Error{Code: proto.CodeBadRequest, Message: err.Error()}
	}
	return &proto.Error{Code: proto.CodeInternal, Message: err.Error()}
}

// EventJSON encodes an event for web consoles (the WHIP data channel and
// server-sent events): the transcript, finalised or error fields with a
// "type" of "transcript", "finalised" or "error".
func EventJSON(ev Event) (typ string, b []byte) {
	var v any
	switch {
	case ev.Transcript != nil:
		typ, v = "transcript", struct {
			Type string `json:"type"`
			*proto.Transcript
		}{"transcript", ev.Transcript}
	case ev.Finalised != nil:
		typ, v = "finalised", struct {
			Type string `json:"type"`
			*proto.Finalised
		}{"finalised", ev.Finalised}
	case ev.Error != nil:
		typ, v = "error", struct {
			Type string `json:"type"`
			*proto.Error
		}{"error", ev.Error}
	default:
		return "", nil
	}
	b, _ = json.Marshal(v)
	return typ, b
}

// HTTPStatus is the HTTP status for a console error (web transports).
func HTTPStatus(e *proto.Error) int {
	switch e.Code {
	case proto.CodeUnauthorized:
		return 401
	case proto.CodeForbidden:
		return 403
	case proto.CodeThrottled:
		return 429
	case proto.CodeCallInUse:
		return 409
	case proto.CodeTooLarge:
		return 413
	case proto.CodeStorage, proto.CodeUnavailable:
		return 503
	case proto.CodeInternal:
		return 500
	}
	return 400
}
