package store

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callscribe/callscribe/proto"
)

// withKey runs f with the tests' key set to k.
func withKey(k []byte, f func()) {
	defer func(old []byte) { tkey = old }(tkey)
	tkey = k
	f()
}

// grepDir reports which of needles occur in a file under dir or in the
// state record beside it.
func grepDir(t *testing.T, dir string, needles ...[]byte) []bool {
	t.Helper()
	found := make([]bool, len(needles))
	check := func(p string) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for i, n := range needles {
			found[i] = found[i] || bytes.Contains(b, n)
		}
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		check(p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	check(StatePath(dir))
	return found
}

// A stolen copy of an encrypted store shows no audio and no transcript;
// the same writes without encryption do show (so the test can fail).
func TestNothingReadableAtRest(t *testing.T) {
	text := "the caller reports smoke on the fourth floor of elm street"
	pcm := make([]byte, 640)
	for i := range pcm {
		pcm[i] = byte(i*7 + i/64) // a run no other frame has
	}
	run := pcm[100:164]
	for _, c := range []struct {
		name string
		key  []byte
	}{{"plain", nil}, {"encrypted", testKey}} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "store")
			s, err := Open(dir, Options{Key: c.key})
			if err != nil {
				t.Fatal(err)
			}
			if s.Encrypted() != (c.key != nil) {
				t.Fatalf("Encrypted() = %v", s.Encrypted())
			}
			ctx := context.Background()
			id := callID(1)
			call := &Call{ID: id, Console: "console-1", Channels: []string{"caller"}, Codec: proto.CodecL16, Model: "base", State: StateStreaming, Created: time.Now().UTC(), Decoded: []uint32{0}}
			if err := s.PutCall(ctx, call); err != nil {
				t.Fatal(err)
			}
			if err := s.PutFrames(ctx, id, 0, []Frame{{Seq: 0, Payload: payload(1, 0)}, {Seq: 1, Payload: pcm}}); err != nil {
				t.Fatal(err)
			}
			if err := s.PutFinal(ctx, id, Final{Text: text, NextSeq: 2}, call); err != nil {
				t.Fatal(err)
			}
			// Found while open too (the WAL and the value log being written).
			open := grepDir(t, dir, []byte(text), run)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			closed := grepDir(t, dir, []byte(text), run)
			for i, what := range []string{"the transcript", "the PCM run"} {
				if c.key == nil && !(open[i] && closed[i]) {
					t.Fatalf("%s not found in a plain store (open %v, closed %v): the test cannot fail", what, open[i], closed[i])
				}
				if c.key != nil && (open[i] || closed[i]) {
					t.Fatalf("%s readable in an encrypted store (open %v, closed %v)", what, open[i], closed[i])
				}
			}
		})
	}
}

// An encrypted store opened with another key or none is refused with an
// error naming the key file, not taken for damage, and nothing changes.
func TestWrongKeyRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	withKey(testKey, func() {
		if err := populate(dir, 5, 0); err != nil {
			t.Fatal(err)
		}
	})
	before := hashes(t, dir)
	other := bytes.Repeat([]byte{7}, KeySize)
	for _, c := range []struct {
		name string
		key  []byte
		want string
	}{{"another key", other, "encrypted with another key than the key in /etc/x/store.key"}, {"no key", nil, "its key file /etc/x/store.key is missing"}} {
		t.Run(c.name, func(t *testing.T) {
			s, err := Open(dir, Options{Key: c.key, KeyFile: "/etc/x/store.key"})
			if err == nil {
				s.Close()
				t.Fatal("Open accepted it")
			}
			if !errors.Is(err, ErrWrongKey) || errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open: %v", err)
			}
			t.Log(err)
			sameHashes(t, before, hashes(t, dir))
		})
	}
	if _, err := Check(dir, other, "k"); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("Check with another key: %v", err)
	}
	r, err := Check(dir, nil, "")
	if err != nil || !r.Intact() || !r.Encrypted || r.Counts != nil {
		t.Fatalf("Check without the key: %v %+v", err, r)
	}
	r, err = Check(dir, testKey, "")
	if err != nil || !r.Intact() || !r.Encrypted || r.Counts == nil || r.Counts.Calls != 5 {
		t.Fatalf("Check with the key: %v %+v", err, r)
	}
	sameHashes(t, before, hashes(t, dir))
}

