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
	"github.com/callscribe/callscribe/internal/opus"
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
	frames, dur, err := encodeFrames(w, proto.Codec(*codec))
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

// encodeFrames cuts each channel into frames of the codec: 100 ms for L16,
// 20 ms for G.711 and Opus.
func encodeFrames(w *audio.WAV, codec proto.Codec) ([][][]byte, time.Duration, error) {
	out := make([][][]byte, w.Channels)
	var dur time.Duration
	for c := range w.Channels {
		pcm := w.Channel(c)
		switch codec {
		case proto.CodecL16:
			if w.Rate != 16000 {
				pcm = audio.NewResampler(w.Rate, 16000).Process(pcm)
			}
			dur = 100 * time.Millisecond
			for off := 0; off < len(pcm); off += 1600 {
				out[c] = append(out[c], audio.PCMToBytes(pcm[off:min(off+1600, len(pcm))]))
			}
		case proto.CodecPCMU, proto.CodecPCMA:
			if w.Rate != 8000 {
				pcm = audio.NewResampler(w.Rate, 8000).Process(pcm)
			}
			dur = 20 * time.Millisecond
			enc := audio.MulawEncode
			if codec == proto.CodecPCMA {
				enc = audio.AlawEncode
			}
			for off := 0; off < len(pcm); off += 160 {
				out[c] = append(out[c], enc(pcm[off:min(off+160, len(pcm))]))
			}
		case proto.CodecOpus:
			if w.Rate != 16000 {
				pcm = audio.NewResampler(w.Rate, 16000).Process(pcm)
			}
			dur = 20 * time.Millisecond
			e, err := opus.NewEncoder(16000, 32000)
			if err != nil {
				return nil, 0, err
			}
			for off := 0; off < len(pcm); off += 320 {
				blk := make([]int16, 320) // the last frame is padded with silence
				copy(blk, pcm[off:min(off+320, len(pcm))])
				pkt, err := e.Encode(blk)
				if err != nil {
					return nil, 0, err
				}
				out[c] = append(out[c], pkt)
			}
			e.Close()
		default:
			return nil, 0, fmt.Errorf("codec %q: want one of l16, pcmu, pcma, opus", codec)
		}
	}
	return out, dur, nil
}
