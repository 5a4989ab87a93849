package coordinator

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

// testMember is one coordinator of an in-process cluster.
type testMember struct {
	name string
	cfg  Config
	svc  *Service
	stop func()
	logs *logBuf
}

type testCluster struct {
	caDir string
	pool  *x509.CertPool
	ms    []*testMember
}

func freeTCP(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// newTestCluster starts n coordinators on 127.0.0.1: the first bootstraps
// the cluster, the others join it through the API with a join token.
func newTestCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	tc := &testCluster{caDir: t.TempDir()}
	ca, _, err := pki.EnsureCA(tc.caDir)
	if err != nil {
		t.Fatal(err)
	}
	tc.pool = x509.NewCertPool()
	tc.pool.AddCert(ca)
	for i := range n {
		m := tc.member(t, fmt.Sprintf("c%d", i+1), t.TempDir(), "")
		tc.ms = append(tc.ms, m)
		if i == 0 {
			if err := m.svc.Member().Node.Bootstrap(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "c1 to serve as the leader", 10*time.Second, func() bool { return m.svc.Coordinator() != nil })
			continue
		}
		tok := tc.joinToken(t)
		if code, body := tc.join(t, m, tok); code != http.StatusOK {
			t.Fatalf("join %s: %d %s", m.name, code, body)
		}
	}
	l := tc.leader().svc.Member()
	for _, m := range tc.ms {
		waitFor(t, m.name+" to catch up", 10*time.Second, func() bool {
			name, _ := m.svc.Member().Node.Leader()
			return name != "" && m.svc.Member().Store.Applied() == l.Store.Applied()
		})
	}
	return tc
}

