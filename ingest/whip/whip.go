// Package whip is callscribe's WebRTC ingest: a WHIP endpoint (RFC 9725) on
// pion/webrtc. A console POSTs an SDP offer with one or two audio tracks
// (caller, call-taker) for a call id; every RTP payload goes through the same
// ingest.Sink as the QUIC path, so it is durable before anything else
// happens to it. Transcript events go back on the console's data channel.
// PATCH restarts ICE (or trickles candidates); DELETE ends the call.
package whip

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/proto"
	"github.com/pion/interceptor"
	"github.com/pion/webrtc/v4"
)

// Config configures a WHIP endpoint.
type Config struct {
	Sink ingest.Sink
	Auth ingest.Authenticator
	Log  *slog.Logger
	// MaxSessions bounds live WebRTC sessions (default 1000).
	MaxSessions int
	// MaxNegotiations bounds offers being answered at once; more get 503
	// with Retry-After (default 8). It is what keeps a flood of POSTs from
	// starving live calls.
	MaxNegotiations int
	// UDPPortMin and UDPPortMax bound the ports ICE uses (0: any).
	UDPPortMin, UDPPortMax uint16
	// Loopback offers loopback candidates (a single-host appliance, tests).
	Loopback bool
	// EndQuiet is how long DELETE waits for the last packets in flight.
	EndQuiet time.Duration
}

// Server is a WHIP endpoint.
type Server struct {
	cfg   Config
	log   *slog.Logger
	slots chan struct{}

	mu       sync.Mutex
	sessions map[string]*session
	closed   bool
}

// New returns a WHIP endpoint.
func New(cfg Config) (*Server, error) {
	if cfg.Sink == nil || cfg.Auth == nil {
		return nil, errors.New("whip: a sink and an authenticator are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.MaxSessions == 0 {
		cfg.MaxSessions = 1000
	}
	if cfg.MaxNegotiations == 0 {
		cfg.MaxNegotiations = 8
	}
	if cfg.EndQuiet == 0 {
		cfg.EndQuiet = 300 * time.Millisecond
	}
	if cfg.UDPPortMin > cfg.UDPPortMax {
		return nil, fmt.Errorf("whip: UDP port range %d-%d is empty", cfg.UDPPortMin, cfg.UDPPortMax)
	}
	return &Server{cfg: cfg, log: cfg.Log, slots: make(chan struct{}, cfg.MaxNegotiations), sessions: map[string]*session{}}, nil
}

// Register adds the WHIP routes to mux:
//
//	POST   /v1/whip/{call}          an offer for a call → 201, answer, Location, ETag
//	PATCH  /v1/whip/sessions/{id}   ICE restart or trickle (application/trickle-ice-sdpfrag)
//	DELETE /v1/whip/sessions/{id}   end the call and the session
func (s *Server) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/whip/{call}", s.handlePost)
	mux.HandleFunc("OPTIONS /v1/whip/{call}", s.handleOptions)
	mux.HandleFunc("PATCH /v1/whip/sessions/{id}", s.handlePatch)
	mux.HandleFunc("DELETE /v1/whip/sessions/{id}", s.handleDelete)
}

// Close ends every WebRTC session without ending their calls (a shutdown:
// consoles reconnect and resume).
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	ss := make([]*session, 0, len(s.sessions))
	for _, x := range s.sessions {
		ss = append(ss, x)
	}
	s.mu.Unlock()
	for _, x := range ss {
		x.close("coordinator shutting down")
	}
}

// Sessions is the number of live WebRTC sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

func (s *Server) handleOptions(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Accept-Post", "application/sdp")
	w.WriteHeader(http.StatusNoContent)
}

