package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/keys"
	"github.com/callscribe/callscribe/internal/raftlog"
	"github.com/hashicorp/raft"
)

// A new data directory gets a key; a store written without one is left
// plain and gets none; an encrypted store whose key file is gone is
// refused, and no key is made.
func TestStoreKeyOnlyForANewStore(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	log := slog.New(slog.DiscardHandler)
	data := t.TempDir()
	k, path, err := storeKey(data, "", log)
	if err != nil || len(k) != keys.Size || path != filepath.Join(data, "keys", "store.key") {
		t.Fatalf("new: %x %s %v", k, path, err)
	}
	for p, mode := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700 | os.ModeDir} {
		if fi, err := os.Stat(p); err != nil || fi.Mode() != mode {
			t.Fatalf("%s: %v %v", p, fi.Mode(), err)
		}
	}
	s, err := store.Open(filepath.Join(data, "store"), store.Options{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	k2, _, err := storeKey(data, "", log)
	if err != nil || !bytes.Equal(k, k2) {
		t.Fatalf("again: %v", err)
	}
	os.Remove(path)
	if _, _, err := storeKey(data, "", log); !errors.Is(err, store.ErrWrongKey) || !strings.Contains(err.Error(), path) {
		t.Fatalf("key file gone: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a key was made for an encrypted store: %v", err)
	}

	plain, _ := storeWithCalls(t, 2)
	if k, _, err := storeKey(plain, "", log); err != nil || k != nil {
		t.Fatalf("plain store: %x %v", k, err)
	}
	if _, err := os.Stat(keys.DefaultFile(plain)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a key was made for a plain store")
	}

	// systemd's credential wins over the file.
	cred := t.TempDir()
	if err := os.WriteFile(filepath.Join(cred, "store.key"), k, 0o400); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", cred)
	if k3, p, err := storeKey(data, "", log); err != nil || !bytes.Equal(k3, k) || p != filepath.Join(cred, "store.key") {
		t.Fatalf("credential: %s %v", p, err)
	}
}

// store rotate-key: afterwards the key file holds the new key, the store
// opens with it (not the old one) and checks intact.
func TestStoreRotateKeyCommand(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	data := t.TempDir()
	old, path, err := storeKey(data, "", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(filepath.Join(data, "store"), store.Options{Key: old})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	// The cluster log shares the key.
	rl, err := raftlog.Open(filepath.Join(data, "raft", "log"), raftlog.Options{Key: old})
	if err != nil {
		t.Fatal(err)
	}
	if err := rl.StoreLog(&raft.Log{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte("frame")}); err != nil {
		t.Fatal(err)
	}
	rl.Close()
	newFile := filepath.Join(t.TempDir(), "new.key")
	var out, errb bytes.Buffer
	if err := cmdStore(context.Background(), []string{"rotate-key", "--data", data, "--new-key", newFile}, &out, &errb); err != nil {
		t.Fatalf("rotate-key: %v %s", err, errb.String())
	}
	t.Log(out.String())
	nk, err := keys.Read(newFile)
	if err != nil {
		t.Fatal(err)
	}
	if cur, _ := keys.Read(path); !bytes.Equal(cur, nk) || bytes.Equal(nk, old) {
		t.Fatal("the key file does not hold the new key")
	}
	if _, err := store.Open(filepath.Join(data, "store"), store.Options{Key: old}); !errors.Is(err, store.ErrWrongKey) {
		t.Fatalf("old key: %v", err)
	}
	if o, err := runStoreCheck(t, data); err != nil || !strings.Contains(o, "intact") {
		t.Fatalf("check: %v\n%s", err, o)
	}
	rl, err = raftlog.Open(filepath.Join(data, "raft", "log"), raftlog.Options{Key: nk})
	if err != nil {
		t.Fatalf("the cluster log does not open with the new key: %v", err)
	}
	var e raft.Log
	if err := rl.GetLog(1, &e); err != nil || string(e.Data) != "frame" {
		t.Fatalf("the cluster log's entry after rotation: %q %v", e.Data, err)
	}
	rl.Close()
}

// store encrypt: a store from before encryption comes out encrypted with
// a new key file and reads back whole.
func TestStoreEncryptCommand(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	data, storeDir := storeWithCalls(t, 3)
	var out, errb bytes.Buffer
	if err := cmdStore(context.Background(), []string{"encrypt", "--data", data}, &out, &errb); err != nil {
		t.Fatalf("encrypt: %v %s", err, errb.String())
	}
	t.Log(out.String())
	if e, err := store.EncryptionOf(storeDir); err != nil || e != store.Encrypted {
		t.Fatalf("after encrypt: %v %v", e, err)
	}
	o, err := runStoreCheck(t, data)
	if err != nil || !strings.Contains(o, "encrypted at rest: yes") || !strings.Contains(o, "3 calls") {
		t.Fatalf("check: %v\n%s", err, o)
	}
}
