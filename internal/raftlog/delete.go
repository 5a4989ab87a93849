package raftlog

import (
	"errors"
	"fmt"
	"os"
	"slices"
)

// DeleteRange deletes the entries min through max, inclusive: a prefix
// (min at or below FirstIndex: raft's compaction after a snapshot), a
// suffix (max at or above LastIndex: raft removing entries that conflict
// with the leader's), or everything (both: raft after restoring a
// snapshot; the next StoreLogs may then start at any index). A range
// holding no entry deletes nothing; one inside the log, leaving a hole, is
// refused.
//
// A prefix is deleted by raising the log's floor in the meta file
// (atomically, synced) and then removing the segments wholly below it;
// should the removal fail, the entries are deleted all the same, the log
// refuses writes until reopened, and Open removes the files. A suffix is deleted by removing the later segments,
// newest first, and cutting the segment holding min at min's record, then
// syncing: a crash part way leaves a shorter log that still ends in a
// suffix of the range, never a hole.
func (l *Log) DeleteRange(min, max uint64) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if err := l.Synced(); err != nil {
		return err
	}
	if err := l.writable(); err != nil {
		return err
	}
	switch {
	case min > max:
		return fmt.Errorf("raftlog: DeleteRange(%d, %d): empty range", min, max)
	case l.last == 0 || max < l.first || min > l.last:
		return nil
	case min <= l.first && max >= l.last:
		return l.deleteAll()
	case min <= l.first:
		return l.deletePrefix(max)
	case max >= l.last:
		return l.deleteSuffix(min)
	}
	return fmt.Errorf("raftlog: DeleteRange(%d, %d) would leave a hole in the log (%d to %d): only a prefix or a suffix can be deleted", min, max, l.first, l.last)
}

// deletePrefix deletes the entries up to max, which is below the last.
func (l *Log) deletePrefix(max uint64) error {
	m := l.meta
	m.Floor = max + 1
	if err := writeMeta(l.dir, m); err != nil {
		return err
	}
	l.meta = m
	l.mu.Lock()
	l.first = max + 1
	k := 0
	for k < len(l.segs) && l.segs[k].last() <= max {
		k++
	}
	gone := slices.Clone(l.segs[:k])
	l.segs = slices.Delete(l.segs, 0, k)
	l.mu.Unlock()
	return l.remove(gone)
}

// deleteAll deletes every entry.
func (l *Log) deleteAll() error {
	m := l.meta
	m.Floor = l.last + 1
	if err := writeMeta(l.dir, m); err != nil {
		return err
	}
	l.meta = m
	l.mu.Lock()
	gone := l.segs
	l.segs = nil
	l.first, l.last = 0, 0
	l.mu.Unlock()
	return l.remove(gone)
}

// remove closes and removes segments below the floor, no longer in
// l.segs, and syncs the directory. Should that fail, the entries are
// deleted all the same (the floor is written), but a file left over could
// clash with a segment written next: the log refuses writes until it is
// reopened, and Open removes the files below the floor.
func (l *Log) remove(gone []*segment) error {
	var errs []error
	for _, s := range gone {
		s.f.Close()
		if err := os.Remove(s.path); err != nil {
			errs = append(errs, fmt.Errorf("raftlog: %w", err))
			continue
		}
		l.size.Add(-s.size)
	}
	if len(gone) > 0 {
		if err := syncDir(l.dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		l.broken = err
		return err
	}
	return nil
}

// deleteSuffix deletes the entries from min on; min is above the first.
func (l *Log) deleteSuffix(min uint64) error {
	l.mu.Lock()
	s := l.segFor(min)
	i := slices.Index(l.segs, s)
	gone := slices.Clone(l.segs[i+1:])
	l.segs = l.segs[:i+1]
	off, _ := s.span(min)
	was := s.size
	s.offs = s.offs[:min-s.first]
	s.size = off
	l.last = min - 1
	l.mu.Unlock()
	l.size.Add(off - was)

	// Newest first: a crash leaves the log a prefix of what it was.
	slices.Reverse(gone)
	for _, g := range gone {
		g.f.Close()
		if err := os.Remove(g.path); err != nil {
			l.broken = fmt.Errorf("raftlog: deleting entries from %d: %w", min, err)
			return l.broken
		}
		l.size.Add(-g.size)
	}
	if len(gone) > 0 {
		if err := syncDir(l.dir); err != nil {
			l.broken = err
			return err
		}
	}
	err := s.f.Truncate(off)
	if err == nil {
		err = fdatasync(s.f)
	}
	if err != nil {
		l.broken = fmt.Errorf("raftlog: cut %s to %d bytes: %w", s.path, off, err)
		return l.broken
	}
	return nil
}
