package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"sort"
	"time"

	"github.com/callscribe/callscribe/proto"
	badger "github.com/dgraph-io/badger/v4"
)

// Call is a call's persistent record.
type Call struct {
	ID        proto.CallID    `json:"id"`
	Console   proto.ConsoleID `json:"console"`
	Channels  []string        `json:"channels"`
	Codec     proto.Codec     `json:"codec"`
	Model     string          `json:"model"`
	State     string          `json:"state"`
	Created   time.Time       `json:"created"`
	Ended     *time.Time      `json:"ended,omitempty"`
	Finalised *time.Time      `json:"finalised,omitempty"`
	// EndFrames is, per channel, the frame count the call ended with.
	EndFrames []uint32 `json:"end_frames,omitempty"`
	// EndReason is set when the coordinator ended the call itself (its
	// console was gone for too long).
	EndReason string `json:"end_reason,omitempty"`
	// Received is, per channel, frames the coordinator received, resent
	// duplicates included (as of the end of the call).
	Received []uint64 `json:"received,omitempty"`
	// Vocabulary is the extra words the call is decoded with (the
	// coordinator's vocabulary when the call opened).
	Vocabulary []proto.Word `json:"vocabulary,omitempty"`
	// Concealed is, per channel, packets the transport lost that are
	// stored as loss markers (WebRTC only; as of the end of the call).
	Concealed []uint64 `json:"concealed,omitempty"`
	// Decoded is, per channel, frames the workers have decoded (as of the
	// last final or the end).
	Decoded []uint32 `json:"decoded"`
	// Resumes counts how often a channel moved to another worker.
	Resumes int `json:"resumes"`
	// AudioDeleted is when retention removed the call's audio.
	AudioDeleted *time.Time `json:"audio_deleted,omitempty"`
	// Complete is, per channel, whether decoding reached the end.
	Complete []bool `json:"complete,omitempty"`
	// Undecodable is, per channel, frames no decoder could read: stored
	// as received, concealed in decoding as lost packets.
	Undecodable []uint64 `json:"undecodable,omitempty"`
	// Skipped is, per channel, frames sent to workers as loss markers
	// because workers failed on them repeatedly.
	Skipped [][]uint32 `json:"skipped,omitempty"`
	// Integrity is, per channel, the frame digest the call ended with
	// (internal/integrity): absent for a call not yet ended.
	Integrity []ChannelIntegrity `json:"integrity,omitempty"`
	// Transcript is the hash of the finals (internal/integrity's
	// TranscriptSum) recorded when the call was finalised.
	Transcript *TranscriptIntegrity `json:"transcript,omitempty"`
}

// TranscriptIntegrity is the hash (hex) of a call's Finals finals.
type TranscriptIntegrity struct {
	Finals int    `json:"finals"`
	SHA256 string `json:"sha256"`
}

// ChannelIntegrity is a channel's frame digest: SHA256 (hex) covers its
// frames 0 to Frames-1.
type ChannelIntegrity struct {
	Frames uint32 `json:"frames"`
	SHA256 string `json:"sha256"`
}

// Final is one persisted final utterance with the checkpoint to resume after it.
type Final struct {
	Channel    int             `json:"channel"`
	Index      uint32          `json:"index"`
	Text       string          `json:"text"`
	Heard      string          `json:"heard,omitempty"` // the engine's text, when a vocabulary pass corrected it
	Start      int64           `json:"start"`           // samples at 16 kHz
	End        int64           `json:"end"`
	NextSeq    uint32          `json:"next_seq"`
	Checkpoint json.RawMessage `json:"checkpoint,omitempty"`
	Worker     string          `json:"worker,omitempty"`
}

func finalKey(id proto.CallID, ch int, idx uint32) []byte {
	k := append(append([]byte("f/"), id...), '/', byte(ch))
	return binary.BigEndian.AppendUint32(k, idx)
}

func finalPrefix(id proto.CallID, ch int) []byte {
	return append(append([]byte("f/"), id...), '/', byte(ch))
}

func callKey(id proto.CallID) []byte { return append([]byte("c/"), id...) }

// PutCall makes a call record durable.
func (s *Store) PutCall(ctx context.Context, c *Call) error {
	es, err := callEntries(c)
	if err != nil {
		return err
	}
	return s.write(ctx, false, es...)
}

// SubmitCall queues a call record without waiting for it: it is written
// before any write queued after it (Wait for the outcome).
func (s *Store) SubmitCall(ctx context.Context, c *Call) (*Pending, error) {
	es, err := callEntries(c)
	if err != nil {
		return nil, err
	}
	return s.submit(ctx, false, nil, es)
}

// PutFinal makes a final (and optionally the updated call record) durable in
// one commit.
func (s *Store) PutFinal(ctx context.Context, id proto.CallID, f Final, c *Call) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	es := []entry{{key: finalKey(id, f.Channel, f.Index), val: b}}
	if c != nil {
		ces, err := callEntries(c)
		if err != nil {
			return err
		}
		es = append(es, ces...)
	}
	return s.write(ctx, false, es...)
}

