package coordinator

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/ingest/whip"
	"github.com/callscribe/callscribe/proto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func (c *Coordinator) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", c.handleReady)
	mux.HandleFunc("GET /v1/calls", c.handleCalls)
	mux.HandleFunc("GET /v1/calls/{id}", c.handleCall)
	mux.HandleFunc("GET /v1/calls/{id}/transcript", c.authorised(c.handleTranscript))
	mux.HandleFunc("GET /v1/calls/{id}/events", c.authorised(c.handleEvents))
	mux.HandleFunc("GET /v1/calls/{id}/audio", c.require(c.handleAudio, auth.Supervisor))
	mux.HandleFunc("GET /v1/signing-key", c.require(c.handleSigningKey, auth.Console, auth.Supervisor, auth.Operator))
	c.whip.Register(mux)
	mux.Handle("GET /console/", whip.ConsoleHandler("/console/"))
	mux.Handle("GET /{$}", http.RedirectHandler("/console/", http.StatusFound))
	mux.HandleFunc("GET /v1/status", c.handleStatus)
	mux.HandleFunc("POST /v1/nodes/{id}/drain", c.handleDrain(true))
	mux.HandleFunc("POST /v1/nodes/{id}/undrain", c.handleDrain(false))
	mux.Handle("GET /metrics", promhttp.HandlerFor(c.metrics.p.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, c.metrics.stats()) })
	return mux
}

// require admits a request whose credential has one of roles, with the
// principal in its context (auth.FromContext).
// TODO(#13): credentials with roles; today any console token passes.
func (c *Coordinator) require(h http.HandlerFunc, roles ...auth.Role) http.HandlerFunc {
	return c.authorised(func(w http.ResponseWriter, r *http.Request) {
		p := auth.Principal{Name: "console", Role: auth.Console}
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			p.Remote = ap.Addr().Unmap()
		}
		h(w, r.WithContext(auth.WithPrincipal(r.Context(), p)))
	})
}

// authorised requires a console token (Authorization: Bearer, or a token
// query parameter for browsers' EventSource) before a transcript is served.
func (c *Coordinator) authorised(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if tok == "" {
			tok = r.URL.Query().Get("token")
		}
		if !c.consoleAuth(strings.TrimSpace(tok)) {
			c.log.Warn("transcript API: request without a valid console token", "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="callscribe"`)
			httpError(w, http.StatusUnauthorized, "a valid console token is required (Authorization: Bearer TOKEN)")
			return
		}
		h(w, r)
	}
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
	wt, err := c.Watch(proto.CallID(id), from)
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
	keep := time.NewTicker(15 * time.Second)
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
	if c.reg.readyWorkers() == 0 {
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
	Live        bool          `json:"live"`
	ChannelInfo []channelJSON `json:"channel_info"`
}

func (c *Coordinator) view(rec *store.Call) (CallView, error) {
	v := CallView{Call: rec}
	c.mu.Lock()
	cl, live := c.calls[rec.ID]
	c.mu.Unlock()
	if live {
		cl.mu.Lock()
		cp := *cl.rec
		v.Call, v.Live = &cp, cl.rec.State != store.StateFinalised
		for _, ch := range cl.chans {
			cj := channelJSON{Label: ch.label, Received: ch.received, Concealed: ch.concealed, Undecodable: ch.undecodable, Stored: ch.nextSeq, Decoded: ch.decoded, Finals: ch.finals, Complete: ch.complete}
			v.ChannelInfo = append(v.ChannelInfo, cj)
		}
		cl.mu.Unlock()
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
			cj := channelJSON{Label: l, Stored: n}
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

func (c *Coordinator) handleCalls(w http.ResponseWriter, r *http.Request) {
	recs, err := c.store.Calls()
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := make([]CallView, 0, len(recs))
	for _, rec := range recs {
		v, err := c.view(rec)
		if err != nil {
			httpError(w, http.StatusInternalServerError, err.Error())
			return
		}
		out = append(out, v)
	}
	writeJSON(w, http.StatusOK, out)
}

func (c *Coordinator) lookup(w http.ResponseWriter, r *http.Request) *store.Call {
	id := r.PathValue("id")
	if !proto.ValidID(id) {
		httpError(w, http.StatusBadRequest, "invalid call id")
		return nil
	}
	rec, err := c.store.Call(proto.CallID(id))
	if errors.Is(err, store.ErrNotFound) {
		httpError(w, http.StatusNotFound, "no such call")
		return nil
	}
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
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
	Nodes   []NodeInfo   `json:"nodes"`
	Workers []WorkerInfo `json:"workers"`
	Calls   struct {
		Live int `json:"live"`
	} `json:"calls"`
	Stats Stats `json:"stats"`
}

func (c *Coordinator) handleStatus(w http.ResponseWriter, r *http.Request) {
	var s Status
	s.Nodes, s.Workers = c.reg.snapshot()
	c.mu.Lock()
	for _, cl := range c.calls {
		cl.mu.Lock()
		if cl.rec.State != store.StateFinalised {
			s.Calls.Live++
		}
		cl.mu.Unlock()
	}
	c.mu.Unlock()
	s.Stats = c.metrics.stats()
	writeJSON(w, http.StatusOK, s)
}

func (c *Coordinator) handleDrain(drain bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := proto.NodeID(r.PathValue("id"))
		if !proto.ValidID(string(id)) {
			httpError(w, http.StatusBadRequest, "invalid node id")
			return
		}
		if err := c.SetDraining(r.Context(), id, drain); err != nil {
			httpError(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"node": id, "draining": drain})
	}
}

func storeNode(id proto.NodeID, drain bool) store.Node {
	return store.Node{ID: id, Draining: drain, Updated: time.Now().UTC()}
}
