package raftlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// pristine stores 1..60 (batches of 4, segments of 2 KiB) in a new
// directory, closes it and returns it with its segment files.
func pristine(t *testing.T, key []byte) (string, []string) {
	t.Helper()
	dir := t.TempDir()
	l := openLog(t, dir, key, 2048)
	store(t, l, 1, 60, 1, 4)
	closeLog(t, l)
	files := segFiles(t, dir)
	if len(files) < 3 {
		t.Fatalf("%d segments, want several", len(files))
	}
	if n := len(recordOffsets(t, dir, files[len(files)-1])); n < 8 {
		t.Fatalf("the last segment holds %d records, want several batches", n)
	}
	return dir, files
}

// openLogged opens dir with a logger writing into the returned buffer.
func openLogged(dir string, key []byte) (*Log, *logBuf, error) {
	w := &logBuf{}
	l, err := Open(dir, Options{Key: key, SegmentSize: 2048, Logger: slog.New(slog.NewTextHandler(w, nil))})
	return l, w, err
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// rewrite applies f to the bytes of the file p.
func rewrite(t *testing.T, p string, f func(b []byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, f(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A crash during the last append: the last segment cut at every byte
// inside its last record. Reopening keeps every earlier record, says what
// it dropped, and the log goes on.
func TestTornTail(t *testing.T) {
	keys(t, func(t *testing.T, key []byte) {
		src, files := pristine(t, key)
		name := filepath.Base(files[len(files)-1])
		offs := recordOffsets(t, src, files[len(files)-1])
		from, size := offs[len(offs)-1], fileSize(t, files[len(files)-1])
		for cut := from; cut < size; cut++ {
			dir := copyDir(t, src)
			p := filepath.Join(dir, name)
			if err := os.Truncate(p, cut); err != nil {
				t.Fatal(err)
			}
			l, w, err := openLogged(dir, key)
			if err != nil {
				t.Fatalf("cut at %d: %v", cut, err)
			}
			check(t, l, 1, 59, term)
			if cut > from {
				msg := w.String()
				if !strings.Contains(msg, "torn tail") || !strings.Contains(msg, p) ||
					!strings.Contains(msg, fmt.Sprintf("bytes_dropped=%d", cut-from)) {
					t.Fatalf("cut at %d: logged %q", cut, msg)
				}
			}
			if got := fileSize(t, p); got != from {
				t.Fatalf("cut at %d: the segment holds %d bytes, want %d", cut, got, from)
			}
			if err := l.StoreLogs(batch(60, 61, 2)); err != nil {
				t.Fatal(err)
			}
			closeLog(t, l)
			l = openLog(t, dir, key, 2048)
			check(t, l, 1, 61, func(i uint64) uint64 { return 1 + i/60 })
			closeLog(t, l)
		}
	})
}

// The last batch's pages reached the disk out of order, or not at all
// though the file grew: its records, not the synced ones, are dropped.
func TestTornBatch(t *testing.T) {
	keys(t, func(t *testing.T, key []byte) {
		src, files := pristine(t, key)
		name := filepath.Base(files[len(files)-1])
		offs := recordOffsets(t, src, files[len(files)-1])
		n := len(offs) // the last batch: the last 4 records, 57..60
		for _, c := range []struct {
			name string
			f    func(b []byte) []byte
			last uint64
		}{
			{"middle record zeroed", func(b []byte) []byte {
				clear(b[offs[n-3]:offs[n-2]]) // 58; 59 and 60 intact
				return b
			}, 57},
			{"first record's header zeroed", func(b []byte) []byte {
				clear(b[offs[n-4] : offs[n-4]+headerLen])
				return b
			}, 56},
			{"grown with zeros", func(b []byte) []byte {
				return append(b, make([]byte, 8192)...)
			}, 60},
		} {
			t.Run(c.name, func(t *testing.T) {
				dir := copyDir(t, src)
				rewrite(t, filepath.Join(dir, name), c.f)
				l, w, err := openLogged(dir, key)
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				check(t, l, 1, c.last, term)
				if !strings.Contains(w.String(), "torn tail") {
					t.Fatalf("logged %q", w.String())
				}
			})
		}
	})
}

// A byte flipped anywhere in a record that is not in the last batch:
// Open refuses with ErrDamaged, naming the file and the record's offset,
// and changes nothing.
func TestDamagedRecord(t *testing.T) {
	keys(t, func(t *testing.T, key []byte) {
		src, files := pristine(t, key)
		for _, c := range []struct {
			name string
			seg  int // in files
			rec  int // in the segment
		}{
			{"earlier segment", 1, 2},
			{"last segment, an earlier batch", len(files) - 1, 0},
		} {
			t.Run(c.name, func(t *testing.T) {
				name := filepath.Base(files[c.seg])
				offs := recordOffsets(t, src, files[c.seg])
				start, end := offs[c.rec], offs[c.rec+1]
				for at := start; at < end; at++ {
					dir := copyDir(t, src)
					p := filepath.Join(dir, name)
					rewrite(t, p, func(b []byte) []byte { b[at] ^= 0xff; return b })
					before := fileSize(t, p)
					_, err := Open(dir, Options{Key: key, Logger: quiet()})
					want := fmt.Sprintf("%s at offset %d", p, start)
					if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), want) {
						t.Fatalf("byte %d of the record at %d flipped: %v, want ErrDamaged naming %q", at-start, start, err, want)
					}
					if fileSize(t, p) != before {
						t.Fatalf("byte %d flipped: the segment was changed", at-start)
					}
				}
			})
		}
	})
}

func TestDamagedFiles(t *testing.T) {
	src, files := pristine(t, nil)
	for _, c := range []struct {
		name, want string
		f          func(dir string)
	}{
		{"segment missing", filepath.Base(files[2]), func(dir string) {
			os.Remove(filepath.Join(dir, filepath.Base(files[1])))
		}},
		{"meta missing", metaFile, func(dir string) {
			os.Remove(filepath.Join(dir, metaFile))
		}},
		{"meta garbled", metaFile, func(dir string) {
			os.WriteFile(filepath.Join(dir, metaFile), []byte("{\"floor\":"), 0o600)
		}},
		{"stable garbled", stableFile, func(dir string) {
			os.WriteFile(filepath.Join(dir, stableFile), []byte("RLS1\x01\x00\x00\x00garbage"), 0o600)
		}},
		{"record of another index", "holds index", func(dir string) {
			// A well-formed record (good checksums) in the wrong place.
			p := filepath.Join(dir, filepath.Base(files[len(files)-1]))
			offs := recordOffsets(t, dir, p)
			rewrite(t, p, func(b []byte) []byte {
				r := b[offs[len(offs)-1]:]
				binary.LittleEndian.PutUint64(r[offIndex:], 99)
				sealRecord(r)
				return b
			})
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := copyDir(t, src)
			c.f(dir)
			_, err := Open(dir, Options{Logger: quiet()})
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open: %v, want ErrDamaged naming %q", err, c.want)
			}
		})
	}
}

// Damage after Open is found by GetLog.
func TestGetLogDamaged(t *testing.T) {
	keys(t, func(t *testing.T, key []byte) {
		dir := t.TempDir()
		l := openLog(t, dir, key, 0)
		store(t, l, 1, 20, 1, 5)
		p := segFiles(t, dir)[0]
		offs := recordOffsets(t, dir, p)
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte{0xee}, offs[9]+headerLen+3); err != nil { // entry 10
			t.Fatal(err)
		}
		f.Close()
		var e raft.Log
		err = l.GetLog(10, &e)
		if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), fmt.Sprintf("%s at offset %d", p, offs[9])) {
			t.Fatalf("GetLog of a damaged record: %v", err)
		}
		checkEntries(t, l, 11, 20, term)
	})
}
