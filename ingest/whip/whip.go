// Package whip is callscribe's WebRTC ingest: a WHIP endpoint (RFC 9725) on
// pion/webrtc. A console POSTs an SDP offer with one or two audio tracks
// (caller, call-taker) for a call id; every RTP payload goes through the same
// ingest.Sink as the QUIC path, so it is durable before anything else
// happens to it. Transcript events go back on the console's data channel.
// PATCH restarts ICE (or trickles candidates); DELETE ends the call.
//
// Sessions that are being set up cost little and do not last: remote ICE
// candidates are only used inside the allowed networks (and counted), a
// session not connected within ConnectTimeout is closed, a connected one
// whose tracks go silent for IdleTimeout too, and offers from one address
// with many sessions still unconnected are refused. Connected sessions never
// count against the pending limits: live calls come first.
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
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/owner"
	"github.com/callscribe/callscribe/proto"
	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/webrtc/v4"
)

// Config configures a WHIP endpoint.
type Config struct {
	Sink ingest.Sink
	Auth ingest.Authenticator
	Log  *slog.Logger
	// MaxSessions bounds WebRTC sessions, with the offers being answered
	// (default 1000).
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

	// AllowedNetworks are the networks remote ICE candidates may point
	// into. Candidates elsewhere are dropped (and counted) before pion sees
	// them, in the offer, in trickled fragments and in ICE restarts, so the
	// coordinator never sends connectivity checks there on a console's
	// word. nil (or empty): loopback plus the networks directly attached to
	// this host (each address of each interface that is up, with its mask),
	// read again every 30 s at most (addresses come and go). IPv4 network
	// and broadcast addresses of the attached networks, multicast and
	// unspecified addresses are refused whatever is allowed. Peer-reflexive
	// candidates (a console's own checks that reach the coordinator) are
	// answered as ICE requires: which hosts may reach the WebRTC ports at
	// all is the firewall's business.
	AllowedNetworks []netip.Prefix
	// AllowMDNS accepts mDNS (.local) host candidates and lets pion resolve
	// them by multicast on the local link. Off by default: the address a
	// name resolves to is whatever a host on the link answers, and it
	// cannot be checked against AllowedNetworks before pion sends to it;
	// nor do consoles need them: a browser that captures the microphone
	// offers its real host addresses, and a console whose candidates were
	// all dropped still connects (its own checks reach the coordinator's
	// candidates and are answered, as peer-reflexive candidates).
	AllowMDNS bool
	// MaxCandidates bounds the distinct remote candidates one session may
	// signal, offer and trickle together, allowed or not (default 20). The
	// same candidate repeated in several m= sections counts once.
	MaxCandidates int
	// ConnectTimeout closes a session whose connection (ICE and DTLS) is
	// not up this long after it was answered (default 10 s).
	ConnectTimeout time.Duration
	// IdleTimeout closes a connected session whose tracks deliver no RTP
	// audio for this long (default 15 s); keep-alives (STUN, RTCP, data
	// channel, padding) do not count. The call stays open for the console
	// to reconnect. A call the console has ended is not timed out.
	IdleTimeout time.Duration
	// MaxPendingPerRemote bounds the sessions of one remote IP address that
	// are being negotiated or are not connected yet (default 16); more
	// offers from it get 503 with Retry-After.
	MaxPendingPerRemote int
	// MaxPending bounds the same over all remote addresses (default 64), so
	// that a flood from many addresses cannot take all of MaxSessions.
	MaxPending int

	// gatherIP, when set, limits the local addresses ICE gathers on
	// (tests: loopback only, so that no packet leaves loopback).
	gatherIP func(net.IP) bool
}

