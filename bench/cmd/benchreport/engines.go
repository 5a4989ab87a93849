package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/callscribe/callscribe/bench"
	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/internal/wer"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/models/asr"
	"github.com/callscribe/callscribe/models/engine"
	"github.com/callscribe/callscribe/proto"
)

const testData = "/usr/share/pocketsphinx/test/data"

// engineModels are the shipped models, the default first.
var engineModels = []string{"moonshine-base", "moonshine-tiny", "en-us"}

// engineSection measures every shipped model: accuracy per path on the
// referenced clips and the synthetic set, and, for the default model,
// latency and channels per core at real-time pace.
func engineSection(ctx context.Context, w, log func(string, ...any), dir string) error {
	libri, synth, sdir, synthErr, err := engineClips(ctx, dir)
	if err != nil {
		w("\n## Engines\n\nnot measured: %v\n", err)
		return nil
	}
	cat, err := models.Load("")
	if err != nil {
		return err
	}
	w("\n## Engines: accuracy\n\n")
	w("Word error rate with the written normaliser of `internal/wer` (case and punctuation folded, hyphens split, numbers as words, common spellings such as metres/meters and Mr/mister folded), applied alike to reference and hypothesis. Each path sends the clip through its codec and the worker's own decoding pipeline: *L16* is 16 kHz PCM as `transcribe` and QUIC consoles send it; *PCMU*/*PCMA* are G.711 at 8 kHz (telephone band); *Opus* is 20 ms Opus packets as a WHIP console sends them. *LibriVox* is pocketsphinx-testdata's 5 referenced clips (71 words, 24.7 s); *synthetic* is %d emergency-call sentences spoken by espeak-ng in %d voices (%s), made by the benchmark.\n\n", len(bench.SyntheticPhrases), len(bench.SyntheticVoices), strings.Join(bench.SyntheticVoices, ", "))
	w("| model | set | L16 | PCMU 8 kHz | PCMA 8 kHz | Opus (WHIP) | RTF (L16, one core) | load s | RSS after load MB |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, name := range engineModels {
		m, err := cat.Get(name)
		if err != nil {
			return err
		}
		rss0 := bench.RSSMB()
		t0 := time.Now()
		f, err := engine.NewFactory(m)
		if err != nil {
			w("| %s | — | not installed: %v |||||||\n", name, err)
			continue
		}
		in, err := f()
		if err != nil {
			return err
		}
		load := time.Since(t0)
		rss := bench.RSSMB() - rss0
		sets := []struct {
			name  string
			clips []bench.Clip
		}{{"LibriVox", libri}, {"synthetic", synth}}
		for _, s := range sets {
			if len(s.clips) == 0 {
				w("| %s | %s | not measured: %v |||||||\n", name, s.name, synthErr)
				continue
			}
			c0 := cpuTime()
			acc, err := bench.Accuracy(in, s.clips)
			if err != nil {
				return err
			}
			var audioS float64
			for _, c := range s.clips {
				audioS += float64(len(c.WAV.Channel(0))) / float64(c.WAV.Rate)
			}
			rtf := (cpuTime() - c0).Seconds() / audioS / float64(len(bench.Paths))
			cell := func(p proto.Codec) string {
				c := acc[p]
				return fmt.Sprintf("%.1f %% (%d/%d)", 100*c.Rate(), c.Errors(), c.Ref)
			}
			log("%s %s: L16 %s PCMU %s PCMA %s Opus %s", name, s.name, cell(proto.CodecL16), cell(proto.CodecPCMU), cell(proto.CodecPCMA), cell(proto.CodecOpus))
			w("| %s | %s | %s | %s | %s | %s | %.3f | %.1f | %.0f |\n", name, s.name, cell(proto.CodecL16), cell(proto.CodecPCMU), cell(proto.CodecPCMA), cell(proto.CodecOpus), rtf, load.Seconds(), rss)
		}
		in.Close()
	}
	w("\nRTF is CPU time over audio time for all four paths together, one channel at a time through the worker pipeline (partials on, as live).\n")
	if err := opusAlignment(w, log, cat, libri); err != nil {
		return err
	}
	if err := vocabularySection(ctx, w, log, sdir, cat, map[string][]bench.Clip{"LibriVox": libri, "synthetic": synth}); err != nil {
		return err
	}
	return realTimeSection(ctx, w, log, cat)
}

