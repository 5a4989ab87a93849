package raftlog

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

// Record header layout (little endian).
const (
	offMagic  = 0  // 4: recordMagic
	offCRC    = 4  // 4: CRC32-C of header[8:] and the payload
	offHCRC   = 8  // 4: CRC32-C of header[12:]
	offPLen   = 12 // 4: payload length
	offDLen   = 16 // 4: plaintext Data length (Extensions: the rest)
	offType   = 20 // 1: raft.LogType
	offFlags  = 21 // 1: flag*
	offIndex  = 24 // 8
	offTerm   = 32 // 8
	offBatch  = 40 // 8: first index of the batch the record was written in
	offSec    = 48 // 8: AppendedAt, Unix seconds
	offNsec   = 56 // 4: AppendedAt, nanoseconds
	headerLen = 60
)

// Record flags.
const (
	flagSealed   = 1 << 0 // the payload is nonce + AES-256-GCM sealed text
	flagBatchEnd = 1 << 1 // the last record of its batch
)

// maxPayload bounds one record's payload; a larger length is damage.
const maxPayload = 1 << 30

var recordMagic = [4]byte{'R', 'L', 'G', '1'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// segExt is a segment file's extension.
const segExt = ".seg"

// segName is the file name of the segment whose first index is first.
func segName(first uint64) string { return fmt.Sprintf("%020d%s", first, segExt) }

// parseSegName returns the first index a segment file name carries.
func parseSegName(name string) (uint64, bool) {
	s, ok := strings.CutSuffix(name, segExt)
	if !ok || len(s) != 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}

// segment is one segment file and the offsets of its records.
type segment struct {
	first uint64 // index of its first record (its name)
	path  string
	f     *os.File
	offs  []int64 // offs[i]: offset of the record of index first+i
	size  int64   // bytes of whole records
}

// last is the index of the segment's last record (first-1 when empty).
func (s *segment) last() uint64 { return s.first + uint64(len(s.offs)) - 1 }

// span returns the offset and length of the record of index i.
func (s *segment) span(i uint64) (off, n int64) {
	k := i - s.first
	off = s.offs[k]
	end := s.size
	if k+1 < uint64(len(s.offs)) {
		end = s.offs[k+1]
	}
	return off, end - off
}

func openSegment(dir string, first uint64) (*segment, error) {
	p := filepath.Join(dir, segName(first))
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("raftlog: %w", err)
	}
	return &segment{first: first, path: p, f: f}, nil
}

// header is a record's decoded header.
type header struct {
	plen, dlen  uint32
	typ, flags  uint8
	index, term uint64
	batch       uint64
	appended    time.Time
}

// putHeader writes h into b[:headerLen] (magic, lengths and fields; the
// CRCs are filled in by seal).
func putHeader(b []byte, h *header) {
	copy(b[offMagic:], recordMagic[:])
	le := binary.LittleEndian
	le.PutUint32(b[offPLen:], h.plen)
	le.PutUint32(b[offDLen:], h.dlen)
	b[offType] = h.typ
	b[offFlags] = h.flags
	b[offFlags+1], b[offFlags+2] = 0, 0
	le.PutUint64(b[offIndex:], h.index)
	le.PutUint64(b[offTerm:], h.term)
	le.PutUint64(b[offBatch:], h.batch)
	le.PutUint64(b[offSec:], uint64(h.appended.Unix()))
	le.PutUint32(b[offNsec:], uint32(h.appended.Nanosecond()))
}

// sealRecord fills in the CRCs of the record rec (header and payload).
func sealRecord(rec []byte) {
	le := binary.LittleEndian
	le.PutUint32(rec[offHCRC:], crc32.Checksum(rec[offPLen:headerLen], castagnoli))
	le.PutUint32(rec[offCRC:], crc32.Checksum(rec[offHCRC:], castagnoli))
}

// parseHeader decodes and checks a header (magic, header CRC, sane
// lengths). It does not look at the payload.
func parseHeader(b []byte) (header, string) {
	if len(b) < headerLen {
		return header{}, "incomplete header"
	}
	if !bytes.Equal(b[:4], recordMagic[:]) {
		return header{}, "bad magic"
	}
	le := binary.LittleEndian
	if le.Uint32(b[offHCRC:]) != crc32.Checksum(b[offPLen:headerLen], castagnoli) {
		return header{}, "bad header checksum"
	}
	h := header{
		plen:  le.Uint32(b[offPLen:]),
		dlen:  le.Uint32(b[offDLen:]),
		typ:   b[offType],
		flags: b[offFlags],
		index: le.Uint64(b[offIndex:]),
		term:  le.Uint64(b[offTerm:]),
		batch: le.Uint64(b[offBatch:]),
		appended: time.Unix(int64(le.Uint64(b[offSec:])),
			int64(le.Uint32(b[offNsec:]))),
	}
	if h.plen > maxPayload {
		return header{}, fmt.Sprintf("payload length %d out of range", h.plen)
	}
	return h, ""
}

// checkRecord checks a whole record's CRC; rec is header and payload.
func checkRecord(rec []byte) bool {
	return binary.LittleEndian.Uint32(rec[offCRC:]) == crc32.Checksum(rec[offHCRC:], castagnoli)
}

// decodeRecord checks rec (one record, exactly) and, opening its payload
// with c, fills out. want is the index rec must carry.
func decodeRecord(rec []byte, want uint64, c *crypt, out *raft.Log) string {
	h, why := parseHeader(rec)
	if why != "" {
		return why
	}
	if int64(len(rec)) != headerLen+int64(h.plen) {
		return "record length does not match the index"
	}
	if !checkRecord(rec) {
		return "bad checksum"
	}
	if h.index != want {
		return fmt.Sprintf("record holds index %d, not %d", h.index, want)
	}
	pt := rec[headerLen:]
	if h.flags&flagSealed != 0 {
		var err error
		if pt, err = c.open(rec[:headerLen], pt); err != nil {
			return err.Error()
		}
	}
	if uint64(h.dlen) > uint64(len(pt)) {
		return "data length out of range"
	}
	*out = raft.Log{
		Index:      h.index,
		Term:       h.term,
		Type:       raft.LogType(h.typ),
		Data:       nilIfEmpty(pt[:h.dlen:h.dlen]),
		Extensions: nilIfEmpty(pt[h.dlen:]),
		AppendedAt: h.appended,
	}
	return ""
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}
