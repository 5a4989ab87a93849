// Package console is the console side of the QUIC protocol: it sends a
// call's audio, keeps every frame until the coordinator acknowledges it as
// durable, reconnects and resumes by itself when the connection drops, and
// delivers each final exactly once. `callscribe stream`, the tests and the
// load generator use it; a real console embeds the same logic.
package console

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/callscribe/callscribe/internal/leader"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

// Config configures a call.
type Config struct {
	// Server is the coordinator's QUIC host:port. Servers lists the
	// coordinators of a cluster (after Server, if both are set): the
	// console dials them in turn and follows the leader a follower names
	// (internal/leader). One of the two is required.
	Server     string
	Servers    []string
	RootCAs    *x509.CertPool
	ServerName string
	Token      string
	CallID     proto.CallID
	ConsoleID  proto.ConsoleID
	Channels   []string
	Codec      proto.Codec
	Model      string
	// ReconnectFor is how long to keep trying to reach the coordinator
	// after losing it (default 60 s).
	ReconnectFor time.Duration
	// MaxUnacked makes Send block while this many frames are unacked
	// (0: never block).
	MaxUnacked int
	// OnAck, if set, is called for every ack with the channel and the
	// sequence number every frame below is durable up to (load tests time
	// acks with it).
	OnAck func(ch int, next uint32)
	// OnConnect, if set, is called each time a coordinator welcomes the
	// call (its start, and every resume), with the address that answered
	// and the sequence number per channel it holds every frame below
	// (which the console counts as acknowledged): with a cluster, which
	// member the acks that follow come from, until the next OnConnect.
	OnConnect func(addr string, next []uint32)
	// OnError, if set, is called with each error that ends a connection
	// before the console reconnects (a coordinator's error message, a lost
	// connection).
	OnError func(err error)
	Logger  *slog.Logger
}

// Event is what the console receives.
type Event struct {
	Transcript *proto.Transcript
	// Reconnected is set when the console reconnected and resumed.
	Reconnected bool
}

// Call is one call in progress.
type Call struct {
	cfg    Config
	log    *slog.Logger
	events chan Event

	mu         sync.Mutex
	cond       *sync.Cond
	pending    [][]frame // per channel: frames not yet acked, in order
	next       []uint32  // per channel: next sequence number to assign
	acked      []uint32  // per channel: every frame below is durable
	nextFinal  []uint32
	ended      bool
	done       bool
	err        error
	wake       chan struct{}
	reconnects int
}

type frame struct {
	seq     uint32
	capture int64
	payload []byte
}

// ErrRefused wraps a fatal error from the coordinator.
var ErrRefused = errors.New("console: coordinator refused the call")

// New prepares a call; Run connects and streams.
func New(cfg Config) *Call {
	if cfg.ReconnectFor == 0 {
		cfg.ReconnectFor = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	n := len(cfg.Channels)
	c := &Call{cfg: cfg, log: cfg.Logger.With("call", cfg.CallID), events: make(chan Event, 1024),
		pending: make([][]frame, n), next: make([]uint32, n), acked: make([]uint32, n), nextFinal: make([]uint32, n), wake: make(chan struct{}, 1)}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// Events delivers transcript events; it is closed when Run returns.
func (c *Call) Events() <-chan Event { return c.events }

// Send queues one frame of a channel; it returns the frame's sequence number.
func (c *Call) Send(ch int, payload []byte, capture time.Time) (uint32, error) {
	if len(payload) > proto.MaxAudioPayload {
		return 0, fmt.Errorf("console: frame of %d bytes exceeds %d", len(payload), proto.MaxAudioPayload)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.cfg.MaxUnacked > 0 && len(c.pending[ch]) >= c.cfg.MaxUnacked && !c.done {
		c.cond.Wait()
	}
	if c.done {
		return 0, c.doneErrLocked()
	}
	if c.ended {
		return 0, errors.New("console: call already ended")
	}
	seq := c.next[ch]
	c.next[ch]++
	c.pending[ch] = append(c.pending[ch], frame{seq: seq, capture: capture.UnixMicro(), payload: payload})
	c.signal()
	return seq, nil
}

// End says no more audio follows.
func (c *Call) End() {
	c.mu.Lock()
	c.ended = true
	c.mu.Unlock()
	c.signal()
}

// Acked returns per channel how many frames are durable.
func (c *Call) Acked() []uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]uint32(nil), c.acked...)
}

