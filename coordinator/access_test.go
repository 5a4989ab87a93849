package coordinator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/ingest/whip"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/proto"
)

// api sends one request as token (none when empty) and returns the status
// and body.
func (tc *testCoord) api(t *testing.T, method, path, token, body string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, "http://"+tc.c.HTTPAddr().String()+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	// Event streams stay open: their status is all this needs.
	if strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
		return res.StatusCode, ""
	}
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// The full matrix: every route, as nobody, a wrong token, the call's own
// console, another console, a supervisor and an operator.
func TestRoleMatrix(t *testing.T) {
	tc := startCoordinatorWith(t, func(c *Config) { c.AuthFailuresPerMinute = 1000 })
	s := tc.stream(t)
	s.open(hello("owned")) // console-a's
	s.audio(0, 0)
	s.expectAck(1)
	const (
		open = -1 // anything but 401 and 403
	)
	who := []struct{ name, token string }{
		{"nobody", ""}, {"wrong token", "not-a-token-0123456789"}, {"owner console", testToken},
		{"other console", testTokenB}, {"supervisor", testSupervisor}, {"operator", testOperator},
	}
	routes := []struct {
		method, path, body string
		want               [6]int // per who
	}{
		{"GET", "/healthz", "", [6]int{200, 200, 200, 200, 200, 200}},
		{"GET", "/readyz", "", [6]int{open, open, open, open, open, open}},
		{"GET", "/console/", "", [6]int{200, 200, 200, 200, 200, 200}},
		{"GET", "/v1/calls", "", [6]int{401, 401, 200, 200, 200, 403}},
		{"GET", "/v1/calls/owned", "", [6]int{401, 401, 200, 403, 200, 403}},
		{"GET", "/v1/calls/owned/transcript", "", [6]int{401, 401, 200, 403, 200, 403}},
		{"GET", "/v1/calls/owned/events", "", [6]int{401, 401, 200, 403, 200, 403}},
		{"POST", "/v1/calls/owned/transfer", `{"to":"console-a"}`, [6]int{401, 401, 403, 403, 200, 403}},
		{"POST", "/v1/whip/owned", "", [6]int{401, 401, 415, 415, 403, 403}},
		{"GET", "/v1/status", "", [6]int{401, 401, 403, 403, 403, 200}},
		{"GET", "/v1/stats", "", [6]int{401, 401, 403, 403, 403, 200}},
		{"GET", "/metrics", "", [6]int{401, 401, 403, 403, 403, 200}},
		{"POST", "/v1/nodes/no-such-node/drain", "", [6]int{401, 401, 403, 403, 403, 404}},
		{"POST", "/v1/nodes/no-such-node/undrain", "", [6]int{401, 401, 403, 403, 403, 404}},
		{"GET", "/v1/tokens", "", [6]int{401, 401, 403, 403, 403, 200}},
		{"POST", "/v1/tokens", `{"name":"matrix-new","role":"console"}`, [6]int{401, 401, 403, 403, 403, 201}},
		{"DELETE", "/v1/tokens/matrix-new", "", [6]int{401, 401, 403, 403, 403, 200}},
		{"GET", "/v1/calls/owned/audio?channel=0", "", [6]int{401, 401, 403, 403, 200, 403}},
		{"GET", "/v1/signing-key", "", [6]int{401, 401, 200, 200, 200, 200}},
		{"GET", "/v1/audit", "", [6]int{401, 401, 403, 403, 403, 200}},
		{"POST", "/v1/tickets", "", [6]int{401, 401, 200, 200, 200, 200}},
		{"GET", "/v1/whoami", "", [6]int{401, 401, 200, 200, 200, 200}},
	}
	for _, r := range routes {
		for i, w := range who {
			got, body := tc.api(t, r.method, r.path, w.token, r.body)
			want := r.want[i]
			if want == open && (got == 401 || got == 403) || want != open && got != want {
				t.Errorf("%s %s as %s: %d %s, want %d", r.method, r.path, w.name, got, strings.TrimSpace(body), want)
			}
			if (got == 401 || got == 403) && strings.TrimSpace(body) == "" {
				t.Errorf("%s %s as %s: %d without a reason: %q", r.method, r.path, w.name, got, body)
			}
		}
	}
	// A console lists its own calls only; a supervisor every call.
	tc.stream(t).open(func() proto.Hello { h := hello("b-call"); h.Token = testTokenB; return h }())
	ids := func(token string) string {
		_, body := tc.api(t, "GET", "/v1/calls", token, "")
		var vs CallList
		if err := json.Unmarshal([]byte(body), &vs); err != nil {
			t.Fatalf("calls: %v %s", err, body)
		}
		var out []string
		for _, v := range vs.Calls {
			out = append(out, string(v.ID))
		}
		return strings.Join(out, ",")
	}
	if got := ids(testToken); got != "owned" {
		t.Errorf("console-a lists %q, want only its own call", got)
	}
	if got := ids(testSupervisor); !strings.Contains(got, "owned") || !strings.Contains(got, "b-call") {
		t.Errorf("supervisor lists %q, want every call", got)
	}
	// Tokens travel in headers, never in URLs.
	if got, _ := tc.api(t, "GET", "/v1/calls/owned/transcript?token="+testToken, "", ""); got != 400 {
		t.Errorf("token in the URL: %d, want 400", got)
	}

	// QUIC: only consoles stream; the credential names the console.
	for _, c := range []struct {
		name, token, code string
	}{
		{"nobody", "", proto.CodeUnauthorized}, {"wrong token", "not-a-token-0123456789", proto.CodeUnauthorized},
		{"supervisor", testSupervisor, proto.CodeForbidden}, {"operator", testOperator, proto.CodeForbidden},
		{"other console", testTokenB, proto.CodeForbidden},
	} {
		st := tc.stream(t)
		h := hello("owned")
		h.Token = c.token
		if err := st.w.WriteJSON(proto.THello, h); err != nil {
			t.Fatal(err)
		}
		st.expectError(c.code)
	}
}

