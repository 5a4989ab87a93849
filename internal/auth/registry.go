package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Credential is a credential the coordinator knows. Tokens are never kept:
// only their SHA-256.
type Credential struct {
	// ID names the credential in logs and the audit trail (a prefix of its
	// hash, or "cert:NAME" for a client certificate name).
	ID   string `json:"id"`
	Name string `json:"name"`
	Role Role   `json:"role"`
	// Hash is the hex SHA-256 of the token (empty for certificate names).
	Hash string `json:"hash,omitempty"`
	// Source says where it came from: "api" (token add), "file"
	// (DATA/console.token, DATA/operator.token), "config" (console_tokens)
	// or "certificate" (a revoked client certificate name).
	Source  string     `json:"source"`
	Created time.Time  `json:"created"`
	Revoked *time.Time `json:"revoked,omitempty"`
	// sum is Hash decoded, for the active set's comparisons (not stored).
	sum []byte
}

// Static is a credential from a file or the configuration: not stored,
// but revocable (the revocation is stored).
type Static struct {
	Name, Token, Source string
	Role                Role
}

// Persister keeps credentials durable (the coordinator's store).
type Persister interface {
	PutCredential(ctx context.Context, c Credential) error
	Credentials() ([]Credential, error)
}

// Errors of authentication. The messages are what a client is told.
var (
	ErrNoCredential = errors.New("a credential is required (Authorization: Bearer TOKEN, or a console certificate)")
	ErrInvalid      = errors.New("invalid or revoked credential")
	ErrForbidden    = errors.New("forbidden")
	ErrTokenInURL   = errors.New("tokens are not accepted in URLs: send Authorization: Bearer TOKEN (browsers: exchange it for a ticket at POST /v1/tickets)")
	ErrExists       = errors.New("credential name already used")
	// ErrLastOperator refuses to revoke the last operator credential: no
	// one could manage credentials any more.
	ErrLastOperator = errors.New("that is the last operator credential: add another operator first")
)

// ThrottledError refuses an address that failed to authenticate too often.
type ThrottledError struct{ RetryAfter time.Duration }

func (e *ThrottledError) Error() string {
	return fmt.Sprintf("too many failed authentications from this address: retry in %s", e.RetryAfter.Round(time.Second))
}

// Options tune a Registry.
type Options struct {
	// FailuresPerMinute is how many failed authentications one address may
	// make in a minute before it is refused until the oldest ages out
	// (default 10).
	FailuresPerMinute int
	// TicketTTL is how long a browser ticket may wait to be redeemed
	// (default 30 s).
	TicketTTL time.Duration
	Logger    *slog.Logger
	// OnRevoke is told of every revoked credential: the sessions it opened
	// end.
	OnRevoke func(Credential)
}

// Registry authenticates tokens, client certificates and tickets, and
// manages the credentials.
type Registry struct {
	o       Options
	persist Persister
	limit   *limiter

	// change serialises changes (Add, Revoke, SetStatic), across their
	// store writes; mu guards the in-memory records and is never held
	// across I/O (List and the metrics take it).
	change sync.Mutex
	mu     sync.Mutex
	stored []Credential // every persisted record, revoked ones included
	static []Static
	// active is what authenticates: immutable snapshots.
	active atomic.Pointer[[]Credential]
	// revokedCerts are client certificate names that no longer pass.
	revokedCerts atomic.Pointer[map[string]bool]

	tmu     sync.Mutex
	tickets map[string]ticket
}

