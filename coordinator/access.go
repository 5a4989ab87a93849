package coordinator

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/callscribe/callscribe/coordinator/rack"
	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/internal/audit"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/proto"
)

// staticCredentials are the credentials from files and configuration:
// bare console tokens stand for the console named "console".
func staticCredentials(consoleTokens []string, creds []auth.Static) []auth.Static {
	var out []auth.Static
	for _, t := range consoleTokens {
		out = append(out, auth.Static{Name: "console", Role: auth.Console, Token: t, Source: "config"})
	}
	return append(out, creds...)
}

// Authenticate names who presents a credential (ingest.Authenticator): a
// bearer token, else a verified console client certificate.
func (c *Coordinator) Authenticate(token string, peer *tls.ConnectionState, remote netip.Addr) (auth.Principal, error) {
	var p auth.Principal
	var err error
	switch {
	case token != "":
		p, err = c.auth.Token(token, remote)
	case peer != nil && pki.HasKind(peer.VerifiedChains, pki.KindConsole):
		p, err = c.auth.Certificate(peer.VerifiedChains, remote)
	default:
		err = auth.ErrNoCredential
	}
	if err != nil {
		c.refusedAuth(err)
	}
	return p, err
}

// refusedAuth counts a refusal by its reason (callscribe_auth_refused_total).
func (c *Coordinator) refusedAuth(err error) {
	var te *auth.ThrottledError
	reason := "invalid"
	switch {
	case errors.Is(err, auth.ErrNoCredential):
		reason = "no_credential"
	case errors.As(err, &te):
		reason = "throttled"
	case errors.Is(err, auth.ErrForbidden):
		reason = "forbidden"
	}
	c.metrics.p.authRefused.WithLabelValues(reason).Inc()
}

// Auth returns the coordinator's credential registry (tools in-process).
func (c *Coordinator) Auth() *auth.Registry { return c.auth }

// guard is how a route is reached: the roles it admits, and whether a
// browser ticket may stand in for the credential (server-sent events,
// which EventSource cannot send headers for).
type guard struct {
	roles  []auth.Role
	ticket bool
}

// require admits a request whose credential has one of roles, with its
// principal in the request's context (auth.FromContext).
func (c *Coordinator) require(h http.HandlerFunc, roles ...auth.Role) http.HandlerFunc {
	return c.guarded(guard{roles: roles}, h)
}

func (c *Coordinator) guarded(g guard, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := c.principal(r, g.ticket)
		if err != nil {
			var te *auth.ThrottledError
			switch {
			case errors.As(err, &te):
				w.Header().Set("Retry-After", fmt.Sprint(int(te.RetryAfter.Seconds())+1))
				httpError(w, http.StatusTooManyRequests, err.Error())
			case errors.Is(err, auth.ErrTokenInURL):
				httpError(w, http.StatusBadRequest, err.Error())
			default:
				w.Header().Set("WWW-Authenticate", `Bearer realm="callscribe"`)
				httpError(w, http.StatusUnauthorized, err.Error())
			}
			c.log.Warn("API request refused: not authenticated", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
			return
		}
		if !slices.Contains(g.roles, p.Role) {
			c.refusedAuth(auth.ErrForbidden)
			c.log.Warn("API request refused: role may not", "method", r.Method, "path", r.URL.Path, "name", p.Name, "role", p.Role, "remote", r.RemoteAddr)
			c.denied(r.Context(), p, r.Pattern, "role "+string(p.Role))
			httpError(w, http.StatusForbidden, fmt.Sprintf("%s %s needs the role %s; credential %q is a %s", r.Method, r.URL.Path, roleList(g.roles), p.Name, p.Role))
			return
		}
		h(w, r.WithContext(auth.WithPrincipal(r.Context(), p)))
	}
}

func roleList(roles []auth.Role) string {
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, " or ")
}

