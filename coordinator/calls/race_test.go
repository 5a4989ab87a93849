package calls

import (
	"context"
	"encoding/json"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/proto"
)

// chattyWorker sends a final with a checkpoint for every frame.
type chattyWorker struct{ wg sync.WaitGroup }

func (w *chattyWorker) ID() proto.WorkerID { return "chatty" }
func (w *chattyWorker) Broken() bool       { return false }
func (w *chattyWorker) OpenStream(ctx context.Context) (Stream, error) {
	here, there := net.Pipe()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer there.Close()
		r, wr := proto.NewReader(there), proto.NewWriter(there)
		var a proto.Assign
		if err := r.ReadJSON(proto.TAssign, &a); err != nil {
			return
		}
		idx := uint32(0)
		for {
			m, err := r.Read()
			if err != nil {
				return
			}
			if m.Type == proto.TAudio {
				idx++
				if err := wr.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerFinal, Index: idx - 1, Text: "x", Decoded: idx, NextSeq: idx, Checkpoint: []byte(`{"k":1}`)}); err != nil {
					println("write", err.Error())
				}
				continue
			}
			if m.Type == proto.TEnd {
				_ = wr.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerFinal, Index: idx, Text: "end", Decoded: idx, NextSeq: idx})
				_ = wr.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerDone, Decoded: idx})
				return
			}
		}
	}()
	return pipeStream{here}, nil
}

func TestRecordSnapshotsViewSharesSlices(t *testing.T) {
	fw := &chattyWorker{}
	m, obs, _ := newManager(t, oneWorker{fw}, Limits{})
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
	views := 0
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
				views++
				_, _ = json.Marshal(rec) // what the HTTP handler does, unlocked
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
	t.Logf("finals %d decoded %d views %d", obs.get("finals"), obs.get("decoded"), views)
	_ = sess.End(ctx, proto.End{Frames: []uint32{200}})
	time.Sleep(300 * time.Millisecond)
}
