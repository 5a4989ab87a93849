package main

import (
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/models/asr"
	"github.com/callscribe/callscribe/proto"
)

func defaultLabels(n int) []string {
	if n == 2 {
		return []string{proto.ChannelCaller, proto.ChannelCallTaker}
	}
	return []string{proto.ChannelCaller}
}

// formatFinals renders finals one per line: the text alone for a mono call,
// "label: text" ordered by start time when there are two channels. transcribe
// and stream share it so their outputs compare byte for byte.
func formatFinals(chans [][]asr.Event, labels []string) []string {
	type line struct {
		start int64
		ch    int
		idx   uint32
		s     string
	}
	var ls []line
	for c, evs := range chans {
		for _, e := range evs {
			s := e.Text
			if len(chans) > 1 {
				s = labels[c] + ": " + s
			}
			ls = append(ls, line{e.Start, c, e.Index, s})
		}
	}
	sort.SliceStable(ls, func(i, j int) bool {
		if ls[i].start != ls[j].start {
			return ls[i].start < ls[j].start
		}
		if ls[i].ch != ls[j].ch {
			return ls[i].ch < ls[j].ch
		}
		return ls[i].idx < ls[j].idx
	})
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.s
	}
	return out
}

// errTruncated is returned for a truncated input file unless accepted.
var errTruncated = errors.New("truncated input (use --accept-truncated to decode what it holds)")

// readInput reads a WAV file to transcribe or stream, in any format
// audio.ReadWAV converts, and says on stderr what it found. A file with no
// samples is an error; a truncated one is a warning with how much was read,
// and an error unless accept is set.
func readInput(path string, accept bool, stderr io.Writer) (*audio.WAV, error) {
	w, err := audio.ReadWAVFile(path)
	if err != nil {
		return nil, err
	}
	if len(w.Samples) == 0 {
		return nil, fmt.Errorf("%s: no audio: the data chunk holds no samples", path)
	}
	if w.Truncated() {
		fmt.Fprintf(stderr, "warning: %s is truncated: its data chunk declares %d bytes, only %d were there (%.2f s of audio read, %.0f %% of the file)\n",
			path, w.Declared, w.Read, w.Seconds(), 100*float64(w.Read)/float64(w.Declared))
		if !accept {
			return nil, fmt.Errorf("%s: %w", path, errTruncated)
		}
	}
	return w, nil
}