// engineClips reads the referenced LibriVox clips and makes the synthetic
// set (synthErr says why it could not).
func engineClips(ctx context.Context, dir string) (libri, synth []bench.Clip, sdir string, synthErr, err error) {
	refs, err := wer.ReadReferences(testData)
	if err != nil {
		return nil, nil, "", nil, fmt.Errorf("pocketsphinx-testdata is not installed: %w", err)
	}
	for path, ref := range refs {
		if !strings.Contains(path, "/librivox/") {
			continue
		}
		wv, err := audio.ReadWAVFile(path)
		if err != nil {
			return nil, nil, "", nil, err
		}
		libri = append(libri, bench.Clip{Name: filepath.Base(path), WAV: wv, Ref: ref})
	}
	sort.Slice(libri, func(i, j int) bool { return libri[i].Name < libri[j].Name })
	sdir = filepath.Join(dir, "synthetic")
	if err := os.MkdirAll(sdir, 0o755); err != nil {
		return nil, nil, "", nil, err
	}
	synth, synthErr = bench.Synthesize(ctx, sdir)
	return libri, synth, sdir, synthErr, nil
}

// VocabularyOnly re-measures the vocabulary pass alone.
func vocabularyOnly(ctx context.Context, w, log func(string, ...any), dir string) error {
	libri, synth, sdir, _, err := engineClips(ctx, dir)
	if err != nil {
		return err
	}
	cat, err := models.Load("")
	if err != nil {
		return err
	}
	return vocabularySection(ctx, w, log, sdir, cat, map[string][]bench.Clip{"LibriVox": libri, "synthetic": synth})
}

// realTimeSection feeds N channels of real speech at real-time pace through
// one shared Moonshine base model (as a worker does) and finds where finals
// start to lag, with one decode slot (one core) and with every core.
func realTimeSection(ctx context.Context, w, log func(string, ...any), cat models.Catalog) error {
	const dur = 20 * time.Second
	m, err := cat.Get(models.Default)
	if err != nil {
		return err
	}
	wv, err := audio.ReadWAVFile("assets/demo-call.wav")
	if err != nil {
		return err
	}
	// Both sides of the bundled call back to back: speech with the pauses of a real call.
	pcm := append(resample16(wv.Channel(0), wv.Rate), resample16(wv.Channel(1), wv.Rate)...)
	hang := time.Duration(asr.DefaultVAD.EndFrames) * 10 * time.Millisecond
	if v := m.EngineOptions["vad_end_ms"]; v != "" {
		var ms int
		fmt.Sscan(v, &ms)
		hang = time.Duration(ms) * time.Millisecond
	}
	w("\n## Engines: live channels (%s, partials included)\n\n", m.Name)
	w("In one process, as in a worker: one model shared by N channels, each fed 100 ms chunks of the bundled call's two sides (back to back, each channel from its own offset) at real-time pace for %v, partials on (one attempt per second of utterance growth, decoding at most the utterance's last 6 s, within the model's `partial_share` of decode time). *Endpoint → final* is from the moment the audio that ended an utterance was due to its final; *speech end → final* adds the detector's %v hang-over (the target: ≤ 500 ms p99); *speech → first partial* is from the moment speech began (after the lead-in) to the utterance's first partial. *CPU per channel* is the process's CPU over the run. A run *lags* when finals fall behind: endpoint → final grows through the run (median of the second half over twice the first's plus 200 ms) or its p99 passes 3 s. A final's own decode grows with its utterance (up to the 10 s limit), so latency below that is the engine's, not a backlog.\n\n", dur, hang)
	w("| decode slots (cores) | channels | finals | endpoint → final p50 / p99 ms | speech end → final p50 / p99 ms | speech → first partial p50 / p99 ms | partials | CPU per channel | lags |\n|---|---|---|---|---|---|---|---|---|\n")
	type verdict struct {
		slots, most int
		perCh       float64
	}
	var found []verdict
	for _, slots := range []int{1, runtime.NumCPU()} {
		mm := *m
		mm.Resources.CPUThreads = slots
		f, err := engine.NewFactory(&mm)
		if err != nil {
			return err
		}
		v := verdict{slots: slots}
		for _, n := range []int{4 * slots, 8 * slots, 12 * slots, 16 * slots, 24 * slots} {
			r, err := bench.RealTime(ctx, f, pcm, n, dur, hang)
			if err != nil {
				return err
			}
			log("realtime %d slots %d channels: endpoint→final p99 %s speech end p99 %s partial p99 %s cpu/ch %.1f%% lag %v", slots, n, bench.MS(r.EndpointToFinal.P99), bench.MS(r.SpeechEndToFinal.P99), bench.MS(r.SpeechToPartial.P99), r.CPUPerChannel, r.Lagging)
			lag := "no"
			if r.Lagging {
				lag = "**yes**"
			}
			w("| %d | %d | %d | %s / %s | %s / %s | %s / %s | %d | %.1f %% | %s |\n", slots, n, r.Finals, bench.MS(r.EndpointToFinal.P50), bench.MS(r.EndpointToFinal.P99),
				bench.MS(r.SpeechEndToFinal.P50), bench.MS(r.SpeechEndToFinal.P99), bench.MS(r.SpeechToPartial.P50), bench.MS(r.SpeechToPartial.P99), r.Partials, r.CPUPerChannel, lag)
			if r.Lagging {
				break
			}
			v.most, v.perCh = n, r.CPUPerChannel
		}
		found = append(found, v)
	}
	w("\n")
	for _, v := range found {
		w("- With %d decode slot(s): **%d channels** carried in real time without lagging (of the steps run); %.1f %% of a core per channel there.\n", v.slots, v.most, v.perCh)
	}
	if len(found) > 0 && found[0].most > 0 {
		w("- Target ≥ 10 live channels per core with Moonshine base, partials included: %d on one core — %s.\n", found[0].most, verdictAtLeast(float64(found[0].most), 10))
	}
	return nil
}