// NewRegistry loads the persisted credentials and adds the static ones.
func NewRegistry(p Persister, static []Static, o Options) (*Registry, error) {
	if o.FailuresPerMinute <= 0 {
		o.FailuresPerMinute = 10
	}
	if o.TicketTTL <= 0 {
		o.TicketTTL = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	stored, err := p.Credentials()
	if err != nil {
		return nil, fmt.Errorf("auth: load credentials: %w", err)
	}
	r := &Registry{o: o, persist: p, stored: stored, limit: newLimiter(o.FailuresPerMinute, time.Minute), tickets: map[string]ticket{}}
	if err := r.SetStatic(static); err != nil {
		return nil, err
	}
	return r, nil
}

// HashToken is the hex SHA-256 of a token.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

func idOf(hash string) string { return hash[:16] }

// SetStatic replaces the credentials from files and configuration (at
// start and on reload). A static token that was revoked stays revoked.
func (r *Registry) SetStatic(static []Static) error {
	for _, s := range static {
		if !s.Role.Valid() {
			return fmt.Errorf("auth: credential %q: unknown role %q", s.Name, s.Role)
		}
		if len(s.Token) < 16 {
			return fmt.Errorf("auth: credential %q: token shorter than 16 characters", s.Name)
		}
	}
	r.change.Lock()
	defer r.change.Unlock()
	r.mu.Lock()
	var before []Credential
	if a := r.active.Load(); a != nil {
		before = *a
	}
	r.static = slices.Clone(static)
	r.rebuildLocked()
	after := *r.active.Load()
	r.mu.Unlock()
	// A credential taken out of the files or the configuration is revoked
	// like any other: its live sessions end.
	for _, c := range before {
		if c.Source == "api" || slices.ContainsFunc(after, func(a Credential) bool { return a.ID == c.ID }) {
			continue
		}
		r.o.Logger.Info("credential removed from the configuration: its sessions end", "name", c.Name, "role", c.Role, "id", c.ID)
		if r.o.OnRevoke != nil {
			r.o.OnRevoke(c)
		}
	}
	return nil
}

// Reload reads the persisted credentials again: a follower of a cluster
// sees the credentials the leader added or revoked since it started.
func (r *Registry) Reload() error {
	r.change.Lock()
	defer r.change.Unlock()
	stored, err := r.persist.Credentials()
	if err != nil {
		return fmt.Errorf("auth: load credentials: %w", err)
	}
	r.mu.Lock()
	r.stored = stored
	r.rebuildLocked()
	r.mu.Unlock()
	return nil
}

// rebuildLocked recomputes the active set. Caller holds r.mu.
func (r *Registry) rebuildLocked() {
	revoked := map[string]bool{}
	certs := map[string]bool{}
	var act []Credential
	for _, c := range r.stored {
		switch {
		case c.Revoked != nil && c.Hash != "":
			revoked[c.Hash] = true
		case c.Revoked != nil && c.Source == "certificate":
			certs[c.Name] = true
		case c.Revoked == nil && c.Hash != "":
			act = append(act, c)
		}
	}
	act = slices.DeleteFunc(act, func(c Credential) bool { return revoked[c.Hash] })
	for _, s := range r.static {
		h := HashToken(s.Token)
		if revoked[h] {
			continue
		}
		act = append(act, Credential{ID: idOf(h), Name: s.Name, Role: s.Role, Hash: h, Source: s.Source})
	}
	for i := range act { // decoded once here, not on every authentication
		act[i].sum, _ = hex.DecodeString(act[i].Hash)
	}
	r.active.Store(&act)
	r.revokedCerts.Store(&certs)
}

// Token authenticates a bearer token from remote.
func (r *Registry) Token(token string, remote netip.Addr) (Principal, error) {
	if token == "" {
		return Principal{}, ErrNoCredential
	}
	sum := sha256.Sum256([]byte(token))
	var found *Credential
	act := *r.active.Load()
	for i := range act {
		// Every credential is compared, in constant time: how long this
		// takes says nothing of which one matched.
		if subtle.ConstantTimeCompare(sum[:], act[i].sum) == 1 {
			found = &act[i]
		}
	}
	// An address that failed too often is refused whatever it presents,
	// except a credential that already succeeded from it: guessing gains
	// nothing, and a console behind the same address as a guesser (a NAT)
	// keeps working.
	if wait := r.limit.blocked(remote); wait > 0 && (found == nil || !r.limit.knownGood(remote, found.ID)) {
		return Principal{}, &ThrottledError{RetryAfter: wait}
	}
	if found == nil {
		r.limit.fail(remote)
		r.o.Logger.Warn("authentication failed: invalid or revoked token", "remote", remote)
		return Principal{}, ErrInvalid
	}
	r.limit.good(remote, found.ID)
	return Principal{Name: found.Name, Role: found.Role, Cred: found.ID, Remote: remote}, nil
}

// Certificate authenticates a verified client certificate chain of kind
// console (the caller checked kind and chain); its common name is the
// console's name.
func (r *Registry) Certificate(chains [][]*x509.Certificate, remote netip.Addr) (Principal, error) {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return Principal{}, ErrNoCredential
	}
	name := chains[0][0].Subject.CommonName
	if name == "" {
		return Principal{}, ErrInvalid
	}
	if (*r.revokedCerts.Load())[name] {
		r.o.Logger.Warn("authentication failed: revoked certificate name", "name", name, "remote", remote)
		return Principal{}, ErrInvalid
	}
	return Principal{Name: name, Role: Console, Cred: "cert:" + name, Remote: remote}, nil
}

