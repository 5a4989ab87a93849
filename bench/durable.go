package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/proto"
)

// Sink makes one frame durable and returns when it is.
type Sink func(ctx context.Context, call, seq int, payload []byte) error

// Workload is N calls each sending one frame per Interval for Duration.
type Workload struct {
	Calls     int
	FrameSize int
	Interval  time.Duration
	Duration  time.Duration
}

// Result of a workload.
type Result struct {
	Latency Summary
	Frames  int
	Errors  int
	// Latencies are every ack latency, in no order (to pool runs).
	Latencies []time.Duration
}

// warmupWrites are written, untimed, before a workload starts: a store's
// first writes create and map its files, a cost paid once per process, not
// per call.
const warmupWrites = 20

// Run drives the workload against sink; calls start spread over one
// interval so they do not all tick together.
func (w Workload) Run(ctx context.Context, sink Sink) Result {
	warm := make([]byte, w.FrameSize)
	for seq := range warmupWrites {
		_ = sink(ctx, 1_000_000, seq, warm)
	}
	var rec Recorder
	var mu sync.Mutex
	errs := 0
	var wg sync.WaitGroup
	frames := int(w.Duration / w.Interval)
	for c := range w.Calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, w.FrameSize)
			for i := range payload {
				payload[i] = byte(c + i)
			}
			start := time.Now().Add(time.Duration(c) * w.Interval / time.Duration(w.Calls))
			for seq := range frames {
				time.Sleep(time.Until(start.Add(time.Duration(seq) * w.Interval)))
				if ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				if err := sink(ctx, c, seq, payload); err != nil {
					mu.Lock()
					errs++
					mu.Unlock()
					continue
				}
				rec.Add(time.Since(t0))
			}
		}()
	}
	wg.Wait()
	s := rec.Summary()
	return Result{Latency: s, Frames: s.N, Errors: errs, Latencies: rec.d}
}

// MaxThroughput pushes frames from many writers as fast as acks allow for d
// and returns durable frames per second.
func MaxThroughput(ctx context.Context, sink Sink, writers, frameSize int, d time.Duration) float64 {
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	deadline := time.Now().Add(d)
	for c := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, frameSize)
			n := 0
			for seq := 0; time.Now().Before(deadline) && ctx.Err() == nil; seq++ {
				if sink(ctx, 100000+c, seq, payload) == nil {
					n++
				}
			}
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	return float64(total) / d.Seconds()
}

// Commits records a store's group commits: how long each took (its writes
// and syncs) and how many writes it carried. An ack waits for the commit in
// progress, then for its own, so these explain the ack latency.
type Commits struct {
	Recorder
	mu              sync.Mutex
	commits, writes int
}

// add records one commit; a nil *Commits records nothing.
func (c *Commits) add(writes int, took time.Duration) {
	if c == nil {
		return
	}
	c.Add(took)
	c.mu.Lock()
	c.commits++
	c.writes += writes
	c.mu.Unlock()
}

// Reset forgets the commits recorded so far.
func (c *Commits) Reset() {
	c.Recorder.Reset()
	c.mu.Lock()
	c.commits, c.writes = 0, 0
	c.mu.Unlock()
}

// Count is how many commits were recorded.
func (c *Commits) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.commits
}

// PerCommit is the mean number of writes one commit carried.
func (c *Commits) PerCommit() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.commits == 0 {
		return 0
	}
	return float64(c.writes) / float64(c.commits)
}

// BadgerSink is callscribe's segment store exactly as the coordinator uses
// it, encrypted at rest with a throwaway key. Commits, if not nil, records
// its group commits.
func BadgerSink(dir string, commits *Commits) (Sink, func(), error) {
	key := make([]byte, store.KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, nil, err
	}
	st, err := store.Open(dir, store.Options{Key: key, OnCommit: func(writes, _ int, took time.Duration) { commits.add(writes, took) }})
	if err != nil {
		return nil, nil, err
	}
	return func(ctx context.Context, call, seq int, payload []byte) error {
		return st.PutFrames(ctx, proto.CallID(fmt.Sprintf("bench-%d", call)), 0, []store.Frame{{Seq: uint32(seq), Payload: payload}})
	}, func() { st.Close() }, nil
}

// FloorSink is the disk's floor: one append-only file, group commit (one
// goroutine writes whatever is pending, then one fdatasync). Commits, if not
// nil, records its group commits.
func FloorSink(dir string, commits *Commits) (Sink, func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "floor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, err
	}
	type req struct {
		b    []byte
		done chan error
	}
	reqs := make(chan req, 4096)
	quit := make(chan struct{})
	go func() {
		for {
			var batch []req
			select {
			case r := <-reqs:
				batch = append(batch, r)
			case <-quit:
				return
			}
		drain:
			for {
				select {
				case r := <-reqs:
					batch = append(batch, r)
				default:
					break drain
				}
			}
			var buf []byte
			for _, r := range batch {
				buf = append(buf, r.b...)
			}
			t0 := time.Now()
			_, err := f.Write(buf)
			if err == nil {
				err = syscall.Fdatasync(int(f.Fd()))
			}
			commits.add(len(batch), time.Since(t0))
			for _, r := range batch {
				r.done <- err
			}
		}
	}()
	return func(ctx context.Context, call, seq int, payload []byte) error {
		hdr := fmt.Appendf(nil, "%d/%d/%d:", call, seq, len(payload))
		r := req{b: append(hdr, payload...), done: make(chan error, 1)}
		reqs <- r
		return <-r.done
	}, func() { close(quit); f.Close() }, nil
}

// FsyncLatency measures single 4 KiB write+fdatasync latency (no batching).
func FsyncLatency(dir string, n int) (Summary, error) {
	f, err := os.OpenFile(filepath.Join(dir, "fsync.probe"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return Summary{}, err
	}
	defer f.Close()
	var rec Recorder
	b := make([]byte, 4096)
	for range n {
		t0 := time.Now()
		if _, err := f.Write(b); err != nil {
			return Summary{}, err
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return Summary{}, err
		}
		rec.Add(time.Since(t0))
	}
	return rec.Summary(), nil
}
