package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

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

// apiClient talks to the coordinator's HTTP API with a bearer token.
type apiClient struct {
	base, token string
	client      *http.Client
}

func newAPIClient(server, caFile, token string) (*apiClient, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pool, err := pki.CertPool(caFile)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	base := strings.TrimRight(server, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &apiClient{base: base, token: token, client: &http.Client{Transport: tr}}, nil
}

// do sends a request (body, when not nil, as JSON) and returns a 2xx
// answer for the caller to read; other answers are errors carrying the
// coordinator's reason (410: a *goneError).
func (a *apiClient) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("coordinator at %s: %w", a.base, err)
	}
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