// A second console that knows a live call's id (and claims its owner's
// console id) is refused with a clear error, and the call is untouched:
// its console goes on streaming, nothing the intruder sent is stored, and
// the call does not end.
func TestHijackRefused(t *testing.T) {
	tc := startCoordinator(t)
	owner := tc.stream(t)
	owner.open(hello("live"))
	owner.audio(0, 0)
	owner.expectAck(1)
	before := len(tc.logs.String())

	intruder := tc.stream(t)
	h := hello("live")
	h.Token, h.ConsoleID = testTokenB, "console-a" // claims the owner's id
	if err := intruder.w.WriteJSON(proto.THello, h); err != nil {
		t.Fatal(err)
	}
	m := intruder.next()
	var e proto.Error
	if m.Type != proto.TError || json.Unmarshal(m.Body, &e) != nil || e.Code != proto.CodeForbidden || !strings.Contains(e.Message, "belongs to another console") {
		t.Fatalf("intruder got type %d %s, want forbidden: belongs to another console", m.Type, m.Body)
	}
	// The intruder's audio and end, sent regardless, go nowhere.
	_, _ = intruder.w.WriteRaw(proto.AppendAudio(nil, proto.Audio{Channel: 0, Seq: 1, Capture: 1, Payload: []byte("intruder")}))
	_ = intruder.w.WriteJSON(proto.TEnd, proto.End{Frames: []uint32{2}})
	if !strings.Contains(tc.logs.String()[before:], "belongs to another console") {
		t.Error("the refusal is not logged")
	}
	owner.audio(0, 1)
	owner.expectAck(2)
	rec, err := tc.c.Store().Call("live")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Console != "console-a" || rec.State != store.StateStreaming {
		t.Fatalf("call after the attempt: console %s state %s", rec.Console, rec.State)
	}
	if n, _ := tc.c.Store().CountFrames("live", 0); n != 2 {
		t.Fatalf("%d frames stored, want the owner's 2", n)
	}
	// Reading it is refused too.
	if got, body := tc.api(t, "GET", "/v1/calls/live/transcript", testTokenB, ""); got != 403 || !strings.Contains(body, "another console") {
		t.Fatalf("other console reads the transcript: %d %s", got, body)
	}
}

