package worker

import (
	"bytes"
	"context"
	"crypto/tls"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/internal/leader"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/internal/wer"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/models/asr"
	"github.com/callscribe/callscribe/models/engine"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

//go:embed selftest.wav
var selfTestWAV []byte

// Config configures a worker process.
type Config struct {
	// Coordinator is the host:port of the coordinator's QUIC listener.
	// Coordinators lists the coordinators of a cluster (after Coordinator,
	// if both are set): the worker dials them in turn and follows the
	// leader a follower names (internal/leader).
	Coordinator  string
	Coordinators []string
	CAFile       string
	CertFile     string // client certificate (mutual TLS); "" for none
	KeyFile      string
	ServerName   string
	Token        string
	WorkerID     proto.WorkerID
	NodeID       proto.NodeID
	Model        string
	ModelDir     string
	Slots        int
	Logger       *slog.Logger
}

// ErrSelfTest means the engine failed its test decode.
var ErrSelfTest = errors.New("worker: self-test failed")

// Run loads the engine, proves it with a test decode and serves
// assignments until ctx ends, reconnecting when the coordinator goes away.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger.With("worker", cfg.WorkerID)
	cat, err := models.Load(cfg.ModelDir)
	if err != nil {
		return err
	}
	m, err := cat.Get(cfg.Model)
	if err != nil {
		return err
	}
	f, err := engine.NewFactory(m)
	if err != nil {
		return err
	}
	slots := cfg.Slots
	if slots <= 0 {
		slots = m.Resources.StreamsPerInstance
	}
	pool := engine.NewPool(f, slots)
	defer pool.Close()
	t0 := time.Now()
	text, err := SelfTest(ctx, pool, m)
	if err != nil {
		return err
	}
	log.Info("self-test passed", "model", m.Name, "text", text, "ms", time.Since(t0).Milliseconds())

	pool2, err := pki.CertPool(cfg.CAFile)
	if err != nil {
		return err
	}
	tc := &tls.Config{RootCAs: pool2, ServerName: cfg.ServerName, NextProtos: []string{proto.ALPNNode}, MinVersion: tls.VersionTLS13}
	if cfg.CertFile != "" {
		cert, err := pki.LoadClientCert(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return err
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	hello := proto.WorkerHello{Version: proto.Version, Token: cfg.Token, WorkerID: cfg.WorkerID, NodeID: cfg.NodeID, Model: m.Name, Slots: slots, SelfTest: text, PID: os.Getpid()}
	return connect(ctx, leader.New(append([]string{cfg.Coordinator}, cfg.Coordinators...)), tc, hello, pool, log)
}

// connect registers with the coordinators' leader and serves it until ctx
// ends, reconnecting when the coordinator goes away: the next coordinator
// at once when one cannot be reached, a pause once all have failed, the
// leader at once when a follower names it. Only a refusal ends it early.
func connect(ctx context.Context, targets *leader.Targets, tc *tls.Config, hello proto.WorkerHello, pool *engine.Pool, log *slog.Logger) error {
	if len(targets.Addrs()) == 0 {
		return errors.New("worker: no coordinator address")
	}
	for ctx.Err() == nil {
		addr := targets.Next()
		err := serve(ctx, addr, targets, tc, hello, pool, log)
		var pe *proto.Error
		if errors.As(err, &pe) && !pe.Retryable() {
			return fmt.Errorf("worker: coordinator refused: %w", err)
		}
		if ctx.Err() != nil {
			break
		}
		var wait time.Duration
		if pe != nil && pe.Code == proto.CodeNotLeader {
			wait = targets.Redirect(pe)
			log.Info("coordinator is a follower: going to the leader", "addr", addr, "leader", pe.Leader, "in", wait)
		} else {
			wait, err = targets.Failed(addr, err)
			log.Warn("coordinator connection ended: reconnecting", "addr", addr, "err", err, "in", wait)
		}
		if wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
			}
		}
	}
	return nil
}

// SelfTest decodes the built-in clip and checks the transcript.
func SelfTest(ctx context.Context, pool *engine.Pool, m *models.Manifest) (string, error) {
	w, err := audio.ReadWAV(bytes.NewReader(selfTestWAV))
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrSelfTest, err)
	}
	in, err := pool.Get(ctx)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrSelfTest, err)
	}
	defer pool.Put(in)
	evs, err := engine.Transcribe(in, w.Channel(0))
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrSelfTest, err)
	}
	var text string
	for _, e := range evs {
		if text != "" {
			text += " "
		}
		text += e.Text
	}
	// Compared as written words (case, punctuation and spellings such as
	// metres/meters folded): the engine's spelling of a word may differ
	// between CPUs, its recognition must not.
	if text == "" || (m.SelfTest.Expect != "" && !slices.Equal(wer.Words(text), wer.Words(m.SelfTest.Expect))) {
		return text, fmt.Errorf("%w: got %q, want %q", ErrSelfTest, text, m.SelfTest.Expect)
	}
	return text, nil
}

