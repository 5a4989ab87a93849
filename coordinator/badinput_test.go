package coordinator

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
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/ingest/whip"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

// The test coordinator's credentials: consoles a, b and c, a supervisor
// and an operator (testToken is console-a's).
const (
	testToken      = "console-token-0123456789"
	testTokenB     = "console-b-token-0123456789"
	testTokenC     = "console-c-token-0123456789"
	testSupervisor = "supervisor-token-0123456789"
	testOperator   = "operator-token-0123456789"
)

// consoleToken is the token of a test console (console-a, -b or -c).
var consoleToken = map[string]string{"console-a": testToken, "console-b": testTokenB, "console-c": testTokenC}

func testCredentials() []auth.Static {
	return []auth.Static{
		{Name: "console-a", Role: auth.Console, Token: testToken, Source: "config"},
		{Name: "console-b", Role: auth.Console, Token: testTokenB, Source: "config"},
		{Name: "console-c", Role: auth.Console, Token: testTokenC, Source: "config"},
		{Name: "sup", Role: auth.Supervisor, Token: testSupervisor, Source: "config"},
		{Name: "op", Role: auth.Operator, Token: testOperator, Source: "config"},
	}
}

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

type testCoord struct {
	stop func()
	c    *Coordinator
	pool *x509.CertPool
	logs *logBuf
	conn *quic.Conn
}

// startCoordinator runs an in-process coordinator with no workers: audio is
// stored and acked, nothing is decoded.
func startCoordinator(t *testing.T) *testCoord {
	return startCoordinatorWith(t, func(*Config) {})
}

