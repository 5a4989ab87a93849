// Package leader lets a client of a coordinator cluster find the leader and
// follow it. Only the leader serves; a follower answers a client's first
// message with proto's not_leader error, naming the leader and every
// member. Targets keeps a client's list of coordinator addresses and tells
// it which to dial next and how long to wait first; consoles, agents and
// workers share it, so they all follow the same rules (PROTOCOL.md,
// "Coordinator clusters"). CheckRedirect is the same rule for HTTP clients:
// a follower answers them with 307 to the leader.
package leader

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/proto"
)

// Targets is a client's list of coordinator addresses (QUIC host:port): the
// configured ones, then those learned from not_leader answers. It is safe
// for concurrent use.
//
// A client loops: addr := Next(); dial addr; Connected(addr) once the
// coordinator welcomed it; when the attempt or the session ends, Redirect
// for a not_leader answer, else Failed; wait what either returns; repeat.
type Targets struct {
	mu         sync.Mutex
	addrs      []string
	configured int // addrs[:configured] were given; the rest were learned
	pos        int // next address in turn
	hint       string
	// round is the addresses that failed since the last pause or session,
	// with their errors, in the order they failed.
	round      []string
	roundErr   map[string]error
	hops       int // not_leader answers followed at once in a row
	connAddr   string
	connAt     time.Time
	backoff    time.Duration
	minBackoff time.Duration
	maxBackoff time.Duration
	now        func() time.Time // time.Now; tests move it
}

// New returns the targets for addrs, de-duplicated in order. Addresses are
// not checked here (a bad one fails to dial, and says so); see ParseList.
func New(addrs []string) *Targets {
	t := &Targets{roundErr: map[string]error{}, minBackoff: tuning.ReconnectMin, maxBackoff: tuning.ReconnectMax, now: time.Now}
	for _, a := range addrs {
		if a = strings.TrimSpace(a); a != "" && !slices.Contains(t.addrs, a) {
			t.addrs = append(t.addrs, a)
		}
	}
	t.configured = len(t.addrs)
	t.backoff = t.minBackoff
	return t
}

// Addrs returns every address known: the configured ones, then those
// learned from not_leader answers.
func (t *Targets) Addrs() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.addrs)
}

// String lists the addresses, comma-separated (for logs and flags).
func (t *Targets) String() string { return strings.Join(t.Addrs(), ",") }

// Next returns the address to dial next: the leader a not_leader answer
// named, once, else the addresses in turn. It returns "" when there are
// none.
func (t *Targets) Next() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if h := t.hint; h != "" {
		t.hint = ""
		return h
	}
	if len(t.addrs) == 0 {
		return ""
	}
	// Not wrapped here: when members join, the turn goes on from where
	// it was instead of starting again.
	i := t.pos % len(t.addrs)
	t.pos = i + 1
	return t.addrs[i]
}

// Connected records that the coordinator at addr accepted the client (its
// welcome came): the run of failures and redirects is over.
func (t *Targets) Connected(addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.connAddr, t.connAt = addr, t.now()
	t.clearRound()
	t.hops = 0
}

// Failed records that an attempt at addr failed with err: the dial, the
// first exchange, or a session Connected had reported. It returns how long
// to wait before dialling Next, and the error to report:
//
//   - a session that had been established: the pause (it starts again from
//     the shortest after a session that lasted tuning.ReconnectStable),
//     and err;
//   - an attempt that never got a welcome: no wait while some address has
//     not failed since the last pause, and err; once every address has,
//     the pause, and an *UnreachableError naming each address and its
//     error.
func (t *Targets) Failed(addr string, err error) (time.Duration, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if addr == t.connAddr && !t.connAt.IsZero() {
		if t.now().Sub(t.connAt) >= tuning.ReconnectStable {
			t.backoff = t.minBackoff
		}
		t.connAddr, t.connAt = "", time.Time{}
		t.clearRound()
		// The coordinator that just failed is tried last (a dead leader
		// reached through a redirect would otherwise come round first),
		// and a follower still naming it as the leader is not followed at
		// once.
		if i := slices.Index(t.addrs, addr); i >= 0 {
			t.pos = i + 1
		}
		t.round = append(t.round, addr)
		t.roundErr[addr] = err
		return t.pauseLocked(), err
	}
	if _, ok := t.roundErr[addr]; !ok {
		t.round = append(t.round, addr)
	}
	t.roundErr[addr] = err
	for _, a := range t.addrs {
		if _, ok := t.roundErr[a]; !ok {
			return 0, err
		}
	}
	ue := &UnreachableError{Addrs: slices.Clone(t.round)}
	for _, a := range t.round {
		ue.Errs = append(ue.Errs, t.roundErr[a])
	}
	t.clearRound()
	return t.pauseLocked(), ue
}