// principal authenticates an HTTP request: its bearer token, else its
// console certificate, else (where allowed) a ticket. Tokens in the URL
// are refused: URLs end up in logs and browser histories.
func (c *Coordinator) principal(r *http.Request, ticket bool) (auth.Principal, error) {
	tok, remote, err := auth.Request(r)
	if err != nil {
		return auth.Principal{}, err
	}
	q := r.URL.Query()
	if tok != "" || !ticket || !q.Has("ticket") {
		return c.Authenticate(tok, r.TLS, remote)
	}
	return c.auth.Redeem(q.Get("ticket"), remote)
}

// mayRead reports whether p may read or watch a call: supervisors any,
// consoles their own.
func mayRead(p auth.Principal, rec *store.Call) bool {
	return p.Role == auth.Supervisor || (p.Role == auth.Console && string(rec.Console) == p.Name)
}

// revoked ends every live session a revoked credential opened: console
// streams (QUIC and WebRTC) and transcript watchers (server-sent events).
func (c *Coordinator) revoked(cr auth.Credential) {
	n := c.calls.EndSessions(func(p auth.Principal) bool { return p.Cred == cr.ID },
		&proto.Error{Code: proto.CodeUnauthorized, Message: "credential revoked", Fatal: true})
	if n > 0 {
		c.metrics.p.sessionsEnded.WithLabelValues("revoked").Add(float64(n))
		c.log.Info("sessions of a revoked credential ended", "name", cr.Name, "id", cr.ID, "sessions", n)
	}
}

// SetDraining drains (or undrains) a node (see rack.Rack.SetDraining).
func (c *Coordinator) SetDraining(ctx context.Context, node proto.NodeID, drain bool) error {
	return c.rack.SetDraining(ctx, node, drain)
}

// ErrUnknownNode is returned for a node the coordinator has never seen.
var ErrUnknownNode = rack.ErrUnknownNode

// Transfer hands a call to another console (see calls.Manager.Transfer).
func (c *Coordinator) Transfer(ctx context.Context, id proto.CallID, to proto.ConsoleID) (proto.ConsoleID, error) {
	return c.calls.Transfer(ctx, id, to)
}

