// Package worker is the ASR worker process: it connects to the coordinator,
// proves its engine with a test decode, and decodes the call channels the
// coordinator assigns to it. A worker is a separate process so that an engine
// crash never takes down an agent or the coordinator.
package worker

import (
	"encoding/json"
	"fmt"

	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/internal/opus"
	"github.com/callscribe/callscribe/models/asr"
	"github.com/callscribe/callscribe/models/engine"
	"github.com/callscribe/callscribe/proto"
)

// Checkpoint is what a worker stores with each final: the transcriber's
// state plus the codec's and resampler's, so decoding continues bit for bit.
type Checkpoint struct {
	ASR       asr.Checkpoint        `json:"asr"`
	Opus      []byte                `json:"opus,omitempty"`
	Resampler *audio.ResamplerState `json:"resampler,omitempty"`
}

// OpusPreSkip is the decoder output dropped at the start of an Opus
// channel, at 16 kHz: 6.5 ms.
var OpusPreSkip = 104

// Channel decodes one channel: codec → 16 kHz PCM → transcriber.
type Channel struct {
	codec proto.Codec
	opus  *opus.Decoder
	rs    *audio.Resampler
	tr    asr.Stream
	// decoded counts frames fed; the next frame's sequence number.
	next uint32
	// undecodable lists frames since the last TakeUndecodable that no
	// decoder could read (each was concealed as a lost packet).
	undecodable []Undecodable
}

// Undecodable is a frame the channel's decoder could not read.
type Undecodable struct {
	Seq uint32
	Err error
}

// TakeUndecodable returns and forgets the undecodable frames seen so far.
func (c *Channel) TakeUndecodable() []Undecodable {
	u := c.undecodable
	c.undecodable = nil
	return u
}

// Event is a transcriber event with the worker checkpoint for finals.
type Event struct {
	asr.Event
	NextSeq    uint32
	Checkpoint json.RawMessage
}

// NewChannel prepares a channel on a decoder instance. With cp nil it starts
// at frame 0; otherwise it continues from the checkpoint at frame fromSeq.
func NewChannel(codec proto.Codec, in *engine.Instance, cp json.RawMessage, fromSeq uint32) (*Channel, error) {
	c := &Channel{codec: codec, next: fromSeq}
	var saved Checkpoint
	var from *asr.Checkpoint
	if len(cp) > 0 {
		if err := json.Unmarshal(cp, &saved); err != nil {
			return nil, fmt.Errorf("worker: bad checkpoint: %w", err)
		}
		from = &saved.ASR
	} else if fromSeq != 0 {
		return nil, fmt.Errorf("worker: resume at frame %d without a checkpoint", fromSeq)
	}
	switch codec {
	case proto.CodecL16:
	case proto.CodecPCMU, proto.CodecPCMA:
		c.rs = audio.NewResampler(8000, asr.SampleRate)
		if saved.Resampler != nil {
			c.rs.SetState(*saved.Resampler)
		}
	case proto.CodecOpus:
		d, err := opus.NewDecoder(asr.SampleRate)
		if err != nil {
			return nil, err
		}
		if saved.Opus != nil {
			if err := d.SetState(saved.Opus); err != nil {
				return nil, err
			}
		}
		c.opus = d
	default:
		return nil, fmt.Errorf("worker: unknown codec %q", codec)
	}
	// Streaming engines: a partial every 3 chunks (300 ms).
	tr, err := in.NewStream(from, func(o *asr.Options) { o.PartialEvery = 3 })
	if err != nil {
		return nil, err
	}
	c.tr = tr
	return c, nil
}

// Next returns the sequence number of the next frame the channel expects.
func (c *Channel) Next() uint32 { return c.next }

