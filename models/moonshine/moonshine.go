// Package moonshine runs Moonshine speech models through sherpa-onnx's
// offline recognizer. It is the only package in callscribe that imports
// sherpa-onnx; everything else sees asr.UtteranceDecoder, which *Recognizer
// satisfies.
//
// Moonshine is not a streaming model: it decodes a whole utterance at once.
// One Recognizer (the weights, ~300 MB for base) is shared by every channel
// of a worker process. sherpa-onnx's decode of a stream is a const method
// over ONNX Runtime sessions, which are safe for concurrent Run calls, so
// several channels may decode at once; its "batch" decode of several streams
// is a loop over them (no batching for Moonshine in v1.13.8), so callscribe
// bounds concurrency with its own slots instead.
package moonshine

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	sherpa "github.com/k2-fsa/sherpa-onnx-go-linux"
)

// SampleRate is the rate Moonshine takes.
const SampleRate = 16000

// Config says where the model files are and how much CPU to use.
type Config struct {
	Encoder string // encoder_model.onnx
	Decoder string // decoder_model_merged.onnx
	Tokens  string // tokens.txt (Llama SentencePiece pieces, base64)
	// Slots is how many utterances may decode at once (one core each).
	Slots int
	// PartialShare is the fraction of the slots' time that partial
	// decodes may use (finals always decode); 0 means 0.5.
	PartialShare float64
}

// Recognizer decodes utterances. Safe for concurrent use.
type Recognizer struct {
	rec   *sherpa.OfflineRecognizer
	slots chan struct{}

	mu       sync.Mutex
	budget   time.Duration // partial decode time that may still be spent
	capacity time.Duration
	share    float64
	refilled time.Time
	now      func() time.Time

	closeOnce sync.Once
}

// ErrClosed is returned by a decode on a closed recognizer.
var ErrClosed = errors.New("moonshine: recognizer closed")

// New loads the model. Files must exist and be checked (by hash) by the
// caller: sherpa-onnx reports a bad file only on its standard error.
func New(cfg Config) (*Recognizer, error) {
	slots := max(cfg.Slots, 1)
	c := sherpa.OfflineRecognizerConfig{
		FeatConfig: sherpa.FeatureConfig{SampleRate: SampleRate, FeatureDim: 80},
		ModelConfig: sherpa.OfflineModelConfig{
			Moonshine:  sherpa.OfflineMoonshineModelConfig{Encoder: cfg.Encoder, MergedDecoder: cfg.Decoder},
			Tokens:     cfg.Tokens,
			NumThreads: 1, // measured: 2 threads decode no faster on these models
			Provider:   "cpu",
		},
		DecodingMethod: "greedy_search",
	}
	rec := sherpa.NewOfflineRecognizer(&c)
	if rec == nil {
		return nil, fmt.Errorf("moonshine: sherpa-onnx could not load %s, %s, %s", cfg.Encoder, cfg.Decoder, cfg.Tokens)
	}
	share := cfg.PartialShare
	if share <= 0 {
		share = 0.5
	}
	r := &Recognizer{rec: rec, slots: make(chan struct{}, slots), share: share, now: time.Now}
	r.capacity = time.Duration(slots) * time.Second
	r.budget = r.capacity
	r.refilled = r.now()
	return r, nil
}

// Decode decodes one utterance, waiting for a free slot.
func (r *Recognizer) Decode(pcm []int16) (string, error) {
	r.slots <- struct{}{}
	defer func() { <-r.slots }()
	return r.decode(pcm)
}

// TryDecode decodes a partial utterance only if a slot is free right now
// and partial decodes have not used up their share of the slots' time;
// otherwise it returns ok false at once.
func (r *Recognizer) TryDecode(pcm []int16) (text string, ok bool, err error) {
	r.mu.Lock()
	r.refillLocked()
	afford := r.budget > 0
	r.mu.Unlock()
	if !afford {
		return "", false, nil
	}
	select {
	case r.slots <- struct{}{}:
	default:
		return "", false, nil
	}
	defer func() { <-r.slots }()
	t0 := r.now()
	text, err = r.decode(pcm)
	r.mu.Lock()
	r.budget -= r.now().Sub(t0)
	r.mu.Unlock()
	return text, err == nil, err
}

func (r *Recognizer) refillLocked() {
	now := r.now()
	el := now.Sub(r.refilled)
	r.refilled = now
	r.budget = min(r.capacity, r.budget+time.Duration(float64(el)*r.share*float64(cap(r.slots))))
}

func (r *Recognizer) decode(pcm []int16) (string, error) {
	if r.rec == nil {
		return "", ErrClosed
	}
	if len(pcm) == 0 {
		return "", nil
	}
	f := make([]float32, len(pcm))
	for i, s := range pcm {
		f[i] = float32(s) / 32768
	}
	s := sherpa.NewOfflineStream(r.rec)
	defer sherpa.DeleteOfflineStream(s)
	s.AcceptWaveform(SampleRate, f)
	r.rec.Decode(s)
	return strings.Join(strings.Fields(s.GetResult().Text), " "), nil
}

// Close frees the model once every decode has finished.
func (r *Recognizer) Close() {
	r.closeOnce.Do(func() {
		for range cap(r.slots) {
			r.slots <- struct{}{}
		}
		sherpa.DeleteOfflineRecognizer(r.rec)
		r.rec = nil
		for range cap(r.slots) {
			<-r.slots
		}
	})
}
