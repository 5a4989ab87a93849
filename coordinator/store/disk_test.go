package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callscribe/callscribe/proto"
	"golang.org/x/sys/unix"
)

// tmpfs mounts a tmpfs of size bytes for the test (root only: skipped
// with the reason otherwise) and unmounts it at the end.
func tmpfs(t *testing.T, size int64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (needs root / CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill grows a filler file by step until stop returns true or the
// filesystem refuses (which is a failure: the store must have refused
// first). It returns the filler's size.
func fill(t *testing.T, path string, step int, stop func() bool) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, step)
	for i := range buf {
		buf[i] = byte(i)
	}
	for !stop() {
		if _, err := f.Write(buf); err != nil {
			t.Fatalf("the filesystem filled before the store refused: %v", err)
		}
	}
	fi, _ := f.Stat()
	return fi.Size()
}

func frames(n, seq0 int) []Frame {
	fs := make([]Frame, n)
	for i := range fs {
		fs[i] = Frame{Seq: uint32(seq0 + i), Capture: int64(seq0 + i), Payload: payload(7, seq0+i)[:320]}
	}
	return fs
}

// On a filling disk, audio is refused first (ErrDiskFull, no SIGBUS),
// metadata still goes through down to its own floor, everything written
// reads back, and writes resume by themselves once space returns; Open on a
// full filesystem fails with ErrDiskFull.
func TestDiskFullRefusesAudioThenMetadataAndRecovers(t *testing.T) {
	mnt := tmpfs(t, 384<<20)
	dir := filepath.Join(mnt, "store")
	const audioReserve, metaReserve = 64 << 20, 16 << 20
	s, err := Open(dir, Options{DiskReserve: audioReserve, MetaReserve: metaReserve})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	ctx := context.Background()
	d := s.Disk()
	t.Logf("after open: %+v", d)
	if d.AudioRefused || d.MetaRefused || d.Free == 0 || d.Headroom < uint64(vlogFileSize) {
		t.Fatalf("fresh store: %+v", d)
	}
	if err := writeCalls(s, 20, 0); err != nil {
		t.Fatal(err)
	}

	// Fill until audio is refused: a write every 2 MiB of filler.
	filler := filepath.Join(mnt, "filler")
	seq := 0
	var audioErr error
	fill(t, filler, 2<<20, func() bool {
		audioErr = s.PutFrames(ctx, "live", 0, frames(10, seq))
		if audioErr == nil {
			seq += 10
		}
		return audioErr != nil
	})
	if !errors.Is(audioErr, ErrDiskFull) {
		t.Fatalf("audio refused with %v", audioErr)
	}
	if !strings.Contains(audioErr.Error(), dir) || !strings.Contains(audioErr.Error(), "free") || !strings.Contains(audioErr.Error(), "needed") {
		t.Fatalf("refusal does not say where and how much: %v", audioErr)
	}
	t.Logf("audio refused: %v", audioErr)
	d = s.Disk()
	if !d.AudioRefused || d.MetaRefused || d.RefusedAudio == 0 || d.Reason == "" {
		t.Fatalf("status once audio is refused: %+v", d)
	}
	if d.Free < d.Headroom {
		t.Fatalf("free %d below Badger's headroom %d", d.Free, d.Headroom)
	}

	// Metadata still goes through: finals and call records of the calls
	// already acknowledged, nodes, the probe, deletes.
	for i := range 20 {
		c, err := s.Call(callID(i))
		if err != nil {
			t.Fatal(err)
		}
		c.State = StateFinalised
		if err := s.PutFinal(ctx, c.ID, Final{Channel: 0, Index: 1, Text: "last words", NextSeq: 10}, c); err != nil {
			t.Fatalf("final refused above the metadata floor: %v", err)
		}
		if err := s.PutCallExport(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Probe(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.PutNode(ctx, Node{ID: "n1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.DoneOutbox(callID(0)); err != nil {
		t.Fatal(err)
	}

	// Fill on, to below the metadata floor: metadata is refused too.
	var metaErr error
	fill(t, filler, 1<<20, func() bool {
		metaErr = s.PutNode(ctx, Node{ID: "n2", Updated: time.Now()})
		return metaErr != nil
	})
	if !errors.Is(metaErr, ErrDiskFull) {
		t.Fatalf("metadata refused with %v", metaErr)
	}
	d = s.Disk()
	if !d.MetaRefused || d.RefusedMeta == 0 {
		t.Fatalf("status below the floor: %+v", d)
	}
	if d.Free < d.Headroom {
		t.Fatalf("free %d below Badger's headroom %d", d.Free, d.Headroom)
	}
	t.Logf("metadata refused: %v", metaErr)

	// Everything acknowledged reads back.
	verifyCalls(t, s, 20, 0)
	n, err := s.CountFrames("live", 0)
	if err != nil || n != uint32(seq) {
		t.Fatalf("live: %d frames stored, %d acknowledged (%v)", n, seq, err)
	}
	for i := range 20 {
		if f, err := s.LastFinal(callID(i), 0); err != nil || f.Text != "last words" {
			t.Fatalf("final of call %d: %+v %v", i, f, err)
		}
	}

	// Space back: writes resume without a reopen.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := s.PutFrames(ctx, "live", 0, frames(10, seq)); err != nil {
		t.Fatalf("audio after space came back: %v", err)
	}
	if err := s.PutNode(ctx, Node{ID: "n2"}); err != nil {
		t.Fatal(err)
	}
	if d := s.Disk(); d.AudioRefused || d.MetaRefused {
		t.Fatalf("status after space came back: %+v", d)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Open on a full filesystem: ErrDiskFull, not a crash; then it opens.
	fill(t, filler, 4<<20, func() bool {
		free, _, _ := freeSpace(mnt)
		return free < 48<<20
	})
	s2, err := Open(dir, Options{DiskReserve: audioReserve, MetaReserve: metaReserve})
	if err == nil {
		s2.Close()
		t.Fatal("Open on a full filesystem succeeded")
	}
	if !errors.Is(err, ErrDiskFull) {
		t.Fatalf("Open on a full filesystem: %v", err)
	}
	t.Logf("open refused: %v", err)
	os.Remove(filler)
	s, err = Open(dir, Options{DiskReserve: audioReserve, MetaReserve: metaReserve})
	if err != nil {
		t.Fatal(err)
	}
	verifyCalls(t, s, 20, 0)
}

// Many writers racing a filling disk and then a Close: none crashes, none
// hangs; each write either succeeds, is refused with ErrDiskFull, or fails
// with ErrClosed.
func TestDiskFullConcurrentWritersAndClose(t *testing.T) {
	mnt := tmpfs(t, 320<<20)
	s, err := Open(filepath.Join(mnt, "store"), Options{DiskReserve: 32 << 20, MetaReserve: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[string]int{}
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				if w%4 == 0 {
					err = s.PutNode(context.Background(), Node{ID: proto.NodeID(fmt.Sprint("n", w))})
				} else {
					err = s.PutFrames(context.Background(), proto.CallID(fmt.Sprint("c", w)), 0, frames(20, i*20))
				}
				k := "ok"
				switch {
				case err == nil:
				case errors.Is(err, ErrDiskFull):
					k = "disk full"
				case errors.Is(err, ErrClosed):
					k = "closed"
				default:
					t.Errorf("write: %v", err)
					return
				}
				mu.Lock()
				counts[k]++
				mu.Unlock()
			}
		}()
	}
	fill(t, filepath.Join(mnt, "filler"), 1<<20, func() bool { return s.Disk().MetaRefused })
	time.Sleep(100 * time.Millisecond)
	closed := make(chan error)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close hangs")
	}
	time.Sleep(50 * time.Millisecond)
	close(stop)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("writers hang after Close")
	}
	t.Logf("writes: %v", counts)
	if counts["disk full"] == 0 || counts["closed"] == 0 || counts["ok"] == 0 {
		t.Fatalf("writes: %v", counts)
	}
}

// The guard's cost on the commit path: a commit that measures (stat of
// the directory, the current value log and WAL, statfs), one that reuses a
// measurement younger than measureEvery, and one within a second of Badger
// creating or deleting a file (the directory is listed again).
func BenchmarkDiskGuard(b *testing.B) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.PutFrames(context.Background(), "x", 0, frames(100, 0)); err != nil {
		b.Fatal(err)
	}
	r := newReq(true, []entry{{key: frameKey("x", 0, 1), val: make([]byte, 3208)}})
	time.Sleep(1100 * time.Millisecond) // past the re-listing window after Open's writes
	g := s.guard
	b.Run("measure", func(b *testing.B) {
		for b.Loop() {
			g.mu.Lock()
			g.measured = time.Time{}
			g.mu.Unlock()
			a := g.begin()
			if err := a.admit(r); err != nil {
				b.Fatal(err)
			}
			a.done()
		}
	})
	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			g.mu.Lock()
			g.measured, g.admitted = time.Now(), 0
			g.mu.Unlock()
			a := g.begin()
			if err := a.admit(r); err != nil {
				b.Fatal(err)
			}
			a.done()
		}
	})
	b.Run("relist", func(b *testing.B) {
		for b.Loop() {
			g.mu.Lock()
			g.measured, g.scanned, g.dirMtime = time.Time{}, time.Time{}, unix.Timespec{}
			g.mu.Unlock()
			a := g.begin()
			if err := a.admit(r); err != nil {
				b.Fatal(err)
			}
			a.done()
		}
	})
}
