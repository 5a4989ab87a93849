package whip

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/internal/leader"
	"github.com/callscribe/callscribe/proto"
	"github.com/pion/ice/v4"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// ClientConfig configures a WHIP console (the CLI and the load generator).
type ClientConfig struct {
	// Server is the coordinator's HTTP(S) base URL. Servers lists the
	// coordinators of a cluster (after Server, if both are set): the offer
	// goes to the first that can be reached, and a follower's redirect to
	// the leader is followed, with the credential, only to one of them.
	Server    string
	Servers   []string
	RootCAs   *x509.CertPool
	Token     string
	CallID    proto.CallID
	ConsoleID proto.ConsoleID
	Channels  []string
	Codec     proto.Codec
	Model     string
	Logger    *slog.Logger

	// mungeOffer, when set, rewrites the offer before it is posted (tests).
	mungeOffer func(string) string
	// gatherIP, when set, limits the local addresses ICE gathers on (tests).
	gatherIP func(net.IP) bool
}

// Client is one WebRTC console call.
type Client struct {
	cfg     ClientConfig
	bases   []string // Server and Servers, without trailing slashes
	http    *http.Client
	pc      *webrtc.PeerConnection
	dc      *webrtc.DataChannel
	tracks  []*webrtc.TrackLocalStaticRTP
	session string
	events  chan ingest.Event
	open    chan struct{}

	mu      sync.Mutex
	seq     []uint16
	ts      []uint32
	sent    []uint64
	evClose bool
}

// Dial offers the call to the coordinator and waits until the data channel
// is open (audio can flow).
func Dial(ctx context.Context, cfg ClientConfig) (*Client, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var bases []string
	for _, b := range append([]string{cfg.Server}, cfg.Servers...) {
		if b = strings.TrimRight(strings.TrimSpace(b), "/"); b != "" && !slices.Contains(bases, b) {
			bases = append(bases, b)
		}
	}
	if len(bases) == 0 {
		return nil, errors.New("whip: no coordinator URL")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12}
	// A coordinator that is down is passed over for the next well within
	// the request's time.
	tr.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	// A follower answers the offer with 307 to the leader: followed (the
	// body goes again) only to a configured coordinator, with the
	// credential; net/http alone would drop it for another host and keep
	// it for any port of the same host.
	hc := &http.Client{Transport: tr, Timeout: 15 * time.Second, CheckRedirect: leader.CheckRedirect(bases)}
	c := &Client{cfg: cfg, bases: bases, http: hc, events: make(chan ingest.Event, 4096), open: make(chan struct{}),
		seq: make([]uint16, len(cfg.Channels)), ts: make([]uint32, len(cfg.Channels)), sent: make([]uint64, len(cfg.Channels))}
	me := &webrtc.MediaEngine{}
	capab := codecCapability(cfg.Codec)
	if capab.MimeType == "" {
		return nil, fmt.Errorf("whip: codec %q is not available over WebRTC (opus, pcmu, pcma)", cfg.Codec)
	}
	if err := me.RegisterCodec(webrtc.RTPCodecParameters{RTPCodecCapability: capab, PayloadType: payloadType(cfg.Codec)}, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, err
	}
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4, webrtc.NetworkTypeUDP6})
	// The coordinator never offers mDNS candidates: no multicast socket.
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	if cfg.gatherIP != nil {
		se.SetIPFilter(cfg.gatherIP)
	}
	api := webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithSettingEngine(se))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, err
	}
	c.pc = pc
	for i, l := range cfg.Channels {
		t, err := webrtc.NewTrackLocalStaticRTP(capab, fmt.Sprintf("ch%d", i), l)
		if err != nil {
			pc.Close()
			return nil, err
		}
		if _, err := pc.AddTransceiverFromTrack(t, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
			pc.Close()
			return nil, err
		}
		c.tracks = append(c.tracks, t)
		c.seq[i] = uint16(time.Now().UnixNano()>>8) + uint16(i*7919) // as random as RTP wants
	}
	dc, err := pc.CreateDataChannel("callscribe", nil)
	if err != nil {
		pc.Close()
		return nil, err
	}
	c.dc = dc
	dc.OnOpen(func() { close(c.open) })
	dc.OnMessage(c.onMessage)
	dc.OnClose(c.closeEvents)
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateFailed || s == webrtc.PeerConnectionStateClosed {
			c.closeEvents()
		}
	})
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		pc.Close()
		return nil, err
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		pc.Close()
		return nil, err
	}
	<-gathered
	sdp := pc.LocalDescription().SDP
	if cfg.mungeOffer != nil {
		sdp = cfg.mungeOffer(sdp)
	}
	answer, err := c.post(ctx, sdp)
	if err != nil {
		pc.Close()
		return nil, err
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		pc.Close()
		return nil, fmt.Errorf("whip: bad answer: %w", err)
	}
	select {
	case <-c.open:
		return c, nil
	case <-time.After(10 * time.Second):
		err = errors.New("whip: the connection did not open in 10 s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	c.Close(context.Background())
	return nil, err
}

// codecCapability and payloadType describe a codec to pion, the same on
// both sides of a WHIP session (the answer keeps the offer's payload type).
func codecCapability(c proto.Codec) webrtc.RTPCodecCapability {
	switch c {
	case proto.CodecOpus:
		return webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2, SDPFmtpLine: "minptime=10;useinbandfec=1"}
	case proto.CodecPCMU:
		return webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypePCMU, ClockRate: 8000}
	case proto.CodecPCMA:
		return webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypePCMA, ClockRate: 8000}
	}
	return webrtc.RTPCodecCapability{}
}

