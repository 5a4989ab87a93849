// Package calls is the live-call path of a coordinator: calls and their
// channels as state machines, the console sessions and read-only watchers
// attached to them, frames made durable in order before they are
// acknowledged, and the dispatch of each channel to a worker until it is
// decoded to its end and the call is finalised.
//
// It declares what it needs as small interfaces — Store (the store
// operations it uses), Workers (a way to acquire a worker slot) and
// Observer (metrics) — so it is tested with fakes, and its locks stay
// local: a call's lock guards that call's state and is never held across
// network or disk I/O. It imports store (its records), ingest (the session
// API consoles use), proto, auth, integrity, owner and tuning; never the
// coordinator that wires it.
package calls

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/internal/integrity"
	"github.com/callscribe/callscribe/internal/owner"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

// Store is what the live-call path needs of the store
// (*store.Store satisfies it).
type Store interface {
	Call(id proto.CallID) (*store.Call, error)
	// EachCall walks the call records a batch at a time.
	EachCall(ctx context.Context, fn func(*store.Call) error) error
	PutCall(ctx context.Context, rec *store.Call) error
	// PutCallExport is PutCall that also queues the call for export in
	// the same commit.
	PutCallExport(ctx context.Context, rec *store.Call) error
	SubmitCall(ctx context.Context, rec *store.Call) (*store.Pending, error)
	DeleteCall(ctx context.Context, id proto.CallID) error
	SubmitFramesDigest(ctx context.Context, id proto.CallID, ch int, fs []store.Frame, d integrity.Digest, after *store.Pending) (*store.Pending, error)
	NextSeq(id proto.CallID, ch int) (uint32, error)
	Frames(id proto.CallID, ch int, from uint32, limit int, fn func(store.Frame) error) error
	PutFinal(ctx context.Context, id proto.CallID, f store.Final, rec *store.Call) error
	LastFinal(id proto.CallID, ch int) (*store.Final, error)
	Finals(id proto.CallID, ch int, from uint32) ([]store.Final, error)
	Digest(id proto.CallID, ch int) (integrity.Digest, bool, error)
	ComputeDigest(id proto.CallID, ch int) (integrity.Digest, error)
	PutDigest(ctx context.Context, id proto.CallID, ch int, d integrity.Digest) error
}

var _ Store = (*store.Store)(nil)

// Stream is an assignment stream to a worker (*quic.Stream satisfies it).
type Stream interface {
	io.Reader
	io.Writer
	Close() error
	CancelRead(quic.StreamErrorCode)
	CancelWrite(quic.StreamErrorCode)
}

var _ Stream = (*quic.Stream)(nil)

// Worker is a worker slot lent to one channel.
type Worker interface {
	// ID names the worker in logs and finals.
	ID() proto.WorkerID
	// OpenStream opens an assignment stream on the worker's connection.
	OpenStream(ctx context.Context) (Stream, error)
	// Broken reports whether the worker's connection has ended.
	Broken() bool
}

// Workers lends worker slots (the rack's registry).
type Workers interface {
	// Acquire waits for a worker of model with a free slot and takes it;
	// release gives it back (once).
	Acquire(ctx context.Context, model string) (w Worker, release func(), err error)
	// Remove drops a worker whose connection broke, so the next Acquire
	// does not pick it again.
	Remove(w Worker, why string)
}

// Observer counts what happens to calls (the coordinator's metrics).
type Observer interface {
	FrameReceived()
	FrameDuplicate()
	FrameConcealed()
	FrameLost()
	FrameUndecodable()
	FramesDecoded(n uint32)
	// Acked observes a frame from received to durable and acknowledged.
	Acked(d time.Duration)
	// ToWorker observes a frame from received to written to a worker.
	ToWorker(d time.Duration)
	// Resumed observes a channel from losing its worker to reassigned.
	Resumed(d time.Duration)
	// FinalSent observes a final from received to persisted and queued to
	// the console.
	FinalSent(d time.Duration)
	StoreError()
	Failover()
	IdleRelease()
	// Refused counts a new call refused by a set-up limit.
	Refused(reason string)
	Finalised()
}

// Models resolves a model name (models.Catalog satisfies it).
type Models interface {
	Get(name string) (*models.Manifest, error)
}

// Limits bounds set-up calls and idle channels (see coordinator.Limits).
type Limits struct {
	MaxSettingUp, MaxSettingUpPerConsole, MaxSettingUpPerRemote int
	IdleRelease                                                 time.Duration
}

// Config configures a Manager.
type Config struct {
	Store    Store
	Workers  Workers
	Observer Observer
	Models   Models
	Limits   Limits
	Log      *slog.Logger
	// AbandonAfter is the reloadable abandon_after.
	AbandonAfter func() time.Duration
	// Vocabulary is the reloadable extra words new calls open with.
	Vocabulary func() []proto.Word
	// Export queues finalised calls for export in the finalising commit.
	Export bool
	// Seal records the transcript's hash in the record that finalises a
	// call (nil: none).
	Seal func(rec *store.Call)
	// OnFinalised is called after a call's finalisation is durable (the
	// exporter's wake-up; nil: none).
	OnFinalised func()
}

// Manager holds the live calls.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	store Store
	obs   Observer
	// runCtx ends the dispatchers, writers and janitor (Stop cancels it).
	runCtx context.Context
	stop   context.CancelFunc
	// group owns every goroutine of the live-call path: Wait waits for
	// them.
	group owner.Group

	mu    sync.Mutex
	calls map[proto.CallID]*call
}

var _ ingest.Sink = (*Manager)(nil)

// New returns a Manager; Recover reloads unfinished calls, Run runs its
// janitor.
func New(cfg Config) *Manager {
	m := &Manager{cfg: cfg, log: cfg.Log, store: cfg.Store, obs: cfg.Observer, calls: map[proto.CallID]*call{}}
	m.runCtx, m.stop = context.WithCancel(context.Background())
	return m
}

// Run runs the janitor until Stop.
func (m *Manager) Run() {
	m.group.Go(func() { m.janitor(m.runCtx) })
}

// Stop ends the dispatchers and the janitor, and waits for every goroutine
// of the live-call path. Frame writes still on their way settle first:
// stop it before the store is closed.
func (m *Manager) Stop() {
	m.stop()
	m.group.Wait()
}

// Cancel ends the live-call path's work without waiting (shutdown's
// second step): dispatchers stop — a worker connection closing after it
// is not a failure to recover from — and writes still queued fail with
// the cancelled context. Stop then waits.
func (m *Manager) Cancel() { m.stop() }

// Recover reloads every call that was not finalised.
func (m *Manager) Recover() error {
	n := 0
	err := m.store.EachCall(context.Background(), func(rec *store.Call) error { // a batch at a time
		if rec.State == store.StateFinalised {
			return nil
		}
		if _, err := m.loadCall(rec); err != nil {
			return fmt.Errorf("call %s: %w", rec.ID, err)
		}
		n++
		return nil
	})
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	if n > 0 {
		m.log.Info("recovered in-flight calls", "calls", n)
	}
	return nil
}

func (m *Manager) limits() Limits { return m.cfg.Limits }

func perr(code, format string, a ...any) *proto.Error {
	return &proto.Error{Code: code, Message: fmt.Sprintf(format, a...)}
}

// SamplesToMS converts 16 kHz samples to milliseconds.
func SamplesToMS(n int64) int64 { return n * 1000 / 16000 }
