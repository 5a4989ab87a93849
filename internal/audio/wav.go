// Package audio holds the pure-Go signal plumbing shared by consoles, the
// coordinator and workers: WAV files, G.711 µ-law/A-law, and a streaming
// polyphase resampler. No cgo here; Opus lives in internal/opus.
package audio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
)

// WAV is a decoded WAV file: Channels interleaved 16-bit samples, whatever
// the file's own sample format was.
type WAV struct {
	Rate     int
	Channels int
	Samples  []int16 // interleaved
	// Format says what the file held ("16-bit PCM", "µ-law", …).
	Format string
	// Declared and Read are the data chunk's size in bytes as its header
	// says and as found; Read < Declared means the file is truncated.
	Declared, Read int64
}

// Truncated reports whether the data chunk ended before its declared size.
func (w *WAV) Truncated() bool { return w.Read < w.Declared }

// Seconds is the audio's length.
func (w *WAV) Seconds() float64 {
	if w.Rate == 0 || w.Channels == 0 {
		return 0
	}
	return float64(len(w.Samples)/w.Channels) / float64(w.Rate)
}

// ErrWAV is wrapped by every WAV parsing error.
var ErrWAV = errors.New("wav")

// ReadWAVFile reads a 16-bit PCM WAV file.
func ReadWAVFile(path string) (*WAV, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	w, err := ReadWAV(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return w, nil
}

// WAV format codes this reader converts.
const (
	wavPCM        = 1
	wavFloat      = 3
	wavALaw       = 6
	wavMuLaw      = 7
	wavExtensible = 0xFFFE
)

// ReadWAV parses a RIFF/WAVE stream and converts its samples to 16-bit:
// PCM of 8 (unsigned), 16, 24 or 32 bits, 32-bit float, µ-law and A-law, in
// one or two channels at 8–192 kHz. Anything else is an error that says
// what the file holds. A data chunk shorter than declared is returned with
// what it held (see Truncated).
func ReadWAV(r io.Reader) (*WAV, error) {
	var hdr [12]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("%w: short header: %v", ErrWAV, err)
	}
	if string(hdr[0:4]) != "RIFF" || string(hdr[8:12]) != "WAVE" {
		return nil, fmt.Errorf("%w: not a RIFF/WAVE file", ErrWAV)
	}
	w := &WAV{}
	var bits, format int
	for {
		var ch [8]byte
		if _, err := io.ReadFull(r, ch[:]); err != nil {
			return nil, fmt.Errorf("%w: no data chunk", ErrWAV)
		}
		id, size := string(ch[0:4]), binary.LittleEndian.Uint32(ch[4:8])
		switch id {
		case "fmt ":
			if size < 16 || size > 1<<10 {
				return nil, fmt.Errorf("%w: bad fmt chunk size %d", ErrWAV, size)
			}
			b := make([]byte, size+size%2)
			if _, err := io.ReadFull(r, b); err != nil {
				return nil, fmt.Errorf("%w: fmt: %v", ErrWAV, err)
			}
			format = int(binary.LittleEndian.Uint16(b[0:2]))
			w.Channels = int(binary.LittleEndian.Uint16(b[2:4]))
			w.Rate = int(binary.LittleEndian.Uint32(b[4:8]))
			bits = int(binary.LittleEndian.Uint16(b[14:16]))
			if format == wavExtensible && size >= 26 {
				format = int(binary.LittleEndian.Uint16(b[24:26])) // the sub-format GUID's first two bytes
			}
		case "data":
			if w.Channels == 0 {
				return nil, fmt.Errorf("%w: data before fmt", ErrWAV)
			}
			conv, name, err := sampleFormat(format, bits)
			if err != nil {
				return nil, err
			}
			w.Format = name
			if w.Channels < 1 || w.Channels > 2 || w.Rate < 8000 || w.Rate > 192000 {
				return nil, fmt.Errorf("%w: unsupported %d channels at %d Hz (want 1 or 2 channels at 8–192 kHz)", ErrWAV, w.Channels, w.Rate)
			}
			b, err := io.ReadAll(io.LimitReader(r, int64(size)))
			if err != nil {
				return nil, fmt.Errorf("%w: data: %v", ErrWAV, err)
			}
			w.Declared, w.Read = int64(size), int64(len(b))
			frame := (bits / 8) * w.Channels
			b = b[:len(b)-len(b)%frame]
			w.Samples = conv(b)
			return w, nil
		default:
			if _, err := io.CopyN(io.Discard, r, int64(size+size%2)); err != nil {
				return nil, fmt.Errorf("%w: chunk %q: %v", ErrWAV, id, err)
			}
		}
	}
}

