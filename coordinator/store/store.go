// Package store is the coordinator's durable state in Badger: every audio
// frame, every call record and every final transcript with its engine
// checkpoint. Writes from all calls are group-committed: one goroutine drains
// whatever is pending into one synced transaction, so a frame is acknowledged
// only once it is on disk without paying one sync per frame.
package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/callscribe/callscribe/internal/integrity"
	"github.com/callscribe/callscribe/proto"
	badger "github.com/dgraph-io/badger/v4"
)

// Call states.
const (
	StateOpen      = "open"
	StateStreaming = "streaming"
	StateEnded     = "ended"
	StateFinalised = "finalised"
)

// Call is a call's persistent record.
type Call struct {
	ID        proto.CallID    `json:"id"`
	Console   proto.ConsoleID `json:"console"`
	Channels  []string        `json:"channels"`
	Codec     proto.Codec     `json:"codec"`
	Model     string          `json:"model"`
	State     string          `json:"state"`
	Created   time.Time       `json:"created"`
	Ended     *time.Time      `json:"ended,omitempty"`
	Finalised *time.Time      `json:"finalised,omitempty"`
	// EndFrames is, per channel, the frame count the call ended with.
	EndFrames []uint32 `json:"end_frames,omitempty"`
	// EndReason is set when the coordinator ended the call itself (its
	// console was gone for too long).
	EndReason string `json:"end_reason,omitempty"`
	// Received is, per channel, frames the coordinator received, resent
	// duplicates included (as of the end of the call).
	Received []uint64 `json:"received,omitempty"`
	// Vocabulary is the extra words the call is decoded with (the
	// coordinator's vocabulary when the call opened).
	Vocabulary []proto.Word `json:"vocabulary,omitempty"`
	// Concealed is, per channel, packets the transport lost that are
	// stored as loss markers (WebRTC only; as of the end of the call).
	Concealed []uint64 `json:"concealed,omitempty"`
	// Decoded is, per channel, frames the workers have decoded (as of the
	// last final or the end).
	Decoded []uint32 `json:"decoded"`
	// Resumes counts how often a channel moved to another worker.
	Resumes int `json:"resumes"`
	// AudioDeleted is when retention removed the call's audio.
	AudioDeleted *time.Time `json:"audio_deleted,omitempty"`
	// Complete is, per channel, whether decoding reached the end.
	Complete []bool `json:"complete,omitempty"`
	// Undecodable is, per channel, frames no decoder could read: stored
	// as received, concealed in decoding as lost packets.
	Undecodable []uint64 `json:"undecodable,omitempty"`
	// Skipped is, per channel, frames sent to workers as loss markers
	// because workers failed on them repeatedly.
	Skipped [][]uint32 `json:"skipped,omitempty"`
	// Integrity is, per channel, the frame digest the call ended with
	// (internal/integrity): absent for a call not yet ended.
	Integrity []ChannelIntegrity `json:"integrity,omitempty"`
	// Transcript is the hash of the finals (internal/integrity's
	// TranscriptSum) recorded when the call was finalised.
	Transcript *TranscriptIntegrity `json:"transcript,omitempty"`
}

// TranscriptIntegrity is the hash (hex) of a call's Finals finals.
type TranscriptIntegrity struct {
	Finals int    `json:"finals"`
	SHA256 string `json:"sha256"`
}

// ChannelIntegrity is a channel's frame digest: SHA256 (hex) covers its
// frames 0 to Frames-1.
type ChannelIntegrity struct {
	Frames uint32 `json:"frames"`
	SHA256 string `json:"sha256"`
}

// Final is one persisted final utterance with the checkpoint to resume after it.
type Final struct {
	Channel    int             `json:"channel"`
	Index      uint32          `json:"index"`
	Text       string          `json:"text"`
	Heard      string          `json:"heard,omitempty"` // the engine's text, when a vocabulary pass corrected it
	Start      int64           `json:"start"`           // samples at 16 kHz
	End        int64           `json:"end"`
	NextSeq    uint32          `json:"next_seq"`
	Checkpoint json.RawMessage `json:"checkpoint,omitempty"`
	Worker     string          `json:"worker,omitempty"`
}

