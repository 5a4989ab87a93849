package store

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/callscribe/callscribe/proto"
	badger "github.com/dgraph-io/badger/v4"
)

// Call records are under "c/<id>", in id order, which a console chooses:
// not the order anyone lists calls in. The listing's order (newest first)
// comes from an index of keys "t/<created>/<id>" (created: Unix
// nanoseconds, 8 bytes big-endian, so key order is time order) with empty
// values, written in the same commit as every write of the record and
// deleted with it. A call's creation time never changes, so every write of
// the record writes the same index key. The record stays the truth: an
// index key whose record is missing or was created at another time is
// skipped, and Open rebuilds the index when its count differs from the
// records' (a store written before the index). Recovery and retention, which
// must see every record, walk "c/" itself (EachCall).

// ErrBadCursor is returned by CallsPage for a cursor it did not make.
var ErrBadCursor = errors.New("store: invalid cursor")

const (
	timePrefix = "t/"
	// CallsPageMax is the most calls one CallsPage returns.
	CallsPageMax = 1000
	// scanPerPage bounds the index keys one CallsPage examines: a filter
	// that matches little returns a short (even empty) page and a cursor
	// to go on from, rather than walking the whole history at once.
	scanPerPage = 4096
	// eachBatch is how many records EachCall holds at once.
	eachBatch = 256
)

// timeKey is a call's index key.
func timeKey(id proto.CallID, created time.Time) []byte {
	k := make([]byte, 0, len(timePrefix)+8+len(id))
	k = append(k, timePrefix...)
	k = binary.BigEndian.AppendUint64(k, nanos(created))
	return append(k, id...)
}

// nanos is t as Unix nanoseconds, 0 for a time before 1970 (or unset).
func nanos(t time.Time) uint64 {
	if t.IsZero() || t.UnixNano() < 0 {
		return 0
	}
	return uint64(t.UnixNano())
}

// callEntries are the writes that store a call record: the record and its
// index key.
func callEntries(c *Call) ([]entry, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return []entry{{key: callKey(c.ID), val: b}, {key: timeKey(c.ID, c.Created), val: []byte{}}}, nil
}

// CallFilter selects calls for CallsPage. Zero fields select everything.
type CallFilter struct {
	// State is a call state (StateOpen, …).
	State string
	// Since keeps calls created at or after it.
	Since time.Time
	// Console keeps one console's calls.
	Console proto.ConsoleID
}

func (f CallFilter) match(c *Call) bool {
	return (f.State == "" || c.State == f.State) && (f.Console == "" || c.Console == f.Console)
}

// CallsPage returns up to limit call records that match f, newest first,
// from after cursor ("" for the newest), and the cursor of the next page
// ("" when no call is left). It examines at most a bounded number of
// records: with a filter that matches few calls a page may be short, or
// empty, with a next cursor all the same. limit is clamped to
// 1..CallsPageMax. An unknown cursor is ErrBadCursor.
func (s *Store) CallsPage(f CallFilter, cursor string, limit int) ([]*Call, string, error) {
	limit = min(max(limit, 1), CallsPageMax)
	start := []byte(timePrefix + "\xff")
	skip := []byte(nil)
	if cursor != "" {
		k, err := base64.RawURLEncoding.DecodeString(cursor)
		if err != nil || len(k) < 9 {
			return nil, "", ErrBadCursor
		}
		start = append([]byte(timePrefix), k...)
		skip = start
	}
	since := nanos(f.Since)
	var out []*Call
	next := ""
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(timePrefix), Reverse: true})
		defer it.Close()
		scanned := 0
		var last []byte
		for it.Seek(start); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) < len(timePrefix)+9 || bytes.Equal(k, skip) {
				continue
			}
			ts := binary.BigEndian.Uint64(k[len(timePrefix):])
			if ts < since {
				return nil // older than since: none of the rest is newer
			}
			if len(out) == limit || scanned == scanPerPage {
				next = base64.RawURLEncoding.EncodeToString(last[len(timePrefix):])
				return nil
			}
			scanned++
			last = append(last[:0], k...)
			id := proto.CallID(k[len(timePrefix)+8:])
			item, err := txn.Get(callKey(id))
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue // an index key left behind: the record is the truth
			}
			if err != nil {
				return err
			}
			var c Call
			if err := s.readJSON(item, "call record", &c); err != nil {
				return err
			}
			if nanos(c.Created) != ts || !f.match(&c) {
				continue
			}
			out = append(out, &c)
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return out, next, nil
}

