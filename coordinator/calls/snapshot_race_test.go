package calls

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/proto"
)

// These tests have no assertion of their own: run with -race (make test
// does), they fail when a snapshot of a call's record (a view, a record on
// its way to the store) shares memory that the call then writes in place.

// newChattyWorker sends a final with a checkpoint for every frame, and a
// last final and done at the end.
func newChattyWorker() *pipeWorker {
	return &pipeWorker{id: "chatty",
		audio: func(wr *proto.Writer, _ proto.Assign, _ proto.Audio, n uint32) {
			_ = wr.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerFinal, Index: n - 1, Text: "x", Decoded: n, NextSeq: n, Checkpoint: []byte(`{"k":1}`)})
		},
		end: func(wr *proto.Writer, _ proto.Assign, n uint32) {
			_ = wr.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerFinal, Index: n, Text: "end", Decoded: n, NextSeq: n})
			_ = wr.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerDone, Decoded: n})
		}}
}

// A view of the call (what GET /v1/calls/{id} encodes, unlocked) while
// finals update the record.
func TestRecordSnapshotsViewWhileFinals(t *testing.T) {
	fw := newChattyWorker()
	m, _, _ := newManager(t, oneWorker{fw}, Limits{})
	defer fw.wg.Wait()
	ctx := t.Context()
	sess, _, err := m.Open(ctx, hello("call-v"))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	go func() {
		for range sess.Events() {
		}
	}()
	stop := make(chan struct{})
	var vw sync.WaitGroup
	vw.Add(1)
	go func() {
		defer vw.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if rec, _, ok := m.View("call-v"); ok {
				_, _ = json.Marshal(rec)
			}
		}
	}()
	for seq := range uint32(200) {
		if _, err := sess.Append(ctx, audio(seq)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	vw.Wait()
	_ = sess.End(ctx, proto.End{Frames: []uint32{200}})
	time.Sleep(300 * time.Millisecond)
}

// The end's record is encoded while finals still arrive for the tail.
func TestRecordSnapshotsEndWhileFinals(t *testing.T) {
	for range 5 {
		fw := newChattyWorker()
		m, _, _ := newManager(t, oneWorker{fw}, Limits{})
		ctx := t.Context()
		sess, _, err := m.Open(ctx, hello("call-e"))
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for range sess.Events() {
			}
		}()
		for seq := range uint32(300) {
			if _, err := sess.Append(ctx, audio(seq)); err != nil {
				t.Fatal(err)
			}
		}
		if err := sess.End(ctx, proto.End{Frames: []uint32{300}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		sess.Close()
		fw.wg.Wait()
	}
}

// One channel's final is encoded with the record while the other channel
// reports undecodable frames.
func TestRecordSnapshotsFinalWhileUndecodable(t *testing.T) {
	fw := &pipeWorker{id: "mixed", audio: func(wr *proto.Writer, a proto.Assign, f proto.Audio, n uint32) {
		if a.Channel == 0 {
			_ = wr.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerFinal, Index: n - 1, Text: "x", Decoded: n, NextSeq: n, Checkpoint: []byte(`{"k":1}`)})
			return
		}
		seq := f.Seq
		_ = wr.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerUndecodable, Frame: &seq, Error: "bad"})
	}}
	m, _, _ := newManager(t, oneWorker{fw}, Limits{})
	ctx := t.Context()
	h := hello("call-m")
	h.Channels = []string{"a", "b"}
	sess, _, err := m.Open(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range sess.Events() {
		}
	}()
	for seq := range uint32(300) {
		for ch := range uint8(2) {
			a := audio(seq)
			a.Channel = ch
			if _, err := sess.Append(ctx, a); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(500 * time.Millisecond)
	sess.Close()
	m.Stop()
	fw.wg.Wait()
}