// Reconnects returns how often the call reconnected.
func (c *Call) Reconnects() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reconnects
}

func (c *Call) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Call) doneErrLocked() error {
	if c.err != nil {
		return c.err
	}
	return errors.New("console: call is over")
}

// Run streams until the call is finalised (nil), refused, or the
// coordinator stays unreachable for ReconnectFor. With several
// coordinators it tries the next at once when one cannot be reached
// (giving up only after a whole round has failed), and follows a
// follower's not_leader answer to the leader, resuming the call there.
func (c *Call) Run(ctx context.Context) error {
	defer close(c.events)
	err := c.run(ctx)
	c.mu.Lock()
	c.done, c.err = true, err
	c.cond.Broadcast()
	c.mu.Unlock()
	return err
}

func (c *Call) run(ctx context.Context) error {
	targets := leader.New(append([]string{c.cfg.Server}, c.cfg.Servers...))
	if len(targets.Addrs()) == 0 {
		return errors.New("console: no coordinator address")
	}
	tc := &tls.Config{RootCAs: c.cfg.RootCAs, ServerName: c.cfg.ServerName, NextProtos: []string{proto.ALPNConsole}, MinVersion: tls.VersionTLS13,
		ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	lastOK := time.Now()
	first := true
	for {
		addr := targets.Next()
		finalised, err := c.session(ctx, addr, targets, tc, &first, &lastOK)
		if finalised {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var pe *proto.Error
		if errors.As(err, &pe) && !pe.Retryable() {
			return fmt.Errorf("%w: %v", ErrRefused, pe)
		}
		var wait time.Duration
		if pe != nil && pe.Code == proto.CodeNotLeader {
			// A follower (or a leader that stepped down): not a lost
			// connection. A call whose first hello was redirected is not
			// counted as a reconnect; one that was running resumes at the
			// leader as after any reconnect.
			wait = targets.Redirect(pe)
			c.log.Info("coordinator is a follower: going to the leader", "addr", addr, "leader", pe.Leader, "in", wait)
		} else {
			// Another coordinator is tried at once (wait 0); the pause
			// comes once every one has failed, with an error naming them.
			wait, err = targets.Failed(addr, err)
			first = false
		}
		if wait > 0 && time.Since(lastOK) > c.cfg.ReconnectFor {
			return fmt.Errorf("console: coordinator unreachable for %v: %w", c.cfg.ReconnectFor, err)
		}
		if pe == nil || pe.Code != proto.CodeNotLeader {
			c.log.Warn("connection lost: reconnecting", "addr", addr, "err", err, "in", wait)
		}
		if c.cfg.OnError != nil {
			c.cfg.OnError(err)
		}
		if wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
			}
		}
	}
}

