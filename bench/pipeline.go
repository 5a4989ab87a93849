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
	"time"

	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/models"
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

const (
	benchToken = "bench-console-token-0123456789"
	// OperatorToken is the bench appliance's operator credential (its /v1/stats).
	OperatorToken = "bench-operator-token-0123456789"
)
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
	c := app.Coordinator
	r, err := Load(ctx, LoadConfig{Transport: "quic", QUIC: c.QUICAddr().String(), HTTP: "http://" + c.HTTPAddr().String(), RootCAs: app.Pool,
		ServerName: "localhost", Token: app.Token, OperatorToken: OperatorToken, Calls: calls, Duration: d, Prefix: "load"})
	if err != nil {
		return PipelineResult{}, err
	}
	return PipelineResult{Calls: calls, Ack: r.Ack, Stats: statsOf(c), Frames: r.Stored, FramesLost: r.Lost, Finalised: r.Finalised, Elapsed: r.Elapsed}, nil
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

// StartAppliance starts an appliance on dir with a fake worker of slots,
// on free loopback ports.
func StartAppliance(ctx context.Context, dir string, slots int) (*Appliance, error) {
	return StartApplianceAt(ctx, dir, "127.0.0.1:0", "127.0.0.1:0", slots)
}

// StartApplianceAt is StartAppliance on given addresses. The console token
// is written to dir/console.token and the CA to dir/ca.pem, as `dev` does.
func StartApplianceAt(ctx context.Context, dir, quicAddr, httpAddr string, slots int) (*Appliance, error) {
	return StartApplianceAtWith(ctx, dir, quicAddr, httpAddr, slots, 0)
}

// StartApplianceAtWith is StartApplianceAt ending a call whose console has
// been gone for abandonAfter (0: the coordinator's default), as the memory
// soak needs to see abandoned calls come and go.
func StartApplianceAtWith(ctx context.Context, dir, quicAddr, httpAddr string, slots int, abandonAfter time.Duration) (*Appliance, error) {
	if err := os.WriteFile(filepath.Join(dir, pki.ConsoleToken), []byte(benchToken+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, pki.OperatorToken), []byte(OperatorToken+"\n"), 0o600); err != nil {
		return nil, err
	}
	ca, key, err := pki.EnsureCA(dir)
	if err != nil {
		return nil, err
	}
	cert, err := pki.EnsureServerCert(dir, ca, key, []string{"localhost"})
	if err != nil {
		return nil, err
	}
	c, err := coordinator.New(coordinator.Config{DataDir: dir, QUICAddr: quicAddr, HTTPAddr: httpAddr,
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, ConsoleTokens: []string{benchToken}, NodeTokens: []string{benchNode},
		Credentials: []auth.Static{{Name: "operator", Role: auth.Operator, Token: OperatorToken, Source: "file"}}, MetricsOpen: true,
		// Load tests start every console at once from one address and one
		// console credential: set-up limits sized for that, not for a
		// call centre.
		WebRTC: coordinator.WebRTCConfig{MaxSessions: 5000, MaxPending: 5000, MaxPendingPerRemote: 5000},
		Limits: coordinator.Limits{MaxSettingUp: 5000, MaxSettingUpPerRemote: 5000, MaxSettingUpPerConsole: 5000}, AbandonAfter: abandonAfter,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
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
		Model: models.Default, Slots: slots, SelfTest: "fake engine", PID: os.Getpid()})
	var wel proto.WorkerWelcome
	if r.ReadJSON(proto.TWorkerWelcome, &wel) != nil {
		return
	}
	if wel.PingIntervalMS > 0 { // liveness, as a real worker does
		go func() {
			t := time.NewTicker(time.Duration(wel.PingIntervalMS) * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					if w.Write(proto.TWorkerPing, nil) != nil {
						return
					}
				case <-conn.Context().Done():
					return
				}
			}
		}()
	}
	for {
		st, err := conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		go func() {
			// Both directions end with the assignment: a stream whose
			// receive side is left unread (the coordinator's FIN) stays
			// open in QUIC and counts against the connection's stream
			// limit, so after 2 × slots assignments no more could open.
			defer st.CancelRead(0)
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
