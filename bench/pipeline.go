package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/ingest/console"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

// PipelineResult is what a pipeline run measured.
type PipelineResult struct {
	Calls      int
	Ack        Summary // console: frame sent → durable ack received
	Stats      coordinator.Stats
	Frames     int
	Finalised  int
	FramesLost int
	Elapsed    time.Duration
}

// warmupFrames are left out of the ack figures: the first second of each
// call includes its QUIC handshake.
const warmupFrames = 10

const benchToken = "bench-console-token-0123456789"
const benchNode = "bench-node-token-0123456789"

// Pipeline runs calls consoles over QUIC against an in-process coordinator
// (real Badger in dir, real QUIC on loopback) with a fast fake worker that
// emits a final every 10 frames: the system's own cost, without ASR.
func Pipeline(ctx context.Context, dir string, calls int, d time.Duration) (PipelineResult, error) {
	app, err := StartAppliance(ctx, dir, calls+8)
	if err != nil {
		return PipelineResult{}, err
	}
	defer app.Stop()
	c, pool := app.Coordinator, app.Pool

	var ack Recorder
	var wg sync.WaitGroup
	var mu sync.Mutex
	res := PipelineResult{Calls: calls}
	frames := int(d / (100 * time.Millisecond))
	t0 := time.Now()
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var smu sync.Mutex
			sent := make([]time.Time, frames)
			acked := uint32(0)
			call := console.New(console.Config{Server: c.QUICAddr().String(), RootCAs: pool, ServerName: "localhost", Token: benchToken,
				CallID: proto.CallID(fmt.Sprintf("load-%d", i)), ConsoleID: "bench", Channels: []string{"caller"}, Codec: proto.CodecL16,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				OnAck: func(_ int, next uint32) {
					now := time.Now()
					smu.Lock()
					for ; acked < next && int(acked) < len(sent); acked++ {
						if acked >= warmupFrames { // steady state: after the handshake
							ack.Add(now.Sub(sent[acked]))
						}
					}
					smu.Unlock()
				}})
			done := make(chan error, 1)
			go func() { done <- call.Run(ctx) }()
			go func() {
				for range call.Events() {
				}
			}()
			payload := make([]byte, 3200)
			start := time.Now().Add(time.Duration(i) * 100 * time.Millisecond / time.Duration(calls))
			for seq := range frames {
				time.Sleep(time.Until(start.Add(time.Duration(seq) * 100 * time.Millisecond)))
				smu.Lock()
				sent[seq] = time.Now()
				smu.Unlock()
				if _, err := call.Send(0, payload, time.Now()); err != nil {
					break
				}
			}
			call.End()
			err := <-done
			mu.Lock()
			defer mu.Unlock()
			got := call.Acked()[0]
			res.Frames += int(got)
			res.FramesLost += frames - int(got)
			if err == nil {
				res.Finalised++
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(t0)
	res.Ack = ack.Summary()
	res.Stats = statsOf(c)
	return res, nil
}

func statsOf(c *coordinator.Coordinator) coordinator.Stats { return c.Stats() }

// Appliance is an in-process coordinator (real Badger, real QUIC, HTTP and
// WHIP on loopback) with the fast fake worker: the system without ASR.
type Appliance struct {
	Coordinator *coordinator.Coordinator
	Pool        *x509.CertPool
	Token       string
	stop        func()
}

// StartAppliance starts an appliance on dir with a fake worker of slots.
func StartAppliance(ctx context.Context, dir string, slots int) (*Appliance, error) {
	ca, key, err := pki.EnsureCA(dir)
	if err != nil {
		return nil, err
	}
	cert, err := pki.EnsureServerCert(dir, ca, key, []string{"localhost"})
	if err != nil {
		return nil, err
	}
	c, err := coordinator.New(coordinator.Config{DataDir: dir, QUICAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, ConsoleTokens: []string{benchToken}, NodeTokens: []string{benchNode},
		WebRTC: coordinator.WebRTCConfig{MaxSessions: 5000}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return nil, err
	}
	if err := c.Listen(); err != nil {
		return nil, err
	}
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { _ = c.Serve(sctx); close(served) }()
	pool, err := pki.CertPool(filepath.Join(dir, pki.CAFile))
	if err != nil {
		stop()
		<-served
		return nil, err
	}
	wctx, wstop := context.WithCancel(ctx)
	go fakeWorker(wctx, c.QUICAddr().String(), pool, slots)
	time.Sleep(200 * time.Millisecond)
	return &Appliance{Coordinator: c, Pool: pool, Token: benchToken, stop: func() { wstop(); stop(); <-served }}, nil
}

// Stop stops the appliance.
func (a *Appliance) Stop() { a.stop() }

// fakeWorker speaks the worker protocol and "decodes" instantly: a final
// every 10 frames (with a checkpoint, as a real engine sends), then done.
func fakeWorker(ctx context.Context, addr string, pool *x509.CertPool, slots int) {
	tc := &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{proto.ALPNNode}}
	conn, err := quic.DialAddr(ctx, addr, tc, &quic.Config{MaxIncomingStreams: int64(slots) * 2})
	if err != nil {
		return
	}
	defer conn.CloseWithError(0, "")
	ctl, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return
	}
	w, r := proto.NewWriter(ctl), proto.NewReader(ctl)
	_ = w.WriteJSON(proto.TWorkerHello, proto.WorkerHello{Version: proto.Version, Token: benchNode, WorkerID: "fake-0", NodeID: "bench",
		Model: "en-us", Slots: slots, SelfTest: "fake engine", PID: os.Getpid()})
	var wel proto.WorkerWelcome
	if r.ReadJSON(proto.TWorkerWelcome, &wel) != nil {
		return
	}
	for {
		st, err := conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		go func() {
			defer st.Close()
			r, w := proto.NewReader(st), proto.NewWriter(st)
			var a proto.Assign
			if r.ReadJSON(proto.TAssign, &a) != nil {
				return
			}
			next, idx := a.FromSeq, uint32(0)
			for {
				m, err := r.Read()
				if err != nil {
					return
				}
				switch m.Type {
				case proto.TAudio:
					au, _ := proto.ParseAudio(m.Body)
					next = au.Seq + 1
					if next%10 == 0 {
						_ = w.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerFinal, Index: idx, Text: fmt.Sprint("utterance ", idx),
							Start: int64(next-10) * 1600, End: int64(next) * 1600, Decoded: next, NextSeq: next, Checkpoint: []byte(`{"fake":1}`)})
						idx++
					}
				case proto.TEnd:
					_ = w.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerDone, Decoded: next})
					return
				}
			}
		}()
	}
}
