package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/callscribe/callscribe/internal/audit"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/proto"
)

// Actors that are not a request's principal.
const (
	ActorSystem   = "system"   // the coordinator itself (a SIGHUP reload)
	ActorExporter = "exporter" // the outbox's deliveries
)

// ErrAuditUnavailable is returned (and answered with 503) when an action's
// audit entry cannot be made durable: the action is refused.
var ErrAuditUnavailable = errors.New("audit trail unavailable")

// Audit appends an entry for an action by the principal ctx carries
// (auth.FromContext: who and from where) and returns once it is durable.
// outcome is audit.OutcomeOK, audit.OutcomeDenied or audit.ErrorOutcome(err).
// An error wraps ErrAuditUnavailable; a caller that fails closed refuses
// the action.
func (c *Coordinator) Audit(ctx context.Context, action, target, outcome, detail string) error {
	e := audit.Entry{Actor: "anonymous", Action: action, Target: target, Outcome: outcome, Detail: detail}
	if p, ok := auth.FromContext(ctx); ok {
		e.Actor, e.Role = p.Name, string(p.Role)
		if p.Remote.IsValid() {
			e.Remote = p.Remote.String()
		}
	}
	return c.appendAudit(ctx, e)
}

// AuditAs appends an entry for an action by an actor that is not a
// request's principal (ActorSystem, ActorExporter).
func (c *Coordinator) AuditAs(ctx context.Context, actor, action, target, outcome, detail string) error {
	return c.appendAudit(ctx, audit.Entry{Actor: actor, Action: action, Target: target, Outcome: outcome, Detail: detail})
}

// auditAppender is where audit entries go: the store (tests put a failing
// one in its place).
type auditAppender interface {
	AppendAudit(ctx context.Context, e audit.Entry) (audit.Entry, error)
}

func (c *Coordinator) appendAudit(ctx context.Context, e audit.Entry) error {
	e.Time = time.Now().UTC()
	var to auditAppender = c.store
	if t := c.auditTo.Load(); t != nil {
		to = *t
	}
	if _, err := to.AppendAudit(ctx, e); err != nil {
		c.log.Error("audit: entry not recorded", "action", e.Action, "actor", e.Actor, "target", e.Target, "outcome", e.Outcome, "err", err)
		return fmt.Errorf("%w: %w", ErrAuditUnavailable, err)
	}
	select {
	case c.auditKick <- struct{}{}:
	default:
	}
	return nil
}

// audited records a read as it is answered: the entry, with the outcome
// the status code says, is made durable before the first byte of the
// answer leaves. If it cannot be, a successful answer is replaced by 503
// and nothing of it is sent (fail closed); the target is the path's {id}.
// A server-sent event stream is recorded once, when it starts.
func (c *Coordinator) audited(action string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		r = r.WithContext(ctx)
		aw := &auditWriter{ResponseWriter: w, c: c, r: r, action: action, cancel: cancel}
		h(aw, r)
		if !aw.decided {
			aw.WriteHeader(http.StatusOK)
		}
	}
}

// auditWriter holds an answer's status until its audit entry is durable.
type auditWriter struct {
	http.ResponseWriter
	c       *Coordinator
	r       *http.Request
	action  string
	decided bool
	refused bool
	cancel  context.CancelFunc // ends the handler's context once refused
}

var errAuditRefused = errors.New("answer refused: its audit entry could not be recorded")

func (a *auditWriter) WriteHeader(code int) {
	if a.decided {
		if !a.refused {
			a.ResponseWriter.WriteHeader(code)
		}
		return
	}
	a.decided = true
	outcome := audit.OutcomeOK
	switch {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		outcome = audit.OutcomeDenied
	case code >= 400:
		outcome = "error: " + strconv.Itoa(code) + " " + http.StatusText(code)
	}
	target := a.r.PathValue("id")
	if !proto.ValidID(target) && target != "" {
		target = strconv.QuoteToASCII(target) // never raw control characters in the trail
	}
	err := a.c.Audit(a.r.Context(), a.action, target, outcome, "")
	if err != nil && code < 400 {
		a.refused = true
		a.cancel()
		h := a.ResponseWriter.Header()
		for _, k := range []string{"Content-Type", "Content-Length", "Cache-Control", "X-Accel-Buffering"} {
			h.Del(k)
		}
		httpError(a.ResponseWriter, http.StatusServiceUnavailable, err.Error()+": the request is refused")
		if f, ok := a.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		return
	}
	a.ResponseWriter.WriteHeader(code)
}

func (a *auditWriter) Write(b []byte) (int, error) {
	if !a.decided {
		a.WriteHeader(http.StatusOK)
	}
	if a.refused {
		return 0, errAuditRefused
	}
	return a.ResponseWriter.Write(b)
}

// Flush lets a server-sent event stream through (http.Flusher).
func (a *auditWriter) Flush() {
	if !a.decided {
		a.WriteHeader(http.StatusOK)
	}
	if a.refused {
		return
	}
	if f, ok := a.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the underlying writer.
func (a *auditWriter) Unwrap() http.ResponseWriter { return a.ResponseWriter }

// AuditPage is the GET /v1/audit document.
type AuditPage struct {
	Entries []audit.Entry `json:"entries"`
	// Head is the newest durable entry (read after the entries).
	Head audit.Head `json:"head"`
}

// maxAuditPage bounds one GET /v1/audit answer.
const maxAuditPage = 1000

// handleAudit serves GET /v1/audit?after=N&limit=M: entries after seq N
// (default 0), at most M (default and at most 1000), and the head. Reading
// the audit trail is not itself audited: every read would grow the log.
func (c *Coordinator) handleAudit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var after uint64
	limit := maxAuditPage
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			httpError(w, http.StatusBadRequest, "after is a seq (a whole number)")
			return
		}
		after = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			httpError(w, http.StatusBadRequest, "limit is a whole number of entries, at least 1")
			return
		}
		limit = min(n, maxAuditPage)
	}
	es, err := c.store.AuditEntries(after, limit)
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	head, err := c.store.AuditLast()
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if es == nil {
		es = []audit.Entry{}
	}
	writeJSON(w, http.StatusOK, AuditPage{Entries: es, Head: head})
}
