package store

// The applier. A batch committed to the replicated log is durable: a
// quorum holds it on disk and every member will apply it, after a crash
// too. So the leader acknowledges it once it is committed, not once Badger
// holds it: Apply hands the batch to the applier and returns, and the
// applier writes what it is handed to Badger in order, several batches to a
// transaction when it lags. Badger's writes stall now and then (a value-log
// file filling or rotating, a memtable flush); those stalls no longer hold
// up an ack, only the reads that come after it.
//
// Reads see every acknowledged write: each read first waits until
// everything handed over before it began is applied (caughtUp). A snapshot
// waits the same way before it syncs Badger, and a snapshot install before
// it replaces the store.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// applyQueueBytes bounds what the applier may lag behind the log: Apply
// waits once this much is queued (a slow disk slows the log, not memory).
const applyQueueBytes = 64 << 20

// applyTxnBytes bounds what one apply transaction gathers.
const applyTxnBytes = 8 << 20

type applyItem struct {
	index uint64
	es    []entry
	size  int
}

// applier is the queue between the log and Badger.
type applier struct {
	mu      sync.Mutex
	cond    *sync.Cond // broadcast when anything below changes
	q       []applyItem
	qBytes  int
	handed  uint64 // index of the last batch handed over (or applied)
	err     error  // the apply that failed: nothing is applied after it
	stop    bool   // Close: apply what is queued, then end
	running bool
	onFail  func(error)
	// hook, in tests, runs before each apply transaction; its error
	// fails it.
	hook func() error
}

func (a *applier) init() { a.cond = sync.NewCond(&a.mu) }

// reset sets what is handed over to what Badger holds (at open, after a
// snapshot install).
func (a *applier) reset(applied uint64) {
	a.mu.Lock()
	a.handed = applied
	a.mu.Unlock()
}

// Applied is the index of the last log batch the store has applied.
func (s *Store) Applied() uint64 { return s.applied.Load() }

// Handed is the index of the last log batch handed to the store (applied,
// or queued to be): what Raft counts as applied.
func (s *Store) Handed() uint64 {
	s.apply.mu.Lock()
	defer s.apply.mu.Unlock()
	return s.apply.handed
}

// OnApplyFailure sets fn to be called (once, from the applier) when a
// batch handed over cannot be applied: the member must stop, as it can no
// longer follow the log.
func (s *Store) OnApplyFailure(fn func(error)) {
	s.apply.mu.Lock()
	s.apply.onFail = fn
	s.apply.mu.Unlock()
}

// Apply hands the log command at index to the store (the cluster's state
// machine): every member applies the same commands in the same order. A
// command at or below what was handed over already is held (a replay after
// a restart) and skipped. It returns once the command is queued; the
// applier writes it to Badger. An error means this member cannot go on
// applying the log (a command that does not decode; an earlier apply
// failed on a full or failing disk), and every later command and read gets
// it: the caller stops the member.
func (s *Store) Apply(index uint64, cmd []byte) error {
	a := &s.apply
	a.mu.Lock()
	defer a.mu.Unlock()
	if index <= a.handed {
		return nil
	}
	es, err := decodeBatch(cmd)
	if err != nil {
		// Sticky, as a failed apply is: nothing after it is applied, so
		// the store never holds the log with a command missing.
		a.err = fmt.Errorf("store: apply %d: %w", index, err)
		a.cond.Broadcast()
		return a.err
	}
	for a.qBytes >= applyQueueBytes && a.err == nil && !a.stop {
		a.cond.Wait()
	}
	switch {
	case a.err != nil:
		return a.err
	case a.stop:
		return ErrClosed
	}
	if !a.running {
		a.running = true
		go s.applyLoop()
	}
	a.q = append(a.q, applyItem{index: index, es: es, size: len(cmd)})
	a.qBytes += len(cmd)
	a.handed = index
	a.cond.Broadcast()
	return nil
}

// applyLoop writes what is handed over to Badger, in order.
func (s *Store) applyLoop() {
	a := &s.apply
	for {
		a.mu.Lock()
		for len(a.q) == 0 && !a.stop {
			a.cond.Wait()
		}
		if len(a.q) == 0 {
			a.running = false
			a.cond.Broadcast()
			a.mu.Unlock()
			return
		}
		n, size := 0, 0
		for n < len(a.q) && (n == 0 || size+a.q[n].size <= applyTxnBytes) {
			size += a.q[n].size
			n++
		}
		batch := a.q[:n:n]
		hook := a.hook
		a.mu.Unlock()

		var err error
		if hook != nil {
			err = hook()
		}
		if err == nil {
			err = s.applyBatch(batch)
		}

		a.mu.Lock()
		a.q = a.q[n:]
		if len(a.q) == 0 {
			a.q = nil
		}
		a.qBytes -= size
		if err != nil {
			a.err = err
			a.q, a.qBytes, a.running = nil, 0, false
			fail := a.onFail
			a.cond.Broadcast()
			a.mu.Unlock()
			s.log.Error("store: a committed log batch cannot be applied: this member stops applying", "index", batch[0].index, "err", err)
			if fail != nil {
				fail(err)
			}
			return
		}
		s.applied.Store(batch[n-1].index)
		a.cond.Broadcast()
		a.mu.Unlock()
	}
}

// applyBatch writes handed-over batches to Badger as one write, with the
// index of the last one.
func (s *Store) applyBatch(batch []applyItem) error {
	var es []entry
	for _, it := range batch {
		es = append(es, it.es...)
	}
	last := batch[len(batch)-1].index
	r := newReq(false, es)
	if s.guard != nil {
		if err := s.guard.room(r); err != nil {
			return fmt.Errorf("store: apply %d: %w", last, err)
		}
	}
	var ix [8]byte
	binary.BigEndian.PutUint64(ix[:], last)
	r.entries = append(r.entries, entry{key: appliedKey, val: ix[:]})
	if err := s.commit([]*req{r}); err != nil {
		return fmt.Errorf("store: apply %d: %w", last, err)
	}
	return nil
}

// caughtUp waits until everything handed over so far is applied; after a
// command was refused or failed to apply it fails (the member is stopping,
// and its store no longer follows the log).
func (s *Store) caughtUp() error {
	a := &s.apply
	a.mu.Lock()
	defer a.mu.Unlock()
	want := a.handed
	for s.applied.Load() < want && a.err == nil && a.running {
		a.cond.Wait()
	}
	if a.err != nil {
		return a.err
	}
	if s.applied.Load() >= want {
		return nil
	}
	return errApplierStopped
}

var errApplierStopped = errors.New("store: the applier stopped before it caught up")

// stopApplier applies what is queued and ends the applier (Close).
func (s *Store) stopApplier() {
	a := &s.apply
	a.mu.Lock()
	a.stop = true
	a.cond.Broadcast()
	for a.running {
		a.cond.Wait()
	}
	a.mu.Unlock()
}
