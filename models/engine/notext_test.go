package engine

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/callscribe/callscribe/models/asr"
)

// nonSpeech is 5 s of each kind of audio that is not speech.
func nonSpeech() map[string][]int16 {
	n := 5 * asr.SampleRate
	gen := func(f func(i int) float64) []int16 {
		out := make([]int16, n)
		for i := range out {
			out[i] = int16(max(-32767, min(32767, f(i))))
		}
		return out
	}
	r := rand.New(rand.NewPCG(1, 2))
	var b0, b1, b2 float64
	notes := []float64{261.6, 329.6, 392.0, 523.3, 440.0, 349.2, 293.7, 392.0}
	return map[string][]int16{
		"silence":     make([]int16, n),
		"white noise": gen(func(int) float64 { return r.NormFloat64() * 3000 }),
		"pink noise": gen(func(int) float64 {
			w := r.NormFloat64()
			b0, b1, b2 = 0.99765*b0+w*0.0990460, 0.96300*b1+w*0.2965164, 0.57000*b2+w*1.0526913
			return (b0 + b1 + b2 + w*0.1848) * 1500
		}),
		"440 Hz tone": gen(func(i int) float64 { return 8000 * math.Sin(2*math.Pi*440*float64(i)/asr.SampleRate) }),
		// A melody of chords with a beat: half-second notes, three voices.
		"music": gen(func(i int) float64 {
			t := float64(i) / asr.SampleRate
			f := notes[int(t*2)%len(notes)]
			env := math.Exp(-3 * math.Mod(t, 0.5))
			return env * 5000 * (math.Sin(2*math.Pi*f*t) + 0.6*math.Sin(2*math.Pi*f*1.25*t) + 0.4*math.Sin(2*math.Pi*f*1.5*t))
		}),
	}
}

// Long silence, noise, tones and music give no text.
func TestNonSpeechGivesNoText(t *testing.T) {
	for _, name := range []string{"moonshine-base", "moonshine-tiny"} {
		t.Run(name, func(t *testing.T) {
			in, err := factory(t, name)()
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			for kind, pcm := range nonSpeech() {
				evs, err := Transcribe(in, pcm)
				if err != nil {
					t.Fatal(err)
				}
				if len(evs) != 0 {
					t.Errorf("%s: %q", kind, texts(evs))
				}
			}
		})
	}
}
