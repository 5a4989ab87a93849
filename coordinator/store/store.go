// Package store is the coordinator's durable state in Badger: every audio
// frame, every call record and every final transcript with its engine
// checkpoint. Writes from all calls are group-committed: one goroutine drains
// whatever is pending into one synced transaction, so a frame is acknowledged
// only once it is on disk without paying one sync per frame.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// Call states.
const (
	StateOpen      = "open"
	StateStreaming = "streaming"
	StateEnded     = "ended"
	StateFinalised = "finalised"
)

// ErrNotFound is returned for a missing call.
var ErrNotFound = errors.New("store: not found")

// ErrClosed is returned by writes to a closed store, and to writes still
// queued when Close stopped the committer (they were not made durable).
var ErrClosed = errors.New("store: closed")

// MemTableSize is Badger's memtable: an arena of this size filled by the
// writes since the last flush, whatever the store holds (a memory budget
// that does not grow with history).
const MemTableSize = 32 << 20

// Badger's geometry. The disk guard's headroom follows from it (disk.go).
const (
	memTableSize   = MemTableSize
	valueThreshold = 64 // audio goes to the value log, not the LSM tree
	// maxTxnVlog caps the value-log bytes of one Badger transaction, so an
	// unsynced write (all a crash can tear) stays small (logscan.go).
	maxTxnVlog = 4 << 20
)

// vlogFileSize is Badger's ValueLogFileSize: 64 MiB, not 128, as the disk
// guard keeps the rest of the current value log free (tests lower it to
// make several files quickly).
var vlogFileSize int64 = 64 << 20

// Options for Open.
type Options struct {
	// InMemory is for unit tests of callers only; the product never sets it.
	InMemory bool
	Logger   *slog.Logger
	// OnCommit, if set, is called after each group commit with how many
	// writes it carried, their bytes, and how long the commit took (Badger's
	// value-log and WAL writes and their syncs). It runs on the committer:
	// it must be quick.
	OnCommit func(writes, bytes int, took time.Duration)
	// DiskReserve is the free space kept beyond what Badger may still
	// allocate before audio frames are refused with ErrDiskFull (0:
	// DefaultDiskReserve; negative: none).
	DiskReserve int64
	// MetaReserve is the same for metadata (call records, finals, nodes,
	// the outbox, deletes), so transcripts of audio already acknowledged
	// can complete once audio is refused (0: DiskReserve/4; negative: none).
	MetaReserve int64
	// Key is the master key the store is encrypted with (KeySize bytes,
	// AES-256). A new store is created encrypted with it; an existing
	// store encrypted with another key is refused with a *KeyError; an
	// existing store written without encryption is opened as it is, with a
	// warning (nil: no encryption, for tests and benchmarks).
	Key []byte
	// KeyFile is where Key came from, named in errors and logs.
	KeyFile string
	// KeyRotation is how long one data key encrypts new data
	// (0: DefaultKeyRotation).
	KeyRotation time.Duration
	// Replicated: the store is the state machine of a replicated log
	// (SetReplicator, Apply), which is the point of durability, so Badger's
	// own writes are not synced (see replicate.go).
	Replicated bool
}

// Store is the durable store.
type Store struct {
	db       *badger.DB
	dir      string
	onCommit func(writes, bytes int, took time.Duration)
	log      *slog.Logger
	guard    *diskGuard // nil in memory
	// encrypted: the store is encrypted at rest.
	encrypted bool

	stateMu  sync.Mutex
	state    *StateRecord // as last written
	gcMarked bool

	audit auditLog

	// repl, once set, makes writes durable through a replicated log.
	repl atomic.Pointer[Replicator]
	// applied is the index of the last log command applied (Apply).
	applied atomic.Uint64
	// apply queues committed log commands for Badger (applier.go).
	apply applier
	// restoreMu is held by Restore, and shared by every read (view).
	restoreMu sync.RWMutex

	closeMu   sync.RWMutex // writers hold it shared while they enqueue
	closed    bool
	closeOnce sync.Once
	closeErr  error

	reqs chan *req
	quit chan struct{}
	done chan struct{}
}

// badgerOptions are the store's Badger options; key is the master key
// (nil: no encryption).
func badgerOptions(dir string, log *slog.Logger, key []byte) badger.Options {
	o := badger.DefaultOptions(dir).
		WithSyncWrites(true).
		WithValueThreshold(valueThreshold).
		WithCompression(0).
		WithBlockCacheSize(0).
		WithMemTableSize(memTableSize).
		WithNumMemtables(3).
		WithNumCompactors(2).
		WithDetectConflicts(false).
		WithValueLogFileSize(vlogFileSize).
		// Every value read checks its entry's CRC: a damaged frame or
		// record is an error naming its key, never silently wrong bytes.
		WithVerifyValueChecksum(true)
	if log != nil {
		o = o.WithLogger(badgerLogger{log})
	}
	if len(key) > 0 {
		o = o.WithEncryptionKey(key).
			WithIndexCacheSize(indexCacheSize).
			WithBlockCacheSize(blockCacheSize).
			WithEncryptionKeyRotationDuration(DefaultKeyRotation)
	}
	return o
}

