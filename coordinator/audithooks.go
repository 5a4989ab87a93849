package coordinator

import (
	"context"

	"github.com/callscribe/callscribe/internal/auth"
)

// auditAs records what p did in the audit trail.
// TODO(#13): wire to the audit log.
func (c *Coordinator) auditAs(ctx context.Context, p auth.Principal, action, target, outcome, detail string) {
}

// denied records a refusal of an authenticated principal.
func (c *Coordinator) denied(ctx context.Context, p auth.Principal, what, why string) {
	c.auditAs(ctx, p, "auth.denied", what, "denied", why)
}
