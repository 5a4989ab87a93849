package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/proto"
)

// finishingWorker is a worker that decodes nothing but finishes: a final
// at every 5th frame, and done at the end of the audio, so calls finalise
// through the real path.
func (tc *testCoord) finishingWorker(t *testing.T, slots int) {
	t.Helper()
	conn := tc.dial(t, proto.ALPNNode)
	st, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r, w := proto.NewReader(st), proto.NewWriter(st)
	h := proto.WorkerHello{Version: proto.Version, Token: "node-token-0123456789", WorkerID: "finisher", NodeID: "n1", Model: "moonshine-base", Slots: slots, SelfTest: "ok"}
	if err := w.WriteJSON(proto.TWorkerHello, h); err != nil {
		t.Fatal(err)
	}
	var wel proto.WorkerWelcome
	if err := r.ReadJSON(proto.TWorkerWelcome, &wel); err != nil {
		t.Fatal(err)
	}
	go func() {
		for conn.Context().Err() == nil && w.Write(proto.TWorkerPing, nil) == nil {
			time.Sleep(time.Duration(max(wel.PingIntervalMS, 50)) * time.Millisecond)
		}
	}()
	go func() {
		for {
			s, err := conn.AcceptStream(context.Background())
			if err != nil {
				return
			}
			go func() {
				defer s.Close()
				r, w := proto.NewReader(s), proto.NewWriter(s)
				var a proto.Assign
				if r.ReadJSON(proto.TAssign, &a) != nil {
					return
				}
				next, idx := a.FromSeq, uint32(0)
				for {
					m, err := r.Read()
					if err != nil {
						return
					}
					switch m.Type {
					case proto.TAudio:
						au, _ := proto.ParseAudio(m.Body)
						if next = au.Seq + 1; next%5 == 0 {
							_ = w.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerFinal, Index: idx, Text: fmt.Sprint("words ", idx),
								Start: int64(next-5) * 1600, End: int64(next) * 1600, Decoded: next, NextSeq: next, Checkpoint: []byte(`{}`)})
							idx++
						}
					case proto.TEnd:
						_ = w.WriteJSON(proto.TWorkerEvent, proto.WorkerEvent{Kind: proto.WorkerDone, Decoded: next})
						return
					}
				}
			}()
		}
	}()
	waitFor(t, "the worker registered", 5*time.Second, func() bool { return tc.c.rack.ReadyWorkers() > 0 })
}

// drain reads a console stream until the coordinator closes it.
func (s *rawStream) drain() {
	for {
		if _, err := s.r.Read(); err != nil {
			return
		}
	}
}

