package store

// Reading Badger's log files (value log NNNNNN.vlog, memtable WAL
// NNNNN.mem) entry by entry, read-only, to tell a torn tail left by a crash
// from damage in the middle. The format, from Badger v4.9.6 (memtable.go
// logFile.encodeEntry, structs.go header):
//
//	file:  keyID (8) | base IV (12) | entry | entry | ...
//	entry: meta (1) | userMeta (1) | uvarint klen | uvarint vlen |
//	       uvarint expiresAt | key (klen, user key + 8-byte version) |
//	       value (vlen) | CRC32-Castagnoli of all before it (4, big endian)
//
// After each entry Badger zeroes the next 22 bytes (zeroNextEntry); a WAL
// and the value log being written are sparse beyond their data, so a run of
// zeros ends the data. With encryption (keyID not 0) key and value are
// AES-CTR encrypted with the file's data key, the counter block being the
// base IV then the entry's offset; the header stays plain and the CRC covers
// the encrypted bytes, so the scan checks entries the same way, and needs
// the data key only to read a key's prefix when it looks for entries after
// damage. Badger stops reading a log at the first entry that
// does not check out and (for the newest value log and every WAL) truncates
// the file there on open: anything valid after it is lost.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

const (
	logHeaderSize  = 20 // keyID + base IV
	maxEntryHeader = 22
	// tornWindow bounds how far past a bad entry valid entries of the same
	// unsynced write may lie after a power loss (pages reach the disk in
	// any order): the committer caps a transaction's value-log bytes at
	// maxTxnVlog, and at most two writes (a commit and a GC batch) are in
	// flight together.
	tornWindow = 2 * maxTxnVlog
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// window reads a file through a moving buffer.
type window struct {
	f     *os.File
	size  int64
	start int64
	buf   []byte
	err   error
	// dec decrypts the start of an entry's key (nil: a plain file);
	// opaque: the file is encrypted and its key is not at hand, so keys
	// cannot be told from random bytes (the CRC still must match).
	dec    func(off int64, b []byte) []byte
	opaque bool
}

// at returns up to n bytes at off (fewer at the end of the file).
func (w *window) at(off int64, n int) []byte {
	if off >= w.size || off < 0 {
		return nil
	}
	if int64(n) > w.size-off {
		n = int(w.size - off)
	}
	if off >= w.start && off+int64(n) <= w.start+int64(len(w.buf)) {
		return w.buf[off-w.start : off-w.start+int64(n)]
	}
	want := max(n, 1<<20)
	if int64(want) > w.size-off {
		want = int(w.size - off)
	}
	if cap(w.buf) < want {
		w.buf = make([]byte, want)
	}
	w.buf = w.buf[:want]
	m, err := w.f.ReadAt(w.buf, off)
	if err != nil && !errors.Is(err, io.EOF) && w.err == nil {
		w.err = err
	}
	w.buf, w.start = w.buf[:m], off
	if m < n {
		n = m
	}
	return w.buf[:n]
}

// nextData is the first offset at or after off that is not in a hole of the
// sparse file (the file's size when only holes follow). Badger's log files
// are sparse beyond their data; skipping holes makes a scan of a log cost
// its data, not its size. Filesystems without SEEK_DATA: off.
func (w *window) nextData(off int64) int64 {
	d, err := unix.Seek(int(w.f.Fd()), off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return w.size
	case err != nil || d < off:
		return off
	}
	return min(d, w.size)
}

// Why a scan of a log stopped.
const (
	stopEOF   = "end of file" // the last entry ends exactly at the end of the file
	stopZeros = "zeros"       // the data ends and zeros follow
	stopBad   = "bad entry"   // an entry does not check out
	stopCut   = "cut short"   // the file ends inside an entry
	stopShort = "header cut"  // shorter than the 20-byte file header
	stopRead  = "unreadable"  // I/O error
)

// entryAt decodes the entry at off: its length, or why it is not an entry.
// strict adds the checks used to find entries after damage (a key of this
// store, userMeta 0), so random bytes are not taken for one.
func entryAt(w *window, off int64, strict bool) (n int64, why string) {
	h := w.at(off, maxEntryHeader)
	if len(h) < 3 {
		if allZero(h) {
			return 0, stopZeros
		}
		return 0, stopCut
	}
	if h[0] == 0 && h[1] == 0 && h[2] == 0 {
		return 0, stopZeros
	}
	if strict && (h[1] != 0 || h[0]&^0xCF != 0) {
		return 0, "bad header"
	}
	klen, c1 := binary.Uvarint(h[2:])
	if c1 <= 0 {
		return 0, "bad header"
	}
	vlen, c2 := binary.Uvarint(h[2+c1:])
	if c2 <= 0 {
		if len(h) < maxEntryHeader {
			return 0, stopCut
		}
		return 0, "bad header"
	}
	_, c3 := binary.Uvarint(h[2+c1+c2:])
	if c3 <= 0 {
		if len(h) < maxEntryHeader {
			return 0, stopCut
		}
		return 0, "bad header"
	}
	hlen := int64(2 + c1 + c2 + c3)
	if klen == 0 || klen > 1<<16 || vlen > 1<<31 {
		return 0, "bad header (impossible lengths)"
	}
	if strict && klen < 9 {
		return 0, "bad header"
	}
	total := hlen + int64(klen) + int64(vlen) + 4
	if off+total > w.size {
		// The entry runs past the end of the file: cut short, unless all
		// that follows its header is zeros (a torn header).
		for p := w.nextData(off + hlen); p < w.size; p = w.nextData(p) {
			b := w.at(p, 1<<20)
			if !allZero(b) {
				return 0, stopCut
			}
			p += int64(len(b))
		}
		return 0, "bad header (torn)"
	}
	if strict {
		k := w.at(off+hlen, 2)
		if len(k) < 2 {
			return 0, "bad key"
		}
		if w.dec != nil {
			k = w.dec(off, k)
		}
		if !w.opaque && !knownPrefix(k) {
			return 0, "bad key"
		}
	}
	b := w.at(off, int(total))
	if int64(len(b)) < total {
		return 0, stopRead
	}
	if crc32.Checksum(b[:total-4], castagnoli) != binary.BigEndian.Uint32(b[total-4:]) {
		return 0, "checksum mismatch"
	}
	return total, ""
}

func knownPrefix(k []byte) bool {
	switch string(k[:2]) {
	case "a/", "c/", "f/", "h/", "n/", "o/", "m/", "!b":
		return true
	}
	return false
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// LogReport is what a scan found in one log file.
type LogReport struct {
	Name string `json:"name"`
	Kind string `json:"kind"` // "vlog" or "wal"
	Fid  uint64 `json:"fid"`
	Size int64  `json:"size"`
	// KeyID is the data key the file is encrypted with (0: plain).
	KeyID uint64 `json:"key_id,omitempty"`
	// Scanned: read entry by entry (Open scans only the files Badger acts
	// on; store check scans all).
	Scanned bool   `json:"scanned"`
	Entries int    `json:"entries"`
	DataEnd int64  `json:"data_end"` // end of the last good entry before Stop
	Stop    string `json:"stop"`
	// FirstBad is the offset of the first entry that does not check out
	// (-1: none), BadReason why.
	FirstBad  int64  `json:"first_bad"`
	BadReason string `json:"bad_reason,omitempty"`
	// ValidAfter is the first good entry after FirstBad (-1: none), and
	// LastValidEnd the end of the last good entry after it.
	ValidAfter   int64  `json:"valid_after"`
	LastValidEnd int64  `json:"last_valid_end"`
	Verdict      string `json:"verdict"`
}

// scanLog reads a log file entry by entry; keys decrypts the keys of an
// encrypted one.
func scanLog(path string, kind string, fid uint64, keys logKeys) LogReport {
	l := LogReport{Name: baseName(path), Kind: kind, Fid: fid, FirstBad: -1, ValidAfter: -1, LastValidEnd: -1, Scanned: true}
	f, err := os.Open(path)
	if err != nil {
		l.Stop, l.BadReason = stopRead, err.Error()
		return l
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		l.Stop, l.BadReason = stopRead, err.Error()
		return l
	}
	l.Size = st.Size()
	w := &window{f: f, size: l.Size}
	if l.Size < logHeaderSize {
		l.Stop, l.FirstBad, l.BadReason = stopShort, 0, fmt.Sprintf("the file is %d bytes, shorter than its %d-byte header", l.Size, logHeaderSize)
		return l
	}
	var hdr [logHeaderSize]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		l.Stop, l.BadReason = stopRead, err.Error()
		return l
	}
	l.KeyID = binary.BigEndian.Uint64(hdr[:8])
	c, ok := keys.cipher(l.KeyID)
	var dec func(int64, []byte) []byte
	if c != nil {
		iv := hdr[8:logHeaderSize]
		dec = func(off int64, b []byte) []byte { return decryptAt(c, iv, off, b) }
	}
	w.dec, w.opaque = dec, !ok
	off := int64(logHeaderSize)
	l.DataEnd = off
	for {
		if off == l.Size {
			l.Stop = stopEOF
			return l
		}
		n, why := entryAt(w, off, false)
		if w.err != nil {
			l.Stop, l.BadReason = stopRead, w.err.Error()
			return l
		}
		if why == "" {
			l.Entries++
			off += n
			l.DataEnd = off
			continue
		}
		switch why {
		case stopZeros:
			l.Stop = stopZeros
		case stopCut:
			l.Stop, l.FirstBad, l.BadReason = stopCut, off, fmt.Sprintf("the file ends %d bytes into the entry at offset %d", l.Size-off, off)
			return l
		default:
			l.Stop, l.FirstBad, l.BadReason = stopBad, off, why
		}
		break
	}
	// Is anything valid after the stop? Badger would drop it.
	l.resync(f, l.Size, off+1, dec, !ok)
	if l.ValidAfter >= 0 && l.FirstBad < 0 {
		l.FirstBad, l.BadReason = off, "zeros where entries continue"
	}
	return l
}

// resync looks for good entries from off on and records the first and the
// end of the last. It reads through windows of its own.
func (l *LogReport) resync(f *os.File, size, off int64, dec func(int64, []byte) []byte, opaque bool) {
	scan := &window{f: f, size: size}
	v := &window{f: f, size: size, dec: dec, opaque: opaque}
	for off < size {
		if d := scan.nextData(off); d > off {
			off = d // an entry never starts in a hole: its bytes were written
			continue
		}
		chunk := scan.at(off, 1<<20)
		if len(chunk) < 3 {
			return
		}
		found := false
		i := 0
		for i+2 < len(chunk) {
			// Skip zeros fast: an entry's third byte (klen) is not zero, so
			// no entry starts in the first six bytes of a zero word.
			if i+8 <= len(chunk) && binary.LittleEndian.Uint64(chunk[i:]) == 0 {
				i += 6
				continue
			}
			if chunk[i+2] == 0 || chunk[i+1] != 0 || chunk[i]&^0xCF != 0 {
				i++
				continue
			}
			p := off + int64(i)
			n, why := entryAt(v, p, true)
			if why != "" {
				i++
				continue
			}
			if l.ValidAfter < 0 {
				l.ValidAfter = p
			}
			for why == "" { // follow the chain of good entries
				p += n
				l.LastValidEnd = p
				n, why = entryAt(v, p, false)
			}
			off, found = p+1, true
			break
		}
		if !found {
			off += int64(max(i, 1))
		}
	}
}

func baseName(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}

// classify decides whether what the scan found is damage. open: Badger
// still writes to this file (the newest value log or the current WAL) and
// the store did not close cleanly, so a torn last write is expected.
func (l *LogReport) classify(open bool) (problem, note string) {
	switch l.Stop {
	case "":
		return "", ""
	case stopEOF:
		l.Verdict = "intact"
		return "", ""
	case stopRead:
		l.Verdict = "unreadable"
		return "cannot be read: " + l.BadReason, ""
	case stopShort:
		l.Verdict = "damaged"
		return "cut short: " + l.BadReason, ""
	case stopCut:
		l.Verdict = "damaged"
		return fmt.Sprintf("cut short: %s (%d good entries before it); Badger would drop that entry and everything the index still expects after it", l.BadReason, l.Entries), ""
	}
	if l.ValidAfter >= 0 {
		if open && l.LastValidEnd-l.FirstBad <= tornWindow {
			l.Verdict = "torn tail (crash)"
			return "", fmt.Sprintf("%s: torn last write after a crash at offset %d (%s; good entries resume at %d within the last write): Badger discards it; it was never acknowledged", l.Name, l.FirstBad, l.BadReason, l.ValidAfter)
		}
		l.Verdict = "damaged in the middle"
		return fmt.Sprintf("%s at offset %d, but good entries follow from offset %d to %d: damage in the middle; Badger would cut the file at %d and lose everything after it", l.BadReason, l.FirstBad, l.ValidAfter, l.LastValidEnd, l.FirstBad), ""
	}
	if l.Stop == stopZeros {
		if open || l.Kind == "wal" {
			l.Verdict = "intact"
			return "", ""
		}
		l.Verdict = "damaged"
		return fmt.Sprintf("zeros from offset %d to the end (%d bytes) in a file Badger had finished: its last entries are gone", l.DataEnd, l.Size-l.DataEnd), ""
	}
	if open {
		l.Verdict = "torn tail (crash)"
		return "", fmt.Sprintf("%s: torn last entry after a crash at offset %d (%s), nothing valid after it: Badger discards it; it was never acknowledged", l.Name, l.FirstBad, l.BadReason)
	}
	l.Verdict = "damaged"
	return fmt.Sprintf("%s at offset %d in a file Badger had finished (%d good entries before it)", l.BadReason, l.FirstBad, l.Entries), ""
}
