package moonshine_test

import (
	"os"
	"sync"
	"testing"

	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/models/moonshine"
)

func recognizer(t *testing.T, slots int) *moonshine.Recognizer {
	t.Helper()
	cat, err := models.Load("")
	if err != nil {
		t.Fatal(err)
	}
	m, err := cat.Get("moonshine-base")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CheckFiles(); err != nil {
		if os.Getenv("CALLSCRIBE_REQUIRE_MODELS") == "" {
			t.Skipf("model not installed: %v", err)
		}
		t.Fatal(err)
	}
	r, err := moonshine.New(moonshine.Config{Encoder: m.Path("encoder"), Decoder: m.Path("decoder"), Tokens: m.Path("tokens"), Slots: slots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func clips(t *testing.T) [][]int16 {
	var out [][]int16
	for _, p := range []string{"../../worker/selftest.wav",
		"/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav",
		"/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0930.wav"} {
		w, err := audio.ReadWAVFile(p)
		if err != nil {
			t.Skipf("test clip: %v", err)
		}
		out = append(out, w.Channel(0))
	}
	return out
}

// One model shared by concurrent decodes gives each utterance exactly the
// text a decode on its own gives: a worker's channels may share it.
func TestConcurrentDecodesMatchSerial(t *testing.T) {
	r := recognizer(t, 3)
	cs := clips(t)
	want := make([]string, len(cs))
	for i, c := range cs {
		var err error
		if want[i], err = r.Decode(c); err != nil || want[i] == "" {
			t.Fatalf("clip %d: %q %v", i, want[i], err)
		}
	}
	var wg sync.WaitGroup
	got := make([][]string, 3)
	for g := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 2 {
				for _, c := range cs {
					txt, err := r.Decode(c)
					if err != nil {
						t.Error(err)
					}
					got[g] = append(got[g], txt)
				}
			}
		}()
	}
	wg.Wait()
	for g := range got {
		for i, txt := range got[g] {
			if txt != want[i%len(cs)] {
				t.Errorf("goroutine %d decode %d: %q, alone %q", g, i, txt, want[i%len(cs)])
			}
		}
	}
}

// Silence and an empty utterance give no text; a decode after Close fails.
func TestEmptyAndSilence(t *testing.T) {
	r := recognizer(t, 1)
	for _, pcm := range [][]int16{nil, make([]int16, 16000*3)} {
		if txt, err := r.Decode(pcm); err != nil || txt != "" {
			t.Errorf("%d samples of silence: %q %v", len(pcm), txt, err)
		}
	}
	r.Close()
	if _, err := r.Decode(make([]int16, 1600)); err == nil {
		t.Error("decode after Close succeeded")
	}
}

// Partials get no slot while every slot decodes a final.
func TestTryDecodeNeverWaits(t *testing.T) {
	r := recognizer(t, 1)
	cs := clips(t)
	done := make(chan struct{})
	started := make(chan struct{})
	go func() {
		defer close(done)
		close(started)
		for range 3 {
			r.Decode(cs[1])
		}
	}()
	<-started
	skipped := 0
	for range 50 {
		_, ok, err := r.TryDecode(cs[0][:1600])
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			skipped++
		}
	}
	<-done
	if skipped == 0 {
		t.Error("no partial was skipped while the only slot was busy with finals")
	}
}