// EachCall calls fn with every call record, in id order, holding at most a
// batch of records at a time (fn may write to the store). It stops at fn's
// first error, which it returns, or when ctx ends.
func (s *Store) EachCall(ctx context.Context, fn func(*Call) error) error {
	after := []byte(nil)
	for ctx.Err() == nil {
		var batch []*Call
		err := s.view(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("c/"), PrefetchValues: true, PrefetchSize: 64})
			defer it.Close()
			it.Seek(callKey("")) // the first record
			if after != nil {
				it.Seek(after)
				if it.Valid() && bytes.Equal(it.Item().Key(), after) {
					it.Next()
				}
			}
			for ; it.Valid() && len(batch) < eachBatch; it.Next() {
				var c Call
				if err := s.readJSON(it.Item(), "call record", &c); err != nil {
					return err
				}
				batch = append(batch, &c)
				after = it.Item().KeyCopy(after[:0])
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, c := range batch {
			if err := fn(c); err != nil {
				return err
			}
		}
		if len(batch) < eachBatch {
			return nil
		}
	}
	return ctx.Err()
}

// countKeys counts the keys under prefix (keys only: no value is read).
func (s *Store) countKeys(prefix string) (int, error) {
	n := 0
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	return n, err
}

// indexCalls makes the time index match the call records when their counts
// differ (a store written before the index, or by an older version): every
// record's index key is written, and index keys without their record are
// deleted, a batch at a time.
func (s *Store) indexCalls(ctx context.Context) error {
	calls, err := s.countKeys("c/")
	if err != nil {
		return err
	}
	keys, err := s.countKeys(timePrefix)
	if err != nil || calls == keys {
		return err
	}
	t0 := time.Now()
	written := 0
	var es []entry
	flush := func() error {
		if len(es) == 0 {
			return nil
		}
		err := s.write(ctx, false, es...)
		written += len(es)
		es = es[:0]
		return err
	}
	err = s.EachCall(ctx, func(c *Call) error {
		es = append(es, entry{key: timeKey(c.ID, c.Created), val: []byte{}})
		if len(es) < eachBatch {
			return nil
		}
		return flush()
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return fmt.Errorf("store: index calls: %w", err)
	}
	// Index keys whose record is gone or was created at another time.
	var stale [][]byte
	err = s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(timePrefix)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) < len(timePrefix)+9 {
				stale = append(stale, it.Item().KeyCopy(nil))
				continue
			}
			item, err := txn.Get(callKey(proto.CallID(k[len(timePrefix)+8:])))
			if errors.Is(err, badger.ErrKeyNotFound) {
				stale = append(stale, it.Item().KeyCopy(nil))
				continue
			}
			if err != nil {
				return err
			}
			var c Call
			if err := s.readJSON(item, "call record", &c); err != nil {
				return err
			}
			if nanos(c.Created) != binary.BigEndian.Uint64(k[len(timePrefix):]) {
				stale = append(stale, it.Item().KeyCopy(nil))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: index calls: %w", err)
	}
	for len(stale) > 0 {
		n := min(len(stale), 1000)
		es := make([]entry, n)
		for i, k := range stale[:n] {
			es[i] = entry{key: k, del: true}
		}
		if err := s.write(ctx, false, es...); err != nil {
			return fmt.Errorf("store: index calls: %w", err)
		}
		stale = stale[n:]
	}
	s.log.Info("store: call index rebuilt", "dir", s.dir, "calls", written, "took", time.Since(t0).Round(time.Millisecond))
	return nil
}
