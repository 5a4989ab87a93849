// Package pki creates and loads the appliance's local certificate authority,
// the coordinator's serving certificate and the shared-secret tokens. Keys and
// tokens are written 0600 in directories of 0700.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Files in a state directory.
const (
	CAFile       = "ca.pem"
	CAKeyFile    = "ca-key.pem"
	CertFile     = "server.pem"
	KeyFile      = "server-key.pem"
	ConsoleToken = "console.token"
	// OperatorToken is the operator credential dev and the service create
	// beside the console token.
	OperatorToken = "operator.token"
	NodeToken     = "node.token"
	NodeCert      = "node.pem"
	NodeKey       = "node-key.pem"
	// CoordinatorCert and CoordinatorKey are a cluster member's own
	// certificate (KindCoordinator) in its data directory.
	CoordinatorCert = "coordinator.pem"
	CoordinatorKey  = "coordinator-key.pem"
)

// Kinds of client certificate, carried in the subject's OrganizationalUnit.
const (
	KindNode    = "node"
	KindConsole = "console"
	// KindCoordinator is a coordinator of a cluster: its certificate serves
	// and dials the other members (mutual TLS between coordinators).
	KindCoordinator = "coordinator"
)

// EnsureCA loads the CA in dir, creating it on first use.
func EnsureCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	cp, kp := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	if _, err := os.Stat(cp); err == nil {
		return loadPair(cp, kp)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "callscribe local CA", Organization: []string{"callscribe"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	if err := writePair(cp, kp, der, key); err != nil {
		return nil, nil, err
	}
	return loadPair(cp, kp)
}

// EnsureServerCert loads the serving certificate in dir, issuing one from
// the CA for hosts when it is missing or does not cover them.
func EnsureServerCert(dir string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, hosts []string) (tls.Certificate, error) {
	cp, kp := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	if c, k, err := loadPair(cp, kp); err == nil && covers(c, hosts) && c.CheckSignatureFrom(ca) == nil && time.Until(c.NotAfter) > 30*24*time.Hour {
		return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "callscribe coordinator"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(2, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := writePair(cp, kp, der, key); err != nil {
		return tls.Certificate{}, err
	}
	c, k, err := loadPair(cp, kp)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}, nil
}

// IssueClient issues a client certificate (CN name, OU kind) from the CA and
// writes it to certFile and keyFile (0600).
func IssueClient(ca *x509.Certificate, caKey *ecdsa.PrivateKey, name, kind, certFile, keyFile string) error {
	if kind != KindNode && kind != KindConsole {
		return fmt.Errorf("pki: kind %q: want %s or %s", kind, KindNode, KindConsole)
	}
	return issue(ca, caKey, name, kind, nil, certFile, keyFile)
}

// IssueCoordinator issues a coordinator's certificate (CN name, OU
// coordinator), good for both ends of a connection between coordinators,
// naming hosts (its cluster addresses) for reference.
func IssueCoordinator(ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, hosts []string, certFile, keyFile string) error {
	return issue(ca, caKey, name, KindCoordinator, hosts, certFile, keyFile)
}

func issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, name, kind string, hosts []string, certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name, OrganizationalUnit: []string{kind}, Organization: []string{"callscribe"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(2, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if kind == KindCoordinator {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	return writePair(certFile, keyFile, der, key)
}

// EnsureNodeCert issues DIR/node.pem once: the certificate nodes present
// when no per-node one was issued (like node.token, copy it to the nodes).
func EnsureNodeCert(dir string, ca *x509.Certificate, caKey *ecdsa.PrivateKey) error {
	cp, kp := filepath.Join(dir, NodeCert), filepath.Join(dir, NodeKey)
	if c, _, err := loadPair(cp, kp); err == nil && c.CheckSignatureFrom(ca) == nil {
		return nil
	}
	return IssueClient(ca, caKey, "callscribe-nodes", KindNode, cp, kp)
}

// LoadCA loads the CA pair in dir (it must exist).
func LoadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	return loadPair(filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile))
}

// LoadClientCert loads a certificate and key for TLS.
func LoadClientCert(certFile, keyFile string) (tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return c, fmt.Errorf("pki: client certificate: %w", err)
	}
	return c, nil
}

// HasKind reports whether a verified peer certificate is of the given kind.
func HasKind(chains [][]*x509.Certificate, kind string) bool {
	for _, ch := range chains {
		if len(ch) > 0 {
			for _, ou := range ch[0].Subject.OrganizationalUnit {
				if ou == kind {
					return true
				}
			}
		}
	}
	return false
}

func covers(c *x509.Certificate, hosts []string) bool {
	for _, h := range hosts {
		if c.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

// CertPool loads a PEM CA file into a pool.
func CertPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("pki: %s holds no certificate", path)
	}
	return p, nil
}

// EnsureToken returns the token in path, creating a random one if missing.
func EnsureToken(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		t := strings.TrimSpace(string(b))
		if len(t) < 16 {
			return "", fmt.Errorf("pki: token in %s is too short", path)
		}
		return t, nil
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	t := hex.EncodeToString(b)
	if err := os.WriteFile(path, []byte(t+"\n"), 0o600); err != nil {
		return "", err
	}
	return t, nil
}

// EnsureKey returns the 32-byte secret in path, creating a random one
// (mode 0600) if missing.
func EnsureKey(path string) ([32]byte, error) {
	var k [32]byte
	if b, err := os.ReadFile(path); err == nil {
		if len(b) != 32 {
			return k, fmt.Errorf("pki: %s holds %d bytes, want 32", path, len(b))
		}
		copy(k[:], b)
		return k, nil
	}
	if _, err := rand.Read(k[:]); err != nil {
		return k, err
	}
	return k, os.WriteFile(path, k[:], 0o600)
}

// ReadToken reads a token file.
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", errors.New("pki: empty token in " + path)
	}
	return t, nil
}

// TokenEqual compares tokens in constant time.
func TokenEqual(got string, want []string) bool {
	ok := 0
	for _, w := range want {
		if w != "" {
			ok |= subtle.ConstantTimeCompare([]byte(got), []byte(w))
		}
	}
	return ok == 1
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func writePair(cp, kp string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(kp, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(cp, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func loadPair(cp, kp string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, err := os.ReadFile(cp)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(kp)
	if err != nil {
		return nil, nil, err
	}
	c, _ := pem.Decode(cb)
	k, _ := pem.Decode(kb)
	if c == nil || k == nil {
		return nil, nil, fmt.Errorf("pki: %s or %s is not PEM", cp, kp)
	}
	cert, err := x509.ParseCertificate(c.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParseECPrivateKey(k.Bytes)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}