// PCM decodes one frame's payload to 16 kHz PCM. An empty payload is a loss
// marker: Opus conceals it with libopus's packet loss concealment, G.711
// with silence, each for proto.LossFrameMS.
func (c *Channel) PCM(payload []byte) ([]int16, error) {
	if len(payload) == 0 {
		return c.conceal()
	}
	switch c.codec {
	case proto.CodecL16:
		if len(payload)%2 != 0 {
			return nil, fmt.Errorf("worker: l16 payload of odd length %d", len(payload))
		}
		return audio.BytesToPCM(payload), nil
	case proto.CodecPCMU:
		return c.rs.Process(audio.MulawDecode(payload)), nil
	case proto.CodecPCMA:
		return c.rs.Process(audio.AlawDecode(payload)), nil
	case proto.CodecOpus:
		return c.opus.Decode(payload, 0)
	}
	return nil, fmt.Errorf("worker: unknown codec %q", c.codec)
}

// concealFor conceals an undecodable payload: an L16 frame as the silence
// its length stands for, any other as one lost packet.
func (c *Channel) concealFor(payload []byte) ([]int16, error) {
	if c.codec == proto.CodecL16 {
		return make([]int16, len(payload)/2), nil
	}
	return c.conceal()
}

func (c *Channel) conceal() ([]int16, error) {
	switch c.codec {
	case proto.CodecOpus:
		return c.opus.Decode(nil, asr.SampleRate*proto.LossFrameMS/1000)
	case proto.CodecPCMU, proto.CodecPCMA:
		return c.rs.Process(make([]int16, 8000*proto.LossFrameMS/1000)), nil
	case proto.CodecL16:
		return make([]int16, asr.SampleRate*proto.LossFrameMS/1000), nil
	}
	return nil, fmt.Errorf("worker: unknown codec %q", c.codec)
}

// Feed decodes frame seq. Frames must come in order without gaps.
func (c *Channel) Feed(seq uint32, payload []byte) ([]Event, error) {
	if seq != c.next {
		return nil, fmt.Errorf("worker: frame %d out of order (want %d)", seq, c.next)
	}
	pcm, err := c.PCM(payload)
	if err != nil {
		// A frame no decoder can read (a corrupt Opus packet, an odd-length
		// L16 frame) is stored and acknowledged like any other: conceal it
		// as a lost packet, so the channel goes on. The same frame resumed
		// from the same checkpoint is concealed the same way, so the
		// transcript still depends only on the stored audio.
		c.undecodable = append(c.undecodable, Undecodable{Seq: seq, Err: err})
		if pcm, err = c.concealFor(payload); err != nil {
			return nil, err
		}
	}
	if seq == 0 && c.codec == proto.CodecOpus {
		// Opus's pre-skip: an encoder's output starts with its lookahead
		// (6.5 ms, RFC 7845's 312 samples at 48 kHz). Dropping it lines the
		// audio up with the original, as Ogg Opus players do.
		pcm = pcm[min(len(pcm), OpusPreSkip):]
	}
	c.next++
	evs, err := c.tr.Feed(pcm)
	return c.wrap(evs), err
}

// Finish decodes what is left and ends the last utterance.
func (c *Channel) Finish() ([]Event, error) {
	evs, err := c.tr.Flush()
	// Wrap first: a final the last chunk ended carries a checkpoint with
	// the codec's state, which must be read before the codec is freed.
	out := c.wrap(evs)
	if c.opus != nil {
		c.opus.Close()
		c.opus = nil
	}
	return out, err
}

func (c *Channel) wrap(evs []asr.Event) []Event {
	out := make([]Event, len(evs))
	for i, e := range evs {
		out[i] = Event{Event: e}
		if e.Kind != asr.Final {
			continue
		}
		out[i].NextSeq = c.next
		if e.Checkpoint == nil { // the call's last final: nothing follows
			continue
		}
		cp := Checkpoint{ASR: *e.Checkpoint}
		if c.opus != nil {
			cp.Opus = c.opus.State()
		}
		if c.rs != nil {
			s := c.rs.State()
			cp.Resampler = &s
		}
		out[i].Checkpoint, _ = json.Marshal(cp)
	}
	return out
}
