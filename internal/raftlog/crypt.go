package raftlog

// Encryption of entries: each record's Data and Extensions are sealed with
// AES-256-GCM under a subkey of Options.Key (SHA-256 of a label and the
// key), with a fresh random 12-byte nonce stored in the record and the
// record's header (index, term, type, lengths, AppendedAt) as additional
// data, so a record cannot be moved to another index or term unnoticed.
//
// What stays plain: record headers (index, term, type, lengths, time), the
// meta file (the floor, and an HMAC of a label under the key to tell a wrong
// key from damage) and the stable file (the current term and the vote, which
// are not secret).

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// KeySize is the size of Options.Key: AES-256.
const KeySize = 32

const (
	nonceSize = 12
	tagSize   = 16
)

// Labels of what is derived from the key; changing one makes every log
// written before unreadable.
const (
	entryKeyLabel = "callscribe raftlog v1 entry key\x00"
	checkLabel    = "callscribe raftlog v1 key check"
)

// ErrWrongKey is wrapped by the error of an Open given another key than
// the log's, or none for an encrypted log. Nothing was changed.
var ErrWrongKey = errors.New("raftlog: wrong encryption key")

// crypt seals and opens payloads; a nil *crypt is no encryption.
type crypt struct {
	aead  cipher.AEAD
	check string // keyCheck of the key
}

func newCrypt(key []byte) (*crypt, error) {
	if key == nil {
		return nil, nil
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("raftlog: key is %d bytes, want %d (AES-256)", len(key), KeySize)
	}
	sub := sha256.Sum256(append([]byte(entryKeyLabel), key...))
	block, err := aes.NewCipher(sub[:])
	if err != nil {
		return nil, fmt.Errorf("raftlog: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("raftlog: %w", err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(checkLabel))
	return &crypt{aead: aead, check: hex.EncodeToString(m.Sum(nil))}, nil
}

// overhead is what sealing adds to a payload.
func (c *crypt) overhead() int {
	if c == nil {
		return 0
	}
	return nonceSize + tagSize
}

// nonces returns n fresh random nonces, back to back.
func (c *crypt) nonces(n int) ([]byte, error) {
	b := make([]byte, n*nonceSize)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("raftlog: nonce: %w", err)
	}
	return b, nil
}

// seal encrypts, in place, the plaintext payload[nonceSize:][:n] (the
// payload has room for the tag after it) with nonce, which it copies to
// the payload's start. hdr is the record's header, the additional data.
func (c *crypt) seal(hdr, payload, nonce []byte, n int) {
	copy(payload[:nonceSize], nonce)
	pt := payload[nonceSize : nonceSize+n]
	c.aead.Seal(pt[:0], payload[:nonceSize], pt, hdr[offPLen:headerLen])
}

// open decrypts, in place, a sealed payload (nonce, sealed text) whose
// header is hdr.
func (c *crypt) open(hdr, payload []byte) ([]byte, error) {
	if c == nil {
		return nil, errors.New("record is encrypted and the log was opened without a key")
	}
	if len(payload) < nonceSize+tagSize {
		return nil, errors.New("sealed payload too short")
	}
	ct := payload[nonceSize:]
	pt, err := c.aead.Open(ct[:0], payload[:nonceSize], ct, hdr[offPLen:headerLen])
	if err != nil {
		return nil, errors.New("payload fails authentication")
	}
	return pt, nil
}