// Server is a WHIP endpoint.
type Server struct {
	cfg    Config
	log    *slog.Logger
	slots  chan struct{}
	filter atomic.Pointer[candidateFilter] // see candidates

	mu       sync.Mutex
	sessions map[string]*session
	closed   bool
	inflight int                // offers admitted and not yet sessions (or refused)
	pending  map[netip.Addr]int // per remote address: offers in flight and sessions not connected
	pendAll  int                // the same, all addresses
	// 503s logged: when last, and how many not since
	busyLogged time.Time
	busyQuiet  int
	// group owns every goroutine of every session (forwarding, track
	// readers, closes); Close waits for them.
	group owner.Group
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
	if cfg.MaxCandidates <= 0 {
		cfg.MaxCandidates = 20
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 15 * time.Second
	}
	if cfg.MaxPendingPerRemote <= 0 {
		cfg.MaxPendingPerRemote = 16
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 64
	}
	for _, p := range cfg.AllowedNetworks {
		if !p.IsValid() {
			return nil, fmt.Errorf("whip: allowed network %v is not a network (address/bits)", p)
		}
	}
	s := &Server{cfg: cfg, log: cfg.Log, slots: make(chan struct{}, cfg.MaxNegotiations), sessions: map[string]*session{}, pending: map[netip.Addr]int{}}
	f := s.candidates()
	cfg.Log.Info("whip: remote ICE candidates are used from", "networks", f.String(), "default", len(cfg.AllowedNetworks) == 0, "mdns", cfg.AllowMDNS, "max_candidates", cfg.MaxCandidates)
	return s, nil
}

// filterTTL is how long the attached networks are taken as they were.
const filterTTL = 30 * time.Second

