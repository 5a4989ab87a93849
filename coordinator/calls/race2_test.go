package calls

import (
	"testing"
	"time"

	"github.com/callscribe/callscribe/proto"
)

// The end's record is encoded while finals still arrive for the tail.
func TestRecordSnapshotsEndWhileFinals(t *testing.T) {
	for range 5 {
		fw := &chattyWorker{}
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
