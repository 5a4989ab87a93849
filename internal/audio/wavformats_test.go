package audio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"testing"
)

// wavBytes builds a WAV with any format code, bit depth and raw data;
// declared overrides the data chunk's size when not zero.
func wavBytes(format, channels, rate, bits int, data []byte, declared int) []byte {
	var b bytes.Buffer
	size := len(data)
	if declared != 0 {
		size = declared
	}
	b.WriteString("RIFF")
	binary.Write(&b, binary.LittleEndian, uint32(36+size))
	b.WriteString("WAVEfmt ")
	binary.Write(&b, binary.LittleEndian, uint32(16))
	binary.Write(&b, binary.LittleEndian, uint16(format))
	binary.Write(&b, binary.LittleEndian, uint16(channels))
	binary.Write(&b, binary.LittleEndian, uint32(rate))
	binary.Write(&b, binary.LittleEndian, uint32(rate*channels*bits/8))
	binary.Write(&b, binary.LittleEndian, uint16(channels*bits/8))
	binary.Write(&b, binary.LittleEndian, uint16(bits))
	b.WriteString("data")
	binary.Write(&b, binary.LittleEndian, uint32(size))
	b.Write(data)
	return b.Bytes()
}

// Every supported sample format converts to the same 16-bit samples (within
// each format's own precision).
func TestReadWAVConvertsFormats(t *testing.T) {
	want := []int16{0, 1000, -1000, 32000, -32000, 256, -256}
	var pcm8, pcm24, pcm32, f32 []byte
	for _, s := range want {
		pcm8 = append(pcm8, byte(int(s>>8)+128))
		pcm24 = append(pcm24, 0, byte(s), byte(uint16(s)>>8))
		pcm32 = append(pcm32, 0, 0, byte(s), byte(uint16(s)>>8))
		f32 = binary.LittleEndian.AppendUint32(f32, math.Float32bits(float32(s)/32768))
	}
	cases := []struct {
		name              string
		format, bits, tol int
		data              []byte
	}{
		{"16-bit PCM", 1, 16, 0, PCMToBytes(want)},
		{"8-bit PCM", 1, 8, 256, pcm8},
		{"24-bit PCM", 1, 24, 0, pcm24},
		{"32-bit PCM", 1, 32, 0, pcm32},
		{"32-bit float", 3, 32, 0, f32},
		{"µ-law", 7, 8, 1100, MulawEncode(want)},
		{"A-law", 6, 8, 1100, AlawEncode(want)},
	}
	for _, c := range cases {
		w, err := ReadWAV(bytes.NewReader(wavBytes(c.format, 1, 8000, c.bits, c.data, 0)))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if w.Format != c.name || w.Truncated() || len(w.Samples) != len(want) {
			t.Fatalf("%s: format %q truncated %v, %d samples", c.name, w.Format, w.Truncated(), len(w.Samples))
		}
		for i, s := range w.Samples {
			if d := int(s) - int(want[i]); d > c.tol || d < -c.tol {
				t.Errorf("%s: sample %d = %d, want %d (±%d)", c.name, i, s, want[i], c.tol)
			}
		}
	}
}

// Stereo 48 kHz reads as two channels at 48 kHz (callers resample).
func TestReadWAVStereo48k(t *testing.T) {
	w, err := ReadWAV(bytes.NewReader(wavBytes(1, 2, 48000, 16, PCMToBytes([]int16{1, 2, 3, 4, 5, 6}), 0)))
	if err != nil {
		t.Fatal(err)
	}
	if w.Rate != 48000 || w.Channels != 2 || len(w.Channel(1)) != 3 || w.Channel(1)[2] != 6 {
		t.Fatalf("got %d Hz, %d channels, %v", w.Rate, w.Channels, w.Channel(1))
	}
}

// A data chunk cut short is read up to the cut and reported as truncated.
func TestReadWAVTruncated(t *testing.T) {
	w, err := ReadWAV(bytes.NewReader(wavBytes(1, 1, 16000, 16, PCMToBytes(make([]int16, 100)), 2000)))
	if err != nil {
		t.Fatal(err)
	}
	if !w.Truncated() || w.Declared != 2000 || w.Read != 200 || len(w.Samples) != 100 {
		t.Fatalf("truncated %v declared %d read %d samples %d", w.Truncated(), w.Declared, w.Read, len(w.Samples))
	}
}

// Formats it cannot convert are refused with what the file holds.
func TestReadWAVRefusesUnknownFormats(t *testing.T) {
	for _, c := range []struct{ format, channels, rate, bits int }{
		{2, 1, 8000, 4},    // ADPCM
		{1, 1, 8000, 12},   // odd bit depth
		{1, 6, 48000, 16},  // 5.1
		{1, 1, 4000, 16},   // too slow
		{85, 1, 16000, 16}, // MP3 in WAV
		{3, 1, 16000, 64},  // 64-bit float
	} {
		_, err := ReadWAV(bytes.NewReader(wavBytes(c.format, c.channels, c.rate, c.bits, make([]byte, 64), 0)))
		if !errors.Is(err, ErrWAV) {
			t.Errorf("%+v: got %v, want an ErrWAV", c, err)
		}
	}
}
