package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
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
	// QUIC is the coordinator's QUIC address; HTTP its HTTP base URL.
	QUIC, HTTP string
	RootCAs    *x509.CertPool
	ServerName string
	Token      string
	Calls      int
	Duration   time.Duration
	// Prefix makes call ids unique across runs.
	Prefix string

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
	Ack       Summary       `json:"ack"`
	Finalised int           `json:"finalised"`
	Errors    []string      `json:"errors,omitempty"`
	Elapsed   time.Duration `json:"elapsed"`
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
	// The system-added latencies (coordinator windows of the last 8,192
	// events): ack (received → durable), frame → worker, final → console.
	Ack       coordinator.Quantiles `json:"ack"`
	ToWorker  coordinator.Quantiles `json:"to_worker"`
	ToConsole coordinator.Quantiles `json:"to_console"`
}

// scrape reads the coordinator's process CPU seconds and resident memory
// from /metrics.
func (cfg LoadConfig) scrape(ctx context.Context) (cpu, rss float64, err error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cfg.HTTP+"/metrics", nil)
	res, err := cfg.client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, 0, err
	}
	found := 0
	for _, l := range strings.Split(string(b), "\n") {
		var v float64
		if _, err := fmt.Sscanf(l, "process_cpu_seconds_total %g", &v); err == nil {
			cpu, found = v, found+1
		}
		if _, err := fmt.Sscanf(l, "process_resident_memory_bytes %g", &v); err == nil {
			rss, found = v, found+1
		}
	}
	if found != 2 {
		return 0, 0, errors.New("bench: /metrics lacks the process collector")
	}
	return cpu, rss, nil
}

func (cfg LoadConfig) stats(ctx context.Context) (coordinator.Stats, error) {
	var st coordinator.Stats
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cfg.HTTP+"/v1/stats", nil)
	res, err := cfg.client.Do(req)
	if err != nil {
		return st, err
	}
	defer res.Body.Close()
	return st, json.NewDecoder(res.Body).Decode(&st)
}

// observe measures the appliance over a run's steady state: from when every
// call has started (plus a second) to just before the first ends.
func (cfg LoadConfig) observe(ctx context.Context, t0 time.Time) (*ServerFigures, error) {
	_, rss0, err := cfg.scrape(ctx)
	if err != nil {
		return nil, err
	}
	from, to := t0.Add(2*time.Second), t0.Add(cfg.Duration)
	if to.Sub(from) < time.Second {
		return nil, errors.New("bench: run too short for a steady state (want ≥ 3 s)")
	}
	time.Sleep(time.Until(from))
	cpuA, rssA, err := cfg.scrape(ctx)
	if err != nil {
		return nil, err
	}
	time.Sleep(time.Until(to))
	cpuB, _, err := cfg.scrape(ctx)
	if err != nil {
		return nil, err
	}
	st, err := cfg.stats(ctx)
	if err != nil {
		return nil, err
	}
	n := float64(cfg.Calls)
	total := 100 * (cpuB - cpuA) / to.Sub(from).Seconds()
	return &ServerFigures{CPUTotal: total, CPUPerStream: total / n, RSS: rssA, RSSPerCall: (rssA - rss0) / n,
		Ack: st.Ack, ToWorker: st.ToWorker, ToConsole: st.ToConsole}, nil
}

