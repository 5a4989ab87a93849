package raftlog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"
	"golang.org/x/sys/unix"
)

// maxKeptBuf is the largest write buffer StoreLogs keeps for the next call.
const maxKeptBuf = 16 << 20

// StoreLog stores one entry (StoreLogs of one).
func (l *Log) StoreLog(e *raft.Log) error { return l.StoreLogs([]*raft.Log{e}) }

// StoreLogs appends entries, durably, before it returns: one write and one
// fdatasync for the batch. Their indices must follow on from LastIndex
// (any index when the log is empty) without a gap. On a failed write or
// sync the segment is cut back to where the batch began and the log is as
// it was; if that fails too, the log refuses writes until reopened.
func (l *Log) StoreLogs(logs []*raft.Log) error {
	return l.storeLogs(logs, nil)
}

// StoreLogsAsync appends entries as StoreLogs does, and they are readable
// once it returns, but it returns before they are durable: their
// fdatasync runs on another goroutine, and done is called with its
// outcome (raft.AsyncLogStore: a leader sends the entries to its
// followers meanwhile). Only one batch is unsynced at a time: a write
// waits for the sync before it (Synced). A failed sync leaves the log refusing
// writes until reopened (Options.OnFailure is called); Open then treats
// the unsynced batch as the torn tail it may be.
func (l *Log) StoreLogsAsync(logs []*raft.Log, done func(error)) error {
	if len(logs) == 0 {
		done(nil)
		return nil
	}
	return l.storeLogs(logs, done)
}

