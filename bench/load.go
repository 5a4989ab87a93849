package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/ingest/console"
	"github.com/callscribe/callscribe/ingest/whip"
	"github.com/callscribe/callscribe/internal/opus"
	"github.com/callscribe/callscribe/proto"
)

// LoadConfig configures a load run against a running appliance.
type LoadConfig struct {
	// Transport is "quic" or "whip".
	Transport string
	// QUIC is the coordinator's QUIC address, or a comma-separated list of
	// a cluster's coordinators (the consoles follow its leader); HTTP is
	// the HTTP base URL of the coordinator whose figures are read (a
	// cluster's leader).
	QUIC, HTTP string
	RootCAs    *x509.CertPool
	ServerName string
	Token      string
	// OperatorToken reads /v1/stats (the appliance's own figures).
	OperatorToken string
	Calls         int
	Duration      time.Duration
	// Prefix makes call ids unique across runs.
	Prefix string
	// Audio is 16 kHz mono PCM every console loops, each call from its own
	// offset (nil: noise, enough for the fake engine).
	Audio []int16
	// TreePID, when not 0, is the appliance's top process: the CPU of it
	// and every process under it (agent, workers) is measured too.
	TreePID int

	client *http.Client // for the appliance's HTTP API, made once by Load
}

// LoadResult is what a load run measured from the consoles' side.
type LoadResult struct {
	Transport string `json:"transport"`
	Calls     int    `json:"calls"`
	// Connected counts calls whose console got through.
	Connected int `json:"connected"`
	// Sent and Stored count frames (QUIC) or RTP packets (WHIP); Lost is
	// sent minus acknowledged (QUIC) or stored (WHIP), and must be 0.
	Sent   int `json:"sent"`
	Stored int `json:"stored"`
	Lost   int `json:"lost"`
	// Ack is sent → durable ack at the console (QUIC only; WebRTC has no
	// acks: the coordinator's own figures stand for it).
	Ack       Summary `json:"ack"`
	Finalised int     `json:"finalised"`
	// EndToFinal is, per finalised call, from the console's last frame
	// to the call finalised at the console: how far decoding lags behind
	// the audio (it grows with the run when the engine cannot keep up).
	EndToFinal Summary       `json:"end_to_final"`
	Errors     []string      `json:"errors,omitempty"`
	Elapsed    time.Duration `json:"elapsed"`
	// Server is what the appliance itself reported (its /metrics and
	// /v1/stats), when it could be read.
	Server *ServerFigures `json:"server,omitempty"`
}

