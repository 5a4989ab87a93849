package asr

import (
	"encoding/binary"
	"fmt"
	"math"
)

// UtteranceDecoder is what the transcriber needs from an engine that
// decodes whole utterances (Moonshine): *moonshine.Recognizer satisfies it.
type UtteranceDecoder interface {
	// Decode returns the text of a whole utterance.
	Decode(pcm []int16) (string, error)
	// TryDecode decodes a growing utterance for a partial, or returns ok
	// false at once when the engine has no time to spare for it.
	TryDecode(pcm []int16) (text string, ok bool, err error)
}

// Timings and limits of whole-utterance decoding, in samples at SampleRate.
const (
	// DefaultPartialInterval: a partial is attempted each time the
	// utterance has grown by a second of audio (measured against the CPU
	// budget in BENCHMARKS.md).
	DefaultPartialInterval = SampleRate
	// LeadIn is the audio kept before the detector's speech start and
	// decoded with the utterance: the detector needs StartFrames of speech
	// before it decides, and a word's onset is quieter than its body.
	LeadIn = 3 * SampleRate / 10
	// DefaultMaxUtteranceWhole bounds an utterance of a whole-utterance
	// engine: its final's decode time grows with its length (about 0.9 s for
	// 10 s of audio on the benchmark machine). Beyond it the utterance is
	// cut at its quietest 10 ms in the last CutWindow; the audio after the
	// cut begins the next utterance, so nothing is dropped.
	DefaultMaxUtteranceWhole = 10 * SampleRate
	// CutWindow is where a cut in unbroken speech may fall: within the last
	// 5 s before the limit.
	CutWindow = 5 * SampleRate
	// PartialWindow bounds what a partial decodes: the last 6 s of a longer
	// utterance. A decode holds its slot until done, so an unbounded partial
	// of a long utterance would delay the finals queued behind it.
	PartialWindow = 6 * SampleRate
)

// Utterances decodes one channel with a whole-utterance engine. Audio is
// cut into utterances by the same voice-activity detector and fixed chunks
// as the streaming path; each utterance is decoded once for its final, and
// partials re-decode it as it grows when the engine can spare the time.
// Finals depend on the audio alone: a checkpoint holds the detector's state
// and the audio held for the next final. Not safe for concurrent use.
type Utterances struct {
	dec         UtteranceDecoder
	vad         *VAD
	maxUtt      int64
	every       int64
	rewrite     func(string) string
	sample      int64
	next        uint32
	pending     []int16
	speaking    bool
	uttStart    int64
	buf         []int16 // speaking: the utterance so far; otherwise the lead-in
	partialAt   int     // len(buf) at the last partial attempt
	lastPartial string
	flushed     bool
}

// NewUtterances starts decoding a channel on dec, fresh (from nil) or from a
// checkpoint.
func NewUtterances(dec UtteranceDecoder, from *Checkpoint, opt Options) (*Utterances, error) {
	t := &Utterances{dec: dec, vad: NewVAD(DefaultVAD), maxUtt: opt.MaxUtterance, every: opt.PartialInterval, rewrite: opt.Rewrite}
	if t.maxUtt <= 0 {
		t.maxUtt = DefaultMaxUtteranceWhole
	}
	if t.maxUtt < 2*CutWindow {
		return nil, fmt.Errorf("asr: max utterance %d samples: at least %d", t.maxUtt, 2*CutWindow)
	}
	if t.every == 0 {
		t.every = DefaultPartialInterval
	}
	if opt.VAD != nil {
		t.vad = NewVAD(*opt.VAD)
	}
	if from != nil {
		if len(from.Audio)%2 != 0 {
			return nil, fmt.Errorf("asr: checkpoint audio of odd length %d", len(from.Audio))
		}
		t.sample, t.next = from.Sample, from.Next
		t.pending = append([]int16(nil), from.Pending...)
		t.vad.State = from.VAD
		t.buf = make([]int16, len(from.Audio)/2)
		for i := range t.buf {
			t.buf[i] = int16(binary.LittleEndian.Uint16(from.Audio[2*i:]))
		}
		t.speaking, t.uttStart = from.InUtt, from.UttStart
	}
	return t, nil
}

// Feed adds PCM and returns the events it produced, in order.
func (t *Utterances) Feed(pcm []int16) ([]Event, error) {
	if t.flushed {
		return nil, ErrFlushed
	}
	return feedChunks(&t.pending, pcm, t.chunk)
}

