package asr

import "math"

// VAD is callscribe's own voice-activity detector. PocketSphinx's detector
// keeps a noise estimate across utterances that cannot be saved or reset,
// which would make endpoints depend on a decoder's history; this one is
// deterministic and its whole state is part of every checkpoint.
//
// It works on 10 ms frames: a frame is speech when its energy is well above
// a tracked noise floor; speech starts after StartFrames speech frames in a
// row and ends after EndFrames non-speech frames in a row.
type VAD struct {
	State VADState
	cfg   VADConfig
}

// VADState is the detector's running state.
type VADState struct {
	Floor    float64 `json:"floor"`  // noise floor, dB
	InSpeech bool    `json:"in"`     // current decision
	Run      int     `json:"run"`    // frames in a row contradicting the decision
	Frames   int64   `json:"frames"` // frames seen
}

// VADConfig tunes the detector.
type VADConfig struct {
	FrameSamples int     // 160 = 10 ms
	AboveFloorDB float64 // a speech frame is this far above the floor
	MinSpeechDB  float64 // and at least this loud
	FloorRiseDB  float64 // per frame, when the signal is above the floor
	StartFrames  int     // speech frames in a row to start
	EndFrames    int     // non-speech frames in a row to end
}

// DefaultVAD is tuned for telephone and headset speech.
var DefaultVAD = VADConfig{FrameSamples: 160, AboveFloorDB: 12, MinSpeechDB: 35, FloorRiseDB: 0.02, StartFrames: 5, EndFrames: 50}

// NewVAD returns a detector in its initial state.
func NewVAD(cfg VADConfig) *VAD {
	return &VAD{cfg: cfg, State: VADState{Floor: 30}}
}

// Update consumes samples and returns the decision after the last frame.
func (v *VAD) Update(pcm []int16) bool {
	c := v.cfg
	for off := 0; off+c.FrameSamples <= len(pcm); off += c.FrameSamples {
		var e float64
		for _, s := range pcm[off : off+c.FrameSamples] {
			e += float64(s) * float64(s)
		}
		db := 10 * math.Log10(e/float64(c.FrameSamples)+1)
		s := &v.State
		s.Frames++
		if db < s.Floor {
			s.Floor = db
		} else {
			s.Floor += c.FloorRiseDB
		}
		speech := db > s.Floor+c.AboveFloorDB && db > c.MinSpeechDB
		if speech == s.InSpeech {
			s.Run = 0
			continue
		}
		s.Run++
		if (speech && s.Run >= c.StartFrames) || (!speech && s.Run >= c.EndFrames) {
			s.InSpeech, s.Run = speech, 0
		}
	}
	return v.State.InSpeech
}
