package console

import (
	"fmt"
	"time"

	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/internal/opus"
	"github.com/callscribe/callscribe/proto"
)

// EncodeFrames cuts each channel into frames of the codec: 100 ms for L16,
// 20 ms for G.711 and Opus.
func EncodeFrames(w *audio.WAV, codec proto.Codec) ([][][]byte, time.Duration, error) {
	out := make([][][]byte, w.Channels)
	var dur time.Duration
	for c := range w.Channels {
		pcm := w.Channel(c)
		switch codec {
		case proto.CodecL16:
			if w.Rate != 16000 {
				pcm = audio.NewResampler(w.Rate, 16000).Process(pcm)
			}
			dur = 100 * time.Millisecond
			for off := 0; off < len(pcm); off += 1600 {
				out[c] = append(out[c], audio.PCMToBytes(pcm[off:min(off+1600, len(pcm))]))
			}
		case proto.CodecPCMU, proto.CodecPCMA:
			if w.Rate != 8000 {
				pcm = audio.NewResampler(w.Rate, 8000).Process(pcm)
			}
			dur = 20 * time.Millisecond
			enc := audio.MulawEncode
			if codec == proto.CodecPCMA {
				enc = audio.AlawEncode
			}
			for off := 0; off < len(pcm); off += 160 {
				out[c] = append(out[c], enc(pcm[off:min(off+160, len(pcm))]))
			}
		case proto.CodecOpus:
			if w.Rate != 16000 {
				pcm = audio.NewResampler(w.Rate, 16000).Process(pcm)
			}
			dur = 20 * time.Millisecond
			e, err := opus.NewEncoder(16000, 32000)
			if err != nil {
				return nil, 0, err
			}
			for off := 0; off < len(pcm); off += 320 {
				blk := make([]int16, 320) // the last frame is padded with silence
				copy(blk, pcm[off:min(off+320, len(pcm))])
				pkt, err := e.Encode(blk)
				if err != nil {
					return nil, 0, err
				}
				out[c] = append(out[c], pkt)
			}
			e.Close()
		default:
			return nil, 0, fmt.Errorf("codec %q: want one of l16, pcmu, pcma, opus", codec)
		}
	}
	return out, dur, nil
}
