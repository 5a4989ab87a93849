package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/callscribe/callscribe/ingest/console"
	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/models/asr"
	"github.com/callscribe/callscribe/proto"
)

// cmdStream behaves as a console: it streams a WAV file as a call.
func cmdStream(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", "127.0.0.1:4433", "coordinator QUIC address")
	caFile := fs.String("ca", "", "CA certificate the coordinator's certificate chains to")
	serverName := fs.String("server-name", "localhost", "coordinator certificate name")
	token := fs.String("token", os.Getenv("CALLSCRIBE_TOKEN"), "console token (or CALLSCRIBE_TOKEN)")
	callID := fs.String("call", "", "call id")
	consoleID := fs.String("console", hostnameOr("console"), "console id")
	codec := fs.String("codec", "l16", "l16, pcmu, pcma or opus")
	model := fs.String("model", "", "model (default: the coordinator's default)")
	speed := fs.Float64("speed", 1, "pace relative to real time; 0 sends as fast as acks allow")
	transport := fs.String("transport", "quic", "quic")
	quiet := fs.Bool("quiet", false, "do not print partials")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() != 1 || *callID == "" || *caFile == "" || *token == "" {
		fmt.Fprintln(stderr, "usage: callscribe stream --server ADDR --ca FILE --token T --call ID [--codec l16|pcmu|pcma|opus] [--speed X] FILE.wav")
		return errUsage
	}
	if *transport != "quic" {
		return fmt.Errorf("transport %q is not available in this build (quic)", *transport)
	}
	w, err := audio.ReadWAVFile(fs.Arg(0))
	if err != nil {
		return err
	}
	frames, dur, err := console.EncodeFrames(w, proto.Codec(*codec))
	if err != nil {
		return err
	}
	pool, err := pki.CertPool(*caFile)
	if err != nil {
		return err
	}
	labels := defaultLabels(w.Channels)
	log := newLogger(stderr, "warn")
	maxUnacked := 0
	if *speed == 0 {
		maxUnacked = 64
	}
	call := console.New(console.Config{Server: *server, RootCAs: pool, ServerName: *serverName, Token: *token, CallID: proto.CallID(*callID),
		ConsoleID: proto.ConsoleID(*consoleID), Channels: labels, Codec: proto.Codec(*codec), Model: *model, MaxUnacked: maxUnacked, Logger: log})

	runErr := make(chan error, 1)
	go func() { runErr <- call.Run(ctx) }()
	var sendErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sendErr = pace(ctx, call, frames, dur, *speed)
	}()

	finals := make([][]asr.Event, len(labels))
	mono := len(labels) == 1
	for ev := range call.Events() {
		switch {
		case ev.Reconnected:
			fmt.Fprintln(stderr, "[reconnected: resuming the call]")
		case ev.Transcript != nil:
			t := ev.Transcript
			switch t.Kind {
			case proto.KindPartial:
				if !*quiet {
					fmt.Fprintf(stderr, "  … [%s] %s\n", t.Label, t.Text)
				}
			case proto.KindResumed:
				fmt.Fprintf(stderr, "[%s: transcription resumed on another worker]\n", t.Label)
			case proto.KindFinal:
				finals[t.Channel] = append(finals[t.Channel], asr.Event{Kind: asr.Final, Index: t.Index, Text: t.Text, Start: t.StartMS * 16})
				if mono {
					fmt.Fprintln(stdout, t.Text)
				} else {
					fmt.Fprintf(stderr, "  ✓ [%s] %s\n", t.Label, t.Text)
				}
			}
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
	if !mono {
		for _, l := range formatFinals(finals, labels) {
			fmt.Fprintln(stdout, l)
		}
	}
	return nil
}

// pace sends frames in time: frame i of every channel at i*dur/speed.
func pace(ctx context.Context, call *console.Call, frames [][][]byte, dur time.Duration, speed float64) error {
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
		now := time.Now()
		for ch, f := range frames {
			if i < len(f) {
				if _, err := call.Send(ch, f[i], now); err != nil {
					return err
				}
			}
		}
	}
	call.End()
	return nil
}
