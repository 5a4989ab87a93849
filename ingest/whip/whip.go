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
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callscribe/callscribe/ingest"
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

var pingMsg = `{"type":"ping"}`

// negotiating is the number of offers being answered (tests).
func (s *Server) negotiating() int { return len(s.slots) }
