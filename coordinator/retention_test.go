package coordinator

import (
	"context"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/proto"
)

func TestRetention(t *testing.T) {
	tc := startCoordinatorWith(t, func(c *Config) {
		c.AudioRetention, c.TranscriptRetention = 24*time.Hour, 90*24*time.Hour
	})
	st, ctx := tc.c.store, context.Background()
	now := time.Now()
	mk := func(id string, state string, finalisedAgo time.Duration) {
		rec := &store.Call{ID: proto.CallID(id), Console: "c", Channels: []string{"caller"}, Codec: proto.CodecL16, State: state, Created: now.Add(-finalisedAgo - time.Hour)}
		if state == store.StateFinalised {
			f := now.Add(-finalisedAgo)
			rec.Finalised = &f
		}
		if err := st.PutCall(ctx, rec); err != nil {
			t.Fatal(err)
		}
		for i := range uint32(50) {
			st.PutFrames(ctx, rec.ID, 0, []store.Frame{{Seq: i, Payload: make([]byte, 3200)}})
		}
		st.PutFinal(ctx, rec.ID, store.Final{Channel: 0, Index: 0, Text: "hello"}, nil)
	}
	mk("fresh", store.StateFinalised, time.Hour)          // keeps everything
	mk("old", store.StateFinalised, 48*time.Hour)         // loses its audio
	mk("ancient", store.StateFinalised, 100*24*time.Hour) // deleted whole
	mk("live", store.StateStreaming, 100*24*time.Hour)    // never touched
	// a call id that is a prefix of another must not take the other's audio
	mk("old2", store.StateFinalised, time.Hour)

	tc.c.applyRetention(ctx, now)
	frames := func(id string) uint32 { n, _ := st.CountFrames(proto.CallID(id), 0); return n }
	if frames("fresh") != 50 || frames("live") != 50 || frames("old2") != 50 {
		t.Fatalf("kept audio: fresh %d live %d old2 %d", frames("fresh"), frames("live"), frames("old2"))
	}
	if frames("old") != 0 {
		t.Fatalf("old call keeps %d frames", frames("old"))
	}
	if rec, err := st.Call("old"); err != nil || rec.AudioDeleted == nil {
		t.Fatalf("old call record: %+v %v", rec, err)
	}
	if fs, _ := st.Finals("old", 0, 0); len(fs) != 1 {
		t.Fatal("old call lost its transcript")
	}
	if _, err := st.Call("ancient"); err != store.ErrNotFound || frames("ancient") != 0 {
		t.Fatalf("ancient call not deleted: %v", err)
	}
	if fs, _ := st.Finals("ancient", 0, 0); len(fs) != 0 {
		t.Fatal("ancient finals left behind")
	}
	// A second pass changes nothing and does not fail.
	tc.c.applyRetention(ctx, now)
	if frames("fresh") != 50 {
		t.Fatal("second pass deleted audio")
	}
}
