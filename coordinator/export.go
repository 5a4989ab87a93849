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
	"strconv"
	"time"

	"github.com/callscribe/callscribe/coordinator/calls"
	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/audit"
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

// exportBatch is how many outbox entries one export round reads.
const exportBatch = 256

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
	// Its kept-alive connections' goroutines end with the exporter.
	defer client.CloseIdleConnections()
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		// A batch at a time: after an outage the backlog may be long.
		entries, err := c.store.OutboxBatch(exportBatch)
		if err != nil {
			c.log.Error("export: outbox unreadable", "err", err)
		}
		failed := false
		for _, e := range entries {
			if ctx.Err() != nil {
				return
			}
			err := c.export(ctx, client, e.CallID)
			c.auditExport(ctx, e.CallID, err)
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
		if ctx.Err() == nil && c.exportAudit(ctx, client) != nil {
			failed = true
		}
		wait, auditKick := time.Hour, c.auditKick
		if !failed {
			backoff = 100 * time.Millisecond
			if len(entries) == exportBatch {
				continue // more waiting
			}
		} else {
			wait = backoff
			backoff = min(backoff*2, maxBack)
			auditKick = nil // new entries wait for the retry
		}
		select {
		case <-ctx.Done():
			return
		case <-c.exportKick:
		case <-auditKick:
		case <-time.After(wait):
		}
	}
}

// auditExport records one transcript export attempt.
func (c *Coordinator) auditExport(ctx context.Context, id proto.CallID, err error) {
	if ctx.Err() != nil {
		return // shutting down: the attempt was cut short, not made
	}
	outcome := audit.OutcomeOK
	if err != nil {
		outcome = audit.ErrorOutcome(err)
	}
	_ = c.AuditAs(ctx, ActorExporter, audit.ActionExport, string(id), outcome, "")
}

// AuditExportDocument is a batch of audit entries, POSTed to the same
// export URL as transcripts and told apart by Kind ("audit"; a transcript
// document has no kind). Entries are consecutive, in seq order, and follow
// the batch before: a receiver checks them with audit.Verify (or the hash
// definition in internal/audit) against the last entry it holds, and can
// drop entries whose seq it already has (a batch is resent if the
// coordinator stopped between the receiver's answer and recording it;
// the Idempotency-Key is "audit-" and the first seq).
type AuditExportDocument struct {
	Kind    string        `json:"kind"`
	Entries []audit.Entry `json:"entries"`
}

// auditExportKind is AuditExportDocument's Kind.
const auditExportKind = "audit"

// auditExportBatch bounds one audit export POST.
const auditExportBatch = 500

// exportAudit sends the audit entries the receiver has not acknowledged,
// in batches, moving the durable cursor (store.AuditExported) after each
// 2xx: nothing is skipped, and nothing is sent again unless a stop fell
// between an answer and its cursor write. Deliveries of audit entries are
// not audited themselves: each would add an entry to deliver.
func (c *Coordinator) exportAudit(ctx context.Context, client *http.Client) error {
	for ctx.Err() == nil {
		cur, err := c.store.AuditExported()
		if err != nil {
			c.log.Error("export: audit cursor unreadable", "err", err)
			return err
		}
		es, err := c.store.AuditEntries(cur, auditExportBatch)
		if err != nil {
			c.log.Error("export: audit entries unreadable", "after", cur, "err", err)
			return err
		}
		if len(es) == 0 {
			return nil
		}
		body, _ := json.Marshal(AuditExportDocument{Kind: auditExportKind, Entries: es})
		if err := c.post(ctx, client, "audit-"+strconv.FormatUint(es[0].Seq, 10), body); err != nil {
			c.auditExportFails++
			if c.auditExportFails == 1 || c.auditExportFails%10 == 0 {
				c.log.Warn("export: receiver unavailable for audit entries, will retry", "from", es[0].Seq, "attempts", c.auditExportFails, "err", err)
			}
			return err
		}
		c.auditExportFails = 0
		last := es[len(es)-1].Seq
		if err := c.store.SetAuditExported(ctx, last); err != nil {
			c.log.Error("export: audit cursor not recorded; the batch will be sent again", "seq", last, "err", err)
			return err
		}
		c.log.Debug("export: audit entries delivered", "from", es[0].Seq, "to", last)
	}
	return ctx.Err()
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
			doc.Utterances = append(doc.Utterances, Utterance{Channel: i, Label: l, Index: f.Index, StartMS: calls.SamplesToMS(f.Start), EndMS: calls.SamplesToMS(f.End), Text: f.Text})
		}
	}
	sortUtterances(doc.Utterances)
	body, _ := json.Marshal(doc)
	return c.post(ctx, client, string(id), body)
}

// post sends one export document to the receiver: nil once it answers 2xx.
func (c *Coordinator) post(ctx context.Context, client *http.Client, key string, body []byte) error {
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, c.cfg.Export.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
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
