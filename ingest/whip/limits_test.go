package whip

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callscribe/callscribe/proto"
	"github.com/pion/webrtc/v4"
)

// syncBuffer collects a test server's log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) count(substr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), substr)
}

func logInto(b *syncBuffer) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// httpFrom is an HTTP client whose connections come from the loopback
// address local (Linux answers for all of 127.0.0.0/8): another console.
func httpFrom(local string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 16}}
}

// postFrom posts an offer for call-1 with client c.
func postFrom(c *http.Client, url, body string) (*http.Response, string, error) {
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/whip/call-1", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/sdp")
	res, err := c.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b), nil
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sessionAt is the session a Location names (nil once it is gone).
func sessionAt(srv *Server, loc string) *session {
	_, id, _ := strings.Cut(loc, "/v1/whip/sessions/")
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return srv.sessions[id]
}

// remoteCandidates lists the remote candidates pion's ICE agent has.
func remoteCandidates(x *session) []string {
	var out []string
	for _, st := range x.pc.GetStats() {
		if c, ok := st.(webrtc.ICECandidateStats); ok && c.Type == webrtc.StatsTypeRemoteCandidate {
			out = append(out, net.JoinHostPort(c.IP, fmt.Sprint(c.Port)))
		}
	}
	return out
}

func sinkCount(sink *fakeSink, f func(*fakeSink) int) int {
	sink.mu.Lock()
	defer sink.mu.Unlock()
	return f(sink)
}

func TestOfferCandidatesAreCheckedBeforeAnythingOpens(t *testing.T) {
	sink := newFakeSink()
	_, url := newTestServer(t, sink, nil)
	cands := func(n int, addr func(i int) string) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "a=candidate:%d 1 udp 2130706431 %s %d typ host\r\n", i, addr(i), 40000+i%1000)
		}
		return b.String()
	}
	private := func(i int) string { return fmt.Sprintf("10.%d.%d.%d", i/65536%256, i/256%256, i%256+1) }
	noTrickle := strings.Replace(goodOffer, "a=ice-options:trickle\r\n", "", 1)
	for _, c := range []struct {
		name, body string
		code       int
		msg        string
	}{
		{"700 candidates", goodOffer + cands(700, private), 400, "700 ICE candidates: at most 20"},
		{"21 candidates", goodOffer + cands(21, func(i int) string { return fmt.Sprintf("127.0.0.%d", i+1) }), 400, "21 ICE candidates: at most 20"},
		{"malformed candidate", goodOffer + "a=candidate:1 1 udp 2130706431 127.0.0.1 99999 typ host\r\n", 400, "bad ICE candidate in the offer: line 15: port \"99999\" is not a number"},
		{"unknown candidate type", goodOffer + "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ lan\r\n", 400, "candidate type \"lan\""},
		{"only refused candidates, no trickle", noTrickle + cands(3, private), 400, "no usable ICE candidate in the offer, and it does not announce trickle ICE (a=ice-options:trickle): 3 refused, e.g. udp host 10.0.0.1:40000: outside the allowed networks"},
		{"no candidates, no trickle", noTrickle, 400, "no usable ICE candidate"},
		{"mDNS only, no trickle", noTrickle + "a=candidate:1 1 udp 2130706431 0b6a2c2e-5e7d-4c53-9d59-7e1ea4b8f3a1.local 9 typ host\r\n", 400, "mDNS"},
	} {
		code, msg := post(t, url, token, "application/sdp", c.body)
		if code != c.code || !strings.Contains(msg, c.msg) {
			t.Errorf("%s: %d %q, want %d with %q", c.name, code, msg, c.code, c.msg)
		}
	}
	if n := sinkCount(sink, func(f *fakeSink) int { return len(f.hellos) }); n != 0 {
		t.Fatalf("%d refused offers reached the sink", n)
	}
	// The same candidate twice (as in every m= section of a bundled
	// offer) counts once: 20 distinct candidates twice over are allowed.
	twenty := cands(20, func(i int) string { return fmt.Sprintf("127.0.0.%d", i+1) })
	if code, msg := post(t, url, token, "application/sdp", goodOffer+twenty+twenty); code != 201 {
		t.Fatalf("20 candidates, each twice: %d %q", code, msg)
	}
}

