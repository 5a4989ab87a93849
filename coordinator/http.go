package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/callscribe/callscribe/coordinator/calls"
	"github.com/callscribe/callscribe/coordinator/rack"
	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/ingest/whip"
	"github.com/callscribe/callscribe/internal/audit"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/proto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Who may do what. /healthz and /readyz are open (probes carry no
// credential); everything else names its roles. The matrix test in
// access_test.go walks every route with every role.
func (c *Coordinator) routes() http.Handler {
	const (
		console    = auth.Console
		supervisor = auth.Supervisor
		operator   = auth.Operator
	)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", c.handleReady)
	// Calls: a console its own, a supervisor any.
	mux.HandleFunc("GET /v1/calls", c.require(c.audited(audit.ActionCallsList, c.handleCalls), console, supervisor))
	mux.HandleFunc("GET /v1/calls/{id}", c.require(c.audited(audit.ActionCallRead, c.handleCall), console, supervisor))
	mux.HandleFunc("GET /v1/calls/{id}/transcript", c.require(c.audited(audit.ActionTranscriptRead, c.handleTranscript), console, supervisor))
	mux.HandleFunc("GET /v1/calls/{id}/events", c.guarded(guard{roles: []auth.Role{console, supervisor}, ticket: true}, c.audited(audit.ActionTranscriptWatch, c.handleEvents)))
	mux.HandleFunc("POST /v1/calls/{id}/transfer", c.require(c.handleTransfer, supervisor))
	// Streaming (WHIP) checks its console credential itself.
	mux.HandleFunc("GET /v1/calls/{id}/audio", c.require(c.audited(audit.ActionAudioRead, c.handleAudio), supervisor))
	mux.HandleFunc("GET /v1/signing-key", c.require(c.handleSigningKey, console, supervisor, operator))
	c.whip.Register(mux)
	mux.Handle("GET /console/", whip.ConsoleHandler("/console/"))
	mux.Handle("GET /{$}", http.RedirectHandler("/console/", http.StatusFound))
	// Operations.
	mux.HandleFunc("GET /v1/status", c.require(c.handleStatus, operator))
	mux.HandleFunc("GET /v1/stats", c.require(func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, c.metrics.stats()) }, operator))
	mux.HandleFunc("POST /v1/nodes/{id}/drain", c.require(c.handleDrain(true), operator))
	mux.HandleFunc("POST /v1/nodes/{id}/undrain", c.require(c.handleDrain(false), operator))
	mux.HandleFunc("GET /v1/tokens", c.require(c.handleTokenList, operator))
	mux.HandleFunc("POST /v1/tokens", c.require(c.handleTokenAdd, operator))
	mux.HandleFunc("DELETE /v1/tokens/{name}", c.require(c.handleTokenRevoke, operator))
	mux.HandleFunc("GET /v1/audit", c.require(c.handleAudit, operator))
	c.clusterRoutes(mux)
	metrics := promhttp.HandlerFor(c.metrics.p.reg, promhttp.HandlerOpts{})
	if c.cfg.MetricsOpen {
		mux.Handle("GET /metrics", metrics)
	} else {
		mux.HandleFunc("GET /metrics", c.require(metrics.ServeHTTP, operator))
	}
	// Any credential.
	mux.HandleFunc("POST /v1/tickets", c.require(c.handleTicket, console, supervisor, operator))
	mux.HandleFunc("GET /v1/whoami", c.require(c.handleWhoami, console, supervisor, operator))
	return mux
}

