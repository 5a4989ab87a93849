package raftlog

// The StableStore: raft's current term and vote, a handful of keys set on
// term and vote changes only. They are kept in memory and in the stable
// file, rewritten atomically on each Set. They are not secret (a term
// number and a server id), so the file is plain even when entries are
// encrypted; its CRC detects damage.
//
// The file: "RLS1", a count (uint32), then per key its length (uint32), the
// key, the value's length (uint32) and the value; then a CRC32-C of all
// that. Little endian.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
)

// stableFile is the stable file's name in the log directory.
const stableFile = "stable"

var stableMagic = []byte("RLS1")

// ErrKeyNotFound is the error of Get and GetUint64 for a key never set.
// Its text is exactly "not found": raft tells a fresh start from a failure
// by comparing err.Error() with that string.
var ErrKeyNotFound = errors.New("not found")

// Set stores val under key, durably, before it returns.
func (l *Log) Set(key, val []byte) error {
	l.stMu.Lock()
	defer l.stMu.Unlock()
	if l.isClosed() {
		return ErrClosed
	}
	next := make(map[string][]byte, len(l.stable)+1)
	for k, v := range l.stable {
		next[k] = v
	}
	next[string(key)] = bytes.Clone(val)
	if next[string(key)] == nil {
		next[string(key)] = []byte{}
	}
	if err := writeFileAtomic(l.dir, stableFile, encodeStable(next)); err != nil {
		return err
	}
	l.stable = next
	return nil
}

// Get returns the value of key, or ErrKeyNotFound.
func (l *Log) Get(key []byte) ([]byte, error) {
	l.stMu.Lock()
	defer l.stMu.Unlock()
	if l.isClosed() {
		return nil, ErrClosed
	}
	v, ok := l.stable[string(key)]
	if !ok {
		return nil, ErrKeyNotFound
	}
	return bytes.Clone(v), nil
}

// SetUint64 stores val under key (8 bytes, big endian), durably.
func (l *Log) SetUint64(key []byte, val uint64) error {
	return l.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 returns the value SetUint64 stored under key, or 0 and
// ErrKeyNotFound.
func (l *Log) GetUint64(key []byte) (uint64, error) {
	v, err := l.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("raftlog: stable key %q holds %d bytes, not a uint64", key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func encodeStable(kv map[string][]byte) []byte {
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b := append([]byte(nil), stableMagic...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(keys)))
	for _, k := range keys {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(k)))
		b = append(b, k...)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(kv[k])))
		b = append(b, kv[k]...)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// readStable reads dir's stable file (none: no keys).
func readStable(dir string) (map[string][]byte, error) {
	p := filepath.Join(dir, stableFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return map[string][]byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("raftlog: %w", err)
	}
	kv, ok := decodeStable(b)
	if !ok {
		return nil, fmt.Errorf("raftlog: %s: bad format or checksum: %w", p, ErrDamaged)
	}
	return kv, nil
}

func decodeStable(b []byte) (map[string][]byte, bool) {
	if len(b) < len(stableMagic)+8 || !bytes.HasPrefix(b, stableMagic) {
		return nil, false
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, false
	}
	r := body[len(stableMagic):]
	next := func() ([]byte, bool) {
		if len(r) < 4 {
			return nil, false
		}
		n := binary.LittleEndian.Uint32(r)
		if uint64(n) > uint64(len(r)-4) {
			return nil, false
		}
		v := r[4 : 4+n]
		r = r[4+n:]
		return v, true
	}
	if len(r) < 4 {
		return nil, false
	}
	count := binary.LittleEndian.Uint32(r)
	r = r[4:]
	kv := make(map[string][]byte, min(count, 64))
	for range count {
		k, ok := next()
		if !ok {
			return nil, false
		}
		v, ok := next()
		if !ok {
			return nil, false
		}
		kv[string(k)] = bytes.Clone(v)
	}
	if len(r) != 0 {
		return nil, false
	}
	return kv, true
}
