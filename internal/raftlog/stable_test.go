package raftlog

import (
	"bytes"
	"testing"
)

func TestStable(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, testKey, 0)
	// Raft tells a fresh start by this exact text.
	if _, err := l.GetUint64([]byte("CurrentTerm")); err == nil || err.Error() != "not found" {
		t.Fatalf("GetUint64 of a missing key: %v", err)
	}
	if _, err := l.Get([]byte("LastVoteCand")); err == nil || err.Error() != "not found" {
		t.Fatalf("Get of a missing key: %v", err)
	}
	if err := l.SetUint64([]byte("CurrentTerm"), 1<<40+3); err != nil {
		t.Fatal(err)
	}
	if err := l.Set([]byte("LastVoteCand"), []byte("node-2")); err != nil {
		t.Fatal(err)
	}
	if err := l.Set([]byte("empty"), nil); err != nil {
		t.Fatal(err)
	}
	if err := l.SetUint64([]byte("CurrentTerm"), 5); err != nil { // replaced
		t.Fatal(err)
	}
	verify := func(l *Log) {
		t.Helper()
		if v, err := l.GetUint64([]byte("CurrentTerm")); v != 5 || err != nil {
			t.Fatalf("CurrentTerm = %d, %v", v, err)
		}
		if v, err := l.Get([]byte("LastVoteCand")); !bytes.Equal(v, []byte("node-2")) || err != nil {
			t.Fatalf("LastVoteCand = %q, %v", v, err)
		}
		if v, err := l.Get([]byte("empty")); len(v) != 0 || err != nil {
			t.Fatalf("empty = %q, %v", v, err)
		}
		if _, err := l.GetUint64([]byte("LastVoteCand")); err == nil {
			t.Fatal("GetUint64 of a 6-byte value succeeded")
		}
	}
	verify(l)
	closeLog(t, l)
	verify(openLog(t, dir, testKey, 0))
}

func TestStableEncoding(t *testing.T) {
	kv := map[string][]byte{"a": []byte("1"), "": {}, "long key": bytes.Repeat([]byte{7}, 300)}
	b := encodeStable(kv)
	got, ok := decodeStable(b)
	if !ok || len(got) != len(kv) {
		t.Fatalf("decoded %v, %v", got, ok)
	}
	for k, v := range kv {
		if !bytes.Equal(got[k], v) {
			t.Fatalf("%q = %q, want %q", k, got[k], v)
		}
	}
	for i := range b { // every byte matters
		c := bytes.Clone(b)
		c[i] ^= 0x10
		if _, ok := decodeStable(c); ok {
			t.Fatalf("byte %d flipped: decoded", i)
		}
	}
	for n := range len(b) {
		if _, ok := decodeStable(b[:n]); ok {
			t.Fatalf("cut to %d bytes: decoded", n)
		}
	}
}