func verdictAtLeast(got, want float64) string {
	if got >= want {
		return "met"
	}
	return fmt.Sprintf("**missed** by %.0f %%", 100*(1-got/want))
}

func resample16(pcm []int16, rate int) []int16 {
	if rate == asr.SampleRate {
		return pcm
	}
	return audio.NewResampler(rate, asr.SampleRate).Process(pcm)
}

// vocabularySection measures the correction pass: names recalled and WER on
// spoken sentences with local names, with and without the vocabulary, and
// WER on sets without names (which it must not damage).
func vocabularySection(ctx context.Context, w, log func(string, ...any), dir string, cat models.Catalog, others map[string][]bench.Clip) error {
	m, err := cat.Get(models.Default)
	if err != nil {
		return err
	}
	clips, err := bench.SynthesizePhrases(ctx, dir, "names", bench.NamePhrases)
	if err != nil {
		w("\n## Engines: vocabulary\n\nnot measured: %v\n", err)
		return nil
	}
	f, err := engine.NewFactory(m)
	if err != nil {
		return err
	}
	pool := engine.NewPool(f, 2)
	defer pool.Close()
	plain, err := pool.Get(ctx)
	if err != nil {
		return err
	}
	withV, err := pool.GetFor(ctx, bench.LocalNames)
	if err != nil {
		return err
	}
	var names []string
	for _, n := range bench.LocalNames {
		names = append(names, n.Word)
	}
	w("\n## Engines: vocabulary (%s)\n\n", m.Name)
	w("A centre's list of %d local names (%s), with CMUdict phones as an operator writes them, drives the correction pass over each final (`models/correct`). *Names* is %d sentences holding them, spoken by espeak-ng in %d voices; the other sets hold none of the names, so any change there is damage. L16 path.\n\n", len(names), strings.Join(names, ", "), len(bench.NamePhrases), len(bench.SyntheticVoices))
	w("| set | WER without the vocabulary | WER with it | names spelled right without | with |\n|---|---|---|---|---|\n")
	sets := []struct {
		name  string
		clips []bench.Clip
	}{{"names", clips}, {"LibriVox", others["LibriVox"]}, {"synthetic", others["synthetic"]}}
	for _, s := range sets {
		var a, b wer.Counts
		var fa, fb, tot int
		for _, c := range s.clips {
			ha, err := bench.DecodePath(plain, c.WAV, proto.CodecL16)
			if err != nil {
				return err
			}
			hb, err := bench.DecodePath(withV, c.WAV, proto.CodecL16)
			if err != nil {
				return err
			}
			a = a.Add(wer.Compare(wer.Words(c.Ref), wer.Words(ha)))
			b = b.Add(wer.Compare(wer.Words(c.Ref), wer.Words(hb)))
			x, n := bench.NameRecall(c.Ref, ha, bench.LocalNames)
			y, _ := bench.NameRecall(c.Ref, hb, bench.LocalNames)
			fa, fb, tot = fa+x, fb+y, tot+n
		}
		log("vocabulary %s: WER %.1f%% -> %.1f%%, names %d -> %d of %d", s.name, 100*a.Rate(), 100*b.Rate(), fa, fb, tot)
		recall := func(x int) string {
			if tot == 0 {
				return "—"
			}
			return fmt.Sprintf("%d of %d", x, tot)
		}
		w("| %s | %.1f %% | %.1f %% | %s | %s |\n", s.name, 100*a.Rate(), 100*b.Rate(), recall(fa), recall(fb))
	}
	pool.Put(plain)
	pool.Put(withV)
	return nil
}

