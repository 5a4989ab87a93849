package cluster

// The transport between coordinators: Raft's network transport over TCP
// with mutual TLS. Both ends present a coordinator certificate issued by
// the appliance's CA (pki.KindCoordinator); a peer with a certificate from
// another CA, of another kind, or from another cluster (a one-line preamble
// after the handshake carries the cluster ID) is refused and logged.

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/callscribe/callscribe/internal/pki"
	"github.com/hashicorp/raft"
)

const preamble = "callscribe-raft/1"

// streamLayer is raft.StreamLayer over TLS.
type streamLayer struct {
	ln        net.Listener
	advertise net.Addr
	tls       *tls.Config // both sides: certificate, CA pool
	cluster   func() string
	log       *slog.Logger

	// conns are the connections made or accepted, closed with the layer
	// (Raft's transport leaves them open at Close).
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// track records a connection to close with the layer; false once closed.
func (s *streamLayer) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *streamLayer) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func newStreamLayer(bind, advertise string, tc *tls.Config, cluster func() string, log *slog.Logger) (*streamLayer, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("cluster: listen %s: %w", bind, err)
	}
	var adv net.Addr = ln.Addr()
	if advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("cluster: advertise address %s: %w", advertise, err)
		}
		adv = a
	}
	return &streamLayer{ln: ln, advertise: adv, tls: tc, cluster: cluster, log: log}, nil
}

// peerTLS is the TLS configuration of both ends: the member's certificate,
// and peers verified against the CA and required to be coordinators (no
// host name check: members are named by the CA, not by DNS).
func peerTLS(cert tls.Certificate, cas *x509.CertPool) *tls.Config {
	verify := func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the peer presented no certificate")
		}
		opts := x509.VerifyOptions{Roots: cas, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
		for _, c := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(c)
		}
		chains, err := cs.PeerCertificates[0].Verify(opts)
		if err != nil {
			return fmt.Errorf("the peer's certificate is not from this appliance's CA: %w", err)
		}
		if !pki.HasKind(chains, pki.KindCoordinator) {
			return fmt.Errorf("the peer's certificate (%s) is not a coordinator's", cs.PeerCertificates[0].Subject.CommonName)
		}
		return nil
	}
	return &tls.Config{
		Certificates:       []tls.Certificate{cert},
		MinVersion:         tls.VersionTLS13,
		ClientAuth:         tls.RequireAnyClientCert,
		InsecureSkipVerify: true, // verified by VerifyConnection, against the CA
		VerifyConnection:   verify,
		NextProtos:         []string{preamble},
	}
}

func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	pc := &peerConn{Conn: tls.Server(c, s.tls), server: true, s: s}
	if !s.track(pc) {
		c.Close()
		return nil, net.ErrClosed
	}
	return pc, nil
}

// Close stops accepting and closes every connection.
func (s *streamLayer) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	s.closed = true
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for c := range conns {
		_ = c.Close()
	}
	return err
}
func (s *streamLayer) Addr() net.Addr { return s.advertise }

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.Dial("tcp", string(addr))
	if err != nil {
		return nil, err
	}
	pc := &peerConn{Conn: tls.Client(c, s.tls), s: s}
	_ = c.SetDeadline(time.Now().Add(timeout))
	if err := pc.init(); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	if !s.track(pc) {
		c.Close()
		return nil, net.ErrClosed
	}
	return pc, nil
}

// peerConn does the handshake and the cluster check before its first read
// or write (on the accepting side, in the connection's own goroutine, so
// a slow peer never holds up Accept).
type peerConn struct {
	*tls.Conn
	server bool
	s      *streamLayer
	once   sync.Once
	err    error
	rd     *bufio.Reader
}

func (c *peerConn) init() error {
	c.once.Do(func() { c.err = c.handshake() })
	return c.err
}

func (c *peerConn) handshake() error {
	remote := c.Conn.RemoteAddr().String()
	if c.server {
		_ = c.Conn.SetDeadline(time.Now().Add(10 * time.Second))
		defer c.Conn.SetDeadline(time.Time{})
	}
	if err := c.Conn.Handshake(); err != nil {
		c.s.log.Warn("cluster: refused a peer connection", "remote", remote, "err", err)
		return fmt.Errorf("cluster: peer %s: %w", remote, err)
	}
	c.rd = bufio.NewReaderSize(c.Conn, 4096)
	ours := c.s.cluster()
	if !c.server {
		if _, err := fmt.Fprintf(c.Conn, "%s %s\n", preamble, orNone(ours)); err != nil {
			return fmt.Errorf("cluster: peer %s: %w", remote, err)
		}
		line, err := c.rd.ReadString('\n')
		if err != nil {
			return fmt.Errorf("cluster: peer %s refused the connection: %w", remote, err)
		}
		ok, theirs, _ := strings.Cut(strings.TrimSpace(line), " ")
		if ok != "OK" {
			c.s.log.Warn("cluster: a peer refused this member", "remote", remote, "answer", strings.TrimSpace(line))
			return fmt.Errorf("cluster: peer %s refused: %s", remote, strings.TrimSpace(line))
		}
		if ours != "" && theirs != "none" && theirs != ours {
			c.s.log.Warn("cluster: refused a peer of another cluster", "remote", remote, "theirs", theirs, "ours", ours)
			return fmt.Errorf("cluster: peer %s belongs to cluster %s, not %s", remote, theirs, ours)
		}
		return nil
	}
	line, err := c.rd.ReadString('\n')
	if err != nil {
		return fmt.Errorf("cluster: peer %s: preamble: %w", remote, err)
	}
	p, theirs, _ := strings.Cut(strings.TrimSpace(line), " ")
	if p != preamble {
		c.s.log.Warn("cluster: refused a peer speaking another protocol", "remote", remote)
		_, _ = fmt.Fprintf(c.Conn, "NO unknown protocol\n")
		return fmt.Errorf("cluster: peer %s: unknown protocol %q", remote, p)
	}
	if ours != "" && theirs != "none" && theirs != ours {
		c.s.log.Warn("cluster: refused a peer of another cluster", "remote", remote, "theirs", theirs, "ours", ours)
		_, _ = fmt.Fprintf(c.Conn, "NO this is cluster %s, not %s\n", ours, theirs)
		return fmt.Errorf("cluster: peer %s belongs to cluster %s, not %s", remote, theirs, ours)
	}
	_, err = fmt.Fprintf(c.Conn, "OK %s\n", orNone(ours))
	return err
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func (c *peerConn) Read(b []byte) (int, error) {
	if err := c.init(); err != nil {
		return 0, err
	}
	return c.rd.Read(b)
}

func (c *peerConn) Close() error {
	c.s.untrack(c)
	return c.Conn.Close()
}

func (c *peerConn) Write(b []byte) (int, error) {
	if err := c.init(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}
