package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/callscribe/callscribe/ingest/console"
	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/internal/wer"
	"github.com/callscribe/callscribe/models/asr"
	"github.com/callscribe/callscribe/models/engine"
	"github.com/callscribe/callscribe/proto"
	"github.com/callscribe/callscribe/worker"
)

// Clip is a recording with its reference transcript.
type Clip struct {
	Name string
	WAV  *audio.WAV
	Ref  string
}

// Paths are the ways audio reaches an engine that the accuracy table
// compares: L16 as `transcribe` and QUIC consoles send it, G.711 at 8 kHz
// (telephone band) and Opus in 20 ms packets as WHIP carries it, each
// decoded by the worker's own codec pipeline.
var Paths = []proto.Codec{proto.CodecL16, proto.CodecPCMU, proto.CodecPCMA, proto.CodecOpus}

// DecodePath sends a clip's first channel through a codec and the worker's
// decoding pipeline on in, and returns the finals' text.
func DecodePath(in *engine.Instance, w *audio.WAV, codec proto.Codec) (string, error) {
	mono := &audio.WAV{Rate: w.Rate, Channels: 1, Samples: w.Channel(0)}
	frames, _, err := console.EncodeFrames(mono, codec)
	if err != nil {
		return "", err
	}
	ch, err := worker.NewChannel(codec, in, nil, 0)
	if err != nil {
		return "", err
	}
	var text []string
	keep := func(evs []worker.Event) {
		for _, e := range evs {
			if e.Kind == asr.Final {
				text = append(text, e.Text)
			}
		}
	}
	for i, f := range frames[0] {
		evs, err := ch.Feed(uint32(i), f)
		if err != nil {
			return "", err
		}
		keep(evs)
	}
	evs, err := ch.Finish()
	keep(evs)
	return strings.Join(text, " "), err
}

// Accuracy is the WER of each path over a set of clips.
func Accuracy(in *engine.Instance, clips []Clip) (map[proto.Codec]wer.Counts, error) {
	out := map[proto.Codec]wer.Counts{}
	for _, p := range Paths {
		for _, c := range clips {
			hyp, err := DecodePath(in, c.WAV, p)
			if err != nil {
				return nil, fmt.Errorf("%s over %s: %w", c.Name, p, err)
			}
			out[p] = out[p].Add(wer.Compare(wer.Words(c.Ref), wer.Words(hyp)))
		}
	}
	return out, nil
}

// SyntheticPhrases are the emergency-call sentences of the synthetic set,
// spoken by espeak-ng voices.
var SyntheticPhrases = []string{
	"there has been a crash on the motorway and two people are trapped",
	"my husband has collapsed and he is not breathing",
	"there is a fire in the kitchen and smoke is coming under the door",
	"please send an ambulance to twelve station road",
	"a man has been stabbed outside the pub on the high street",
	"my daughter is having an asthma attack and her inhaler is not working",
	"the car is on its roof in the ditch near the bridge",
	"somebody has broken into the house next door",
	"he fell off a ladder and hit his head and there is a lot of blood",
	"the river has burst its banks and the water is rising fast",
}

// SyntheticVoices are the espeak-ng voices that speak the set.
var SyntheticVoices = []string{"en-gb", "en-us", "en-gb-scotland"}

// Synthesize speaks every phrase of SyntheticPhrases in every voice with
// espeak-ng into dir.
func Synthesize(ctx context.Context, dir string) ([]Clip, error) {
	return SynthesizePhrases(ctx, dir, "synth", SyntheticPhrases)
}

// RealTimeResult is what a real-time run of N channels on one engine found.
type RealTimeResult struct {
	Channels int
	Seconds  float64
	// EndpointToFinal is from the moment the audio that ended an utterance
	// was due (the detector's decision) to its final; SpeechEndToFinal adds
	// the detector's hang-over (from the end of speech).
	EndpointToFinal, SpeechEndToFinal Quantiles
	// SpeechToPartial is from the moment speech began to its first partial.
	SpeechToPartial  Quantiles
	Finals, Partials int
	// CPUPerChannel is this process's CPU over the run, per channel, in %
	// of one core.
	CPUPerChannel float64
	// Lagging says the finals fell behind real time (latency grew through
	// the run or passed 3 s at p99).
	Lagging bool
}