// storeLogs appends logs and syncs them, before it returns (done nil) or
// after (done called).
func (l *Log) storeLogs(logs []*raft.Log, done func(error)) error {
	if len(logs) == 0 {
		return nil
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if err := l.Synced(); err != nil {
		return err
	}
	if err := l.writable(); err != nil {
		return err
	}
	n := logs[0].Index
	if n == 0 {
		return errors.New("raftlog: StoreLogs: index 0")
	}
	if l.last != 0 && n != l.last+1 {
		return fmt.Errorf("raftlog: StoreLogs: index %d does not follow the last, %d", n, l.last)
	}
	for i, e := range logs {
		if e.Index != n+uint64(i) {
			return fmt.Errorf("raftlog: StoreLogs: index %d after %d in one batch", e.Index, n+uint64(i)-1)
		}
	}
	buf, offs, err := l.encode(logs)
	if err != nil {
		return err
	}
	s, err := l.active(n)
	if err != nil {
		return err
	}
	start := s.size
	if err := l.write(s, buf, start, done == nil); err != nil {
		return l.undo(s, start, err)
	}
	for i := range offs {
		offs[i] += start
	}
	l.mu.Lock()
	s.offs = append(s.offs, offs...)
	s.size = start + int64(len(buf))
	if l.last == 0 {
		l.first = n
	}
	l.last = n + uint64(len(logs)) - 1
	l.mu.Unlock()
	l.size.Add(int64(len(buf)))
	if done != nil {
		l.amu.Lock()
		l.started++
		l.amu.Unlock()
		go l.syncAsync(s, done)
	}
	return nil
}

// syncAsync syncs s for StoreLogsAsync and reports the outcome.
func (l *Log) syncAsync(s *segment, done func(error)) {
	err := l.sync(s.f)
	if err != nil {
		err = fmt.Errorf("raftlog: fdatasync %s: %w", s.path, err)
	}
	done(err)
	l.amu.Lock()
	l.finished++
	if err != nil {
		l.aerr = err
	}
	l.acond.Broadcast()
	l.amu.Unlock()
	if err != nil {
		l.log.Error("raftlog: a batch could not be synced: the log refuses writes until reopened", "err", err)
		if l.onFail != nil {
			l.onFail(err)
		}
	}
}

// Synced returns once every entry stored before it was called is durable
// (a StoreLogsAsync sync under way has ended), with a failed sync's error
// (then writes are refused). Writers call it holding wmu, before they
// change the log; a snapshot of state built from the log calls it before
// it is kept, so the log never ends before a snapshot of it after a crash.
func (l *Log) Synced() error {
	l.amu.Lock()
	defer l.amu.Unlock()
	for want := l.started; l.finished < want; {
		l.acond.Wait()
	}
	if l.aerr != nil {
		return fmt.Errorf("raftlog: refusing writes until reopened after: %w", l.aerr)
	}
	return nil
}

// writable says whether writes may go on. Callers hold wmu.
func (l *Log) writable() error {
	if l.closed {
		return ErrClosed
	}
	if l.broken != nil {
		return fmt.Errorf("raftlog: refusing writes until reopened after: %w", l.broken)
	}
	return nil
}

// encode lays out the records of logs (a batch whose first index is
// logs[0].Index) in l.wbuf and returns it and each record's offset in it.
func (l *Log) encode(logs []*raft.Log) ([]byte, []int64, error) {
	over := l.crypt.overhead()
	total := 0
	for _, e := range logs {
		plen := len(e.Data) + len(e.Extensions) + over
		if plen > maxPayload {
			return nil, nil, fmt.Errorf("raftlog: entry %d: %d bytes, more than the %d a record holds", e.Index, plen, maxPayload)
		}
		total += headerLen + plen
	}
	if cap(l.wbuf) < total {
		l.wbuf = make([]byte, total)
	}
	buf := l.wbuf[:total]
	if cap(l.wbuf) > maxKeptBuf {
		l.wbuf = nil
	}
	var nonces []byte
	if l.crypt != nil {
		var err error
		if nonces, err = l.crypt.nonces(len(logs)); err != nil {
			return nil, nil, err
		}
	}
	offs := make([]int64, len(logs))
	p := 0
	for i, e := range logs {
		plain := len(e.Data) + len(e.Extensions)
		h := header{
			plen:     uint32(plain + over),
			dlen:     uint32(len(e.Data)),
			typ:      uint8(e.Type),
			index:    e.Index,
			term:     e.Term,
			batch:    logs[0].Index,
			appended: e.AppendedAt,
		}
		if i == len(logs)-1 {
			h.flags |= flagBatchEnd
		}
		if l.crypt != nil {
			h.flags |= flagSealed
		}
		rec := buf[p : p+headerLen+int(h.plen)]
		putHeader(rec, &h)
		pl := rec[headerLen:]
		if l.crypt != nil {
			copy(pl[nonceSize:], e.Data)
			copy(pl[nonceSize+len(e.Data):], e.Extensions)
			l.crypt.seal(rec[:headerLen], pl, nonces[i*nonceSize:], plain)
		} else {
			copy(pl, e.Data)
			copy(pl[len(e.Data):], e.Extensions)
		}
		sealRecord(rec)
		offs[i] = int64(p)
		p += len(rec)
	}
	return buf, offs, nil
}

// active returns the segment a batch starting at index n goes to: the
// active one, or a new one (created, the directory synced) when the active
// one is full, or there is none, or it is empty and starts elsewhere (the
// log is empty). Callers hold wmu.
func (l *Log) active(n uint64) (*segment, error) {
	if l.last == 0 && n < l.meta.Floor {
		// An empty log restarting below its floor (after a DeleteRange of
		// everything): lower it first, or reopening would hide the new
		// entries.
		m := l.meta
		m.Floor = n
		if err := writeMeta(l.dir, m); err != nil {
			return nil, err
		}
		l.meta = m
	}
	var s *segment
	if k := len(l.segs); k > 0 {
		s = l.segs[k-1]
	}
	switch {
	case s == nil:
	case len(s.offs) == 0 && s.first != n:
		l.mu.Lock()
		l.segs = l.segs[:len(l.segs)-1]
		l.mu.Unlock()
		s.f.Close()
		if err := os.Remove(s.path); err != nil {
			l.broken = fmt.Errorf("raftlog: %w", err)
			return nil, l.broken
		}
	case len(s.offs) > 0 && s.size >= l.segSize:
	default:
		return s, nil
	}
	p := filepath.Join(l.dir, segName(n))
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("raftlog: new segment: %w", err)
	}
	if err := syncDir(l.dir); err != nil {
		f.Close()
		os.Remove(p)
		return nil, err
	}
	s = &segment{first: n, path: p, f: f}
	l.mu.Lock()
	l.segs = append(l.segs, s)
	l.mu.Unlock()
	return s, nil
}

// write writes buf at off in s, and syncs it if sync.
func (l *Log) write(s *segment, buf []byte, off int64, sync bool) error {
	var n int
	var err error
	if l.writeAt != nil {
		n, err = l.writeAt(s.f, buf, off)
	} else {
		n, err = s.f.WriteAt(buf, off)
	}
	if err == nil && n < len(buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("raftlog: write %s: %w", s.path, err)
	}
	if !sync {
		return nil
	}
	if err := l.sync(s.f); err != nil {
		return fmt.Errorf("raftlog: fdatasync %s: %w", s.path, err)
	}
	return nil
}

// sync is fdatasync, or the test's hook.
func (l *Log) sync(f *os.File) error {
	if l.datasync != nil {
		return l.datasync(f)
	}
	return fdatasync(f)
}

// undo cuts s back to size after a failed write, and returns cause.
func (l *Log) undo(s *segment, size int64, cause error) error {
	err := s.f.Truncate(size)
	if err == nil {
		err = l.sync(s.f)
	}
	if err != nil {
		l.broken = fmt.Errorf("raftlog: cutting %s back to %d bytes after a failed append: %w", s.path, size, err)
		return fmt.Errorf("%w (and %v)", cause, l.broken)
	}
	return cause
}

// fdatasync syncs f's data and the metadata needed to read it (its size),
// not its times.
func fdatasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}
