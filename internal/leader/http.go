package leader

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// ErrForeignRedirect is a redirect to a server that is not one of the
// configured coordinators: it is not followed, so the credential is not
// sent there.
var ErrForeignRedirect = errors.New("redirect to a server that is not a configured coordinator")

// maxRedirects is how many redirects one request follows (as net/http).
const maxRedirects = 10

// CheckRedirect returns an http.Client CheckRedirect for a client of the
// coordinators at bases (base URLs: scheme, host and port count). A
// follower answers a request with 307 to the leader's URL; net/http
// follows it (307 and 308 keep the method, and the body when the request
// has GetBody, as every request made from a bytes or strings reader does),
// but drops Authorization when the host changes and keeps it for another
// port of the same host. This policy is deliberate instead: a redirect to
// one of bases carries the original request's Authorization header, and a
// redirect anywhere else is refused (ErrForeignRedirect) and sends nothing.
func CheckRedirect(bases []string) func(req *http.Request, via []*http.Request) error {
	var allowed []string
	for _, b := range bases {
		if u, err := url.Parse(b); err == nil && u.Host != "" {
			if o := Origin(u); !slices.Contains(allowed, o) {
				allowed = append(allowed, o)
			}
		}
	}
	return func(req *http.Request, via []*http.Request) error {
		if len(via) >= maxRedirects {
			return fmt.Errorf("stopped after %d redirects", maxRedirects)
		}
		if o := Origin(req.URL); !slices.Contains(allowed, o) {
			return fmt.Errorf("%w: %s (configured: %s)", ErrForeignRedirect, o, strings.Join(allowed, ", "))
		}
		if auth := via[0].Header.Get("Authorization"); auth != "" {
			req.Header.Set("Authorization", auth)
		}
		return nil
	}
}

// Origin is u's scheme, host and port, lower case, the port written out
// ("https://coord-1:443"): two URLs of the same origin are the same server.
func Origin(u *url.URL) string {
	scheme := strings.ToLower(u.Scheme)
	port := u.Port()
	if port == "" {
		switch scheme {
		case "https":
			port = "443"
		case "http":
			port = "80"
		}
	}
	host := strings.ToLower(u.Hostname())
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return scheme + "://" + host + ":" + port
}

// ParseURLs reads a comma-separated list of coordinator HTTP(S) base URLs.
// An address without a scheme gets def ("http" or "https"); a trailing
// slash is dropped.
func ParseURLs(s, def string) ([]string, error) {
	var out []string
	for _, b := range strings.Split(s, ",") {
		if b = strings.TrimSpace(b); b == "" {
			continue
		}
		if !strings.Contains(b, "://") {
			b = def + "://" + b
		}
		u, err := url.Parse(b)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("coordinator URL %q: want http(s)://host:port", b)
		}
		if b = strings.TrimRight(b, "/"); !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no coordinator URL given")
	}
	return out, nil
}
