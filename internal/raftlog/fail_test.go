package raftlog

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"golang.org/x/sys/unix"
)

// state is what a failed StoreLogs must leave as it was.
type state struct {
	first, last uint64
	size, files int64
	segs        int
}

func stateOf(t *testing.T, l *Log) state {
	t.Helper()
	f, _ := l.FirstIndex()
	la, _ := l.LastIndex()
	return state{f, la, l.Size(), segBytes(t, l.dir), len(segFiles(t, l.dir))}
}

// halfWrite writes half of b, as a disk filling up would, then fails.
func halfWrite(f *os.File, b []byte, off int64) (int, error) {
	n, err := f.WriteAt(b[:len(b)/2], off)
	if err != nil {
		return n, err
	}
	return n, unix.ENOSPC
}

func TestFailedStoreLogs(t *testing.T) {
	keys(t, func(t *testing.T, key []byte) {
		for _, c := range []struct {
			name  string
			roll  bool // the batch starts a new segment
			setup func(l *Log)
			want  error
		}{
			{"disk full", false, func(l *Log) { l.writeAt = halfWrite }, unix.ENOSPC},
			{"disk full in a new segment", true, func(l *Log) { l.writeAt = halfWrite }, unix.ENOSPC},
			{"sync fails", false, func(l *Log) {
				l.datasync = func(f *os.File) error {
					l.datasync = nil // once
					return unix.EIO
				}
			}, unix.EIO},
		} {
			t.Run(c.name, func(t *testing.T) {
				dir := t.TempDir()
				l := openLog(t, dir, key, 0)
				store(t, l, 1, 20, 1, 5)
				before := stateOf(t, l)
				if c.roll {
					l.segSize = 1
				}
				c.setup(l)
				err := l.StoreLogs(batch(21, 36, 1))
				if !errors.Is(err, c.want) {
					t.Fatalf("StoreLogs: %v, want %v", err, c.want)
				}
				l.writeAt, l.datasync = nil, nil
				after := stateOf(t, l)
				if c.roll { // the new segment stays, empty
					before.segs++
				}
				if after != before {
					t.Fatalf("after a failed StoreLogs: %+v, before %+v", after, before)
				}
				check(t, l, 1, 20, term)
				closeLog(t, l)
				l = openLog(t, dir, key, 0)
				check(t, l, 1, 20, term)
				store(t, l, 21, 36, 1, 16)
				check(t, l, 1, 36, term)
			})
		}
	})
}

// A failed append that cannot be undone leaves the log refusing writes
// until it is reopened; what was stored before is intact.
func TestBrokenAfterFailedUndo(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, nil, 0)
	store(t, l, 1, 20, 1, 5)
	l.datasync = func(*os.File) error { return unix.EIO }
	if err := l.StoreLogs(batch(21, 25, 1)); !errors.Is(err, unix.EIO) {
		t.Fatalf("StoreLogs: %v", err)
	}
	l.datasync = nil
	for name, err := range map[string]error{
		"StoreLogs":   l.StoreLogs(batch(21, 25, 1)),
		"DeleteRange": l.DeleteRange(1, 5),
	} {
		if err == nil || !strings.Contains(err.Error(), "until reopened") {
			t.Errorf("%s after a failed undo: %v", name, err)
		}
	}
	check(t, l, 1, 20, term)
	closeLog(t, l)
	l = openLog(t, dir, nil, 0)
	check(t, l, 1, 20, term)
	store(t, l, 21, 25, 1, 5)
}

// Raft stores one batch per call: one write and one fdatasync, whatever
// its size, and no fsync of anything else unless a segment is started.
func TestOneSyncPerBatch(t *testing.T) {
	l := openLog(t, t.TempDir(), testKey, 0)
	store(t, l, 1, 1, 1, 1)
	var writes, syncs int
	l.writeAt = func(f *os.File, b []byte, off int64) (int, error) {
		writes++
		return f.WriteAt(b, off)
	}
	l.datasync = func(f *os.File) error {
		syncs++
		return fdatasync(f)
	}
	var b []*raft.Log
	for i := uint64(2); i < 66; i++ {
		b = append(b, &raft.Log{Index: i, Term: 1, Data: make([]byte, 3200)})
	}
	if err := l.StoreLogs(b); err != nil {
		t.Fatal(err)
	}
	if writes != 1 || syncs != 1 {
		t.Fatalf("a batch of %d: %d writes, %d syncs", len(b), writes, syncs)
	}
}
