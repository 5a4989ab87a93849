package audio

import "math"

// Resampler converts a 16-bit PCM stream by the rational factor Up/Down with
// a Kaiser-windowed sinc polyphase FIR. It is streaming (feed any block
// sizes, the output is the same) and its whole state can be saved and
// restored, so a resumed stream continues bit for bit.
type Resampler struct {
	up, down int
	taps     int       // taps per phase
	h        []float32 // prototype filter, len up*taps
	st       ResamplerState
}

// ResamplerState is the part of a Resampler that changes as it runs.
type ResamplerState struct {
	Hist []float32 `json:"hist"` // the last taps inputs, oldest first
	In   int64     `json:"in"`   // inputs consumed
	Out  int64     `json:"out"`  // outputs produced
}

// NewResampler returns a resampler from rate from to rate to.
func NewResampler(from, to int) *Resampler {
	g := gcd(from, to)
	up, down := to/g, from/g
	n := 32 * max(up, down)
	n += (up - n%up) % up
	r := &Resampler{up: up, down: down, taps: n / up, h: make([]float32, n)}
	fc := 0.5 / float64(max(up, down)) * 0.92
	c := float64(n-1) / 2
	const beta = 8.0
	for i := range n {
		x := float64(i) - c
		s := 2 * fc
		if x != 0 {
			s = math.Sin(2*math.Pi*fc*x) / (math.Pi * x)
		}
		w := bessel0(beta*math.Sqrt(1-math.Pow(x/c, 2))) / bessel0(beta)
		r.h[i] = float32(float64(up) * s * w)
	}
	r.st.Hist = make([]float32, r.taps)
	return r
}

// Identity reports whether the resampler passes samples through unchanged.
func (r *Resampler) Identity() bool { return r.up == 1 && r.down == 1 }

// State returns a copy of the running state.
func (r *Resampler) State() ResamplerState {
	s := r.st
	s.Hist = append([]float32(nil), r.st.Hist...)
	return s
}

// SetState restores a state returned by State.
func (r *Resampler) SetState(s ResamplerState) {
	if len(s.Hist) != r.taps {
		s.Hist = make([]float32, r.taps)
	}
	r.st = ResamplerState{Hist: append([]float32(nil), s.Hist...), In: s.In, Out: s.Out}
}

// Process converts a block.
func (r *Resampler) Process(in []int16) []int16 {
	if r.Identity() {
		return append([]int16(nil), in...)
	}
	out := make([]int16, 0, len(in)*r.up/r.down+1)
	hist := r.st.Hist
	for _, x := range in {
		copy(hist, hist[1:])
		hist[len(hist)-1] = float32(x)
		r.st.In++
		last := r.st.In - 1
		for {
			p := r.st.Out * int64(r.down)
			if p/int64(r.up) > last {
				break
			}
			phase := int(p % int64(r.up))
			var acc float32
			for k := 0; k < r.taps; k++ {
				acc += r.h[phase+k*r.up] * hist[len(hist)-1-k]
			}
			out = append(out, clamp16(acc))
			r.st.Out++
		}
	}
	return out
}

func clamp16(v float32) int16 {
	v = float32(math.Round(float64(v)))
	if v > 32767 {
		return 32767
	}
	if v < -32768 {
		return -32768
	}
	return int16(v)
}

func bessel0(x float64) float64 {
	sum, term := 1.0, 1.0
	for k := 1; k < 50; k++ {
		term *= (x / (2 * float64(k))) * (x / (2 * float64(k)))
		sum += term
		if term < 1e-12*sum {
			break
		}
	}
	return sum
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