// session runs one connection to addr. first says no stream has been
// welcomed (or lost) yet: a welcome then is the call's start, not a
// reconnect; session clears it once welcomed.
func (c *Call) session(ctx context.Context, addr string, targets *leader.Targets, tc *tls.Config, first *bool, lastOK *time.Time) (bool, error) {
	resume := !*first
	// QUIC gets no ICMP answer from a dead server: a short dial timeout and
	// quick retries find a restarted coordinator at once.
	dctx, cancel := context.WithTimeout(ctx, tuning.DialTimeout)
	conn, err := quic.DialAddr(dctx, addr, tc, &quic.Config{MaxIdleTimeout: tuning.ConsoleQUICIdle, KeepAlivePeriod: tuning.ConsoleQUICKeepAlive})
	cancel()
	if err != nil {
		return false, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.CloseWithError(0, "")
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return false, err
	}
	defer st.Close()
	r, w := proto.NewReader(st), proto.NewWriter(st)
	c.mu.Lock()
	h := proto.Hello{Version: proto.Version, Token: c.cfg.Token, CallID: c.cfg.CallID, ConsoleID: c.cfg.ConsoleID, Channels: c.cfg.Channels,
		Codec: c.cfg.Codec, Model: c.cfg.Model, NextFinal: append([]uint32(nil), c.nextFinal...)}
	c.mu.Unlock()
	if err := w.WriteJSON(proto.THello, h); err != nil {
		return false, err
	}
	var wel proto.Welcome
	if err := r.ReadJSON(proto.TWelcome, &wel); err != nil {
		return false, err
	}
	if len(wel.NextSeq) != len(c.cfg.Channels) {
		return false, fmt.Errorf("console: welcome has %d channels, want %d", len(wel.NextSeq), len(c.cfg.Channels))
	}
	*lastOK = time.Now()
	*first = false
	targets.Connected(addr)
	if c.cfg.OnConnect != nil {
		c.cfg.OnConnect(addr, append([]uint32(nil), wel.NextSeq...))
	}
	c.mu.Lock()
	for ch, n := range wel.NextSeq {
		c.ackLocked(ch, n)
	}
	if resume {
		c.reconnects++
	}
	c.mu.Unlock()
	if resume {
		c.emit(Event{Reconnected: true})
	}
	c.log.Debug("stream open", "next_seq", wel.NextSeq, "resumed", wel.Resumed)

	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	werr := make(chan error, 1)
	go func() { werr <- c.writer(sctx, w, wel.NextSeq) }()
	for {
		m, err := r.Read()
		if err != nil {
			select {
			case e := <-werr:
				if e != nil {
					return false, e
				}
			default:
			}
			return false, err
		}
		*lastOK = time.Now()
		switch m.Type {
		case proto.TAck:
			a, err := proto.ParseAck(m.Body)
			if err != nil || int(a.Channel) >= len(c.cfg.Channels) {
				return false, fmt.Errorf("console: bad ack: %v", err)
			}
			c.mu.Lock()
			c.ackLocked(int(a.Channel), a.NextSeq)
			c.mu.Unlock()
			if c.cfg.OnAck != nil {
				c.cfg.OnAck(int(a.Channel), a.NextSeq)
			}
		case proto.TTranscript:
			var t proto.Transcript
			if err := proto.Unmarshal(m, &t); err != nil || t.Channel < 0 || t.Channel >= len(c.cfg.Channels) {
				return false, fmt.Errorf("console: bad transcript event: %v", err)
			}
			if t.Kind == proto.KindFinal {
				c.mu.Lock()
				dup := t.Index != c.nextFinal[t.Channel]
				if !dup {
					c.nextFinal[t.Channel]++
				}
				c.mu.Unlock()
				if dup {
					continue
				}
			}
			c.emit(Event{Transcript: &t})
		case proto.TFinalised:
			return true, nil
		case proto.TError:
			var e proto.Error
			if err := proto.Unmarshal(m, &e); err != nil {
				return false, err
			}
			return false, &e
		}
	}
}

func (c *Call) emit(e Event) {
	c.events <- e
}

// ackLocked drops frames below n from channel ch's pending list.
func (c *Call) ackLocked(ch int, n uint32) {
	if n <= c.acked[ch] {
		return
	}
	c.acked[ch] = n
	p := c.pending[ch]
	i := 0
	for i < len(p) && p[i].seq < n {
		i++
	}
	c.pending[ch] = append(p[:0:0], p[i:]...)
	c.cond.Broadcast()
}

// writer sends pending frames from the coordinator's NextSeq on, and End
// once every frame is sent.
func (c *Call) writer(ctx context.Context, w *proto.Writer, from []uint32) error {
	sent := append([]uint32(nil), from...)
	endSent := false
	var buf []byte
	for {
		c.mu.Lock()
		var batch []proto.Audio
		for ch, p := range c.pending {
			for _, f := range p {
				if f.seq >= sent[ch] {
					batch = append(batch, proto.Audio{Channel: uint8(ch), Seq: f.seq, Capture: f.capture, Payload: f.payload})
					sent[ch] = f.seq + 1
				}
			}
		}
		var end *proto.End
		if c.ended && !endSent {
			all := true
			for ch := range sent {
				if sent[ch] != c.next[ch] {
					all = false
				}
			}
			if all {
				end = &proto.End{Frames: append([]uint32(nil), c.next...)}
			}
		}
		c.mu.Unlock()
		buf = buf[:0]
		for _, a := range batch {
			buf = proto.AppendAudio(buf, a)
		}
		if len(buf) > 0 {
			if _, err := w.WriteRaw(buf); err != nil {
				return err
			}
		}
		if end != nil {
			if err := w.WriteJSON(proto.TEnd, end); err != nil {
				return err
			}
			endSent = true
		}
		select {
		case <-c.wake:
		case <-ctx.Done():
			return nil
		}
	}
}