// Load drives cfg.Calls simulated consoles at real-time pace for
// cfg.Duration each, started evenly over the first second.
func Load(ctx context.Context, cfg LoadConfig) (LoadResult, error) {
	res := LoadResult{Transport: cfg.Transport, Calls: cfg.Calls}
	cfg.client = httpClient(cfg.RootCAs)
	var run func(ctx context.Context, i int, ack *Recorder) (sent, stored int, finalised bool, err error)
	switch cfg.Transport {
	case "quic":
		run = cfg.quicCall
	case "whip":
		pkts, err := opusPackets()
		if err != nil {
			return res, err
		}
		run = func(ctx context.Context, i int, _ *Recorder) (int, int, bool, error) {
			return cfg.whipCall(ctx, i, pkts)
		}
	default:
		return res, fmt.Errorf("bench: transport %q (quic or whip)", cfg.Transport)
	}
	var ack Recorder
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
			sent, stored, fin, err := run(ctx, i, &ack)
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
	res.Ack = ack.Summary()
	return res, nil
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func (cfg LoadConfig) quicCall(ctx context.Context, i int, ack *Recorder) (int, int, bool, error) {
	frames := int(cfg.Duration / (100 * time.Millisecond))
	var smu sync.Mutex
	sent := make([]time.Time, frames)
	acked := uint32(0)
	call := console.New(console.Config{Server: cfg.QUIC, RootCAs: cfg.RootCAs, ServerName: cfg.ServerName, Token: cfg.Token,
		CallID: proto.CallID(fmt.Sprintf("%s-%d", cfg.Prefix, i)), ConsoleID: "load", Channels: []string{"caller"}, Codec: proto.CodecL16,
		Logger: quietLogger(),
		OnAck: func(_ int, next uint32) {
			now := time.Now()
			smu.Lock()
			defer smu.Unlock()
			for ; acked < next && int(acked) < len(sent); acked++ {
				if acked >= warmupFrames {
					ack.Add(now.Sub(sent[acked]))
				}
			}
		}})
	done := make(chan error, 1)
	go func() { done <- call.Run(ctx) }()
	go func() {
		for range call.Events() {
		}
	}()
	payload := noise(3200)
	start := time.Now()
	n := 0
	for seq := range frames {
		time.Sleep(time.Until(start.Add(time.Duration(seq) * 100 * time.Millisecond)))
		smu.Lock()
		sent[seq] = time.Now()
		smu.Unlock()
		if _, err := call.Send(0, payload, time.Now()); err != nil {
			break
		}
		n++
	}
	call.End()
	err := <-done
	return n, int(call.Acked()[0]), err == nil, err
}

// opusPackets encodes one second of speech-like noise as 20 ms Opus packets,
// looped by every WebRTC console (encoding is the console's cost, not the
// system's).
func opusPackets() ([][]byte, error) {
	e, err := opus.NewEncoder(16000, 32000)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	var out [][]byte
	for range 50 {
		pcm := make([]int16, 320)
		for i := range pcm {
			pcm[i] = int16(rand.IntN(4000) - 2000)
		}
		p, err := e.Encode(pcm)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func noise(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.IntN(256))
	}
	return b
}

func (cfg LoadConfig) whipCall(ctx context.Context, i int, pkts [][]byte) (int, int, bool, error) {
	id := proto.CallID(fmt.Sprintf("%s-%d", cfg.Prefix, i))
	var cl *whip.Client
	var err error
	for attempt := 0; attempt < 20; attempt++ { // 503s while many offers are answered
		cl, err = whip.Dial(ctx, whip.ClientConfig{Server: cfg.HTTP, RootCAs: cfg.RootCAs, Token: cfg.Token, CallID: id, ConsoleID: "load",
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
	go func() {
		for ev := range cl.Events() {
			if ev.Finalised != nil {
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
		if err := cl.Send(0, pkts[k%len(pkts)], 960); err != nil {
			break
		}
		sent++
	}
	if err := cl.End(); err != nil {
		return sent, 0, false, err
	}
	fin := false
	select {
	case <-finalised:
		fin = true
	case <-time.After(20 * time.Second):
	}
	stored, err := cfg.storedFrames(ctx, id)
	return sent, stored, fin, err
}

// storedFrames asks the coordinator how many frames of a call are durable.
func (cfg LoadConfig) storedFrames(ctx context.Context, id proto.CallID) (int, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cfg.HTTP+"/v1/calls/"+string(id), nil)
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
