package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

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
		err := s.persist(ok)
		took := time.Since(t0)
		// Counted before its writers are answered: a write acknowledged is
		// in the commit counts.
		if s.onCommit != nil {
			s.onCommit(len(ok), size, took)
		}
		for _, r := range ok {
			r.finish(err)
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

// persist makes a batch durable: through the replicated log when there is
// one, else as one synced Badger commit.
func (s *Store) persist(batch []*req) error {
	if r := s.replicator(); r != nil {
		return r.Replicate(encodeBatch(batch))
	}
	return s.commit(batch)
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