func startCoordinatorWith(t *testing.T, tweak func(*Config)) *testCoord {
	t.Helper()
	dir := t.TempDir()
	ca, key, err := pki.EnsureCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.EnsureServerCert(dir, ca, key, []string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuf{}
	cfg := Config{DataDir: dir, QUICAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{cert}},
		Credentials: testCredentials(), NodeTokens: []string{"node-token-0123456789"}, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	tweak(&cfg)
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Serve(ctx); close(done) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	pool, _ := pki.CertPool(dir + "/" + pki.CAFile)
	tc := &testCoord{c: c, pool: pool, logs: logs, stop: stop}
	tc.conn = tc.dial(t, proto.ALPNConsole)
	return tc
}

func (tc *testCoord) dial(t *testing.T, alpn string) *quic.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, tc.c.QUICAddr().String(), &tls.Config{RootCAs: tc.pool, ServerName: "localhost", NextProtos: []string{alpn}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return conn
}

type rawStream struct {
	t  *testing.T
	st *quic.Stream
	r  *proto.Reader
	w  *proto.Writer
}

func (tc *testCoord) stream(t *testing.T) *rawStream {
	t.Helper()
	st, err := tc.conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	return &rawStream{t: t, st: st, r: proto.NewReader(st), w: proto.NewWriter(st)}
}

func hello(id string) proto.Hello {
	return proto.Hello{Version: proto.Version, Token: testToken, CallID: proto.CallID(id), ConsoleID: "console-a", Channels: []string{"caller"}, Codec: proto.CodecL16}
}

// open sends a hello and expects a welcome.
func (s *rawStream) open(h proto.Hello) proto.Welcome {
	s.t.Helper()
	if err := s.w.WriteJSON(proto.THello, h); err != nil {
		s.t.Fatal(err)
	}
	var w proto.Welcome
	if err := s.r.ReadJSON(proto.TWelcome, &w); err != nil {
		s.t.Fatalf("hello for %s: %v", h.CallID, err)
	}
	return w
}

func (s *rawStream) audio(ch uint8, seq uint32) {
	s.t.Helper()
	if _, err := s.w.WriteRaw(proto.AppendAudio(nil, proto.Audio{Channel: ch, Seq: seq, Capture: 1, Payload: make([]byte, 3200)})); err != nil {
		s.t.Fatal(err)
	}
}

// next reads the next message that is not a transcript event.
func (s *rawStream) next() proto.Msg {
	s.t.Helper()
	for {
		m, err := s.r.Read()
		if err != nil {
			s.t.Fatalf("read: %v", err)
		}
		if m.Type != proto.TTranscript {
			return proto.Msg{Type: m.Type, Body: append([]byte(nil), m.Body...)}
		}
	}
}

func (s *rawStream) expectAck(next uint32) {
	s.t.Helper()
	m := s.next()
	if m.Type != proto.TAck {
		s.t.Fatalf("want ack, got type %d %s", m.Type, m.Body)
	}
	a, _ := proto.ParseAck(m.Body)
	if a.NextSeq != next {
		s.t.Fatalf("ack %d, want %d", a.NextSeq, next)
	}
}

func (s *rawStream) expectError(code string) {
	s.t.Helper()
	m := s.next()
	var e proto.Error
	if m.Type != proto.TError || json.Unmarshal(m.Body, &e) != nil {
		s.t.Fatalf("want error %s, got type %d %s", code, m.Type, m.Body)
	}
	if e.Code != code || e.Message == "" || !e.Fatal {
		s.t.Fatalf("want fatal error %s with a message, got %+v", code, e)
	}
	// The stream is then closed by the coordinator.
	_, err := s.r.Read()
	if err == nil {
		s.t.Fatal("stream still open after a fatal error")
	}
}

// Every kind of bad input gets a clear error on its own stream and a log
// line, while a healthy call on the same connection carries on.
func TestBadInputIsConfinedToItsStream(t *testing.T) {
	tc := startCoordinator(t)
	good := tc.stream(t)
	good.open(hello("good-call"))
	seq := uint32(0)
	goodStillWorks := func() {
		t.Helper()
		good.audio(0, seq)
		seq++
		good.expectAck(seq)
	}
	goodStillWorks()

	cases := []struct {
		name string
		code string
		do   func(s *rawStream)
	}{
		{"wrong protocol version", proto.CodeBadVersion, func(s *rawStream) {
			h := hello("v-call")
			h.Version = 99
			s.w.WriteJSON(proto.THello, h)
		}},
		{"missing token", proto.CodeUnauthorized, func(s *rawStream) {
			h := hello("tok-call")
			h.Token = "wrong"
			s.w.WriteJSON(proto.THello, h)
		}},
		{"unknown codec", proto.CodeUnknownCodec, func(s *rawStream) {
			h := hello("codec-call")
			h.Codec = "speex"
			s.w.WriteJSON(proto.THello, h)
		}},
		{"unknown model", proto.CodeUnknownModel, func(s *rawStream) {
			h := hello("model-call")
			h.Model = "klingon"
			s.w.WriteJSON(proto.THello, h)
		}},
		{"three channels", proto.CodeBadRequest, func(s *rawStream) {
			h := hello("ch-call")
			h.Channels = []string{"a", "b", "c"}
			s.w.WriteJSON(proto.THello, h)
		}},
		{"audio before hello", proto.CodeBadRequest, func(s *rawStream) { s.audio(0, 0) }},
		{"garbage hello", proto.CodeBadRequest, func(s *rawStream) { s.w.Write(proto.THello, []byte("{not json")) }},
		{"out-of-order frame", proto.CodeOutOfOrder, func(s *rawStream) {
			s.open(hello("ooo-call"))
			s.audio(0, 0)
			s.expectAck(1)
			s.audio(0, 2)
		}},
		{"channel that does not exist", proto.CodeBadRequest, func(s *rawStream) {
			s.open(hello("chan-call"))
			s.audio(1, 0)
		}},
		{"oversized frame", proto.CodeBadRequest, func(s *rawStream) {
			s.open(hello("big-call"))
			s.st.Write([]byte{byte(proto.TAudio), 0x7f, 0, 0, 0})
		}},
		{"oversized audio payload", proto.CodeTooLarge, func(s *rawStream) {
			s.open(hello("big2-call"))
			s.w.WriteRaw(proto.AppendAudio(nil, proto.Audio{Payload: make([]byte, proto.MaxAudioPayload+1)}))
		}},
		{"unknown message type", proto.CodeBadRequest, func(s *rawStream) {
			s.open(hello("type-call"))
			s.st.Write([]byte{200, 0, 0, 0, 0})
		}},
		{"truncated frame", proto.CodeBadRequest, func(s *rawStream) {
			s.open(hello("trunc-call"))
			s.st.Write([]byte{byte(proto.TAudio), 0, 0, 0x0c, 0x80, 0, 0})
			s.st.Close() // end of stream in the middle of a frame
		}},
		{"end that misses frames", proto.CodeBadRequest, func(s *rawStream) {
			s.open(hello("end-call"))
			s.audio(0, 0)
			s.expectAck(1)
			s.w.WriteJSON(proto.TEnd, proto.End{Frames: []uint32{5}})
		}},
		{"second console claims a live call", proto.CodeForbidden, func(s *rawStream) {
			h := hello("good-call")
			h.Token = testTokenB
			s.w.WriteJSON(proto.THello, h)
		}},
	}
	for _, c := range cases {
		before := len(tc.logs.String())
		s := tc.stream(t)
		c.do(s)
		s.expectError(c.code)
		if !strings.Contains(tc.logs.String()[before:], "level=WARN") {
			t.Errorf("%s: no warning logged", c.name)
		}
		goodStillWorks()
	}
}

// A resent frame is acknowledged again but stored once; a reconnect
// resumes from the coordinator's NextSeq.
func TestDuplicatesAndResume(t *testing.T) {
	tc := startCoordinator(t)
	s := tc.stream(t)
	w := s.open(hello("dup-call"))
	if w.Resumed || w.NextSeq[0] != 0 {
		t.Fatalf("new call welcome %+v", w)
	}
	for i := range uint32(3) {
		s.audio(0, i)
		s.expectAck(i + 1)
	}
	s.audio(0, 1) // a duplicate
	s.expectAck(3)
	// The console reconnects (same console id): the old stream is replaced.
	s2 := tc.stream(t)
	w = s2.open(hello("dup-call"))
	if !w.Resumed || w.NextSeq[0] != 3 {
		t.Fatalf("resume welcome %+v", w)
	}
	// The replaced stream is no longer read (its write may already fail).
	_, _ = s.w.WriteRaw(proto.AppendAudio(nil, proto.Audio{Channel: 0, Seq: 3, Capture: 1, Payload: make([]byte, 3200)}))
	if m, err := s.r.Read(); err == nil && m.Type == proto.TAck {
		t.Fatal("replaced stream still accepted audio")
	}
	s2.audio(0, 3)
	s2.expectAck(4)
	if n, _ := tc.c.store.CountFrames("dup-call", 0); n != 4 {
		t.Fatalf("%d frames stored, want 4", n)
	}
}

// Node connections need the node token; a console token is not enough.
func TestNodeNeedsNodeToken(t *testing.T) {
	tc := startCoordinator(t)
	conn := tc.dial(t, proto.ALPNNode)
	st, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	w, r := proto.NewWriter(st), proto.NewReader(st)
	w.WriteJSON(proto.TAgentHello, proto.AgentHello{Version: proto.Version, Token: testToken, NodeID: "n1"})
	var wel proto.AgentWelcome
	err = r.ReadJSON(proto.TAgentWelcome, &wel)
	var pe *proto.Error
	if !errors.As(err, &pe) || pe.Code != proto.CodeUnauthorized {
		t.Fatalf("agent with a console token: %v", err)
	}
	if _, err := r.Read(); err == nil {
		t.Fatal("stream open after refusal")
	}
}

// A console that disappears mid-call: after AbandonAfter the coordinator
// ends the call itself with every frame it received, so the call is
// finalised and its workers freed.
func TestAbandonedCallIsEnded(t *testing.T) {
	tc := startCoordinatorWith(t, func(c *Config) { c.AbandonAfter = 300 * time.Millisecond })
	s := tc.stream(t)
	s.open(hello("gone-call"))
	for i := range uint32(5) {
		s.audio(0, i)
		s.expectAck(i + 1)
	}
	tc.conn.CloseWithError(0, "console crashed")
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, err := tc.c.store.Call("gone-call")
		if err == nil && rec.State == "ended" {
			if rec.EndFrames[0] != 5 || rec.EndReason == "" {
				t.Fatalf("ended with %+v", rec)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("call not ended: %+v %v", rec, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The end is made durable first, then logged: wait for the line.
	for !strings.Contains(tc.logs.String(), "abandoned") {
		if time.Now().After(deadline) {
			t.Fatal("no log line for the abandoned call")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// /metrics serves the frame accounting and call states in Prometheus form.
func TestMetricsEndpoint(t *testing.T) {
	tc := startCoordinator(t)
	s := tc.stream(t)
	s.open(hello("metrics-call"))
	for i := range uint32(4) {
		s.audio(0, i)
		s.expectAck(i + 1)
	}
	s.audio(0, 2) // a resend
	s.expectAck(4)
	req, _ := http.NewRequest(http.MethodGet, "http://"+tc.c.HTTPAddr().String()+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testOperator)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	body := string(b)
	for _, want := range []string{
		"callscribe_frames_received_total 5",
		"callscribe_frames_stored_total 4",
		"callscribe_frames_duplicate_total 1",
		`callscribe_calls{state="streaming"} 1`,
		"callscribe_ack_latency_seconds_count 4",
		`callscribe_worker_slots{use="free"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	var writes float64
	for _, l := range strings.Split(body, "\n") {
		fmt.Sscanf(l, "callscribe_store_commit_writes_sum %g", &writes)
	}
	if writes < 4 || !strings.Contains(body, "callscribe_store_commit_seconds_count ") {
		t.Errorf("store commits not accounted: %g writes (want ≥ 4 frames)", writes)
	}
}

// With NodeCAs set the node plane is mutual TLS: no certificate, or one from
// another CA, is refused; a node certificate from our CA is welcome.
func TestNodeMutualTLS(t *testing.T) {
	var caDir string
	tc := startCoordinatorWith(t, func(c *Config) {
		caDir = c.DataDir
		pool, _ := pki.CertPool(caDir + "/" + pki.CAFile)
		c.NodeCAs = pool
	})
	hello := func(cert *tls.Certificate) error {
		cfg := &tls.Config{RootCAs: tc.pool, ServerName: "localhost", NextProtos: []string{proto.ALPNNode}}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := quic.DialAddr(ctx, tc.c.QUICAddr().String(), cfg, nil)
		if err != nil {
			return err
		}
		defer conn.CloseWithError(0, "")
		st, err := conn.OpenStreamSync(ctx)
		if err != nil {
			return err
		}
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		w, r := proto.NewWriter(st), proto.NewReader(st)
		w.WriteJSON(proto.TAgentHello, proto.AgentHello{Version: proto.Version, Token: "node-token-0123456789", NodeID: "n1"})
		var wel proto.AgentWelcome
		return r.ReadJSON(proto.TAgentWelcome, &wel)
	}
	var pe *proto.Error
	if err := hello(nil); !errors.As(err, &pe) || pe.Code != proto.CodeUnauthorized {
		t.Fatalf("node without a certificate: %v", err)
	}
	ca, key, _ := pki.LoadCA(caDir)
	good := filepath.Join(t.TempDir(), "n1")
	if err := pki.IssueClient(ca, key, "n1", pki.KindNode, good+".pem", good+"-key.pem"); err != nil {
		t.Fatal(err)
	}
	cert, _ := pki.LoadClientCert(good+".pem", good+"-key.pem")
	if err := hello(&cert); err != nil {
		t.Fatalf("node with our certificate refused: %v", err)
	}
	console := filepath.Join(t.TempDir(), "c1")
	pki.IssueClient(ca, key, "c1", pki.KindConsole, console+".pem", console+"-key.pem")
	ccert, _ := pki.LoadClientCert(console+".pem", console+"-key.pem")
	if err := hello(&ccert); !errors.As(err, &pe) || pe.Code != proto.CodeUnauthorized {
		t.Fatalf("a console certificate on the node plane: %v", err)
	}
	foreignDir := t.TempDir()
	fca, fkey, _ := pki.EnsureCA(foreignDir)
	bad := filepath.Join(foreignDir, "n1")
	pki.IssueClient(fca, fkey, "n1", pki.KindNode, bad+".pem", bad+"-key.pem")
	fcert, _ := pki.LoadClientCert(bad+".pem", bad+"-key.pem")
	if err := hello(&fcert); err == nil {
		t.Fatal("a node certificate from another CA was accepted")
	}
	if !strings.Contains(tc.logs.String(), "no node certificate") {
		t.Fatal("refusal not logged")
	}
}

// Transcripts never leave in plaintext: plain HTTP off loopback is refused
// at start, and with http_tls the API answers HTTPS only.
func TestHTTPAPIPlaintextOnlyOnLoopback(t *testing.T) {
	dir := t.TempDir()
	ca, key, _ := pki.EnsureCA(dir)
	cert, _ := pki.EnsureServerCert(dir, ca, key, []string{"localhost", "127.0.0.1"})
	mk := func(http string, tlsOn bool) (*Coordinator, error) {
		c, err := New(Config{DataDir: t.TempDir(), QUICAddr: "127.0.0.1:0", HTTPAddr: http, HTTPTLS: tlsOn,
			TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		return c, c.Listen()
	}
	if c, err := mk("0.0.0.0:0", false); err == nil || !strings.Contains(err.Error(), "in the clear") {
		t.Fatalf("plain HTTP on all interfaces accepted: %v", err)
	} else {
		_ = c.Close()
	}
	tc := startCoordinatorWith(t, func(c *Config) { c.HTTPTLS = true })
	url := tc.c.HTTPAddr().String() + "/healthz"
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: tc.pool, ServerName: "localhost"}}}
	resp, err := client.Get("https://" + url)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("https: %v", err)
	}
	resp.Body.Close()
	client.CloseIdleConnections()
	if resp, err := http.Get("http://" + url); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP answered on a TLS listener")
		}
	}
}

// A WebRTC console needs a valid console token too; with one, its call is
// stored like a QUIC console's, and packets lost in the network are stored
// as loss markers and counted per call.
func TestWHIPConsole(t *testing.T) {
	tc := startCoordinator(t)
	base := "http://" + tc.c.HTTPAddr().String()
	for _, tok := range []string{"", "wrong"} {
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/whip/whip-call", strings.NewReader("v=0\r\n"))
		req.Header.Set("Content-Type", "application/sdp")
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized || res.Header.Get("WWW-Authenticate") == "" || !strings.Contains(string(b), "credential") {
			t.Errorf("token %q: %d %q, want 401 with a reason", tok, res.StatusCode, b)
		}
	}
	if !strings.Contains(tc.logs.String(), "whip: request refused") {
		t.Error("refused offers are not logged")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := whip.Dial(ctx, whip.ClientConfig{Server: base, Token: testToken, CallID: "whip-call", ConsoleID: "browser", Channels: []string{"caller"}, Codec: proto.CodecPCMU})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	for i := range 30 {
		if i == 10 || i == 11 || i == 20 {
			cl.Drop(0, 160)
			continue
		}
		if err := cl.Send(0, bytes.Repeat([]byte{byte(i)}, 160), 160); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := cl.End(); err != nil {
		t.Fatal(err)
	}
	var rec *store.Call
	waitFor(t, "the call ends", 10*time.Second, func() bool {
		rec, err = tc.c.Store().Call("whip-call")
		return err == nil && rec.State == store.StateEnded
	})
	if rec.EndFrames[0] != 30 || rec.Concealed[0] != 3 || rec.Console != "console-a" || rec.Codec != proto.CodecPCMU {
		t.Fatalf("call %+v: want 30 frames, 3 concealed", rec)
	}
	var fs []store.Frame
	if err := tc.c.Store().Frames("whip-call", 0, 0, 30, func(f store.Frame) error {
		f.Payload = bytes.Clone(f.Payload) // valid only during the callback
		fs = append(fs, f)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(fs) != 30 {
		t.Fatalf("%d frames stored, want 30", len(fs))
	}
	for i, f := range fs {
		lost := i == 10 || i == 11 || i == 20
		if lost != (len(f.Payload) == 0) || (!lost && f.Payload[0] != byte(i)) {
			t.Errorf("frame %d: %d bytes (first %v), lost %v", i, len(f.Payload), f.Payload[:min(1, len(f.Payload))], lost)
		}
	}
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
