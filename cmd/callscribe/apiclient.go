package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/callscribe/callscribe/internal/leader"
	"github.com/callscribe/callscribe/internal/pki"
)

// client is the API client the flags describe, with its credential.
func (a *apiFlags) client() (*apiClient, error) {
	tok, err := a.credential()
	if err != nil {
		return nil, err
	}
	return newAPIClient(*a.server, *a.ca, tok)
}

// call sends one request (body, when not nil, as JSON) and returns the body
// of a 2xx answer.
func (a *apiFlags) call(ctx context.Context, method, path string, body any) ([]byte, error) {
	c, err := a.client()
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := c.do(rctx, method, path, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, 64<<20))
}

// apiClient talks to the coordinator's HTTP API with a bearer token. Given
// several coordinators (a cluster), it sends each request to the one that
// last answered, passing over those that cannot be connected to, and
// follows a follower's redirect to the leader (with the token only to a
// coordinator of the list: see leader.CheckRedirect).
type apiClient struct {
	token  string
	client *http.Client

	mu    sync.Mutex
	bases []string // base URLs; bases[0] answered last
}

// apiDialTimeout bounds one connection to a coordinator, so a dead one is
// passed over for the next within a request's time.
const apiDialTimeout = 5 * time.Second

// newAPIClient makes a client of the coordinators at server: a base URL
// or address (http:// when no scheme is given), or a comma-separated list.
func newAPIClient(server, caFile, token string) (*apiClient, error) {
	bases, err := leader.ParseURLs(server, "http")
	if err != nil {
		return nil, fmt.Errorf("--server: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: apiDialTimeout, KeepAlive: 30 * time.Second}).DialContext
	if caFile != "" {
		pool, err := pki.CertPool(caFile)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &apiClient{bases: bases, token: token, client: &http.Client{Transport: tr, CheckRedirect: leader.CheckRedirect(bases)}}, nil
}

// do sends a request (body, when not nil, as JSON) and returns a 2xx
// answer for the caller to read; other answers are errors carrying the
// coordinator's reason (410: a *goneError). A coordinator that cannot be
// connected to (the request was not sent) is passed over for the next.
func (a *apiClient) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return nil, err
		}
	}
	a.mu.Lock()
	bases := slices.Clone(a.bases)
	a.mu.Unlock()
	var errs []error
	for _, base := range bases {
		resp, err := a.send(ctx, method, base+path, b, body != nil)
		if err != nil && isDialError(err) && ctx.Err() == nil {
			errs = append(errs, err)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("coordinator at %s: %w", base, err)
		}
		a.answered(base, resp)
		return a.check(resp)
	}
	if len(bases) == 1 {
		return nil, fmt.Errorf("coordinator at %s: %w", bases[0], errs[0])
	}
	return nil, &leader.UnreachableError{Addrs: bases, Errs: errs}
}

// isDialError reports whether err means no connection could be made.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (a *apiClient) send(ctx context.Context, method, u string, body []byte, isJSON bool) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body) // with GetBody: a 307 sends it again
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if isJSON {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	return a.client.Do(req)
}

// answered puts first the coordinator that answered: base, or the leader
// base redirected to, when it is in the list.
func (a *apiClient) answered(base string, resp *http.Response) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if resp.Request != nil {
		o := leader.Origin(resp.Request.URL)
		for _, b := range a.bases {
			if u, err := url.Parse(b); err == nil && leader.Origin(u) == o {
				base = b
				break
			}
		}
	}
	if i := slices.Index(a.bases, base); i > 0 {
		a.bases = append(append([]string{base}, a.bases[:i]...), a.bases[i+1:]...)
	}
}

// check returns a 2xx answer, or the error another answer carries.
func (a *apiClient) check(resp *http.Response) (*http.Response, error) {
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	msg := strings.TrimSpace(string(b))
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	if resp.StatusCode == http.StatusGone {
		return nil, &goneError{msg: msg}
	}
	if resp.StatusCode == http.StatusUnauthorized && a.token == "" {
		msg += " (no credential sent: use --token, --token-file or CALLSCRIBE_TOKEN)"
	}
	return nil, fmt.Errorf("coordinator answered %s: %s", resp.Status, msg)
}

// open sends a GET and returns a 2xx answer for the caller to read.
func (a *apiClient) open(ctx context.Context, path string) (*http.Response, error) {
	return a.do(ctx, http.MethodGet, path, nil)
}

// get returns the body of a 2xx answer to a GET (at most 256 MiB).
func (a *apiClient) get(ctx context.Context, path string) ([]byte, error) {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	resp, err := a.open(rctx, path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, 256<<20))
}
