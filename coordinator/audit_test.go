package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/audit"
	"github.com/callscribe/callscribe/proto"
)

// apiGet sends a request with the test token and returns the status and body.
func apiDo(t *testing.T, tc *testCoord, method, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+tc.c.HTTPAddr().String()+path, nil)
	tok := testSupervisor // calls
	if strings.HasPrefix(path, "/v1/nodes/") || strings.HasPrefix(path, "/v1/audit") {
		tok = testOperator
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

func putTestCall(t *testing.T, c *Coordinator, id proto.CallID) {
	t.Helper()
	rec := &store.Call{ID: id, Console: "c", Channels: []string{"caller"}, Codec: proto.CodecL16, State: store.StateFinalised, Created: time.Now(), Decoded: []uint32{10}}
	if err := c.store.PutCall(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	if err := c.store.PutFinal(t.Context(), id, store.Final{Channel: 0, Index: 0, Text: "secret words"}, nil); err != nil {
		t.Fatal(err)
	}
}

type failingAppender struct{}

func (failingAppender) AppendAudit(context.Context, audit.Entry) (audit.Entry, error) {
	return audit.Entry{}, store.ErrDiskFull
}

// Reads, listings and drains are recorded with their outcome, the chain
// the API serves verifies, and when an entry cannot be made durable the
// action is refused with 503 and nothing of the answer leaves.
func TestAuditTrailRecordsAndFailsClosed(t *testing.T) {
	tc := startCoordinator(t)
	c := tc.c
	putTestCall(t, c, "aud-1")
	for _, n := range []proto.NodeID{"n1", "n2"} { // nodes seen before
		if err := c.store.PutNode(t.Context(), store.Node{ID: n, Updated: time.Now().UTC()}); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []struct {
		path string
		code int
	}{{"/v1/calls/aud-1/transcript", 200}, {"/v1/calls", 200}, {"/v1/calls/aud-1", 200}, {"/v1/calls/nope/transcript", 404}} {
		if code, body := apiDo(t, tc, "GET", r.path); code != r.code {
			t.Fatalf("GET %s: %d %s", r.path, code, body)
		}
	}
	if code, body := apiDo(t, tc, "POST", "/v1/nodes/n1/drain"); code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	code, body := apiDo(t, tc, "GET", "/v1/audit")
	if code != 200 {
		t.Fatalf("GET /v1/audit: %d %s", code, body)
	}
	var page AuditPage
	if err := json.Unmarshal([]byte(body), &page); err != nil {
		t.Fatal(err)
	}
	if err := audit.Verify(page.Entries, audit.ZeroHash); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range page.Entries {
		got = append(got, e.Action+" "+e.Target+" "+e.Outcome)
		if e.Remote != "" && e.Remote != "127.0.0.1" {
			t.Errorf("remote %q", e.Remote)
		}
	}
	want := []string{"transcript.read aud-1 ok", "calls.list  ok", "call.read aud-1 ok", "transcript.read nope error: 404 Not Found", "node.drain n1 ok"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if last := page.Entries[len(page.Entries)-1]; page.Head.Seq != last.Seq || page.Head.Hash != last.Hash {
		t.Fatalf("head %+v, last entry %d %s", page.Head, last.Seq, last.Hash)
	}
	code, body = apiDo(t, tc, "GET", "/v1/audit?after=3&limit=1")
	var one AuditPage
	if err := json.Unmarshal([]byte(body), &one); code != 200 || err != nil || len(one.Entries) != 1 || one.Entries[0].Seq != 4 || one.Head.Seq != 5 {
		t.Fatalf("a page: %d %s", code, body)
	}

	var fail auditAppender = failingAppender{}
	c.auditTo.Store(&fail)
	for _, path := range []string{"/v1/calls/aud-1/transcript", "/v1/calls/aud-1/events", "/v1/calls", "/v1/calls/aud-1"} {
		code, body := apiDo(t, tc, "GET", path)
		if code != http.StatusServiceUnavailable || strings.Contains(body, "secret words") || !strings.Contains(body, "audit trail unavailable") {
			t.Fatalf("GET %s without an audit trail: %d %s", path, code, body)
		}
	}
	if code, body := apiDo(t, tc, "POST", "/v1/nodes/n2/drain"); code != http.StatusServiceUnavailable {
		t.Fatalf("drain without an audit trail: %d %s", code, body)
	}
	drained := c.rack.Draining("n2")
	if drained {
		t.Fatal("a drain that could not be recorded was carried out")
	}
	c.auditTo.Store(nil)
	if code, _ := apiDo(t, tc, "GET", "/v1/calls/aud-1/transcript"); code != 200 {
		t.Fatalf("after the trail is back: %d", code)
	}
}

// auditReceiver takes transcript and audit documents, refusing the first
// few audit batches.
type auditReceiver struct {
	mu      sync.Mutex
	refuse  int
	entries map[uint64]int
	all     []audit.Entry
}

func (r *auditReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var doc struct {
		Kind    string        `json:"kind"`
		Entries []audit.Entry `json:"entries"`
	}
	b, _ := io.ReadAll(req.Body)
	if err := json.Unmarshal(b, &doc); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	if doc.Kind != "audit" {
		return // a transcript
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refuse > 0 {
		r.refuse--
		http.Error(w, "not now", http.StatusServiceUnavailable)
		return
	}
	if len(doc.Entries) == 0 || req.Header.Get("Idempotency-Key") != fmt.Sprintf("audit-%d", doc.Entries[0].Seq) {
		http.Error(w, "bad batch", 400)
		return
	}
	for _, e := range doc.Entries {
		r.entries[e.Seq]++
		r.all = append(r.all, e)
	}
}

func (r *auditReceiver) snapshot() ([]audit.Entry, map[uint64]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[uint64]int{}
	for k, v := range r.entries {
		m[k] = v
	}
	return append([]audit.Entry(nil), r.all...), m
}

// Audit entries reach the export receiver in order, each once, through
// refusals and a restart, and the copy verifies as one chain.
func TestAuditExportedOnceInOrder(t *testing.T) {
	rcv := &auditReceiver{refuse: 3, entries: map[uint64]int{}}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	dir := t.TempDir()
	cfgFor := func(c *Config) {
		c.DataDir = dir
		c.Export = ExportConfig{URL: srv.URL + "/upstream", MaxBackoff: 100 * time.Millisecond}
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	a := startCoordinatorWith(t, cfgFor)
	for i := range 30 {
		if err := a.c.AuditAs(t.Context(), "tester", audit.ActionCallsList, fmt.Sprint(i), audit.OutcomeOK, ""); err != nil {
			t.Fatal(err)
		}
	}
	waitFor("30 entries exported", func() bool { _, m := rcv.snapshot(); return len(m) >= 30 })
	waitFor("the cursor at 30", func() bool { n, _ := a.c.store.AuditExported(); return n >= 30 })
	a.stop()

	b := startCoordinatorWith(t, cfgFor)
	for i := range 5 {
		if err := b.c.AuditAs(t.Context(), "tester", audit.ActionCallsList, fmt.Sprint(100+i), audit.OutcomeOK, ""); err != nil {
			t.Fatal(err)
		}
	}
	waitFor("35 entries exported", func() bool { _, m := rcv.snapshot(); return len(m) >= 35 })
	time.Sleep(200 * time.Millisecond) // nothing more may arrive
	all, m := rcv.snapshot()
	for seq, n := range m {
		if n != 1 {
			t.Errorf("seq %d received %d times", seq, n)
		}
	}
	if err := audit.Verify(all, audit.ZeroHash); err != nil {
		t.Fatalf("the exported copy: %v", err)
	}
	if len(all) != 35 {
		t.Fatalf("%d entries exported, want 35", len(all))
	}
	if _, err := b.c.store.AuditEntries(0, 0); err != nil {
		t.Fatal(err)
	}
}
