package whip

import "time"

// sequencer turns one track's RTP packets into its channel's gap-free frame
// sequence. It extends 16-bit RTP sequence numbers (wrap-around), puts
// reordered packets back in order, and releases a packet that never came as
// a loss marker (a nil payload) once later packets have waited long enough.
// Nothing is dropped without being counted.
type sequencer struct {
	started bool
	first   uint64 // the first packet's extended number (less any jumps)
	next    uint64 // the next extended sequence number to release
	highest uint64
	pending map[uint64]held
	// A gap is declared lost when window packets wait behind it or the
	// oldest has waited wait.
	window int
	wait   time.Duration
	// maxGap is the largest jump concealed packet by packet; a larger one
	// is a discontinuity (the sender restarted its sequence).
	maxGap uint64

	// late counts packets that came after their place had been released
	// (as a loss, or a duplicate of a released packet).
	late uint64
	// dup counts duplicates of packets still held.
	dup uint64
	// lost counts loss markers released.
	lost uint64
	// resyncs counts discontinuities.
	resyncs uint64
}

type held struct {
	payload []byte
	at      time.Time
}

func newSequencer(window int, wait time.Duration) *sequencer {
	return &sequencer{pending: map[uint64]held{}, window: window, wait: wait, maxGap: 3000}
}

// extend maps a 16-bit sequence number to 64 bits, nearest the highest seen.
func (s *sequencer) extend(seq uint16) uint64 {
	if !s.started {
		s.started = true
		s.highest = 1<<32 + uint64(seq) // room below for reordered packets
		s.next, s.first = s.highest, s.highest
		return s.highest
	}
	d := int16(seq - uint16(s.highest))
	ext := uint64(int64(s.highest) + int64(d))
	if ext > s.highest {
		s.highest = ext
	}
	return ext
}

// push takes one packet and returns the payloads now in order (nil for a
// lost packet).
func (s *sequencer) push(seq uint16, payload []byte, now time.Time) [][]byte {
	ext := s.extend(seq)
	switch {
	case ext < s.next:
		s.late++
		return nil
	case ext-s.next > s.maxGap:
		// The sender jumped: release what is held, then start afresh here.
		out := s.flush()
		s.resyncs++
		s.first += ext - s.next
		s.next, s.highest = ext, ext
		return append(out, s.add(ext, payload, now)...)
	}
	if _, ok := s.pending[ext]; ok {
		s.dup++
		return nil
	}
	return s.add(ext, payload, now)
}

func (s *sequencer) add(ext uint64, payload []byte, now time.Time) [][]byte {
	s.pending[ext] = held{payload: payload, at: now}
	return s.release(now, false)
}

// expire releases gaps that have waited too long; call it when no packet
// has come for a while.
func (s *sequencer) expire(now time.Time) [][]byte { return s.release(now, false) }

// flush releases everything held, gaps as losses (the end of the track).
func (s *sequencer) flush() [][]byte { return s.release(time.Time{}, true) }

func (s *sequencer) release(now time.Time, all bool) [][]byte {
	var out [][]byte
	for len(s.pending) > 0 {
		if h, ok := s.pending[s.next]; ok {
			delete(s.pending, s.next)
			out = append(out, h.payload)
			s.next++
			continue
		}
		if !all && len(s.pending) < s.window && now.Sub(s.oldest()) < s.wait {
			break
		}
		out = append(out, nil) // s.next never came
		s.lost++
		s.next++
	}
	return out
}

func (s *sequencer) oldest() time.Time {
	var t time.Time
	for _, h := range s.pending {
		if t.IsZero() || h.at.Before(t) {
			t = h.at
		}
	}
	return t
}

// span is the number of packets accounted for so far: released, held, and
// the gaps between them.
func (s *sequencer) span() uint64 {
	if !s.started {
		return 0
	}
	return s.highest + 1 - s.first
}
