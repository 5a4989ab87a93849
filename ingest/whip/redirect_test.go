package whip

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/internal/leader"
	"github.com/callscribe/callscribe/proto"
)

// follower is a coordinator that is not the leader: it answers every
// request with 307 to the same path at leaderURL, and counts them.
type follower struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []string
}

func newFollower(t *testing.T, leaderURL string) *follower {
	t.Helper()
	f := &follower{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.reqs = append(f.reqs, r.Method+" "+r.URL.Path)
		f.mu.Unlock()
		http.Redirect(w, r, leaderURL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *follower) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

// byName is u with "localhost" for 127.0.0.1: another host to net/http,
// which drops Authorization on a redirect there unless told otherwise.
func byName(u string) string { return strings.Replace(u, "127.0.0.1", "localhost", 1) }

// deadURL is an http URL on 127.0.0.1 that nothing listens on.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String()
	ln.Close()
	return u
}

func dialWith(t *testing.T, servers ...string) (*Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return Dial(ctx, ClientConfig{Servers: servers, Token: token, CallID: "call-1", ConsoleID: "c1", Channels: []string{"caller"}, Codec: proto.CodecPCMU,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), gatherIP: net.IP.IsLoopback})
}

// An offer posted to a follower is redirected (307) to the leader, which
// gets it with its body and the credential (re-added by the client: the
// leader is another host to net/http); the session's URL is the leader's,
// and DELETE goes there directly.
func TestClientFollowsARedirectToTheLeader(t *testing.T) {
	sink := newFakeSink()
	_, lurl := newTestServer(t, sink, nil)
	lurl = byName(lurl)
	f := newFollower(t, lurl)
	c, err := dialWith(t, f.URL, lurl)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if !strings.HasPrefix(c.Session(), lurl+"/v1/whip/sessions/") {
		t.Fatalf("session %q, want one at the leader %s", c.Session(), lurl)
	}
	sink.mu.Lock()
	hellos := len(sink.hellos)
	sink.mu.Unlock()
	if hellos != 1 {
		t.Fatalf("the leader opened %d calls, want 1", hellos)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatalf("close: %v", err)
	}
	sink.mu.Lock()
	ends := len(sink.ends)
	sink.mu.Unlock()
	if ends != 1 {
		t.Fatalf("DELETE did not end the call at the leader (%d ends)", ends)
	}
	if r := f.requests(); len(r) != 1 || r[0] != "POST /v1/whip/call-1" {
		t.Fatalf("the follower got %q, want the offer only", r)
	}
}

// A redirect to a server that is not a configured coordinator is refused:
// neither the offer nor the credential goes there.
func TestClientRefusesARedirectElsewhere(t *testing.T) {
	sink := newFakeSink()
	_, lurl := newTestServer(t, sink, nil)
	f := newFollower(t, lurl)
	_, err := dialWith(t, f.URL)
	if !errors.Is(err, leader.ErrForeignRedirect) {
		t.Fatalf("got %v, want the redirect refused", err)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.hellos) != 0 {
		t.Fatal("the unlisted server got the offer")
	}
}

// A coordinator that cannot be reached is passed over for the next.
func TestClientTriesTheNextCoordinator(t *testing.T) {
	sink := newFakeSink()
	_, lurl := newTestServer(t, sink, nil)
	c, err := dialWith(t, deadURL(t), lurl)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close(context.Background())
	if !strings.HasPrefix(c.Session(), lurl) {
		t.Fatalf("session %q", c.Session())
	}
}

// Only dead coordinators: an error naming each.
func TestClientNoCoordinatorReachable(t *testing.T) {
	d1, d2 := deadURL(t), deadURL(t)
	_, err := dialWith(t, d1, d2)
	var ue *leader.UnreachableError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "no coordinator reachable at "+d1+", "+d2+": ") {
		t.Fatalf("got %v", err)
	}
}
