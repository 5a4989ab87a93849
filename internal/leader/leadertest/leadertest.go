// Package leadertest runs fake coordinators over QUIC on 127.0.0.1 for the
// tests of clients that follow a cluster's leader (console, agent, worker):
// a follower that answers every stream's first message with not_leader,
// and a leader whose side of the conversation the test writes. Tests only:
// the product does not link it.
package leadertest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

// PKI is a CA and a serving certificate for "localhost" and 127.0.0.1.
type PKI struct {
	// CAFile is the CA certificate's file; Pool holds it.
	CAFile string
	Pool   *x509.CertPool
	Cert   tls.Certificate
}

// NewPKI creates a CA and a serving certificate in a temporary directory.
func NewPKI(t testing.TB) *PKI {
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
	p := &PKI{CAFile: filepath.Join(dir, pki.CAFile), Cert: cert, Pool: x509.NewCertPool()}
	p.Pool.AddCert(ca)
	return p
}

// Handler serves one stream a client opened; first is the stream's first
// message, already read (its Body is a copy the handler may keep). When it
// returns the stream is closed.
type Handler func(ctx context.Context, first proto.Msg, r *proto.Reader, w *proto.Writer)

// Server is a fake coordinator.
type Server struct {
	// Addr is its QUIC address (127.0.0.1:port).
	Addr string

	ln     *quic.Listener
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	firsts []proto.Msg
	conns  map[*quic.Conn]struct{}
}

// Serve starts a fake coordinator speaking alpn that hands every stream
// to h. It stops when the test ends.
func Serve(t testing.TB, p *PKI, alpn string, h Handler) *Server {
	t.Helper()
	tc := &tls.Config{Certificates: []tls.Certificate{p.Cert}, NextProtos: []string{alpn}, MinVersion: tls.VersionTLS13}
	ln, err := quic.ListenAddr("127.0.0.1:0", tc, &quic.Config{MaxIdleTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{Addr: ln.Addr().String(), ln: ln, cancel: cancel, conns: map[*quic.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			conn, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[conn] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serveConn(ctx, conn, h)
			}()
		}
	}()
	t.Cleanup(s.Close)
	return s
}

func (s *Server) serveConn(ctx context.Context, conn *quic.Conn, h Handler) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		_ = conn.CloseWithError(0, "")
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		st, err := conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer st.Close()
			defer st.CancelRead(0)
			r, w := proto.NewReader(st), proto.NewWriter(st)
			m, err := r.Read()
			if err != nil {
				return
			}
			m.Body = append([]byte(nil), m.Body...)
			s.mu.Lock()
			s.firsts = append(s.firsts, m)
			s.mu.Unlock()
			h(ctx, m, r, w)
		}()
	}
}

// Follower starts a fake follower: it answers the first message of every
// stream with answer() (proto.NotLeader) and closes the stream, as a
// cluster's follower does.
func Follower(t testing.TB, p *PKI, alpn string, answer func() *proto.Error) *Server {
	t.Helper()
	return Serve(t, p, alpn, func(ctx context.Context, _ proto.Msg, _ *proto.Reader, w *proto.Writer) {
		_ = w.WriteJSON(proto.TError, answer())
	})
}

// Firsts returns the first message of every stream served so far.
func (s *Server) Firsts() []proto.Msg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]proto.Msg(nil), s.firsts...)
}

// Close stops the server, closes its connections and waits for its
// goroutines.
func (s *Server) Close() {
	s.cancel()
	_ = s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.CloseWithError(0, "closed")
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// DeadAddr returns a 127.0.0.1 UDP address nothing listens on: a
// coordinator that is down.
func DeadAddr(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	_ = pc.Close()
	return addr
}
