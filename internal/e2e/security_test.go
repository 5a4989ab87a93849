package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/ingest/console"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/proto"
)

// httpDo sends one request and returns the status and body.
func httpDo(t *testing.T, client *http.Client, method, url, token string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// The attacks of issue #13 against a real appliance: a console that knows
// another console's call id cannot take the call over, read it or end it;
// nothing is served without a credential; drain needs an operator; and a
// revoked console is cut off within a second.
func TestSecurityAttacks(t *testing.T) {
	a := newAppliance(t)
	a.dev(t, 1)
	op := a.operatorToken(t)
	base := "http://" + a.http
	// A second console with its own token, made by the operator.
	intruderTok := strings.TrimSpace(run(t, "token", "add", "--server", a.http, "--token", op, "--role", "console", "--name", "desk-2"))
	if len(intruderTok) < 32 {
		t.Fatalf("token add printed %q", intruderTok)
	}

	owner := streamCall(t, a, "sec-call", demoCall, 1)
	waitUntil(t, "the call is live", 20*time.Second, func() bool {
		code, _ := httpDo(t, http.DefaultClient, "GET", base+"/v1/calls/sec-call", a.token(t))
		return code == 200
	})
	// The intruder claims the owner's console id too: the credential wins.
	pool, _ := pki.CertPool(filepath.Join(a.dir, pki.CAFile))
	intruder := console.New(console.Config{Server: a.quic, RootCAs: pool, ServerName: "localhost", Token: intruderTok, CallID: "sec-call",
		ConsoleID: "console", Channels: []string{proto.ChannelCaller, proto.ChannelCallTaker}, Codec: proto.CodecL16, ReconnectFor: 5 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() { _, _ = intruder.Send(0, make([]byte, 3200), time.Now()); intruder.End() }()
	err := intruder.Run(ctx)
	if !errors.Is(err, console.ErrRefused) || !strings.Contains(err.Error(), "belongs to another console") {
		t.Fatalf("the intruder was told %v, want a refusal: the call belongs to another console", err)
	}
	if code, body := httpDo(t, http.DefaultClient, "GET", base+"/v1/calls/sec-call/transcript", intruderTok); code != 403 {
		t.Fatalf("another console reads the transcript: %d %s", code, body)
	}
	if code, body := httpDo(t, http.DefaultClient, "GET", base+"/v1/calls", intruderTok); code != 200 || strings.Contains(body, "sec-call") {
		t.Fatalf("another console lists calls: %d %s", code, body)
	}
	for _, path := range []string{"/v1/calls", "/v1/calls/sec-call", "/v1/calls/sec-call/transcript", "/v1/status", "/v1/stats", "/metrics"} {
		if code, _ := httpDo(t, http.DefaultClient, "GET", base+path, ""); code != 401 {
			t.Errorf("GET %s without a credential: %d, want 401", path, code)
		}
	}
	if code, _ := httpDo(t, http.DefaultClient, "POST", base+"/v1/nodes/local/drain", ""); code != 401 {
		t.Errorf("drain without a credential: %d, want 401", code)
	}
	if code, _ := httpDo(t, http.DefaultClient, "POST", base+"/v1/nodes/local/drain", a.token(t)); code != 403 {
		t.Errorf("drain with a console token: %d, want 403", code)
	}
	// The owner's call is untouched: it finalises with its whole audio and
	// the transcript the console printed.
	owner.wait(t)
	var v coordinator.CallView
	a.getJSON(t, "/v1/calls/sec-call", &v)
	if v.Console != "console" || v.State != "finalised" || v.ChannelInfo[0].Stored != uint32(len(owner.frames[0])) {
		t.Fatalf("call after the attempt: %+v", v)
	}

	// Revocation: a live console of desk-3 is cut off within a second.
	desk3 := strings.TrimSpace(run(t, "token", "add", "--server", a.http, "--token", op, "--role", "console", "--name", "desk-3"))
	var ended = make(chan error, 1)
	live := startCall(t, callTarget{quic: a.quic, dir: a.dir, token: desk3}, "desk3-call", demoCall, 1)
	go func() { ended <- <-live.done }()
	waitUntil(t, "desk-3's call is live", 20*time.Second, func() bool {
		code, _ := httpDo(t, http.DefaultClient, "GET", base+"/v1/calls/desk3-call", desk3)
		return code == 200
	})
	run(t, "token", "revoke", "--server", a.http, "--token", op, "--name", "desk-3")
	revokedAt := time.Now()
	select {
	case err := <-ended:
		if err == nil || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("desk-3's console ended with %v, want: credential revoked", err)
		}
		t.Logf("desk-3's stream ended %v after the revocation", time.Since(revokedAt).Round(time.Millisecond))
	case <-time.After(time.Second):
		t.Fatal("desk-3's stream still open a second after its credential was revoked")
	}
	if list := run(t, "token", "list", "--server", a.http, "--token", op); !strings.Contains(list, "desk-3") || !strings.Contains(list, "revoked") {
		t.Fatalf("token list:\n%s", list)
	}
}

// Over http_tls, a request without a client certificate and without a
// token is refused like any other: the drain of the attack table.
func TestDrainNeedsOperatorOverTLS(t *testing.T) {
	a := newAppliance(t)
	p := start(t, "coordinator", "--data", a.dir, "--http", a.http, "--quic", a.quic, "--workers", "0", "--http-tls")
	var client *http.Client
	waitUntil(t, "the coordinator serves HTTPS", 60*time.Second, func() bool {
		select {
		case <-p.done:
			t.Fatalf("coordinator exited:\n%s", p.output())
		default:
		}
		pool, err := pki.CertPool(filepath.Join(a.dir, pki.CAFile))
		if err != nil {
			return false
		}
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		r, err := client.Get("https://" + a.http + "/healthz")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		// Not while it follows, a moment after it starts: a follower
		// answers the API with 503 until a leader is known.
		return r.StatusCode == 200 && !strings.Contains(string(b), "follower")
	})
	base := "https://" + a.http
	if code, body := httpDo(t, client, "POST", base+"/v1/nodes/local/drain", ""); code != 401 {
		t.Fatalf("drain over TLS without a credential: %d %s", code, body)
	}
	if code, _ := httpDo(t, client, "GET", base+"/v1/status", ""); code != 401 {
		t.Fatalf("status over TLS without a credential: %d", code)
	}
	out := run(t, "status", "--json", "--server", base, "--ca", filepath.Join(a.dir, pki.CAFile), "--token-file", filepath.Join(a.dir, pki.OperatorToken))
	if !strings.Contains(out, `"nodes"`) {
		t.Fatalf("status with the operator token: %s", out)
	}
	if code, body := httpDo(t, client, "POST", base+"/v1/nodes/no-such-node/drain", a.operatorToken(t)); code != 404 {
		t.Fatalf("drain of an unknown node: %d %s, want 404", code, body)
	}
}
