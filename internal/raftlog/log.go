package raftlog

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
	"golang.org/x/sys/unix"
)

// DefaultSegmentSize is the size a segment reaches before the next batch
// starts a new one, when Options.SegmentSize is 0.
const DefaultSegmentSize = 64 << 20

// lockFile is the name of the file flocked while the log is open.
const lockFile = "LOCK"

// ErrDamaged is wrapped by the error of an Open or GetLog that found a
// record, a segment or a file damaged (not merely cut short by a crash);
// the error names the file and the offset. Open changes nothing then.
var ErrDamaged = errors.New("raftlog: damaged")

// ErrClosed is the error of a call on a closed Log.
var ErrClosed = errors.New("raftlog: closed")

// ErrInUse is wrapped by the error of an Open of a directory another Log
// (in this process or another) holds open.
var ErrInUse = errors.New("raftlog: in use")

// Options for Open.
type Options struct {
	// Key encrypts every entry's Data and Extensions (KeySize bytes,
	// AES-256); nil: no encryption (tests and benchmarks). An encrypted log
	// opened with another key or none is refused with ErrWrongKey. A plain
	// log opened with a key is encrypted from then on: the entries written
	// before stay plain until compaction removes them.
	Key []byte
	// Logger receives warnings (a torn tail cut off); nil: slog.Default().
	Logger *slog.Logger
	// SegmentSize is the size at which a new segment is started
	// (0: DefaultSegmentSize).
	SegmentSize int64
	// OnFailure, if set, is called (once, from the syncing goroutine)
	// when a StoreLogsAsync batch cannot be synced: the log then refuses
	// writes until reopened, and its owner should stop.
	OnFailure func(error)
}

// Log is the raft log and stable store in one directory. Its methods are
// safe for concurrent use; reads (GetLog, FirstIndex, LastIndex) run
// alongside a StoreLogs, which holds no lock they need while it writes
// and syncs.
type Log struct {
	dir     string
	log     *slog.Logger
	crypt   *crypt
	segSize int64
	lockF   *os.File

	// wmu serializes the writers (StoreLogs, DeleteRange, Close); what
	// only writers touch is guarded by it alone.
	wmu    sync.Mutex
	meta   meta   // as last written
	broken error  // a failed change could not be undone: writes refused
	wbuf   []byte // StoreLogs' buffer

	// mu guards what readers see; writers hold wmu too when they change it.
	mu          sync.RWMutex
	segs        []*segment // by first index; the last is the active one
	first, last uint64     // 0, 0: no entries
	closed      bool
	size        atomic.Int64 // bytes of the segments

	stMu   sync.Mutex
	stable map[string][]byte

	// StoreLogsAsync's syncs, counted as started and finished: one is
	// under way while they differ (at most one: only the last batch may be
	// unsynced, as Open's recovery assumes).
	amu               sync.Mutex
	acond             *sync.Cond
	started, finished uint64
	aerr              error // a failed sync: writes refused
	onFail            func(error)

	// Test hooks (nil: the real calls).
	writeAt  func(f *os.File, b []byte, off int64) (int, error)
	datasync func(f *os.File) error
}

var (
	_ raft.LogStore          = (*Log)(nil)
	_ raft.StableStore       = (*Log)(nil)
	_ raft.MonotonicLogStore = (*Log)(nil)
	_ raft.AsyncLogStore     = (*Log)(nil)
)

// Open opens the log in dir, creating the directory and an empty log if
// needed. It verifies every record (see the package comment for what is
// repaired and what is refused with ErrDamaged) and holds an exclusive
// flock on dir/LOCK until Close.
func Open(dir string, o Options) (*Log, error) {
	c, err := newCrypt(o.Key)
	if err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	segSize := o.SegmentSize
	if segSize <= 0 {
		segSize = DefaultSegmentSize
	}
	dir = filepath.Clean(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("raftlog: %w", err)
	}
	lf, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	l := &Log{dir: dir, log: log, crypt: c, segSize: segSize, lockF: lf, onFail: o.OnFailure}
	l.acond = sync.NewCond(&l.amu)
	if err := l.load(); err != nil {
		for _, s := range l.segs {
			s.f.Close()
		}
		lf.Close()
		return nil, err
	}
	return l, nil
}

func lockDir(dir string) (*os.File, error) {
	p := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("raftlog: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("raftlog: %s: %w", dir, ErrInUse)
		}
		return nil, fmt.Errorf("raftlog: lock %s: %w", p, err)
	}
	return f, nil
}

// Close closes the log's files and releases its lock, once a
// StoreLogsAsync sync under way has ended. Further calls return ErrClosed; a second Close nil.
func (l *Log) Close() error {
	l.stMu.Lock()
	defer l.stMu.Unlock()
	l.wmu.Lock()
	defer l.wmu.Unlock()
	_ = l.Synced()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	for _, s := range l.segs {
		if err := s.f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("raftlog: %w", err))
		}
	}
	if err := l.lockF.Close(); err != nil {
		errs = append(errs, fmt.Errorf("raftlog: %w", err))
	}
	return errors.Join(errs...)
}

func (l *Log) isClosed() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.closed
}

// Size returns the bytes on disk of the segments.
func (l *Log) Size() int64 { return l.size.Load() }

// IsMonotonic reports that the log refuses gaps (raft.MonotonicLogStore):
// after restoring a snapshot, raft deletes every entry instead of leaving
// a gap before the next.
func (l *Log) IsMonotonic() bool { return true }

// FirstIndex returns the index of the first entry, 0 for none.
func (l *Log) FirstIndex() (uint64, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return 0, ErrClosed
	}
	return l.first, nil
}

// LastIndex returns the index of the last entry, 0 for none.
func (l *Log) LastIndex() (uint64, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return 0, ErrClosed
	}
	return l.last, nil
}

// GetLog reads the entry of index into out (one pread), checking its
// checksum and, when encrypted, its authentication. An index not held
// returns raft.ErrLogNotFound; a damaged record, an error wrapping
// ErrDamaged. Empty Data or Extensions are read back as nil.
func (l *Log) GetLog(index uint64, out *raft.Log) error {
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return ErrClosed
	}
	if l.last == 0 || index < l.first || index > l.last {
		l.mu.RUnlock()
		return raft.ErrLogNotFound
	}
	s := l.segFor(index)
	off, n := s.span(index)
	rec := make([]byte, n)
	_, err := s.f.ReadAt(rec, off)
	path := s.path
	l.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("raftlog: read %s at offset %d: %w", path, off, err)
	}
	if why := decodeRecord(rec, index, l.crypt, out); why != "" {
		return damaged(path, off, why)
	}
	return nil
}

// segFor returns the segment holding index, which must be in the log.
// Callers hold mu.
func (l *Log) segFor(index uint64) *segment {
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].first > index })
	return l.segs[i-1]
}

func damaged(path string, off int64, why string) error {
	return fmt.Errorf("raftlog: %s at offset %d: %s: %w", path, off, why, ErrDamaged)
}
