package coordinator

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/proto"
)

// DefaultCallsLimit is how many calls a page of GET /v1/calls holds when
// the request names no limit (at most store.CallsPageMax).
const DefaultCallsLimit = 100

// CallList is a page of GET /v1/calls: calls newest first, and the cursor
// that fetches the next page ("" after the last). A page may hold fewer
// calls than the limit (even none) with a cursor all the same: the store
// examines a bounded number of calls per page.
type CallList struct {
	Calls      []CallView `json:"calls"`
	NextCursor string     `json:"next_cursor"`
}

// callsQuery reads GET /v1/calls's parameters — limit, cursor, state,
// since (RFC 3339) — for principal p: a console sees its own calls only.
func callsQuery(r *http.Request, p auth.Principal) (f store.CallFilter, cursor string, limit int, err error) {
	q := r.URL.Query()
	limit = DefaultCallsLimit
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > store.CallsPageMax {
			return f, "", 0, fmt.Errorf("limit is a number of calls from 1 to %d", store.CallsPageMax)
		}
	}
	switch f.State = q.Get("state"); f.State {
	case "", store.StateOpen, store.StateStreaming, store.StateEnded, store.StateFinalised:
	default:
		return f, "", 0, fmt.Errorf("state is one of %s, %s, %s, %s", store.StateOpen, store.StateStreaming, store.StateEnded, store.StateFinalised)
	}
	if v := q.Get("since"); v != "" {
		if f.Since, err = time.Parse(time.RFC3339Nano, v); err != nil {
			return f, "", 0, fmt.Errorf("since is a time in RFC 3339 (2006-01-02T15:04:05Z)")
		}
	}
	if p.Role != auth.Supervisor {
		f.Console = proto.ConsoleID(p.Name)
	}
	return f, q.Get("cursor"), limit, nil
}
