package cluster

// Snapshots without copies. The state machine is the store (Badger), which
// is already on disk: a snapshot taken for log compaction is a checkpoint,
// Badger synced up to the snapshot's index, and holds no data. Only when a
// member has fallen behind the compacted log (or joins anew) does the
// leader send it the store's contents: Open of a checkpoint writes a backup
// of the live store at that moment to a temporary file and streams it. The
// store it reflects is at or past the checkpoint's index; the receiver
// applies the log after the index and skips what the backup already holds
// (store.Apply). A received snapshot is applied at once (FSM.Restore) and
// then becomes a checkpoint of its own.
//
// Snapshot data on disk (a backup being sent or received) is encrypted with
// a key held only in this process's memory (AES-256-CTR): audio never
// rests there in the clear, and a process that died leaves only data no one
// can read, which the next start deletes.

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

const (
	checkpointMagic = "callscribe-checkpoint"
	metaFile        = "meta.json"
	dataFile        = "data"
	retainSnapshots = 2
)

type snapMeta struct {
	raft.SnapshotMeta
	// Checkpoint: the snapshot is the store itself, synced at Index.
	Checkpoint bool
}

type snapStore struct {
	dir string
	fsm FSM
	log *slog.Logger

	mu   sync.Mutex
	keys map[string][]byte // data snapshots' keys, by ID
}

func newSnapStore(dir string, fsm FSM, log *slog.Logger) (*snapStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: snapshots: %w", err)
	}
	s := &snapStore{dir: dir, fsm: fsm, log: log, keys: map[string][]byte{}}
	// Data left by an earlier process cannot be read (its key is gone).
	es, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("cluster: snapshots: %w", err)
	}
	for _, e := range es {
		m, err := s.readMeta(e.Name())
		if strings.HasSuffix(e.Name(), ".tmp") || strings.HasPrefix(e.Name(), "send-") || (err == nil && !m.Checkpoint) {
			s.log.Info("cluster: removing a snapshot left by an earlier run", "snapshot", e.Name())
			_ = os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
	return s, nil
}

func (s *snapStore) readMeta(id string) (*snapMeta, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, id, metaFile))
	if err != nil {
		return nil, err
	}
	var m snapMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("cluster: snapshot %s: meta: %w", id, err)
	}
	return &m, nil
}

// Create begins a snapshot (a local checkpoint, or one received from the
// leader).
func (s *snapStore) Create(version raft.SnapshotVersion, index, term uint64, conf raft.Configuration, confIndex uint64, _ raft.Transport) (raft.SnapshotSink, error) {
	id := fmt.Sprintf("%d-%d-%d", term, index, time.Now().UnixMilli())
	tmp := filepath.Join(s.dir, id+".tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: snapshot: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(tmp, dataFile), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		_ = os.RemoveAll(tmp)
		return nil, fmt.Errorf("cluster: snapshot: %w", err)
	}
	key, w := newCipherWriter(f)
	return &snapSink{s: s, id: id, tmp: tmp, f: f, key: key, w: bufio.NewWriterSize(w, 1<<20),
		meta: snapMeta{SnapshotMeta: raft.SnapshotMeta{Version: version, ID: id, Index: index, Term: term,
			Configuration: conf, ConfigurationIndex: confIndex}}}, nil
}

// List returns the snapshots, newest first.
func (s *snapStore) List() ([]*raft.SnapshotMeta, error) {
	ms, err := s.list()
	if err != nil {
		return nil, err
	}
	out := make([]*raft.SnapshotMeta, len(ms))
	for i, m := range ms {
		out[i] = &m.SnapshotMeta
	}
	return out, nil
}

func (s *snapStore) list() ([]*snapMeta, error) {
	es, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("cluster: snapshots: %w", err)
	}
	var ms []*snapMeta
	for _, e := range es {
		if !e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") || strings.HasPrefix(e.Name(), "send-") {
			continue
		}
		m, err := s.readMeta(e.Name())
		if err != nil {
			s.log.Warn("cluster: unreadable snapshot skipped", "snapshot", e.Name(), "err", err)
			continue
		}
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b *snapMeta) int {
		if a.Term != b.Term {
			return cmpU(b.Term, a.Term)
		}
		return cmpU(b.Index, a.Index)
	})
	return ms, nil
}

func cmpU(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Open opens a snapshot to send to a member or to restore. A checkpoint
// becomes a backup of the live store, written now.
func (s *snapStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	m, err := s.readMeta(id)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: snapshot %s: %w", id, err)
	}
	if !m.Checkpoint {
		s.mu.Lock()
		key := s.keys[id]
		s.mu.Unlock()
		if key == nil {
			return nil, nil, fmt.Errorf("cluster: snapshot %s: its key is gone", id)
		}
		f, err := os.Open(filepath.Join(s.dir, id, dataFile))
		if err != nil {
			return nil, nil, fmt.Errorf("cluster: snapshot %s: %w", id, err)
		}
		r, err := newCipherReader(f, key)
		if err != nil {
			f.Close()
			return nil, nil, err
		}
		return &m.SnapshotMeta, &snapReader{Reader: bufio.NewReaderSize(r, 1<<20), f: f, id: id}, nil
	}
	// A backup of the store as it is now, at or past the checkpoint.
	dir, err := os.MkdirTemp(s.dir, "send-")
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: snapshot %s: %w", id, err)
	}
	path := filepath.Join(dir, dataFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o600)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("cluster: snapshot %s: %w", id, err)
	}
	fail := func(err error) (*raft.SnapshotMeta, io.ReadCloser, error) {
		f.Close()
		_ = os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("cluster: snapshot %s: %w", id, err)
	}
	t0 := time.Now()
	key, w := newCipherWriter(f)
	cw := &countWriter{w: bufio.NewWriterSize(w, 1<<20)}
	if err := s.fsm.Backup(cw); err != nil {
		return fail(err)
	}
	if err := cw.w.(*bufio.Writer).Flush(); err != nil {
		return fail(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fail(err)
	}
	r, err := newCipherReader(f, key)
	if err != nil {
		return fail(err)
	}
	s.log.Info("cluster: store backed up for a member that fell behind", "snapshot", id, "bytes", cw.n, "took", time.Since(t0).Round(time.Millisecond))
	meta := m.SnapshotMeta
	meta.Size = cw.n
	return &meta, &snapReader{Reader: bufio.NewReaderSize(r, 1<<20), f: f, id: id, remove: dir}, nil
}

