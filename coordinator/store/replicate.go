package store

// Replication. In a coordinator cluster (package cluster) the store is the
// state machine of a Raft log: the committer still gathers the writes of
// every call into one batch, but instead of committing it to Badger with a
// sync it hands the encoded batch to a Replicator, which makes it durable on
// a quorum of coordinators' logs and then hands it to Apply, on every
// member, which applies it to Badger in order (applier.go): a write is
// acknowledged once committed, and reads wait for what was acknowledged
// before them to be applied. Badger's own writes are not synced (Options.Replicated):
// the log is the point of durability, so a commit costs one flush of the log
// instead of Badger's two msyncs in series. Badger is synced at each Raft
// snapshot (Checkpoint), after which the log before it may be compacted;
// everything applied since is still in the log and is applied again after a
// crash (Apply skips what Badger already holds: the index of the last
// applied batch is written in the same transaction as the batch).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	badger "github.com/dgraph-io/badger/v4"
)

// Replicator makes a batch durable on a quorum before it is applied to the
// store (the cluster's Raft node).
type Replicator interface {
	// Replicate proposes cmd and returns once it is committed (durable on
	// a quorum's logs) and handed to this store's Apply, or with an error:
	// then the batch may or may not be committed later, and none of its
	// writes is reported durable.
	Replicate(cmd []byte) error
}

// SetReplicator routes every write through r from now on (before the store
// takes writes).
func (s *Store) SetReplicator(r Replicator) { s.repl.Store(&r) }

func (s *Store) replicator() Replicator {
	if p := s.repl.Load(); p != nil {
		return *p
	}
	return nil
}

// appliedKey holds the index of the last batch applied from the log, as a
// big-endian uint64, written with the batch.
var appliedKey = []byte("m/applied")

// local reports whether a key is this member's own bookkeeping, never
// replicated, backed up or restored: the store's identity and when it was
// opened and closed.
func local(key []byte) bool {
	switch string(key) {
	case string(identityKey), string(openedKey), string(closedKey):
		return true
	}
	return false
}

// encodeBatch encodes the entries of a group commit as one log command:
// for each entry a flag byte (1: delete), the key and the value, each
// preceded by its length as a uvarint.
func encodeBatch(batch []*req) []byte {
	n := 0
	for _, r := range batch {
		n += r.size()
	}
	b := make([]byte, 0, n+8)
	for _, r := range batch {
		for _, e := range r.entries {
			var flag byte
			if e.del {
				flag = 1
			}
			b = append(b, flag)
			b = binary.AppendUvarint(b, uint64(len(e.key)))
			b = append(b, e.key...)
			b = binary.AppendUvarint(b, uint64(len(e.val)))
			b = append(b, e.val...)
		}
	}
	return b
}

// errBadCommand is wrapped by the error of a log command that does not
// decode.
var errBadCommand = errors.New("store: log command does not decode")

func decodeBatch(b []byte) ([]entry, error) {
	var es []entry
	for len(b) > 0 {
		flag := b[0]
		b = b[1:]
		if flag > 1 {
			return nil, fmt.Errorf("%w: flag %d", errBadCommand, flag)
		}
		k, rest, ok := field(b)
		if !ok {
			return nil, fmt.Errorf("%w: key", errBadCommand)
		}
		v, rest, ok := field(rest)
		if !ok {
			return nil, fmt.Errorf("%w: value", errBadCommand)
		}
		b = rest
		es = append(es, entry{key: k, val: v, del: flag == 1})
	}
	return es, nil
}

func field(b []byte) (f, rest []byte, ok bool) {
	n, m := binary.Uvarint(b)
	if m <= 0 || uint64(len(b)-m) < n {
		return nil, nil, false
	}
	return b[m : m+int(n)], b[m+int(n):], true
}

// loadApplied reads appliedKey.
func (s *Store) loadApplied() error {
	s.restoreMu.RLock()
	defer s.restoreMu.RUnlock()
	return s.loadAppliedLocked()
}

func (s *Store) loadAppliedLocked() error {
	err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(appliedKey)
		if errors.Is(err, badger.ErrKeyNotFound) {
			s.applied.Store(0)
			return nil
		}
		if err != nil {
			return s.valueErr(appliedKey, "applied index unreadable", err)
		}
		return it.Value(func(v []byte) error {
			if len(v) != 8 {
				return s.valueErr(appliedKey, "applied index", fmt.Errorf("%d bytes", len(v)))
			}
			s.applied.Store(binary.BigEndian.Uint64(v))
			return nil
		})
	})
	if err == nil {
		// What Badger holds is what was handed over (none is queued).
		s.apply.reset(s.applied.Load())
	}
	return err
}