// Flush decodes what is left and returns the last final.
func (t *Utterances) Flush() ([]Event, error) {
	if t.flushed {
		return nil, ErrFlushed
	}
	evs, err := flushChunk(&t.pending, t.chunk)
	if err != nil {
		return nil, err
	}
	t.flushed = true
	if t.speaking {
		ev, err := t.final(t.buf, t.uttStart, t.sample)
		if err != nil {
			return evs, err
		}
		if ev != nil {
			evs = append(evs, *ev)
		}
	}
	return evs, nil
}

func (t *Utterances) chunk(c, rest []int16) ([]Event, error) {
	t.sample += int64(len(c))
	in := t.vad.Update(c)
	if !t.speaking {
		t.buf = append(t.buf, c...)
		if !in {
			if over := len(t.buf) - LeadIn; over > 0 {
				t.buf = append(t.buf[:0], t.buf[over:]...)
			}
			return nil, nil
		}
		t.speaking = true
		t.uttStart = t.sample - int64(len(t.buf))
		t.partialAt, t.lastPartial = 0, ""
		return nil, nil
	}
	t.buf = append(t.buf, c...)
	switch {
	case !in: // the detector heard the end of speech
		ev, err := t.final(t.buf, t.uttStart, t.sample)
		if err != nil {
			return nil, err
		}
		t.speaking = false
		t.buf = append(t.buf[:0], t.buf[max(0, len(t.buf)-LeadIn):]...)
		return t.withCheckpoint(ev, rest), nil
	case int64(len(t.buf)) >= t.maxUtt:
		cut := quietest(t.buf, len(t.buf)-CutWindow, len(t.buf)-ChunkSamples)
		ev, err := t.final(t.buf[:cut], t.uttStart, t.uttStart+int64(cut))
		if err != nil {
			return nil, err
		}
		t.buf = append(t.buf[:0], t.buf[cut:]...)
		t.uttStart += int64(cut)
		t.partialAt, t.lastPartial = 0, ""
		return t.withCheckpoint(ev, rest), nil
	}
	// Partials while speech goes on (not in the detector's hang-over, so a
	// partial decode never delays the final that follows).
	if t.every < 0 || t.vad.State.Run != 0 || int64(len(t.buf)-t.partialAt) < t.every {
		return nil, nil
	}
	t.partialAt = len(t.buf)
	text, ok, err := t.dec.TryDecode(t.buf[max(0, len(t.buf)-PartialWindow):])
	if err != nil {
		return nil, fmt.Errorf("asr: partial: %w", err)
	}
	if !ok || text == "" || text == t.lastPartial {
		return nil, nil
	}
	t.lastPartial = text
	return []Event{{Kind: Partial, Index: t.next, Text: text, Start: t.uttStart, End: t.sample}}, nil
}

// final decodes an utterance; nil when the engine heard no words.
func (t *Utterances) final(pcm []int16, start, end int64) (*Event, error) {
	text, err := t.dec.Decode(pcm)
	if err != nil {
		return nil, fmt.Errorf("asr: decode: %w", err)
	}
	if text == "" {
		return nil, nil
	}
	ev := &Event{Kind: Final, Index: t.next, Text: text, Start: start, End: end}
	if t.rewrite != nil {
		if r := t.rewrite(text); r != text {
			ev.Text, ev.Heard = r, text
		}
	}
	t.next++
	return ev, nil
}

func (t *Utterances) withCheckpoint(ev *Event, rest []int16) []Event {
	if ev == nil {
		return nil
	}
	audio := make([]byte, 2*len(t.buf))
	for i, s := range t.buf {
		binary.LittleEndian.PutUint16(audio[2*i:], uint16(s))
	}
	ev.Checkpoint = &Checkpoint{
		Sample: t.sample, Next: t.next, Pending: append([]int16(nil), rest...), VAD: t.vad.State,
		Audio: audio, InUtt: t.speaking, UttStart: t.uttStart,
	}
	return []Event{*ev}
}

// quietest returns the start of the quietest 10 ms frame of pcm between
// from and to (the earliest among equals), as a frame boundary.
func quietest(pcm []int16, from, to int) int {
	const frame = SampleRate / 100
	from = max(0, from-from%frame)
	best, bestE := to, math.Inf(1)
	for off := from; off+frame <= to; off += frame {
		var e float64
		for _, s := range pcm[off : off+frame] {
			e += float64(s) * float64(s)
		}
		if e < bestE {
			best, bestE = off, e
		}
	}
	return best
}
