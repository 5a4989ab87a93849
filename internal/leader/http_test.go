package leader

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
)

// seen records what a fake coordinator received.
type seen struct {
	mu   sync.Mutex
	reqs []string // "METHOD PATH AUTH BODY"
}

func (s *seen) add(r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization")+" "+string(b))
}

func (s *seen) get() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reqs)
}

// cluster starts a leader that records requests and a follower answering
// every request with 307 to the same path on the leader, at leaderURL:
// the leader's URL, or the same with "localhost" for 127.0.0.1 (another
// host to net/http, which would drop Authorization on its own).
func cluster(t *testing.T, byName bool) (leaderURL string, follower *httptest.Server, got *seen) {
	t.Helper()
	got = &seen{}
	leader := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.add(r)
		w.WriteHeader(http.StatusCreated)
	}))
	leaderURL = leader.URL
	if byName {
		leaderURL = strings.Replace(leaderURL, "127.0.0.1", "localhost", 1)
	}
	follower = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, leaderURL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(func() { follower.Close(); leader.Close() })
	return leaderURL, follower, got
}

func post(t *testing.T, c *http.Client, u string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader("v=0 offer"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer secret")
	res, err := c.Do(req)
	if err == nil {
		res.Body.Close()
	}
	return res, err
}

// A 307 to a configured coordinator is followed with the method, the body
// and the Authorization header.
func TestRedirectToAListedCoordinatorKeepsTheCredential(t *testing.T) {
	leaderURL, follower, got := cluster(t, true)
	c := &http.Client{CheckRedirect: CheckRedirect([]string{follower.URL, leaderURL + "/"})}
	defer c.CloseIdleConnections()
	res, err := post(t, c, follower.URL+"/v1/whip/call-1")
	if err != nil || res.StatusCode != http.StatusCreated {
		t.Fatalf("%v %v", res, err)
	}
	if r := got.get(); len(r) != 1 || r[0] != "POST /v1/whip/call-1 Bearer secret v=0 offer" {
		t.Fatalf("the leader got %q", r)
	}
	if res.Request.URL.String() != leaderURL+"/v1/whip/call-1" {
		t.Fatalf("final URL %s", res.Request.URL)
	}
	// net/http alone drops the credential for another host: the policy is
	// what keeps it.
	plain := &http.Client{}
	defer plain.CloseIdleConnections()
	if _, err := post(t, plain, follower.URL+"/v1/whip/call-1"); err != nil {
		t.Fatal(err)
	}
	if r := got.get(); len(r) != 2 || strings.Contains(r[1], "secret") {
		t.Fatalf("without the policy: %q", r)
	}
}

// A redirect to a server that is not configured is refused: the
// credential (which net/http itself would send to another port of the same
// host) goes nowhere.
func TestRedirectToAnUnlistedServerIsRefused(t *testing.T) {
	_, follower, got := cluster(t, false)
	c := &http.Client{CheckRedirect: CheckRedirect([]string{follower.URL})}
	defer c.CloseIdleConnections()
	_, err := post(t, c, follower.URL+"/v1/status")
	if !errors.Is(err, ErrForeignRedirect) {
		t.Fatalf("got %v, want ErrForeignRedirect", err)
	}
	if r := got.get(); len(r) != 0 {
		t.Fatalf("the unlisted server got %q", r)
	}
	// Without the policy net/http would have followed, credential and all
	// (same host, other port): the policy is what refuses it.
	plain := &http.Client{}
	defer plain.CloseIdleConnections()
	if _, err := post(t, plain, follower.URL+"/v1/status"); err != nil {
		t.Fatal(err)
	}
	if r := got.get(); len(r) != 1 || !strings.Contains(r[0], "Bearer secret") {
		t.Fatalf("without the policy: %q", r)
	}
}

func TestRedirectLoopStops(t *testing.T) {
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, srv.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer srv.Close()
	c := &http.Client{CheckRedirect: CheckRedirect([]string{srv.URL})}
	defer c.CloseIdleConnections()
	if _, err := post(t, c, srv.URL+"/x"); err == nil || !strings.Contains(err.Error(), "redirects") {
		t.Fatalf("got %v", err)
	}
}

func TestOrigin(t *testing.T) {
	for in, want := range map[string]string{
		"https://Coord-1/v1":        "https://coord-1:443",
		"https://coord-1:443":       "https://coord-1:443",
		"http://10.0.0.1:8080/x?y":  "http://10.0.0.1:8080",
		"HTTP://[::1]:8080":         "http://[::1]:8080",
		"http://coord-1":            "http://coord-1:80",
		"https://coord-1.evil:443/": "https://coord-1.evil:443",
	} {
		u, err := url.Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := Origin(u); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
}

func TestParseURLs(t *testing.T) {
	got, err := ParseURLs("10.0.0.1:8080, https://c2:8443/ ,,http://c3", "http")
	if err != nil || !slices.Equal(got, []string{"http://10.0.0.1:8080", "https://c2:8443", "http://c3"}) {
		t.Fatalf("%v %v", got, err)
	}
	if got, _ := ParseURLs("c1:8443", "https"); !slices.Equal(got, []string{"https://c1:8443"}) {
		t.Fatalf("default scheme: %v", got)
	}
	for _, bad := range []string{"", ",", "ftp://x", "http://"} {
		if _, err := ParseURLs(bad, "http"); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