// Active reports whether the credential p was authenticated with still
// passes (tickets and long-lived sessions check it).
func (r *Registry) Active(p Principal) bool {
	if name, ok := strings.CutPrefix(p.Cred, "cert:"); ok {
		return !(*r.revokedCerts.Load())[name]
	}
	for _, c := range *r.active.Load() {
		if c.ID == p.Cred {
			return true
		}
	}
	return false
}

// RoleOf returns the role of name's active tokens ("" when it has none;
// client certificates are not registered: a certificate's name is unknown
// here).
func (r *Registry) RoleOf(name string) Role {
	for _, c := range *r.active.Load() {
		if c.Name == name {
			return c.Role
		}
	}
	return ""
}

// NewToken returns a random token (32 bytes, URL-safe base64).
func NewToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// Add creates a credential and returns its token, usable at once. A name
// may hold several tokens, all of one role.
func (r *Registry) Add(ctx context.Context, name string, role Role) (string, Credential, error) {
	if !role.Valid() {
		return "", Credential{}, fmt.Errorf("unknown role %q (console, supervisor or operator)", role)
	}
	r.change.Lock()
	defer r.change.Unlock()
	for _, c := range *r.active.Load() {
		if c.Name == name && c.Role != role {
			return "", Credential{}, fmt.Errorf("%w: %q is a %s", ErrExists, name, c.Role)
		}
	}
	tok := NewToken()
	h := HashToken(tok)
	c := Credential{ID: idOf(h), Name: name, Role: role, Hash: h, Source: "api", Created: time.Now().UTC()}
	if err := r.persist.PutCredential(ctx, c); err != nil {
		return "", Credential{}, fmt.Errorf("auth: store credential: %w", err)
	}
	r.mu.Lock()
	r.stored = append(r.stored, c)
	r.rebuildLocked()
	r.mu.Unlock()
	r.o.Logger.Info("credential added", "name", name, "role", role, "id", c.ID)
	return tok, c, nil
}

// Revoke revokes every credential named name (tokens of any source, and
// client certificates with that common name) and ends their sessions. It
// returns what it revoked.
func (r *Registry) Revoke(ctx context.Context, name string) ([]Credential, error) {
	r.change.Lock()
	defer r.change.Unlock()
	now := time.Now().UTC()
	var out []Credential
	for _, c := range *r.active.Load() {
		if c.Name != name {
			continue
		}
		c.Revoked = &now
		if c.Created.IsZero() {
			c.Created = now
		}
		out = append(out, c)
	}
	operators := 0
	for _, c := range *r.active.Load() {
		if c.Role == Operator && c.Name != name {
			operators++
		}
	}
	if operators == 0 && slices.ContainsFunc(out, func(c Credential) bool { return c.Role == Operator }) {
		return nil, ErrLastOperator
	}
	certs := *r.revokedCerts.Load()
	// Client certificates are not registered when issued: revoking a
	// console name also refuses certificates with that common name.
	var cert *Credential
	if !certs[name] {
		cert = &Credential{ID: "cert:" + name, Name: name, Role: Console, Source: "certificate", Created: now, Revoked: &now}
	}
	if cert != nil {
		out = append(out, *cert)
	}
	for _, c := range out {
		if err := r.persist.PutCredential(ctx, c); err != nil {
			return nil, fmt.Errorf("auth: store revocation: %w", err)
		}
	}
	r.mu.Lock()
	for _, c := range out {
		r.stored = slices.DeleteFunc(r.stored, func(s Credential) bool { return s.ID == c.ID })
		r.stored = append(r.stored, c)
	}
	r.rebuildLocked()
	r.mu.Unlock()
	r.tmu.Lock()
	for k, t := range r.tickets {
		if t.p.Name == name {
			delete(r.tickets, k)
		}
	}
	r.tmu.Unlock()
	for _, c := range out {
		r.o.Logger.Info("credential revoked", "name", name, "role", c.Role, "id", c.ID, "source", c.Source)
		if r.o.OnRevoke != nil {
			r.o.OnRevoke(c)
		}
	}
	return out, nil
}

// List returns the active credentials, then the revoked ones, without
// hashes.
func (r *Registry) List() []Credential {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Credential
	for _, c := range *r.active.Load() {
		c.Hash = ""
		out = append(out, c)
	}
	for _, c := range r.stored {
		if c.Revoked != nil {
			c.Hash = ""
			out = append(out, c)
		}
	}
	return out
}