func payloadType(c proto.Codec) webrtc.PayloadType {
	switch c {
	case proto.CodecPCMU:
		return 0
	case proto.CodecPCMA:
		return 8
	}
	return 111
}

// dialTimeout bounds one TCP connection to a coordinator.
const dialTimeout = 5 * time.Second

// post offers sdp to the first coordinator that can be reached and
// returns the answer. A coordinator that cannot be connected to is passed
// over for the next; any answer, a refusal included, is final.
func (c *Client) post(ctx context.Context, sdp string) (string, error) {
	var errs []error
	for _, base := range c.bases {
		answer, err := c.postTo(ctx, base, sdp)
		if err == nil || !connectFailed(err) || ctx.Err() != nil {
			return answer, err
		}
		c.cfg.Logger.Warn("whip: coordinator unreachable: trying the next", "server", base, "err", err)
		var ue *url.Error // "Post URL: dial …", without the "whip: " prefix
		if errors.As(err, &ue) {
			err = ue
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("whip: %w", &leader.UnreachableError{Addrs: c.bases, Errs: errs})
}

// connectFailed reports whether err means no connection could be made:
// the request was not sent, so sending it elsewhere is safe.
func connectFailed(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (c *Client) postTo(ctx context.Context, base, sdp string) (string, error) {
	u := base + "/v1/whip/" + url.PathEscape(string(c.cfg.CallID))
	// A strings.Reader body gives the request GetBody: a 307 or 308 from a
	// follower sends the offer again to the leader.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(sdp))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/sdp")
	req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	req.Header.Set("X-Callscribe-Codec", string(c.cfg.Codec))
	req.Header.Set("X-Callscribe-Channels", strings.Join(c.cfg.Channels, ","))
	if c.cfg.ConsoleID != "" {
		req.Header.Set("X-Callscribe-Console", string(c.cfg.ConsoleID))
	}
	if c.cfg.Model != "" {
		req.Header.Set("X-Callscribe-Model", c.cfg.Model)
	}
	res, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("whip: %w", err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if res.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("whip: the coordinator refused the call: %s: %s", res.Status, bytes.TrimSpace(body))
	}
	// Location is resolved against the URL that answered: after a
	// redirect, the leader's.
	loc, err := res.Location()
	if err != nil {
		return "", fmt.Errorf("whip: answer without a Location: %w", err)
	}
	c.session = loc.String()
	return string(body), nil
}

// Session is the WHIP session's URL: the answer's Location, resolved
// against the URL that answered (the leader's, after a redirect).
func (c *Client) Session() string { return c.session }

// Events delivers transcript events; it is closed when the session ends.
func (c *Client) Events() <-chan ingest.Event { return c.events }

func (c *Client) onMessage(m webrtc.DataChannelMessage) {
	var head struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(m.Data, &head) != nil {
		return
	}
	var ev ingest.Event
	switch head.Type {
	case "transcript":
		ev.Transcript = &proto.Transcript{}
		_ = json.Unmarshal(m.Data, ev.Transcript)
	case "finalised":
		ev.Finalised = &proto.Finalised{}
		_ = json.Unmarshal(m.Data, ev.Finalised)
	case "error":
		ev.Error = &proto.Error{}
		_ = json.Unmarshal(m.Data, ev.Error)
	default:
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.evClose {
		select {
		case c.events <- ev:
		default:
			c.cfg.Logger.Warn("whip client: event dropped: reader too slow")
		}
	}
}

func (c *Client) closeEvents() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.evClose {
		c.evClose = true
		close(c.events)
	}
}

// Send sends one packet of channel ch holding samples samples (at the RTP
// clock rate).
func (c *Client) Send(ch int, payload []byte, samples uint32) error {
	return c.send(ch, payload, samples, func(p *rtp.Packet) []*rtp.Packet { return []*rtp.Packet{p} })
}

// Drop numbers the next packet of channel ch and does not send it: a packet
// lost in the network, for tests and the load generator.
func (c *Client) Drop(ch int, samples uint32) {
	_ = c.send(ch, nil, samples, func(*rtp.Packet) []*rtp.Packet { return nil })
}

// send numbers the next packet, and writes what net makes of it (tests
// drop and reorder packets with it).
func (c *Client) send(ch int, payload []byte, samples uint32, net func(*rtp.Packet) []*rtp.Packet) error {
	c.mu.Lock()
	p := &rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: c.seq[ch], Timestamp: c.ts[ch], Marker: c.sent[ch] == 0}, Payload: payload}
	c.seq[ch]++
	c.ts[ch] += samples
	c.sent[ch]++
	c.mu.Unlock()
	for _, q := range net(p) {
		if err := c.tracks[ch].WriteRTP(q); err != nil {
			return err
		}
	}
	return nil
}

// End tells the coordinator the console has sent everything.
func (c *Client) End() error {
	c.mu.Lock()
	b, _ := json.Marshal(dcMessage{Type: "end", Packets: append([]uint64(nil), c.sent...)})
	c.mu.Unlock()
	return c.dc.SendText(string(b))
}

// Close deletes the WHIP session and closes the connection.
func (c *Client) Close(ctx context.Context) error {
	var err error
	if c.session != "" {
		req, rerr := http.NewRequestWithContext(ctx, http.MethodDelete, c.session, nil)
		if rerr == nil {
			req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
			res, derr := c.http.Do(req)
			if derr == nil {
				res.Body.Close()
				if res.StatusCode != http.StatusOK && res.StatusCode != http.StatusNotFound {
					err = fmt.Errorf("whip: DELETE: %s", res.Status)
				}
			}
		}
	}
	_ = c.pc.Close()
	c.closeEvents()
	return err
}
