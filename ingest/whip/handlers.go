package whip

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/proto"
	"github.com/pion/webrtc/v4"
)

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
	tok, remote, err := auth.Request(r)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return auth.Principal{}, false
	}
	p, err := s.cfg.Auth(tok, r.TLS, remote)
	if err != nil {
		pe := ingest.AuthError(err)
		if pe.RetryAfterMS > 0 {
			w.Header().Set("Retry-After", fmt.Sprint((pe.RetryAfterMS+999)/1000))
		}
		s.fail(w, r, ingest.HTTPStatus(pe), pe.Message)
		return auth.Principal{}, false
	}
	if pe := ingest.ConsoleOnly(p); pe != nil {
		s.fail(w, r, http.StatusForbidden, pe.Message)
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
	ip := auth.Remote(r)
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
