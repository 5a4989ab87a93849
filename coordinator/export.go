package coordinator

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/proto"
)

// ExportConfig enables the optional export of finalised transcripts.
type ExportConfig struct {
	URL     string         // https://… ; empty: no export, no outbound connection
	RootCAs *x509.CertPool // trusted for the receiver (nil: the system's)
	Token   string         // sent as a bearer token when set
	// MaxBackoff caps the wait between attempts (default 1 minute).
	MaxBackoff time.Duration
}

// ExportDocument is what the receiver gets, one per call, at most once per
// Idempotency-Key (the call id): a retry after a lost answer carries the
// same key, so the receiver can drop a duplicate.
type ExportDocument struct {
	Call       *store.Call `json:"call"`
	Utterances []Utterance `json:"utterances"`
}

// exporter drains the outbox: every queued call is posted until the
// receiver answers 2xx, with exponential backoff while it is down. It runs
// beside the live path and never blocks it.
func (c *Coordinator) exporter(ctx context.Context) {
	ec := c.cfg.Export
	maxBack := ec.MaxBackoff
	if maxBack == 0 {
		maxBack = time.Minute
	}
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ec.RootCAs, MinVersion: tls.VersionTLS12}}}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		entries, err := c.store.Outbox()
		if err != nil {
			c.log.Error("export: outbox unreadable", "err", err)
		}
		failed := false
		for _, e := range entries {
			if ctx.Err() != nil {
				return
			}
			err := c.export(ctx, client, e.CallID)
			if errors.Is(err, store.ErrNotFound) { // deleted by retention first
				c.log.Warn("export: call no longer exists, dropped from the outbox", "call", e.CallID)
				_ = c.store.DoneOutbox(e.CallID)
				continue
			}
			if err != nil {
				e.Attempts++
				e.LastErr = err.Error()
				_ = c.store.UpdateOutbox(ctx, e)
				if e.Attempts == 1 || e.Attempts%10 == 0 {
					c.log.Warn("export: receiver unavailable, will retry", "call", e.CallID, "attempts", e.Attempts, "err", err)
				}
				failed = true
				break // the link is down: wait before trying the rest
			}
			if err := c.store.DoneOutbox(e.CallID); err != nil {
				c.log.Error("export: cannot clear outbox entry", "call", e.CallID, "err", err)
			}
			c.log.Info("export: transcript delivered", "call", e.CallID, "attempts", e.Attempts+1)
			backoff = 100 * time.Millisecond
		}
		wait := time.Hour
		if failed {
			wait = backoff
			backoff = min(backoff*2, maxBack)
		}
		select {
		case <-ctx.Done():
			return
		case <-c.exportKick:
		case <-time.After(wait):
		}
	}
}

func (c *Coordinator) export(ctx context.Context, client *http.Client, id proto.CallID) error {
	rec, err := c.store.Call(id)
	if err != nil {
		return err
	}
	doc := ExportDocument{Call: rec, Utterances: []Utterance{}}
	for i, l := range rec.Channels {
		fs, err := c.store.Finals(rec.ID, i, 0)
		if err != nil {
			return err
		}
		for _, f := range fs {
			doc.Utterances = append(doc.Utterances, Utterance{Channel: i, Label: l, Index: f.Index, StartMS: samplesToMS(f.Start), EndMS: samplesToMS(f.End), Text: f.Text})
		}
	}
	sortUtterances(doc.Utterances)
	body, _ := json.Marshal(doc)
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, c.cfg.Export.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", string(id))
	if c.cfg.Export.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.cfg.Export.Token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("receiver answered %s", resp.Status)
	}
	return nil
}
