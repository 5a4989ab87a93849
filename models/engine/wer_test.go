package engine

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/callscribe/callscribe/internal/wer"
)

// TestAccuracyOnReferencedClips reports the word error rate of the default
// model on pocketsphinx-testdata's referenced clips, and fails if it gets
// clearly worse than measured (a regression guard, not a target).
func TestAccuracyOnReferencedClips(t *testing.T) {
	f := factory(t)
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
	t.Logf("WER %.1f%% over %d clips (%+v)", 100*tot.Rate(), len(refs), tot)
	if tot.Rate() > 0.45 {
		t.Fatalf("WER %.1f%% is worse than the 45%% guard", 100*tot.Rate())
	}
}
