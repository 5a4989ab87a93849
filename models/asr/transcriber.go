// Package asr turns a stream of 16 kHz PCM into partial and final
// transcripts with any engine that satisfies Decoder. It owns the rules that
// make a transcript depend on the audio alone: fixed chunking counted from the
// start of the channel, endpointing on the engine's voice-activity state, a
// per-channel reset of the engine's carried state, and a checkpoint with every
// final from which another decoder continues exactly.
package asr

import (
	"errors"
	"fmt"
	"strings"
)

// SampleRate is the rate every engine is fed.
const SampleRate = 16000

// ChunkSamples is the fixed unit of audio fed to a decoder (100 ms). Live,
// resumed and file decoding all cut audio at the same absolute offsets.
const ChunkSamples = 1600

// DefaultMaxUtterance forces an endpoint in speech that never pauses (20 s).
const DefaultMaxUtterance = 20 * SampleRate

// Decoder is what the transcriber needs from an engine. *pocketsphinx.Decoder
// satisfies it; unit tests use a fake.
type Decoder interface {
	StartUtt() error
	Process(pcm []int16) error
	Hyp() string
	EndUtt() error
	CMN() (mean, sum []float32, nframe int32)
	SetCMN(mean, sum []float32, nframe int32) error
}

// EngineState is the state an engine carries across utterances.
type EngineState struct {
	Mean   []float32 `json:"mean"`
	Sum    []float32 `json:"sum"`
	Frames int32     `json:"frames"`
}

// Checkpoint is everything needed to continue a channel's decoding exactly
// where it stood right after a final.
type Checkpoint struct {
	// Sample is the number of samples fed to the decoder so far.
	Sample int64 `json:"sample"`
	// Next is the index the next final will carry.
	Next uint32 `json:"next"`
	// Engine is the decoder's carried state.
	Engine EngineState `json:"engine"`
	// Pending holds samples received but not yet fed (less than a chunk).
	Pending []int16 `json:"pending,omitempty"`
	// VAD is the endpointer's state.
	VAD VADState `json:"vad"`
	// Audio is, for engines that decode whole utterances, the audio held
	// for the next final (16-bit little-endian PCM): the lead-in kept before
	// speech starts, or, after a cut in unbroken speech, the utterance so far.
	Audio []byte `json:"audio,omitempty"`
	// InUtt says the checkpoint lies inside an utterance (after a cut);
	// UttStart is then where that utterance's audio starts.
	InUtt    bool  `json:"in_utt,omitempty"`
	UttStart int64 `json:"utt_start,omitempty"`
}

// Kind tells partial from final events.
type Kind uint8

// Event kinds.
const (
	Partial Kind = iota + 1
	Final
)

// Event is one transcript event. Offsets are in samples at SampleRate from
// the start of the channel.
type Event struct {
	Kind  Kind
	Index uint32 // finals: 0, 1, 2 … per channel; partials: the index of the final they precede
	Text  string
	Start int64
	End   int64
	// Heard is, when a vocabulary correction changed Text, what the engine
	// itself recognised.
	Heard string
	// Checkpoint is set on finals.
	Checkpoint *Checkpoint
}

// Stream decodes one channel: *Transcriber (streaming engines) and
// *Utterances (whole-utterance engines) satisfy it.
type Stream interface {
	// Feed adds PCM and returns the events it produced, in order.
	Feed(pcm []int16) ([]Event, error)
	// Flush ends the channel and returns its last final.
	Flush() ([]Event, error)
}

var (
	_ Stream = (*Transcriber)(nil)
	_ Stream = (*Utterances)(nil)
)

// Transcriber decodes one channel. Not safe for concurrent use.
type Transcriber struct {
	dec          Decoder
	vad          *VAD
	maxUtt       int64
	sample       int64
	next         uint32
	pending      []int16
	speaking     bool
	uttStart     int64
	lastPartial  string
	flushed      bool
	partialEvery int
	sincePartial int
}

// Options tune a Transcriber.
type Options struct {
	// MaxUtterance in samples; 0 means DefaultMaxUtterance.
	MaxUtterance int64
	// PartialEvery emits a partial at most every N chunks (0 or 1: every chunk).
	PartialEvery int
	// VAD tunes the endpointer; nil means DefaultVAD.
	VAD *VADConfig
	// PartialInterval is, for whole-utterance engines, how much an
	// utterance grows (in samples) between partial decodes; 0 means
	// DefaultPartialInterval, negative turns partials off.
	PartialInterval int64
	// Rewrite, if set, corrects the text of each final (a vocabulary pass);
	// the engine's own text is kept in Event.Heard.
	Rewrite func(string) string
}

// ErrFlushed is returned by Feed after Flush.
var ErrFlushed = errors.New("asr: transcriber already flushed")

// New starts decoding a channel on dec. With from nil it begins a fresh
// channel from pristine, the decoder's state straight after it was created;
// otherwise it continues from the checkpoint.
func New(dec Decoder, pristine EngineState, from *Checkpoint, opt Options) (*Transcriber, error) {
	t := &Transcriber{dec: dec, vad: NewVAD(DefaultVAD), maxUtt: opt.MaxUtterance, partialEvery: max(opt.PartialEvery, 1)}
	if t.maxUtt <= 0 {
		t.maxUtt = DefaultMaxUtterance
	}
	if opt.VAD != nil {
		t.vad = NewVAD(*opt.VAD)
	}
	st := pristine
	if from != nil {
		st = from.Engine
		t.sample = from.Sample
		t.next = from.Next
		t.pending = append([]int16(nil), from.Pending...)
		t.vad.State = from.VAD
	}
	// A pooled decoder may still be inside an abandoned utterance.
	if err := dec.EndUtt(); err != nil {
		return nil, fmt.Errorf("asr: reset decoder: %w", err)
	}
	if err := dec.StartUtt(); err != nil {
		return nil, fmt.Errorf("asr: start: %w", err)
	}
	if err := dec.SetCMN(st.Mean, st.Sum, st.Frames); err != nil {
		return nil, fmt.Errorf("asr: restore engine state: %w", err)
	}
	return t, nil
}

