package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/models/asr"
	"github.com/callscribe/callscribe/proto"
)

const testData = "/usr/share/pocketsphinx/test/data"

func factory(t *testing.T) Factory {
	t.Helper()
	cat, err := models.Load("")
	if err != nil {
		t.Fatal(err)
	}
	m, err := cat.Get("")
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewFactory(m)
	if err != nil {
		t.Skipf("model not installed: %v", err)
	}
	return f
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
func TestPooledDecoderIsDeterministic(t *testing.T) {
	f := factory(t)
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
	f := factory(t)
	var pcm []int16
	for _, n := range []string{"0870", "0880", "0890"} {
		pcm = append(pcm, clip(t, "librivox/sense_and_sensibility_01_austen_64kb-"+n+".wav")...)
		pcm = append(pcm, make([]int16, asr.SampleRate)...) // a pause between turns
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
		tr, err := asr.New(b.Dec, b.Pristine, cp, asr.Options{})
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
	p := NewPool(factory(t), 2)
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