// Frame is a stored audio frame.
type Frame struct {
	Seq     uint32
	Capture int64
	Payload []byte
}

// ErrNotFound is returned for a missing call.
var ErrNotFound = errors.New("store: not found")

// ErrClosed is returned by writes to a closed store, and to writes still
// queued when Close stopped the committer (they were not made durable).
var ErrClosed = errors.New("store: closed")

// Badger's geometry. The disk guard's headroom follows from it (disk.go).
const (
	memTableSize   = 32 << 20
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

	closeMu   sync.RWMutex // writers hold it shared while they enqueue
	closed    bool
	closeOnce sync.Once
	closeErr  error

	reqs chan *req
	quit chan struct{}
	done chan struct{}
}

type entry struct {
	key, val []byte
	del      bool
}

type req struct {
	entries   []entry
	audio     bool  // refused first when the disk fills
	vlog, wal int64 // what Badger writes for it to the value log and the WAL
	done      chan error
	// after is a write this one follows: if it failed, this one fails
	// too, unwritten. err is the outcome, set by the committer (the only
	// goroutine that reads it) before done is signalled.
	after *req
	err   error
}

// finish records a write's outcome and wakes its writer.
func (r *req) finish(err error) {
	r.err = err
	r.done <- err
}

func newReq(audio bool, es []entry) *req {
	r := &req{entries: es, audio: audio, done: make(chan error, 1)}
	for _, e := range es {
		k := int64(len(e.key)) + 8 // Badger appends the version
		if !e.del && len(e.val) >= valueThreshold {
			r.vlog += maxEntryHeader + k + int64(len(e.val)) + 4
			r.wal += maxEntryHeader + k + 12 + 4 // the value pointer
		} else {
			r.wal += maxEntryHeader + k + int64(len(e.val)) + 4
		}
	}
	r.wal += 64 // the transaction's end marker
	return r
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
	bo := badgerOptions(dir, log, key)
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
	s := newStore(db, dir, o, log, newDiskGuard(dir, audio, meta, log))
	s.encrypted = len(key) > 0
	if err := s.stamp(rec); err != nil {
		close(s.done) // no committer yet
		s.closeOnce.Do(func() { s.closed = true })
		_ = db.Close()
		return nil, err
	}
	go s.committer()
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
	return &Store{db: db, dir: dir, onCommit: o.OnCommit, log: log, guard: g,
		reqs: make(chan *req, 4096), quit: make(chan struct{}), done: make(chan struct{})}
}

// verifyContents checks what Badger opened against the state record: the
// same store (m/identity), not behind it (newest version), and after a
// clean close as many calls as it had; any of these is an error. It also
// reads every call record, node and outbox entry: one that cannot be read
// or decoded is logged (or, with log nil, returned as damage too), as it
// costs that call, not the store.
func verifyContents(db *badger.DB, dir string, rec *StateRecord, log *slog.Logger) error {
	var probs, values []Problem
	bad := func(file, format string, a ...any) {
		probs = append(probs, Problem{File: file, What: fmt.Sprintf(format, a...)})
	}
	calls := 0
	err := db.View(func(txn *badger.Txn) error {
		var id identity
		it, err := txn.Get(identityKey)
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
			if rec != nil {
				bad("key m/identity", "missing, but the state record says this is store %s with %d calls: Badger opened it as a different or empty store", rec.UUID, rec.Calls)
			}
		case err != nil:
			bad("key m/identity", "unreadable: %v", err)
		default:
			if err := it.Value(func(v []byte) error { return jsonDecode(v, &id) }); err != nil {
				bad("key m/identity", "unreadable: %v", err)
			} else if rec != nil && id.UUID != rec.UUID {
				bad("key m/identity", "this is store %s, but the state record is for store %s", id.UUID, rec.UUID)
			}
		}
		for _, prefix := range []string{"c/", "n/", "o/", "m/"} {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix), PrefetchValues: true, PrefetchSize: 64})
			for it.Rewind(); it.Valid(); it.Next() {
				item := it.Item()
				if prefix == "c/" {
					calls++
				}
				err := item.Value(func(v []byte) error {
					if prefix == "m/" && !bytes.Equal(item.Key(), identityKey) {
						return nil
					}
					var x json.RawMessage
					return jsonDecode(v, &x)
				})
				if err != nil && len(values) < 100 {
					values = append(values, Problem{File: fmt.Sprintf("key %q", item.Key()), What: "unreadable: " + err.Error()})
				}
			}
			it.Close()
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: open %s: verify: %w", dir, err)
	}
	if rec != nil {
		if v := db.MaxVersion(); v < rec.MaxVersion {
			bad(dir, "its newest write is version %d, but the state record says it reached version %d (updated %s): recent writes are missing", v, rec.MaxVersion, rec.Updated.Format(time.RFC3339))
		}
		if rec.Clean && calls < rec.Calls {
			bad(dir, "holds %d call records, but %d when it closed cleanly", calls, rec.Calls)
		}
	}
	if log == nil {
		probs = append(probs, values...)
	}
	for _, v := range values {
		log.Error("store: a value is damaged; run `callscribe store check`", "dir", dir, "key", v.File, "err", v.What)
	}
	if len(probs) > 0 {
		return &DamageError{Dir: dir, Problems: probs}
	}
	return nil
}

