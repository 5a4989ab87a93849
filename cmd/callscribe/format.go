package main

import (
	"sort"

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
