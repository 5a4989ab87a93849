package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/internal/audit"
)

// auditAPI serves GET /v1/audit over entries as the coordinator does, with
// small pages so the CLI has to page through.
func auditAPI(t *testing.T, entries *[]audit.Entry) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/audit" || r.Header.Get("Authorization") != "Bearer op-token" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		after, _ := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
		page := coordinator.AuditPage{Entries: []audit.Entry{}, Head: audit.Head{Hash: audit.ZeroHash}}
		for _, e := range *entries {
			if e.Seq > after && len(page.Entries) < 7 {
				page.Entries = append(page.Entries, e)
			}
		}
		if es := *entries; len(es) > 0 {
			page.Head = audit.Head{Seq: es[len(es)-1].Seq, Hash: es[len(es)-1].Hash}
		}
		json.NewEncoder(w).Encode(page)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func sealed(n int) []audit.Entry {
	var out []audit.Entry
	var head audit.Head
	for i := range n {
		e := audit.Seal(audit.Entry{Time: time.Now(), Actor: "sup", Role: "supervisor", Remote: "10.0.0.9", Action: audit.ActionTranscriptRead, Target: fmt.Sprintf("call-%d", i), Outcome: audit.OutcomeOK}, head)
		head = audit.Head{Seq: e.Seq, Hash: e.Hash}
		out = append(out, e)
	}
	return out
}

func TestAuditCommandVerifies(t *testing.T) {
	entries := sealed(20)
	srv := auditAPI(t, &entries)
	run := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		err := cmdAudit(context.Background(), append([]string{"--server", srv.URL, "--token", "op-token"}, args...), &out, &errb)
		return out.String() + errb.String(), err
	}
	out, err := run("--verify")
	if err != nil || !strings.Contains(out, "audit chain intact: 20 entries, head 20 "+entries[19].Hash) {
		t.Fatalf("intact: %v\n%s", err, out)
	}
	out, err = run("--verify", "--expect", "12:"+entries[11].Hash)
	if err != nil {
		t.Fatalf("expect an entry that is there: %v\n%s", err, out)
	}
	out, err = run()
	if err != nil || !strings.Contains(out, "call-19") || !strings.Contains(out, "transcript.read") {
		t.Fatalf("table: %v\n%s", err, out)
	}
	out, err = run("--json", "--after", "18")
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, `"seq":19`) {
		t.Fatalf("json after 18: %v\n%s", err, out)
	}

	good := entries
	entries = append([]audit.Entry(nil), good...)
	entries[9].Target = "another-call" // tampered
	out, err = run("--verify")
	if !errors.Is(err, errChainBroken) || !strings.Contains(out, "BROKEN") || !strings.Contains(out, "seq 10") {
		t.Fatalf("tampered entry 10: %v\n%s", err, out)
	}
	t.Log(out)
	entries = append(append([]audit.Entry(nil), good[:14]...), good[15:]...) // entry 15 removed
	out, err = run("--verify")
	if !errors.Is(err, errChainBroken) || !strings.Contains(out, "seq 16") {
		t.Fatalf("entry 15 removed: %v\n%s", err, out)
	}
	entries = good[:17] // newest entries removed: only an earlier head shows it
	if out, err = run("--verify"); err != nil {
		t.Fatalf("a truncated log verifies on its own: %v\n%s", err, out)
	}
	out, err = run("--verify", "--expect", "20:"+good[19].Hash)
	if !errors.Is(err, errChainBroken) || !strings.Contains(out, "no longer there") {
		t.Fatalf("truncated against an earlier head: %v\n%s", err, out)
	}
}