// stamp writes the identity (new or adopted store) and m/opened, then the
// state record (not clean: the store is open).
func (s *Store) stamp(rec *StateRecord) error {
	now := time.Now().UTC()
	var id identity
	err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(identityKey)
		if err != nil {
			return err
		}
		return it.Value(func(v []byte) error { return jsonDecode(v, &id) })
	})
	var es []entry
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
		id = identity{UUID: newUUID(), Created: now}
		b, _ := json.Marshal(id)
		es = append(es, entry{key: identityKey, val: b})
		s.log.Info("store: new identity", "dir", s.dir, "uuid", id.UUID)
	case err != nil:
		return fmt.Errorf("store: open %s: identity: %w", s.dir, err)
	}
	if rec == nil && id.Created.Before(now.Add(-time.Minute)) {
		s.log.Warn("store: the state record was missing; writing it again", "dir", s.dir, "path", StatePath(s.dir), "uuid", id.UUID)
	}
	es = append(es, entry{key: openedKey, val: []byte(now.Format(time.RFC3339Nano))})
	r0 := newReq(false, es)
	if err := s.guard.begin().admit(r0); err != nil {
		return err
	}
	if err := s.commit([]*req{r0}); err != nil {
		return fmt.Errorf("store: open %s: %w", s.dir, err)
	}
	r := &StateRecord{UUID: id.UUID, Created: id.Created}
	if rec != nil {
		r.Created = rec.Created
	}
	if err := s.fillState(r); err != nil {
		return err
	}
	if err := writeState(s.dir, r); err != nil {
		return fmt.Errorf("store: open %s: write state record: %w", s.dir, err)
	}
	s.state = r
	return nil
}

// fillState records what the store holds now.
func (s *Store) fillState(r *StateRecord) error {
	r.MaxVersion = s.db.MaxVersion()
	n := 0
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("c/")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store %s: count calls: %w", s.dir, err)
	}
	r.Calls = n
	return fillFiles(s.dir, r, false)
}

// fillFiles records the MANIFEST's size and tables and the value logs.
// closed: Badger has closed, every value log is final.
func fillFiles(dir string, r *StateRecord, closed bool) error {
	live, _, _, _, err := readManifest(filepath.Join(dir, badger.ManifestFilename))
	if err != nil {
		return fmt.Errorf("store %s: read MANIFEST: %w", dir, err)
	}
	fi, err := os.Stat(filepath.Join(dir, badger.ManifestFilename))
	if err != nil {
		return err
	}
	r.ManifestSize = fi.Size()
	r.Tables = r.Tables[:0]
	for id := range live {
		r.Tables = append(r.Tables, id)
	}
	slices.Sort(r.Tables)
	es, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	r.Vlogs = r.Vlogs[:0]
	for _, e := range es {
		if kind, fid := fileKind(e.Name()); kind == "vlog" {
			fi, err := e.Info()
			if err != nil {
				continue
			}
			r.Vlogs = append(r.Vlogs, VlogRecord{Fid: fid, Size: fi.Size(), Complete: true})
		}
	}
	if !closed && len(r.Vlogs) > 0 {
		r.Vlogs[len(r.Vlogs)-1].Complete = false // Badger writes to the newest
	}
	return nil
}

