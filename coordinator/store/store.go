// Package store is the coordinator's durable state in Badger: every audio
// frame, every call record and every final transcript with its engine
// checkpoint. Writes from all calls are group-committed: one goroutine drains
// whatever is pending into one synced transaction, so a frame is acknowledged
// only once it is on disk without paying one sync per frame.
package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

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
}

// Store is the durable store.
type Store struct {
	db       *badger.DB
	onCommit func(writes, bytes int, took time.Duration)
	log      *slog.Logger
	reqs     chan *req
	quit     chan struct{}
	done     chan struct{}
}

type entry struct{ key, val []byte }

type req struct {
	entries []entry
	done    chan error
}

// Open opens (creating if needed) the store in dir.
func Open(dir string, o Options) (*Store, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	opts := badger.DefaultOptions(dir).
		WithSyncWrites(true).
		WithValueThreshold(64). // audio goes to the value log, not the LSM tree
		WithCompression(0).
		WithBlockCacheSize(0).
		WithMemTableSize(32 << 20).
		WithNumMemtables(3).
		WithNumCompactors(2).
		WithDetectConflicts(false).
		WithValueLogFileSize(128 << 20).
		WithLogger(badgerLogger{log}).
		WithInMemory(o.InMemory)
	if o.InMemory {
		opts.Dir, opts.ValueDir = "", ""
	}
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", dir, err)
	}
	s := &Store{db: db, onCommit: o.OnCommit, log: log, reqs: make(chan *req, 4096), quit: make(chan struct{}), done: make(chan struct{})}
	go s.committer()
	return s, nil
}

// Close stops the committer and closes the database.
func (s *Store) Close() error {
	close(s.quit)
	<-s.done
	return s.db.Close()
}

// maxBatch bounds one group commit.
const maxBatch = 8 << 20

func (s *Store) committer() {
	defer close(s.done)
	for {
		var first *req
		select {
		case first = <-s.reqs:
		case <-s.quit:
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
		err := s.commit(batch)
		took := time.Since(t0)
		for _, r := range batch {
			r.done <- err
		}
		if s.onCommit != nil {
			s.onCommit(len(batch), size, took)
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
	for _, r := range batch {
		for _, e := range r.entries {
			err := txn.Set(e.key, e.val)
			if errors.Is(err, badger.ErrTxnTooBig) {
				if err = txn.Commit(); err != nil {
					return fmt.Errorf("store: commit: %w", err)
				}
				txn = s.db.NewTransaction(true)
				err = txn.Set(e.key, e.val)
			}
			if err != nil {
				return fmt.Errorf("store: set: %w", err)
			}
		}
	}
	if err := txn.Commit(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	return nil
}

// write queues entries and waits until they are durable.
func (s *Store) write(ctx context.Context, es ...entry) error {
	r := &req{entries: es, done: make(chan error, 1)}
	select {
	case s.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.quit:
		return errors.New("store: closed")
	}
	// Once queued, the write happens: wait for its outcome even if ctx ends,
	// so a caller never acks or un-acks on a guess.
	return <-r.done
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

func callKey(id proto.CallID) []byte { return append([]byte("c/"), id...) }

// PutFrames makes frames of one channel durable.
func (s *Store) PutFrames(ctx context.Context, id proto.CallID, ch int, fs []Frame) error {
	es := make([]entry, len(fs))
	for i, f := range fs {
		v := make([]byte, 8+len(f.Payload))
		binary.BigEndian.PutUint64(v, uint64(f.Capture))
		copy(v[8:], f.Payload)
		es[i] = entry{frameKey(id, ch, f.Seq), v}
	}
	return s.write(ctx, es...)
}

// PutCall makes a call record durable.
func (s *Store) PutCall(ctx context.Context, c *Call) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return s.write(ctx, entry{callKey(c.ID), b})
}

// PutFinal makes a final (and optionally the updated call record) durable in
// one commit.
func (s *Store) PutFinal(ctx context.Context, id proto.CallID, f Final, c *Call) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	es := []entry{{finalKey(id, f.Channel, f.Index), b}}
	if c != nil {
		cb, err := json.Marshal(c)
		if err != nil {
			return err
		}
		es = append(es, entry{callKey(id), cb})
	}
	return s.write(ctx, es...)
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
		return it.Value(func(v []byte) error { return json.Unmarshal(v, &c) })
	})
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// Calls returns every call record, newest first.
func (s *Store) Calls() ([]*Call, error) {
	out, err := scanJSON[*Call](s, "c/")
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, err
}

// scanJSON decodes every JSON value under prefix, in key order. T may be a
// struct or a pointer to one.
func scanJSON[T any](s *Store, prefix string) ([]T, error) {
	var out []T
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var v T // for a pointer type, Unmarshal allocates the value
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &v) }); err != nil {
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
			err := it.Item().Value(func(v []byte) error {
				if len(v) < 8 {
					return fmt.Errorf("store: frame %s/%d/%d is corrupt", id, ch, seq)
				}
				return fn(Frame{Seq: seq, Capture: int64(binary.BigEndian.Uint64(v)), Payload: v[8:]})
			})
			if err != nil {
				return err
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
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &f) }); err != nil {
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
		return it.Item().Value(func(v []byte) error { return json.Unmarshal(v, f) })
	})
	return f, err
}

