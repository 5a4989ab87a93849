package raftlog

import (
	"bytes"
	"errors"
	"testing"

	"github.com/hashicorp/raft"
)

// Rekey moves every entry and the stable store to the new key; the old
// key no longer opens the log.
func TestRekey(t *testing.T) {
	dir := t.TempDir()
	oldKey := bytes.Repeat([]byte{1}, KeySize)
	newKey := bytes.Repeat([]byte{2}, KeySize)
	l := openLog(t, dir, oldKey, 4096)
	store(t, l, 1, 300, 3, 16)
	if err := l.DeleteRange(1, 40); err != nil {
		t.Fatal(err)
	}
	if err := l.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	want := make([]*raft.Log, 0, 260)
	for i := uint64(41); i <= 300; i++ {
		e := new(raft.Log)
		if err := l.GetLog(i, e); err != nil {
			t.Fatal(err)
		}
		want = append(want, e)
	}
	closeLog(t, l)
	if err := Rekey(dir, oldKey, newKey); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{Key: oldKey, Logger: quiet()}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("the old key still opens the log: %v", err)
	}
	l = openLog(t, dir, newKey, 4096)
	defer closeLog(t, l)
	if first, _ := l.FirstIndex(); first != 41 {
		t.Fatalf("first index %d, want 41", first)
	}
	if last, _ := l.LastIndex(); last != 300 {
		t.Fatalf("last index %d, want 300", last)
	}
	for _, w := range want {
		e := new(raft.Log)
		if err := l.GetLog(w.Index, e); err != nil {
			t.Fatal(err)
		}
		if !sameLog(w, e) {
			t.Fatalf("entry %d differs after rekey", w.Index)
		}
	}
	if v, err := l.GetUint64([]byte("CurrentTerm")); err != nil || v != 7 {
		t.Fatalf("CurrentTerm %d, %v", v, err)
	}
}
