package asr

import (
	"fmt"
	"reflect"
	"testing"
)

// fakeDecoder: speech is any chunk whose first sample is non-zero; the
// hypothesis counts speech chunks and mixes in the carried state, so a
// transcript depends on that state being reset or restored correctly.
type fakeDecoder struct {
	inUtt   bool
	speech  bool
	chunks  int
	state   float32 // carried across utterances, like live CMN
	started int
}

func (f *fakeDecoder) StartUtt() error {
	f.inUtt, f.chunks, f.speech = true, 0, false
	f.started++
	return nil
}
func (f *fakeDecoder) EndUtt() error {
	if f.inUtt {
		f.state += float32(f.chunks)
	}
	f.inUtt = false
	return nil
}
func (f *fakeDecoder) Process(pcm []int16) error {
	if !f.inUtt {
		return fmt.Errorf("process outside an utterance")
	}
	f.speech = pcm[0] != 0
	if f.speech {
		f.chunks++
	}
	return nil
}
func (f *fakeDecoder) Hyp() string {
	if f.chunks == 0 {
		return ""
	}
	return fmt.Sprintf("w%d s%g <sil>", f.chunks, f.state)
}
func (f *fakeDecoder) CMN() ([]float32, []float32, int32) {
	return []float32{f.state}, []float32{2 * f.state}, int32(f.chunks)
}
func (f *fakeDecoder) SetCMN(m, s []float32, n int32) error { f.state = m[0]; return nil }

// testVAD ends an utterance after one silent chunk.
var testVAD = VADConfig{FrameSamples: 160, AboveFloorDB: 12, MinSpeechDB: 35, FloorRiseDB: 0.02, StartFrames: 5, EndFrames: 10}

// signal builds audio of speech (1) and silence (0) runs, in chunks.
func signal(runs ...int) []int16 {
	var out []int16
	for i, n := range runs {
		v := int16(0)
		if i%2 == 0 {
			v = 1000
		}
		for range n * ChunkSamples {
			out = append(out, v)
		}
	}
	return out
}

func run(t *testing.T, dec Decoder, from *Checkpoint, pcm []int16, block int) []Event {
	t.Helper()
	tr, err := New(dec, EngineState{Mean: []float32{0}, Sum: []float32{0}}, from, Options{VAD: &testVAD})
	if err != nil {
		t.Fatal(err)
	}
	var evs []Event
	for off := 0; off < len(pcm); off += block {
		e, err := tr.Feed(pcm[off:min(off+block, len(pcm))])
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, e...)
	}
	e, err := tr.Flush()
	if err != nil {
		t.Fatal(err)
	}
	return append(evs, e...)
}

func finals(evs []Event) []Event {
	var out []Event
	for _, e := range evs {
		if e.Kind == Final {
			e.Checkpoint = nil
			out = append(out, e)
		}
	}
	return out
}

func TestEndpointsAndOffsets(t *testing.T) {
	pcm := signal(3, 2, 4, 1, 2)
	fs := finals(run(t, &fakeDecoder{}, nil, pcm, 777))
	want := []Event{
		// The fake folds an utterance into its state at EndUtt, before the
		// final hypothesis is read.
		{Kind: Final, Index: 0, Text: "w3 s3", Start: 0, End: 4 * ChunkSamples},
		{Kind: Final, Index: 1, Text: "w4 s7", Start: 5 * ChunkSamples, End: 10 * ChunkSamples},
		{Kind: Final, Index: 2, Text: "w2 s9", Start: 10 * ChunkSamples, End: 12 * ChunkSamples},
	}
	if !reflect.DeepEqual(fs, want) {
		t.Fatalf("got  %+v\nwant %+v", fs, want)
	}
}

func TestBlockSizeDoesNotMatter(t *testing.T) {
	pcm := append(signal(2, 1, 3, 2), 5, 5, 5) // a ragged tail
	want := run(t, &fakeDecoder{}, nil, pcm, len(pcm))
	for _, b := range []int{1, 160, 1599, 1600, 1601, 4000} {
		if got := run(t, &fakeDecoder{}, nil, pcm, b); !reflect.DeepEqual(finals(got), finals(want)) {
			t.Fatalf("block %d: %+v, want %+v", b, finals(got), finals(want))
		}
	}
}

