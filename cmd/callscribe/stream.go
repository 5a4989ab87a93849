package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/callscribe/callscribe/ingest/console"
	"github.com/callscribe/callscribe/ingest/whip"
	"github.com/callscribe/callscribe/internal/leader"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/models/asr"
	"github.com/callscribe/callscribe/proto"
)

// cmdStream behaves as a console: it streams a WAV file as a call.
func cmdStream(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", "", "coordinator address: QUIC host:port (default 127.0.0.1:4433), or for whip its HTTP(S) address or URL (default http://127.0.0.1:8080); or a comma-separated list of coordinators (a cluster: the console follows its leader)")
	caFile := fs.String("ca", "", "CA certificate the coordinator's certificate chains to")
	serverName := fs.String("server-name", "localhost", "coordinator certificate name")
	token := fs.String("token", os.Getenv("CALLSCRIBE_TOKEN"), "console token (or CALLSCRIBE_TOKEN)")
	callID := fs.String("call", "", "call id")
	consoleID := fs.String("console", hostnameOr("console"), "console id")
	codec := fs.String("codec", "l16", "l16, pcmu, pcma or opus")
	model := fs.String("model", "", "model (default: the coordinator's default)")
	speed := fs.Float64("speed", 1, "pace relative to real time; 0 sends as fast as acks allow")
	transport := fs.String("transport", "quic", "quic or whip (WebRTC)")
	quiet := fs.Bool("quiet", false, "do not print partials")
	acceptTruncated := fs.Bool("accept-truncated", false, "decode a truncated file's audio instead of refusing it\n")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	whipT := *transport == "whip"
	if fs.NArg() != 1 || *callID == "" || (*caFile == "" && !whipT) || *token == "" || (*transport != "quic" && !whipT) {
		fmt.Fprintln(stderr, "usage: callscribe stream [--transport quic|whip] --server ADDR --ca FILE --token T --call ID [--codec l16|pcmu|pcma|opus] [--speed X] FILE.wav")
		fmt.Fprintln(stderr, "       (--ca is required for quic, and for whip over https)")
		return errUsage
	}
	w, err := readInput(fs.Arg(0), *acceptTruncated, stderr)
	if err != nil {
		return err
	}
	frames, dur, err := console.EncodeFrames(w, proto.Codec(*codec))
	if err != nil {
		return err
	}
	var pool *x509.CertPool
	if *caFile != "" {
		if pool, err = pki.CertPool(*caFile); err != nil {
			return err
		}
	}
	labels := defaultLabels(w.Channels)
	log := newLogger(stderr, "warn")
	out := &finalsPrinter{stdout: stdout, stderr: stderr, labels: labels, quiet: *quiet}
	if whipT {
		if *codec == string(proto.CodecL16) {
			return errors.New("l16 is not a WebRTC codec: use --codec opus, pcmu or pcma with --transport whip")
		}
		if *server == "" {
			*server = "http://127.0.0.1:8080"
		}
		scheme := "http"
		if pool != nil {
			scheme = "https"
		}
		bases, err := leader.ParseURLs(*server, scheme)
		if err != nil {
			return fmt.Errorf("--server: %w", err)
		}
		return streamWHIP(ctx, whip.ClientConfig{Servers: bases, RootCAs: pool, Token: *token, CallID: proto.CallID(*callID), ConsoleID: proto.ConsoleID(*consoleID),
			Channels: labels, Codec: proto.Codec(*codec), Model: *model, Logger: log}, frames, dur, *speed, out)
	}
	if *server == "" {
		*server = "127.0.0.1:4433"
	}
	servers, err := leader.ParseList(*server)
	if err != nil {
		return fmt.Errorf("--server: %w", err)
	}
	maxUnacked := 0
	if *speed == 0 {
		maxUnacked = 64
	}
	call := console.New(console.Config{Servers: servers, RootCAs: pool, ServerName: *serverName, Token: *token, CallID: proto.CallID(*callID),
		ConsoleID: proto.ConsoleID(*consoleID), Channels: labels, Codec: proto.Codec(*codec), Model: *model, MaxUnacked: maxUnacked, Logger: log})

	runErr := make(chan error, 1)
	go func() { runErr <- call.Run(ctx) }()
	var sendErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sendErr = pace(ctx, frames, dur, *speed, func(ch int, p []byte) error {
			_, err := call.Send(ch, p, time.Now())
			return err
		})
		if sendErr == nil {
			call.End()
		}
	}()

	for ev := range call.Events() {
		switch {
		case ev.Reconnected:
			fmt.Fprintln(stderr, "[reconnected: resuming the call]")
		case ev.Transcript != nil:
			out.transcript(ev.Transcript)
		}
	}
	err = <-runErr
	wg.Wait()
	if err != nil {
		return err
	}
	if sendErr != nil && ctx.Err() == nil {
		return sendErr
	}
	out.done()
	return nil
}

