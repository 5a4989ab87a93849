package coordinator

import (
	"context"
	"time"

	"github.com/callscribe/callscribe/internal/audit"
	"github.com/callscribe/callscribe/internal/auth"
)

// auditAs records in the audit trail what p did, after the fact (credential
// changes, transfers, refusals). An entry that cannot be made durable is
// logged: the act has already happened.
func (c *Coordinator) auditAs(ctx context.Context, p auth.Principal, action, target, outcome, detail string) {
	if err := c.Audit(auth.WithPrincipal(ctx, p), action, target, outcome, detail); err != nil {
		c.log.Error("audit entry not recorded", "action", action, "target", target, "actor", p.Name, "err", err)
	}
}

// denied records a refusal of an authenticated principal (wrong role, or
// another console's call). Unauthenticated refusals are only logged: a
// flood of them must not grow the trail.
//
// At most one entry per credential every deniedEvery: a credential that
// keeps knocking cannot grow the trail (and the store) at will; every
// refusal is logged.
func (c *Coordinator) denied(ctx context.Context, p auth.Principal, what, why string) {
	now := time.Now()
	c.deniedMu.Lock()
	last, seen := c.deniedAt[p.Cred]
	if seen && now.Sub(last) < deniedEvery {
		c.deniedMu.Unlock()
		return
	}
	if len(c.deniedAt) > 10000 {
		clear(c.deniedAt)
	}
	if c.deniedAt == nil {
		c.deniedAt = map[string]time.Time{}
	}
	c.deniedAt[p.Cred] = now
	c.deniedMu.Unlock()
	c.auditAs(ctx, p, audit.ActionAuthDenied, what, audit.OutcomeDenied, why)
}

// deniedEvery is how often one credential's refusals are recorded.
const deniedEvery = 10 * time.Second
