package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/models/asr"
	"github.com/callscribe/callscribe/proto"
)

const testData = "/usr/share/pocketsphinx/test/data"

// factory builds the named model's factory ("" is the default); it skips
// when the model's files are not installed here (make test installs them).
func factory(t *testing.T, name ...string) Factory {
	t.Helper()
	cat, err := models.Load("")
	if err != nil {
		t.Fatal(err)
	}
	m, err := cat.Get(append(name, "")[0])
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewFactory(m)
	if err != nil {
		if errors.Is(err, models.ErrModelFile) && os.Getenv("CALLSCRIBE_REQUIRE_MODELS") == "" {
			t.Skipf("model not installed: %v", err)
		}
		t.Fatal(err)
	}
	return f
}

// eachEngine runs a test on every shipped model.
func eachEngine(t *testing.T, test func(t *testing.T, f Factory)) {
	for _, name := range []string{"moonshine-base", "moonshine-tiny", "en-us"} {
		t.Run(name, func(t *testing.T) { test(t, factory(t, name)) })
	}
}

func clip(t *testing.T, name string) []int16 {
	t.Helper()
	w, err := audio.ReadWAVFile(filepath.Join(testData, name))
	if err != nil {
		if os.IsNotExist(err) {
			t.Skip("pocketsphinx-testdata not installed")
		}
		t.Fatal(err)
	}
	return w.Channel(0)
}

// texts renders finals with their offsets: determinism covers both.
func texts(evs []asr.Event) []string {
	var s []string
	for _, e := range evs {
		s = append(s, fmt.Sprintf("%d-%d %s", e.Start, e.End, e.Text))
	}
	return s
}

// A channel's transcript must not depend on what the decoder did before:
// every referenced clip, decoded on a decoder that has decoded other clips,
// gives what a fresh decoder gives.
func TestPooledDecoderIsDeterministic(t *testing.T) { eachEngine(t, testPooledDecoderIsDeterministic) }

func testPooledDecoderIsDeterministic(t *testing.T, f Factory) {
	clips := []string{"cards/001.wav", "cards/002.wav", "cards/003.wav", "cards/004.wav", "cards/005.wav",
		"librivox/sense_and_sensibility_01_austen_64kb-0880.wav", "librivox/sense_and_sensibility_01_austen_64kb-0930.wav"}
	used, err := f()
	if err != nil {
		t.Fatal(err)
	}
	defer used.Close()
	if _, err := Transcribe(used, clip(t, "librivox/sense_and_sensibility_01_austen_64kb-0870.wav")); err != nil {
		t.Fatal(err)
	}
	for _, name := range clips {
		pcm := clip(t, name)
		fresh, err := f()
		if err != nil {
			t.Fatal(err)
		}
		want, err := Transcribe(fresh, pcm)
		fresh.Close()
		if err != nil || len(want) == 0 {
			t.Fatalf("%s: fresh decode: %v %v", name, want, err)
		}
		got, err := Transcribe(used, pcm)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(texts(got), texts(want)) {
			t.Errorf("%s: used decoder gave %q, fresh gave %q", name, texts(got), texts(want))
		}
	}
}

// Resuming from any final's checkpoint on another decoder must give exactly
// the finals an uninterrupted run gives.
func TestResumeFromCheckpointIsExact(t *testing.T) {
	eachEngine(t, func(t *testing.T, f Factory) { testResumeFromCheckpointIsExact(t, f, asr.SampleRate) })
}

// Unbroken speech longer than an utterance may be is cut at a quiet point;
// resuming from the checkpoint of a cut (inside an utterance) is exact too,
// and no audio is dropped at the cut.
func TestResumeAfterCutInUnbrokenSpeech(t *testing.T) {
	testResumeFromCheckpointIsExact(t, factory(t, "moonshine-base"), 0)
}

