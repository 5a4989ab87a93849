package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/callscribe/callscribe/internal/audit"
	badger "github.com/dgraph-io/badger/v4"
)

// The audit log lives under "l/" keyed by big-endian seq; the export
// cursor (the last seq the receiver acknowledged) at m/audit-exported.
var auditExportedKey = []byte("m/audit-exported")

func auditKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte("l/"), seq)
}

// auditLog is the head of the audit chain and the entries on their way to
// disk. Seq and hash are assigned under mu, in the order the writes are
// queued; nobody holds mu while a write is on its way to disk.
type auditLog struct {
	mu   sync.Mutex
	head audit.Head // the newest entry assigned (durable or on its way)
	last *Pending   // its write, which the next one follows
	// flight holds the writes not yet known durable, by seq.
	flight map[uint64]*auditWrite
}

type auditWrite struct {
	e    audit.Entry
	prev *Pending // the write this one follows
}

// newestAudit reads the newest stored audit entry: the seq its key holds
// and the entry, err naming the key when it cannot be decoded (with ok
// true) or the log cannot be read. ok is false when the log is empty.
func (s *Store) newestAudit() (seq uint64, e audit.Entry, ok bool, err error) {
	err = s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: []byte("l/")})
		defer it.Close()
		it.Seek(auditKey(^uint64(0)))
		if !it.Valid() {
			return nil
		}
		ok = true
		seq = binary.BigEndian.Uint64(it.Item().Key()[2:])
		return s.readJSON(it.Item(), "audit entry", &e)
	})
	return seq, e, ok, err
}

// loadAuditHead reads the newest entry into the head.
func (s *Store) loadAuditHead() error {
	head := audit.Head{Hash: audit.ZeroHash}
	seq, e, ok, err := s.newestAudit()
	if err == nil && ok && e.Seq != seq {
		err = s.valueErr(auditKey(seq), "audit entry", fmt.Errorf("holds seq %d", e.Seq))
	}
	switch {
	case err != nil && ok:
		// The calls matter more than the log: keep recording after it.
		// The next entry cannot link to it, so verification shows the
		// break right there.
		s.log.Error("store: the newest audit entry is damaged; the chain restarts after it and `callscribe audit --verify` will report the break", "seq", seq, "err", err)
		head, err = audit.Head{Seq: seq, Hash: audit.ZeroHash}, nil
	case ok:
		head = audit.Head{Seq: e.Seq, Hash: e.Hash}
	}
	if err != nil {
		return fmt.Errorf("store: audit log head: %w", err)
	}
	s.audit.mu.Lock()
	s.audit.head = head
	s.audit.flight = map[uint64]*auditWrite{}
	s.audit.last = nil
	s.audit.mu.Unlock()
	return nil
}

// AppendAudit chains e after the newest entry (setting its Seq, Prev and
// Hash; its Time should be set) and returns it once it is durable. If the
// write fails, so do the entries queued after it, and the head goes back
// to the last entry that can still be durable: the chain never has a hole.
func (s *Store) AppendAudit(ctx context.Context, e audit.Entry) (audit.Entry, error) {
	l := &s.audit
	l.mu.Lock()
	if l.flight == nil {
		l.flight = map[uint64]*auditWrite{}
	}
	e = audit.Seal(e, l.head)
	b, err := json.Marshal(e)
	if err != nil {
		l.mu.Unlock()
		return audit.Entry{}, err
	}
	// Queued under mu, so writes reach the committer in seq order; the
	// queue only blocks when the committer is 4096 writes behind.
	p, err := s.submit(ctx, false, l.last, []entry{{key: auditKey(e.Seq), val: b}})
	if err != nil {
		l.mu.Unlock()
		return audit.Entry{}, fmt.Errorf("store: audit entry %d: %w", e.Seq, err)
	}
	w := &auditWrite{e: e, prev: l.last}
	l.flight[e.Seq] = w
	l.head, l.last = audit.Head{Seq: e.Seq, Hash: e.Hash}, p
	l.mu.Unlock()

	if err := l.settle(w, p, p.Wait()); err != nil {
		return audit.Entry{}, fmt.Errorf("store: audit entry %d: %w", e.Seq, err)
	}
	return e, nil
}

// settle records the outcome of w's write p.
func (l *auditLog) settle(w *auditWrite, p *Pending, err error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	seq := w.e.Seq
	if l.flight[seq] != w {
		// Rolled back already: a write before it failed first.
		if err == nil {
			err = ErrPredecessor
		}
		return err
	}
	if err == nil {
		delete(l.flight, seq)
		if l.last == p {
			l.last = nil
		}
		return nil
	}
	// This entry and every one assigned after it are not durable (they
	// follow it): the next entry takes this one's seq.
	for s := range l.flight {
		if s >= seq {
			delete(l.flight, s)
		}
	}
	l.head = audit.Head{Seq: seq - 1, Hash: w.e.Prev}
	l.last = w.prev
	return err
}

// AuditHead returns the newest entry assigned: durable, or on its way.
func (s *Store) AuditHead() audit.Head {
	s.audit.mu.Lock()
	defer s.audit.mu.Unlock()
	h := s.audit.head
	if h.Seq == 0 {
		h.Hash = audit.ZeroHash
	}
	return h
}

// AuditLast returns the newest stored (durable) entry's seq and hash
// (0 and ZeroHash when there is none).
func (s *Store) AuditLast() (audit.Head, error) {
	_, e, ok, err := s.newestAudit()
	if err != nil || !ok {
		return audit.Head{Hash: audit.ZeroHash}, err
	}
	return audit.Head{Seq: e.Seq, Hash: e.Hash}, nil
}

// AuditEntries returns up to limit stored entries with seq > after, in
// seq order (limit <= 0: all). An entry that cannot be read or decoded is
// an error naming its key.
func (s *Store) AuditEntries(after uint64, limit int) ([]audit.Entry, error) {
	var out []audit.Entry
	if after == ^uint64(0) {
		return nil, nil
	}
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("l/"), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Seek(auditKey(after + 1)); it.Valid(); it.Next() {
			if limit > 0 && len(out) >= limit {
				return nil
			}
			var e audit.Entry
			if err := s.readJSON(it.Item(), "audit entry", &e); err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// AuditExported returns the export cursor: the newest seq the receiver
// has acknowledged (0: none).
func (s *Store) AuditExported() (uint64, error) {
	var n uint64
	err := s.view(func(txn *badger.Txn) error {
		it, err := txn.Get(auditExportedKey)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return it.Value(func(v []byte) error {
			n, err = strconv.ParseUint(string(v), 10, 64)
			return err
		})
	})
	if err != nil {
		return 0, fmt.Errorf("store: audit export cursor: %w", err)
	}
	return n, nil
}

// SetAuditExported makes the export cursor durable.
func (s *Store) SetAuditExported(ctx context.Context, seq uint64) error {
	return s.write(ctx, false, entry{key: auditExportedKey, val: strconv.AppendUint(nil, seq, 10)})
}