// finalsPrinter is the console output contract, whatever the transport: a
// one-channel call prints each final on stdout as it comes; a two-channel
// call prints partials and finals on stderr and the ordered transcript on
// stdout at the end.
type finalsPrinter struct {
	stdout, stderr io.Writer
	labels         []string
	quiet          bool
	finals         [][]asr.Event
}

func (p *finalsPrinter) transcript(t *proto.Transcript) {
	if p.finals == nil {
		p.finals = make([][]asr.Event, len(p.labels))
	}
	switch t.Kind {
	case proto.KindPartial:
		if !p.quiet {
			fmt.Fprintf(p.stderr, "  … [%s] %s\n", t.Label, t.Text)
		}
	case proto.KindResumed:
		fmt.Fprintf(p.stderr, "[%s: transcription resumed on another worker]\n", t.Label)
	case proto.KindFinal:
		if t.Channel < 0 || t.Channel >= len(p.finals) {
			return
		}
		p.finals[t.Channel] = append(p.finals[t.Channel], asr.Event{Kind: asr.Final, Index: t.Index, Text: t.Text, Start: t.StartMS * 16})
		if len(p.labels) == 1 {
			fmt.Fprintln(p.stdout, t.Text)
		} else {
			fmt.Fprintf(p.stderr, "  ✓ [%s] %s\n", t.Label, t.Text)
		}
	}
}

func (p *finalsPrinter) done() {
	if len(p.labels) > 1 {
		for _, l := range formatFinals(p.finals, p.labels) {
			fmt.Fprintln(p.stdout, l)
		}
	}
}

// streamWHIP sends a file as a WebRTC console does: 20 ms RTP packets at
// real-time pace, "end" on the data channel with the packets sent, the
// transcript from the data channel until the call is finalised, then
// DELETE.
func streamWHIP(ctx context.Context, cfg whip.ClientConfig, frames [][][]byte, dur time.Duration, speed float64, out *finalsPrinter) error {
	cl, err := whip.Dial(ctx, cfg)
	if err != nil {
		return err
	}
	defer cl.Close(context.Background())
	clock := uint32(8000)
	if cfg.Codec == proto.CodecOpus {
		clock = 48000
	}
	samples := uint32(int64(clock) * int64(dur) / int64(time.Second))
	sendErr := make(chan error, 1)
	go func() {
		err := pace(ctx, frames, dur, speed, func(ch int, p []byte) error { return cl.Send(ch, p, samples) })
		if err == nil {
			err = cl.End()
		}
		sendErr <- err
	}()
	finalised := false
	for !finalised {
		select {
		case err := <-sendErr:
			if err != nil {
				return fmt.Errorf("whip: send: %w", err)
			}
			sendErr = nil
		case ev, ok := <-cl.Events():
			switch {
			case !ok:
				return errors.New("whip: the connection closed before the call was finalised")
			case ev.Transcript != nil:
				out.transcript(ev.Transcript)
			case ev.Error != nil:
				if ev.Error.Fatal || ev.Error.Code == proto.CodeStorage {
					return ev.Error
				}
				fmt.Fprintf(out.stderr, "[coordinator: %s]\n", ev.Error.Message)
			case ev.Finalised != nil:
				finalised = true
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	out.done()
	return nil
}

// pace sends frames in time: frame i of every channel at i*dur/speed
// (speed 0: as fast as send returns).
func pace(ctx context.Context, frames [][][]byte, dur time.Duration, speed float64, send func(ch int, payload []byte) error) error {
	start := time.Now()
	n := 0
	for _, f := range frames {
		n = max(n, len(f))
	}
	for i := range n {
		if speed > 0 {
			due := start.Add(time.Duration(float64(i) * float64(dur) / speed))
			select {
			case <-time.After(time.Until(due)):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		for ch, f := range frames {
			if i < len(f) {
				if err := send(ch, f[i]); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