// member starts (or restarts, given its data directory and raft address)
// one coordinator.
func (tc *testCluster) member(t *testing.T, name, dir, bind string) *testMember {
	t.Helper()
	for _, f := range []string{pki.CAFile, pki.CAKeyFile} {
		b, err := os.ReadFile(filepath.Join(tc.caDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ca, key, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.EnsureServerCert(dir, ca, key, []string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cp, kp := filepath.Join(dir, pki.CoordinatorCert), filepath.Join(dir, pki.CoordinatorKey)
	if _, err := os.Stat(cp); err != nil {
		if err := pki.IssueCoordinator(ca, key, name, []string{"127.0.0.1"}, cp, kp); err != nil {
			t.Fatal(err)
		}
	}
	peer, err := pki.LoadClientCert(cp, kp)
	if err != nil {
		t.Fatal(err)
	}
	if bind == "" {
		bind = freeTCP(t)
	}
	logs := &logBuf{}
	cfg := Config{DataDir: dir, QUICAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{cert}},
		Credentials: testCredentials(), NodeTokens: []string{"node-token-0123456789"}, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Cluster: ClusterConfig{Name: name, Bind: bind, Cert: peer, CAs: tc.pool}}
	svc, err := NewService(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	stopped := false
	m := &testMember{name: name, cfg: cfg, svc: svc, logs: logs}
	m.stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	}
	t.Cleanup(m.stop)
	<-svc.Bound()
	return m
}

func (tc *testCluster) leader() *testMember {
	for _, m := range tc.ms {
		if m != nil && m.svc.Coordinator() != nil {
			return m
		}
	}
	return nil
}

func (m *testMember) url(path string) string { return "http://" + m.svc.HTTPAddr().String() + path }

// call makes one HTTP request without following redirects.
func call(t *testing.T, method, url, token, body string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	cl := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Timeout: 10 * time.Second}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func (tc *testCluster) joinToken(t *testing.T) string {
	t.Helper()
	l := tc.leader()
	code, body, _ := call(t, http.MethodPost, l.url("/v1/cluster/token"), testOperator, "")
	if code != http.StatusOK {
		t.Fatalf("join token: %d %s", code, body)
	}
	var a JoinAnswer
	if err := json.Unmarshal([]byte(body), &a); err != nil || a.Token == "" {
		t.Fatalf("join token: %s", body)
	}
	return a.Token
}

func (tc *testCluster) join(t *testing.T, m *testMember, token string) (int, string) {
	t.Helper()
	b, _ := json.Marshal(JoinRequest{Name: m.name, Raft: m.svc.Member().Node.Address(), QUIC: m.svc.QUICAddr().String(), HTTP: m.svc.HTTPAddr().String()})
	code, body, _ := call(t, http.MethodPost, tc.leader().url("/v1/cluster/members"), token, string(b))
	return code, body
}

func (tc *testCluster) dial(t *testing.T, m *testMember) *quic.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, m.svc.QUICAddr().String(), &tls.Config{RootCAs: tc.pool, ServerName: "localhost", NextProtos: []string{proto.ALPNConsole}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return conn
}

func streamOn(t *testing.T, conn *quic.Conn) *rawStream {
	t.Helper()
	st, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	return &rawStream{t: t, st: st, r: proto.NewReader(st), w: proto.NewWriter(st)}
}

// A follower sends clients to the leader: a console's hello is answered
// with not_leader naming the leader's QUIC address and every member's, the
// API with a redirect; it is not ready. A join with a wrong token is
// refused and changes nothing.
func TestClusterFollowersRedirect(t *testing.T) {
	tc := newTestCluster(t, 3)
	lead := tc.leader()
	var fol *testMember
	for _, m := range tc.ms {
		if m != lead {
			fol = m
		}
	}
	s := streamOn(t, tc.dial(t, fol))
	if err := s.w.WriteJSON(proto.THello, hello("call-r")); err != nil {
		t.Fatal(err)
	}
	m := s.next()
	var e proto.Error
	if m.Type != proto.TError || json.Unmarshal(m.Body, &e) != nil || e.Code != proto.CodeNotLeader {
		t.Fatalf("a follower answered a hello with type %d %s", m.Type, m.Body)
	}
	if e.Leader != lead.svc.QUICAddr().String() || len(e.Members) != 3 {
		t.Fatalf("not_leader names leader %q and %d members; want %s and 3", e.Leader, len(e.Members), lead.svc.QUICAddr())
	}
	code, _, h := call(t, http.MethodGet, fol.url("/v1/status?x=1"), testOperator, "")
	if code != http.StatusTemporaryRedirect || h.Get("Location") != lead.url("/v1/status?x=1") {
		t.Fatalf("follower API: %d to %q, want 307 to %s", code, h.Get("Location"), lead.url("/v1/status?x=1"))
	}
	if code, _, _ := call(t, http.MethodGet, fol.url("/readyz"), "", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("a follower is ready: %d", code)
	}
	if code, _, _ := call(t, http.MethodGet, fol.url("/healthz"), "", ""); code != http.StatusOK {
		t.Fatalf("a follower is not healthy: %d", code)
	}
	// A wrong join token.
	stranger := tc.member(t, "stranger", t.TempDir(), "")
	if code, body := tc.join(t, stranger, "cj_wrong"); code != http.StatusUnauthorized {
		t.Fatalf("a join with a wrong token: %d %s", code, body)
	}
	if ms, _ := lead.svc.Member().Node.Members(); len(ms) != 3 {
		t.Fatalf("the wrong join changed the configuration: %v", ms)
	}
	if !strings.Contains(lead.logs.String(), "join with a wrong token") {
		t.Fatal("the refused join was not logged")
	}
}

// The leader goes away mid-call: another member leads, the console
// resumes there, and every frame the old leader acknowledged is in the new
// leader's store, byte for byte; the old leader comes back with its data
// and follows.
func TestClusterLeaderLossKeepsAckedAudio(t *testing.T) {
	tc := newTestCluster(t, 3)
	lead := tc.leader()
	payload := func(seq uint32) []byte {
		return bytes.Repeat([]byte{byte(seq), byte(seq >> 8), 0x5a}, 1000)
	}
	send := func(s *rawStream, from, to uint32) {
		for seq := from; seq < to; seq++ {
			if _, err := s.w.WriteRaw(proto.AppendAudio(nil, proto.Audio{Channel: 0, Seq: seq, Capture: 1, Payload: payload(seq)})); err != nil {
				t.Fatal(err)
			}
		}
	}
	ackedTo := func(s *rawStream, want uint32) {
		for {
			m := s.next()
			if m.Type != proto.TAck {
				t.Fatalf("want ack, got type %d %s", m.Type, m.Body)
			}
			if a, _ := proto.ParseAck(m.Body); a.NextSeq >= want {
				return
			}
		}
	}
	s := streamOn(t, tc.dial(t, lead))
	s.open(hello("call-f"))
	send(s, 0, 40)
	ackedTo(s, 40)
	lead.stop()
	waitFor(t, "a new leader", 15*time.Second, func() bool { return tc.leader() != nil && tc.leader() != lead })
	nl := tc.leader()
	s2 := streamOn(t, tc.dial(t, nl))
	w := s2.open(hello("call-f"))
	if len(w.NextSeq) != 1 || w.NextSeq[0] < 40 {
		t.Fatalf("the new leader expects %v: acknowledged frames are missing", w.NextSeq)
	}
	send(s2, w.NextSeq[0], 80)
	ackedTo(s2, 80)
	got := 0
	err := nl.svc.Member().Store.Frames("call-f", 0, 0, 1000, func(f store.Frame) error {
		if !bytes.Equal(f.Payload, payload(f.Seq)) || f.Seq != uint32(got) {
			return fmt.Errorf("frame %d differs (at %d)", f.Seq, got)
		}
		got++
		return nil
	})
	if err != nil || got != 80 {
		t.Fatalf("the new leader holds %d frames: %v", got, err)
	}
	// The old leader returns with its data and follows.
	old := tc.member(t, lead.name, lead.cfg.DataDir, lead.cfg.Cluster.Bind)
	waitFor(t, "the old leader to catch up", 15*time.Second, func() bool {
		return old.svc.Member().Store.Applied() == nl.svc.Member().Store.Applied()
	})
	if old.svc.Coordinator() != nil && nl.svc.Coordinator() != nil {
		t.Fatal("two members serve as the leader")
	}
}