// Close stops the committer (writes still queued fail with ErrClosed),
// closes Badger and records the clean close in the state record.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closeMu.Lock()
		s.closed = true
		s.closeMu.Unlock()
		close(s.quit)
		<-s.done
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

// maxBatch bounds one group commit.
const maxBatch = 8 << 20

func (s *Store) committer() {
	defer close(s.done)
	for {
		var first *req
		select {
		case <-s.quit:
			s.drain()
			return
		default:
		}
		select {
		case first = <-s.reqs:
		case <-s.quit:
			s.drain()
			return
		}
		batch := []*req{first}
		size := first.size()
	drain:
		for size < maxBatch {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
				size += r.size()
			default:
				break drain
			}
		}
		t0 := time.Now()
		ok := make([]*req, 0, len(batch))
		var a *admission
		if s.guard != nil {
			a = s.guard.begin()
		}
		for _, r := range batch {
			// A write's predecessor is settled or in this batch, before it:
			// drop the link once read, so a long run of chained writes (a
			// channel's frames, the audit log) is not all kept alive.
			after := r.after
			r.after = nil
			if after != nil && after.err != nil {
				r.finish(fmt.Errorf("%w: the write it follows failed: %w", ErrPredecessor, after.err))
				continue
			}
			if a != nil {
				if err := a.admit(r); err != nil {
					r.finish(err)
					continue
				}
			}
			ok = append(ok, r)
		}
		if a != nil {
			a.done()
		}
		if len(ok) == 0 {
			continue // all refused: nothing committed
		}
		if len(ok) < len(batch) {
			size = 0
			for _, r := range ok {
				size += r.size()
			}
		}
		err := s.commit(ok)
		took := time.Since(t0)
		for _, r := range ok {
			r.finish(err)
		}
		if s.onCommit != nil {
			s.onCommit(len(ok), size, took)
		}
	}
}

// drain fails the writes still queued when the store closes.
func (s *Store) drain() {
	for {
		select {
		case r := <-s.reqs:
			r.finish(ErrClosed)
		default:
			return
		}
	}
}

func (r *req) size() int {
	n := 0
	for _, e := range r.entries {
		n += len(e.key) + len(e.val) + 16
	}
	return n
}