// handleEvents streams a call's transcript as server-sent events: the
// finals so far, then partials and finals live, then "finalised". from
// (comma-separated, per channel) skips finals a client already has.
func (c *Coordinator) handleEvents(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !proto.ValidID(id) {
		httpError(w, http.StatusBadRequest, "invalid call id")
		return
	}
	var from []uint32
	if v := r.URL.Query().Get("from"); v != "" {
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.ParseUint(f, 10, 32)
			if err != nil {
				httpError(w, http.StatusBadRequest, "from is a comma-separated list of final indexes")
				return
			}
			from = append(from, uint32(n))
		}
	}
	p, _ := auth.FromContext(r.Context())
	if c.readable(w, r, proto.CallID(id)) == nil {
		return
	}
	wt, err := c.calls.Watch(p, proto.CallID(id), from)
	switch {
	case errors.Is(err, store.ErrNotFound):
		httpError(w, http.StatusNotFound, "no such call")
		return
	case err != nil:
		httpError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	defer wt.Close()
	fl, ok := w.(http.Flusher)
	if !ok {
		httpError(w, http.StatusInternalServerError, "streaming not supported")
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	keep := time.NewTicker(tuning.SSEKeepAlive)
	defer keep.Stop()
	for {
		select {
		case ev, ok := <-wt.Events():
			if !ok {
				return
			}
			typ, b := ingest.EventJSON(ev)
			if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", typ, b); err != nil {
				return
			}
			fl.Flush()
		case <-keep.C:
			if _, err := io.WriteString(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
		case <-r.Context().Done():
			return
		case <-c.closing:
			return
		}
	}
}

func marshalIndent(v any) []byte {
	b, _ := json.MarshalIndent(v, "", "  ")
	return append(b, '\n')
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(marshalIndent(v))
}

func httpError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// handleReady: ready when the store is writable and a worker passed its test
// decode.
func (c *Coordinator) handleReady(w http.ResponseWriter, r *http.Request) {
	var why []string
	if d := c.store.Disk(); d.AudioRefused || d.MetaRefused {
		why = append(why, "store refusing audio: "+d.Reason)
	} else if err := c.probe(r.Context()); err != nil {
		why = append(why, "store not writable: "+err.Error())
	}
	if c.rack.ReadyWorkers() == 0 {
		why = append(why, "no worker has passed a test decode yet")
	}
	if len(why) > 0 {
		http.Error(w, strings.Join(why, "; "), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// CallView is a call as the API shows it.
type CallView struct {
	*store.Call
	Live        bool                `json:"live"`
	ChannelInfo []calls.ChannelInfo `json:"channel_info"`
}

func (c *Coordinator) view(rec *store.Call) (CallView, error) {
	v := CallView{Call: rec}
	if cp, chans, live := c.calls.View(rec.ID); live {
		v.Call, v.Live, v.ChannelInfo = &cp, cp.State != store.StateFinalised, chans
	} else {
		for i, l := range rec.Channels {
			n, err := c.store.NextSeq(rec.ID, i)
			if err != nil {
				return v, err
			}
			last, err := c.store.LastFinal(rec.ID, i)
			if err != nil {
				return v, err
			}
			cj := calls.ChannelInfo{Label: l, Stored: n}
			if i < len(rec.Received) {
				cj.Received = rec.Received[i]
			}
			if i < len(rec.Concealed) {
				cj.Concealed = rec.Concealed[i]
			}
			if i < len(rec.Decoded) {
				cj.Decoded = rec.Decoded[i]
			}
			if i < len(rec.Undecodable) {
				cj.Undecodable = rec.Undecodable[i]
			}
			if i < len(rec.Complete) {
				cj.Complete = rec.Complete[i]
			}
			if last != nil {
				cj.Finals = last.Index + 1
			}
			v.ChannelInfo = append(v.ChannelInfo, cj)
		}
	}
	for i := range v.ChannelInfo {
		if i < len(v.EndFrames) {
			v.ChannelInfo[i].EndFrames = v.EndFrames[i]
		}
	}
	return v, nil
}

// handleCalls lists calls a page at a time (listing.go), newest first:
// every call for a supervisor, its own for a console.
func (c *Coordinator) handleCalls(w http.ResponseWriter, r *http.Request) {
	p, _ := auth.FromContext(r.Context())
	f, cursor, limit, err := callsQuery(r, p)
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	recs, next, err := c.store.CallsPage(f, cursor, limit)
	if errors.Is(err, store.ErrBadCursor) {
		httpError(w, http.StatusBadRequest, "cursor is not one a listing returned")
		return
	}
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := CallList{Calls: make([]CallView, 0, len(recs)), NextCursor: next}
	for _, rec := range recs {
		if !mayRead(p, rec) {
			continue
		}
		v, err := c.view(rec)
		if err != nil {
			httpError(w, http.StatusInternalServerError, err.Error())
			return
		}
		out.Calls = append(out.Calls, v)
	}
	writeJSON(w, http.StatusOK, out)
}

// lookup returns the call a request names, if its principal may read it.
func (c *Coordinator) lookup(w http.ResponseWriter, r *http.Request) *store.Call {
	id := r.PathValue("id")
	if !proto.ValidID(id) {
		httpError(w, http.StatusBadRequest, "invalid call id")
		return nil
	}
	return c.readable(w, r, proto.CallID(id))
}

// readable returns call id's record if the request's principal may read
// it, or answers the request.
func (c *Coordinator) readable(w http.ResponseWriter, r *http.Request, id proto.CallID) *store.Call {
	rec, err := c.store.Call(id)
	if errors.Is(err, store.ErrNotFound) {
		httpError(w, http.StatusNotFound, "no such call")
		return nil
	}
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return nil
	}
	if p, _ := auth.FromContext(r.Context()); !mayRead(p, rec) {
		c.log.Warn("API request refused: another console's call", "path", r.URL.Path, "name", p.Name, "call", id, "remote", r.RemoteAddr)
		httpError(w, http.StatusForbidden, fmt.Sprintf("call %s belongs to another console", id))
		return nil
	}
	return rec
}

func (c *Coordinator) handleCall(w http.ResponseWriter, r *http.Request) {
	rec := c.lookup(w, r)
	if rec == nil {
		return
	}
	v, err := c.view(rec)
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// Utterance is one final as the transcript API shows it.
type Utterance struct {
	Channel int    `json:"channel"`
	Label   string `json:"label"`
	Index   uint32 `json:"index"`
	StartMS int64  `json:"start_ms"`
	EndMS   int64  `json:"end_ms"`
	Text    string `json:"text"`
	// Heard is what the engine recognised when a vocabulary correction
	// changed it.
	Heard string `json:"heard,omitempty"`
}

func (c *Coordinator) handleTranscript(w http.ResponseWriter, r *http.Request) {
	rec := c.lookup(w, r)
	if rec == nil {
		return
	}
	out, err := c.transcriptOf(rec)
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	sortUtterances(out)
	if r.URL.Query().Get("format") == "text" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for _, u := range out {
			fmt.Fprintf(w, "[%s %d.%03d] %s\n", u.Label, u.StartMS/1000, u.StartMS%1000, u.Text)
		}
		return
	}
	doc := map[string]any{"call_id": rec.ID, "state": rec.State, "utterances": out}
	if signed, err := c.signTranscript(rec, out); err != nil {
		// The transcript is served all the same, saying why it is unsigned.
		c.log.Error("integrity: no statement for a transcript", "call", rec.ID, "err", err)
		doc["integrity_error"] = err.Error()
	} else {
		doc["integrity"] = signed
	}
	writeJSON(w, http.StatusOK, doc)
}

func sortUtterances(u []Utterance) {
	sort.SliceStable(u, func(i, j int) bool {
		if u[i].StartMS != u[j].StartMS {
			return u[i].StartMS < u[j].StartMS
		}
		return u[i].Channel < u[j].Channel
	})
}

// Stats returns the coordinator's counters and latency windows.
func (c *Coordinator) Stats() Stats { return c.metrics.stats() }

// Status is the /v1/status document.
type Status struct {
	Nodes   []rack.NodeInfo   `json:"nodes"`
	Workers []rack.WorkerInfo `json:"workers"`
	Calls   struct {
		Live int `json:"live"`
	} `json:"calls"`
	Stats Stats `json:"stats"`
	// Cluster is the leader's view of the coordinator cluster.
	Cluster *ClusterView `json:"cluster,omitempty"`
}

func (c *Coordinator) handleStatus(w http.ResponseWriter, r *http.Request) {
	var s Status
	s.Nodes, s.Workers = c.rack.Snapshot()
	s.Calls.Live = c.calls.Live()
	s.Stats = c.metrics.stats()
	cv := clusterView(c.member, advertised(c.cfg.Cluster.QUIC, c.ql.Addr().String()), advertised(c.cfg.Cluster.HTTP, c.httpLn.Addr().String()))
	s.Cluster = &cv
	writeJSON(w, http.StatusOK, s)
}

func (c *Coordinator) handleDrain(drain bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := proto.NodeID(r.PathValue("id"))
		if !proto.ValidID(string(id)) {
			httpError(w, http.StatusBadRequest, "invalid node id")
			return
		}
		// Recorded before it is carried out (refused if it cannot be); a
		// failure follows as a second entry.
		action := audit.ActionNodeUndrain
		if drain {
			action = audit.ActionNodeDrain
		}
		if err := c.Audit(r.Context(), action, string(id), audit.OutcomeOK, ""); err != nil {
			httpError(w, http.StatusServiceUnavailable, err.Error()+": the request is refused")
			return
		}
		if err := c.SetDraining(r.Context(), id, drain); err != nil {
			_ = c.Audit(r.Context(), action, string(id), audit.ErrorOutcome(err), "failed after it was recorded")
			code := http.StatusInternalServerError
			if errors.Is(err, rack.ErrUnknownNode) {
				code = http.StatusNotFound
			}
			httpError(w, code, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"node": id, "draining": drain})
	}
}