// opusAlignment compares Opus with L16 on the LibriVox clips at four
// sub-frame alignments: one word is 1.4 points of 71, and which words flip
// depends on where the codec's frames fall.
func opusAlignment(w, log func(string, ...any), cat models.Catalog, clips []bench.Clip) error {
	m, err := cat.Get(models.Default)
	if err != nil {
		return err
	}
	f, err := engine.NewFactory(m)
	if err != nil {
		return err
	}
	in, err := f()
	if err != nil {
		return err
	}
	defer in.Close()
	mean := map[proto.Codec]float64{}
	var cells []string
	for _, shift := range []int{0, 40, 80, 120} { // samples at 16 kHz: 0–7.5 ms
		var shifted []bench.Clip
		for _, c := range clips {
			wv := *c.WAV
			wv.Samples = append(make([]int16, shift*wv.Channels), wv.Samples...)
			shifted = append(shifted, bench.Clip{Name: c.Name, WAV: &wv, Ref: c.Ref})
		}
		var cell []string
		for _, codec := range []proto.Codec{proto.CodecL16, proto.CodecOpus} {
			var tot wer.Counts
			for _, c := range shifted {
				h, err := bench.DecodePath(in, c.WAV, codec)
				if err != nil {
					return err
				}
				tot = tot.Add(wer.Compare(wer.Words(c.Ref), wer.Words(h)))
			}
			mean[codec] += 100 * tot.Rate() / 4
			cell = append(cell, fmt.Sprintf("%.1f", 100*tot.Rate()))
		}
		cells = append(cells, fmt.Sprintf("%.1f ms: %s", float64(shift)/16, strings.Join(cell, " / ")))
	}
	d := mean[proto.CodecOpus] - mean[proto.CodecL16]
	log("opus vs l16 over alignments: %.1f vs %.1f (%s)", mean[proto.CodecOpus], mean[proto.CodecL16], strings.Join(cells, "; "))
	verdict := "met"
	if d > 1 || d < -1 {
		verdict = fmt.Sprintf("**missed** by %.1f points", max(d, -d)-1)
	}
	w("\n%s on LibriVox, L16 / Opus WER %% with the audio shifted by %s. Mean: L16 %.1f %%, Opus %.1f %% (%+.1f points; target: within 1 point — %s).\n", m.Name, strings.Join(cells, ", "), mean[proto.CodecL16], mean[proto.CodecOpus], d, verdict)
	return nil
}
