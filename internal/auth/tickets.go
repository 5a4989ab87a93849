package auth

import (
	"fmt"
	"net/netip"
	"time"
)

// maxTicketsPerCredential bounds the tickets one credential may hold
// unredeemed (a browser needs one per event stream it opens).
const maxTicketsPerCredential = 16

type ticket struct {
	p       Principal
	expires time.Time
}

// Ticket issues a single-use ticket standing for p, for a browser's
// EventSource (which cannot send headers): valid for TicketTTL.
func (r *Registry) Ticket(p Principal) (string, time.Duration) {
	t := NewToken()
	now := time.Now()
	r.tmu.Lock()
	defer r.tmu.Unlock()
	for k, v := range r.tickets {
		if now.After(v.expires) {
			delete(r.tickets, k)
		}
	}
	mine := 0
	for _, v := range r.tickets {
		if v.p.Cred == p.Cred {
			mine++
		}
	}
	// Bounded per credential and in all: one client asking for tickets in
	// a loop exhausts only its own allowance.
	if mine >= maxTicketsPerCredential || len(r.tickets) >= 10000 {
		return "", 0
	}
	r.tickets[HashToken(t)] = ticket{p: p, expires: now.Add(r.o.TicketTTL)}
	return t, r.o.TicketTTL
}

// Redeem exchanges a ticket for the principal it stands for, once.
func (r *Registry) Redeem(t string, remote netip.Addr) (Principal, error) {
	if wait := r.limit.blocked(remote); wait > 0 {
		return Principal{}, &ThrottledError{RetryAfter: wait}
	}
	h := HashToken(t)
	r.tmu.Lock()
	tk, ok := r.tickets[h]
	delete(r.tickets, h)
	r.tmu.Unlock()
	if !ok || time.Now().After(tk.expires) || !r.Active(tk.p) {
		r.limit.fail(remote)
		return Principal{}, fmt.Errorf("%w: unknown, used or expired ticket", ErrInvalid)
	}
	tk.p.Remote = remote
	return tk.p, nil
}
