package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/callscribe/callscribe/internal/integrity"
	"github.com/callscribe/callscribe/proto"
	badger "github.com/dgraph-io/badger/v4"
)

// Frame is a stored audio frame.
type Frame struct {
	Seq     uint32
	Capture int64
	Payload []byte
}

func frameKey(id proto.CallID, ch int, seq uint32) []byte {
	k := make([]byte, 0, len(id)+8)
	k = append(k, "a/"...)
	k = append(k, id...)
	k = append(k, '/', byte(ch))
	return binary.BigEndian.AppendUint32(k, seq)
}

func framePrefix(id proto.CallID, ch int) []byte {
	return append(append([]byte("a/"), id...), '/', byte(ch))
}

// digestKey holds a channel's frame digest (integrity.Digest's binary
// encoding), written with every batch of its frames.
func digestKey(id proto.CallID, ch int) []byte {
	return append(append([]byte("h/"), id...), '/', byte(ch))
}

// PutFrames makes frames of one channel durable.
func (s *Store) PutFrames(ctx context.Context, id proto.CallID, ch int, fs []Frame) error {
	return s.write(ctx, true, frameEntries(id, ch, fs)...)
}

// SubmitFrames queues frames of one channel without waiting: Wait on the
// result. With after set (the channel's previous, earlier frames), the
// frames are written only if those were: a channel can have a write in
// every group commit without ever being stored across a gap.
func (s *Store) SubmitFrames(ctx context.Context, id proto.CallID, ch int, fs []Frame, after *Pending) (*Pending, error) {
	return s.submit(ctx, true, after, frameEntries(id, ch, fs))
}

// SubmitFramesDigest is SubmitFrames that also records d, the channel's
// frame digest after these frames, in the same write (its entry last, so a
// commit Badger splits never stores the digest without its frames).
func (s *Store) SubmitFramesDigest(ctx context.Context, id proto.CallID, ch int, fs []Frame, d integrity.Digest, after *Pending) (*Pending, error) {
	b, _ := d.MarshalBinary()
	return s.submit(ctx, true, after, append(frameEntries(id, ch, fs), entry{key: digestKey(id, ch), val: b}))
}

// PutDigest makes a channel's frame digest durable (for a call stored
// before digests were kept, computed once from its frames).
func (s *Store) PutDigest(ctx context.Context, id proto.CallID, ch int, d integrity.Digest) error {
	b, _ := d.MarshalBinary()
	return s.write(ctx, false, entry{key: digestKey(id, ch), val: b})
}

// Digest returns a channel's stored frame digest; ok is false when none is
// stored (a call from before digests were kept, or a channel without
// frames).
func (s *Store) Digest(id proto.CallID, ch int) (d integrity.Digest, ok bool, err error) {
	k := digestKey(id, ch)
	err = s.view(func(txn *badger.Txn) error {
		it, err := txn.Get(k)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		var decErr error
		if err := it.Value(func(v []byte) error { decErr = d.UnmarshalBinary(v); return nil }); err != nil {
			return s.valueErr(k, "frame digest unreadable", err)
		}
		if decErr != nil {
			return s.valueErr(k, "frame digest does not decode", decErr)
		}
		ok = true
		return nil
	})
	return d, ok, err
}

// ComputeDigest computes a channel's frame digest from its stored frames
// (all of them); a gap in the frames is an error.
func (s *Store) ComputeDigest(id proto.CallID, ch int) (integrity.Digest, error) {
	var d integrity.Digest
	err := s.Frames(id, ch, 0, 0, func(f Frame) error { return d.Add(f.Seq, f.Capture, f.Payload) })
	return d, err
}

func frameEntries(id proto.CallID, ch int, fs []Frame) []entry {
	es := make([]entry, len(fs))
	for i, f := range fs {
		v := make([]byte, 8+len(f.Payload))
		binary.BigEndian.PutUint64(v, uint64(f.Capture))
		copy(v[8:], f.Payload)
		es[i] = entry{key: frameKey(id, ch, f.Seq), val: v}
	}
	return es
}

// NextSeq returns one past the highest stored sequence number of a channel
// (0 when none is stored).
func (s *Store) NextSeq(id proto.CallID, ch int) (uint32, error) {
	var next uint32
	p := framePrefix(id, ch)
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: p})
		defer it.Close()
		seek := append(append([]byte(nil), p...), 0xFF, 0xFF, 0xFF, 0xFF, 0xFF)
		it.Seek(seek)
		if it.Valid() {
			k := it.Item().Key()
			next = binary.BigEndian.Uint32(k[len(k)-4:]) + 1
		}
		return nil
	})
	return next, err
}

// CountFrames returns how many frames of a channel are stored.
func (s *Store) CountFrames(id proto.CallID, ch int) (uint32, error) {
	var n uint32
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: framePrefix(id, ch)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	return n, err
}

// Frames calls fn for stored frames of a channel from seq from on, in order,
// up to limit frames (0: all). The payload is only valid during fn.
func (s *Store) Frames(id proto.CallID, ch int, from uint32, limit int, fn func(Frame) error) error {
	return s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: framePrefix(id, ch), PrefetchValues: true, PrefetchSize: 16})
		defer it.Close()
		n := 0
		for it.Seek(frameKey(id, ch, from)); it.Valid(); it.Next() {
			k := it.Item().Key()
			seq := binary.BigEndian.Uint32(k[len(k)-4:])
			var fnErr error
			err := it.Item().Value(func(v []byte) error {
				if len(v) < 8 {
					return s.valueErr(k, fmt.Sprintf("frame %s/%d/%d", id, ch, seq), fmt.Errorf("%d bytes, shorter than its 8-byte capture time", len(v)))
				}
				fnErr = fn(Frame{Seq: seq, Capture: int64(binary.BigEndian.Uint64(v)), Payload: v[8:]})
				return nil
			})
			if err != nil {
				return s.valueErr(it.Item().KeyCopy(nil), fmt.Sprintf("frame %s/%d/%d unreadable", id, ch, seq), err)
			}
			if fnErr != nil {
				return fnErr
			}
			if n++; limit > 0 && n >= limit {
				return nil
			}
		}
		return nil
	})
}

// DeleteAudio removes every audio frame of a call.
func (s *Store) DeleteAudio(ctx context.Context, id proto.CallID) (int, error) {
	return s.deletePrefix(ctx, append(append([]byte("a/"), id...), '/'))
}