// Probe writes and reads back a key: the store is writable.
func (s *Store) Probe(ctx context.Context) error {
	v := []byte(time.Now().UTC().Format(time.RFC3339Nano))
	if err := s.write(ctx, entry{[]byte("m/probe"), v}); err != nil {
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
	return s.write(ctx, entry{nodeKey(n.ID), b})
}

// Nodes returns every node record.
func (s *Store) Nodes() ([]Node, error) {
	return scanJSON[Node](s, "n/")
}

// deletePrefix deletes every key under prefix in batches of at most 1000
// keys per transaction (never DropPrefix: it blocks writers) and returns
// how many it deleted.
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
		err = s.db.Update(func(txn *badger.Txn) error {
			for _, k := range keys {
				if err := txn.Delete(k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
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

// DeleteCall removes a call's finals and record (its audio must be gone).
func (s *Store) DeleteCall(ctx context.Context, id proto.CallID) error {
	if _, err := s.deletePrefix(ctx, append(append([]byte("f/"), id...), '/')); err != nil {
		return err
	}
	return s.db.Update(func(txn *badger.Txn) error { return txn.Delete(callKey(id)) })
}

// CollectGarbage rewrites value-log files that are at least half garbage,
// until none is left; it returns how many files were rewritten.
func (s *Store) CollectGarbage() int {
	n := 0
	for s.db.RunValueLogGC(0.5) == nil {
		n++
	}
	return n
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
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	ob, _ := json.Marshal(OutboxEntry{CallID: c.ID, Enqueued: time.Now().UTC()})
	return s.write(ctx, entry{callKey(c.ID), b}, entry{outboxKey(c.ID), ob})
}

// Outbox lists queued exports, oldest first.
func (s *Store) Outbox() ([]OutboxEntry, error) {
	out, err := scanJSON[OutboxEntry](s, "o/")
	sort.Slice(out, func(i, j int) bool { return out[i].Enqueued.Before(out[j].Enqueued) })
	return out, err
}

// UpdateOutbox records a failed attempt.
func (s *Store) UpdateOutbox(ctx context.Context, e OutboxEntry) error {
	b, _ := json.Marshal(e)
	return s.write(ctx, entry{outboxKey(e.CallID), b})
}

// DoneOutbox removes an exported entry.
func (s *Store) DoneOutbox(id proto.CallID) error {
	return s.db.Update(func(txn *badger.Txn) error { return txn.Delete(outboxKey(id)) })
}