// Pristine captures a freshly created decoder's carried state. Call it once,
// right after creating the decoder and before any audio.
func Pristine(dec Decoder) (EngineState, error) {
	if err := dec.StartUtt(); err != nil {
		return EngineState{}, fmt.Errorf("asr: start: %w", err)
	}
	m, s, n := dec.CMN()
	return EngineState{Mean: m, Sum: s, Frames: n}, nil
}

// Feed adds PCM and returns the events it produced, in order.
func (t *Transcriber) Feed(pcm []int16) ([]Event, error) {
	if t.flushed {
		return nil, ErrFlushed
	}
	return feedChunks(&t.pending, pcm, t.chunk)
}

// Flush feeds what is left, ends the last utterance and returns its final.
func (t *Transcriber) Flush() ([]Event, error) {
	if t.flushed {
		return nil, ErrFlushed
	}
	evs, err := flushChunk(&t.pending, t.chunk)
	if err != nil {
		return nil, err
	}
	t.flushed = true
	if err := t.dec.EndUtt(); err != nil {
		return evs, fmt.Errorf("asr: end: %w", err)
	}
	if t.speaking {
		if text := clean(t.dec.Hyp()); text != "" {
			evs = append(evs, Event{Kind: Final, Index: t.next, Text: text, Start: t.uttStart, End: t.sample})
			t.next++
		}
	}
	return evs, nil
}

// chunk feeds one chunk; rest is what follows it (kept in a checkpoint).
func (t *Transcriber) chunk(c, rest []int16) ([]Event, error) {
	if err := t.dec.Process(c); err != nil {
		return nil, err
	}
	t.sample += int64(len(c))
	in := t.vad.Update(c)
	if in && !t.speaking {
		t.speaking = true
		t.uttStart = t.sample - int64(len(c))
		t.lastPartial = ""
		t.sincePartial = 0
	}
	if !t.speaking {
		return nil, nil
	}
	if !in || t.sample-t.uttStart >= t.maxUtt {
		return t.endpoint(rest)
	}
	t.sincePartial++
	if t.sincePartial < t.partialEvery {
		return nil, nil
	}
	t.sincePartial = 0
	if h := clean(t.dec.Hyp()); h != "" && h != t.lastPartial {
		t.lastPartial = h
		return []Event{{Kind: Partial, Index: t.next, Text: h, Start: t.uttStart, End: t.sample}}, nil
	}
	return nil, nil
}

func (t *Transcriber) endpoint(rest []int16) ([]Event, error) {
	t.speaking = false
	if err := t.dec.EndUtt(); err != nil {
		return nil, fmt.Errorf("asr: end: %w", err)
	}
	text := clean(t.dec.Hyp())
	if err := t.dec.StartUtt(); err != nil {
		return nil, fmt.Errorf("asr: start: %w", err)
	}
	if text == "" {
		return nil, nil
	}
	m, s, n := t.dec.CMN()
	ev := Event{Kind: Final, Index: t.next, Text: text, Start: t.uttStart, End: t.sample}
	t.next++
	ev.Checkpoint = &Checkpoint{
		Sample:  t.sample,
		Next:    t.next,
		Engine:  EngineState{Mean: m, Sum: s, Frames: n},
		Pending: append([]int16(nil), rest...),
		VAD:     t.vad.State,
	}
	return []Event{ev}, nil
}

// clean drops filler tokens such as <sil> and [NOISE] and folds spaces.
func clean(h string) string {
	f := strings.Fields(h)
	out := f[:0]
	for _, w := range f {
		if strings.HasPrefix(w, "<") || strings.HasPrefix(w, "[") || strings.HasPrefix(w, "++") {
			continue
		}
		if i := strings.IndexByte(w, '('); i > 0 { // alternate pronunciations: word(2)
			w = w[:i]
		}
		out = append(out, w)
	}
	return strings.Join(out, " ")
}

// feedChunks appends pcm to *pending and hands each whole chunk to chunk,
// with the samples that follow it (kept in a checkpoint); what is left over
// stays pending. Both transcribers cut audio this way.
func feedChunks(pending *[]int16, pcm []int16, chunk func(c, rest []int16) ([]Event, error)) ([]Event, error) {
	*pending = append(*pending, pcm...)
	p := *pending
	var evs []Event
	off := 0
	for len(p)-off >= ChunkSamples {
		ev, err := chunk(p[off:off+ChunkSamples], p[off+ChunkSamples:])
		if err != nil {
			return evs, err
		}
		evs = append(evs, ev...)
		off += ChunkSamples
	}
	*pending = append(p[:0], p[off:]...)
	return evs, nil
}

// flushChunk hands what is pending, less than a chunk, to chunk as the
// channel's last (short) chunk.
func flushChunk(pending *[]int16, chunk func(c, rest []int16) ([]Event, error)) ([]Event, error) {
	if len(*pending) == 0 {
		return nil, nil
	}
	evs, err := chunk(*pending, nil)
	if err != nil {
		return nil, err
	}
	*pending = (*pending)[:0]
	return evs, nil
}
