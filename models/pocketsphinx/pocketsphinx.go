// Package pocketsphinx is the only place in callscribe that calls the
// PocketSphinx C library (Debian's libpocketsphinx 0.8+5prealpha). Everything
// else sees the asr.Decoder interface that *Decoder satisfies.
//
// A Decoder is not safe for concurrent use: give each goroutine its own and
// pool them (creating one costs ~0.3 s and ~100 MB with the general LM).
package pocketsphinx

/*
#cgo LDFLAGS: -lpocketsphinx -lsphinxbase
#cgo CFLAGS: -I/usr/include/pocketsphinx -I/usr/include/x86_64-linux-gnu/sphinxbase -I/usr/include/sphinxbase -Wno-deprecated-declarations
#include <stdlib.h>
#include <string.h>
#include <pocketsphinx.h>
#include <err.h>
#include <feat.h>
#include <cmn.h>

// cs_config builds a cmd_ln_t from argv without the variadic cmd_ln_init.
static cmd_ln_t *cs_config(int argc, char **argv) {
	return cmd_ln_parse_r(NULL, ps_args(), argc, argv, 1);
}

static void cs_quiet(void) { err_set_logfp(NULL); }

static cmn_t *cs_cmn(ps_decoder_t *ps) {
	feat_t *f = ps_get_feat(ps);
	if (f == NULL) return NULL;
	return f->cmn_struct;
}

static int cs_cmn_veclen(ps_decoder_t *ps) {
	cmn_t *c = cs_cmn(ps);
	return c == NULL ? 0 : c->veclen;
}

// cs_cmn_get copies the whole live-CMN state: mean[veclen], sum[veclen], nframe.
static int cs_cmn_get(ps_decoder_t *ps, float *mean, float *sum, int n) {
	cmn_t *c = cs_cmn(ps);
	if (c == NULL || c->veclen != n) return -1;
	for (int i = 0; i < n; i++) { mean[i] = c->cmn_mean[i]; sum[i] = c->sum[i]; }
	return c->nframe;
}

static int cs_cmn_set(ps_decoder_t *ps, const float *mean, const float *sum, int n, int nframe) {
	cmn_t *c = cs_cmn(ps);
	if (c == NULL || c->veclen != n) return -1;
	for (int i = 0; i < n; i++) { c->cmn_mean[i] = mean[i]; c->sum[i] = sum[i]; }
	c->nframe = nframe;
	return 0;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

// Config names the model files a decoder loads. Extra holds further
// PocketSphinx arguments as flag/value pairs ("-beam", "1e-60").
type Config struct {
	HMM   string
	LM    string
	Dict  string
	Extra []string
}

// Decoder is one PocketSphinx decoder instance.
type Decoder struct {
	ps     *C.ps_decoder_t
	veclen int
	inUtt  bool
}

var quietOnce sync.Once

// ErrDecoder is wrapped by every error a PocketSphinx call returns.
var ErrDecoder = errors.New("pocketsphinx")

// New creates a decoder. It fails with a clear error when a model file is
// missing rather than letting PocketSphinx abort.
func New(cfg Config) (*Decoder, error) {
	quietOnce.Do(func() { C.cs_quiet() })
	args := []string{"pocketsphinx", "-hmm", cfg.HMM, "-dict", cfg.Dict}
	if cfg.LM != "" {
		args = append(args, "-lm", cfg.LM)
	}
	args = append(args, cfg.Extra...)
	argv := make([]*C.char, len(args))
	for i, a := range args {
		argv[i] = C.CString(a)
	}
	defer func() {
		for _, p := range argv {
			C.free(unsafe.Pointer(p))
		}
	}()
	cfgp := C.cs_config(C.int(len(args)), &argv[0])
	if cfgp == nil {
		return nil, fmt.Errorf("%w: invalid arguments %q", ErrDecoder, args[1:])
	}
	ps := C.ps_init(cfgp)
	C.cmd_ln_free_r(cfgp) // ps_init retains its own reference
	if ps == nil {
		return nil, fmt.Errorf("%w: ps_init failed (hmm=%s lm=%s dict=%s)", ErrDecoder, cfg.HMM, cfg.LM, cfg.Dict)
	}
	d := &Decoder{ps: ps, veclen: int(C.cs_cmn_veclen(ps))}
	if d.veclen == 0 {
		d.Close()
		return nil, fmt.Errorf("%w: model has no cepstral mean normalisation state", ErrDecoder)
	}
	return d, nil
}

// AddWord adds a word with its phones (space-separated, the model's phone
// set) to the dictionary and the language model. Set last on the final word
// of a batch: the search is rebuilt then, once.
func (d *Decoder) AddWord(word, phones string, last bool) error {
	w, p := C.CString(word), C.CString(phones)
	defer C.free(unsafe.Pointer(w))
	defer C.free(unsafe.Pointer(p))
	update := C.int(0)
	if last {
		update = 1
	}
	if C.ps_add_word(d.ps, w, p, update) < 0 {
		return fmt.Errorf("%w: cannot add %q (%s)", ErrDecoder, word, phones)
	}
	return nil
}

// Knows reports whether the dictionary has word.
func (d *Decoder) Knows(word string) bool {
	w := C.CString(word)
	defer C.free(unsafe.Pointer(w))
	p := C.ps_lookup_word(d.ps, w)
	if p == nil {
		return false
	}
	C.free(unsafe.Pointer(p))
	return true
}

// Close frees the decoder.
func (d *Decoder) Close() {
	if d.ps != nil {
		C.ps_free(d.ps)
		d.ps = nil
	}
}

// StartUtt begins an utterance.
func (d *Decoder) StartUtt() error {
	if rc := C.ps_start_utt(d.ps); rc < 0 {
		return fmt.Errorf("%w: ps_start_utt: %d", ErrDecoder, int(rc))
	}
	d.inUtt = true
	return nil
}

// Process feeds 16 kHz mono samples to the current utterance.
func (d *Decoder) Process(pcm []int16) error {
	if len(pcm) == 0 {
		return nil
	}
	rc := C.ps_process_raw(d.ps, (*C.int16)(unsafe.Pointer(&pcm[0])), C.size_t(len(pcm)), 0, 0)
	if rc < 0 {
		return fmt.Errorf("%w: ps_process_raw: %d", ErrDecoder, int(rc))
	}
	return nil
}

// Hyp returns the current best hypothesis ("" when there is none).
func (d *Decoder) Hyp() string {
	var score C.int32
	h := C.ps_get_hyp(d.ps, &score)
	if h == nil {
		return ""
	}
	return C.GoString(h)
}

// EndUtt ends the utterance and runs the final passes; Hyp then returns the
// utterance's final hypothesis.
func (d *Decoder) EndUtt() error {
	if !d.inUtt {
		return nil
	}
	d.inUtt = false
	if rc := C.ps_end_utt(d.ps); rc < 0 {
		return fmt.Errorf("%w: ps_end_utt: %d", ErrDecoder, int(rc))
	}
	return nil
}

// CMN returns the decoder's live cepstral-mean-normalisation state: the mean
// and running sum vectors and the frame count. Together they are everything a
// decoder carries from one utterance to the next.
func (d *Decoder) CMN() (mean, sum []float32, nframe int32) {
	mean = make([]float32, d.veclen)
	sum = make([]float32, d.veclen)
	n := C.cs_cmn_get(d.ps, (*C.float)(unsafe.Pointer(&mean[0])), (*C.float)(unsafe.Pointer(&sum[0])), C.int(d.veclen))
	return mean, sum, int32(n)
}

// SetCMN restores a state returned by CMN.
func (d *Decoder) SetCMN(mean, sum []float32, nframe int32) error {
	if len(mean) != d.veclen || len(sum) != d.veclen {
		return fmt.Errorf("%w: cmn state has %d/%d values, decoder needs %d", ErrDecoder, len(mean), len(sum), d.veclen)
	}
	rc := C.cs_cmn_set(d.ps, (*C.float)(unsafe.Pointer(&mean[0])), (*C.float)(unsafe.Pointer(&sum[0])), C.int(d.veclen), C.int(nframe))
	if rc != 0 {
		return fmt.Errorf("%w: cannot set cmn state", ErrDecoder)
	}
	return nil
}