func testResumeFromCheckpointIsExact(t *testing.T, f Factory, pause int) {
	var pcm []int16
	for range 2 {
		for _, n := range []string{"0870", "0880", "0890"} {
			pcm = append(pcm, clip(t, "librivox/sense_and_sensibility_01_austen_64kb-"+n+".wav")...)
			pcm = append(pcm, make([]int16, pause)...) // a pause between turns
		}
	}
	a, err := f()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	full, err := Transcribe(a, pcm)
	if err != nil {
		t.Fatal(err)
	}
	if len(full) < 3 {
		t.Fatalf("want several utterances, got %q", texts(full))
	}
	b, err := f()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i, ev := range full[:len(full)-1] {
		cp := ev.Checkpoint
		if cp == nil {
			t.Fatalf("final %d has no checkpoint", i)
		}
		tr, err := b.NewStream(cp, func(o *asr.Options) { o.PartialInterval = -1 })
		if err != nil {
			t.Fatal(err)
		}
		// The checkpoint's pending samples were already received: feed from
		// after them.
		from := cp.Sample + int64(len(cp.Pending))
		var got []asr.Event
		for off := from; off < int64(len(pcm)); off += 800 {
			evs, err := tr.Feed(pcm[off:min(off+800, int64(len(pcm)))])
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, finals(evs)...)
		}
		evs, err := tr.Flush()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, finals(evs)...)
		if !reflect.DeepEqual(texts(got), texts(full[i+1:])) {
			t.Fatalf("resume after final %d: got %q want %q", i, texts(got), texts(full[i+1:]))
		}
		for j, e := range got {
			if w := full[i+1+j]; e.Index != w.Index || e.Start != w.Start || e.End != w.End {
				t.Fatalf("resume after final %d: event %d = %+v, want %+v", i, j, e, w)
			}
		}
	}
	for i := 1; i < len(full); i++ {
		if full[i].Start < full[i-1].End {
			t.Errorf("finals %d and %d overlap: %d < %d", i-1, i, full[i].Start, full[i-1].End)
		}
	}
	if pause == 0 && !slices.ContainsFunc(full, func(e asr.Event) bool { return e.Checkpoint != nil && e.Checkpoint.InUtt }) {
		t.Errorf("no final was cut inside unbroken speech: %q", texts(full))
	}
	t.Logf("%d finals: %q", len(full), texts(full))
}

func finals(evs []asr.Event) []asr.Event {
	var out []asr.Event
	for _, e := range evs {
		if e.Kind == asr.Final {
			out = append(out, e)
		}
	}
	return out
}

// A pooled decoder knows exactly its call's extra words: a vocabulary is
// added to a fresh instance, reused only for the same words, and never
// leaks into a call without it.
func TestPoolVocabulary(t *testing.T) {
	p := NewPool(factory(t, "en-us"), 2)
	defer p.Close()
	ctx := context.Background()
	vocab := []proto.Word{{Word: "motorway", Phones: "M OW T ER W EY"}, {Word: "salbutamol", Phones: "S AE L B Y UW T AH M AA L"}}
	plain, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if plain.Knows("motorway") || !plain.Knows("forward") {
		t.Fatal("the plain dictionary should lack motorway and have forward")
	}
	p.Put(plain)
	in, err := p.GetFor(ctx, vocab)
	if err != nil {
		t.Fatal(err)
	}
	if in == plain || !in.Knows("motorway") || !in.Knows("salbutamol") {
		t.Fatal("the vocabulary instance does not know its words (or is the plain one)")
	}
	p.Put(in)
	again, err := p.GetFor(ctx, vocab)
	if err != nil {
		t.Fatal(err)
	}
	if again != in {
		t.Error("an idle instance with the same words was not reused")
	}
	p.Put(again)
	back, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if back.Knows("motorway") {
		t.Fatal("a call without the vocabulary got a decoder that knows it")
	}
	p.Put(back)
	if _, err := p.GetFor(ctx, []proto.Word{{Word: "bad", Phones: "QQ"}}); err == nil {
		t.Fatal("a word with unknown phones was accepted")
	}
	// The failed attempt gave its slot back: both slots can still be lent.
	a, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.GetFor(ctx, vocab)
	if err != nil {
		t.Fatal(err)
	}
	p.Put(a)
	p.Put(b)
}