// Redirect records a follower's not_leader answer: its members join the
// list (at most tuning.MaxCoordinators addresses are kept; malformed ones
// are ignored) and the leader it names is dialled next. It returns how
// long to wait first: nothing when a leader is named, unless that address
// already failed since the last pause or more than tuning.RedirectHops
// answers came in a row; a pause when no leader is elected yet.
func (t *Targets) Redirect(e *proto.Error) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, m := range e.Members {
		if i >= tuning.MaxCoordinators {
			break
		}
		t.learnLocked(m)
	}
	ldr := e.Leader
	if !Valid(ldr) {
		ldr = ""
	}
	t.learnLocked(ldr)
	t.connAddr, t.connAt = "", time.Time{} // a session that ended so is over
	t.hops++
	t.hint = ldr // the latest answer counts: none while an election runs
	if ldr != "" {
		if _, failed := t.roundErr[ldr]; !failed && t.hops <= tuning.RedirectHops {
			return 0
		}
	}
	t.hops = 0
	return t.pauseLocked()
}

// learnLocked adds a well-formed address not yet known, while the list is
// under its bound.
func (t *Targets) learnLocked(a string) {
	if Valid(a) && !slices.Contains(t.addrs, a) && len(t.addrs) < max(t.configured, tuning.MaxCoordinators) {
		t.addrs = append(t.addrs, a)
	}
}

func (t *Targets) clearRound() {
	t.round = t.round[:0]
	clear(t.roundErr)
}

// pauseLocked returns the current pause, jittered between half and all of
// it, and doubles it for next time (up to the maximum).
func (t *Targets) pauseLocked() time.Duration {
	b := t.backoff
	t.backoff = min(2*t.backoff, t.maxBackoff)
	return b/2 + rand.N(b/2+1)
}

// UnreachableError says that no coordinator of the list could be reached:
// each address with the error it failed with, in the order tried.
type UnreachableError struct {
	Addrs []string
	Errs  []error
}

func (e *UnreachableError) Error() string {
	var b strings.Builder
	b.WriteString("no coordinator reachable at ")
	b.WriteString(strings.Join(e.Addrs, ", "))
	for i, err := range e.Errs {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		msg := "failed"
		if err != nil {
			msg = err.Error()
		}
		if !strings.Contains(msg, e.Addrs[i]) {
			msg = e.Addrs[i] + ": " + msg
		}
		b.WriteString(msg)
	}
	return b.String()
}

// Unwrap returns each address's error.
func (e *UnreachableError) Unwrap() []error { return e.Errs }

// Valid reports whether addr is a well-formed coordinator address: a
// non-empty host and a port number, as net.SplitHostPort reads them.
func Valid(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || len(host) > 253 {
		return false
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return false
	}
	return !strings.ContainsFunc(host, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r == '/' })
}

// ParseList reads a comma-separated list of coordinator addresses
// (host:port), as a flag or configuration key gives it. Blanks around the
// commas are ignored; a malformed address is an error naming it.
func ParseList(s string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if !Valid(a) {
			return nil, fmt.Errorf("coordinator address %q: want host:port", a)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, errors.New("no coordinator address given")
	}
	return out, nil
}
