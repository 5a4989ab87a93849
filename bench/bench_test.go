package bench

import (
	"context"
	"encoding/binary"
	"os"
	"testing"
	"time"
)

// Every ack of a workload is counted once, and the group commits that
// carried them account for every write.
func TestWorkloadCountsEveryAckAndCommit(t *testing.T) {
	for name, mk := range map[string]func(string, *Commits) (Sink, func(), error){"floor": FloorSink, "badger": BadgerSink} {
		c := &Commits{}
		sink, closeFn, err := mk(t.TempDir(), c)
		if err != nil {
			t.Fatal(err)
		}
		r := Workload{Calls: 20, FrameSize: 400, Interval: 100 * time.Millisecond, Duration: time.Second}.Run(context.Background(), sink)
		closeFn()
		if r.Frames != 200 || r.Errors != 0 || len(r.Latencies) != 200 || r.Latency.P99 < r.Latency.P50 {
			t.Errorf("%s: %d frames, %d errors, %d latencies, %+v", name, r.Frames, r.Errors, len(r.Latencies), r.Latency)
		}
		// The workload's 200 frames, and the warm-up writes before it.
		if n, writes := c.Count(), 200+warmupWrites; n == 0 || n > writes || c.PerCommit()*float64(n) < float64(writes)-0.5 || c.PerCommit()*float64(n) > float64(writes)+0.5 {
			t.Errorf("%s: %d commits of %.2f writes each for %d writes", name, n, c.PerCommit(), writes)
		}
	}
}

func TestFramesLoopTheAudioFromEachCallsOffset(t *testing.T) {
	pcm := make([]int16, 200000)
	for i := range pcm {
		pcm[i] = int16(i % 30000)
	}
	cfg := LoadConfig{Audio: pcm}
	b := cfg.frame(1, 3, 1600) // call 1 starts 116,800 samples in; frame 3 is 4,800 further
	for j := range 1600 {
		want := pcm[(116800+4800+j)%len(pcm)]
		if got := int16(binary.LittleEndian.Uint16(b[2*j:])); got != want {
			t.Fatalf("sample %d: %d, want %d", j, got, want)
		}
	}
	if b := cfg.frame(1, 60, 1600); int16(binary.LittleEndian.Uint16(b)) != pcm[(116800+96000)%len(pcm)] {
		t.Fatal("the audio does not wrap around")
	}
	if len((LoadConfig{}).frame(0, 0, 1600)) != 3200 {
		t.Fatal("noise frame of the wrong size")
	}
}

func TestTreeCPU(t *testing.T) {
	own, err := treeCPU(os.Getpid())
	if err != nil || own <= 0 {
		t.Fatalf("this process: %g s, %v", own, err)
	}
	if _, err := treeCPU(1 << 30); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
	if v, err := treeCPU(0); v != 0 || err != nil {
		t.Fatalf("pid 0: %g %v", v, err)
	}
}
