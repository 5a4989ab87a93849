package raftlog

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

func TestRoundTrip(t *testing.T) {
	keys(t, func(t *testing.T, key []byte) {
		dir := t.TempDir()
		l := openLog(t, dir, key, 0)
		check(t, l, 0, 0, term)
		store(t, l, 1, 1, 1, 1) // StoreLogs of one
		if err := l.StoreLog(entry(2, 1)); err != nil {
			t.Fatal(err)
		}
		store(t, l, 3, 100, 1, 16)
		big := entry(101, 2)
		big.Data = make([]byte, 1<<20)
		for i := range big.Data {
			big.Data[i] = byte(i * 7)
		}
		if err := l.StoreLogs([]*raft.Log{big}); err != nil {
			t.Fatal(err)
		}
		var got raft.Log
		if err := l.GetLog(101, &got); err != nil || !sameLog(&got, big) {
			t.Fatalf("GetLog(101): %v, equal %v", err, sameLog(&got, big))
		}
		checkEntries(t, l, 1, 100, term)
		if last, err := l.LastIndex(); last != 101 || err != nil {
			t.Fatalf("LastIndex() = %d, %v", last, err)
		}
		if got, want := l.Size(), segBytes(t, dir); got != want {
			t.Fatalf("Size() = %d, files hold %d", got, want)
		}
		closeLog(t, l)

		l = openLog(t, dir, key, 0)
		checkEntries(t, l, 1, 100, term)
		if err := l.GetLog(101, &got); err != nil || !sameLog(&got, big) {
			t.Fatalf("GetLog(101) after reopen: %v, equal %v", err, sameLog(&got, big))
		}
		if got, want := l.Size(), segBytes(t, dir); got != want {
			t.Fatalf("Size() after reopen = %d, files hold %d", got, want)
		}
	})
}

func TestStoreLogsRefusesGaps(t *testing.T) {
	l := openLog(t, t.TempDir(), nil, 0)
	store(t, l, 10, 19, 1, 5) // an empty log starts anywhere
	for name, b := range map[string][]*raft.Log{
		"gap after last":     batch(21, 22, 1),
		"overlap":            batch(19, 22, 1),
		"gap inside a batch": {entry(20, 1), entry(22, 1)},
		"index 0":            {{Index: 0}},
	} {
		if err := l.StoreLogs(b); err == nil {
			t.Errorf("%s: StoreLogs succeeded", name)
		}
	}
	if err := l.StoreLogs(nil); err != nil {
		t.Fatal(err)
	}
	store(t, l, 20, 22, 1, 3)
	check(t, l, 10, 22, term)
}

func TestRollover(t *testing.T) {
	keys(t, func(t *testing.T, key []byte) {
		dir := t.TempDir()
		l := openLog(t, dir, key, 1024)
		for i, n := uint64(1), 1; i <= 600; n = n%9 + 1 {
			to := min(i+uint64(n)-1, 600)
			store(t, l, i, to, 1, n)
			i = to + 1
		}
		check(t, l, 1, 600, term)
		files := segFiles(t, dir)
		if len(files) < 20 {
			t.Fatalf("%d segments, want many with SegmentSize 1024", len(files))
		}
		if base := filepath.Base(files[0]); base != "00000000000000000001.seg" {
			t.Fatalf("first segment %s", base)
		}
		if got, want := l.Size(), segBytes(t, dir); got != want {
			t.Fatalf("Size() = %d, files hold %d", got, want)
		}
		closeLog(t, l)
		l = openLog(t, dir, key, 1024)
		check(t, l, 1, 600, term)
		store(t, l, 601, 650, 2, 7)
		closeLog(t, l)
		l = openLog(t, dir, key, 1024)
		check(t, l, 1, 650, func(i uint64) uint64 { return 1 + i/601 })
	})
}

func TestDeletePrefix(t *testing.T) {
	keys(t, func(t *testing.T, key []byte) {
		dir := t.TempDir()
		l := openLog(t, dir, key, 2048)
		store(t, l, 1, 300, 1, 4)
		before := len(segFiles(t, dir))
		for _, max := range []uint64{1, 2, 50, 51, 130, 299} {
			first, _ := l.FirstIndex()
			if err := l.DeleteRange(first, max); err != nil {
				t.Fatalf("DeleteRange(%d, %d): %v", first, max, err)
			}
			check(t, l, max+1, 300, term)
			if got, want := l.Size(), segBytes(t, dir); got != want {
				t.Fatalf("Size() = %d, files hold %d", got, want)
			}
			closeLog(t, l)
			l = openLog(t, dir, key, 2048)
			check(t, l, max+1, 300, term)
		}
		if after := len(segFiles(t, dir)); after != 1 || before < 10 {
			t.Fatalf("%d segments before, %d after deleting all but the last entry", before, after)
		}
		// Compaction again below the first index deletes nothing.
		if err := l.DeleteRange(1, 100); err != nil {
			t.Fatal(err)
		}
		check(t, l, 300, 300, term)
		store(t, l, 301, 320, 1, 3)
		check(t, l, 300, 320, term)
	})
}