// A supervisor hands a call to another console: the first console is told
// and can no longer stream to it; the second resumes it where it was.
func TestTransfer(t *testing.T) {
	tc := startCoordinator(t)
	a := tc.stream(t)
	a.open(hello("handover"))
	for i := range uint32(3) {
		a.audio(0, i)
		a.expectAck(i + 1)
	}
	// The owner also watches its call's transcript.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+tc.c.HTTPAddr().String()+"/v1/calls/handover/events", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("watch: %v %v", err, res)
	}
	defer res.Body.Close()
	sse := make(chan string, 1)
	go func() { b, _ := io.ReadAll(res.Body); sse <- string(b) }()
	for _, bad := range []string{`{"to":"ghost"}`, `{"to":"sup"}`, `{"to":"bad\nname"}`} {
		if got, body := tc.api(t, "POST", "/v1/calls/handover/transfer", testSupervisor, bad); got != 400 {
			t.Errorf("transfer %s: %d %s, want 400", bad, got, body)
		}
	}
	if got, body := tc.api(t, "POST", "/v1/calls/handover/transfer", testSupervisor, `{"to":"console-b"}`); got != 200 {
		t.Fatalf("transfer: %d %s", got, body)
	}
	a.expectError(proto.CodeTransferred)
	// The former owner's stream can no longer end the call…
	_ = a.w.WriteJSON(proto.TEnd, proto.End{Frames: []uint32{3}})
	time.Sleep(200 * time.Millisecond)
	if rec, _ := tc.c.Store().Call("handover"); rec.State != store.StateStreaming {
		t.Fatalf("the former owner ended the call: %s", rec.State)
	}
	// …and its view of the call is closed.
	select {
	case body := <-sse:
		if !strings.Contains(body, "transferred") {
			t.Errorf("the former owner's event stream ended without saying why: %q", body)
		}
	case <-time.After(time.Second):
		t.Fatal("the former owner still watches the call a second after the transfer")
	}
	b := tc.stream(t)
	h := hello("handover")
	h.Token = testTokenB
	w := b.open(h)
	if !w.Resumed || w.NextSeq[0] != 3 {
		t.Fatalf("console-b's welcome %+v, want resumed at 3", w)
	}
	b.audio(0, 3)
	b.expectAck(4)
	again := tc.stream(t)
	if err := again.w.WriteJSON(proto.THello, hello("handover")); err != nil {
		t.Fatal(err)
	}
	again.expectError(proto.CodeForbidden)
	rec, _ := tc.c.Store().Call("handover")
	if rec.Console != "console-b" {
		t.Fatalf("stored owner %s, want console-b", rec.Console)
	}
	if got, _ := tc.api(t, "POST", "/v1/calls/handover/transfer", testTokenB, `{"to":"console-b"}`); got != 403 {
		t.Fatalf("a console transferring: %d, want 403", got)
	}
}

