package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/models/asr"
	"github.com/callscribe/callscribe/models/engine"
)

// cmdTranscribe decodes a WAV file directly with the embedded engine, with the
// same chunking as the live path, and prints one final per line.
func cmdTranscribe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("transcribe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	model := fs.String("model", models.Default, "model name")
	modelDir := fs.String("models", "", "directory of extra model manifests")
	acceptTruncated := fs.Bool("accept-truncated", false, "decode a truncated file's audio instead of refusing it\n")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: callscribe transcribe [--model NAME] FILE.wav")
		return errUsage
	}
	w, err := readInput(fs.Arg(0), *acceptTruncated, stderr)
	if err != nil {
		return err
	}
	cat, err := models.Load(*modelDir)
	if err != nil {
		return err
	}
	m, err := cat.Get(*model)
	if err != nil {
		return err
	}
	f, err := engine.NewFactory(m)
	if err != nil {
		return err
	}
	chans := make([][]asr.Event, w.Channels)
	for c := range w.Channels {
		in, err := f()
		if err != nil {
			return err
		}
		pcm := w.Channel(c)
		if w.Rate != asr.SampleRate {
			pcm = audio.NewResampler(w.Rate, asr.SampleRate).Process(pcm)
		}
		chans[c], err = engine.Transcribe(in, pcm)
		in.Close()
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	for _, l := range formatFinals(chans, defaultLabels(w.Channels)) {
		fmt.Fprintln(stdout, l)
	}
	return nil
}
