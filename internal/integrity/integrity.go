// Package integrity proves a call's recording and transcript complete and
// unaltered: a running SHA-256 over every stored frame of each channel, a
// hash of the transcript's finals, and a statement of both signed with the
// coordinator's Ed25519 key. The coordinator and `callscribe verify` share
// it, so what is signed and what is checked are computed by the same code.
//
// The frame digest of a channel is a hash chain:
//
//	H_0 = 32 zero bytes
//	H_n = SHA-256(H_{n-1} || seq u32 || capture i64 || len(payload) u32 || payload)
//
// over frames 0, 1, … in order (integers big-endian; capture is the
// console's capture time as stored; loss markers, with an empty payload,
// included). The 16-byte header plus payload is exactly one record of the
// audio the coordinator serves (AppendRecord), so H_n = SHA-256(H_{n-1} ||
// record n).
package integrity

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
)

// RecordHeader is the size of a frame record's header: seq u32, capture
// i64, payload length u32.
const RecordHeader = 16

// Digest is a channel's running frame digest: Sum covers frames 0 to
// Next-1.
type Digest struct {
	Next uint32
	Sum  [32]byte
}

// Add extends d with frame seq, which must be d.Next.
func (d *Digest) Add(seq uint32, capture int64, payload []byte) error {
	if seq != d.Next {
		return fmt.Errorf("integrity: frame %d follows frame %d: the digest covers frames in order without gaps", seq, int64(d.Next)-1)
	}
	var hdr [RecordHeader]byte
	putHeader(hdr[:], seq, capture, len(payload))
	h := sha256.New()
	h.Write(d.Sum[:])
	h.Write(hdr[:])
	h.Write(payload)
	h.Sum(d.Sum[:0])
	d.Next++
	return nil
}

// Hex is the digest's sum in lower-case hex.
func (d Digest) Hex() string { return hex.EncodeToString(d.Sum[:]) }

// digestSize is the size of MarshalBinary's encoding.
const digestSize = 4 + 32

// MarshalBinary encodes d as next u32 (big-endian) || sum.
func (d Digest) MarshalBinary() ([]byte, error) {
	b := binary.BigEndian.AppendUint32(make([]byte, 0, digestSize), d.Next)
	return append(b, d.Sum[:]...), nil
}

// UnmarshalBinary decodes MarshalBinary's encoding.
func (d *Digest) UnmarshalBinary(b []byte) error {
	if len(b) != digestSize {
		return fmt.Errorf("integrity: digest of %d bytes, want %d", len(b), digestSize)
	}
	d.Next = binary.BigEndian.Uint32(b)
	copy(d.Sum[:], b[4:])
	return nil
}

func putHeader(b []byte, seq uint32, capture int64, n int) {
	binary.BigEndian.PutUint32(b[0:], seq)
	binary.BigEndian.PutUint64(b[4:], uint64(capture))
	binary.BigEndian.PutUint32(b[12:], uint32(n))
}

// AppendRecord appends one frame record of the served audio format:
// seq u32 || capture i64 || len(payload) u32 || payload, big-endian.
func AppendRecord(b []byte, seq uint32, capture int64, payload []byte) []byte {
	var hdr [RecordHeader]byte
	putHeader(hdr[:], seq, capture, len(payload))
	return append(append(b, hdr[:]...), payload...)
}

// ParseHeader reads a record header: the frame's seq, capture time and
// payload length.
func ParseHeader(b []byte) (seq uint32, capture int64, n uint32) {
	return binary.BigEndian.Uint32(b), int64(binary.BigEndian.Uint64(b[4:])), binary.BigEndian.Uint32(b[12:])
}

// MaxPayload bounds one record's payload in ReadRecords.
const MaxPayload = 1 << 20

// ReadRecords reads served audio (AppendRecord's records back to back)
// from r to its end, calling fn for each record in order. The payload is
// only valid during fn. A stream cut inside a record is an error.
func ReadRecords(r io.Reader, fn func(seq uint32, capture int64, payload []byte) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var hdr [RecordHeader]byte
	var payload []byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("integrity: audio record header: %w", err)
		}
		seq, capture, n := ParseHeader(hdr[:])
		if n > MaxPayload {
			return fmt.Errorf("integrity: frame %d claims a %d-byte payload", seq, n)
		}
		if cap(payload) < int(n) {
			payload = make([]byte, n)
		}
		payload = payload[:n]
		if _, err := io.ReadFull(br, payload); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("integrity: frame %d payload: %w", seq, err)
		}
		if err := fn(seq, capture, payload); err != nil {
			return err
		}
	}
}

// Utterance is one final of a transcript as the hash sees it.
type Utterance struct {
	Channel int
	Index   uint32
	StartMS int64
	EndMS   int64
	Text    string
	Heard   string
}

// TranscriptSum hashes a transcript's finals: SHA-256 over the finals in
// (channel, index) order, each as channel u32 || index u32 || start_ms i64
// || end_ms i64 || len(text) u32 || text || len(heard) u32 || heard
// (big-endian, text as UTF-8). us is not modified.
func TranscriptSum(us []Utterance) [32]byte {
	s := append([]Utterance(nil), us...)
	sort.SliceStable(s, func(i, j int) bool {
		if s[i].Channel != s[j].Channel {
			return s[i].Channel < s[j].Channel
		}
		return s[i].Index < s[j].Index
	})
	h := sha256.New()
	var b []byte
	for _, u := range s {
		b = b[:0]
		b = binary.BigEndian.AppendUint32(b, uint32(u.Channel))
		b = binary.BigEndian.AppendUint32(b, u.Index)
		b = binary.BigEndian.AppendUint64(b, uint64(u.StartMS))
		b = binary.BigEndian.AppendUint64(b, uint64(u.EndMS))
		b = binary.BigEndian.AppendUint32(b, uint32(len(u.Text)))
		b = append(b, u.Text...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(u.Heard)))
		b = append(b, u.Heard...)
		h.Write(b)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}