func (s *Store) commit(batch []*req) error {
	txn := s.db.NewTransaction(true)
	defer func() { txn.Discard() }()
	var txnVlog int64
	next := func() error {
		if err := txn.Commit(); err != nil {
			return fmt.Errorf("store: commit: %w", err)
		}
		txn, txnVlog = s.db.NewTransaction(true), 0
		return nil
	}
	for _, r := range batch {
		for _, e := range r.entries {
			var ev int64
			if !e.del && len(e.val) >= valueThreshold {
				ev = int64(len(e.key) + len(e.val) + maxEntryHeader + 12)
			}
			if txnVlog > 0 && txnVlog+ev > maxTxnVlog {
				if err := next(); err != nil {
					return err
				}
			}
			set := func() error {
				if e.del {
					return txn.Delete(e.key)
				}
				return txn.Set(e.key, e.val)
			}
			err := set()
			if errors.Is(err, badger.ErrTxnTooBig) {
				if err = next(); err != nil {
					return err
				}
				err = set()
			}
			if err != nil {
				return fmt.Errorf("store: set: %w", err)
			}
			txnVlog += ev
		}
	}
	if err := txn.Commit(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	return nil
}

// write queues entries and waits until they are durable. audio: refused
// first when the disk fills.
func (s *Store) write(ctx context.Context, audio bool, es ...entry) error {
	p, err := s.submit(ctx, audio, nil, es)
	if err != nil {
		return err
	}
	// Once queued, the write happens (or Close fails it): wait for its
	// outcome even if ctx ends, so a caller never acks or un-acks on a guess.
	return p.Wait()
}

// submit queues a write without waiting for it.
func (s *Store) submit(ctx context.Context, audio bool, after *Pending, es []entry) (*Pending, error) {
	r := newReq(audio, es)
	if after != nil {
		r.after = after.r
	}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	select {
	case s.reqs <- r:
		return &Pending{r: r}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Pending is a write queued by SubmitFrames.
type Pending struct{ r *req }

// Wait returns the write's outcome once it is known: nil once durable.
func (p *Pending) Wait() error { return <-p.r.done }

// Done delivers the write's outcome once (instead of Wait).
func (p *Pending) Done() <-chan error { return p.r.done }

// ErrPredecessor fails a write whose predecessor (SubmitFrames' after)
// failed: it is not written, so nothing is ever stored past a gap.
var ErrPredecessor = errors.New("store: an earlier write failed")

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

func frameKey(id proto.CallID, ch int, seq uint32) []byte {
	k := make([]byte, 0, len(id)+8)
	k = append(k, "a/"...)
	k = append(k, id...)
	k = append(k, '/', byte(ch))
	return binary.BigEndian.AppendUint32(k, seq)
}

func framePrefix(id proto.CallID, ch int) []byte {
	return append(append([]byte("a/"), id...), '/', byte(ch))
}

func finalKey(id proto.CallID, ch int, idx uint32) []byte {
	k := append(append([]byte("f/"), id...), '/', byte(ch))
	return binary.BigEndian.AppendUint32(k, idx)
}

func finalPrefix(id proto.CallID, ch int) []byte {
	return append(append([]byte("f/"), id...), '/', byte(ch))
}

// digestKey holds a channel's frame digest (integrity.Digest's binary
// encoding), written with every batch of its frames.
func digestKey(id proto.CallID, ch int) []byte {
	return append(append([]byte("h/"), id...), '/', byte(ch))
}

func callKey(id proto.CallID) []byte { return append([]byte("c/"), id...) }

// PutFrames makes frames of one channel durable.
func (s *Store) PutFrames(ctx context.Context, id proto.CallID, ch int, fs []Frame) error {
	return s.write(ctx, true, frameEntries(id, ch, fs)...)
}

// SubmitFrames queues frames of one channel without waiting: Wait on the
// result. With after set (the channel's previous, earlier frames), the
// frames are written only if those were: a channel can have a write in
// every group commit without ever being stored across a gap.
func (s *Store) SubmitFrames(ctx context.Context, id proto.CallID, ch int, fs []Frame, after *Pending) (*Pending, error) {
	return s.submit(ctx, true, after, frameEntries(id, ch, fs))
}

// SubmitFramesDigest is SubmitFrames that also records d, the channel's
// frame digest after these frames, in the same write (its entry last, so a
// commit Badger splits never stores the digest without its frames).
func (s *Store) SubmitFramesDigest(ctx context.Context, id proto.CallID, ch int, fs []Frame, d integrity.Digest, after *Pending) (*Pending, error) {
	b, _ := d.MarshalBinary()
	return s.submit(ctx, true, after, append(frameEntries(id, ch, fs), entry{key: digestKey(id, ch), val: b}))
}

// PutDigest makes a channel's frame digest durable (for a call stored
// before digests were kept, computed once from its frames).
func (s *Store) PutDigest(ctx context.Context, id proto.CallID, ch int, d integrity.Digest) error {
	b, _ := d.MarshalBinary()
	return s.write(ctx, false, entry{key: digestKey(id, ch), val: b})
}

// Digest returns a channel's stored frame digest; ok is false when none is
// stored (a call from before digests were kept, or a channel without
// frames).
func (s *Store) Digest(id proto.CallID, ch int) (d integrity.Digest, ok bool, err error) {
	k := digestKey(id, ch)
	err = s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(k)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		var decErr error
		if err := it.Value(func(v []byte) error { decErr = d.UnmarshalBinary(v); return nil }); err != nil {
			return s.valueErr(k, "frame digest unreadable", err)
		}
		if decErr != nil {
			return s.valueErr(k, "frame digest does not decode", decErr)
		}
		ok = true
		return nil
	})
	return d, ok, err
}

// ComputeDigest computes a channel's frame digest from its stored frames
// (all of them); a gap in the frames is an error.
func (s *Store) ComputeDigest(id proto.CallID, ch int) (integrity.Digest, error) {
	var d integrity.Digest
	err := s.Frames(id, ch, 0, 0, func(f Frame) error { return d.Add(f.Seq, f.Capture, f.Payload) })
	return d, err
}

func frameEntries(id proto.CallID, ch int, fs []Frame) []entry {
	es := make([]entry, len(fs))
	for i, f := range fs {
		v := make([]byte, 8+len(f.Payload))
		binary.BigEndian.PutUint64(v, uint64(f.Capture))
		copy(v[8:], f.Payload)
		es[i] = entry{key: frameKey(id, ch, f.Seq), val: v}
	}
	return es
}

// PutCall makes a call record durable.
func (s *Store) PutCall(ctx context.Context, c *Call) error {
	es, err := callEntries(c)
	if err != nil {
		return err
	}
	return s.write(ctx, false, es...)
}

// SubmitCall queues a call record without waiting for it: it is written
// before any write queued after it (Wait for the outcome).
func (s *Store) SubmitCall(ctx context.Context, c *Call) (*Pending, error) {
	es, err := callEntries(c)
	if err != nil {
		return nil, err
	}
	return s.submit(ctx, false, nil, es)
}

// PutFinal makes a final (and optionally the updated call record) durable in
// one commit.
func (s *Store) PutFinal(ctx context.Context, id proto.CallID, f Final, c *Call) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	es := []entry{{key: finalKey(id, f.Channel, f.Index), val: b}}
	if c != nil {
		ces, err := callEntries(c)
		if err != nil {
			return err
		}
		es = append(es, ces...)
	}
	return s.write(ctx, false, es...)
}

