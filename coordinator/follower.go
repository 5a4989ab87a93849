package coordinator

// A member that does not lead serves only to send clients to the leader:
// a console's, agent's or worker's first message is answered with
// not_leader naming the leader's address and every member's; an HTTP
// request (the API, WHIP) is redirected to the leader with 307, which
// keeps the method and body (RFC 9725 allows a WHIP redirect). /healthz
// answers (the process is well), /readyz does not (it does not serve
// calls), and /v1/cluster gives this member's view to an operator.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/callscribe/callscribe/coordinator/cluster"
	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

type follower struct {
	cfg    Config
	m      *Member
	log    *slog.Logger
	auth   *auth.Registry
	qt     *quic.Transport
	ql     *quic.Listener
	close  func()
	httpLn net.Listener
}

func newFollower(cfg Config, m *Member) (*follower, error) {
	reg, err := auth.NewRegistry(m.Store, staticCredentials(cfg.ConsoleTokens, cfg.Credentials), auth.Options{
		FailuresPerMinute: cfg.AuthFailuresPerMinute, Logger: cfg.Logger.With("component", "auth")})
	if err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	f := &follower{cfg: cfg, m: m, log: cfg.Logger.With("role", "follower"), auth: reg}
	qt, ql, closeQUIC, err := bindQUIC(cfg)
	if err != nil {
		return nil, err
	}
	hl, err := bindHTTP(cfg)
	if err != nil {
		closeQUIC()
		return nil, err
	}
	f.qt, f.ql, f.close, f.httpLn = qt, ql, closeQUIC, hl
	return f, nil
}

// leader returns the leader's client addresses and every member's.
func (f *follower) leader() (lead *store.MemberInfo, all []store.MemberInfo) {
	name, _ := f.m.Node.Leader()
	ms, err := f.m.Store.Members()
	if err != nil {
		f.log.Warn("coordinator: member addresses unreadable", "err", err)
	}
	for i := range ms {
		if ms[i].Name == name {
			lead = &ms[i]
		}
	}
	return lead, ms
}

// serve runs until ctx ends.
func (f *follower) serve(ctx context.Context) {
	srv := &http.Server{Handler: f.routes(), ReadHeaderTimeout: tuning.ReadHeaderTimeout}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_ = srv.Serve(f.httpLn)
	}()
	go func() {
		defer wg.Done()
		for {
			conn, err := f.ql.Accept(ctx)
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				f.redirect(ctx, conn)
			}()
		}
	}()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	cancel()
	_ = f.ql.Close()
	wg.Wait()
	f.close()
}

// redirect answers each stream's first message with not_leader.
func (f *follower) redirect(ctx context.Context, conn *quic.Conn) {
	defer conn.CloseWithError(0, "not the leader")
	lead, all := f.leader()
	var members []string
	for _, m := range all {
		if m.QUIC != "" {
			members = append(members, m.QUIC)
		}
	}
	var addr string
	if lead != nil {
		addr = lead.QUIC
	}
	e := proto.NotLeader(addr, members)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		st, err := conn.AcceptStream(cctx)
		if err != nil {
			return
		}
		_ = st.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _ = proto.NewReader(st).Read()
		_ = st.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_ = proto.NewWriter(st).WriteJSON(proto.TError, e)
		_ = st.Close()
		f.log.Debug("client sent to the leader", "remote", conn.RemoteAddr().String(), "leader", addr)
	}
}

func (f *follower) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := f.m.Node.Err(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok (follower)")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		name, _ := f.m.Node.Leader()
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "role": "follower", "leader": name})
	})
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := f.operator(w, r); !ok {
			return
		}
		writeJSON(w, http.StatusOK, clusterView(f.m, advertised(f.cfg.Cluster.QUIC, f.ql.Addr().String()), advertised(f.cfg.Cluster.HTTP, f.httpLn.Addr().String())))
	})
	metrics := followerMetrics(f.m)
	if f.cfg.MetricsOpen {
		mux.Handle("GET /metrics", metrics)
	} else {
		mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
			if _, ok := f.operator(w, r); ok {
				metrics.ServeHTTP(w, r)
			}
		})
	}
	mux.HandleFunc("POST /v1/cluster/init", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := f.operator(w, r); !ok {
			return
		}
		ms, err := f.m.Node.Members()
		if err != nil || len(ms) > 0 {
			f.routesLeader(w, r)
			return
		}
		if err := f.m.Node.Bootstrap(); err != nil {
			httpError(w, http.StatusInternalServerError, err.Error())
			return
		}
		f.log.Info("cluster: bootstrapped a new cluster with this member", "member", f.m.Node.Name())
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "a new cluster was started with this member: it is becoming the leader; retry shortly for the join token"})
	})
	mux.HandleFunc("/", f.routesLeader)
	return mux
}

// routesLeader redirects a request to the leader.
func (f *follower) routesLeader(w http.ResponseWriter, r *http.Request) {
	{
		lead, _ := f.leader()
		if lead == nil || lead.HTTP == "" {
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "this coordinator is a follower and no leader is known yet; retry shortly"})
			return
		}
		scheme := "http"
		if f.cfg.HTTPTLS {
			scheme = "https"
		}
		http.Redirect(w, r, scheme+"://"+lead.HTTP+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}
}

// operator authenticates an operator's request.
func (f *follower) operator(w http.ResponseWriter, r *http.Request) (auth.Principal, bool) {
	token, remote, err := auth.Request(r)
	var p auth.Principal
	if err == nil {
		// The leader may have added or revoked credentials meanwhile.
		err = f.auth.Reload()
	}
	if err == nil {
		p, err = f.auth.Token(token, remote)
	}
	if err == nil && p.Role != auth.Operator {
		err = errors.New("operators only")
	}
	if err != nil {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": err.Error()})
		return auth.Principal{}, false
	}
	return p, true
}

// ClusterView is GET /v1/cluster: this member's view of the cluster and
// where every member serves.
type ClusterView struct {
	Self string `json:"self"`
	// Raft, QUIC and HTTP are this member's own addresses.
	Raft    string             `json:"raft"`
	QUIC    string             `json:"quic,omitempty"`
	HTTP    string             `json:"http,omitempty"`
	Cluster string             `json:"cluster,omitempty"`
	Status  cluster.Status     `json:"status"`
	Members []store.MemberInfo `json:"members"`
}

func clusterView(m *Member, quicAddr, httpAddr string) ClusterView {
	v := ClusterView{Self: m.Node.Name(), Raft: m.Node.Address(), QUIC: quicAddr, HTTP: httpAddr, Status: m.Node.Status()}
	if ci, err := m.Store.Cluster(); err == nil && ci != nil {
		v.Cluster = ci.ID
	}
	v.Members, _ = m.Store.Members()
	return v
}
