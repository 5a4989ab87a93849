package worker

import (
	"strings"
	"testing"

	"github.com/callscribe/callscribe/ingest/console"
	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/internal/wer"
	"github.com/callscribe/callscribe/proto"
)

const testData = "/usr/share/pocketsphinx/test/data"

// TestOpusAccuracyMatchesL16 compares the word error rate of the Opus path
// (what WebRTC consoles send) with L16's on pocketsphinx-testdata's
// referenced clips. PocketSphinx's result on 92 words moves by up to 10
// points when the audio is shifted by a few milliseconds (its 10 ms frames
// fall elsewhere), so each codec is measured at four sub-frame alignments
// and the means are compared: they must be within 2 points.
func TestOpusAccuracyMatchesL16(t *testing.T) {
	f := factory(t)
	refs, err := wer.ReadReferences(testData)
	if err != nil {
		t.Skip("pocketsphinx-testdata not installed")
	}
	if len(refs) != 10 {
		t.Fatalf("want 10 referenced clips, found %d", len(refs))
	}
	in, err := f()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	mean := map[proto.Codec]float64{}
	for _, codec := range []proto.Codec{proto.CodecL16, proto.CodecOpus} {
		var rates []float64
		for _, shift := range []int{0, 40, 80, 120} { // samples at 16 kHz: 0–7.5 ms
			var tot wer.Counts
			for clip, ref := range refs {
				w, err := audio.ReadWAVFile(clip)
				if err != nil {
					t.Fatal(err)
				}
				w.Samples = append(make([]int16, shift*w.Channels), w.Samples...)
				frames, _, err := console.EncodeFrames(w, codec)
				if err != nil {
					t.Fatal(err)
				}
				ch, err := NewChannel(codec, in, nil, 0)
				if err != nil {
					t.Fatal(err)
				}
				finals, _ := decode(t, ch, frames[0], 0)
				var hyp []string
				for _, fi := range finals {
					hyp = append(hyp, fi.Text)
				}
				tot = tot.Add(wer.Compare(wer.Words(ref), wer.Words(strings.Join(hyp, " "))))
			}
			rates = append(rates, 100*tot.Rate())
			mean[codec] += 100 * tot.Rate() / 4
		}
		t.Logf("%s: WER %.1f%% mean over alignments %.1f", codec, mean[codec], rates)
	}
	if d := mean[proto.CodecOpus] - mean[proto.CodecL16]; d > 2 || d < -2 {
		t.Errorf("Opus is %+.1f WER points from L16 (limit 2)", d)
	}
}
