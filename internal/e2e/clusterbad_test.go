package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/ingest/console"
	"github.com/callscribe/callscribe/internal/leader"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/proto"
)

// membership is what must not change when a bad join is refused: each
// live member's voters and recorded members, and the leader.
func (r *clusterRack) membership(t *testing.T) string {
	t.Helper()
	var out []string
	for _, m := range r.live() {
		v, err := r.view(m)
		if err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		var voters, recorded []string
		for _, x := range v.Status.Members {
			voters = append(voters, fmt.Sprintf("%s@%s voter=%v", x.Name, x.Address, x.Voter))
		}
		for _, x := range v.Members {
			recorded = append(recorded, x.Name+"@"+x.Raft)
		}
		slices.Sort(voters)
		slices.Sort(recorded)
		out = append(out, fmt.Sprintf("%s: leader %s; configuration %v; members %v", m.name, v.Status.Leader, voters, recorded))
	}
	return strings.Join(out, "\n")
}

// auditHas reports whether the leader's audit trail holds an entry with
// every one of the strings.
func (r *clusterRack) auditHas(t *testing.T, want ...string) bool {
	t.Helper()
	l := r.waitLeader(t, "a leader")
	var body []byte
	if _, err := r.get(l, "/v1/audit?limit=1000", &body); err != nil {
		t.Fatal(err)
	}
	var page struct {
		Entries []map[string]any `json:"entries"`
	}
	if err := json.Unmarshal(body, &page); err != nil {
		t.Fatalf("audit: %v\n%s", err, body)
	}
	for _, e := range page.Entries {
		s := fmt.Sprint(e)
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(s, w)
		}
		if ok {
			return true
		}
	}
	return false
}

// Bad input to a cluster, each refused without changing it: a coordinator
// whose certificate comes from another CA asks to join (with the right
// join token: the leader must refuse it at the TLS handshake, log it, and
// add nothing); a coordinator asks to join with a wrong token (401,
// logged, audited); a console given only dead addresses ends with an
// error naming each.
func TestClusterBadInput(t *testing.T) {
	r := newClusterRack(t, 0)
	l := r.waitLeader(t, "a leader")

	t.Run("foreign-CA", func(t *testing.T) {
		// A machine set up with a CA of its own (the operator forgot to
		// copy the cluster's): its coordinator certificate chains to it.
		h := r.w.add(t, 50, "foreign")
		dir := t.TempDir()
		run(t, "ca", "init", "--dir", dir)
		run(t, "ca", "issue", "--dir", dir, "--kind", pki.KindCoordinator, "--name", "foreign", "--host", h.ip, "--out", filepath.Join(dir, "coordinator"))
		tok, err := os.ReadFile(filepath.Join(r.shared, pki.OperatorToken))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, pki.OperatorToken), tok, 0o600); err != nil {
			t.Fatal(err)
		}
		// Its API on its own loopback (plain HTTP), for `cluster join`
		// run on it; it reaches the leader over the wire.
		p := start(t, "netns-exec", h.ns, "coordinator", "--data", dir, "--quic", h.ip+":4433", "--http", "127.0.0.1:8080",
			"--cluster-listen", h.ip+":7000", "--cluster-name", "foreign", "--cluster-http", h.ip+":8080", "--workers", "0")
		waitUntil(t, "the foreign coordinator serving", 60*time.Second, func() bool {
			out, err := r.cliIn(h.ns, "cluster", "status", "--server", "http://127.0.0.1:8080")
			return err == nil && strings.Contains(out, "foreign")
		})
		before, logBefore := r.membership(t), len(l.p.output())
		out, err := r.cliIn(h.ns, "cluster", "join", "--server", "http://127.0.0.1:8080", "--leader", l.httpURL(), "--join-token", r.joinTok)
		t.Logf("cluster join from the foreign coordinator: err %v\n%s", err, out)
		if err == nil {
			t.Errorf("the join of a coordinator with another CA's certificate succeeded:\n%s", out)
		}
		// The leader tried the handshake, refused it and said so.
		waitUntil(t, "the leader to log the refused handshake", 20*time.Second, func() bool {
			return strings.Contains(l.p.output()[logBefore:], "refused a peer connection")
		})
		if after := r.membership(t); after != before {
			t.Errorf("the refused join changed the cluster:\nbefore\n%s\nafter\n%s", before, after)
		}
		if !r.auditHas(t, "cluster.join", "foreign", "error") {
			t.Error("the refused join is not in the audit trail")
		}
		p.killLeader()
	})

	t.Run("wrong-join-token", func(t *testing.T) {
		// A machine that is not a member, asking to join.
		m := r.newMember(t, 51, "c9", 0)
		m.p = start(t, m.args...)
		r.waitServing(t, m)
		before, logBefore := r.membership(t), len(l.p.output())
		wrong := "cj_" + strings.Repeat("0", 64)
		out, err := r.cliErr("cluster", "join", "--server", m.httpURL(), "--leader", l.httpURL(), "--join-token", wrong)
		t.Logf("cluster join with a wrong token: err %v\n%s", err, out)
		if err == nil || !strings.Contains(out, "401") {
			t.Errorf("a join with a wrong token was not refused with 401: %v\n%s", err, out)
		}
		if !strings.Contains(l.p.output()[logBefore:], "a join with a wrong token was refused") {
			t.Errorf("the leader did not log the refused join:\n%s", l.p.output()[logBefore:])
		}
		if !r.auditHas(t, "cluster.join", "denied") {
			t.Error("the refused join is not in the audit trail")
		}
		if after := r.membership(t); after != before {
			t.Errorf("the refused join changed the cluster:\nbefore\n%s\nafter\n%s", before, after)
		}
		m.p.killLeader()
	})

	t.Run("console-dead-addresses", func(t *testing.T) {
		// One address on a machine that exists but serves nothing there,
		// one where no machine answers at all.
		dead := []string{r.clients.ip + ":4433", r.w.ip(77) + ":4433"}
		err := deadConsole(t, r, dead)
		t.Logf("console given only %v: %v", dead, err)
		var ue *leader.UnreachableError
		if err == nil || !errors.As(err, &ue) {
			t.Fatalf("want an error naming every address, got %v", err)
		}
		for _, a := range dead {
			if !strings.Contains(err.Error(), a) {
				t.Errorf("the error does not name %s: %v", a, err)
			}
		}
	})
}

// deadConsole runs a call, from the clients' namespace, given only addrs,
// and returns how it ended.
func deadConsole(t *testing.T, r *clusterRack, addrs []string) error {
	t.Helper()
	pool, err := pki.CertPool(filepath.Join(r.shared, pki.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := pki.ReadToken(filepath.Join(r.shared, pki.ConsoleToken))
	if err != nil {
		t.Fatal(err)
	}
	c := console.New(console.Config{Servers: addrs, RootCAs: pool, ServerName: "localhost", Token: tok, CallID: "dead-addresses", ConsoleID: "cluster-console",
		Channels: []string{proto.ChannelCaller}, Codec: proto.CodecL16, ReconnectFor: 3 * time.Second})
	go func() {
		for range c.Events() {
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		if err := pinToNetns(r.clients.ns); err != nil {
			done <- err
			return
		}
		done <- c.Run(ctx)
	}()
	if _, err := c.Send(0, make([]byte, 3200), time.Now()); err != nil {
		t.Fatal(err)
	}
	return <-done
}
