package coordinator

import (
	"context"
	"fmt"
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

// A retention pass walks the store a batch at a time and covers every
// call, deleting as it goes, however many there are.
func TestRetentionCoversManyBatches(t *testing.T) {
	tc := startCoordinatorWith(t, func(c *Config) {
		c.AudioRetention, c.TranscriptRetention = 24*time.Hour, 90*24*time.Hour
	})
	st, ctx := tc.c.store, context.Background()
	now := time.Now()
	const n = 700 // several of the store's batches
	errs := make(chan error, n)
	for i := range n {
		go func() {
			ago := 48 * time.Hour // loses its audio
			if i%2 == 0 {
				ago = 100 * 24 * time.Hour // deleted whole
			}
			f := now.Add(-ago)
			id := proto.CallID(fmt.Sprintf("batch-%03d", i))
			rec := &store.Call{ID: id, Console: "c", Channels: []string{"caller"}, Codec: proto.CodecL16, State: store.StateFinalised, Created: f.Add(-time.Hour), Finalised: &f}
			err := st.PutCall(ctx, rec)
			if err == nil {
				err = st.PutFrames(ctx, id, 0, []store.Frame{{Seq: 0, Payload: make([]byte, 320)}})
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	tc.c.applyRetention(ctx, now)
	left, audio := 0, 0
	err := st.EachCall(ctx, func(rec *store.Call) error {
		left++
		if rec.AudioDeleted == nil {
			t.Errorf("%s keeps its audio", rec.ID)
		}
		if k, _ := st.CountFrames(rec.ID, 0); k > 0 {
			audio++
		}
		return nil
	})
	if err != nil || left != n/2 || audio != 0 {
		t.Fatalf("after one pass: %d calls left (want %d), %d with audio, %v", left, n/2, audio, err)
	}
	if page, _, _ := st.CallsPage(store.CallFilter{}, "", 1000); len(page) != n/2 {
		t.Errorf("the listing shows %d calls, want %d", len(page), n/2)
	}
}
