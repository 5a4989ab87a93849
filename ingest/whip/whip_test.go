package whip

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/proto"
	"github.com/pion/rtp"
)

// fakeSink records what a WHIP session stores (unit tests only: the e2e
// tests run the real coordinator).
type fakeSink struct {
	mu      sync.Mutex
	frames  map[uint8][]proto.Audio
	ends    []proto.End
	hellos  []proto.Hello
	openErr error
	block   chan struct{} // when set, Open waits on it
	events  chan ingest.Event
	closed  int // sessions closed
}

func newFakeSink() *fakeSink {
	return &fakeSink{frames: map[uint8][]proto.Audio{}, events: make(chan ingest.Event, 16)}
}

func (f *fakeSink) Open(ctx context.Context, h *proto.Hello) (ingest.Session, *proto.Welcome, error) {
	f.mu.Lock()
	b := f.block
	f.mu.Unlock()
	if b != nil {
		<-b
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.openErr != nil {
		return nil, nil, f.openErr
	}
	f.hellos = append(f.hellos, *h)
	return &fakeSession{f: f}, &proto.Welcome{Version: proto.Version, CallID: h.CallID, NextSeq: make([]uint32, len(h.Channels))}, nil
}

type fakeSession struct {
	f    *fakeSink
	once sync.Once
}

func (s *fakeSession) Append(ctx context.Context, a proto.Audio) (proto.Ack, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	want := uint32(len(s.f.frames[a.Channel]))
	if a.Seq != want {
		return proto.Ack{}, &proto.Error{Code: proto.CodeOutOfOrder, Message: fmt.Sprintf("frame %d, want %d", a.Seq, want)}
	}
	a.Payload = append([]byte(nil), a.Payload...)
	s.f.frames[a.Channel] = append(s.f.frames[a.Channel], a)
	return proto.Ack{Channel: a.Channel, NextSeq: a.Seq + 1}, nil
}

func (s *fakeSession) End(ctx context.Context, e proto.End) error {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.ends = append(s.f.ends, e)
	return nil
}

func (s *fakeSession) Events() <-chan ingest.Event { return s.f.events }
func (s *fakeSession) Close() {
	s.once.Do(func() {
		s.f.mu.Lock()
		s.f.closed++
		s.f.mu.Unlock()
	})
}

const token = "console-token"

func newTestServer(t *testing.T, sink *fakeSink, tweak func(*Config)) (*Server, string) {
	t.Helper()
	// Tests use loopback only: no candidate elsewhere reaches pion.
	cfg := Config{Sink: sink, Auth: testAuth(token), Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Loopback: true, EndQuiet: 50 * time.Millisecond,
		AllowedNetworks: loopbackNetworks, gatherIP: net.IP.IsLoopback}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	s.Register(mux)
	hs := httptest.NewServer(mux)
	t.Cleanup(func() {
		s.Close()
		hs.Close()
	})
	return s, hs.URL
}

func dial(t *testing.T, url string, codec proto.Codec, channels ...string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := Dial(ctx, ClientConfig{Server: url, Token: token, CallID: "call-1", ConsoleID: "c1", Channels: channels, Codec: codec, gatherIP: net.IP.IsLoopback})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// TestPacketsBecomeOrderedFramesWithLossMarkers sends real RTP with packets
// swapped and dropped: the sink must get every packet in order, a loss
// marker for each dropped one, and an end at the right count.
func TestPacketsBecomeOrderedFramesWithLossMarkers(t *testing.T) {
	sink := newFakeSink()
	_, url := newTestServer(t, sink, nil)
	c := dial(t, url, proto.CodecPCMU, "caller", "call-taker")
	const n = 60
	drop := map[int]bool{7: true, 20: true, 21: true, 40: true}
	var held *rtp.Packet
	for i := range n {
		payload := []byte(fmt.Sprintf("pkt-%03d", i))
		for ch := range 2 {
			err := c.send(ch, payload, 160, func(p *rtp.Packet) []*rtp.Packet {
				switch {
				case ch == 0 && drop[i]:
					return nil
				case ch == 1 && i%10 == 3: // hold it back: sent after the next
					held = p
					return nil
				case ch == 1 && held != nil:
					out := []*rtp.Packet{p, held}
					held = nil
					return out
				}
				return []*rtp.Packet{p}
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := c.End(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		sink.mu.Lock()
		done := len(sink.ends) == 1
		sink.mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no end reached the sink")
		}
		time.Sleep(10 * time.Millisecond)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if fmt.Sprint(sink.ends[0].Frames) != fmt.Sprint([]uint32{n, n}) {
		t.Fatalf("end frames %v, want [%d %d]", sink.ends[0].Frames, n, n)
	}
	for ch := range uint8(2) {
		fs := sink.frames[ch]
		if len(fs) != n {
			t.Fatalf("channel %d: %d frames, want %d", ch, len(fs), n)
		}
		for i, f := range fs {
			want := fmt.Sprintf("pkt-%03d", i)
			if ch == 0 && drop[i] {
				want = ""
			}
			if string(f.Payload) != want || f.Seq != uint32(i) {
				t.Errorf("channel %d frame %d: seq %d payload %q, want %q", ch, i, f.Seq, f.Payload, want)
			}
		}
	}
	if h := sink.hellos[0]; h.Codec != proto.CodecPCMU || fmt.Sprint(h.Channels) != "[caller call-taker]" || h.ConsoleID != "c1" || h.Principal.Name != "c1" {
		t.Errorf("hello %+v", h)
	}
}

func TestEventsReachTheDataChannel(t *testing.T) {
	sink := newFakeSink()
	_, url := newTestServer(t, sink, nil)
	c := dial(t, url, proto.CodecOpus, "caller")
	sink.events <- ingest.Event{Transcript: &proto.Transcript{Kind: proto.KindFinal, Channel: 0, Label: "caller", Index: 0, Text: "help", EndMS: 500}}
	sink.events <- ingest.Event{Finalised: &proto.Finalised{CallID: "call-1", Finals: []uint32{1}}}
	select {
	case ev := <-c.Events():
		if ev.Transcript == nil || ev.Transcript.Text != "help" || ev.Transcript.EndMS != 500 {
			t.Fatalf("first event %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no transcript event")
	}
	select {
	case ev := <-c.Events():
		if ev.Finalised == nil || ev.Finalised.Finals[0] != 1 {
			t.Fatalf("second event %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no finalised event")
	}
}

// goodOffer has no candidate: it announces trickle ICE (a WHIP client
// that sends its candidates later), so it is answered, and never connects.
const goodOffer = sdpHead + "a=ice-options:trickle\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\na=rtcp-mux\r\n"

func post(t *testing.T, url, tok, ctype, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/whip/call-1", strings.NewReader(body))
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	req.Header.Set("Content-Type", ctype)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func TestBadRequestsGetClearErrors(t *testing.T) {
	sink := newFakeSink()
	_, url := newTestServer(t, sink, nil)
	for _, c := range []struct {
		name, tok, ctype, body string
		code                   int
		msg                    string
	}{
		{"no token", "", "application/sdp", goodOffer, 401, "credential"},
		{"wrong token", "nope", "application/sdp", goodOffer, 401, "credential"},
		{"not SDP", token, "text/plain", goodOffer, 415, "application/sdp"},
		{"garbage SDP", token, "application/sdp", "hello there", 400, "does not parse"},
		{"no audio track", token, "application/sdp", sdpHead + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n", 400, "no audio track"},
		{"unsupported codec only", token, "application/sdp", strings.Replace(goodOffer, "SAVPF 0", "SAVPF 9\r\na=rtpmap:9 G722/8000", 1), 400, "no supported audio codec"},
		{"too large", token, "application/sdp", strings.Repeat("a", 70<<10), 413, "64 KiB"},
	} {
		code, msg := post(t, url, c.tok, c.ctype, c.body)
		if code != c.code || !strings.Contains(msg, c.msg) {
			t.Errorf("%s: %d %q, want %d with %q", c.name, code, msg, c.code, c.msg)
		}
	}
	sink.mu.Lock()
	sink.openErr = &proto.Error{Code: proto.CodeCallInUse, Message: "call call-1 belongs to console other"}
	sink.mu.Unlock()
	if code, msg := post(t, url, token, "application/sdp", goodOffer); code != 409 || !strings.Contains(msg, "belongs to") {
		t.Errorf("call in use: %d %q", code, msg)
	}
	for _, m := range []string{http.MethodDelete, http.MethodPatch} {
		req, _ := http.NewRequest(m, url+"/v1/whip/sessions/unknown", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/trickle-ice-sdpfrag")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 404 {
			t.Errorf("%s of an unknown session: %d, want 404", m, res.StatusCode)
		}
	}
	if len(sink.hellos) != 0 {
		t.Errorf("a refused offer reached the sink: %+v", sink.hellos)
	}
}

// TestFloodIsRefusedWithoutDisturbingALiveCall: offers beyond the
// negotiation and session limits get 503 with Retry-After while a call
// keeps streaming.
func TestFloodIsRefusedWithoutDisturbingALiveCall(t *testing.T) {
	sink := newFakeSink()
	srv, url := newTestServer(t, sink, func(c *Config) { c.MaxNegotiations, c.MaxSessions = 1, 2 })
	live := dial(t, url, proto.CodecPCMU, "caller")

	// One offer held inside the sink takes the only negotiation slot.
	block := make(chan struct{})
	sink.mu.Lock()
	sink.block = block
	sink.mu.Unlock()
	held := make(chan int, 1)
	go func() {
		code, _ := post(t, url, token, "application/sdp", goodOffer)
		held <- code
	}()
	for srv.negotiating() == 0 {
		time.Sleep(time.Millisecond)
	}
	for i := range 20 {
		if err := live.Send(0, []byte{byte(i)}, 160); err != nil {
			t.Fatal(err)
		}
		code, msg := post(t, url, token, "application/sdp", goodOffer)
		if code != 503 || !strings.Contains(msg, "too many offers") {
			t.Fatalf("flooding offer %d: %d %q", i, code, msg)
		}
	}
	sink.mu.Lock()
	sink.block = nil
	sink.mu.Unlock()
	close(block)
	if code := <-held; code != 201 {
		t.Fatalf("held offer: %d", code)
	}
	// Two sessions now: the limit.
	if code, msg := post(t, url, token, "application/sdp", goodOffer); code != 503 || !strings.Contains(msg, "maximum of 2") {
		t.Fatalf("over the session limit: %d %q", code, msg)
	}
	if err := live.End(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		sink.mu.Lock()
		n, ended := len(sink.frames[0]), len(sink.ends)
		sink.mu.Unlock()
		if ended == 1 {
			if n != 20 {
				t.Fatalf("the live call stored %d of its 20 packets", n)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the live call did not end")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func patch(t *testing.T, url, session, ifMatch, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPatch, url+session, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/trickle-ice-sdpfrag")
	if ifMatch != "" {
		req.Header.Set("If-Match", ifMatch)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

// PATCH restarts ICE (new credentials → 200, our new credentials and
// candidates, a new ETag) or takes trickled candidates (204).
func TestPatchRestartsICE(t *testing.T) {
	sink := newFakeSink()
	srv, url := newTestServer(t, sink, nil)
	c := dial(t, url, proto.CodecOpus, "caller")
	loc, _ := strings.CutPrefix(c.session, url)
	srv.mu.Lock()
	var x *session
	for _, s := range srv.sessions {
		x = s
	}
	srv.mu.Unlock()
	etag := x.etag()
	frag := "a=ice-ufrag:newufrag1\r\na=ice-pwd:newpasswordnewpassword12\r\na=mid:0\r\n"
	if res, body := patch(t, url, loc, `"wrong"`, frag); res.StatusCode != http.StatusPreconditionFailed {
		t.Fatalf("restart with a stale ETag: %d %q", res.StatusCode, body)
	}
	res, body := patch(t, url, loc, "*", frag)
	if res.StatusCode != http.StatusOK || !strings.Contains(body, "a=ice-ufrag:") || !strings.Contains(body, "a=candidate:") {
		t.Fatalf("ICE restart: %d %q", res.StatusCode, body)
	}
	if got := res.Header.Get("ETag"); got == "" || got == etag {
		t.Fatalf("ETag after a restart %q (was %q)", got, etag)
	}
	cand := "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\na=mid:0\r\n"
	if res, body := patch(t, url, loc, "", cand); res.StatusCode != http.StatusNoContent {
		t.Fatalf("trickle: %d %q", res.StatusCode, body)
	}
	if res, body := patch(t, url, loc, "", "a=candidate:garbage\r\n"); res.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad candidate: %d %q", res.StatusCode, body)
	}
}

// testAuth accepts one console token, as console "c1".
func testAuth(token string) ingest.Authenticator {
	return func(t string, _ *tls.ConnectionState, remote netip.Addr) (auth.Principal, error) {
		if t != token {
			return auth.Principal{}, auth.ErrInvalid
		}
		return auth.Principal{Name: "c1", Role: auth.Console, Remote: remote}, nil
	}
}