// Open opens (creating if needed) the store in dir.
//
// Before Badger sees the files, Open checks them read-only (check.go) and
// refuses, with an error wrapping ErrDamaged and nothing changed, a store
// that Badger would "repair" by discarding data: a missing or cut MANIFEST,
// tables missing or not listed, value logs or WALs damaged in the middle or
// cut short, or files that do not match the state record beside the store
// (StatePath). It refuses with ErrDiskFull a filesystem without room for
// Badger to open. After Badger opens, the store's identity, newest version
// and call records are checked against the record (read-only first, when
// nothing needs replaying).
func Open(dir string, o Options) (*Store, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if o.InMemory {
		opts := badgerOptions("", log, nil).WithInMemory(true)
		db, err := badger.Open(opts)
		if err != nil {
			return nil, fmt.Errorf("store: open in memory: %w", err)
		}
		s := newStore(db, "", o, log, nil)
		go s.committer()
		if err := s.loadAuditHead(); err != nil {
			_ = s.Close()
			return nil, err
		}
		return s, nil
	}
	dir = filepath.Clean(dir)
	audio, meta := o.DiskReserve, o.MetaReserve
	if audio == 0 {
		audio = DefaultDiskReserve
	}
	audio = max(audio, 0)
	if meta == 0 {
		meta = audio / 4
	}
	meta = max(meta, 0)

	if len(o.Key) > 0 && len(o.Key) != KeySize {
		return nil, fmt.Errorf("store: open %s: the key in %s is %d bytes, want %d", dir, o.KeyFile, len(o.Key), KeySize)
	}

	unlock, err := lockDir(dir, false)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", dir, err)
	}
	if _, err := os.Stat(restoringPath(dir)); err == nil {
		unlock()
		return nil, fmt.Errorf("store: open %s: %w (%s exists): its contents are incomplete; remove this member's data directory and let it catch up from the cluster again (README, Replacing a coordinator)", dir, ErrRestoreInterrupted, restoringPath(dir))
	}
	// The key first: a wrong one is a *KeyError, never taken for damage.
	enc, err := EncryptionOf(dir)
	if err != nil {
		unlock()
		return nil, fmt.Errorf("store: open %s: %w", dir, err)
	}
	reg, err := openRegistry(dir, o.Key, o.KeyFile)
	if err != nil {
		unlock()
		return nil, err
	}
	key := o.Key
	if enc == Plain {
		key = nil
	}
	rep := inspect(dir, false, true, reg)
	for _, n := range rep.Notes {
		log.Warn("store: "+n, "dir", dir)
	}
	if err := rep.Err(); err != nil {
		unlock()
		return nil, err
	}
	switch {
	case enc == Plain && len(o.Key) > 0:
		log.Warn("store: this store is not encrypted at rest (it was written before encryption was configured); it is opened as it is. See the README, Encryption at rest, to migrate it", "dir", dir, "key_file", o.KeyFile)
	case enc == Plain && o.KeyFile != "":
		log.Warn("store: this store is not encrypted at rest and no key is configured; see the README, Encryption at rest, to migrate it", "dir", dir, "key_file", o.KeyFile)
	}
	if err := checkOpenSpace(dir, meta); err != nil {
		unlock()
		return nil, err
	}
	unlock() // Badger takes the lock itself
	rec := rep.State
	verified := false
	if rec != nil && !hasWAL(rep) {
		// Nothing to replay: check the contents with Badger read-only, so a
		// refusal leaves every byte as it was.
		db, err := badger.Open(badgerOptions(dir, log, key).WithReadOnly(true))
		if err != nil {
			return nil, fmt.Errorf("store: open %s read-only: %w", dir, err)
		}
		err = verifyContents(db, dir, rec, log)
		if cerr := db.Close(); err == nil && cerr != nil {
			return nil, fmt.Errorf("store: open %s read-only: close: %w", dir, cerr)
		}
		if err != nil {
			return nil, err
		}
		verified = true
	}
	bo := badgerOptions(dir, log, key).WithSyncWrites(!o.Replicated)
	if len(key) > 0 && o.KeyRotation > 0 {
		bo = bo.WithEncryptionKeyRotationDuration(o.KeyRotation)
	}
	db, err := badger.Open(bo)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", dir, err)
	}
	if !verified {
		if err := verifyContents(db, dir, rec, log); err != nil {
			_ = db.Close()
			return nil, err
		}
	}
	g := newDiskGuard(dir, audio, meta, log)
	g.replicated = o.Replicated
	s := newStore(db, dir, o, log, g)
	s.encrypted = len(key) > 0
	if err := s.stamp(rec); err != nil {
		close(s.done) // no committer yet
		s.closeOnce.Do(func() { s.closed = true })
		_ = db.Close()
		return nil, err
	}
	go s.committer()
	if err := s.loadApplied(); err != nil {
		_ = s.Close()
		return nil, err
	}
	if err := s.loadAuditHead(); err != nil {
		_ = s.Close()
		return nil, err
	}
	if err := s.indexCalls(context.Background()); err != nil {
		// Only the listing (CallsPage) uses the index: the store works.
		log.Error("store: the call index is incomplete: listings may miss calls until the next open", "dir", dir, "err", err)
	}
	return s, nil
}