func TestDeleteSuffix(t *testing.T) {
	keys(t, func(t *testing.T, key []byte) {
		dir := t.TempDir()
		l := openLog(t, dir, key, 2048)
		store(t, l, 1, 300, 1, 4)
		offs := recordOffsets(t, dir, segFiles(t, dir)[3])
		segStart, _ := parseSegName(filepath.Base(segFiles(t, dir)[3]))
		// min inside a segment, at a segment's first record, at the last
		// entry, and beyond the last (nothing).
		mins := []uint64{250, segStart + uint64(len(offs)) - 3, segStart, 100, 100}
		for k, from := range mins {
			last, _ := l.LastIndex()
			to := max(last, from) + uint64(k)
			if err := l.DeleteRange(from, to); err != nil {
				t.Fatalf("DeleteRange(%d, %d): %v", from, to, err)
			}
			want := min(last, from-1)
			check(t, l, 1, want, term)
			if got, want := l.Size(), segBytes(t, dir); got != want {
				t.Fatalf("Size() = %d, files hold %d", got, want)
			}
			closeLog(t, l)
			l = openLog(t, dir, key, 2048)
			check(t, l, 1, want, term)
			// Raft's new leader's entries, of a later term.
			store(t, l, want+1, want+5, 2, 2)
			termOf := func(i uint64) uint64 { return 1 + i/(want+1) }
			check(t, l, 1, want+5, termOf)
			closeLog(t, l)
			l = openLog(t, dir, key, 2048)
			check(t, l, 1, want+5, termOf)
			if err := l.DeleteRange(want+1, want+5); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func TestDeleteAll(t *testing.T) {
	keys(t, func(t *testing.T, key []byte) {
		dir := t.TempDir()
		l := openLog(t, dir, key, 2048)
		store(t, l, 1, 200, 1, 8)
		if err := l.DeleteRange(1, 200); err != nil {
			t.Fatal(err)
		}
		check(t, l, 0, 0, term)
		if n := len(segFiles(t, dir)); n != 0 || l.Size() != 0 {
			t.Fatalf("%d segments, Size %d after deleting everything", n, l.Size())
		}
		closeLog(t, l)
		l = openLog(t, dir, key, 2048)
		check(t, l, 0, 0, term)
		// After a snapshot: on at a later index.
		store(t, l, 1000, 1100, 3, 10)
		check(t, l, 1000, 1100, func(uint64) uint64 { return 3 })
		closeLog(t, l)
		l = openLog(t, dir, key, 2048)
		check(t, l, 1000, 1100, func(uint64) uint64 { return 3 })
		// Everything again, with a max beyond the last (raft's Recover),
		// then on at a lower index than ever deleted.
		if err := l.DeleteRange(0, 5000); err != nil {
			t.Fatal(err)
		}
		store(t, l, 50, 60, 4, 10)
		closeLog(t, l)
		l = openLog(t, dir, key, 2048)
		check(t, l, 50, 60, func(uint64) uint64 { return 4 })
	})
}

func TestDeleteRangeRefusesHole(t *testing.T) {
	l := openLog(t, t.TempDir(), nil, 0)
	store(t, l, 1, 50, 1, 10)
	if err := l.DeleteRange(10, 20); err == nil || !strings.Contains(err.Error(), "hole") {
		t.Fatalf("DeleteRange(10, 20) of 1..50: %v", err)
	}
	if err := l.DeleteRange(20, 10); err == nil {
		t.Fatal("DeleteRange(20, 10) succeeded")
	}
	for _, r := range [][2]uint64{{51, 60}, {0, 0}} { // nothing in range
		if err := l.DeleteRange(r[0], r[1]); err != nil {
			t.Fatalf("DeleteRange(%d, %d): %v", r[0], r[1], err)
		}
	}
	check(t, l, 1, 50, term)
}

// A crash after a prefix DeleteRange raised the floor, before it removed
// the segments: reopening removes them, and reports nothing below it.
func TestFloorAfterCrash(t *testing.T) {
	keys(t, func(t *testing.T, key []byte) {
		dir := t.TempDir()
		l := openLog(t, dir, key, 2048)
		store(t, l, 1, 300, 1, 4)
		m := l.meta
		closeLog(t, l)
		all := copyDir(t, dir)

		m.Floor = 151
		if err := writeMeta(dir, m); err != nil {
			t.Fatal(err)
		}
		// What is below the floor is not read: damage there is moot.
		rewrite(t, segFiles(t, dir)[0], func(b []byte) []byte { b[10] ^= 1; return b })
		before := len(segFiles(t, dir))
		l = openLog(t, dir, key, 2048)
		check(t, l, 151, 300, term)
		if after := len(segFiles(t, dir)); after >= before {
			t.Fatalf("%d segments before, %d after", before, after)
		}
		if got, want := l.Size(), segBytes(t, dir); got != want {
			t.Fatalf("Size() = %d, files hold %d", got, want)
		}

		// DeleteRange of everything: the floor above the last.
		m.Floor = 301
		if err := writeMeta(all, m); err != nil {
			t.Fatal(err)
		}
		l = openLog(t, all, key, 2048)
		check(t, l, 0, 0, term)
		if n := len(segFiles(t, all)); n != 0 {
			t.Fatalf("%d segments left", n)
		}
	})
}

func TestLock(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, nil, 0)
	if _, err := Open(dir, Options{Logger: quiet()}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open: %v, want ErrInUse", err)
	}
	closeLog(t, l)
	l = openLog(t, dir, nil, 0)
	closeLog(t, l)
}

func TestClosed(t *testing.T) {
	l := openLog(t, t.TempDir(), nil, 0)
	store(t, l, 1, 3, 1, 3)
	closeLog(t, l)
	var e raft.Log
	for name, err := range map[string]error{
		"GetLog":      l.GetLog(1, &e),
		"StoreLogs":   l.StoreLogs(batch(4, 4, 1)),
		"DeleteRange": l.DeleteRange(1, 1),
		"Set":         l.Set([]byte("k"), []byte("v")),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v", name, err)
		}
	}
	if _, err := l.LastIndex(); !errors.Is(err, ErrClosed) {
		t.Errorf("LastIndex after Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestLeftoverTempRemoved(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, nil, 0)
	closeLog(t, l)
	p := filepath.Join(dir, tmpPrefix+"stable-123")
	if err := os.WriteFile(p, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	openLog(t, dir, nil, 0)
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left: %v", err)
	}
}
