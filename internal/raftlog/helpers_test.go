package raftlog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// testKey is the key of the encrypted runs.
var testKey = []byte("0123456789abcdef0123456789abcdef")

// keys runs f without a key, then with testKey.
func keys(t *testing.T, f func(t *testing.T, key []byte)) {
	t.Helper()
	for _, c := range []struct {
		name string
		key  []byte
	}{{"plain", nil}, {"encrypted", testKey}} {
		t.Run(c.name, func(t *testing.T) { f(t, c.key) })
	}
}

// logBuf collects what a Log logs.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *logBuf) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *logBuf) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// openLog opens dir and closes it when the test ends.
func openLog(t *testing.T, dir string, key []byte, segSize int64) *Log {
	t.Helper()
	l, err := Open(dir, Options{Key: key, Logger: quiet(), SegmentSize: segSize})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func closeLog(t *testing.T, l *Log) {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

var epoch = time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)

// entry is the test entry of index i in term term: every field set, sizes
// varying with i, some empty.
func entry(i, term uint64) *raft.Log {
	e := &raft.Log{
		Index:      i,
		Term:       term,
		Type:       raft.LogType(i % 6),
		Data:       bytes.Repeat(fmt.Appendf(nil, "entry %d term %d;", i, term), int(i%7)+1),
		AppendedAt: epoch.Add(time.Duration(i) * time.Millisecond),
	}
	if i%3 == 0 {
		e.Extensions = fmt.Appendf(nil, "ext %d", i)
	}
	if i%10 == 5 {
		e.Data = nil
	}
	if i%11 == 0 {
		e.AppendedAt = time.Time{}
	}
	return e
}

// batch returns the entries from..to of term term.
func batch(from, to, term uint64) []*raft.Log {
	var b []*raft.Log
	for i := from; i <= to; i++ {
		b = append(b, entry(i, term))
	}
	return b
}

// store stores entries from..to of term in batches of n.
func store(t *testing.T, l *Log, from, to, term uint64, n int) {
	t.Helper()
	for i := from; i <= to; i += uint64(n) {
		if err := l.StoreLogs(batch(i, min(i+uint64(n)-1, to), term)); err != nil {
			t.Fatalf("StoreLogs(%d…): %v", i, err)
		}
	}
}

func sameLog(a, b *raft.Log) bool {
	return a.Index == b.Index && a.Term == b.Term && a.Type == b.Type &&
		bytes.Equal(a.Data, b.Data) && bytes.Equal(a.Extensions, b.Extensions) &&
		a.AppendedAt.Equal(b.AppendedAt)
}

// check verifies l holds exactly first..last, with termOf(i) the term
// entry i was stored with.
func check(t *testing.T, l *Log, first, last uint64, termOf func(uint64) uint64) {
	t.Helper()
	f, err := l.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	la, err := l.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	if f != first || la != last {
		t.Fatalf("log holds %d..%d, want %d..%d", f, la, first, last)
	}
	if last == 0 {
		return
	}
	checkEntries(t, l, first, last, termOf)
	for _, i := range []uint64{first - 1, last + 1} {
		var got raft.Log
		if err := l.GetLog(i, &got); !errors.Is(err, raft.ErrLogNotFound) {
			t.Fatalf("GetLog(%d) outside %d..%d: %v, want ErrLogNotFound", i, first, last, err)
		}
	}
}

// checkEntries verifies the entries from..to of l.
func checkEntries(t *testing.T, l *Log, from, to uint64, termOf func(uint64) uint64) {
	t.Helper()
	for i := from; i <= to; i++ {
		var got raft.Log
		if err := l.GetLog(i, &got); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		if want := entry(i, termOf(i)); !sameLog(&got, want) {
			t.Fatalf("GetLog(%d) = %+v, want %+v", i, got, *want)
		}
	}
}

func term(uint64) uint64 { return 1 }

// segFiles lists dir's segment files in order.
func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+segExt))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(m)
	return m
}

// segBytes is the size of dir's segment files together.
func segBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	for _, p := range segFiles(t, dir) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

// copyDir copies the files of src into a new directory.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		in, err := os.Open(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.Create(filepath.Join(dst, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, in); err != nil {
			t.Fatal(err)
		}
		in.Close()
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// recordOffsets returns the offsets of the records of the segment file p
// and its size, read with the package's own index.
func recordOffsets(t *testing.T, dir string, p string) []int64 {
	t.Helper()
	first, ok := parseSegName(filepath.Base(p))
	if !ok {
		t.Fatalf("%s: not a segment", p)
	}
	s, err := openSegment(dir, first)
	if err != nil {
		t.Fatal(err)
	}
	defer s.f.Close()
	l := &Log{log: quiet()}
	if err := l.scan(s, false); err != nil {
		t.Fatal(err)
	}
	return s.offs
}