// sampleFormat returns the converter to 16-bit samples for a format.
func sampleFormat(format, bits int) (func([]byte) []int16, string, error) {
	switch {
	case format == wavPCM && bits == 16:
		return BytesToPCM, "16-bit PCM", nil
	case format == wavPCM && bits == 8:
		return func(b []byte) []int16 {
			out := make([]int16, len(b))
			for i, v := range b {
				out[i] = (int16(v) - 128) << 8
			}
			return out
		}, "8-bit PCM", nil
	case format == wavPCM && (bits == 24 || bits == 32):
		n := bits / 8
		return func(b []byte) []int16 {
			out := make([]int16, len(b)/n)
			for i := range out {
				out[i] = int16(binary.LittleEndian.Uint16(b[i*n+n-2:]))
			}
			return out
		}, fmt.Sprintf("%d-bit PCM", bits), nil
	case format == wavFloat && bits == 32:
		return func(b []byte) []int16 {
			out := make([]int16, len(b)/4)
			for i := range out {
				f := math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
				out[i] = int16(math.Round(float64(max(-1, min(f, 32767.0/32768)) * 32768)))
			}
			return out
		}, "32-bit float", nil
	case format == wavMuLaw && bits == 8:
		return MulawDecode, "µ-law", nil
	case format == wavALaw && bits == 8:
		return AlawDecode, "A-law", nil
	}
	return nil, "", fmt.Errorf("%w: format %d with %d-bit samples is not supported (PCM 8/16/24/32-bit, 32-bit float, µ-law or A-law)", ErrWAV, format, bits)
}

// Channel returns channel c of the interleaved samples.
func (w *WAV) Channel(c int) []int16 {
	if w.Channels == 1 {
		return w.Samples
	}
	out := make([]int16, len(w.Samples)/w.Channels)
	for i := range out {
		out[i] = w.Samples[i*w.Channels+c]
	}
	return out
}

// WriteWAV writes mono or interleaved 16-bit PCM.
func WriteWAV(wr io.Writer, rate, channels int, samples []int16) error {
	data := PCMToBytes(samples)
	var h [44]byte
	copy(h[0:], "RIFF")
	binary.LittleEndian.PutUint32(h[4:], uint32(36+len(data)))
	copy(h[8:], "WAVEfmt ")
	binary.LittleEndian.PutUint32(h[16:], 16)
	binary.LittleEndian.PutUint16(h[20:], 1)
	binary.LittleEndian.PutUint16(h[22:], uint16(channels))
	binary.LittleEndian.PutUint32(h[24:], uint32(rate))
	binary.LittleEndian.PutUint32(h[28:], uint32(rate*channels*2))
	binary.LittleEndian.PutUint16(h[32:], uint16(channels*2))
	binary.LittleEndian.PutUint16(h[34:], 16)
	copy(h[36:], "data")
	binary.LittleEndian.PutUint32(h[40:], uint32(len(data)))
	if _, err := wr.Write(h[:]); err != nil {
		return err
	}
	_, err := wr.Write(data)
	return err
}

// BytesToPCM converts little-endian 16-bit bytes to samples.
func BytesToPCM(b []byte) []int16 {
	out := make([]int16, len(b)/2)
	for i := range out {
		out[i] = int16(binary.LittleEndian.Uint16(b[2*i:]))
	}
	return out
}

// PCMToBytes converts samples to little-endian bytes.
func PCMToBytes(s []int16) []byte {
	out := make([]byte, 2*len(s))
	for i, v := range s {
		binary.LittleEndian.PutUint16(out[2*i:], uint16(v))
	}
	return out
}