// Call loads a call record.
func (s *Store) Call(id proto.CallID) (*Call, error) {
	var c Call
	err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(callKey(id))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		return s.readJSON(it, "call record", &c)
	})
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// Calls returns every call record, newest first. It holds them all in
// memory at once: the coordinator walks them with EachCall or CallsPage.
func (s *Store) Calls() ([]*Call, error) {
	out, err := scanJSON[*Call](s, "c/", "call record")
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, err
}

// scanJSON decodes every JSON value under prefix, in key order. T may be a
// struct or a pointer to one.
func scanJSON[T any](s *Store, prefix, what string) ([]T, error) {
	var out []T
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var v T // for a pointer type, Unmarshal allocates the value
			if err := s.readJSON(it.Item(), what, &v); err != nil {
				return err
			}
			out = append(out, v)
		}
		return nil
	})
	return out, err
}

// NextSeq returns one past the highest stored sequence number of a channel
// (0 when none is stored).
func (s *Store) NextSeq(id proto.CallID, ch int) (uint32, error) {
	var next uint32
	p := framePrefix(id, ch)
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: p})
		defer it.Close()
		seek := append(append([]byte(nil), p...), 0xFF, 0xFF, 0xFF, 0xFF, 0xFF)
		it.Seek(seek)
		if it.Valid() {
			k := it.Item().Key()
			next = binary.BigEndian.Uint32(k[len(k)-4:]) + 1
		}
		return nil
	})
	return next, err
}

// CountFrames returns how many frames of a channel are stored.
func (s *Store) CountFrames(id proto.CallID, ch int) (uint32, error) {
	var n uint32
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: framePrefix(id, ch)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	return n, err
}

