package raftlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

var otherKey = []byte("fedcba9876543210fedcba9876543210")

func TestWrongKey(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, testKey, 0)
	store(t, l, 1, 10, 1, 5)
	closeLog(t, l)
	for _, c := range []struct {
		name string
		key  []byte
		want string
	}{
		{"another key", otherKey, "another key"},
		{"no key", nil, "no key was given"},
	} {
		_, err := Open(dir, Options{Key: c.key, Logger: quiet()})
		if !errors.Is(err, ErrWrongKey) || errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrWrongKey saying %q", c.name, err, c.want)
		}
	}
	if _, err := Open(dir, Options{Key: testKey[:16], Logger: quiet()}); err == nil || !strings.Contains(err.Error(), "16 bytes") {
		t.Errorf("a 16-byte key: %v", err)
	}
	l = openLog(t, dir, testKey, 0)
	check(t, l, 1, 10, term)
}

// A plain log opened with a key: the entries already written stay
// readable, new ones are encrypted, and the key is required from then on.
func TestPlainLogGetsAKey(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, nil, 0)
	store(t, l, 1, 10, 1, 5)
	closeLog(t, l)
	l, w, err := openLogged(dir, testKey)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(w.String(), "without encryption") {
		t.Fatalf("logged %q", w.String())
	}
	store(t, l, 11, 20, 1, 5)
	check(t, l, 1, 20, term)
	closeLog(t, l)
	if _, err := Open(dir, Options{Logger: quiet()}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("Open without the key: %v", err)
	}
	l = openLog(t, dir, testKey, 0)
	check(t, l, 1, 20, term)
}

// With a key, no file holds an entry's Data or Extensions; without one
// they do (the control, which shows the search finds them).
func TestEncryptedAtRest(t *testing.T) {
	data := []byte("CALLSCRIBE-PLAINTEXT-DATA-MARKER")
	ext := []byte("CALLSCRIBE-PLAINTEXT-EXTENSIONS")
	for _, c := range []struct {
		name  string
		key   []byte
		found bool
	}{{"encrypted", testKey, false}, {"control: plain", nil, true}} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			l := openLog(t, dir, c.key, 4096)
			var b []*raft.Log
			for i := uint64(1); i <= 100; i++ {
				b = append(b, &raft.Log{Index: i, Term: 1, Data: data, Extensions: ext})
			}
			if err := l.StoreLogs(b); err != nil {
				t.Fatal(err)
			}
			if err := l.SetUint64([]byte("CurrentTerm"), 7); err != nil {
				t.Fatal(err)
			}
			closeLog(t, l)
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			var inData, inExt int
			for _, e := range ents {
				f, err := os.ReadFile(filepath.Join(dir, e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				inData += bytes.Count(f, data)
				inExt += bytes.Count(f, ext)
			}
			if found := inData > 0 || inExt > 0; found != c.found {
				t.Fatalf("Data found %d times, Extensions %d times in %d files", inData, inExt, len(ents))
			}
			if c.found && (inData != 100 || inExt != 100) {
				t.Fatalf("control: Data found %d times, Extensions %d times, want 100", inData, inExt)
			}
		})
	}
}

// A record's header is its additional data: one rewritten with intact
// checksums (another term) fails authentication.
func TestHeaderAuthenticated(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, testKey, 0)
	store(t, l, 1, 10, 1, 10)
	closeLog(t, l)
	p := segFiles(t, dir)[0]
	offs := recordOffsets(t, dir, p)
	rewrite(t, p, func(b []byte) []byte {
		r := b[offs[4]:offs[5]] // entry 5
		binary.LittleEndian.PutUint64(r[offTerm:], 9)
		sealRecord(r)
		return b
	})
	l = openLog(t, dir, testKey, 0) // the checksums hold
	var e raft.Log
	if err := l.GetLog(5, &e); !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "authentication") {
		t.Fatalf("GetLog of a record with another term: %v", err)
	}
	checkEntries(t, l, 6, 10, term)
}
