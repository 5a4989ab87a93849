package auth

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// memPersister keeps credentials in memory (the store in production).
type memPersister struct {
	mu sync.Mutex
	m  map[string]Credential
}

func (p *memPersister) PutCredential(_ context.Context, c Credential) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.m[c.ID] = c
	return nil
}

func (p *memPersister) Credentials() ([]Credential, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Credential
	for _, c := range p.m {
		out = append(out, c)
	}
	return out, nil
}

var home = netip.MustParseAddr("10.0.0.1")

func TestRegistry(t *testing.T) {
	p := &memPersister{m: map[string]Credential{}}
	static := []Static{{Name: "console", Role: Console, Token: "file-console-token-0123", Source: "file"}}
	var revoked []Credential
	r, err := NewRegistry(p, static, Options{OnRevoke: func(c Credential) { revoked = append(revoked, c) }})
	if err != nil {
		t.Fatal(err)
	}
	if pr, err := r.Token("file-console-token-0123", home); err != nil || pr.Name != "console" || pr.Role != Console {
		t.Fatalf("static token: %+v %v", pr, err)
	}
	tok, c, err := r.Add(context.Background(), "sup-1", Supervisor)
	if err != nil {
		t.Fatal(err)
	}
	if c.Hash != HashToken(tok) || p.m[c.ID].Hash != c.Hash {
		t.Fatal("the stored credential is not the token's hash")
	}
	if pr, err := r.Token(tok, home); err != nil || pr.Role != Supervisor || !r.Active(pr) {
		t.Fatalf("new token: %+v %v", pr, err)
	}
	if _, _, err := r.Add(context.Background(), "sup-1", Operator); !errors.Is(err, ErrExists) {
		t.Fatalf("a name with two roles: %v", err)
	}
	// The last operator cannot be revoked (no one could manage
	// credentials any more); with a second one it can.
	if _, _, err := r.Add(context.Background(), "op-1", Operator); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Revoke(context.Background(), "op-1"); !errors.Is(err, ErrLastOperator) {
		t.Fatalf("revoking the last operator: %v", err)
	}
	if _, _, err := r.Add(context.Background(), "op-2", Operator); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Revoke(context.Background(), "op-1"); err != nil {
		t.Fatalf("revoking one of two operators: %v", err)
	}
	// Revoking a static token survives a restart (a new registry on the
	// same store with the same files).
	if _, err := r.Revoke(context.Background(), "console"); err != nil {
		t.Fatal(err)
	}
	if len(revoked) == 0 {
		t.Fatal("OnRevoke not called")
	}
	r2, err := NewRegistry(p, static, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Token("file-console-token-0123", home); !errors.Is(err, ErrInvalid) {
		t.Fatalf("revoked static token after a restart: %v", err)
	}
	if _, err := r2.Token(tok, home); err != nil {
		t.Fatalf("the other token after a restart: %v", err)
	}
	// A revoked name also refuses console certificates of that name.
	if _, err := r2.Certificate(nil, home); !errors.Is(err, ErrNoCredential) {
		t.Fatalf("no certificate: %v", err)
	}
}

func TestTicketsAndThrottle(t *testing.T) {
	p := &memPersister{m: map[string]Credential{}}
	r, err := NewRegistry(p, []Static{{Name: "c", Role: Console, Token: "console-token-0123456", Source: "config"},
		{Name: "d", Role: Console, Token: "other-console-token-01", Source: "config"}}, Options{FailuresPerMinute: 2, TicketTTL: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	pr, _ := r.Token("console-token-0123456", home)
	tk, _ := r.Ticket(pr)
	if got, err := r.Redeem(tk, home); err != nil || got.Name != "c" {
		t.Fatalf("redeem: %+v %v", got, err)
	}
	if _, err := r.Redeem(tk, home); err == nil {
		t.Fatal("a ticket redeemed twice")
	}
	tk, _ = r.Ticket(pr)
	time.Sleep(80 * time.Millisecond)
	if _, err := r.Redeem(tk, netip.MustParseAddr("10.0.0.9")); err == nil {
		t.Fatal("an expired ticket redeemed")
	}
	// home has failed twice now (the reused ticket and… one more guess).
	_, _ = r.Token("guess-guess-guess-guess", home)
	// Throttled: any token not yet seen working from here, valid or not…
	var te *ThrottledError
	if _, err := r.Token("other-console-token-01", home); !errors.As(err, &te) || te.RetryAfter <= 0 {
		t.Fatalf("after the failures: %v, want throttled", err)
	}
	if _, err := r.Token("guess-guess-guess-guess-2", home); !errors.As(err, &te) {
		t.Fatalf("a guess after the failures: %v, want throttled", err)
	}
	// …but a console that already worked from this address goes on.
	if _, err := r.Token("console-token-0123456", home); err != nil {
		t.Fatalf("a known console behind the guesser's address: %v", err)
	}
	if _, err := r.Token("console-token-0123456", netip.MustParseAddr("10.0.0.2")); err != nil {
		t.Fatalf("another address: %v", err)
	}
}

// A registry that reads the same store as another (a follower of a
// cluster) sees the other's additions and revocations once it reloads.
func TestReloadSeesAnotherWriter(t *testing.T) {
	p := &memPersister{m: map[string]Credential{}}
	static := []Static{{Name: "operator", Role: Operator, Token: "file-operator-token-0123", Source: "file"}}
	leader, err := NewRegistry(p, static, Options{})
	if err != nil {
		t.Fatal(err)
	}
	follower, err := NewRegistry(p, static, Options{})
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := leader.Add(context.Background(), "op-2", Operator)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := follower.Token(tok, home); err == nil {
		t.Fatal("the follower knew a credential before reloading")
	}
	if err := follower.Reload(); err != nil {
		t.Fatal(err)
	}
	if pr, err := follower.Token(tok, home); err != nil || pr.Role != Operator {
		t.Fatalf("after reload: %+v %v", pr, err)
	}
	if _, err := leader.Revoke(context.Background(), "op-2"); err != nil {
		t.Fatal(err)
	}
	if err := follower.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := follower.Token(tok, home); err == nil {
		t.Fatal("a revoked credential still works on the follower after reload")
	}
}
