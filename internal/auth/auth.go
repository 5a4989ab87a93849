// Package auth is who may do what in callscribe: the roles, the principal a
// credential names, and how a request carries it.
package auth

import (
	"context"
	"net/netip"
)

// Role is what a credential may do.
type Role string

// Roles, from least to most trusted with the rack (not with call content:
// an operator runs the appliance but reads no transcript).
const (
	// Console streams, resumes, ends and reads its own calls.
	Console Role = "console"
	// Supervisor lists and reads or watches any call, and transfers calls
	// between consoles.
	Supervisor Role = "supervisor"
	// Operator sees status and metrics, drains and undrains nodes, manages
	// credentials and reads the audit trail.
	Operator Role = "operator"
)

// Valid reports whether r is one of the roles.
func (r Role) Valid() bool { return r == Console || r == Supervisor || r == Operator }

// Principal is who a request comes from.
type Principal struct {
	// Name is the credential's name: for a console, its console id.
	Name string `json:"name"`
	Role Role   `json:"role"`
	// Cred identifies the credential (revocation ends the sessions it
	// opened).
	Cred string `json:"-"`
	// Remote is the address the request came from.
	Remote netip.Addr `json:"-"`
}

type ctxKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// FromContext returns the principal ctx carries.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(ctxKey{}).(Principal)
	return p, ok
}
