package coordinator

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/proto"
)

// receiver is a local HTTPS endpoint that counts deliveries per call.
type receiver struct {
	mu    sync.Mutex
	got   map[string]int
	words map[string]string
	srv   *http.Server
}

func (r *receiver) handle(w http.ResponseWriter, req *http.Request) {
	var doc ExportDocument
	b, _ := io.ReadAll(req.Body)
	var kind struct{ Kind string }
	if json.Unmarshal(b, &kind) == nil && kind.Kind == "audit" {
		return // audit entries: TestAuditExportedOnceInOrder
	}
	if json.Unmarshal(b, &doc) != nil || doc.Call == nil || req.Header.Get("Idempotency-Key") != string(doc.Call.ID) || req.Header.Get("Authorization") != "Bearer up-token" {
		http.Error(w, "bad export", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.got[string(doc.Call.ID)]++
	if len(doc.Utterances) > 0 {
		r.words[string(doc.Call.ID)] = doc.Utterances[0].Text
	}
	r.mu.Unlock()
}

func (r *receiver) counts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.got {
		out[k] = v
	}
	return out
}

// Every finalised transcript reaches a receiver that is down for part of the
// run exactly once, across a coordinator restart.
func TestOutboxDeliversExactlyOnceAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	ca, caKey, err := pki.EnsureCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	rdir := t.TempDir()
	cert, err := pki.EnsureServerCert(rdir, ca, caKey, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // the receiver is down to begin with
	pool, _ := pki.CertPool(filepath.Join(dir, pki.CAFile))
	export := ExportConfig{URL: "https://" + addr + "/transcripts", RootCAs: pool, Token: "up-token", MaxBackoff: 200 * time.Millisecond}
	cfgFor := func(c *Config) { c.DataDir, c.Export = dir, export }

	a := startCoordinatorWith(t, cfgFor)
	var ids []proto.CallID
	for i := range 5 {
		id := proto.CallID("exp-" + string(rune('a'+i)))
		ids = append(ids, id)
		rec := &store.Call{ID: id, Console: "c", Channels: []string{"caller"}, Codec: proto.CodecL16, State: store.StateEnded,
			Created: time.Now(), Decoded: []uint32{10}, Complete: []bool{true}}
		a.c.store.PutCall(t.Context(), rec)
		a.c.store.PutFinal(t.Context(), id, store.Final{Channel: 0, Index: 0, Text: "words of " + string(id)}, nil)
		a.c.calls.FinaliseRecord(rec) // the real finalisation path
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
	waitFor("failed attempts while the receiver is down", func() bool {
		ob, _ := a.c.store.OutboxBatch(0)
		return len(ob) == 5 && ob[0].Attempts >= 2
	})
	a.stop()

	b := startCoordinatorWith(t, cfgFor)
	r := &receiver{got: map[string]int{}, words: map[string]string{}}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("receiver cannot come back on %s: %v", addr, err)
	}
	r.srv = &http.Server{Handler: http.HandlerFunc(r.handle), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go r.srv.ServeTLS(ln, "", "")
	defer r.srv.Close()
	waitFor("every transcript delivered", func() bool { return len(r.counts()) == 5 })
	waitFor("an empty outbox", func() bool { ob, _ := b.c.store.OutboxBatch(0); return len(ob) == 0 })
	time.Sleep(300 * time.Millisecond) // nothing more may arrive
	for _, id := range ids {
		if n := r.counts()[string(id)]; n != 1 {
			t.Errorf("%s delivered %d times", id, n)
		}
		r.mu.Lock()
		if r.words[string(id)] != "words of "+string(id) {
			t.Errorf("%s: transcript %q", id, r.words[string(id)])
		}
		r.mu.Unlock()
	}
}
