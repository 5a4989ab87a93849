package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/callscribe/callscribe/internal/leader"
)

// apiCluster is a leader that serves /v1/status (to an operator token
// only) and records what it got, and a follower that answers every request
// with 307 to the same path at the leader, named "localhost" (another host
// to net/http, which would drop the token on its own).
type apiCluster struct {
	leader    *httptest.Server
	leaderURL string
	follower  *httptest.Server

	mu       sync.Mutex
	got      []string // at the leader: "METHOD PATH AUTH BODY"
	followed int      // requests the follower redirected
}

func newAPICluster(t *testing.T) *apiCluster {
	t.Helper()
	c := &apiCluster{}
	c.leader = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		c.mu.Lock()
		c.got = append(c.got, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization")+" "+string(b))
		c.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer op-token" {
			http.Error(w, `{"error":"no credential"}`, http.StatusUnauthorized)
			return
		}
		w.Write([]byte(`{"nodes":[],"workers":[]}`))
	}))
	c.leaderURL = strings.Replace(c.leader.URL, "127.0.0.1", "localhost", 1)
	c.follower = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.followed++
		c.mu.Unlock()
		http.Redirect(w, r, c.leaderURL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	t.Cleanup(func() { c.follower.Close(); c.leader.Close() })
	return c
}

func (c *apiCluster) seen() ([]string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.got...), c.followed
}

func deadHTTP(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String()
	ln.Close()
	return u
}

// `callscribe status --server FOLLOWER,LEADER` reaches the leader through
// the follower's redirect, with the operator token; the next request goes
// to the leader directly, and a body is sent again on the redirect.
func TestAPIClientFollowsTheLeader(t *testing.T) {
	c := newAPICluster(t)
	var out, errOut bytes.Buffer
	err := cmdStatus(context.Background(), []string{"--server", c.follower.URL + "," + c.leaderURL, "--token", "op-token", "--json"}, &out, &errOut)
	if err != nil {
		t.Fatalf("status: %v\n%s", err, errOut.String())
	}
	if out.String() != `{"nodes":[],"workers":[]}` {
		t.Fatalf("status printed %q", out.String())
	}
	api, err := newAPIClient(c.follower.URL+", "+c.leaderURL, "", "op-token")
	if err != nil {
		t.Fatal(err)
	}
	defer api.client.CloseIdleConnections()
	for range 2 {
		resp, err := api.do(context.Background(), http.MethodPost, "/v1/nodes/n1/drain", map[string]string{"why": "test"})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	got, followed := c.seen()
	want := []string{"GET /v1/status Bearer op-token ", `POST /v1/nodes/n1/drain Bearer op-token {"why":"test"}`, `POST /v1/nodes/n1/drain Bearer op-token {"why":"test"}`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("the leader got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if followed != 2 {
		t.Fatalf("the follower redirected %d requests, want 2 (status, then the first drain: the second goes to the leader)", followed)
	}
}

// A redirect to a server not in --server is refused: the token goes
// nowhere else.
func TestAPIClientRefusesAnUnlistedRedirect(t *testing.T) {
	c := newAPICluster(t)
	var out, errOut bytes.Buffer
	err := cmdStatus(context.Background(), []string{"--server", c.follower.URL, "--token", "op-token"}, &out, &errOut)
	if !errors.Is(err, leader.ErrForeignRedirect) {
		t.Fatalf("got %v, want the redirect refused", err)
	}
	if got, _ := c.seen(); len(got) != 0 {
		t.Fatalf("the unlisted server got %q", got)
	}
}

// A coordinator that cannot be connected to is passed over for the next;
// when none can, the error names each.
func TestAPIClientTriesTheNext(t *testing.T) {
	c := newAPICluster(t)
	var out, errOut bytes.Buffer
	if err := cmdStatus(context.Background(), []string{"--server", deadHTTP(t) + "," + c.leader.URL, "--token", "op-token", "--json"}, &out, &errOut); err != nil {
		t.Fatalf("status: %v", err)
	}
	d1, d2 := deadHTTP(t), deadHTTP(t)
	err := cmdStatus(context.Background(), []string{"--server", d1 + "," + d2, "--token", "op-token"}, &out, &errOut)
	var ue *leader.UnreachableError
	if !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), "no coordinator reachable at "+d1+", "+d2+": ") {
		t.Fatalf("got %v", err)
	}
	// One address: the message it always had.
	err = cmdStatus(context.Background(), []string{"--server", d1, "--token", "op-token"}, &out, &errOut)
	if err == nil || !strings.HasPrefix(err.Error(), "coordinator at "+d1+": ") {
		t.Fatalf("got %v", err)
	}
}
