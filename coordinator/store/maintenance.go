package store

import (
	"context"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// Probe writes and reads back a key: the store is writable.
func (s *Store) Probe(ctx context.Context) error {
	v := []byte(time.Now().UTC().Format(time.RFC3339Nano))
	if err := s.write(ctx, false, entry{key: []byte("m/probe"), val: v}); err != nil {
		return err
	}
	return s.view(func(txn *badger.Txn) error {
		_, err := txn.Get([]byte("m/probe"))
		return err
	})
}

// deletePrefix deletes every key under prefix in batches of at most 1000
// keys per write (never DropPrefix: it blocks writers) and returns how many
// it deleted. Deletes are writes too (the WAL): they go through the
// committer and its disk guard like metadata.
func (s *Store) deletePrefix(ctx context.Context, prefix []byte) (int, error) {
	total := 0
	for ctx.Err() == nil {
		var keys [][]byte
		err := s.view(func(txn *badger.Txn) error {
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
