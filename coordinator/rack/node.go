package rack

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

// ServeNode handles an agent's or a worker's connection. Its first stream
// carries the hello and, for agents, heartbeats and commands.
func (c *Rack) ServeNode(ctx context.Context, conn *quic.Conn) {
	hctx, cancel := context.WithTimeout(ctx, tuning.NodeHelloTimeout)
	st, err := conn.AcceptStream(hctx)
	cancel()
	if err != nil {
		_ = conn.CloseWithError(1, "no control stream")
		return
	}
	r, w := proto.NewReader(st), proto.NewWriter(st)
	if c.cfg.NodeCAs != nil && !pki.HasKind(conn.ConnectionState().TLS.VerifiedChains, pki.KindNode) {
		c.log.Warn("node refused: no node certificate", "remote", conn.RemoteAddr().String())
		_ = w.WriteJSON(proto.TError, &proto.Error{Code: proto.CodeUnauthorized, Message: "a node certificate from this coordinator's CA is required", Fatal: true})
		_ = st.Close()
		time.Sleep(tuning.RefusalLinger)
		_ = conn.CloseWithError(1, proto.CodeUnauthorized)
		return
	}
	_ = st.SetReadDeadline(time.Now().Add(tuning.NodeHelloTimeout))
	m, err := r.Read()
	if err != nil {
		_ = conn.CloseWithError(1, "no hello")
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	refuse := func(code, msg string) {
		c.log.Warn("node refused", "remote", conn.RemoteAddr().String(), "code", code, "why", msg)
		_ = w.WriteJSON(proto.TError, &proto.Error{Code: code, Message: msg, Fatal: true})
		_ = st.Close()
		time.Sleep(tuning.RefusalLinger)
		_ = conn.CloseWithError(1, code)
	}
	switch m.Type {
	case proto.TWorkerHello:
		var h proto.WorkerHello
		if err := proto.Unmarshal(m, &h); err != nil {
			refuse(proto.CodeBadRequest, err.Error())
			return
		}
		if code, msg := c.checkNode(h.Version, h.Token, string(h.WorkerID)); code != "" {
			refuse(code, msg)
			return
		}
		if _, err := c.cfg.Models.Get(h.Model); err != nil || h.Slots < 1 {
			refuse(proto.CodeUnknownModel, fmt.Sprintf("model %q with %d slots", h.Model, h.Slots))
			return
		}
		lim := c.limits()
		wel := proto.WorkerWelcome{Version: proto.Version}
		live := h.Version >= 2 // version-1 workers send no pings
		if live {
			wel.PingIntervalMS, wel.TimeoutMS = lim.WorkerPing.Milliseconds(), lim.WorkerTimeout.Milliseconds()
		}
		if err := w.WriteJSON(proto.TWorkerWelcome, wel); err != nil {
			return
		}
		wc := c.reg.addWorker(h, conn)
		c.log.Info("worker registered", "worker", h.WorkerID, "node", h.NodeID, "model", h.Model, "slots", h.Slots, "pid", h.PID, "self_test", h.SelfTest, "version", h.Version)
		// The control stream stays open for the worker's life; a version-2
		// worker pings on it, and one silent for WorkerTimeout is frozen or
		// wedged: it is dropped, so its channels move at once.
		why := "control stream closed"
		for {
			if live {
				_ = st.SetReadDeadline(time.Now().Add(lim.WorkerTimeout))
			}
			_, err := r.Read()
			if err == nil {
				continue
			}
			var ne net.Error
			if live && errors.As(err, &ne) && ne.Timeout() {
				why = fmt.Sprintf("no liveness ping for %v (frozen?)", lim.WorkerTimeout)
				c.log.Warn("worker unresponsive: dropping it, its channels move", "worker", h.WorkerID, "node", h.NodeID, "pid", h.PID, "timeout", lim.WorkerTimeout)
				c.obs.WorkerUnresponsive()
				c.withdrawWorker(h.WorkerID, h.NodeID, why)
			}
			break
		}
		c.reg.removeWorker(wc, why)
	case proto.TAgentHello:
		var h proto.AgentHello
		if err := proto.Unmarshal(m, &h); err != nil {
			refuse(proto.CodeBadRequest, err.Error())
			return
		}
		if code, msg := c.checkNode(h.Version, h.Token, string(h.NodeID)); code != "" {
			refuse(code, msg)
			return
		}
		c.serveAgent(conn, h, r, w)
	default:
		refuse(proto.CodeBadRequest, fmt.Sprintf("first message type %d", m.Type))
	}
}

func (c *Rack) checkNode(version int, token, id string) (string, string) {
	switch {
	case version < proto.MinVersion || version > proto.Version:
		return proto.CodeBadVersion, fmt.Sprintf("protocol version %d not supported (want %d..%d)", version, proto.MinVersion, proto.Version)
	case !pki.TokenEqual(token, c.cfg.NodeTokens):
		return proto.CodeUnauthorized, "invalid node token"
	case !proto.ValidID(id):
		return proto.CodeBadRequest, fmt.Sprintf("invalid id %q", id)
	}
	return "", ""
}

// serveAgent runs an agent's control stream: welcome, worker commands,
// heartbeats, and loss on a missed TTL.
func (c *Rack) serveAgent(conn *quic.Conn, h proto.AgentHello, r *proto.Reader, w *proto.Writer) {
	log := c.log.With("node", h.NodeID)
	// Each node gets its own TTL, jittered by up to 10 %, so that nodes
	// registered together are not all judged in the same instant.
	ttl := c.cfg.HeartbeatTTL + time.Duration(rand.Int64N(int64(float64(c.cfg.HeartbeatTTL)*tuning.HeartbeatJitter)+1))
	welcome := proto.AgentWelcome{Version: proto.Version, IntervalMS: c.cfg.HeartbeatInterval.Milliseconds(), TTLMS: ttl.Milliseconds()}
	if err := w.WriteJSON(proto.TAgentWelcome, welcome); err != nil {
		return
	}
	n := &node{id: h.NodeID, hello: h, lastSeen: time.Now(), conn: conn, send: func(cmd proto.Command) error { return w.WriteJSON(proto.TCommand, cmd) }}
	lost := func(why string) {
		c.reg.mu.Lock()
		if c.reg.nodes[h.NodeID] != n || n.lost {
			c.reg.mu.Unlock()
			return
		}
		n.lost = true
		n.ttl.Stop()
		c.reg.mu.Unlock()
		log.Warn("node lost", "why", why)
		c.reg.nodeLost(h.NodeID, "node lost: "+why)
		c.reg.kickReconcile()
		_ = conn.CloseWithError(2, "node lost")
	}
	c.reg.mu.Lock()
	var replaced *quic.Conn
	if old, ok := c.reg.nodes[h.NodeID]; ok && old.ttl != nil {
		old.ttl.Stop()
		old.lost = true
		replaced = old.conn
	}
	c.reg.nodes[h.NodeID] = n
	n.ttl = time.AfterFunc(ttl, func() { lost("no heartbeat within TTL") })
	c.reg.mu.Unlock()
	if replaced != nil {
		_ = replaced.CloseWithError(0, "replaced by a new agent session")
	}
	log.Info("agent registered", "cpu_only", h.CPUOnly, "gpus", len(h.GPUs), "host", h.Host.Hostname, "cpus", h.Host.CPUs)

	// Adopt the workers the agent already runs (after a reconnect or a
	// coordinator restart), and restart the ones placed here it lacks.
	var resend []nodeCommand
	c.reg.mu.Lock()
	reported := map[proto.WorkerID]bool{}
	for _, ws := range h.Workers {
		if ws.State == proto.WorkerFailed || ws.State == proto.WorkerStopped {
			continue
		}
		reported[ws.ID] = true
		if _, ok := c.reg.planned[ws.ID]; !ok {
			if m, err := c.cfg.Models.Get(ws.Model); err == nil {
				c.reg.planned[ws.ID] = &plannedWorker{id: ws.ID, node: h.NodeID, gpu: ws.GPU, model: m.Name, needs: needsOf(m), since: time.Now()}
				log.Info("adopted running worker", "worker", ws.ID, "model", ws.Model)
			}
		}
	}
	for id, p := range c.reg.planned {
		if p.node == h.NodeID && !reported[id] {
			resend = append(resend, nodeCommand{h.NodeID, proto.Command{Op: proto.OpStartWorker, WorkerID: id, Model: p.model, GPU: p.gpu}})
		}
	}
	c.reg.mu.Unlock()
	c.send(resend)
	c.reg.kickReconcile()
	for {
		m, err := r.Read()
		if err != nil {
			lost("control stream closed: " + err.Error())
			return
		}
		if m.Type != proto.THeartbeat {
			continue
		}
		var hb proto.Heartbeat
		if err := proto.Unmarshal(m, &hb); err != nil {
			log.Warn("bad heartbeat", "err", err)
			continue
		}
		c.reg.mu.Lock()
		n.last, n.lastSeen = hb, time.Now()
		n.ttl.Reset(ttl)
		c.reg.mu.Unlock()
		for _, ws := range hb.Workers {
			if ws.State != proto.WorkerRunning && ws.State != proto.WorkerStarting {
				c.reg.workerExited(ws.ID, "agent reports worker "+ws.State+": "+ws.LastExit)
			}
			if ws.State == proto.WorkerFailed { // the agent gave up: place a replacement
				c.reg.mu.Lock()
				if p, ok := c.reg.planned[ws.ID]; ok && p.node == h.NodeID {
					delete(c.reg.planned, ws.ID)
					log.Warn("worker failed for good: replacing it", "worker", ws.ID, "last_exit", ws.LastExit)
					c.reg.kickReconcile()
				}
				c.reg.mu.Unlock()
			}
		}
	}
}

// withdrawWorker forgets a placed worker and tells its agent to stop it
// (a frozen process is killed there), so the policy places a fresh one.
func (c *Rack) withdrawWorker(id proto.WorkerID, node proto.NodeID, why string) {
	c.reg.mu.Lock()
	p, planned := c.reg.planned[id]
	if planned {
		delete(c.reg.planned, id)
		c.reg.lastChange[p.model] = time.Now()
	}
	c.reg.mu.Unlock()
	if planned {
		c.log.Warn("scaling: worker withdrawn", "worker", id, "node", node, "why", why)
		c.send([]nodeCommand{{node, proto.Command{Op: proto.OpStopWorker, WorkerID: id}}})
		c.reg.kickReconcile()
	}
}

func storeNode(id proto.NodeID, drain bool) store.Node {
	return store.Node{ID: id, Draining: drain, Updated: time.Now().UTC()}
}