func (c *Coordinator) handleTransfer(w http.ResponseWriter, r *http.Request) {
	p, _ := auth.FromContext(r.Context())
	id := proto.CallID(r.PathValue("id"))
	var body struct {
		To proto.ConsoleID `json:"to"`
		// Certificate: the new console authenticates with a client
		// certificate of that name (which the coordinator cannot list).
		Certificate bool `json:"certificate"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&body); err != nil || !proto.ValidID(string(body.To)) || !proto.ValidID(string(id)) {
		httpError(w, http.StatusBadRequest, `the body must be JSON: {"to": "CONSOLE"} with a valid console id`)
		return
	}
	// Only to a console that exists: a call handed to a name nobody holds
	// could not be streamed to.
	switch role := c.auth.RoleOf(string(body.To)); {
	case role != "" && role != auth.Console:
		httpError(w, http.StatusBadRequest, fmt.Sprintf("%q is a %s, not a console", body.To, role))
		return
	case role == "" && !body.Certificate:
		httpError(w, http.StatusBadRequest, fmt.Sprintf(`no console credential is named %q (for a console with a client certificate, add "certificate": true)`, body.To))
		return
	}
	from, err := c.Transfer(r.Context(), id, body.To)
	if err != nil {
		c.auditAs(r.Context(), p, audit.ActionCallTransfer, string(id), "error: "+err.Error(), "to "+string(body.To))
		c.apiError(w, err)
		return
	}
	c.auditAs(r.Context(), p, audit.ActionCallTransfer, string(id), "ok", fmt.Sprintf("from %s to %s", from, body.To))
	writeJSON(w, http.StatusOK, map[string]any{"call_id": id, "from": from, "to": body.To})
}

// apiError answers with a call operation's error.
func (c *Coordinator) apiError(w http.ResponseWriter, err error) {
	if errors.Is(err, store.ErrNotFound) {
		httpError(w, http.StatusNotFound, "no such call")
		return
	}
	pe := ingest.AsProtoError(err)
	httpError(w, ingest.HTTPStatus(pe), pe.Message)
}

// TokenRequest asks for a new credential (POST /v1/tokens).
type TokenRequest struct {
	Name string    `json:"name"`
	Role auth.Role `json:"role"`
}

// TokenResponse carries a new credential's token, shown once.
type TokenResponse struct {
	Token      string          `json:"token"`
	Credential auth.Credential `json:"credential"`
}

func (c *Coordinator) handleTokenAdd(w http.ResponseWriter, r *http.Request) {
	p, _ := auth.FromContext(r.Context())
	var req TokenRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
		httpError(w, http.StatusBadRequest, `the body must be JSON: {"name": "NAME", "role": "console|supervisor|operator"}`)
		return
	}
	if !proto.ValidID(req.Name) {
		httpError(w, http.StatusBadRequest, "name must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
		return
	}
	if !req.Role.Valid() {
		httpError(w, http.StatusBadRequest, fmt.Sprintf("role %q: want console, supervisor or operator", req.Role))
		return
	}
	tok, cr, err := c.auth.Add(r.Context(), req.Name, req.Role)
	if err != nil {
		c.auditAs(r.Context(), p, audit.ActionTokenAdd, req.Name, "error: "+err.Error(), "role "+string(req.Role))
		code := http.StatusServiceUnavailable
		if errors.Is(err, auth.ErrExists) {
			code = http.StatusConflict
		}
		httpError(w, code, err.Error())
		return
	}
	c.auditAs(r.Context(), p, audit.ActionTokenAdd, req.Name, "ok", "role "+string(req.Role)+", id "+cr.ID)
	cr.Hash = ""
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusCreated, TokenResponse{Token: tok, Credential: cr})
}

func (c *Coordinator) handleTokenList(w http.ResponseWriter, r *http.Request) {
	p, _ := auth.FromContext(r.Context())
	c.auditAs(r.Context(), p, audit.ActionTokenList, "", "ok", "")
	writeJSON(w, http.StatusOK, c.auth.List())
}

func (c *Coordinator) handleTokenRevoke(w http.ResponseWriter, r *http.Request) {
	p, _ := auth.FromContext(r.Context())
	name := r.PathValue("name")
	if !proto.ValidID(name) {
		httpError(w, http.StatusBadRequest, "invalid credential name")
		return
	}
	out, err := c.auth.Revoke(r.Context(), name)
	if err != nil {
		c.auditAs(r.Context(), p, audit.ActionTokenRevoke, name, "error: "+err.Error(), "")
		code := http.StatusServiceUnavailable
		if errors.Is(err, auth.ErrLastOperator) {
			code = http.StatusConflict
		}
		httpError(w, code, err.Error())
		return
	}
	c.auditAs(r.Context(), p, audit.ActionTokenRevoke, name, "ok", fmt.Sprintf("%d credentials", len(out)))
	for i := range out {
		out[i].Hash = ""
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": name, "revoked": out})
}

// handleTicket exchanges the request's credential for a short-lived,
// single-use ticket a browser's EventSource may put in the events URL.
func (c *Coordinator) handleTicket(w http.ResponseWriter, r *http.Request) {
	p, _ := auth.FromContext(r.Context())
	t, ttl := c.auth.Ticket(p)
	if t == "" {
		httpError(w, http.StatusServiceUnavailable, "too many tickets outstanding")
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]any{"ticket": t, "expires_in_s": int(ttl.Seconds())})
}

func (c *Coordinator) handleWhoami(w http.ResponseWriter, r *http.Request) {
	p, _ := auth.FromContext(r.Context())
	writeJSON(w, http.StatusOK, p)
}