// Checkpoint makes everything applied so far durable in Badger itself and
// returns the applied index: the log up to it is no longer needed to
// recover this store.
func (s *Store) Checkpoint() (uint64, error) {
	if err := s.caughtUp(); err != nil {
		return 0, fmt.Errorf("store: checkpoint: %w", err)
	}
	ix := s.applied.Load()
	if err := s.db.Sync(); err != nil {
		return 0, fmt.Errorf("store: checkpoint: %w", err)
	}
	return ix, nil
}

// Backup writes everything the store holds except this member's own
// bookkeeping, as a Badger backup stream, for a member that has fallen
// behind the log (a snapshot install). It is one consistent read: the
// applied index inside it matches its data.
func (s *Store) Backup(w io.Writer) error {
	if err := s.caughtUp(); err != nil {
		return fmt.Errorf("store: backup: %w", err)
	}
	st := s.db.NewStream()
	st.LogPrefix = "store.Backup"
	st.ChooseKey = func(item *badger.Item) bool { return !local(item.Key()) }
	if _, err := st.Backup(w, 0); err != nil {
		return fmt.Errorf("store: backup: %w", err)
	}
	return nil
}

// restoringPath marks a store whose contents are being replaced by a
// snapshot install: a store found with it was cut off half-way and is
// refused by Open.
func restoringPath(dir string) string { return dir + ".restoring" }

// ErrRestoreInterrupted is wrapped by Open's refusal of a store whose
// snapshot install was interrupted.
var ErrRestoreInterrupted = errors.New("store: a snapshot install was interrupted")

// Restore replaces everything the store holds (but its own bookkeeping)
// with a Backup stream from the leader. Nothing may write to the store
// meanwhile (a follower applies nothing while it installs a snapshot).
func (s *Store) Restore(r io.Reader) error {
	if s.dir == "" {
		return errors.New("store: restore: not supported in memory")
	}
	// What was handed to the applier before the install is replaced by it.
	if err := s.caughtUp(); err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	mark := restoringPath(s.dir)
	if err := writeFileSync(mark, []byte("a snapshot install began; if this file remains, the store is incomplete\n")); err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	// No read may run while Badger loads (DB.Load is not safe with
	// concurrent transactions): readers wait (view).
	if err := s.replace(r); err != nil {
		return err
	}
	if err := s.loadAuditHead(); err != nil {
		return err
	}
	s.stateMu.Lock()
	if s.state != nil {
		rec := &StateRecord{UUID: s.state.UUID, Created: s.state.Created}
		if err := s.fillState(rec); err == nil {
			if err := writeState(s.dir, rec); err == nil {
				s.state = rec
			}
		}
	}
	s.stateMu.Unlock()
	if err := os.Remove(mark); err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	s.log.Info("store: contents replaced from a snapshot", "dir", s.dir, "applied", s.applied.Load())
	return nil
}

// writeFileSync writes a small file and syncs it.
func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
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

// Lead reloads what the store keeps in memory of the replicated state
// (the audit log's head) before this member writes as the leader: it
// applied other leaders' writes since it opened.
func (s *Store) Lead() error {
	if err := s.caughtUp(); err != nil {
		return err
	}
	return s.loadAuditHead()
}

// view runs a read-only transaction (never during a Restore), once
// everything committed to the log before it is applied: a read sees every
// write acknowledged before it began.
func (s *Store) view(fn func(txn *badger.Txn) error) error {
	if err := s.caughtUp(); err != nil {
		return err
	}
	s.restoreMu.RLock()
	defer s.restoreMu.RUnlock()
	return s.db.View(fn)
}

// replace drops everything and loads the backup, readers held off.
func (s *Store) replace(r io.Reader) error {
	s.restoreMu.Lock()
	defer s.restoreMu.Unlock()
	// No read may run while Badger loads (DB.Load is not safe with
	// concurrent transactions): readers wait (view).
	var keep []entry
	err := s.db.View(func(txn *badger.Txn) error {
		for _, k := range [][]byte{identityKey, openedKey, closedKey} {
			it, err := txn.Get(k)
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			v, err := it.ValueCopy(nil)
			if err != nil {
				return err
			}
			keep = append(keep, entry{key: k, val: v})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: restore: read own keys: %w", err)
	}
	if err := s.db.DropAll(); err != nil {
		return fmt.Errorf("store: restore: drop: %w", err)
	}
	if err := s.db.Load(r, 64); err != nil {
		return fmt.Errorf("store: restore: load: %w", err)
	}
	if err := s.commit([]*req{newReq(false, keep)}); err != nil {
		return fmt.Errorf("store: restore: own keys: %w", err)
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("store: restore: sync: %w", err)
	}
	if err := s.loadAppliedLocked(); err != nil {
		return err
	}
	return nil
}