// Frames calls fn for stored frames of a channel from seq from on, in order,
// up to limit frames (0: all). The payload is only valid during fn.
func (s *Store) Frames(id proto.CallID, ch int, from uint32, limit int, fn func(Frame) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: framePrefix(id, ch), PrefetchValues: true, PrefetchSize: 16})
		defer it.Close()
		n := 0
		for it.Seek(frameKey(id, ch, from)); it.Valid(); it.Next() {
			k := it.Item().Key()
			seq := binary.BigEndian.Uint32(k[len(k)-4:])
			var fnErr error
			err := it.Item().Value(func(v []byte) error {
				if len(v) < 8 {
					return s.valueErr(k, fmt.Sprintf("frame %s/%d/%d", id, ch, seq), fmt.Errorf("%d bytes, shorter than its 8-byte capture time", len(v)))
				}
				fnErr = fn(Frame{Seq: seq, Capture: int64(binary.BigEndian.Uint64(v)), Payload: v[8:]})
				return nil
			})
			if err != nil {
				return s.valueErr(it.Item().KeyCopy(nil), fmt.Sprintf("frame %s/%d/%d unreadable", id, ch, seq), err)
			}
			if fnErr != nil {
				return fnErr
			}
			if n++; limit > 0 && n >= limit {
				return nil
			}
		}
		return nil
	})
}

// Finals returns a channel's finals from index from on, in order.
func (s *Store) Finals(id proto.CallID, ch int, from uint32) ([]Final, error) {
	var out []Final
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: finalPrefix(id, ch), PrefetchValues: true})
		defer it.Close()
		for it.Seek(finalKey(id, ch, from)); it.Valid(); it.Next() {
			var f Final
			if err := s.readJSON(it.Item(), "final", &f); err != nil {
				return err
			}
			out = append(out, f)
		}
		return nil
	})
	return out, err
}

// LastFinal returns a channel's last final, or nil.
func (s *Store) LastFinal(id proto.CallID, ch int) (*Final, error) {
	var f *Final
	p := finalPrefix(id, ch)
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: p})
		defer it.Close()
		it.Seek(append(append([]byte(nil), p...), 0xFF, 0xFF, 0xFF, 0xFF, 0xFF))
		if !it.Valid() {
			return nil
		}
		f = &Final{}
		return s.readJSON(it.Item(), "final", f)
	})
	return f, err
}

// Probe writes and reads back a key: the store is writable.
func (s *Store) Probe(ctx context.Context) error {
	v := []byte(time.Now().UTC().Format(time.RFC3339Nano))
	if err := s.write(ctx, false, entry{key: []byte("m/probe"), val: v}); err != nil {
		return err
	}
	return s.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get([]byte("m/probe"))
		return err
	})
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

// Node is what the coordinator remembers about a node across restarts.
type Node struct {
	ID       proto.NodeID `json:"id"`
	Draining bool         `json:"draining"`
	Updated  time.Time    `json:"updated"`
}

func nodeKey(id proto.NodeID) []byte { return append([]byte("n/"), id...) }

// PutNode makes a node record durable.
func (s *Store) PutNode(ctx context.Context, n Node) error {
	b, err := json.Marshal(n)
	if err != nil {
		return err
	}
	return s.write(ctx, false, entry{key: nodeKey(n.ID), val: b})
}

// Nodes returns every node record.
func (s *Store) Nodes() ([]Node, error) {
	return scanJSON[Node](s, "n/", "node record")
}

// deletePrefix deletes every key under prefix in batches of at most 1000
// keys per write (never DropPrefix: it blocks writers) and returns how many
// it deleted. Deletes are writes too (the WAL): they go through the
// committer and its disk guard like metadata.
func (s *Store) deletePrefix(ctx context.Context, prefix []byte) (int, error) {
	total := 0
	for ctx.Err() == nil {
		var keys [][]byte
		err := s.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
			defer it.Close()
			for it.Rewind(); it.Valid() && len(keys) < 1000; it.Next() {
				keys = append(keys, it.Item().KeyCopy(nil))
			}
			return nil
		})
		if err != nil || len(keys) == 0 {
			return total, err
		}
		es := make([]entry, len(keys))
		for i, k := range keys {
			es[i] = entry{key: k, del: true}
		}
		if err := s.write(ctx, false, es...); err != nil {
			return total, fmt.Errorf("store: delete: %w", err)
		}
		total += len(keys)
	}
	return total, ctx.Err()
}