// ServerFigures are the appliance's own figures for a load run.
type ServerFigures struct {
	// CPUPerStream is the coordinator process's CPU per call, in % of one
	// core, over the steady state (every call started, none ended yet).
	CPUPerStream float64 `json:"cpu_per_stream_pct"`
	CPUTotal     float64 `json:"cpu_total_pct"`
	// RSSPerCall is the growth of the coordinator's resident memory per
	// call from before the run to the steady state.
	RSSPerCall float64 `json:"rss_per_call_bytes"`
	RSS        float64 `json:"rss_bytes"`
	// ApplianceCPU* are the same for every process of the appliance
	// (coordinator, agent, workers) when LoadConfig.TreePID is set.
	ApplianceCPUTotal     float64 `json:"appliance_cpu_total_pct,omitempty"`
	ApplianceCPUPerStream float64 `json:"appliance_cpu_per_stream_pct,omitempty"`
	// The system-added latencies (coordinator windows of the last 8,192
	// events): ack (received → durable), frame → worker, final → console.
	Ack       coordinator.Quantiles `json:"ack"`
	ToWorker  coordinator.Quantiles `json:"to_worker"`
	ToConsole coordinator.Quantiles `json:"to_console"`
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Debian ships.
const clockTicks = 100

// Load drives cfg.Calls simulated consoles at real-time pace for
// cfg.Duration each, started evenly over the first second.
func Load(ctx context.Context, cfg LoadConfig) (LoadResult, error) {
	res := LoadResult{Transport: cfg.Transport, Calls: cfg.Calls}
	cfg.client = httpClient(cfg.RootCAs)
	var run func(ctx context.Context, i int, rec *recorders) (sent, stored int, finalised bool, err error)
	switch cfg.Transport {
	case "quic":
		run = cfg.quicCall
	case "whip":
		pkts, err := opusPackets(cfg.Audio)
		if err != nil {
			return res, err
		}
		run = func(ctx context.Context, i int, rec *recorders) (int, int, bool, error) {
			return cfg.whipCall(ctx, i, pkts, rec)
		}
	default:
		return res, fmt.Errorf("bench: transport %q (quic or whip)", cfg.Transport)
	}
	var rec recorders
	var mu sync.Mutex
	var wg sync.WaitGroup
	t0 := time.Now()
	obs := make(chan *ServerFigures, 1)
	go func() {
		f, err := cfg.observe(ctx, t0)
		if err != nil {
			mu.Lock()
			res.Errors = append(res.Errors, "server figures: "+err.Error())
			mu.Unlock()
		}
		obs <- f
	}()
	for i := range cfg.Calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-time.After(time.Duration(i) * time.Second / time.Duration(cfg.Calls)):
			case <-ctx.Done():
				return
			}
			sent, stored, fin, err := run(ctx, i, &rec)
			mu.Lock()
			defer mu.Unlock()
			res.Sent += sent
			res.Stored += stored
			if sent > 0 {
				res.Connected++
			}
			if fin {
				res.Finalised++
			}
			if err != nil && len(res.Errors) < 10 {
				res.Errors = append(res.Errors, err.Error())
			}
		}()
	}
	wg.Wait()
	res.Server = <-obs
	res.Elapsed = time.Since(t0)
	res.Lost = res.Sent - res.Stored
	res.Ack, res.EndToFinal = rec.ack.Summary(), rec.endToFinal.Summary()
	return res, nil
}

// recorders are the latencies a load run records at the consoles.
type recorders struct{ ack, endToFinal Recorder }