// fail answers an HTTP error with a plain-text reason and logs it.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, code int, msg string, args ...any) {
	s.log.Warn("whip: request refused", append([]any{"method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "status", code, "reason", msg}, args...)...)
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="callscribe"`)
	}
	http.Error(w, msg, code)
}

// bearer returns the request's bearer token.
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if t, ok := strings.CutPrefix(h, "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	return ""
}

// param reads a setting from a header (X-Callscribe-NAME) or the query.
func param(r *http.Request, name string) string {
	if v := r.Header.Get("X-Callscribe-" + name); v != "" {
		return v
	}
	return r.URL.Query().Get(strings.ToLower(name))
}

func (s *Server) handlePost(w http.ResponseWriter, r *http.Request) {
	if !s.cfg.Auth(bearer(r)) {
		s.fail(w, r, http.StatusUnauthorized, "a valid console token is required (Authorization: Bearer TOKEN)")
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/sdp") {
		s.fail(w, r, http.StatusUnsupportedMediaType, "the body must be an SDP offer (Content-Type: application/sdp)")
		return
	}
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		w.Header().Set("Retry-After", "1")
		s.fail(w, r, http.StatusServiceUnavailable, "too many offers being answered at once: retry shortly")
		return
	}
	s.mu.Lock()
	n, closed := len(s.sessions), s.closed
	s.mu.Unlock()
	if closed {
		s.fail(w, r, http.StatusServiceUnavailable, "coordinator shutting down")
		return
	}
	if n >= s.cfg.MaxSessions {
		w.Header().Set("Retry-After", "5")
		s.fail(w, r, http.StatusServiceUnavailable, fmt.Sprintf("the coordinator carries its maximum of %d WebRTC sessions", s.cfg.MaxSessions))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10+1))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, "cannot read the offer: "+err.Error())
		return
	}
	if len(body) > 64<<10 {
		s.fail(w, r, http.StatusRequestEntityTooLarge, "the offer is larger than 64 KiB")
		return
	}
	callID := proto.CallID(r.PathValue("call"))
	want := proto.Codec(strings.ToLower(param(r, "Codec")))
	if want != "" && want != proto.CodecOpus && want != proto.CodecPCMU && want != proto.CodecPCMA {
		s.fail(w, r, http.StatusBadRequest, fmt.Sprintf("codec %q is not available over WebRTC (opus, pcmu, pcma)", want))
		return
	}
	off, err := inspectOffer(body, want)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, strings.TrimPrefix(err.Error(), errBadOffer.Error()+": "), "call", callID)
		return
	}
	labels := defaultLabels(len(off.mids))
	if v := param(r, "Channels"); v != "" {
		labels = strings.Split(v, ",")
		if len(labels) != len(off.mids) {
			s.fail(w, r, http.StatusBadRequest, fmt.Sprintf("%d channel labels given for %d audio tracks", len(labels), len(off.mids)))
			return
		}
	}
	console := param(r, "Console")
	if console == "" {
		console = "whip"
	}
	h := &proto.Hello{Version: proto.Version, Token: bearer(r), CallID: callID, ConsoleID: proto.ConsoleID(console),
		Channels: labels, Codec: off.codec, Model: param(r, "Model")}
	for _, v := range strings.Split(param(r, "Next-Final"), ",") {
		var n uint32
		if _, err := fmt.Sscan(v, &n); err == nil {
			h.NextFinal = append(h.NextFinal, n)
		}
	}
	ctx := context.WithoutCancel(r.Context())
	sess, wel, err := s.cfg.Sink.Open(ctx, h)
	if err != nil {
		pe := ingest.AsProtoError(err)
		s.fail(w, r, ingest.HTTPStatus(pe), pe.Message, "call", callID, "code", pe.Code)
		return
	}
	x, answer, err := s.answer(ctx, off, body, sess, wel, h)
	if err != nil {
		sess.Close()
		s.fail(w, r, http.StatusBadRequest, "cannot answer the offer: "+err.Error(), "call", callID)
		return
	}
	w.Header().Set("Content-Type", "application/sdp")
	w.Header().Set("Location", "/v1/whip/sessions/"+x.id)
	w.Header().Set("ETag", x.etag())
	w.Header().Set("X-Callscribe-Resumed", fmt.Sprint(wel.Resumed))
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, answer)
}

func defaultLabels(n int) []string { return []string{"caller", "call-taker"}[:n] }

// api builds a pion API that negotiates exactly the call's codec.
func (s *Server) api(codec proto.Codec) (*webrtc.API, error) {
	me := &webrtc.MediaEngine{}
	if err := me.RegisterCodec(webrtc.RTPCodecParameters{RTPCodecCapability: codecCapability(codec), PayloadType: payloadType(codec)}, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, err
	}
	ir := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(me, ir); err != nil {
		return nil, err
	}
	se := webrtc.SettingEngine{}
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4, webrtc.NetworkTypeUDP6})
	se.SetICETimeouts(3*time.Second, 6*time.Second, 500*time.Millisecond)
	if s.cfg.Loopback {
		se.SetIncludeLoopbackCandidate(true)
	}
	if s.cfg.UDPPortMax != 0 {
		if err := se.SetEphemeralUDPPortRange(s.cfg.UDPPortMin, s.cfg.UDPPortMax); err != nil {
			return nil, err
		}
	}
	return webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se)), nil
}

func (s *Server) answer(ctx context.Context, off *offer, raw []byte, sess ingest.Session, wel *proto.Welcome, h *proto.Hello) (*session, string, error) {
	api, err := s.api(off.codec)
	if err != nil {
		return nil, "", err
	}
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, "", err
	}
	id := newID()
	x := &session{srv: s, id: id, call: h.CallID, codec: off.codec, pc: pc, sess: sess, log: s.log.With("call", h.CallID, "whip_session", id),
		opened: time.Now(), done: make(chan struct{})}
	for i, mid := range off.mids {
		x.chans = append(x.chans, &channel{idx: uint8(i), mid: mid, base: wel.NextSeq[i], seq: newSequencer(25, 150*time.Millisecond)})
	}
	pc.OnTrack(x.onTrack)
	pc.OnDataChannel(x.onDataChannel)
	pc.OnConnectionStateChange(x.onState)
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: string(raw)}); err != nil {
		_ = pc.Close()
		return nil, "", err
	}
	ans, err := pc.CreateAnswer(nil)
	if err != nil {
		_ = pc.Close()
		return nil, "", err
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(ans); err != nil {
		_ = pc.Close()
		return nil, "", err
	}
	select {
	case <-gathered:
	case <-time.After(5 * time.Second):
		_ = pc.Close()
		return nil, "", errors.New("ICE gathering did not finish in 5 s")
	case <-ctx.Done():
		_ = pc.Close()
		return nil, "", ctx.Err()
	}
	s.mu.Lock()
	s.sessions[x.id] = x
	s.mu.Unlock()
	go x.forward()
	x.log.Info("whip session open", "codec", off.codec, "tracks", len(off.mids), "data_channel", off.data, "resumed", wel.Resumed, "next_seq", wel.NextSeq)
	return x, pc.LocalDescription().SDP, nil
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *Server) session(w http.ResponseWriter, r *http.Request) *session {
	if !s.cfg.Auth(bearer(r)) {
		s.fail(w, r, http.StatusUnauthorized, "a valid console token is required (Authorization: Bearer TOKEN)")
		return nil
	}
	s.mu.Lock()
	x := s.sessions[r.PathValue("id")]
	s.mu.Unlock()
	if x == nil {
		s.fail(w, r, http.StatusNotFound, "no such WHIP session")
	}
	return x
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	x := s.session(w, r)
	if x == nil {
		return
	}
	if err := x.end(r.Context(), nil); err != nil {
		pe := ingest.AsProtoError(err)
		s.fail(w, r, ingest.HTTPStatus(pe), "the call could not be ended: "+pe.Message, "call", x.call)
		return
	}
	x.close("deleted by the console")
	w.WriteHeader(http.StatusOK)
}

// handlePatch restarts ICE (new ice-ufrag/ice-pwd in the fragment, If-Match
// "*" or the current ETag) or adds trickled candidates.
func (s *Server) handlePatch(w http.ResponseWriter, r *http.Request) {
	x := s.session(w, r)
	if x == nil {
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/trickle-ice-sdpfrag") {
		s.fail(w, r, http.StatusUnsupportedMediaType, "PATCH takes application/trickle-ice-sdpfrag")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 16<<10))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, "cannot read the fragment: "+err.Error())
		return
	}
	frag := parseFrag(string(body))
	if frag.ufrag != "" && frag.ufrag != x.remoteUfrag() {
		if m := r.Header.Get("If-Match"); m != "*" && m != x.etag() {
			s.fail(w, r, http.StatusPreconditionFailed, "an ICE restart needs If-Match: \"*\" or the session's ETag")
			return
		}
		out, err := x.restartICE(r.Context(), frag)
		if err != nil {
			s.fail(w, r, http.StatusUnprocessableEntity, "ICE restart failed: "+err.Error(), "call", x.call)
			return
		}
		w.Header().Set("Content-Type", "application/trickle-ice-sdpfrag")
		w.Header().Set("ETag", x.etag())
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, out)
		return
	}
	if m := r.Header.Get("If-Match"); m != "" && m != "*" && m != x.etag() {
		s.fail(w, r, http.StatusPreconditionFailed, "the fragment is for another ICE session (ETag mismatch)")
		return
	}
	for _, c := range frag.candidates {
		mid := frag.mid
		if err := x.pc.AddICECandidate(webrtc.ICECandidateInit{Candidate: c, SDPMid: &mid}); err != nil {
			s.fail(w, r, http.StatusBadRequest, "bad candidate: "+err.Error())
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// removed drops a session from the table.
func (s *Server) removed(x *session) {
	s.mu.Lock()
	if s.sessions[x.id] == x {
		delete(s.sessions, x.id)
	}
	s.mu.Unlock()
}

// session is one WebRTC console session on one call.
type session struct {
	srv    *Server
	id     string
	call   proto.CallID
	codec  proto.Codec
	pc     *webrtc.PeerConnection
	sess   ingest.Session
	log    *slog.Logger
	opened time.Time
	chans  []*channel

	mu      sync.Mutex
	ice     int // ICE generation (restarts), part of the ETag
	dc      *webrtc.DataChannel
	dcOpen  bool
	backlog [][]byte // events waiting for the data channel to open
	ending  bool
	ended   bool
	closed  bool
	done    chan struct{}
}

// channel is one audio track of a session.
type channel struct {
	idx  uint8
	mid  string
	base uint32 // the call channel's next frame number when the session opened

	mu       sync.Mutex // serialises appends (the reader, and the end)
	seq      *sequencer
	appended uint32 // frames appended by this session
	lastPkt  time.Time
	badPT    uint64
	failed   error // the store refused a frame: the session stops
	tracked  bool
}

func (x *session) etag() string {
	x.mu.Lock()
	defer x.mu.Unlock()
	return fmt.Sprintf(`"%s-%d"`, x.id[:8], x.ice)
}

func (x *session) onTrack(t *webrtc.TrackRemote, r *webrtc.RTPReceiver) {
	var ch *channel
	for _, tr := range x.pc.GetTransceivers() {
		if tr.Receiver() == r {
			for _, c := range x.chans {
				if c.mid == tr.Mid() {
					ch = c
				}
			}
		}
	}
	if ch == nil {
		x.log.Warn("whip: a track on an unexpected section: ignored", "track", t.ID())
		return
	}
	if !strings.EqualFold(t.Codec().MimeType, codecCapability(x.codec).MimeType) {
		x.log.Warn("whip: track with an unexpected codec", "mime", t.Codec().MimeType)
		return
	}
	ch.mu.Lock()
	dup := ch.tracked
	ch.tracked = true
	ch.mu.Unlock()
	if dup {
		x.log.Warn("whip: a second track on one section: ignored", "mid", ch.mid)
		return
	}
	x.log.Debug("whip track", "channel", ch.idx, "mid", ch.mid, "ssrc", t.SSRC(), "codec", t.Codec().MimeType)
	go x.read(t, ch)
}

// read is a track's loop: RTP → sequencer → durable frames.
func (x *session) read(t *webrtc.TrackRemote, ch *channel) {
	pt := t.PayloadType()
	for {
		_ = t.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		pkt, _, err := t.ReadRTP()
		now := time.Now()
		var ne net.Error
		switch {
		case err == nil:
		case errors.As(err, &ne) && ne.Timeout():
			ch.mu.Lock()
			x.appendLocked(ch, ch.seq.expire(now))
			ch.mu.Unlock()
			continue
		default:
			x.log.Debug("whip track ended", "channel", ch.idx, "err", err)
			return
		}
		if pkt.PayloadType != uint8(pt) {
			ch.mu.Lock()
			if ch.badPT++; ch.badPT == 1 {
				x.log.Warn("whip: RTP payload type not negotiated: packets ignored", "channel", ch.idx, "payload_type", pkt.PayloadType)
			}
			ch.mu.Unlock()
			continue
		}
		if len(pkt.Payload) == 0 || len(pkt.Payload) > proto.MaxAudioPayload {
			continue // padding-only packets carry no audio
		}
		payload := append([]byte(nil), pkt.Payload...)
		ch.mu.Lock()
		if x.isEnded() {
			ch.mu.Unlock()
			continue // the call has ended: nothing more is stored
		}
		ch.lastPkt = now
		x.appendLocked(ch, ch.seq.push(pkt.SequenceNumber, payload, now))
		stop := ch.failed != nil
		ch.mu.Unlock()
		if stop {
			x.close("a frame could not be stored")
			return
		}
	}
}

func (x *session) isEnded() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.ended
}

// appendLocked makes frames durable in order; nil payloads are loss markers.
func (x *session) appendLocked(ch *channel, frames [][]byte) {
	for _, p := range frames {
		if ch.failed != nil {
			return
		}
		a := proto.Audio{Channel: ch.idx, Seq: ch.base + ch.appended, Capture: time.Now().UnixMicro(), Payload: p}
		if _, err := x.sess.Append(context.Background(), a); err != nil {
			ch.failed = err
			x.log.Warn("whip: frame refused", "channel", ch.idx, "seq", a.Seq, "err", err)
			x.send(ingest.Event{Error: ingest.AsProtoError(err)})
			return
		}
		ch.appended++
	}
}

// end stores what is in flight and ends the call. packets, when given, is
// what the console says it sent per track: end waits (boundedly) for them.
func (x *session) end(ctx context.Context, packets []uint64) error {
	x.mu.Lock()
	if x.ended || x.ending {
		x.mu.Unlock()
		return nil
	}
	x.ending = true
	x.mu.Unlock()
	defer func() {
		x.mu.Lock()
		x.ending = false
		x.mu.Unlock()
	}()
	deadline := time.Now().Add(3 * time.Second)
	quiet := x.srv.cfg.EndQuiet
	for time.Now().Before(deadline) && ctx.Err() == nil {
		ready := true
		for i, ch := range x.chans {
			ch.mu.Lock()
			switch {
			case i < len(packets):
				ready = ready && ch.seq.span() >= packets[i]
			default:
				ready = ready && time.Since(ch.lastPkt) >= quiet
			}
			ch.mu.Unlock()
		}
		if ready {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	x.mu.Lock()
	x.ended = true
	x.mu.Unlock()
	e := proto.End{}
	for _, ch := range x.chans {
		ch.mu.Lock()
		x.appendLocked(ch, ch.seq.flush())
		if ch.failed != nil {
			err := ch.failed
			ch.mu.Unlock()
			return err
		}
		e.Frames = append(e.Frames, ch.base+ch.appended)
		x.log.Info("whip channel ended", "channel", ch.idx, "frames", ch.appended, "concealed", ch.seq.lost, "late", ch.seq.late, "duplicates", ch.seq.dup, "resyncs", ch.seq.resyncs)
		ch.mu.Unlock()
	}
	if err := x.sess.End(ctx, e); err != nil {
		x.mu.Lock()
		x.ended = false
		x.mu.Unlock()
		return err
	}
	return nil
}

// dcMessage is what a console may send on the data channel.
type dcMessage struct {
	Type string `json:"type"`
	// Packets is, per track, the RTP packets sent (for "end").
	Packets []uint64 `json:"packets,omitempty"`
}

func (x *session) onDataChannel(dc *webrtc.DataChannel) {
	dc.OnOpen(func() {
		x.mu.Lock()
		x.dc, x.dcOpen = dc, true
		backlog := x.backlog
		x.backlog = nil
		x.mu.Unlock()
		for _, b := range backlog {
			_ = dc.SendText(string(b))
		}
	})
	dc.OnClose(func() {
		x.mu.Lock()
		if x.dc == dc {
			x.dcOpen = false
		}
		x.mu.Unlock()
	})
	dc.OnMessage(func(m webrtc.DataChannelMessage) {
		var msg dcMessage
		if err := json.Unmarshal(m.Data, &msg); err != nil {
			x.log.Warn("whip: bad data channel message", "err", err)
			x.send(ingest.Event{Error: &proto.Error{Code: proto.CodeBadRequest, Message: "data channel messages are JSON objects: " + err.Error()}})
			return
		}
		switch msg.Type {
		case "end":
			go func() {
				if err := x.end(context.Background(), msg.Packets); err != nil {
					x.send(ingest.Event{Error: ingest.AsProtoError(err)})
				}
			}()
		default:
			x.send(ingest.Event{Error: &proto.Error{Code: proto.CodeBadRequest, Message: fmt.Sprintf("unknown data channel message %q", msg.Type)}})
		}
	})
}

var pingMsg = `{"type":"ping"}`

// ping sends a keep-alive if the data channel is open.
func (x *session) ping() {
	x.mu.Lock()
	dc, open := x.dc, x.dcOpen
	x.mu.Unlock()
	if open {
		_ = dc.SendText(pingMsg)
	}
}

// send queues or sends one event on the data channel.
func (x *session) send(ev ingest.Event) {
	_, b := ingest.EventJSON(ev)
	if b == nil {
		return
	}
	x.mu.Lock()
	dc, open := x.dc, x.dcOpen
	if !open {
		if len(x.backlog) < 10000 {
			x.backlog = append(x.backlog, b)
		}
		x.mu.Unlock()
		return
	}
	x.mu.Unlock()
	if err := dc.SendText(string(b)); err != nil {
		x.log.Debug("whip: data channel send failed", "err", err)
	}
}

// forward sends the call's events to the console until the coordinator
// closes the session (finalised, or replaced by a newer connection).
// A keep-alive every second lets a console notice a dead coordinator in
// seconds, well before ICE gives up.
func (x *session) forward() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
events:
	for {
		select {
		case ev, ok := <-x.sess.Events():
			if !ok {
				break events
			}
			x.send(ev)
		case <-tick.C:
			x.ping()
		case <-x.done:
			return
		}
	}
	// Let the data channel deliver the last events, then hang up.
	select {
	case <-x.done:
	case <-time.After(time.Second):
		x.close("call session closed by the coordinator")
	}
}

func (x *session) onState(st webrtc.PeerConnectionState) {
	x.log.Debug("whip connection state", "state", st.String())
	switch st {
	case webrtc.PeerConnectionStateFailed:
		x.close("connection failed")
	case webrtc.PeerConnectionStateClosed:
		x.close("connection closed")
	}
}

// close tears the WebRTC session down; the call stays open for the
// console to reconnect (or for the abandon timer).
func (x *session) close(why string) {
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return
	}
	x.closed = true
	close(x.done)
	x.mu.Unlock()
	x.srv.removed(x)
	x.sess.Close()
	go func() { _ = x.pc.Close() }()
	x.log.Info("whip session closed", "why", why, "lasted", time.Since(x.opened).Round(time.Millisecond))
}

// frag is a parsed trickle-ice-sdpfrag (RFC 8840).
type frag struct {
	ufrag, pwd, mid string
	candidates      []string
}

func parseFrag(s string) frag {
	var f frag
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "a=ice-ufrag:"):
			f.ufrag = strings.TrimPrefix(l, "a=ice-ufrag:")
		case strings.HasPrefix(l, "a=ice-pwd:"):
			f.pwd = strings.TrimPrefix(l, "a=ice-pwd:")
		case strings.HasPrefix(l, "a=mid:") && f.mid == "":
			f.mid = strings.TrimPrefix(l, "a=mid:")
		case strings.HasPrefix(l, "a=candidate:"):
			f.candidates = append(f.candidates, strings.TrimPrefix(l, "a="))
		}
	}
	return f
}

func (x *session) remoteUfrag() string {
	rd := x.pc.RemoteDescription()
	if rd == nil {
		return ""
	}
	return parseFrag(rd.SDP).ufrag
}

// restartICE applies the console's new ICE credentials as a new offer and
// answers with ours (and our candidates) as a fragment.
func (x *session) restartICE(ctx context.Context, f frag) (string, error) {
	if f.pwd == "" {
		return "", errors.New("the fragment has an ice-ufrag but no ice-pwd")
	}
	rd := x.pc.RemoteDescription()
	old := parseFrag(rd.SDP)
	sdp := strings.ReplaceAll(rd.SDP, "a=ice-ufrag:"+old.ufrag, "a=ice-ufrag:"+f.ufrag)
	sdp = strings.ReplaceAll(sdp, "a=ice-pwd:"+old.pwd, "a=ice-pwd:"+f.pwd)
	if err := x.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: sdp}); err != nil {
		return "", err
	}
	ans, err := x.pc.CreateAnswer(nil)
	if err != nil {
		return "", err
	}
	gathered := webrtc.GatheringCompletePromise(x.pc)
	if err := x.pc.SetLocalDescription(ans); err != nil {
		return "", err
	}
	select {
	case <-gathered:
	case <-time.After(5 * time.Second):
		return "", errors.New("ICE gathering did not finish in 5 s")
	case <-ctx.Done():
		return "", ctx.Err()
	}
	x.mu.Lock()
	x.ice++
	x.mu.Unlock()
	local := parseFrag(x.pc.LocalDescription().SDP)
	var b strings.Builder
	fmt.Fprintf(&b, "a=ice-ufrag:%s\r\na=ice-pwd:%s\r\n", local.ufrag, local.pwd)
	for _, c := range local.candidates {
		fmt.Fprintf(&b, "a=%s\r\n", c)
	}
	x.log.Info("whip ICE restart")
	return b.String(), nil
}

// negotiating is the number of offers being answered (tests).
func (s *Server) negotiating() int { return len(s.slots) }
