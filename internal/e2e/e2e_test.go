package e2e

import (
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/proto"
)

const demoCall = "../../assets/demo-call.wav"

// Every referenced clip streamed through a live appliance prints exactly
// what decoding the file directly prints.
func TestStreamPrintsWhatTranscribePrints(t *testing.T) {
	a := newAppliance(t)
	a.dev(t, 2)
	tok := a.token(t)
	for i, clip := range referenceClips(t) {
		want := run(t, "transcribe", clip)
		if strings.TrimSpace(want) == "" {
			t.Fatalf("%s: transcribe printed nothing", clip)
		}
		got := run(t, "stream", "--server", a.quic, "--ca", filepath.Join(a.dir, pki.CAFile), "--token", tok,
			"--call", fmt.Sprintf("clip-%d", i), "--speed", "0", "--quiet", clip)
		if got != want {
			t.Errorf("%s:\nstream:     %q\ntranscribe: %q", filepath.Base(clip), got, want)
		}
	}
}

// A coordinator killed with SIGKILL mid-call and restarted on its data
// directory loses no acknowledged frame, and the console's transcript is
// that of an uninterrupted run.
func TestCoordinatorKilledMidCall(t *testing.T) {
	a := newAppliance(t)
	want := transcribeChannels(t, demoCall)
	co := a.coordinator(t, 2)
	a.agent(t, "node-a")
	a.waitReady(t, co)

	s := streamCall(t, a, "coordinator-kill", demoCall, 3)
	waitUntil(t, "80 frames acked", 30*time.Second, func() bool { return s.call.Acked()[0] >= 80 })
	co.killLeader()
	acked := s.call.Acked()
	t.Logf("coordinator killed with %v frames acked", acked)

	co2 := a.coordinator(t, 2)
	a.waitReady(t, co2)
	s.wait(t)
	if got := s.texts(); !reflect.DeepEqual(got, want) {
		t.Fatalf("transcript after coordinator restart:\n got  %q\n want %q", got, want)
	}
	if s.call.Reconnects() < 1 {
		t.Fatal("the console never reconnected: the kill did not happen mid-call")
	}
	var v coordinator.CallView
	a.getJSON(t, "/v1/calls/coordinator-kill", &v)
	if v.State != store.StateFinalised {
		t.Fatalf("call state %q", v.State)
	}

	// Stop the coordinator cleanly and read the store directly: every frame
	// sent, acked ones included, is there with the bytes that were sent.
	co2.kill(syscall.SIGTERM)
	st, err := store.Open(filepath.Join(a.dir, "store"), storeOptions(t, a.dir))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for ch := range s.frames {
		next := uint32(0)
		err := st.Frames("coordinator-kill", ch, 0, 0, func(f store.Frame) error {
			if f.Seq != next {
				return fmt.Errorf("channel %d: frame %d missing (found %d)", ch, next, f.Seq)
			}
			if string(f.Payload) != string(s.frames[ch][f.Seq]) {
				return fmt.Errorf("channel %d: frame %d differs from what was sent", ch, f.Seq)
			}
			next++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if next != uint32(len(s.frames[ch])) || next < acked[ch] {
			t.Fatalf("channel %d: %d frames stored, %d sent, %d acked before the kill", ch, next, len(s.frames[ch]), acked[ch])
		}
	}
}

// A worker killed mid-call: its channel moves to another worker and resumes
// from the last final's checkpoint; the transcript has no gap or duplicate.
func TestWorkerKilledMidCall(t *testing.T) {
	a := newAppliance(t)
	want := transcribeChannels(t, demoCall)
	a.dev(t, 2)

	s := streamCall(t, a, "worker-kill", demoCall, 3)
	waitUntil(t, "a first final", 60*time.Second, func() bool { return len(s.texts()[0]) >= 1 })
	var st coordinator.Status
	a.getJSON(t, "/v1/status", &st)
	pid := 0
	for _, w := range st.Workers {
		if w.Used > 0 {
			pid = w.PID
			break
		}
	}
	if pid == 0 {
		t.Fatalf("no busy worker in %+v", st.Workers)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s.wait(t)
	if got := s.texts(); !reflect.DeepEqual(got, want) {
		t.Fatalf("transcript after worker kill:\n got  %q\n want %q", got, want)
	}
	if s.resumed() < 1 {
		t.Fatal("console got no resumed event")
	}
	var v coordinator.CallView
	a.getJSON(t, "/v1/calls/worker-kill", &v)
	if v.Resumes < 1 {
		t.Fatalf("call record shows no resume: %+v", v.Call)
	}
	for i, c := range v.ChannelInfo {
		if c.Decoded != c.Stored || c.Stored != uint32(len(s.frames[i])) || c.Received < uint64(c.Stored) {
			t.Fatalf("channel %d accounting: %+v (sent %d)", i, c, len(s.frames[i]))
		}
	}
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Two agents on this machine: draining the node that carries a call stops
// its workers; the scaling policy places replacements on the other node, and
// the call resumes there from its last checkpoint; the transcript equals a
// fault-free run.
func TestDrainMovesCallsToAnotherNode(t *testing.T) {
	a := newAppliance(t)
	clip := testData + "/librivox/sense_and_sensibility_01_austen_64kb-0870.wav"
	want := transcribeChannels(t, clip)
	a.coordinator(t, 2)
	a.agent(t, "node-a")
	a.agent(t, "node-b")
	var st coordinator.Status
	waitUntil(t, "two workers and two nodes", 60*time.Second, func() bool {
		a.getJSON(t, "/v1/status", &st)
		return len(st.Workers) >= 2 && len(st.Nodes) == 2
	})

	s := streamCall(t, a, "drain-call", clip, 1.5)
	var busy proto.NodeID
	waitUntil(t, "the call on a worker", 30*time.Second, func() bool {
		a.getJSON(t, "/v1/status", &st)
		for _, w := range st.Workers {
			if w.Used > 0 {
				busy = w.Node
				return true
			}
		}
		return false
	})
	time.Sleep(1500 * time.Millisecond) // let it decode a while first
	other := proto.NodeID("node-a")
	if busy == other {
		other = "node-b"
	}
	out := run(t, "node", "drain", string(busy), "--server", a.http, "--token-file", filepath.Join(a.dir, pki.OperatorToken))
	if !strings.Contains(out, "draining") {
		t.Fatalf("node drain printed %q", out)
	}
	s.wait(t)
	if got := s.texts(); !reflect.DeepEqual(got, want) {
		t.Fatalf("transcript after drain:\n got  %q\n want %q", got, want)
	}
	waitUntil(t, "workers only on the other node", 30*time.Second, func() bool {
		a.getJSON(t, "/v1/status", &st)
		n := 0
		for _, w := range st.Workers {
			if w.Node == busy {
				return false
			}
			n++
		}
		return n >= 2 // the policy's minimum, now all on the other node
	})
	drained := false
	for _, n := range st.Nodes {
		if n.ID == busy {
			drained = n.Draining
		}
	}
	if !drained {
		t.Fatalf("node %s not shown draining: %+v", busy, st.Nodes)
	}
	var v coordinator.CallView
	a.getJSON(t, "/v1/calls/drain-call", &v)
	if v.Resumes < 1 {
		t.Fatalf("the call did not move: %+v", v.Call)
	}
}