// frame returns call i's payload for its frame k of n samples: its own
// stretch of cfg.Audio (calls start 7.3 s apart in it), or noise.
func (cfg LoadConfig) frame(i, k, n int) []byte {
	b := make([]byte, 2*n)
	if len(cfg.Audio) == 0 {
		for j := range b {
			b[j] = byte(rand.IntN(256))
		}
		return b
	}
	off := i*116800 + k*n
	for j := range n {
		binary.LittleEndian.PutUint16(b[2*j:], uint16(cfg.Audio[(off+j)%len(cfg.Audio)]))
	}
	return b
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func (cfg LoadConfig) quicCall(ctx context.Context, i int, rec *recorders) (int, int, bool, error) {
	frames := int(cfg.Duration / (100 * time.Millisecond))
	var smu sync.Mutex
	sent := make([]time.Time, frames)
	acked := uint32(0)
	call := console.New(console.Config{Servers: strings.Split(cfg.QUIC, ","), RootCAs: cfg.RootCAs, ServerName: cfg.ServerName, Token: cfg.Token,
		CallID: proto.CallID(fmt.Sprintf("%s-%d", cfg.Prefix, i)), ConsoleID: proto.ConsoleID(fmt.Sprintf("load-%d", i)), Channels: []string{"caller"}, Codec: proto.CodecL16,
		Logger: quietLogger(),
		OnAck: func(_ int, next uint32) {
			now := time.Now()
			smu.Lock()
			defer smu.Unlock()
			for ; acked < next && int(acked) < len(sent); acked++ {
				if acked >= warmupFrames {
					rec.ack.Add(now.Sub(sent[acked]))
				}
			}
		}})
	done := make(chan error, 1)
	go func() { done <- call.Run(ctx) }()
	go func() {
		for range call.Events() {
		}
	}()
	var noisy []byte
	if len(cfg.Audio) == 0 {
		noisy = cfg.frame(i, 0, 1600) // the fake engine ignores content: one frame will do
	}
	start := time.Now()
	n := 0
	for seq := range frames {
		payload := noisy
		if payload == nil {
			payload = cfg.frame(i, seq, 1600)
		}
		time.Sleep(time.Until(start.Add(time.Duration(seq) * 100 * time.Millisecond)))
		smu.Lock()
		sent[seq] = time.Now()
		smu.Unlock()
		if _, err := call.Send(0, payload, time.Now()); err != nil {
			break
		}
		n++
	}
	end := time.Now()
	call.End()
	err := <-done
	if err == nil {
		rec.endToFinal.Add(time.Since(end))
	}
	return n, int(call.Acked()[0]), err == nil, err
}

// opusPackets encodes pcm (16 kHz), or one second of noise when there is
// none, as 20 ms Opus packets, which every WebRTC console loops (encoding
// once is the consoles' cost, not the system's).
func opusPackets(pcm []int16) ([][]byte, error) {
	if len(pcm) == 0 {
		pcm = make([]int16, 16000)
		for i := range pcm {
			pcm[i] = int16(rand.IntN(4000) - 2000)
		}
	}
	e, err := opus.NewEncoder(16000, 32000)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	var out [][]byte
	for k := 0; k+320 <= len(pcm); k += 320 {
		p, err := e.Encode(pcm[k : k+320])
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, errors.New("bench: audio shorter than one 20 ms packet")
	}
	return out, nil
}

func (cfg LoadConfig) whipCall(ctx context.Context, i int, pkts [][]byte, rec *recorders) (int, int, bool, error) {
	id := proto.CallID(fmt.Sprintf("%s-%d", cfg.Prefix, i))
	var cl *whip.Client
	var err error
	for attempt := 0; attempt < 20; attempt++ { // 503s while many offers are answered
		cl, err = whip.Dial(ctx, whip.ClientConfig{Server: cfg.HTTP, RootCAs: cfg.RootCAs, Token: cfg.Token, CallID: id, ConsoleID: proto.ConsoleID(fmt.Sprintf("load-%d", i)),
			Channels: []string{"caller"}, Codec: proto.CodecOpus, Logger: quietLogger()})
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
	}
	if err != nil {
		return 0, 0, false, err
	}
	defer cl.Close(context.Background())
	finalised := make(chan struct{})
	var finalAt time.Time
	go func() {
		for ev := range cl.Events() {
			if ev.Finalised != nil {
				finalAt = time.Now()
				close(finalised)
				for range cl.Events() {
				}
				return
			}
		}
	}()
	n := int(cfg.Duration / (20 * time.Millisecond))
	start := time.Now()
	sent := 0
	for k := range n {
		time.Sleep(time.Until(start.Add(time.Duration(k) * 20 * time.Millisecond)))
		if err := cl.Send(0, pkts[(k+i*365)%len(pkts)], 960); err != nil {
			break
		}
		sent++
	}
	end := time.Now()
	if err := cl.End(); err != nil {
		return sent, 0, false, err
	}
	fin := false
	select {
	case <-finalised:
		fin = true
		rec.endToFinal.Add(finalAt.Sub(end))
	case <-time.After(20 * time.Second):
	}
	stored, err := cfg.storedFrames(ctx, id)
	return sent, stored, fin, err
}

// storedFrames asks the coordinator how many frames of a call are durable.
func (cfg LoadConfig) storedFrames(ctx context.Context, id proto.CallID) (int, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cfg.HTTP+"/v1/calls/"+string(id), nil)
	req.Header.Set("Authorization", "Bearer "+cfg.Token)
	res, err := cfg.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	var v struct {
		ChannelInfo []struct {
			Stored int `json:"frames_stored"`
		} `json:"channel_info"`
	}
	if err := json.NewDecoder(res.Body).Decode(&v); err != nil {
		return 0, err
	}
	if len(v.ChannelInfo) == 0 {
		return 0, errors.New("bench: call has no channels")
	}
	return v.ChannelInfo[0].Stored, nil
}

func httpClient(pool *x509.CertPool) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}
