package raftlog

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"golang.org/x/sys/unix"
)

// StoreLogsAsync: the batch is readable before its sync ends, done reports
// the sync, and the next write waits for it (only the last batch is ever
// unsynced); a reopen finds everything.
func TestStoreLogsAsync(t *testing.T) {
	keys(t, func(t *testing.T, key []byte) {
		dir := t.TempDir()
		l, err := Open(dir, Options{Key: key, Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		syncing := make(chan struct{}, 4)
		l.datasync = func(f *os.File) error {
			syncing <- struct{}{}
			<-release
			return fdatasync(f)
		}
		done := make(chan error, 4)
		if err := l.StoreLogsAsync([]*raft.Log{entry(1, 1), entry(2, 1)}, func(err error) { done <- err }); err != nil {
			t.Fatal(err)
		}
		<-syncing
		var got raft.Log
		if err := l.GetLog(2, &got); err != nil || !sameLog(&got, entry(2, 1)) {
			t.Fatalf("a batch under sync is not readable: %v", err)
		}
		select {
		case err := <-done:
			t.Fatalf("done before the sync ended: %v", err)
		default:
		}
		// Synced waits for it too (a snapshot is kept only after it).
		synced := make(chan error, 1)
		go func() { synced <- l.Synced() }()
		select {
		case err := <-synced:
			t.Fatalf("Synced returned with a batch unsynced: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		// The next batch waits for the sync.
		wrote := make(chan error, 1)
		go func() { wrote <- l.StoreLogsAsync([]*raft.Log{entry(3, 1)}, func(err error) { done <- err }) }()
		select {
		case err := <-wrote:
			t.Fatalf("a second batch went in while the first was unsynced: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		release <- struct{}{}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err := <-synced; err != nil {
			t.Fatal(err)
		}
		if err := <-wrote; err != nil {
			t.Fatal(err)
		}
		<-syncing
		release <- struct{}{}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		closeLog(t, l)
		l2 := openLog(t, dir, key, 0)
		if last, _ := l2.LastIndex(); last != 3 {
			t.Fatalf("last %d after reopen, want 3", last)
		}
	})
}

// A failed asynchronous sync is reported to done and OnFailure, and the
// log refuses writes until reopened.
func TestStoreLogsAsyncSyncFails(t *testing.T) {
	dir := t.TempDir()
	failed := make(chan error, 1)
	l, err := Open(dir, Options{Logger: quiet(), OnFailure: func(err error) { failed <- err }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	store(t, l, 1, 5, 1, 1)
	l.datasync = func(*os.File) error { return unix.EIO }
	done := make(chan error, 1)
	if err := l.StoreLogsAsync([]*raft.Log{entry(6, 1)}, func(err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, unix.EIO) {
		t.Fatalf("done got %v", err)
	}
	if err := <-failed; !errors.Is(err, unix.EIO) {
		t.Fatalf("OnFailure got %v", err)
	}
	if err := l.StoreLogs([]*raft.Log{entry(7, 1)}); !errors.Is(err, unix.EIO) {
		t.Fatalf("a write after a failed sync: %v", err)
	}
	if err := l.DeleteRange(1, 2); !errors.Is(err, unix.EIO) {
		t.Fatalf("a delete after a failed sync: %v", err)
	}
}
