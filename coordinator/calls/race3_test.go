package calls

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/proto"
)

// mixedWorker: channel 0 gets a final per frame, channel 1 an undecodable
// report per frame.
type mixedWorker struct{ wg sync.WaitGroup }

func (w *mixedWorker) ID() proto.WorkerID { return "mixed" }
func (w *mixedWorker) Broken() bool       { return false }
func (w *mixedWorker) OpenStream(ctx context.Context) (Stream, error) {
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
				au, _ := proto.ParseAudio(m.Body)
				idx++
				if a.Channel == 0 {
					_ = wr.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerFinal, Index: idx - 1, Text: "x", Decoded: idx, NextSeq: idx, Checkpoint: []byte(`{"k":1}`)})
				} else {
					f := au.Seq
					_ = wr.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerUndecodable, Frame: &f, Error: "bad"})
				}
				continue
			}
			if m.Type == proto.TEnd {
				return
			}
		}
	}()
	return pipeStream{here}, nil
}

func TestRecordSnapshotsRecordEncodedWhileUndecodable(t *testing.T) {
	fw := &mixedWorker{}
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