// candidates returns the candidate filter, made again from the host's
// interfaces when it is older than filterTTL.
func (s *Server) candidates() *candidateFilter {
	old := s.filter.Load()
	if old != nil && time.Since(old.made) < filterTTL {
		return old
	}
	attached, err := attachedNetworks()
	if err != nil {
		s.log.Warn("whip: cannot list the network interfaces: the attached networks are taken as they were (at the start: none, only loopback is allowed by default)", "err", err)
		if old != nil {
			attached = old.attached
		}
	}
	f := newCandidateFilter(s.cfg.AllowedNetworks, attached, s.cfg.AllowMDNS)
	f.made = time.Now()
	if s.filter.CompareAndSwap(old, f) && old != nil && old.String() != f.String() {
		s.log.Info("whip: the allowed networks for remote ICE candidates changed", "networks", f.String())
	}
	return s.filter.Load()
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
	// Every session is closed: their goroutines end (events closed, peer
	// connections closed) and none starts any more.
	s.group.Wait()
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
// Refusals for load (503) are logged at most once a second, with the
// number left out since: a flood is not copied line by line into the log.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, code int, msg string, args ...any) {
	args = append([]any{"method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "status", code, "reason", msg}, args...)
	if code != http.StatusServiceUnavailable {
		s.log.Warn("whip: request refused", args...)
	} else if ok, skipped := s.logBusy(); ok {
		s.log.Warn("whip: request refused", append(args, "not_logged_before", skipped)...)
	}
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="callscribe"`)
	}
	http.Error(w, msg, code)
}

// logBusy says whether to log a 503 now, and how many were not logged.
func (s *Server) logBusy() (bool, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.busyLogged) < time.Second {
		s.busyQuiet++
		return false, 0
	}
	n := s.busyQuiet
	s.busyLogged, s.busyQuiet = time.Now(), 0
	return true, n
}

// bearer returns the request's bearer token.
func bearer(r *http.Request) string {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") { // case-insensitive (RFC 9110 §11.1)
		return ""
	}
	return strings.TrimSpace(tok)
}

// param reads a setting from a header (X-Callscribe-NAME) or the query.
func param(r *http.Request, name string) string {
	if v := r.Header.Get("X-Callscribe-" + name); v != "" {
		return v
	}
	return r.URL.Query().Get(strings.ToLower(name))
}

// authenticate names the console a request comes from, or answers it with
// the refusal.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (auth.Principal, bool) {
	if r.URL.Query().Has("token") {
		s.fail(w, r, http.StatusBadRequest, auth.ErrTokenInURL.Error())
		return auth.Principal{}, false
	}
	p, err := s.cfg.Auth(bearer(r), r.TLS, remoteIP(r))
	if err != nil {
		pe := ingest.AuthError(err)
		if pe.RetryAfterMS > 0 {
			w.Header().Set("Retry-After", fmt.Sprint((pe.RetryAfterMS+999)/1000))
		}
		s.fail(w, r, ingest.HTTPStatus(pe), pe.Message)
		return auth.Principal{}, false
	}
	if p.Role != auth.Console {
		s.fail(w, r, http.StatusForbidden, fmt.Sprintf("credential %q has the role %s: only consoles stream calls", p.Name, p.Role))
		return auth.Principal{}, false
	}
	return p, true
}

func (s *Server) handlePost(w http.ResponseWriter, r *http.Request) {
	p, ok := s.authenticate(w, r)
	if !ok {
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
	ip := remoteIP(r)
	if retry, msg := s.admit(ip); msg != "" {
		if retry != "" {
			w.Header().Set("Retry-After", retry)
		}
		s.fail(w, r, http.StatusServiceUnavailable, msg)
		return
	}
	admitted := true // until the session takes the admission over
	defer func() {
		if admitted {
			s.unadmit(ip)
		}
	}()
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
	// The candidates are filtered before anything is opened: pion only
	// ever sees the ones it may use.
	seen := map[string]bool{}
	filter := s.candidates()
	sdp, tally, err := filter.filterSDP(string(body), seen)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, "bad ICE candidate in the offer: "+err.Error(), "call", callID)
		return
	}
	if tally.distinct > s.cfg.MaxCandidates {
		s.fail(w, r, http.StatusBadRequest, fmt.Sprintf("the offer lists %d ICE candidates: at most %d are accepted per session", tally.distinct, s.cfg.MaxCandidates), "call", callID)
		return
	}
	if tally.kept == 0 && !tally.trickle {
		msg := "no usable ICE candidate in the offer, and it does not announce trickle ICE (a=ice-options:trickle)"
		if tally.dropped > 0 {
			msg += fmt.Sprintf(": %d refused, e.g. %s (allowed networks: %s)", tally.dropped, tally.example, filter)
		}
		s.fail(w, r, http.StatusBadRequest, msg, "call", callID)
		return
	}
	// The console is the one the credential names, whatever the request
	// claims (X-Callscribe-Console is ignored).
	h := &proto.Hello{Version: proto.Version, CallID: callID, ConsoleID: proto.ConsoleID(p.Name),
		Channels: labels, Codec: off.codec, Model: param(r, "Model"), Remote: ip, Principal: p}
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
		if pe.Code == proto.CodeUnavailable || pe.Code == proto.CodeStorage {
			w.Header().Set("Retry-After", "2")
		}
		s.fail(w, r, ingest.HTTPStatus(pe), pe.Message, "call", callID, "code", pe.Code)
		return
	}
	x, answer, err := s.answer(ctx, off, sdp, sess, wel, h, ip, seen, tally.dropped)
	if err != nil {
		sess.Close()
		s.fail(w, r, http.StatusBadRequest, "cannot answer the offer: "+err.Error(), "call", callID)
		return
	}
	admitted = false
	if tally.dropped > 0 {
		x.log.Info("whip: remote ICE candidates of the offer dropped", "dropped", tally.dropped, "kept", tally.kept, "example", tally.example)
	}
	w.Header().Set("Content-Type", "application/sdp")
	w.Header().Set("Location", "/v1/whip/sessions/"+x.id)
	w.Header().Set("ETag", x.etag())
	w.Header().Set("X-Callscribe-Resumed", fmt.Sprint(wel.Resumed))
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, answer)
}

func defaultLabels(n int) []string { return []string{"caller", "call-taker"}[:n] }

// remoteIP is the address an HTTP request comes from.
func remoteIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap().WithZone("")
}

// admit reserves room for an offer from ip: a session under MaxSessions and
// a pending one under MaxPendingPerRemote and MaxPending. msg says why not.
func (s *Server) admit(ip netip.Addr) (retryAfter, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return "", "coordinator shutting down"
	case len(s.sessions)+s.inflight >= s.cfg.MaxSessions:
		return "5", fmt.Sprintf("the coordinator carries its maximum of %d WebRTC sessions", s.cfg.MaxSessions)
	case s.pending[ip] >= s.cfg.MaxPendingPerRemote:
		return "2", fmt.Sprintf("%d WebRTC sessions from %s are still being set up (the most per address): retry shortly", s.pending[ip], ip)
	case s.pendAll >= s.cfg.MaxPending:
		return "2", fmt.Sprintf("%d WebRTC sessions are still being set up (the most at once): retry shortly", s.pendAll)
	}
	s.inflight++
	s.pending[ip]++
	s.pendAll++
	return "", ""
}

// unadmit gives back the room of an offer that did not become a session.
func (s *Server) unadmit(ip netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inflight--
	s.unpendLocked(ip)
}

func (s *Server) unpendLocked(ip netip.Addr) {
	s.pendAll--
	if s.pending[ip]--; s.pending[ip] <= 0 {
		delete(s.pending, ip)
	}
}

// connected takes a session off the pending counts.
func (s *Server) connected(x *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if x.pending {
		x.pending = false
		s.unpendLocked(x.remote)
	}
}

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
	// Without mDNS pion opens no multicast socket and resolves no name;
	// .local candidates are then stripped before it sees them anyway.
	if s.cfg.AllowMDNS {
		se.SetICEMulticastDNSMode(ice.MulticastDNSModeQueryOnly)
	} else {
		se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	}
	if s.cfg.Loopback {
		se.SetIncludeLoopbackCandidate(true)
	}
	if s.cfg.gatherIP != nil {
		se.SetIPFilter(s.cfg.gatherIP)
	}
	if s.cfg.UDPPortMax != 0 {
		if err := se.SetEphemeralUDPPortRange(s.cfg.UDPPortMin, s.cfg.UDPPortMax); err != nil {
			return nil, err
		}
	}
	return webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se)), nil
}

// answer answers a filtered offer and registers the session, which takes
// over the offer's admission.
func (s *Server) answer(ctx context.Context, off *offer, sdp string, sess ingest.Session, wel *proto.Welcome, h *proto.Hello,
	remote netip.Addr, seen map[string]bool, dropped int) (*session, string, error) {
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
		opened: time.Now(), done: make(chan struct{}), remote: remote, seen: seen, dropped: dropped, principal: h.Principal}
	for i, mid := range off.mids {
		x.chans = append(x.chans, &channel{idx: uint8(i), mid: mid, base: wel.NextSeq[i], seq: newSequencer(25, 150*time.Millisecond)})
	}
	pc.OnTrack(x.onTrack)
	pc.OnDataChannel(x.onDataChannel)
	pc.OnConnectionStateChange(x.onState)
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: sdp}); err != nil {
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
	if s.closed || x.isClosed() {
		s.mu.Unlock()
		_ = pc.Close()
		return nil, "", errors.New("the connection closed while the offer was being answered")
	}
	s.inflight--
	s.sessions[x.id] = x
	x.pending = true
	if x.connectedAt.Load() != 0 {
		x.pending = false
		s.unpendLocked(remote)
	}
	s.mu.Unlock()
	x.mu.Lock()
	if !x.closed {
		x.connectTimer = time.AfterFunc(s.cfg.ConnectTimeout, x.connectExpired)
	}
	x.mu.Unlock()
	// Refused only once Close has begun, which closes this session too.
	s.group.Go(x.forward)
	x.log.Info("whip session open", "codec", off.codec, "tracks", len(off.mids), "data_channel", off.data, "resumed", wel.Resumed, "next_seq", wel.NextSeq)
	return x, pc.LocalDescription().SDP, nil
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// session is the WHIP session a request names, if the request comes from
// the console that opened it.
func (s *Server) session(w http.ResponseWriter, r *http.Request) *session {
	p, ok := s.authenticate(w, r)
	if !ok {
		return nil
	}
	s.mu.Lock()
	x := s.sessions[r.PathValue("id")]
	s.mu.Unlock()
	if x == nil {
		s.fail(w, r, http.StatusNotFound, "no such WHIP session")
		return nil
	}
	if x.principal.Name != p.Name {
		s.fail(w, r, http.StatusForbidden, "this WHIP session belongs to another console", "session", x.id)
		return nil
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
	restart := frag.ufrag != "" && frag.ufrag != x.remoteUfrag()
	m := r.Header.Get("If-Match")
	switch {
	case restart && m != "*" && m != x.etag():
		s.fail(w, r, http.StatusPreconditionFailed, "an ICE restart needs If-Match: \"*\" or the session's ETag")
		return
	case !restart && m != "" && m != "*" && m != x.etag():
		s.fail(w, r, http.StatusPreconditionFailed, "the fragment is for another ICE session (ETag mismatch)")
		return
	}
	add, code, err := x.admitCandidates(frag.candidates)
	if err != nil {
		s.fail(w, r, code, err.Error(), "call", x.call)
		return
	}
	if restart {
		out, err := x.restartICE(r.Context(), frag)
		if err != nil {
			s.fail(w, r, http.StatusUnprocessableEntity, "ICE restart failed: "+err.Error(), "call", x.call)
			return
		}
		if err := x.addCandidates(frag.mid, add); err != nil {
			s.fail(w, r, http.StatusBadRequest, "bad candidate: "+err.Error(), "call", x.call)
			return
		}
		w.Header().Set("Content-Type", "application/trickle-ice-sdpfrag")
		w.Header().Set("ETag", x.etag())
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, out)
		return
	}
	if err := x.addCandidates(frag.mid, add); err != nil {
		s.fail(w, r, http.StatusBadRequest, "bad candidate: "+err.Error(), "call", x.call)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// admitCandidates checks trickled candidates (or those of an ICE restart)
// and returns the ones pion may have. One that does not parse refuses the
// fragment (400); so does going over MaxCandidates (422): either way the
// session keeps what it had and none of the fragment's candidates is used.
func (x *session) admitCandidates(lines []string) ([]string, int, error) {
	type checked struct {
		line   string
		c      candidate
		ok     bool
		reason string
	}
	var cs []checked
	filter := x.srv.candidates()
	for _, l := range lines {
		c, err := parseCandidate(l)
		if err != nil {
			return nil, http.StatusBadRequest, fmt.Errorf("bad ICE candidate: %w", err)
		}
		ok, reason := filter.check(c)
		cs = append(cs, checked{l, c, ok, reason})
	}
	x.mu.Lock()
	fresh := map[string]bool{}
	for _, c := range cs {
		if k := c.c.key(); !x.seen[k] {
			fresh[k] = true
		}
	}
	if n, most := len(x.seen)+len(fresh), x.srv.cfg.MaxCandidates; n > most {
		x.mu.Unlock()
		return nil, http.StatusUnprocessableEntity, fmt.Errorf("%d more ICE candidates would make %d: at most %d are accepted per session (none of these was added)", len(fresh), n, most)
	}
	var t candidateTally
	var add []string
	for _, c := range cs {
		if k := c.c.key(); !x.seen[k] {
			x.seen[k] = true
			t.note(c.c, c.ok, c.reason)
		}
		if c.ok {
			add = append(add, c.line) // again after an ICE restart, too
		}
	}
	x.dropped += t.dropped
	first := t.dropped > 0 && !x.trickleLog
	x.trickleLog = x.trickleLog || first
	x.mu.Unlock()
	if first {
		x.log.Info("whip: trickled remote ICE candidates dropped (further ones are only counted)", "dropped", t.dropped, "example", t.example)
	}
	return add, 0, nil
}

// addCandidates gives pion remote candidates that passed admitCandidates.
func (x *session) addCandidates(mid string, lines []string) error {
	for _, c := range lines {
		if err := x.pc.AddICECandidate(webrtc.ICECandidateInit{Candidate: c, SDPMid: &mid}); err != nil {
			return err
		}
	}
	return nil
}

// removed drops a session from the table.
func (s *Server) removed(x *session) {
	s.mu.Lock()
	if s.sessions[x.id] == x {
		delete(s.sessions, x.id)
	}
	if x.pending {
		x.pending = false
		s.unpendLocked(x.remote)
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
	remote netip.Addr // where the offer came from
	// principal is the console that opened the session: only it may
	// change or end it. Set before the session is published.
	principal auth.Principal

	pending     bool         // counted as pending by the server (guarded by srv.mu)
	connectedAt atomic.Int64 // unix ns when ICE and DTLS were first up; 0 until then
	lastRTP     atomic.Int64 // unix ns of the last RTP audio packet

	mu           sync.Mutex
	connectTimer *time.Timer
	seen         map[string]bool // remote candidates signalled (keys), allowed or not
	dropped      int             // of which refused
	trickleLog   bool            // a trickled candidate was refused and logged
	ice          int             // ICE generation (restarts), part of the ETag
	dc           *webrtc.DataChannel
	dcOpen       bool
	backlog      [][]byte // events waiting for the data channel to open
	ending       bool
	ended        bool
	closed       bool
	done         chan struct{}
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
	tracked  bool

	failMu sync.Mutex
	failed error // the store refused a frame: the session stops
}

// setFailed records the first frame the sink refused (from the sink's
// completion callback as well as the reader).
func (ch *channel) setFailed(err error) bool {
	ch.failMu.Lock()
	defer ch.failMu.Unlock()
	if ch.failed != nil {
		return false
	}
	ch.failed = err
	return true
}

func (ch *channel) err() error {
	ch.failMu.Lock()
	defer ch.failMu.Unlock()
	return ch.failed
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
	x.srv.group.Go(func() { x.read(t, ch) })
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
		x.lastRTP.Store(now.UnixNano())
		x.appendLocked(ch, ch.seq.push(pkt.SequenceNumber, payload, now))
		stop := ch.err() != nil
		ch.mu.Unlock()
		if stop {
			x.close("a frame could not be stored")
			return
		}
	}
}

func (x *session) isClosed() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.closed
}

// connectExpired closes the session if it never connected.
func (x *session) connectExpired() {
	if x.connectedAt.Load() == 0 {
		x.close(fmt.Sprintf("never connected: ICE and DTLS not up within %s", x.srv.cfg.ConnectTimeout))
	}
}

// idle is how long a connected session's tracks have brought no RTP audio.
func (x *session) idle(now time.Time) time.Duration {
	c := x.connectedAt.Load()
	if c == 0 {
		return 0
	}
	return now.Sub(time.Unix(0, max(c, x.lastRTP.Load())))
}

func (x *session) isEnded() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.ended
}

// appendLocked hands frames to the sink in order; nil payloads are loss
// markers. A sink that can have many frames on their way to disk
// (ingest.Submitter) gets them without waiting, so a slow disk batches
// more per commit instead of holding the track back; a refusal, reported
// later, stops the session.
func (x *session) appendLocked(ch *channel, frames [][]byte) {
	sub, pipelined := x.sess.(ingest.Submitter)
	for _, p := range frames {
		if ch.err() != nil {
			return
		}
		a := proto.Audio{Channel: ch.idx, Seq: ch.base + ch.appended, Capture: time.Now().UnixMicro(), Payload: p}
		refused := func(err error) {
			if ch.setFailed(err) {
				x.log.Warn("whip: frame refused", "channel", ch.idx, "seq", a.Seq, "err", err)
				x.send(ingest.Event{Error: ingest.AsProtoError(err)})
				x.srv.group.Go(func() { x.close("a frame could not be stored") })
			}
		}
		if pipelined {
			sub.Submit(a, func(_ proto.Ack, err error) {
				if err != nil {
					refused(err)
				}
			})
		} else if _, err := x.sess.Append(context.Background(), a); err != nil {
			refused(err)
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
		if err := ch.err(); err != nil {
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
			x.srv.group.Go(func() {
				if err := x.end(context.Background(), msg.Packets); err != nil {
					x.send(ingest.Event{Error: ingest.AsProtoError(err)})
				}
			})
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
//
// It also closes a session whose tracks have been silent for IdleTimeout.
func (x *session) forward() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	idleTimeout := x.srv.cfg.IdleTimeout
	check := time.NewTicker(min(time.Second, idleTimeout/4))
	defer check.Stop()
	fatal := false // the last event ended the session (revoked, transferred)
events:
	for {
		select {
		case ev, ok := <-x.sess.Events():
			if !ok {
				break events
			}
			fatal = ev.Error != nil && ev.Error.Fatal
			x.send(ev)
		case <-tick.C:
			x.ping()
		case now := <-check.C:
			if x.idle(now) >= idleTimeout && !x.isEnded() {
				x.close(fmt.Sprintf("no audio for %s", idleTimeout))
				return
			}
		case <-x.done:
			return
		}
	}
	// Let the data channel deliver the last events, then hang up (at once
	// after a fatal error: a revoked console is cut off within a second).
	linger := time.Second
	if fatal {
		linger = 100 * time.Millisecond
	}
	select {
	case <-x.done:
	case <-time.After(linger):
		x.close("call session closed by the coordinator")
	}
}

func (x *session) onState(st webrtc.PeerConnectionState) {
	x.log.Debug("whip connection state", "state", st.String())
	switch st {
	case webrtc.PeerConnectionStateConnected:
		if x.connectedAt.CompareAndSwap(0, time.Now().UnixNano()) {
			x.srv.connected(x)
			x.log.Info("whip session connected", "after", time.Since(x.opened).Round(time.Millisecond))
		}
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
	if x.connectTimer != nil {
		x.connectTimer.Stop()
	}
	candidates, dropped := len(x.seen), x.dropped
	x.mu.Unlock()
	x.srv.removed(x)
	x.sess.Close()
	// Not inline: close may run in a pion callback. Refused only after
	// Close's wait began, when every peer connection is closed already.
	x.srv.group.Go(func() { _ = x.pc.Close() })
	x.log.Info("whip session closed", "why", why, "lasted", time.Since(x.opened).Round(time.Millisecond),
		"connected", x.connectedAt.Load() != 0, "remote", x.remote, "candidates", candidates, "candidates_dropped", dropped)
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