func serve(ctx context.Context, addr string, targets *leader.Targets, tc *tls.Config, hello proto.WorkerHello, pool *engine.Pool, log *slog.Logger) error {
	// A dial to a dead coordinator gets no ICMP answer over QUIC: keep the
	// timeout short and retry, so a restarted coordinator is found at once.
	dctx, cancel := context.WithTimeout(ctx, tuning.DialTimeout)
	conn, err := quic.DialAddr(dctx, addr, tc, &quic.Config{
		MaxIdleTimeout: tuning.WorkerQUICIdle, KeepAlivePeriod: tuning.WorkerQUICKeepAlive, MaxIncomingStreams: tuning.WorkerQUICStreams})
	cancel()
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	var wg sync.WaitGroup
	// Close first: that ends every assignment's blocked read; then wait.
	defer func() {
		_ = conn.CloseWithError(0, "worker stopping")
		wg.Wait()
	}()
	ctl, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	cw, cr := proto.NewWriter(ctl), proto.NewReader(ctl)
	if err := cw.WriteJSON(proto.TWorkerHello, hello); err != nil {
		return err
	}
	var wel proto.WorkerWelcome
	if err := cr.ReadJSON(proto.TWorkerWelcome, &wel); err != nil {
		return err
	}
	targets.Connected(addr)
	log.Info("registered with coordinator", "addr", addr)
	if wel.Version >= 2 && wel.PingIntervalMS > 0 {
		// Liveness: a frozen or wedged worker stops pinging, and the
		// coordinator moves its channels at once instead of waiting for
		// QUIC's idle timeout.
		wg.Add(1)
		go func() {
			defer wg.Done()
			ping(ctx, conn, cw, time.Duration(wel.PingIntervalMS)*time.Millisecond)
		}()
	}
	for {
		st, err := conn.AcceptStream(ctx)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			handleAssignment(ctx, st, pool, log)
		}()
	}
}

// ping writes worker_ping every interval until the connection ends.
func ping(ctx context.Context, conn *quic.Conn, w *proto.Writer, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := w.Write(proto.TWorkerPing, nil); err != nil {
				return
			}
		case <-conn.Context().Done():
			return
		case <-ctx.Done():
			return
		}
	}
}

// handleAssignment decodes one call channel.
func handleAssignment(ctx context.Context, st *quic.Stream, pool *engine.Pool, log *slog.Logger) {
	defer st.Close()
	// The read side is given up too: a stream counts against the
	// connection's stream limit until both sides are done, and a long-lived
	// worker would otherwise stop taking assignments after that many.
	defer st.CancelRead(0)
	r, w := proto.NewReader(st), proto.NewWriter(st)
	fail := func(err error) {
		log.Warn("assignment failed", "err", err)
		_ = w.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerError, Error: err.Error()})
		st.CancelRead(1)
	}
	var a proto.Assign
	if err := r.ReadJSON(proto.TAssign, &a); err != nil {
		fail(err)
		return
	}
	log = log.With("call", a.CallID, "channel", a.Channel)
	in, err := pool.GetFor(ctx, a.Vocabulary)
	if err != nil {
		fail(err)
		return
	}
	defer pool.Put(in)
	ch, err := NewChannel(a.Codec, in, a.Checkpoint, a.FromSeq)
	if err != nil {
		fail(err)
		return
	}
	log.Info("assignment started", "from_seq", a.FromSeq, "resume", len(a.Checkpoint) > 0)
	send := func(evs []Event) error {
		for _, e := range evs {
			we := proto.WorkerEvent{Index: e.Index, Text: e.Text, Heard: e.Heard, Start: e.Start, End: e.End, Decoded: ch.Next()}
			if e.Kind == asr.Final {
				we.Kind, we.NextSeq, we.Checkpoint = proto.WorkerFinal, e.NextSeq, e.Checkpoint
			} else {
				we.Kind = proto.WorkerPartial
			}
			if err := w.WriteJSON(proto.TWorkerEvent, we); err != nil {
				return err
			}
		}
		return nil
	}
	for {
		m, err := r.Read()
		if err != nil {
			if ctx.Err() == nil {
				log.Info("assignment ended by coordinator", "err", err)
			}
			return
		}
		switch m.Type {
		case proto.TAudio:
			au, err := proto.ParseAudio(m.Body)
			if err != nil {
				fail(err)
				return
			}
			evs, err := ch.Feed(au.Seq, au.Payload)
			for _, u := range ch.TakeUndecodable() {
				log.Warn("undecodable frame concealed", "frame", u.Seq, "err", u.Err)
				seq := u.Seq
				if err := w.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerUndecodable, Frame: &seq, Error: u.Err.Error(), Decoded: ch.Next()}); err != nil {
					return
				}
			}
			if err != nil {
				seq := au.Seq
				log.Warn("assignment failed", "frame", seq, "err", err)
				_ = w.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerError, Error: err.Error(), Frame: &seq})
				st.CancelRead(1)
				return
			}
			if err := send(evs); err != nil {
				return
			}
		case proto.TEnd:
			evs, err := ch.Finish()
			if err != nil {
				fail(err)
				return
			}
			if err := send(evs); err != nil {
				return
			}
			_ = w.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerDone, Decoded: ch.Next()})
			log.Info("assignment complete", "frames", ch.Next())
			return
		default:
			fail(fmt.Errorf("unexpected message type %d", m.Type))
			return
		}
	}
}