// Finalised calls leave memory once their consoles and watchers have gone,
// however the calls ended (by the console, or abandoned by it); a
// finalised call loaded to serve a watch or a resume is not kept.
func TestFinalisedCallsLeaveMemory(t *testing.T) {
	tc := startCoordinatorWith(t, func(c *Config) { c.AbandonAfter = 300 * time.Millisecond })
	tc.finishingWorker(t, 64)
	const n = 24
	sup := auth.Principal{Name: "supervisor", Role: auth.Supervisor}
	done := make(chan error, n)
	for i := range n {
		id := fmt.Sprintf("mem-%02d", i)
		s := tc.stream(t)
		s.open(hello(id))
		for seq := range uint32(12) {
			s.audio(0, seq)
			s.expectAck(seq + 1)
		}
		switch i % 3 {
		case 0: // abandoned: the console vanishes without ending the call
			s.st.CancelWrite(0)
			s.st.CancelRead(0)
			go func() { done <- nil }()
		case 1: // ended, with a supervisor watching to the end
			wt, err := tc.c.calls.Watch(sup, proto.CallID(id), nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.w.WriteJSON(proto.TEnd, proto.End{Frames: []uint32{12}}); err != nil {
				t.Fatal(err)
			}
			go func() {
				defer wt.Close()
				finalised := false
				for ev := range wt.Events() {
					finalised = ev.Finalised != nil
				}
				s.drain()
				if !finalised {
					done <- fmt.Errorf("%s: the watcher's last event is not the call finalised", id)
					return
				}
				done <- nil
			}()
		case 2: // ended; the console stays until the coordinator closes it
			if err := s.w.WriteJSON(proto.TEnd, proto.End{Frames: []uint32{12}}); err != nil {
				t.Fatal(err)
			}
			go func() { s.drain(); done <- nil }()
		}
	}
	for range n {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	for i := range n {
		id := proto.CallID(fmt.Sprintf("mem-%02d", i))
		waitFor(t, string(id)+" finalised", 20*time.Second, func() bool {
			rec, err := tc.c.store.Call(id)
			return err == nil && rec.State == store.StateFinalised
		})
	}
	waitFor(t, "every finalised call gone from memory", 5*time.Second, func() bool { return tc.c.calls.InMemory() == 0 })
	if got := tc.gauge(t, "callscribe_calls_in_memory"); got != 0 {
		t.Errorf("callscribe_calls_in_memory %v, want 0", got)
	}

	// Watching a finalised call still works — its finals, then finalised —
	// and does not bring it back into memory.
	wt, err := tc.c.calls.Watch(sup, "mem-01", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := tc.c.calls.InMemory(); got != 0 {
		t.Errorf("a finalised call loaded for a watch is kept: %d calls in memory", got)
	}
	var finals int
	finalised := false
	for ev := range wt.Events() {
		if ev.Transcript != nil && ev.Transcript.Kind == proto.KindFinal {
			finals++
		}
		finalised = ev.Finalised != nil
	}
	wt.Close()
	if finals != 2 || !finalised {
		t.Errorf("watching a finalised call: %d finals (want 2), ends finalised %v", finals, finalised)
	}
	// So does the server-sent-event watch, and a console resuming it.
	if code, body := tc.getEvents(t, "mem-02"); code != http.StatusOK || !strings.Contains(body, "event: finalised") {
		t.Errorf("events of a finalised call: %d %q", code, body)
	}
	s := tc.stream(t)
	if w := s.open(hello("mem-03")); w.State != store.StateFinalised || !w.Resumed {
		t.Errorf("resuming a finalised call: %+v", w)
	}
	s.drain()
	waitFor(t, "no call in memory after the watches and the resume", 5*time.Second, func() bool { return tc.c.calls.InMemory() == 0 })
}

// getEvents reads a call's server-sent events as a supervisor until the
// stream ends.
func (tc *testCoord) getEvents(t *testing.T, id string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+tc.c.HTTPAddr().String()+"/v1/calls/"+url.PathEscape(id)+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+testSupervisor)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b []byte
	buf := make([]byte, 4096)
	for {
		k, err := resp.Body.Read(buf)
		b = append(b, buf[:k]...)
		if err != nil {
			return resp.StatusCode, string(b)
		}
	}
}

// gauge reads a metric without labels from the coordinator's registry.
func (tc *testCoord) gauge(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := tc.c.metrics.p.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// GET /v1/calls pages through the calls newest first, filtered, and a
// console sees its own calls only.
func TestCallsListingPages(t *testing.T) {
	tc := startCoordinator(t)
	ctx := t.Context()
	base := time.Now().UTC().Add(-time.Hour)
	const n = 250
	for i := range n {
		console := proto.ConsoleID("console-a")
		if i%5 == 0 {
			console = "console-b"
		}
		state := store.StateFinalised
		if i%2 == 0 {
			state = store.StateEnded
		}
		rec := &store.Call{ID: proto.CallID(fmt.Sprintf("z%03d", n-i)), Console: console, Channels: []string{"caller"}, Codec: proto.CodecL16,
			State: state, Created: base.Add(time.Duration(i) * time.Second), Decoded: []uint32{0}}
		if err := tc.c.store.PutCall(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	list := func(token, query string) (int, CallList) {
		t.Helper()
		code, body := tc.api(t, "GET", "/v1/calls"+query, token, "")
		var l CallList
		if code == http.StatusOK {
			if err := json.Unmarshal([]byte(body), &l); err != nil {
				t.Fatalf("%s: %v %s", query, err, body)
			}
		}
		return code, l
	}
	all := func(token, query string) []CallView {
		t.Helper()
		var out []CallView
		cursor := ""
		for pages := 0; ; pages++ {
			code, l := list(token, query+"&cursor="+url.QueryEscape(cursor))
			if code != http.StatusOK || pages > 100 {
				t.Fatalf("%s: %d", query, code)
			}
			out = append(out, l.Calls...)
			if cursor = l.NextCursor; cursor == "" {
				return out
			}
		}
	}
	if _, l := list(testSupervisor, ""); len(l.Calls) != DefaultCallsLimit || l.NextCursor == "" {
		t.Errorf("default page: %d calls, cursor %q", len(l.Calls), l.NextCursor)
	}
	got := all(testSupervisor, "?limit=30")
	if len(got) != n || got[0].ID != "z001" || got[n-1].ID != "z250" {
		t.Fatalf("supervisor: %d calls, want %d newest first", len(got), n)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Created.After(got[i-1].Created) {
			t.Fatalf("not newest first at %d", i)
		}
	}
	if got := all(testSupervisor, "?limit=40&state=ended&since="+url.QueryEscape(base.Add(200*time.Second).Format(time.RFC3339Nano))); len(got) != 25 {
		t.Errorf("ended since the 200th: %d calls, want 25", len(got))
	}
	// console-a's token: its own calls only, whatever it asks for.
	mine := all(testToken, "?limit=17")
	for _, v := range mine {
		if v.Console != "console-a" {
			t.Fatalf("console-a listed %s of %s", v.ID, v.Console)
		}
	}
	if len(mine) != n-n/5 {
		t.Errorf("console-a lists %d calls, want %d", len(mine), n-n/5)
	}
	for _, q := range []string{"?limit=0", "?limit=1001", "?limit=x", "?state=lost", "?since=yesterday", "?cursor=%21%21"} {
		if code, _ := list(testSupervisor, q); code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", q, code)
		}
	}
}