// checkpointed turns a restored snapshot into a checkpoint: the store now
// holds its contents, synced.
func (s *snapStore) checkpointed(id string) error {
	m, err := s.readMeta(id)
	if err != nil {
		return err
	}
	m.Checkpoint = true
	m.Size = 0
	if err := writeMeta(filepath.Join(s.dir, id), m); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(s.dir, id, dataFile))
	s.mu.Lock()
	delete(s.keys, id)
	s.mu.Unlock()
	return nil
}

// reap keeps the newest snapshots.
func (s *snapStore) reap() {
	ms, err := s.list()
	if err != nil {
		return
	}
	for _, m := range ms[min(len(ms), retainSnapshots):] {
		if err := os.RemoveAll(filepath.Join(s.dir, m.ID)); err != nil {
			s.log.Warn("cluster: old snapshot not removed", "snapshot", m.ID, "err", err)
		}
		s.mu.Lock()
		delete(s.keys, m.ID)
		s.mu.Unlock()
	}
}

func writeMeta(dir string, m *snapMeta) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, metaFile+".tmp")
	if err := writeSync(tmp, b); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, metaFile)); err != nil {
		return err
	}
	return syncDir(dir)
}

func writeSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

type snapSink struct {
	s          *snapStore
	id, tmp    string
	f          *os.File
	key        []byte
	w          *bufio.Writer
	meta       snapMeta
	checkpoint bool
	closed     bool
}

func (k *snapSink) ID() string { return k.id }

func (k *snapSink) Write(p []byte) (int, error) {
	n, err := k.w.Write(p)
	k.meta.Size += int64(n)
	return n, err
}

func (k *snapSink) Close() error {
	if k.closed {
		return nil
	}
	k.closed = true
	err := k.w.Flush()
	if err == nil {
		err = k.f.Sync()
	}
	if cerr := k.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		k.meta.Checkpoint = k.checkpoint
		err = writeMeta(k.tmp, &k.meta)
	}
	final := filepath.Join(k.s.dir, k.id)
	if err == nil {
		err = os.Rename(k.tmp, final)
	}
	if err == nil {
		err = syncDir(k.s.dir)
	}
	if err != nil {
		_ = os.RemoveAll(k.tmp)
		return fmt.Errorf("cluster: snapshot %s: %w", k.id, err)
	}
	if !k.checkpoint {
		k.s.mu.Lock()
		k.s.keys[k.id] = k.key
		k.s.mu.Unlock()
	}
	k.s.reap()
	return nil
}

func (k *snapSink) Cancel() error {
	if k.closed {
		return nil
	}
	k.closed = true
	k.f.Close()
	return os.RemoveAll(k.tmp)
}

type snapReader struct {
	io.Reader
	f      *os.File
	id     string
	remove string // a temporary backup to delete once read
}

func (r *snapReader) Close() error {
	err := r.f.Close()
	if r.remove != "" {
		_ = os.RemoveAll(r.remove)
	}
	return err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// newCipherWriter encrypts what is written to w with a fresh key (AES-256
// in counter mode, the IV first in the file).
func newCipherWriter(w io.Writer) ([]byte, io.Writer) {
	key := make([]byte, 32)
	iv := make([]byte, aes.BlockSize)
	_, _ = rand.Read(key)
	_, _ = rand.Read(iv)
	b, _ := aes.NewCipher(key)
	return key, &ivWriter{w: w, iv: iv, sw: cipher.StreamWriter{S: cipher.NewCTR(b, iv), W: w}}
}

type ivWriter struct {
	w       io.Writer
	iv      []byte
	written bool
	sw      cipher.StreamWriter
}

func (w *ivWriter) Write(p []byte) (int, error) {
	if !w.written {
		if _, err := w.w.Write(w.iv); err != nil {
			return 0, err
		}
		w.written = true
	}
	return w.sw.Write(p)
}

func newCipherReader(r io.Reader, key []byte) (io.Reader, error) {
	iv := make([]byte, aes.BlockSize)
	if _, err := io.ReadFull(r, iv); err != nil {
		if errors.Is(err, io.EOF) {
			return strings.NewReader(""), nil // nothing was written
		}
		return nil, fmt.Errorf("cluster: snapshot: %w", err)
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.StreamReader{S: cipher.NewCTR(b, iv), R: r}, nil
}
