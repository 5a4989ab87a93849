package raftlog

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"slices"
)

// load reads the meta and stable files and verifies the segments (Open).
func (l *Log) load() error {
	ents, err := os.ReadDir(l.dir)
	if err != nil {
		return fmt.Errorf("raftlog: %w", err)
	}
	var names []string
	var firsts []uint64
	for _, e := range ents {
		names = append(names, e.Name())
		if n, ok := parseSegName(e.Name()); ok && e.Type().IsRegular() {
			firsts = append(firsts, n)
		}
	}
	slices.Sort(firsts)
	if err := removeTemps(l.dir, names); err != nil {
		return err
	}
	m, found, err := readMeta(l.dir)
	if err != nil {
		return err
	}
	if !found && len(firsts) > 0 {
		return fmt.Errorf("raftlog: %s holds segments but no %s file: %w", l.dir, metaFile, ErrDamaged)
	}
	if err := checkKey(l.dir, m, l.crypt); err != nil {
		return err
	}
	if l.stable, err = readStable(l.dir); err != nil {
		return err
	}
	for _, first := range firsts {
		s, err := openSegment(l.dir, first)
		if err != nil {
			return err
		}
		l.segs = append(l.segs, s)
	}
	// Segments wholly below the floor (the next starts at or below it) are
	// what a DeleteRange that crashed after raising it had still to
	// remove: not read, removed below.
	below := 0
	for below+1 < len(l.segs) && l.segs[below+1].first <= m.Floor {
		below++
	}
	for i, s := range l.segs {
		if i < below {
			continue
		}
		if i > below {
			if p := l.segs[i-1]; s.first != p.last()+1 {
				return damaged(s.path, 0, fmt.Sprintf("segment starts at index %d, but %s ends at %d", s.first, p.path, p.last()))
			}
		}
		if err := l.scan(s, i == len(l.segs)-1); err != nil {
			return err
		}
	}
	// Verified: now the changes.
	for len(l.segs) > 0 && (below > 0 || l.segs[0].last() < m.Floor) {
		below--
		s := l.segs[0]
		s.f.Close()
		if err := os.Remove(s.path); err != nil {
			return fmt.Errorf("raftlog: %w", err)
		}
		l.log.Info("raftlog: removed a segment below the log's first index", "file", s.path, "first", m.Floor)
		l.segs = l.segs[1:]
	}
	if l.crypt != nil && m.KeyCheck == "" {
		if found {
			l.log.Warn("raftlog: a log written without encryption is opened with a key: new entries are encrypted; those already written stay plain until compaction removes them", "dir", l.dir)
		}
		m.KeyCheck = l.crypt.check
		found = false
	}
	if !found {
		if err := writeMeta(l.dir, m); err != nil {
			return err
		}
	}
	l.meta = m
	for _, s := range l.segs {
		l.size.Add(s.size)
		if len(s.offs) > 0 && l.last == 0 {
			l.first = max(s.first, m.Floor)
		}
		if len(s.offs) > 0 {
			l.last = s.last()
		}
	}
	return nil
}

// scan verifies the records of s and fills in its offsets and size. A bad
// record is damage unless last (s is the last segment) and it is a torn
// tail (the package comment), which is cut off.
func (l *Log) scan(s *segment, last bool) error {
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("raftlog: %w", err)
	}
	fsize := fi.Size()
	r := bufio.NewReaderSize(io.NewSectionReader(s.f, 0, fsize), 1<<20)
	hdr := make([]byte, headerLen)
	var payload []byte
	var off int64
	var prev header // the last good record
	var why string
	searchFrom := int64(-1) // where to look for later records after a bad one
	for off < fsize {
		searchFrom = off + 1
		if fsize-off < headerLen {
			why = "incomplete header"
			break
		}
		if _, err := io.ReadFull(r, hdr); err != nil {
			return fmt.Errorf("raftlog: read %s: %w", s.path, err)
		}
		h, bad := parseHeader(hdr)
		if bad != "" {
			why = bad
			break
		}
		end := off + headerLen + int64(h.plen)
		if end > fsize {
			why = "incomplete record"
			searchFrom = fsize
			break
		}
		payload = slices.Grow(payload[:0], int(h.plen))[:h.plen]
		if _, err := io.ReadFull(r, payload); err != nil {
			return fmt.Errorf("raftlog: read %s: %w", s.path, err)
		}
		sum := crc32.Update(crc32.Checksum(hdr[offHCRC:], castagnoli), castagnoli, payload)
		if sum != binary.LittleEndian.Uint32(hdr[offCRC:]) {
			why = "bad checksum"
			searchFrom = end
			break
		}
		if want := s.first + uint64(len(s.offs)); h.index != want {
			return damaged(s.path, off, fmt.Sprintf("record holds index %d, want %d", h.index, want))
		}
		s.offs = append(s.offs, off)
		prev = h
		off = end
	}
	s.size = off
	if why == "" {
		return nil
	}
	if !last {
		return damaged(s.path, off, why)
	}
	// The batch the bad record would belong to if it is torn.
	torn := s.first + uint64(len(s.offs))
	if len(s.offs) > 0 && prev.flags&flagBatchEnd == 0 {
		torn = prev.batch
	}
	if at, ok, err := laterBatch(s.f, searchFrom, fsize, torn); err != nil {
		return fmt.Errorf("raftlog: read %s: %w", s.path, err)
	} else if ok {
		return damaged(s.path, off, fmt.Sprintf("%s, and an intact record of a later batch follows at offset %d", why, at))
	}
	if err := s.f.Truncate(off); err != nil {
		return fmt.Errorf("raftlog: cut torn tail of %s: %w", s.path, err)
	}
	if err := fdatasync(s.f); err != nil {
		return fmt.Errorf("raftlog: fdatasync %s: %w", s.path, err)
	}
	l.log.Warn("raftlog: cut off a torn tail (a crash during an append)",
		"file", s.path, "offset", off, "bytes_dropped", fsize-off, "reason", why)
	return nil
}

// laterBatch looks in f[from:size] for an intact record written by
// another batch than torn: proof that what is bad before it was synced,
// so damage rather than a torn tail. It returns that record's offset.
func laterBatch(f *os.File, from, size int64, torn uint64) (int64, bool, error) {
	if from >= size {
		return 0, false, nil
	}
	b := make([]byte, size-from)
	if _, err := f.ReadAt(b, from); err != nil {
		return 0, false, err
	}
	for p := 0; ; {
		i := bytes.Index(b[p:], recordMagic[:])
		if i < 0 {
			return 0, false, nil
		}
		p += i
		h, bad := parseHeader(b[p:])
		if bad != "" || int64(len(b)-p) < headerLen+int64(h.plen) ||
			!checkRecord(b[p:p+headerLen+int(h.plen)]) {
			p++
			continue
		}
		if h.batch != torn {
			return from + int64(p), true, nil
		}
		p += headerLen + int(h.plen)
	}
}