// Call loads a call record.
func (s *Store) Call(id proto.CallID) (*Call, error) {
	var c Call
	err := s.view(func(txn *badger.Txn) error {
		it, err := txn.Get(callKey(id))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		return s.readJSON(it, "call record", &c)
	})
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// scanJSON decodes every JSON value under prefix, in key order. T may be a
// struct or a pointer to one.
func scanJSON[T any](s *Store, prefix, what string) ([]T, error) {
	var out []T
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var v T // for a pointer type, Unmarshal allocates the value
			if err := s.readJSON(it.Item(), what, &v); err != nil {
				return err
			}
			out = append(out, v)
		}
		return nil
	})
	return out, err
}

// Finals returns a channel's finals from index from on, in order.
func (s *Store) Finals(id proto.CallID, ch int, from uint32) ([]Final, error) {
	var out []Final
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: finalPrefix(id, ch), PrefetchValues: true})
		defer it.Close()
		for it.Seek(finalKey(id, ch, from)); it.Valid(); it.Next() {
			var f Final
			if err := s.readJSON(it.Item(), "final", &f); err != nil {
				return err
			}
			out = append(out, f)
		}
		return nil
	})
	return out, err
}

// LastFinal returns a channel's last final, or nil.
func (s *Store) LastFinal(id proto.CallID, ch int) (*Final, error) {
	var f *Final
	p := finalPrefix(id, ch)
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: p})
		defer it.Close()
		it.Seek(append(append([]byte(nil), p...), 0xFF, 0xFF, 0xFF, 0xFF, 0xFF))
		if !it.Valid() {
			return nil
		}
		f = &Final{}
		return s.readJSON(it.Item(), "final", f)
	})
	return f, err
}

// Node is what the coordinator remembers about a node across restarts.
type Node struct {
	ID       proto.NodeID `json:"id"`
	Draining bool         `json:"draining"`
	Updated  time.Time    `json:"updated"`
}

func nodeKey(id proto.NodeID) []byte { return append([]byte("n/"), id...) }

// PutNode makes a node record durable.
func (s *Store) PutNode(ctx context.Context, n Node) error {
	b, err := json.Marshal(n)
	if err != nil {
		return err
	}
	return s.write(ctx, false, entry{key: nodeKey(n.ID), val: b})
}

// Nodes returns every node record.
func (s *Store) Nodes() ([]Node, error) {
	return scanJSON[Node](s, "n/", "node record")
}

// DeleteCall removes a call's finals, frame digests and record, with its
// index key (its audio must be gone).
func (s *Store) DeleteCall(ctx context.Context, id proto.CallID) error {
	es := []entry{{key: callKey(id), del: true}}
	if c, err := s.Call(id); err == nil {
		es = append(es, entry{key: timeKey(id, c.Created), del: true})
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	if _, err := s.deletePrefix(ctx, append(append([]byte("f/"), id...), '/')); err != nil {
		return err
	}
	if _, err := s.deletePrefix(ctx, append(append([]byte("h/"), id...), '/')); err != nil {
		return err
	}
	return s.write(ctx, false, es...)
}

// OutboxEntry is a finalised call waiting to be exported.
type OutboxEntry struct {
	CallID   proto.CallID `json:"call_id"`
	Enqueued time.Time    `json:"enqueued"`
	Attempts int          `json:"attempts"`
	LastErr  string       `json:"last_error,omitempty"`
}

func outboxKey(id proto.CallID) []byte { return append([]byte("o/"), id...) }

// PutCallExport makes a call record durable and, in the same commit, queues
// it for export: a finalisation is never persisted without its outbox entry.
func (s *Store) PutCallExport(ctx context.Context, c *Call) error {
	es, err := callEntries(c)
	if err != nil {
		return err
	}
	ob, _ := json.Marshal(OutboxEntry{CallID: c.ID, Enqueued: time.Now().UTC()})
	return s.write(ctx, false, append(es, entry{key: outboxKey(c.ID), val: ob})...)
}

// OutboxBatch lists at most limit queued exports (0: all), in call id
// order, the batch oldest first: a long outage's backlog is never loaded
// whole.
func (s *Store) OutboxBatch(limit int) ([]OutboxEntry, error) {
	var out []OutboxEntry
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("o/"), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid() && (limit <= 0 || len(out) < limit); it.Next() {
			var e OutboxEntry
			if err := s.readJSON(it.Item(), "outbox entry", &e); err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Enqueued.Before(out[j].Enqueued) })
	return out, err
}

// OutboxLen counts queued exports (keys only).
func (s *Store) OutboxLen() (int, error) { return s.countKeys("o/") }

// UpdateOutbox records a failed attempt.
func (s *Store) UpdateOutbox(ctx context.Context, e OutboxEntry) error {
	b, _ := json.Marshal(e)
	return s.write(ctx, false, entry{key: outboxKey(e.CallID), val: b})
}

// DoneOutbox removes an exported entry.
func (s *Store) DoneOutbox(id proto.CallID) error {
	return s.write(context.Background(), false, entry{key: outboxKey(id), del: true})
}
