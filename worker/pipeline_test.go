package worker

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/callscribe/callscribe/ingest/console"
	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/models/asr"
	"github.com/callscribe/callscribe/models/engine"
	"github.com/callscribe/callscribe/proto"
)

func factory(t *testing.T) engine.Factory {
	t.Helper()
	cat, _ := models.Load("")
	m, _ := cat.Get("")
	f, err := engine.NewFactory(m)
	if err != nil {
		t.Skipf("model not installed: %v", err)
	}
	return f
}

type final struct {
	Index      uint32
	Text       string
	Start, End int64
}

func decode(t *testing.T, ch *Channel, frames [][]byte, from uint32) ([]final, []Event) {
	t.Helper()
	var out []final
	var all []Event
	for seq := from; seq < uint32(len(frames)); seq++ {
		evs, err := ch.Feed(seq, frames[seq])
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, evs...)
	}
	evs, err := ch.Finish()
	if err != nil {
		t.Fatal(err)
	}
	all = append(all, evs...)
	for _, e := range all {
		if e.Kind == asr.Final {
			out = append(out, final{e.Index, e.Text, e.Start, e.End})
		}
	}
	return out, all
}

// For every codec, a channel resumed on another decoder from any final's
// checkpoint produces exactly the finals of an uninterrupted decode.
func TestResumeIsExactForEveryCodec(t *testing.T) {
	f := factory(t)
	var pcm []int16
	for _, n := range []string{"0880", "0890", "0930"} {
		w, err := audio.ReadWAVFile("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-" + n + ".wav")
		if err != nil {
			t.Skip("pocketsphinx-testdata not installed")
		}
		pcm = append(pcm, w.Channel(0)...)
		pcm = append(pcm, make([]int16, 16000)...)
	}
	a, err := f()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := f()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, codec := range []proto.Codec{proto.CodecL16, proto.CodecPCMU, proto.CodecOpus} {
		t.Run(string(codec), func(t *testing.T) {
			frames, _, err := console.EncodeFrames(&audio.WAV{Rate: 16000, Channels: 1, Samples: pcm}, codec)
			if err != nil {
				t.Fatal(err)
			}
			ch, err := NewChannel(codec, a, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			want, all := decode(t, ch, frames[0], 0)
			if len(want) < 2 {
				t.Fatalf("want several finals, got %+v", want)
			}
			resumed := 0
			for _, e := range all {
				if e.Kind != asr.Final || e.Checkpoint == nil {
					continue
				}
				var cp Checkpoint
				if err := json.Unmarshal(e.Checkpoint, &cp); err != nil {
					t.Fatal(err)
				}
				if (codec == proto.CodecOpus) != (cp.Opus != nil) || (codec == proto.CodecPCMU) != (cp.Resampler != nil) {
					t.Fatalf("checkpoint lacks codec state: %+v", cp)
				}
				ch2, err := NewChannel(codec, b, e.Checkpoint, e.NextSeq)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := decode(t, ch2, frames[0], e.NextSeq)
				if rest := want[e.Index+1:]; len(got) != len(rest) || len(got) > 0 && !reflect.DeepEqual(got, rest) {
					t.Fatalf("resume after final %d:\n got  %+v\n want %+v", e.Index, got, want[e.Index+1:])
				}
				resumed++
			}
			if resumed == 0 {
				t.Fatal("no checkpoint to resume from")
			}
			t.Logf("%s: %d finals, resumed exactly from %d checkpoints", codec, len(want), resumed)
		})
	}
}

func TestChannelRejectsBadInput(t *testing.T) {
	f := factory(t)
	in, err := f()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if _, err := NewChannel("speex", in, nil, 0); err == nil {
		t.Fatal("unknown codec accepted")
	}
	if _, err := NewChannel(proto.CodecL16, in, nil, 5); err == nil {
		t.Fatal("resume without checkpoint accepted")
	}
	if _, err := NewChannel(proto.CodecL16, in, json.RawMessage(`{"asr":`), 5); err == nil {
		t.Fatal("broken checkpoint accepted")
	}
	ch, err := NewChannel(proto.CodecL16, in, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Feed(1, []byte{0, 0}); err == nil {
		t.Fatal("out-of-order frame accepted")
	}
}

// TestUndecodableFramesAreConcealed: a stored frame no decoder can read (a
// corrupt Opus packet, an odd-length L16 frame) is concealed and reported,
// the channel decodes on to its end, and a resume from a checkpoint before
// the bad frame gives exactly the same finals.
func TestUndecodableFramesAreConcealed(t *testing.T) {
	f := factory(t)
	w, err := audio.ReadWAVFile("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav")
	if err != nil {
		t.Skip("pocketsphinx-testdata not installed")
	}
	pcm := append(append(w.Channel(0), make([]int16, 16000)...), w.Channel(0)...)
	a, err := f()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := f()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, tc := range []struct {
		codec proto.Codec
		bad   []byte
	}{
		{proto.CodecOpus, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}, // code 3 with an impossible frame count
		{proto.CodecL16, make([]byte, 3201)},
	} {
		t.Run(string(tc.codec), func(t *testing.T) {
			frames, _, err := console.EncodeFrames(&audio.WAV{Rate: 16000, Channels: 1, Samples: pcm}, tc.codec)
			if err != nil {
				t.Fatal(err)
			}
			bad := uint32(len(frames[0]) * 3 / 4) // in the second sentence
			frames[0][bad] = tc.bad
			ch, err := NewChannel(tc.codec, a, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			var reported []uint32
			var all []Event
			for seq := range uint32(len(frames[0])) {
				evs, err := ch.Feed(seq, frames[0][seq])
				if err != nil {
					t.Fatalf("frame %d: %v", seq, err)
				}
				for _, u := range ch.TakeUndecodable() {
					reported = append(reported, u.Seq)
				}
				all = append(all, evs...)
			}
			evs, err := ch.Finish()
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, evs...)
			if !reflect.DeepEqual(reported, []uint32{bad}) {
				t.Fatalf("undecodable frames reported %v, want [%d]", reported, bad)
			}
			var want []final
			var before *Event
			for i, e := range all {
				if e.Kind != asr.Final {
					continue
				}
				want = append(want, final{e.Index, e.Text, e.Start, e.End})
				if e.Checkpoint != nil && e.NextSeq <= bad {
					before = &all[i]
				}
			}
			if len(want) < 2 || want[len(want)-1].End < int64(len(pcm))*3/4 {
				t.Fatalf("the channel did not decode past the bad frame: %+v", want)
			}
			if before == nil {
				t.Fatal("no checkpoint before the bad frame")
			}
			ch2, err := NewChannel(tc.codec, b, before.Checkpoint, before.NextSeq)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := decode(t, ch2, frames[0], before.NextSeq)
			if rest := want[before.Index+1:]; !reflect.DeepEqual(got, rest) {
				t.Fatalf("resume over the bad frame:\n got  %+v\n want %+v", got, rest)
			}
		})
	}
}

// TestLossMarkersAreConcealed: an empty payload (a packet lost in transit)
// decodes to one packet time of concealment for every codec.
func TestLossMarkersAreConcealed(t *testing.T) {
	f := factory(t)
	in, err := f()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	for _, codec := range []proto.Codec{proto.CodecL16, proto.CodecPCMU, proto.CodecPCMA, proto.CodecOpus} {
		ch, err := NewChannel(codec, in, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for range 10 { // the resampler's first call may hold samples back
			pcm, err := ch.PCM(nil)
			if err != nil {
				t.Fatalf("%s: %v", codec, err)
			}
			total += len(pcm)
		}
		want := 10 * 16000 * proto.LossFrameMS / 1000
		if total < want-64 || total > want {
			t.Errorf("%s: 10 loss markers gave %d samples, want about %d", codec, total, want)
		}
		if _, err := ch.Feed(0, nil); err != nil || ch.Next() != 1 {
			t.Errorf("%s: a loss marker does not advance the channel: %v", codec, err)
		}
		ch.Finish()
	}
}
