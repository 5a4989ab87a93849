package integrity

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/callscribe/callscribe/internal/keys"
)

// StatementType names the statement format; a verifier refuses others.
const StatementType = "callscribe.integrity.v1"

// Statement is what the coordinator signs about a call: its audio, per
// channel, and its transcript, as durable when it was signed.
type Statement struct {
	Type    string     `json:"type"`
	CallID  string     `json:"call_id"`
	Console string     `json:"console"`
	Created time.Time  `json:"created"`
	Ended   *time.Time `json:"ended,omitempty"`
	// State is the call's state when signed: a statement about a call
	// still streaming covers the frames durable then.
	State string `json:"state"`
	// AudioDeleted is when retention deleted the audio (the digests stand).
	AudioDeleted *time.Time      `json:"audio_deleted,omitempty"`
	Channels     []ChannelDigest `json:"channels"`
	Transcript   TranscriptHash  `json:"transcript"`
	SignedAt     time.Time       `json:"signed_at"`
	// Key is the signing key's fingerprint (KeyID).
	Key string `json:"key"`
}

// ChannelDigest is a channel's frame digest: SHA256 (hex) covers frames
// 0 to Frames-1.
type ChannelDigest struct {
	Channel int    `json:"channel"`
	Label   string `json:"label"`
	Frames  uint32 `json:"frames"`
	SHA256  string `json:"sha256"`
}

// TranscriptHash is TranscriptSum (hex) of the transcript's Finals finals.
// Sealed: the hash was recorded when the call was finalised (a final
// altered since does not match it); otherwise it is the hash of the finals
// served with the statement (a call not yet finalised).
type TranscriptHash struct {
	Finals int    `json:"finals"`
	SHA256 string `json:"sha256"`
	Sealed bool   `json:"sealed"`
}

// Signed is a signed statement as served. The signature covers exactly the
// bytes of SignedStatement (base64-decoded): a verifier checks it over
// those bytes and reads the statement from them; Statement is the same,
// decoded, for reading.
type Signed struct {
	Statement       Statement `json:"statement"`
	SignedStatement string    `json:"signed_statement"` // standard base64
	Algorithm       string    `json:"algorithm"`        // "ed25519"
	Signature       string    `json:"signature"`        // standard base64, 64 bytes
	Key             string    `json:"key"`              // KeyID of the signing key
}

// KeyID is a public key's fingerprint: SHA-256 of its 32 raw bytes, hex.
func KeyID(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:])
}

// Sign signs st (its Type, SignedAt and Key are set here) with key.
func Sign(key ed25519.PrivateKey, st Statement) (Signed, error) {
	if len(key) != ed25519.PrivateKeySize {
		return Signed{}, errors.New("integrity: no signing key")
	}
	pub := key.Public().(ed25519.PublicKey)
	st.Type, st.Key = StatementType, KeyID(pub)
	if st.SignedAt.IsZero() {
		st.SignedAt = time.Now().UTC()
	}
	b, err := json.Marshal(st)
	if err != nil {
		return Signed{}, err
	}
	return Signed{Statement: st, SignedStatement: base64.StdEncoding.EncodeToString(b), Algorithm: "ed25519",
		Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(key, b)), Key: st.Key}, nil
}

// Verify checks s's signature with pub and returns the statement the
// signed bytes hold.
func Verify(pub ed25519.PublicKey, s Signed) (*Statement, error) {
	if s.Algorithm != "ed25519" {
		return nil, fmt.Errorf("integrity: signature algorithm %q, want ed25519", s.Algorithm)
	}
	b, err := base64.StdEncoding.DecodeString(s.SignedStatement)
	if err != nil {
		return nil, fmt.Errorf("integrity: signed statement: %w", err)
	}
	sig, err := base64.StdEncoding.DecodeString(s.Signature)
	if err != nil {
		return nil, fmt.Errorf("integrity: signature: %w", err)
	}
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, b, sig) {
		return nil, fmt.Errorf("integrity: the signature does not verify with key %s", KeyID(pub))
	}
	var st Statement
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("integrity: signed statement: %w", err)
	}
	if st.Type != StatementType {
		return nil, fmt.Errorf("integrity: statement type %q, want %q", st.Type, StatementType)
	}
	return &st, nil
}

// Key files under DATA.
const (
	KeyDir         = "keys"
	SigningKeyFile = "signing.key" // PKCS#8 PEM, 0600
	SigningPubFile = "signing.pub" // PKIX PEM, for distribution
)

// EnsureSigningKey returns the Ed25519 signing key in DATA/keys/signing.key,
// creating it (and the directory, 0700) if missing, and writes its public
// key to DATA/keys/signing.pub.
func EnsureSigningKey(data string) (ed25519.PrivateKey, error) {
	dir := filepath.Join(data, KeyDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("integrity: %w", err)
	}
	path := filepath.Join(dir, SigningKeyFile)
	key, err := readPrivate(path)
	if errors.Is(err, os.ErrNotExist) {
		key, err = createPrivate(path)
	}
	if err != nil {
		return nil, err
	}
	pub, err := MarshalPublicKey(key.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, err
	}
	pubPath := filepath.Join(dir, SigningPubFile)
	if old, err := os.ReadFile(pubPath); err != nil || !bytes.Equal(old, pub) {
		if err := writeFileAtomic(pubPath, pub, 0o644); err != nil {
			return nil, fmt.Errorf("integrity: %w", err)
		}
	}
	return key, nil
}

func readPrivate(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("integrity: %s is not a PEM private key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("integrity: %s: %w", path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("integrity: %s holds a %T, want an Ed25519 key", path, k)
	}
	return ek, nil
}

// createPrivate writes a new key to path unless another process created
// one first (then that one is returned).
func createPrivate(path string) (ed25519.PrivateKey, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	// Written whole or not at all, never over a key another start made.
	err = keys.Install(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), false)
	if errors.Is(err, os.ErrExist) {
		return readPrivate(path)
	}
	if err != nil {
		return nil, fmt.Errorf("integrity: %w", err)
	}
	return key, nil
}

func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// MarshalPublicKey encodes pub as a PKIX "PUBLIC KEY" PEM block (what
// openssl reads).
func MarshalPublicKey(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePublicKey reads an Ed25519 public key: PKIX PEM, or the 32 raw
// bytes in standard base64 or hex.
func ParsePublicKey(b []byte) (ed25519.PublicKey, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("integrity: PEM block %q, want PUBLIC KEY", blk.Type)
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("integrity: public key: %w", err)
		}
		ek, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("integrity: public key is a %T, want Ed25519", k)
		}
		return ek, nil
	}
	s := strings.TrimSpace(string(b))
	for _, dec := range []func(string) ([]byte, error){base64.StdEncoding.DecodeString, hex.DecodeString} {
		if raw, err := dec(s); err == nil && len(raw) == ed25519.PublicKeySize {
			return ed25519.PublicKey(raw), nil
		}
	}
	return nil, errors.New("integrity: not an Ed25519 public key (PEM, or 32 bytes in base64 or hex)")
}
