package auth

import (
	"net/http"
	"net/netip"
	"strings"
)

// Request is what an HTTP request presents for authentication: its bearer
// token ("" when none; the scheme is case-insensitive, RFC 9110 §11.1) and
// the address it comes from. A token in the URL (token or access_token)
// is ErrTokenInURL: URLs end up in logs and browser histories.
func Request(r *http.Request) (token string, remote netip.Addr, err error) {
	remote = Remote(r)
	if q := r.URL.Query(); q.Has("token") || q.Has("access_token") {
		return "", remote, ErrTokenInURL
	}
	scheme, tok, ok := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", remote, nil
	}
	return strings.TrimSpace(tok), remote, nil
}

// Remote is the address an HTTP request comes from (the zero Addr when it
// is not an IP address).
func Remote(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap().WithZone("")
}
