package engine

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/callscribe/callscribe/internal/wer"
)

// TestAccuracyOnReferencedClips reports the word error rate of each model
// on pocketsphinx-testdata's referenced LibriVox clips, and fails if it gets
// clearly worse than measured (a regression guard, not a target).
func TestAccuracyOnReferencedClips(t *testing.T) {
	// Measured: moonshine-base 1.4 % (one word: a typo in the reference),
	// moonshine-tiny ~4 %, en-us (PocketSphinx) ~35 %.
	guard := map[string]float64{"moonshine-base": 0.03, "moonshine-tiny": 0.08, "en-us": 0.45}
	for _, name := range []string{"moonshine-base", "moonshine-tiny", "en-us"} {
		t.Run(name, func(t *testing.T) { testAccuracy(t, factory(t, name), guard[name]) })
	}
}

func testAccuracy(t *testing.T, f Factory, guard float64) {
	refs, err := wer.ReadReferences(testData)
	if err != nil {
		t.Skip("pocketsphinx-testdata not installed")
	}
	in, err := f()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var tot wer.Counts
	for path, ref := range refs {
		name, _ := filepath.Rel(testData, path)
		if !strings.HasPrefix(name, "librivox/") {
			continue // the cards clips are for a grammar, not open speech
		}
		evs, err := Transcribe(in, clip(t, name))
		if err != nil {
			t.Fatal(err)
		}
		var h []string
		for _, e := range evs {
			h = append(h, e.Text)
		}
		tot = tot.Add(wer.Compare(wer.Words(ref), wer.Words(strings.Join(h, " "))))
	}
	t.Logf("WER %.1f%% over the LibriVox clips (%+v)", 100*tot.Rate(), tot)
	if tot.Rate() > guard {
		t.Fatalf("WER %.1f%% is worse than the %.0f%% guard", 100*tot.Rate(), 100*guard)
	}
}