// DeleteAudio removes every audio frame of a call.
func (s *Store) DeleteAudio(ctx context.Context, id proto.CallID) (int, error) {
	return s.deletePrefix(ctx, append(append([]byte("a/"), id...), '/'))
}

// DeleteCall removes a call's finals, frame digests and record, with its
// index key (its audio must be gone).
func (s *Store) DeleteCall(ctx context.Context, id proto.CallID) error {
	es := []entry{{key: callKey(id), del: true}}
	if c, err := s.Call(id); err == nil {
		es = append(es, entry{key: timeKey(id, c.Created), del: true})
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	if _, err := s.deletePrefix(ctx, append(append([]byte("f/"), id...), '/')); err != nil {
		return err
	}
	if _, err := s.deletePrefix(ctx, append(append([]byte("h/"), id...), '/')); err != nil {
		return err
	}
	return s.write(ctx, false, es...)
}

// CollectGarbage rewrites value-log files that are at least half garbage,
// until none is left; it returns how many files were rewritten. A rewrite
// needs room for the live part of a file before the file is deleted: GC
// stops when the disk guard says there is none. GC deletes value-log
// files, so the state record notes that it ran first.
func (s *Store) CollectGarbage() int {
	n := 0
	for {
		if s.guard != nil {
			if err := s.guard.allowGC(); err != nil {
				s.log.Warn("store: value-log GC skipped", "err", err)
				return n
			}
			if err := s.markGC(); err != nil {
				s.log.Warn("store: value-log GC skipped: state record", "err", err)
				return n
			}
		}
		if s.db.RunValueLogGC(0.5) != nil {
			return n
		}
		n++
	}
}

// markGC notes in the state record, once per session, that value-log GC
// runs (it deletes value-log files the record lists).
func (s *Store) markGC() error {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	if s.gcMarked || s.state == nil {
		return nil
	}
	s.closeMu.RLock()
	closed := s.closed
	s.closeMu.RUnlock()
	if closed {
		return ErrClosed
	}
	r := *s.state
	now := time.Now().UTC()
	r.GCSince, r.Clean = &now, false
	if err := writeState(s.dir, &r); err != nil {
		return err
	}
	s.state, s.gcMarked = &r, true
	return nil
}

// OutboxEntry is a finalised call waiting to be exported.
type OutboxEntry struct {
	CallID   proto.CallID `json:"call_id"`
	Enqueued time.Time    `json:"enqueued"`
	Attempts int          `json:"attempts"`
	LastErr  string       `json:"last_error,omitempty"`
}

func outboxKey(id proto.CallID) []byte { return append([]byte("o/"), id...) }

// PutCallExport makes a call record durable and, in the same commit, queues
// it for export: a finalisation is never persisted without its outbox entry.
func (s *Store) PutCallExport(ctx context.Context, c *Call) error {
	es, err := callEntries(c)
	if err != nil {
		return err
	}
	ob, _ := json.Marshal(OutboxEntry{CallID: c.ID, Enqueued: time.Now().UTC()})
	return s.write(ctx, false, append(es, entry{key: outboxKey(c.ID), val: ob})...)
}

// Outbox lists queued exports, oldest first.
func (s *Store) Outbox() ([]OutboxEntry, error) {
	out, err := scanJSON[OutboxEntry](s, "o/", "outbox entry")
	sort.Slice(out, func(i, j int) bool { return out[i].Enqueued.Before(out[j].Enqueued) })
	return out, err
}

// UpdateOutbox records a failed attempt.
func (s *Store) UpdateOutbox(ctx context.Context, e OutboxEntry) error {
	b, _ := json.Marshal(e)
	return s.write(ctx, false, entry{key: outboxKey(e.CallID), val: b})
}

// DoneOutbox removes an exported entry.
func (s *Store) DoneOutbox(id proto.CallID) error {
	return s.write(context.Background(), false, entry{key: outboxKey(id), del: true})
}
