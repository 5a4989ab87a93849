// Package engine builds decoders for a model manifest and pools them. It is
// the only package that knows which engine implementation backs a manifest.
package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"

	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/models/asr"
	"github.com/callscribe/callscribe/models/correct"
	"github.com/callscribe/callscribe/models/moonshine"
	"github.com/callscribe/callscribe/models/pocketsphinx"
	"github.com/callscribe/callscribe/proto"
)

// Instance is one decoder with the carried state it had when it was created
// (streaming engines: Dec), or a handle on a whole-utterance engine shared
// by the process (Utt).
type Instance struct {
	Dec      asr.Decoder
	Pristine asr.EngineState
	Utt      asr.UtteranceDecoder
	// Options are the model's own settings for a channel's stream.
	Options asr.Options
	// vocab identifies the extra words the decoder was given.
	vocab    string
	addWords func([]proto.Word) error
	knows    func(string) bool
	close    func()
}

// Knows reports whether the instance's dictionary has word.
func (i *Instance) Knows(word string) bool { return i.knows != nil && i.knows(word) }

// VocabularyKey identifies a vocabulary: instances are reused only for calls
// with exactly their words, so a decode never depends on which calls a
// pooled decoder served before.
func VocabularyKey(ws []proto.Word) string {
	if len(ws) == 0 {
		return ""
	}
	h := sha256.New()
	for _, w := range ws {
		fmt.Fprintf(h, "%s\t%s\n", w.Word, w.Phones)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Factory creates decoder instances.
type Factory func() (*Instance, error)

// NewFactory returns a factory for the manifest's engine.
func NewFactory(m *models.Manifest) (Factory, error) {
	switch m.Engine {
	case "pocketsphinx":
		if err := m.CheckFiles(); err != nil {
			return nil, err
		}
		cfg := pocketsphinx.Config{HMM: m.Files.HMM, LM: m.Files.LM, Dict: m.Files.Dict}
		keys := make([]string, 0, len(m.EngineOptions))
		for k := range m.EngineOptions {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			cfg.Extra = append(cfg.Extra, "-"+k, m.EngineOptions[k])
		}
		return func() (*Instance, error) {
			d, err := pocketsphinx.New(cfg)
			if err != nil {
				return nil, err
			}
			p, err := asr.Pristine(d)
			if err != nil {
				d.Close()
				return nil, err
			}
			add := func(ws []proto.Word) error {
				for i, w := range ws {
					if err := d.AddWord(w.Word, w.Phones, i == len(ws)-1); err != nil {
						return err
					}
				}
				return nil
			}
			return &Instance{Dec: d, Pristine: p, addWords: add, knows: d.Knows, close: d.Close}, nil
		}, nil
	case "moonshine":
		return moonshineFactory(m)
	default:
		return nil, fmt.Errorf("engine %q: %w", m.Engine, models.ErrUnknownModel)
	}
}

// moonshineFactory loads the model once; every instance is a handle on it
// with its own vocabulary correction. The model is freed when the process
// ends (a worker serves one model for its whole life).
func moonshineFactory(m *models.Manifest) (Factory, error) {
	if err := m.CheckFiles(); err != nil {
		return nil, err
	}
	opt := asr.Options{}
	share := 0.0
	for k, v := range m.EngineOptions {
		var err error
		switch k {
		case "partial_share":
			share, err = strconv.ParseFloat(v, 64)
			if err == nil && (share <= 0 || share > 1) {
				err = errors.New("want a fraction in (0, 1]")
			}
		case "partial_interval_ms":
			var ms int
			ms, err = strconv.Atoi(v)
			opt.PartialInterval = int64(ms) * asr.SampleRate / 1000
			if ms == 0 {
				opt.PartialInterval = -1
			}
		case "vad_end_ms":
			var ms int
			ms, err = strconv.Atoi(v)
			if err == nil && (ms < 100 || ms > 2000) {
				err = errors.New("want 100 to 2000")
			}
			vad := asr.DefaultVAD
			vad.EndFrames = ms / 10
			opt.VAD = &vad
		case "max_utterance_ms":
			var ms int
			ms, err = strconv.Atoi(v)
			opt.MaxUtterance = int64(ms) * asr.SampleRate / 1000
		default:
			err = errors.New("unknown option (partial_share, partial_interval_ms, vad_end_ms, max_utterance_ms)")
		}
		if err != nil {
			return nil, fmt.Errorf("model %s: engine_options.%s = %q: %w", m.Name, k, v, err)
		}
	}
	rec, err := moonshine.New(moonshine.Config{
		Encoder: m.Path("encoder"), Decoder: m.Path("decoder"), Tokens: m.Path("tokens"),
		Slots: max(m.Resources.CPUThreads, 1), PartialShare: share,
	})
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", m.Name, err)
	}
	return func() (*Instance, error) {
		in := &Instance{Utt: rec, Options: opt, knows: func(string) bool { return false }}
		in.addWords = func(ws []proto.Word) error {
			c, err := correct.New(ws, nil)
			if err != nil {
				return err
			}
			in.Options.Rewrite = c.Correct
			in.knows = c.Knows
			return nil
		}
		return in, nil
	}, nil
}

// NewStream starts decoding a channel on the instance, fresh (from nil) or
// from a checkpoint. extra adjusts the model's own options.
func (i *Instance) NewStream(from *asr.Checkpoint, extra func(*asr.Options)) (asr.Stream, error) {
	opt := i.Options
	if extra != nil {
		extra(&opt)
	}
	if i.Utt != nil {
		return asr.NewUtterances(i.Utt, from, opt)
	}
	return asr.New(i.Dec, i.Pristine, from, opt)
}

// Close frees the instance's decoder.
func (i *Instance) Close() {
	if i.close != nil {
		i.close()
	}
}

// Pool lends at most Size instances, creating them on demand and keeping
// returned ones for reuse.
type Pool struct {
	newFn Factory
	sem   chan struct{}
	mu    sync.Mutex
	idle  []*Instance
}

// NewPool returns a pool of at most size instances.
func NewPool(f Factory, size int) *Pool {
	return &Pool{newFn: f, sem: make(chan struct{}, max(size, 1))}
}

// Get waits for a free slot and returns an instance without extra words.
func (p *Pool) Get(ctx context.Context) (*Instance, error) { return p.GetFor(ctx, nil) }

// GetFor waits for a free slot and returns an instance that knows exactly
// the vocabulary's extra words: an idle one made for the same words, or a
// fresh one (an idle instance for other words is freed to make room).
func (p *Pool) GetFor(ctx context.Context, vocab []proto.Word) (*Instance, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	key := VocabularyKey(vocab)
	p.mu.Lock()
	for i := len(p.idle) - 1; i >= 0; i-- {
		if in := p.idle[i]; in.vocab == key {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			p.mu.Unlock()
			return in, nil
		}
	}
	// Instances (idle + lent, this one included) stay within the pool's size.
	var stale *Instance
	if n := len(p.idle); n > 0 && n+len(p.sem) > cap(p.sem) {
		stale, p.idle = p.idle[0], p.idle[1:]
	}
	p.mu.Unlock()
	if stale != nil {
		stale.Close()
	}
	in, err := p.newFn()
	if err == nil && len(vocab) > 0 {
		if in.addWords == nil {
			err = errors.New("engine: this engine takes no extra vocabulary")
		} else {
			err = in.addWords(vocab)
		}
		if err != nil {
			in.Close()
		}
	}
	if err != nil {
		<-p.sem
		return nil, err
	}
	in.vocab = key
	return in, nil
}

// Put returns an instance to the pool.
func (p *Pool) Put(in *Instance) {
	p.mu.Lock()
	p.idle = append(p.idle, in)
	p.mu.Unlock()
	<-p.sem
}

// Close frees every idle instance.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, in := range p.idle {
		in.Close()
	}
	p.idle = nil
}

// Transcribe decodes a whole 16 kHz channel with the same chunking as the
// live path and returns its finals.
func Transcribe(in *Instance, pcm []int16) ([]asr.Event, error) {
	// Only finals are kept: no partial decodes.
	t, err := in.NewStream(nil, func(o *asr.Options) { o.PartialInterval = -1 })
	if err != nil {
		return nil, err
	}
	var finals []asr.Event
	keep := func(evs []asr.Event) {
		for _, e := range evs {
			if e.Kind == asr.Final {
				finals = append(finals, e)
			}
		}
	}
	// Feed in 20 ms blocks: the transcriber re-chunks, so the block size
	// must not matter; feeding small blocks keeps that property exercised.
	for off := 0; off < len(pcm); off += 320 {
		evs, err := t.Feed(pcm[off:min(off+320, len(pcm))])
		if err != nil {
			return finals, err
		}
		keep(evs)
	}
	evs, err := t.Flush()
	keep(evs)
	return finals, err
}