// An offer's candidates at addresses outside the allowed networks (and
// mDNS and TCP ones) are gone from the description pion gets; the client's
// loopback candidates still connect, and the call streams.
func TestDisallowedOfferCandidatesNeverReachPion(t *testing.T) {
	sink := newFakeSink()
	logs := &syncBuffer{}
	srv, url := newTestServer(t, sink, func(c *Config) { c.Log = logInto(logs) })
	const bad = 7
	extra := "a=candidate:901 1 udp 2122260223 10.1.2.3 50001 typ host generation 0\r\n" +
		"a=candidate:902 1 udp 2122260223 192.168.7.7 50002 typ host\r\n" +
		"a=candidate:903 1 udp 1686052607 203.0.113.5 50003 typ srflx raddr 192.168.7.7 rport 50002\r\n" +
		"a=candidate:904 1 udp 2122260223 2001:db8::7 50004 typ host\r\n" +
		"a=candidate:905 1 udp 2122260223 5c4ed1a4-1c1e-4b8e-8e57-6b0b5a1e2f3c.local 50005 typ host\r\n" +
		"a=candidate:906 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active\r\n" +
		"a=candidate:907 1 udp 16777215 198.51.100.7 50007 typ relay raddr 10.1.2.3 rport 1\r\n"
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var offered string
	c, err := Dial(ctx, ClientConfig{Server: url, Token: token, CallID: "call-1", ConsoleID: "c1", Channels: []string{"caller"}, Codec: proto.CodecPCMU, gatherIP: net.IP.IsLoopback,
		mungeOffer: func(sdp string) string {
			// In the first (bundle) section, where pion takes candidates from.
			i := strings.Index(sdp, "a=candidate:")
			if i < 0 {
				t.Errorf("the client's offer has no candidate:\n%s", sdp)
				return sdp
			}
			offered = sdp[:i] + extra + sdp[i:]
			return offered
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	x := sessionAt(srv, c.session)
	if x == nil {
		t.Fatal("no session")
	}
	rd := x.pc.RemoteDescription().SDP
	for _, a := range []string{"10.1.2.3", "192.168.7.7", "203.0.113.5", "2001:db8::7", ".local", " tcp ", "198.51.100.7"} {
		if !strings.Contains(offered, a) {
			t.Fatalf("the test offer lacks %q", a)
		}
		if strings.Contains(rd, a) {
			t.Errorf("the remote description pion got has %q:\n%s", a, rd)
		}
	}
	if !strings.Contains(rd, " 127.0.0.1 ") {
		t.Errorf("the client's loopback candidate is gone:\n%s", rd)
	}
	for _, rc := range remoteCandidates(x) {
		ap, err := netip.ParseAddrPort(rc)
		if err != nil || !ap.Addr().IsLoopback() {
			t.Errorf("pion has remote candidate %s", rc)
		}
	}
	for i := range 20 {
		if err := c.Send(0, []byte{byte(i)}, 160); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "20 frames stored", 10*time.Second, func() bool { return sinkCount(sink, func(f *fakeSink) int { return len(f.frames[0]) }) == 20 })
	x.mu.Lock()
	dropped := x.dropped
	x.mu.Unlock()
	// The seven above, and the client's own candidates on other interfaces.
	if dropped < bad {
		t.Errorf("%d candidates counted as dropped, want at least %d", dropped, bad)
	}
	if n := logs.count("remote ICE candidates of the offer dropped"); n != 1 {
		t.Errorf("%d log lines about dropped candidates, want 1", n)
	}
}

// Trickled candidates (PATCH) are filtered the same way and count against
// MaxCandidates with the offer's; a PATCH over the limit is refused whole.
func TestTrickledCandidatesAreFilteredAndLimited(t *testing.T) {
	sink := newFakeSink()
	logs := &syncBuffer{}
	srv, url := newTestServer(t, sink, func(c *Config) { c.MaxCandidates, c.Log = 5, logInto(logs) })
	res, _, err := postFrom(http.DefaultClient, url, goodOffer)
	if err != nil || res.StatusCode != 201 {
		t.Fatalf("offer: %v %v", res, err)
	}
	loc := res.Header.Get("Location")
	x := sessionAt(srv, loc)
	cand := func(foundation int, addr string, port int) string {
		return fmt.Sprintf("a=candidate:%d 1 udp 2130706431 %s %d typ host\r\n", foundation, addr, port)
	}
	state := func() (int, int) {
		x.mu.Lock()
		defer x.mu.Unlock()
		return len(x.seen), x.dropped
	}
	frag := cand(1, "10.1.2.3", 40000) + cand(2, "127.0.0.1", 40000) + cand(3, "abcd.local", 40000) + "a=mid:0\r\n"
	if res, body := patch(t, url, loc, "", frag); res.StatusCode != http.StatusNoContent {
		t.Fatalf("trickle: %d %q", res.StatusCode, body)
	}
	if seen, dropped := state(); seen != 3 || dropped != 2 {
		t.Fatalf("after the first trickle: %d candidates, %d dropped; want 3 and 2", seen, dropped)
	}
	waitFor(t, "pion has the allowed candidate", 5*time.Second, func() bool {
		return strings.Contains(strings.Join(remoteCandidates(x), " "), "127.0.0.1:40000")
	})
	// Over the limit (3 + 3 > 5): refused, nothing of it used.
	frag = cand(4, "127.0.0.1", 40001) + cand(5, "127.0.0.1", 40002) + cand(6, "127.0.0.1", 40003) + "a=mid:0\r\n"
	if res, body := patch(t, url, loc, "", frag); res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(body, "at most 5") {
		t.Fatalf("trickle over the limit: %d %q", res.StatusCode, body)
	}
	// A candidate again counts for nothing: 3 + 1 new.
	frag = cand(2, "127.0.0.1", 40000) + cand(4, "127.0.0.1", 40001) + "a=mid:0\r\n"
	if res, body := patch(t, url, loc, "", frag); res.StatusCode != http.StatusNoContent {
		t.Fatalf("trickle within the limit: %d %q", res.StatusCode, body)
	}
	if res, body := patch(t, url, loc, "", "a=candidate:1 1 udp 1 127.0.0.1 9 typ host extra\r\n"); res.StatusCode != http.StatusBadRequest || !strings.Contains(body, "has no value") {
		t.Fatalf("malformed trickle: %d %q", res.StatusCode, body)
	}
	time.Sleep(100 * time.Millisecond) // pion adds candidates asynchronously
	got := strings.Join(remoteCandidates(x), " ")
	for _, a := range []string{"10.1.2.3", "local", ":40002", ":40003"} {
		if strings.Contains(got, a) {
			t.Errorf("pion has a refused candidate %q: %s", a, got)
		}
	}
	if !strings.Contains(got, "127.0.0.1:40001") {
		t.Errorf("pion lacks 127.0.0.1:40001: %s", got)
	}
	// An ICE restart's candidates: filtered, and counted (4 + 1 = 5).
	restart := "a=ice-ufrag:newufrag1\r\na=ice-pwd:newpasswordnewpassword12\r\na=mid:0\r\n" + cand(7, "192.168.7.7", 40000)
	if res, body := patch(t, url, loc, "*", restart); res.StatusCode != http.StatusOK {
		t.Fatalf("ICE restart: %d %q", res.StatusCode, body)
	}
	if seen, dropped := state(); seen != 5 || dropped != 3 {
		t.Fatalf("after the restart: %d candidates, %d dropped; want 5 and 3", seen, dropped)
	}
	if res, body := patch(t, url, loc, "", cand(8, "127.0.0.1", 40009)); res.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("a sixth candidate: %d %q", res.StatusCode, body)
	}
	if n := logs.count("trickled remote ICE candidates dropped"); n != 1 {
		t.Errorf("%d log lines about dropped trickled candidates, want 1", n)
	}
}

// A session that never connects is closed after ConnectTimeout, with its
// ingest session, whether it has no candidate at all (trickle announced,
// none ever sent) or candidates that never answer.
func TestSessionThatNeverConnectsIsClosed(t *testing.T) {
	silent, err := net.ListenPacket("udp4", "127.0.0.1:0") // takes connectivity checks, answers none
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var checks atomic.Int64
	go func() {
		b := make([]byte, 1500)
		for {
			if _, _, err := silent.ReadFrom(b); err != nil {
				return
			}
			checks.Add(1)
		}
	}()
	port := silent.LocalAddr().(*net.UDPAddr).Port
	for _, c := range []struct{ name, offer string }{
		{"no candidates", goodOffer},
		{"a candidate that never answers", strings.Replace(goodOffer, "a=ice-options:trickle\r\n", "", 1) + fmt.Sprintf("a=candidate:1 1 udp 2130706431 127.0.0.1 %d typ host\r\n", port)},
	} {
		t.Run(c.name, func(t *testing.T) {
			sink := newFakeSink()
			logs := &syncBuffer{}
			const timeout = time.Second
			srv, url := newTestServer(t, sink, func(c *Config) { c.ConnectTimeout, c.Log = timeout, logInto(logs) })
			start := time.Now()
			res, body, err := postFrom(http.DefaultClient, url, c.offer)
			if err != nil || res.StatusCode != 201 {
				t.Fatalf("offer: %v %q %v", res, body, err)
			}
			if srv.Sessions() != 1 || sinkCount(sink, func(f *fakeSink) int { return f.closed }) != 0 {
				t.Fatal("no session open after the answer")
			}
			waitFor(t, "the session closed", timeout+2*time.Second, func() bool { return srv.Sessions() == 0 })
			lasted := time.Since(start)
			if lasted < timeout-50*time.Millisecond {
				t.Errorf("closed after %s, before ConnectTimeout", lasted)
			}
			if n := sinkCount(sink, func(f *fakeSink) int { return f.closed }); n != 1 {
				t.Errorf("%d ingest sessions closed, want 1", n)
			}
			srv.mu.Lock()
			pending, all := len(srv.pending), srv.pendAll
			srv.mu.Unlock()
			if pending != 0 || all != 0 {
				t.Errorf("pending counts left: %d addresses, %d sessions", pending, all)
			}
			waitFor(t, "the close logged", time.Second, func() bool { return logs.count("never connected") > 0 })
			time.Sleep(100 * time.Millisecond)
			if n := logs.count("never connected"); n != 1 {
				t.Errorf("%d log lines say never connected, want 1", n)
			}
			t.Logf("closed %s after the offer", lasted.Round(time.Millisecond))
		})
	}
	if checks.Load() == 0 {
		t.Error("pion sent no connectivity check to the allowed candidate")
	}
}

// A connected session whose track goes silent for IdleTimeout is closed
// (the server's keep-alives do not count); one that keeps sending is not.
func TestSilentSessionIsClosed(t *testing.T) {
	sink := newFakeSink()
	logs := &syncBuffer{}
	const idle = time.Second
	srv, url := newTestServer(t, sink, func(c *Config) { c.IdleTimeout, c.Log = idle, logInto(logs) })
	talker := dial(t, url, proto.CodecPCMU, "caller")
	mute := dial(t, url, proto.CodecPCMU, "caller") // connects, never sends
	start := time.Now()
	if srv.Sessions() != 2 {
		t.Fatalf("%d sessions", srv.Sessions())
	}
	// Sending for longer than IdleTimeout keeps the talker's session.
	for i := 0; time.Since(start) < 2*idle; i++ {
		if err := talker.Send(0, []byte{byte(i)}, 160); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if sessionAt(srv, talker.session) == nil {
		t.Fatal("the session that sends audio was closed")
	}
	if sessionAt(srv, mute.session) != nil {
		t.Fatal("the session that never sent audio is still open after IdleTimeout")
	}
	stopped := time.Now()
	waitFor(t, "the silent session closed", idle+2*time.Second, func() bool { return srv.Sessions() == 0 })
	lasted := time.Since(stopped)
	if lasted < idle-300*time.Millisecond {
		t.Errorf("closed %s after the last packet, before IdleTimeout", lasted)
	}
	if n := sinkCount(sink, func(f *fakeSink) int { return f.closed }); n != 2 {
		t.Errorf("%d ingest sessions closed, want 2", n)
	}
	if n := logs.count("no audio for 1s"); n != 2 {
		t.Errorf("%d log lines say no audio, want 2", n)
	}
	select {
	case _, ok := <-talker.Events():
		for ok {
			_, ok = <-talker.Events()
		}
	case <-time.After(10 * time.Second):
		t.Error("the console's connection stayed open")
	}
	t.Logf("the silent session closed %s after its last packet", lasted.Round(time.Millisecond))
}

// Live calls come first: a connected session does not count against the
// pending limits; offers over them get 503 with Retry-After, per address
// and over all addresses.
func TestPendingLimits(t *testing.T) {
	sink := newFakeSink()
	const timeout = time.Second
	srv, url := newTestServer(t, sink, func(c *Config) { c.MaxPendingPerRemote, c.MaxPending, c.ConnectTimeout = 2, 3, timeout })
	live := dial(t, url, proto.CodecPCMU, "caller") // from 127.0.0.1, connected
	one, two := httpFrom("127.0.0.1"), httpFrom("127.0.0.2")
	expect := func(c *http.Client, code int, msg string) {
		t.Helper()
		res, body, err := postFrom(c, url, goodOffer)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != code || !strings.Contains(body, msg) {
			t.Fatalf("offer: %d %q, want %d with %q", res.StatusCode, body, code, msg)
		}
		if code == 503 && res.Header.Get("Retry-After") == "" {
			t.Fatal("503 without Retry-After")
		}
	}
	expect(one, 201, "")
	expect(one, 201, "")
	expect(one, 503, "2 WebRTC sessions from 127.0.0.1 are still being set up")
	expect(two, 201, "")
	expect(two, 503, "3 WebRTC sessions are still being set up")
	for i := range 10 {
		if err := live.Send(0, []byte{byte(i)}, 160); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the live call's frames", 5*time.Second, func() bool { return sinkCount(sink, func(f *fakeSink) int { return len(f.frames[0]) }) == 10 })
	waitFor(t, "the pending sessions gone", timeout+2*time.Second, func() bool { return srv.Sessions() == 1 })
	expect(one, 201, "")
	expect(one, 201, "")
}

// A bounded flood of offers that never connect, from one address: beyond
// MaxPendingPerRemote they get 503 with Retry-After, the server never holds
// more, every flood session is gone ConnectTimeout after its answer, and a
// call started during the flood (from another address) connects and streams.
func TestOfferFloodClearsWithinConnectTimeout(t *testing.T) {
	sink := newFakeSink()
	const (
		timeout  = time.Second
		perIP    = 16
		offers   = 300
		floodFor = 2 * time.Second
		workers  = 6
		pace     = workers * floodFor / offers // 300 offers in about 2 s
	)
	logs := &syncBuffer{}
	srv, url := newTestServer(t, sink, func(c *Config) { c.MaxPendingPerRemote, c.ConnectTimeout, c.Log = perIP, timeout, logInto(logs) })
	flood := httpFrom("127.0.0.2")
	floodIP := netip.MustParseAddr("127.0.0.2")

	var mu sync.Mutex
	born := map[string]time.Time{} // flood session id → answered
	dead := map[string]time.Time{} // → seen gone
	var n201, n503, noRetryAfter, sent atomic.Int64
	var maxPending, maxSessions atomic.Int64
	stopWatch := make(chan struct{})
	watched := make(chan struct{})
	go func() { // samples the server's state every 5 ms
		defer close(watched)
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(5 * time.Millisecond):
			}
			now := time.Now()
			srv.mu.Lock()
			p, n := srv.pending[floodIP], len(srv.sessions)
			mu.Lock()
			for id := range born {
				if _, ok := srv.sessions[id]; !ok && dead[id].IsZero() {
					dead[id] = now
				}
			}
			mu.Unlock()
			srv.mu.Unlock()
			if int64(p) > maxPending.Load() {
				maxPending.Store(int64(p))
			}
			if int64(n) > maxSessions.Load() {
				maxSessions.Store(int64(n))
			}
		}
	}()

	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < floodFor && sent.Add(1) <= offers {
				res, _, err := postFrom(flood, url, goodOffer)
				if err != nil {
					t.Errorf("flood offer: %v", err)
					return
				}
				switch res.StatusCode {
				case 201:
					n201.Add(1)
					_, id, _ := strings.Cut(res.Header.Get("Location"), "/v1/whip/sessions/")
					mu.Lock()
					born[id] = time.Now()
					mu.Unlock()
				case 503:
					n503.Add(1)
					if res.Header.Get("Retry-After") == "" {
						noRetryAfter.Add(1)
					}
				default:
					t.Errorf("flood offer: %s", res.Status)
				}
				time.Sleep(pace)
			}
		}()
	}

	// A real call during the flood, from 127.0.0.1: it retries a 503 as a
	// console does.
	time.Sleep(300 * time.Millisecond)
	var c *Client
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var err error
		c, err = Dial(ctx, ClientConfig{Server: url, Token: token, CallID: "real", ConsoleID: "c1", Channels: []string{"caller"}, Codec: proto.CodecPCMU, gatherIP: net.IP.IsLoopback})
		cancel()
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "503") || attempt == 20 {
			t.Fatalf("the real call: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	connectedDuringFlood := time.Since(start) < floodFor
	for i := range 25 {
		if err := c.Send(0, []byte{byte(i)}, 160); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	wg.Wait()
	floodEnd := time.Now()
	waitFor(t, "the real call's frames", 5*time.Second, func() bool { return sinkCount(sink, func(f *fakeSink) int { return len(f.frames[0]) }) == 25 })
	waitFor(t, "the flood sessions gone", timeout+3*time.Second, func() bool { return srv.Sessions() == 1 })
	cleared := time.Since(floodEnd)
	time.Sleep(20 * time.Millisecond)
	close(stopWatch)
	<-watched

	if n503.Load() == 0 || noRetryAfter.Load() != 0 {
		t.Errorf("%d offers refused with 503, %d of them without Retry-After", n503.Load(), noRetryAfter.Load())
	}
	if p := maxPending.Load(); p > perIP {
		t.Errorf("the flood's address had %d sessions pending, over the limit of %d", p, perIP)
	}
	if n := maxSessions.Load(); n > perIP+1 {
		t.Errorf("the server held %d sessions, over %d pending and 1 live", n, perIP)
	}
	mu.Lock()
	var longest time.Duration
	for id, b := range born {
		d := dead[id]
		if d.IsZero() {
			t.Errorf("flood session %s not seen closed", id)
			continue
		}
		longest = max(longest, d.Sub(b))
	}
	mu.Unlock()
	if longest > timeout+time.Second {
		t.Errorf("a flood session lived %s, over ConnectTimeout %s and 1 s", longest, timeout)
	}
	// 503s are logged once a second at most.
	if n := logs.count("status=503"); n < 1 || n > int(floodEnd.Sub(start)/time.Second)+2 {
		t.Errorf("%d log lines for %d refusals", n, n503.Load())
	}
	if n := sinkCount(sink, func(f *fakeSink) int { return f.closed }); int64(n) != n201.Load() {
		t.Errorf("%d ingest sessions closed, want the %d of the flood", n, n201.Load())
	}
	srv.mu.Lock()
	left := srv.pendAll
	srv.mu.Unlock()
	if left != 0 {
		t.Errorf("%d sessions still counted as pending", left)
	}
	t.Logf("flood: %d offers in %s: %d answered, %d refused (503); at most %d pending from the address, %d sessions; longest flood session %s; all gone %s after the flood; real call connected during the flood: %v",
		n201.Load()+n503.Load(), floodEnd.Sub(start).Round(time.Millisecond), n201.Load(), n503.Load(), maxPending.Load(), maxSessions.Load(), longest.Round(time.Millisecond), cleared.Round(time.Millisecond), connectedDuringFlood)
}