// A store written before encryption opens as it is when a key is given.
func TestPlainStoreOpensWithKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	if err := populate(dir, 5, 0); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, Options{Key: testKey, KeyFile: "store.key"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Encrypted() {
		t.Fatal("a plain store reports encrypted")
	}
	verifyCalls(t, s, 5, 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if e, err := EncryptionOf(dir); err != nil || e != Plain {
		t.Fatalf("EncryptionOf: %v %v", e, err)
	}
	if r, err := Check(dir, testKey, ""); err != nil || !r.Intact() || r.Encrypted || r.Counts == nil || r.Counts.Calls != 5 {
		t.Fatalf("Check with a key: %v %+v", err, r)
	}
}

// After a rotation the store opens with the new key only and reads back
// whole; running the rotation again (interrupted before the key file was
// replaced) succeeds; a store in use is not rotated.
func TestRotateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	withKey(testKey, func() {
		if err := populate(dir, 20, 0); err != nil {
			t.Fatal(err)
		}
	})
	newKey := bytes.Repeat([]byte{0xA5}, KeySize)
	s, err := Open(dir, Options{Key: testKey})
	if err != nil {
		t.Fatal(err)
	}
	if err := RotateKey(dir, testKey, newKey, ""); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("RotateKey of a store in use: %v", err)
	}
	s.Close()
	if err := RotateKey(dir, bytes.Repeat([]byte{1}, KeySize), newKey, "x"); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("RotateKey with a wrong old key: %v", err)
	}
	for range 2 {
		if err := RotateKey(dir, testKey, newKey, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Open(dir, Options{Key: testKey}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("Open with the old key after rotation: %v", err)
	}
	s, err = Open(dir, Options{Key: newKey})
	if err != nil {
		t.Fatal(err)
	}
	verifyCalls(t, s, 20, 0)
	if err := writeCalls(s, 5, 20); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := Check(dir, newKey, "")
	if err != nil || !r.Intact() || r.Counts.Calls != 25 {
		t.Fatalf("Check after rotation: %v %+v", err, r)
	}
}

// BenchmarkGroupCommit is one 100 ms frame (3200 bytes) per write from 32
// writers, plain and encrypted: what encryption costs the group commit.
func BenchmarkGroupCommit(b *testing.B) {
	for _, c := range []struct {
		name string
		key  []byte
	}{{"plain", nil}, {"encrypted", testKey}} {
		b.Run(c.name, func(b *testing.B) {
			var commits, took int64
			s, err := Open(filepath.Join(b.TempDir(), "store"), Options{Key: c.key, OnCommit: func(_, _ int, d time.Duration) {
				commits++
				took += int64(d)
			}})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			pcm := payload(1, 1)
			pcm = append(append(append(append(pcm, pcm...), pcm...), pcm...), pcm...) // 3200 bytes
			var seq atomic.Uint32
			b.SetParallelism(16) // 32 writers on 2 CPUs
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				id := callID(int(seq.Add(1 << 20)))
				n := uint32(0)
				for pb.Next() {
					if err := s.PutFrames(context.Background(), id, 0, []Frame{{Seq: n, Payload: pcm}}); err != nil {
						b.Error(err)
						return
					}
					n++
				}
			})
			b.StopTimer()
			if commits > 0 {
				b.ReportMetric(float64(took)/float64(commits)/1e3, "µs/commit")
				b.ReportMetric(float64(b.N)/float64(commits), "writes/commit")
			}
		})
	}
}

// An encrypted store whose key registry is gone is damage (Badger would
// start a new registry and fail on every file), refused with nothing
// changed, not opened as a plain store.
func TestMissingKeyRegistryIsDamage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	withKey(testKey, func() {
		if err := populate(dir, 5, 0); err != nil {
			t.Fatal(err)
		}
	})
	if err := os.Remove(filepath.Join(dir, "KEYREGISTRY")); err != nil {
		t.Fatal(err)
	}
	before := hashes(t, dir)
	s, err := Open(dir, Options{Key: testKey})
	if err == nil {
		s.Close()
		t.Fatal("Open accepted it")
	}
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "KEYREGISTRY") {
		t.Fatalf("Open: %v", err)
	}
	sameHashes(t, before, hashes(t, dir))
	if r, err := Check(dir, testKey, ""); err != nil || r.Intact() {
		t.Fatalf("Check: %v %v", err, r.Problems)
	}
}

// A store from before encryption is rewritten encrypted: everything reads
// back, nothing of it is readable on disk, and the plain copy is left
// aside.
func TestEncryptPlainStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	if err := populate(dir, 30, 0); err != nil {
		t.Fatal(err)
	}
	text := []byte("final of call 17")
	if found := grepDir(t, dir, text); !found[0] {
		t.Fatal("the plain store does not show its transcript: the test cannot fail")
	}
	plain, err := Encrypt(dir, testKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	if found := grepDir(t, dir, text, payload(17, 3)[:64]); found[0] || found[1] {
		t.Fatalf("the encrypted store shows its data: %v", found)
	}
	if e, _ := EncryptionOf(plain); e != Plain {
		t.Fatalf("the plain copy %s: %v", plain, e)
	}
	if _, err := Encrypt(dir, testKey, nil); err == nil || !strings.Contains(err.Error(), "encrypted already") {
		t.Fatalf("Encrypt of an encrypted store: %v", err)
	}
	s, err := Open(dir, Options{Key: testKey})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Encrypted() {
		t.Fatal("not encrypted")
	}
	verifyCalls(t, s, 30, 0)
	if err := writeCalls(s, 2, 30); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r, err := Check(dir, testKey, ""); err != nil || !r.Intact() || r.Counts.Calls != 32 || r.Counts.Frames != 320 {
		t.Fatalf("Check: %v %+v", err, r)
	}
}
