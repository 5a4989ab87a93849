package audio

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"testing"
)

func TestWAVRoundTrip(t *testing.T) {
	s := []int16{1, -2, 3, -4, 32767, -32768}
	var b bytes.Buffer
	if err := WriteWAV(&b, 8000, 2, s); err != nil {
		t.Fatal(err)
	}
	w, err := ReadWAV(&b)
	if err != nil || w.Rate != 8000 || w.Channels != 2 || !reflect.DeepEqual(w.Samples, s) {
		t.Fatalf("%+v %v", w, err)
	}
	if !reflect.DeepEqual(w.Channel(1), []int16{-2, -4, -32768}) {
		t.Fatalf("channel 1: %v", w.Channel(1))
	}
	for _, bad := range [][]byte{nil, []byte("RIFF1234WAVX"), append([]byte("RIFF\x00\x00\x00\x00WAVE"), "data\x04\x00\x00\x00abcd"...)} {
		if _, err := ReadWAV(bytes.NewReader(bad)); !errors.Is(err, ErrWAV) {
			t.Errorf("bad WAV %q accepted: %v", bad, err)
		}
	}
}

func tone(rate int, hz float64, n int) []int16 {
	out := make([]int16, n)
	for i := range out {
		out[i] = int16(8000 * math.Sin(2*math.Pi*hz*float64(i)/float64(rate)))
	}
	return out
}

func rms(s []int16) float64 {
	var e float64
	for _, v := range s {
		e += float64(v) * float64(v)
	}
	return math.Sqrt(e / float64(len(s)))
}

func TestG711(t *testing.T) {
	s := tone(8000, 440, 8000)
	for name, rt := range map[string][]int16{"mulaw": MulawDecode(MulawEncode(s)), "alaw": AlawDecode(AlawEncode(s))} {
		var e, p float64
		for i := range s {
			d := float64(s[i] - rt[i])
			e += d * d
			p += float64(s[i]) * float64(s[i])
		}
		if snr := 10 * math.Log10(p/e); snr < 30 {
			t.Errorf("%s SNR %.1f dB", name, snr)
		}
	}
}

func TestResamplerPassesSpeechBandAndRejectsAliases(t *testing.T) {
	// 1 kHz at 48 kHz survives conversion to 16 kHz; 10 kHz (above the new
	// Nyquist) must not fold back into the band.
	pass := NewResampler(48000, 16000).Process(tone(48000, 1000, 48000))
	stop := NewResampler(48000, 16000).Process(tone(48000, 10000, 48000))
	if len(pass) != 16000 {
		t.Fatalf("length %d", len(pass))
	}
	in := rms(tone(48000, 1000, 48000))
	if g := rms(pass[200:]) / in; g < 0.95 || g > 1.05 {
		t.Errorf("passband gain %.3f", g)
	}
	if a := 20 * math.Log10(rms(stop[200:])/in); a > -60 {
		t.Errorf("alias only %.1f dB down", a)
	}
	up := NewResampler(8000, 16000).Process(tone(8000, 1000, 8000))
	if len(up) != 16000 || math.Abs(rms(up[200:])/rms(tone(8000, 1000, 8000))-1) > 0.05 {
		t.Errorf("upsampling: len %d", len(up))
	}
}

func TestResamplerIsStreamingAndRestorable(t *testing.T) {
	in := tone(8000, 700, 4000)
	whole := NewResampler(8000, 16000).Process(in)
	r := NewResampler(8000, 16000)
	var parts []int16
	var saved ResamplerState
	for off := 0; off < len(in); off += 333 {
		if off == 333*5 {
			saved = r.State()
		}
		parts = append(parts, r.Process(in[off:min(off+333, len(in))])...)
	}
	if !reflect.DeepEqual(parts, whole) {
		t.Fatal("block size changed the output")
	}
	r2 := NewResampler(8000, 16000)
	r2.SetState(saved)
	rest := r2.Process(in[333*5:])
	if !reflect.DeepEqual(rest, whole[len(whole)-len(rest):]) {
		t.Fatal("restored state did not continue exactly")
	}
}
