// Package opus wraps the few libopus calls callscribe needs (Debian
// libopus-dev): a decoder whose whole state can be saved and restored, so a
// channel resumed on another worker decodes exactly as it would have, and an
// encoder for consoles. libopus keeps its state in one flat block without
// pointers, which is what makes the snapshot a plain copy.
package opus

/*
#cgo LDFLAGS: -lopus
#include <stdlib.h>
#include <string.h>
#include <opus/opus.h>

static int cs_enc_bitrate(OpusEncoder *e, int b) { return opus_encoder_ctl(e, OPUS_SET_BITRATE(b)); }
static int cs_enc_voip(OpusEncoder *e) { return opus_encoder_ctl(e, OPUS_SET_SIGNAL(OPUS_SIGNAL_VOICE)); }
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"
)

// ErrOpus wraps every libopus error.
var ErrOpus = errors.New("opus")

func opusErr(op string, rc C.int) error {
	return fmt.Errorf("%w: %s: %s", ErrOpus, op, C.GoString(C.opus_strerror(rc)))
}

// Decoder decodes mono Opus packets at a fixed rate.
type Decoder struct {
	p    unsafe.Pointer
	size int
	rate int
	buf  []int16
}

// NewDecoder returns a mono decoder producing rate Hz (8, 12, 16, 24 or 48 kHz).
func NewDecoder(rate int) (*Decoder, error) {
	size := int(C.opus_decoder_get_size(1))
	p := C.malloc(C.size_t(size))
	if rc := C.opus_decoder_init((*C.OpusDecoder)(p), C.opus_int32(rate), 1); rc != C.OPUS_OK {
		C.free(p)
		return nil, opusErr("decoder_init", rc)
	}
	d := &Decoder{p: p, size: size, rate: rate, buf: make([]int16, rate*120/1000)}
	runtime.SetFinalizer(d, (*Decoder).Close)
	return d, nil
}

// Close frees the decoder.
func (d *Decoder) Close() {
	if d.p != nil {
		C.free(d.p)
		d.p = nil
	}
}

// Decode decodes one packet; a nil packet conceals one lost packet of the
// given duration (packet loss concealment).
func (d *Decoder) Decode(pkt []byte, lostSamples int) ([]int16, error) {
	var data *C.uchar
	n := len(d.buf)
	if len(pkt) > 0 {
		data = (*C.uchar)(unsafe.Pointer(&pkt[0]))
	} else {
		n = min(lostSamples, n)
	}
	rc := C.opus_decode((*C.OpusDecoder)(d.p), data, C.opus_int32(len(pkt)), (*C.opus_int16)(unsafe.Pointer(&d.buf[0])), C.int(n), 0)
	if rc < 0 {
		return nil, opusErr("decode", rc)
	}
	return append([]int16(nil), d.buf[:rc]...), nil
}

// State returns a copy of the decoder's whole state.
func (d *Decoder) State() []byte { return C.GoBytes(d.p, C.int(d.size)) }

// SetState restores a state returned by State.
func (d *Decoder) SetState(s []byte) error {
	if len(s) != d.size {
		return fmt.Errorf("%w: state of %d bytes, want %d", ErrOpus, len(s), d.size)
	}
	C.memcpy(d.p, unsafe.Pointer(&s[0]), C.size_t(d.size))
	return nil
}

// Encoder encodes mono PCM into Opus packets.
type Encoder struct {
	p *C.OpusEncoder
}

// NewEncoder returns a VoIP encoder at rate Hz and bitrate bits/s.
func NewEncoder(rate, bitrate int) (*Encoder, error) {
	var rc C.int
	p := C.opus_encoder_create(C.opus_int32(rate), 1, C.OPUS_APPLICATION_VOIP, &rc)
	if rc != C.OPUS_OK {
		return nil, opusErr("encoder_create", rc)
	}
	C.cs_enc_voip(p)
	if rc := C.cs_enc_bitrate(p, C.int(bitrate)); rc != C.OPUS_OK {
		C.opus_encoder_destroy(p)
		return nil, opusErr("set bitrate", rc)
	}
	e := &Encoder{p: p}
	runtime.SetFinalizer(e, (*Encoder).Close)
	return e, nil
}

// Close frees the encoder.
func (e *Encoder) Close() {
	if e.p != nil {
		C.opus_encoder_destroy(e.p)
		e.p = nil
	}
}

// Encode encodes one frame (2.5–60 ms of samples).
func (e *Encoder) Encode(pcm []int16) ([]byte, error) {
	out := make([]byte, 1500)
	rc := C.opus_encode(e.p, (*C.opus_int16)(unsafe.Pointer(&pcm[0])), C.int(len(pcm)), (*C.uchar)(unsafe.Pointer(&out[0])), C.opus_int32(len(out)))
	if rc < 0 {
		return nil, opusErr("encode", rc)
	}
	return out[:rc], nil
}