// Revoking a credential refuses it at once and ends its live sessions
// within a second: a console stream and a transcript stream.
func TestRevocationEndsSessions(t *testing.T) {
	tc := startCoordinator(t)
	add := func(name string, role auth.Role) string {
		code, body := tc.api(t, "POST", "/v1/tokens", testOperator, fmt.Sprintf(`{"name":%q,"role":%q}`, name, role))
		var tr TokenResponse
		if code != 201 || json.Unmarshal([]byte(body), &tr) != nil || tr.Token == "" {
			t.Fatalf("token add %s: %d %s", name, code, body)
		}
		return tr.Token
	}
	ctok, stok := add("desk-7", auth.Console), add("watcher", auth.Supervisor)
	s := tc.stream(t)
	h := hello("revoked-call")
	h.Token = ctok
	s.open(h)
	s.audio(0, 0)
	s.expectAck(1)
	// The supervisor watches it.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+tc.c.HTTPAddr().String()+"/v1/calls/revoked-call/events", nil)
	req.Header.Set("Authorization", "Bearer "+stok)
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("watch: %v %v", err, res)
	}
	defer res.Body.Close()
	sse := make(chan string, 1)
	go func() { b, _ := io.ReadAll(bufio.NewReader(res.Body)); sse <- string(b) }()

	t0 := time.Now()
	for _, name := range []string{"desk-7", "watcher"} {
		if code, body := tc.api(t, "DELETE", "/v1/tokens/"+name, testOperator, ""); code != 200 {
			t.Fatalf("revoke %s: %d %s", name, code, body)
		}
	}
	s.st.SetReadDeadline(time.Now().Add(time.Second))
	m := s.next()
	var e proto.Error
	if m.Type != proto.TError || json.Unmarshal(m.Body, &e) != nil || e.Code != proto.CodeUnauthorized || !strings.Contains(e.Message, "revoked") {
		t.Fatalf("console stream after revocation: type %d %s", m.Type, m.Body)
	}
	select {
	case body := <-sse:
		if !strings.Contains(body, "revoked") {
			t.Errorf("transcript stream ended without saying why: %q", body)
		}
	case <-time.After(time.Second):
		t.Fatal("transcript stream still open a second after its credential was revoked")
	}
	t.Logf("sessions ended %v after the revocation", time.Since(t0))
	// The token no longer opens anything.
	s2 := tc.stream(t)
	if err := s2.w.WriteJSON(proto.THello, h); err != nil {
		t.Fatal(err)
	}
	s2.expectError(proto.CodeUnauthorized)
	if got, _ := tc.api(t, "GET", "/v1/calls", stok, ""); got != 401 {
		t.Fatalf("revoked supervisor token: %d, want 401", got)
	}
	// Revoked tokens stay revoked across a restart: the revocation is in
	// the store, and tokens are stored only as hashes.
	creds, err := tc.c.Store().Credentials()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range creds {
		if c.Name == "desk-7" && c.Source == "api" && (c.Revoked == nil || c.Hash != auth.HashToken(ctok)) {
			t.Fatalf("stored credential %+v", c)
		}
	}
	tc.stop()
	if err := filepath.Walk(tc.c.cfg.DataDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err == nil && (strings.Contains(string(b), ctok) || strings.Contains(string(b), stok)) {
			t.Errorf("%s holds a token in clear", p)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// Repeated failures from one address are refused for a while (429 with
// Retry-After, even with a good token); other addresses are not affected.
func TestAuthFailuresThrottled(t *testing.T) {
	tc := startCoordinatorWith(t, func(c *Config) { c.AuthFailuresPerMinute = 3 })
	for i := range 3 {
		if got, _ := tc.api(t, "GET", "/v1/calls", fmt.Sprintf("guess-%d-0123456789", i), ""); got != 401 {
			t.Fatalf("guess %d: %d, want 401", i, got)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+tc.c.HTTPAddr().String()+"/v1/calls", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 429 || res.Header.Get("Retry-After") == "" {
		t.Fatalf("after 3 failures: %d (Retry-After %q), want 429 with Retry-After", res.StatusCode, res.Header.Get("Retry-After"))
	}
	// QUIC from the same address is throttled too.
	st := tc.stream(t)
	if err := st.w.WriteJSON(proto.THello, hello("throttled")); err != nil {
		t.Fatal(err)
	}
	st.expectError(proto.CodeThrottled)
	// Another address is served.
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}}
	req, _ = http.NewRequestWithContext(ctx, "GET", "http://"+tc.c.HTTPAddr().String()+"/v1/calls", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	res, err = other.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer other.CloseIdleConnections()
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("from 127.0.0.2: %d, want 200", res.StatusCode)
	}
	// Counted for the operator's alerts.
	req, _ = http.NewRequestWithContext(ctx, "GET", "http://"+tc.c.HTTPAddr().String()+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testOperator)
	res, err = other.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []string{`callscribe_auth_refused_total{reason="invalid"} 3`, `callscribe_auth_refused_total{reason="throttled"} 2`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// A browser exchanges its token for a single-use ticket for EventSource.
func TestEventTicket(t *testing.T) {
	tc := startCoordinator(t)
	tc.stream(t).open(hello("ticketed"))
	_, body := tc.api(t, "POST", "/v1/tickets", testToken, "")
	var tk struct {
		Ticket string `json:"ticket"`
	}
	if err := json.Unmarshal([]byte(body), &tk); err != nil || tk.Ticket == "" {
		t.Fatalf("ticket: %s", body)
	}
	if got, _ := tc.api(t, "GET", "/v1/calls/ticketed/transcript?ticket="+tk.Ticket, "", ""); got != 401 {
		t.Fatalf("ticket on a non-streaming route: %d, want 401", got)
	}
	if got, _ := tc.api(t, "GET", "/v1/calls/ticketed/events?ticket="+tk.Ticket, "", ""); got != 200 {
		t.Fatalf("events with a ticket: %d, want 200", got)
	}
	if got, _ := tc.api(t, "GET", "/v1/calls/ticketed/events?ticket="+tk.Ticket, "", ""); got != 401 {
		t.Fatalf("ticket reused: %d, want 401", got)
	}
}

// A WebRTC console's session ends within a second of its credential's
// revocation; another console cannot take its call over WHIP, nor change
// or end its WHIP session.
func TestWHIPRevocationAndHijack(t *testing.T) {
	tc := startCoordinator(t)
	base := "http://" + tc.c.HTTPAddr().String()
	_, body := tc.api(t, "POST", "/v1/tokens", testOperator, `{"name":"desk-w","role":"console"}`)
	var tr TokenResponse
	if err := json.Unmarshal([]byte(body), &tr); err != nil || tr.Token == "" {
		t.Fatalf("token add: %s", body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := whip.Dial(ctx, whip.ClientConfig{Server: base, Token: tr.Token, CallID: "whip-owned", Channels: []string{"caller"}, Codec: proto.CodecPCMU})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	for i := range 5 {
		if err := cl.Send(0, bytes.Repeat([]byte{byte(i)}, 160), 160); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "audio stored", 10*time.Second, func() bool {
		n, _ := tc.c.Store().CountFrames("whip-owned", 0)
		return n > 0
	})
	// Another console: a new offer for the call is refused, as are PATCH
	// and DELETE of the session.
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/whip/whip-owned", strings.NewReader("v=0\r\n"))
	req.Header.Set("Content-Type", "application/sdp")
	req.Header.Set("Authorization", "Bearer "+testTokenB)
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode == http.StatusCreated {
		t.Fatalf("another console's offer for the call: %v %v", err, res)
	} else {
		res.Body.Close()
	}
	loc := cl.Session()
	for _, m := range []string{http.MethodPatch, http.MethodDelete} {
		req, _ := http.NewRequest(m, loc, strings.NewReader("a=end-of-candidates\r\n"))
		req.Header.Set("Content-Type", "application/trickle-ice-sdpfrag")
		req.Header.Set("Authorization", "Bearer "+testTokenB)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusForbidden {
			t.Errorf("%s of another console's WHIP session: %d, want 403", m, res.StatusCode)
		}
	}
	if rec, _ := tc.c.Store().Call("whip-owned"); rec == nil || rec.Console != "desk-w" || rec.State == store.StateEnded {
		t.Fatalf("call after the attempts: %+v", rec)
	}
	// Revocation ends the session.
	if code, body := tc.api(t, "DELETE", "/v1/tokens/desk-w", testOperator, ""); code != 200 {
		t.Fatalf("revoke: %d %s", code, body)
	}
	t0 := time.Now()
	var sawRevoked bool
	for ev := range cl.Events() { // closed when the session ends
		sawRevoked = sawRevoked || (ev.Error != nil && strings.Contains(ev.Error.Message, "revoked"))
	}
	if d := time.Since(t0); d > time.Second {
		t.Fatalf("WHIP session ended %v after the revocation, want within a second", d)
	}
	if !sawRevoked {
		t.Error("the console was not told its credential was revoked")
	}
}

// A credential taken out of the configuration (a reload) ends its live
// sessions as a revocation does.
func TestReloadEndsRemovedCredentials(t *testing.T) {
	tc := startCoordinator(t)
	s := tc.stream(t)
	h := hello("reloaded")
	h.Token = testTokenC
	s.open(h)
	s.audio(0, 0)
	s.expectAck(1)
	var creds []auth.Static
	for _, c := range testCredentials() {
		if c.Name != "console-c" {
			creds = append(creds, c)
		}
	}
	tc.c.Reload(Reloadable{Credentials: creds})
	s.st.SetReadDeadline(time.Now().Add(time.Second))
	m := s.next()
	var e proto.Error
	if m.Type != proto.TError || json.Unmarshal(m.Body, &e) != nil || e.Code != proto.CodeUnauthorized {
		t.Fatalf("stream of a removed credential: type %d %s", m.Type, m.Body)
	}
	_ = s.w.WriteJSON(proto.TEnd, proto.End{Frames: []uint32{1}})
	time.Sleep(200 * time.Millisecond)
	if rec, _ := tc.c.Store().Call("reloaded"); rec.State == store.StateFinalised || rec.State == store.StateEnded {
		t.Fatalf("a removed credential's stream ended the call: %s", rec.State)
	}
}