func TestPristineStateIsRestoredPerChannel(t *testing.T) {
	pcm := signal(2, 1, 2, 1)
	want := finals(run(t, &fakeDecoder{}, nil, pcm, 1600))
	used := &fakeDecoder{}
	run(t, used, nil, signal(5, 1, 5, 1), 1600) // leaves state behind
	if got := finals(run(t, used, nil, pcm, 1600)); !reflect.DeepEqual(got, want) {
		t.Fatalf("used decoder: %+v, want %+v", got, want)
	}
}

func TestResumeFromEveryCheckpoint(t *testing.T) {
	pcm := append(signal(2, 1, 3, 2, 1, 1, 4, 1), 7, 7)
	all := run(t, &fakeDecoder{}, nil, pcm, 500)
	want := finals(all)
	n := 0
	for _, e := range all {
		if e.Kind != Final {
			continue
		}
		if e.Checkpoint == nil {
			if e.Index != uint32(len(want)-1) {
				t.Fatalf("only the last final may lack a checkpoint: %+v", e)
			}
			continue
		}
		n++
		cp := e.Checkpoint
		rest := pcm[cp.Sample+int64(len(cp.Pending)):]
		got := finals(run(t, &fakeDecoder{state: 99}, cp, rest, 333))
		if len(got) != len(want[e.Index+1:]) || len(got) > 0 && !reflect.DeepEqual(got, want[e.Index+1:]) {
			t.Fatalf("resume after %d: %+v, want %+v", e.Index, got, want[e.Index+1:])
		}
	}
	if n < 3 {
		t.Fatalf("only %d checkpoints", n)
	}
}

func TestMaxUtteranceForcesAnEndpoint(t *testing.T) {
	tr, _ := New(&fakeDecoder{}, EngineState{Mean: []float32{0}, Sum: []float32{0}}, nil, Options{MaxUtterance: 3 * ChunkSamples, VAD: &testVAD})
	evs, _ := tr.Feed(signal(7))
	if fs := finals(evs); len(fs) != 2 || fs[0].End != 3*ChunkSamples || fs[1].Start != 3*ChunkSamples {
		t.Fatalf("finals %+v", fs)
	}
}

func TestPartialsAndFlush(t *testing.T) {
	tr, _ := New(&fakeDecoder{}, EngineState{Mean: []float32{0}, Sum: []float32{0}}, nil, Options{PartialEvery: 2, VAD: &testVAD})
	evs, _ := tr.Feed(signal(5))
	var ps []string
	for _, e := range evs {
		if e.Kind == Partial {
			ps = append(ps, e.Text)
		}
	}
	if !reflect.DeepEqual(ps, []string{"w2 s0", "w4 s0"}) {
		t.Fatalf("partials %q", ps)
	}
	if _, err := tr.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Feed(signal(1)); err != ErrFlushed {
		t.Fatalf("feed after flush: %v", err)
	}
}

func TestVADStateIsCheckpointed(t *testing.T) {
	// Resuming in the middle of a pause must still end the utterance on
	// time: the run of silent frames is part of the state.
	v := NewVAD(DefaultVAD)
	v.Update(signal(3, 0)[:3*ChunkSamples])
	if !v.State.InSpeech {
		t.Fatal("speech not detected")
	}
	v.Update(make([]int16, 25*160))
	saved := v.State
	w := NewVAD(DefaultVAD)
	w.State = saved
	a, b := v.Update(make([]int16, 25*160)), w.Update(make([]int16, 25*160))
	if a || b {
		t.Fatalf("utterance should have ended after 50 silent frames: %v %v", a, b)
	}
	if v.State != w.State {
		t.Fatalf("states diverged: %+v %+v", v.State, w.State)
	}
}

func TestClean(t *testing.T) {
	if got := clean("<s> hello(2) [NOISE] world <sil> ++UH++ </s>"); got != "hello world" {
		t.Fatalf("clean: %q", got)
	}
}