func newStore(db *badger.DB, dir string, o Options, log *slog.Logger, g *diskGuard) *Store {
	s := &Store{db: db, dir: dir, onCommit: o.OnCommit, log: log, guard: g,
		reqs: make(chan *req, 4096), quit: make(chan struct{}), done: make(chan struct{})}
	s.apply.init()
	return s
}

// Close stops the committer (writes still queued fail with ErrClosed),
// applies the log commands already handed over, closes Badger and records
// the clean close in the state record.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closeMu.Lock()
		s.closed = true
		s.closeMu.Unlock()
		close(s.quit)
		<-s.done
		s.stopApplier()
		var r *StateRecord
		s.stateMu.Lock()
		defer s.stateMu.Unlock()
		if s.guard != nil && s.state != nil {
			// A last write whose version is the store's newest: no
			// compaction can drop it, so the record's version holds.
			b := []byte(time.Now().UTC().Format(time.RFC3339Nano))
			cl := newReq(false, []entry{{key: closedKey, val: b}})
			if err := s.guard.begin().admit(cl); err == nil {
				if err := s.commit([]*req{cl}); err != nil {
					s.log.Warn("store: close: write m/closed", "err", err)
				}
			}
			r = &StateRecord{UUID: s.state.UUID, Created: s.state.Created, Clean: true}
			if err := s.fillState(r); err != nil {
				s.log.Warn("store: close: state record not updated", "err", err)
				r = nil
			}
		}
		s.closeErr = s.db.Close()
		if s.closeErr != nil || r == nil {
			return
		}
		if err := fillFiles(s.dir, r, true); err != nil {
			s.log.Warn("store: close: state record not updated", "err", err)
			return
		}
		if err := writeState(s.dir, r); err != nil {
			s.log.Warn("store: close: state record not updated", "err", err)
		}
	})
	return s.closeErr
}

// Disk reports the store's disk: free space, what Badger may still need,
// whether audio or metadata is refused, and the refusal counters.
func (s *Store) Disk() DiskStatus {
	if s.guard == nil {
		return DiskStatus{Reason: "in memory", Checked: time.Now()}
	}
	return s.guard.status()
}

// valueErr names the store and the key of a value that cannot be read or
// decoded.
func (s *Store) valueErr(key []byte, what string, err error) error {
	var de *DamageError
	if errors.As(err, &de) {
		return err
	}
	return &DamageError{Dir: s.name(), Problems: []Problem{{File: fmt.Sprintf("key %q", key), What: what + ": " + err.Error()}}, Err: err, Value: true}
}

func (s *Store) name() string {
	if s.dir == "" {
		return "(in memory)"
	}
	return s.dir
}

// jsonDecode is json.Unmarshal.
func jsonDecode(b []byte, v any) error { return json.Unmarshal(b, v) }

// readJSON reads the value of item into v, naming the key on failure.
func (s *Store) readJSON(item *badger.Item, what string, v any) error {
	var decErr error
	err := item.Value(func(b []byte) error {
		decErr = json.Unmarshal(b, v)
		return nil
	})
	if err != nil {
		return s.valueErr(item.KeyCopy(nil), what+" unreadable", err)
	}
	if decErr != nil {
		return s.valueErr(item.KeyCopy(nil), what+" does not decode", decErr)
	}
	return nil
}

type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Error(fmt.Sprintf(f, a...), "component", "badger")
}
func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn(fmt.Sprintf(f, a...), "component", "badger")
}
func (b badgerLogger) Infof(string, ...any)  {}
func (b badgerLogger) Debugf(string, ...any) {}
