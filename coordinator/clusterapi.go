package coordinator

// The cluster's membership API (callscribe cluster …), served by the
// leader; a follower redirects it there, except GET /v1/cluster (its own
// view) and POST /v1/cluster/init (a member waiting for a cluster).

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/audit"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/proto"
)

func (c *Coordinator) clusterRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/cluster", c.require(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, clusterView(c.member, advertised(c.cfg.Cluster.QUIC, c.ql.Addr().String()), advertised(c.cfg.Cluster.HTTP, c.httpLn.Addr().String())))
	}, auth.Operator))
	mux.HandleFunc("POST /v1/cluster/init", c.require(c.handleClusterToken, auth.Operator))
	mux.HandleFunc("POST /v1/cluster/token", c.require(c.handleClusterToken, auth.Operator))
	mux.HandleFunc("POST /v1/cluster/members", c.handleClusterJoin)
	mux.HandleFunc("DELETE /v1/cluster/members/{name}", c.require(c.handleClusterRemove, auth.Operator))
}

// JoinAnswer is the answer to `cluster init` and `cluster token`.
type JoinAnswer struct {
	Cluster string `json:"cluster"`
	Token   string `json:"token"`
	Leader  string `json:"leader"`
}

// handleClusterToken makes a new join token (the previous one stops
// working) and returns it once.
func (c *Coordinator) handleClusterToken(w http.ResponseWriter, r *http.Request) {
	if c.member.Node.Single() {
		httpError(w, http.StatusConflict, "this coordinator is a cluster of one without a network: set cluster_listen (and its certificate) and restart it before other coordinators can join")
		return
	}
	ci, err := c.store.Cluster()
	if err != nil || ci == nil {
		httpError(w, http.StatusServiceUnavailable, fmt.Sprintf("the cluster has no identity yet: %v", err))
		return
	}
	var b [32]byte
	_, _ = rand.Read(b[:])
	tok := "cj_" + hex.EncodeToString(b[:])
	h := sha256.Sum256([]byte(tok))
	ci.JoinTokenHash = hex.EncodeToString(h[:])
	if err := c.Audit(r.Context(), audit.ActionClusterToken, ci.ID, audit.OutcomeOK, "a new join token"); err != nil {
		httpError(w, http.StatusServiceUnavailable, err.Error()+": the request is refused")
		return
	}
	if err := c.store.PutCluster(r.Context(), *ci); err != nil {
		httpError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, JoinAnswer{Cluster: ci.ID, Token: tok, Leader: c.member.Node.Name()})
}

// JoinRequest is POST /v1/cluster/members, sent with the join token.
type JoinRequest struct {
	Name string `json:"name"`
	Raft string `json:"raft"`
	QUIC string `json:"quic"`
	HTTP string `json:"http"`
}

func (c *Coordinator) handleClusterJoin(w http.ResponseWriter, r *http.Request) {
	remote := r.RemoteAddr
	tok, _, _ := strings.Cut(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "), " ")
	ci, err := c.store.Cluster()
	if err != nil || ci == nil || ci.JoinTokenHash == "" {
		httpError(w, http.StatusConflict, "this cluster takes no new members: make a join token with `callscribe cluster init` on a member first")
		return
	}
	h := sha256.Sum256([]byte(tok))
	want, _ := hex.DecodeString(ci.JoinTokenHash)
	if tok == "" || subtle.ConstantTimeCompare(h[:], want) != 1 {
		c.log.Warn("cluster: a join with a wrong token was refused", "remote", remote)
		_ = c.AuditAs(r.Context(), "join:"+remote, audit.ActionClusterJoin, "", audit.OutcomeDenied, "wrong join token")
		w.Header().Set("WWW-Authenticate", `Bearer realm="callscribe cluster"`)
		httpError(w, http.StatusUnauthorized, "wrong join token")
		return
	}
	var jr JoinRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&jr); err != nil {
		httpError(w, http.StatusBadRequest, "join request: "+err.Error())
		return
	}
	if !proto.ValidID(jr.Name) {
		httpError(w, http.StatusBadRequest, "join request: invalid member name")
		return
	}
	for _, a := range []string{jr.Raft, jr.QUIC, jr.HTTP} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			httpError(w, http.StatusBadRequest, fmt.Sprintf("join request: address %q: %v", a, err))
			return
		}
	}
	// Reach it over the members' transport before anything is recorded:
	// a voter that can never be reached (its certificate from another CA,
	// a wrong address) would count towards every quorum.
	if err := c.member.Node.Probe(jr.Raft); err != nil {
		c.log.Warn("cluster: a join was refused: the new member cannot be reached over the cluster's transport", "member", jr.Name, "raft", jr.Raft, "remote", remote, "err", err)
		_ = c.AuditAs(r.Context(), "join:"+remote, audit.ActionClusterJoin, jr.Name, audit.ErrorOutcome(err), "refused: not reachable as a member; nothing changed")
		httpError(w, http.StatusBadGateway, fmt.Sprintf("%v: nothing changed; check that the new member runs with cluster_listen at %s and a coordinator certificate from this cluster's CA (callscribe ca issue --kind coordinator)", err, jr.Raft))
		return
	}
	if err := c.AuditAs(r.Context(), "join:"+remote, audit.ActionClusterJoin, jr.Name, audit.OutcomeOK, "raft "+jr.Raft); err != nil {
		httpError(w, http.StatusServiceUnavailable, err.Error()+": the request is refused")
		return
	}
	// Its addresses first: once it is a voter, clients may be sent to it.
	if err := c.store.PutMember(r.Context(), store.MemberInfo{Name: jr.Name, Raft: jr.Raft, QUIC: jr.QUIC, HTTP: jr.HTTP}); err != nil {
		httpError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if err := c.member.Node.AddVoter(jr.Name, jr.Raft); err != nil {
		_ = c.AuditAs(r.Context(), "join:"+remote, audit.ActionClusterJoin, jr.Name, audit.ErrorOutcome(err), "failed after it was recorded")
		httpError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	c.log.Info("cluster: a member joined", "member", jr.Name, "raft", jr.Raft, "remote", remote)
	writeJSON(w, http.StatusOK, JoinAnswer{Cluster: ci.ID, Leader: c.member.Node.Name()})
}

func (c *Coordinator) handleClusterRemove(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ms, err := c.member.Node.Members()
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	found := false
	for _, m := range ms {
		found = found || m.Name == name
	}
	if !found {
		httpError(w, http.StatusNotFound, fmt.Sprintf("no member %q", name))
		return
	}
	if len(ms) == 1 {
		httpError(w, http.StatusConflict, "the last member cannot be removed")
		return
	}
	if err := c.Audit(r.Context(), audit.ActionClusterRemove, name, audit.OutcomeOK, ""); err != nil {
		httpError(w, http.StatusServiceUnavailable, err.Error()+": the request is refused")
		return
	}
	if err := c.store.DeleteMember(r.Context(), name); err != nil && !errors.Is(err, store.ErrNotFound) {
		httpError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	// Removing the leader itself ends this term; the answer goes first.
	if name == c.member.Node.Name() {
		writeJSON(w, http.StatusOK, map[string]any{"removed": name, "note": "this was the leader: the others elect a new one"})
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			time.Sleep(100 * time.Millisecond)
			if err := c.member.Node.Remove(name); err != nil {
				c.log.Error("cluster: remove the leader", "err", err)
			}
		}()
		return
	}
	if err := c.member.Node.Remove(name); err != nil {
		httpError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	c.log.Info("cluster: a member was removed", "member", name)
	writeJSON(w, http.StatusOK, map[string]any{"removed": name})
}