// RealTime feeds n channels of pcm (16 kHz), each from its own offset, in
// 100 ms chunks at real-time pace for dur, through instances of f (for a
// whole-utterance engine: one model shared by all, as in a worker), and
// measures latency and CPU.
func RealTime(ctx context.Context, f engine.Factory, pcm []int16, n int, dur time.Duration, hangover time.Duration) (RealTimeResult, error) {
	res := RealTimeResult{Channels: n, Seconds: dur.Seconds()}
	var (
		mu                 sync.Mutex
		endp, speech, part []time.Duration
		firstHalf, second  []time.Duration
		wg                 sync.WaitGroup
		errs               = make([]error, n)
	)
	start := time.Now().Add(200 * time.Millisecond)
	ru0 := cpuTime()
	chunks := int(dur / (100 * time.Millisecond))
	for c := range n {
		in, err := f()
		if err != nil {
			return res, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer in.Close()
			st, err := in.NewStream(nil, nil)
			if err != nil {
				errs[c] = err
				return
			}
			off := (c * len(pcm) / max(n, 1)) / asr.ChunkSamples * asr.ChunkSamples
			due := func(sample int64) time.Time {
				return start.Add(time.Duration(sample) * time.Second / asr.SampleRate)
			}
			seenPartial := map[uint32]bool{}
			for k := range chunks {
				// Chunk k holds samples [k*1600, (k+1)*1600): it is due when it has been spoken.
				t := due(int64(k+1) * asr.ChunkSamples)
				if d := time.Until(t); d > 0 {
					select {
					case <-time.After(d):
					case <-ctx.Done():
						errs[c] = ctx.Err()
						return
					}
				}
				i := (off + k*asr.ChunkSamples) % (len(pcm) - len(pcm)%asr.ChunkSamples)
				evs, err := st.Feed(pcm[i : i+asr.ChunkSamples])
				if err != nil {
					errs[c] = err
					return
				}
				now := time.Now()
				mu.Lock()
				for _, e := range evs {
					switch e.Kind {
					case asr.Final:
						l := now.Sub(due(e.End))
						endp = append(endp, l)
						speech = append(speech, l+hangover)
						if k < chunks/2 {
							firstHalf = append(firstHalf, l)
						} else {
							second = append(second, l)
						}
					case asr.Partial:
						if !seenPartial[e.Index] {
							seenPartial[e.Index] = true
							part = append(part, now.Sub(due(e.Start+asr.LeadIn)))
						}
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	res.CPUPerChannel = 100 * (cpuTime() - ru0).Seconds() / dur.Seconds() / float64(n)
	res.EndpointToFinal, res.SpeechEndToFinal, res.SpeechToPartial = quantiles(endp), quantiles(speech), quantiles(part)
	res.Finals, res.Partials = len(endp), len(part)
	h1, h2 := quantiles(firstHalf), quantiles(second)
	// Falling behind shows as latency that grows through the run; a long
	// utterance's own decode time (up to ~1 s) is latency, not lag.
	res.Lagging = res.EndpointToFinal.P99 > 3*time.Second || (len(second) > 0 && h2.P50 > 2*h1.P50+200*time.Millisecond)
	return res, nil
}

// Quantiles of a latency distribution.
type Quantiles struct{ P50, P99, Max time.Duration }

func quantiles(d []time.Duration) Quantiles {
	if len(d) == 0 {
		return Quantiles{}
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	q := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	return Quantiles{P50: q(0.5), P99: q(0.99), Max: s[len(s)-1]}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// RSSMB is this process's resident memory in MB.
func RSSMB() float64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	var size, res int64
	fmt.Sscan(string(b), &size, &res)
	return float64(res*int64(os.Getpagesize())) / 1e6
}

// LocalNames are the vocabulary of the correction measurement: a centre's
// streets, places and drugs that a general model is unlikely to know, with
// their CMUdict phones as an operator would list them.
var LocalNames = []proto.Word{
	{Word: "tregunter", Phones: "T R AH G AH N T ER"},
	{Word: "penzance", Phones: "P EH N Z AE N S"},
	{Word: "salbutamol", Phones: "S AE L B Y UW T AH M AA L"},
	{Word: "marazion", Phones: "M AE R AH Z AY AH N"},
	{Word: "camborne", Phones: "K AE M B AO R N"},
	{Word: "ondansetron", Phones: "AA N D AE N S EH T R AA N"},
	{Word: "naloxone", Phones: "N AH L AA K S OW N"},
	{Word: "porthleven", Phones: "P AO R TH L EH V AH N"},
	{Word: "trevithick", Phones: "T R AH V IH TH IH K"},
	{Word: "kernick", Phones: "K ER N IH K"},
}

// NamePhrases are spoken (espeak-ng) for the correction measurement; each
// holds one or two listed names.
var NamePhrases = []string{
	"there is a crash on tregunter road near penzance",
	"she took her salbutamol inhaler but it did not help",
	"the fire is on the main road in marazion",
	"he collapsed outside the station in camborne",
	"the nurse gave ondansetron for the sickness",
	"the paramedic gave naloxone for the overdose",
	"there is a boat in trouble off porthleven",
	"the smoke is coming from a house on trevithick road",
	"a lorry has overturned on the kernick industrial estate",
}

// SynthesizePhrases speaks phrases in every voice with espeak-ng into dir.
func SynthesizePhrases(ctx context.Context, dir, prefix string, phrases []string) ([]Clip, error) {
	if _, err := exec.LookPath("espeak-ng"); err != nil {
		return nil, errors.New("espeak-ng is not installed")
	}
	var out []Clip
	for vi, v := range SyntheticVoices {
		for i, p := range phrases {
			path := filepath.Join(dir, fmt.Sprintf("%s-%s-%02d.wav", prefix, v, i))
			cmd := exec.CommandContext(ctx, "espeak-ng", "-v", v, "-s", fmt.Sprint(150+10*vi), "-w", path, p)
			if b, err := cmd.CombinedOutput(); err != nil {
				return nil, fmt.Errorf("espeak-ng %s: %w: %s", v, err, b)
			}
			w, err := audio.ReadWAVFile(path)
			if err != nil {
				return nil, err
			}
			// Half a second of silence either side, as a caller pauses.
			pad := make([]int16, w.Rate/2)
			w.Samples = append(append(append([]int16(nil), pad...), w.Samples...), pad...)
			out = append(out, Clip{Name: filepath.Base(path), WAV: w, Ref: p})
		}
	}
	return out, nil
}

// NameRecall counts the listed names of refs that hyp spells right.
func NameRecall(ref, hyp string, names []proto.Word) (found, total int) {
	h := map[string]int{}
	for _, w := range wer.Words(hyp) {
		h[w]++
	}
	for _, w := range wer.Words(ref) {
		for _, n := range names {
			if w == n.Word {
				total++
				if h[w] > 0 {
					h[w]--
					found++
				}
			}
		}
	}
	return found, total
}
