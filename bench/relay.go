package bench

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Relay is a TCP relay on 127.0.0.1 that delays every byte it forwards, in
// each direction, by a fixed time: a link of that one-way delay, without
// a bandwidth limit, in user space. It stands in for `tc qdisc … netem
// delay` where the kernel has no netem (the relay adds a copy through this
// process and a timer wake-up per chunk, which netem does not).
type Relay struct {
	ln     net.Listener
	target string
	delay  time.Duration

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup

	// late, while recording, gets how late each chunk was written after
	// its due time: what the relay adds beyond the delay.
	recording atomic.Bool
	late      *Recorder
}

// NewRelay listens on 127.0.0.1 (a free port) and relays each connection
// to target, delaying both directions by delay.
func NewRelay(target string, delay time.Duration) (*Relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench: relay: %w", err)
	}
	r := &Relay{ln: ln, target: target, delay: delay, conns: map[net.Conn]struct{}{}, late: &Recorder{}}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// Addr is where the relay listens.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// accept runs until the listener is closed.
func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		t, err := net.DialTimeout("tcp", r.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		if !r.track(c, t) {
			c.Close()
			t.Close()
			return
		}
		r.wg.Add(2)
		go r.pipe(t, c)
		go r.pipe(c, t)
	}
}

// track registers a relayed pair, unless the relay is closing.
func (r *Relay) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	for _, c := range cs {
		r.conns[c] = struct{}{}
	}
	return true
}

// chunk is what one read returned, due to be written at due.
type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst, each chunk written delay after it was read. It
// ends when either side fails or closes (then both are closed), so it lasts
// no longer than the connection.
func (r *Relay) pipe(dst, src net.Conn) {
	defer r.wg.Done()
	q := make(chan chunk, 1024) // a full queue holds the reader back
	go func() {
		defer close(q)
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				q <- chunk{b: append([]byte(nil), buf[:n]...), due: time.Now().Add(r.delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	failed := false
	for c := range q {
		if failed {
			continue // drain, so the reader ends
		}
		if d := time.Until(c.due); d > 0 {
			sleepPrecisely(d)
		}
		if _, err := dst.Write(c.b); err != nil {
			failed = true
			src.Close()
			continue
		}
		if r.recording.Load() {
			r.late.Add(time.Since(c.due))
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok && !failed {
		_ = tc.CloseWrite()
		return
	}
	dst.Close()
}

// sleepPrecisely sleeps d with nanosleep(2): Go's timers wake a sleeping
// goroutine on a millisecond tick here (time.Sleep(250µs) takes about
// 1.1 ms), which would make every delay under a millisecond one of about
// a millisecond. The goroutine's thread blocks meanwhile.
func sleepPrecisely(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}

// Record starts or stops recording how late the relay writes each chunk
// (after its due time, once written).
func (r *Relay) Record(on bool) { r.recording.Store(on) }

// Lateness is what was recorded; Reset forgets it.
func (r *Relay) Lateness() *Recorder { return r.late }

// Close stops the relay and cuts every relayed connection.
func (r *Relay) Close() error {
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	err := r.ln.Close()
	r.wg.Wait()
	return err
}

// EchoRTT measures the round trip of a 64-byte message on 127.0.0.1, n
// times one after the other, through a Relay of the given one-way delay
// (0: straight to the echo server, as the network stack delays it). It is
// the check that a link's delay is in place.
func EchoRTT(relayDelay time.Duration, n int) (Summary, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return Summary{}, err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	addr := ln.Addr().String()
	if relayDelay > 0 {
		r, err := NewRelay(addr, relayDelay)
		if err != nil {
			return Summary{}, err
		}
		defer r.Close()
		addr = r.Addr()
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return Summary{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Duration(n)*(2*relayDelay+time.Second) + 5*time.Second))
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	var rec Recorder
	msg, back := make([]byte, 64), make([]byte, 64)
	for range n {
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return Summary{}, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return Summary{}, err
		}
		rec.Add(time.Since(t0))
	}
	if rec.Summary().N == 0 {
		return Summary{}, errors.New("bench: no round trips")
	}
	return rec.Summary(), nil
}
