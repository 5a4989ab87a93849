package worker

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/internal/leader"
	"github.com/callscribe/callscribe/internal/leader/leadertest"
	"github.com/callscribe/callscribe/proto"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func nodeTLS(p *leadertest.PKI) *tls.Config {
	return &tls.Config{RootCAs: p.Pool, ServerName: "localhost", NextProtos: []string{proto.ALPNNode}, MinVersion: tls.VersionTLS13}
}

var testHello = proto.WorkerHello{Version: proto.Version, Token: "node-token", WorkerID: "w1", NodeID: "n1", Model: "m", Slots: 1, SelfTest: "ok"}

// A worker started with a follower's address (and a dead one) registers
// with the leader the follower names.
func TestWorkerFollowsTheLeader(t *testing.T) {
	p := leadertest.NewPKI(t)
	hellos := make(chan proto.WorkerHello, 4)
	ls := leadertest.Serve(t, p, proto.ALPNNode, func(ctx context.Context, first proto.Msg, r *proto.Reader, w *proto.Writer) {
		var h proto.WorkerHello
		if first.Type != proto.TWorkerHello || proto.Unmarshal(first, &h) != nil {
			return
		}
		if w.WriteJSON(proto.TWorkerWelcome, proto.WorkerWelcome{Version: proto.Version, PingIntervalMS: 50, TimeoutMS: 1000}) != nil {
			return
		}
		hellos <- h
		for { // pings until the worker stops
			if _, err := r.Read(); err != nil {
				return
			}
		}
	})
	fol := leadertest.Follower(t, p, proto.ALPNNode, func() *proto.Error { return proto.NotLeader(ls.Addr, []string{ls.Addr}) })
	logs := &syncBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- connect(ctx, leader.New([]string{leadertest.DeadAddr(t), fol.Addr}), nodeTLS(p), testHello, nil, slog.New(slog.NewTextHandler(logs, nil)))
	}()
	select {
	case h := <-hellos:
		if h.WorkerID != "w1" || h.Token != "node-token" {
			t.Errorf("the leader got %+v", h)
		}
	case err := <-done:
		t.Fatalf("worker stopped: %v\n%s", err, logs.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("the worker never registered with the leader:\n%s", logs.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("connect: %v", err)
	}
	if f := fol.Firsts(); len(f) != 1 || f[0].Type != proto.TWorkerHello {
		t.Fatalf("the follower got %v", f)
	}
}

// A worker given only dead coordinators says so, naming each, and keeps
// trying until it is stopped.
func TestWorkerNoCoordinatorReachable(t *testing.T) {
	p := leadertest.NewPKI(t)
	d1, d2 := leadertest.DeadAddr(t), leadertest.DeadAddr(t)
	logs := &syncBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- connect(ctx, leader.New([]string{d1, d2}), nodeTLS(p), testHello, nil, slog.New(slog.NewTextHandler(logs, nil)))
	}()
	want := "no coordinator reachable at " + d1 + ", " + d2
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), want) {
		select {
		case err := <-done:
			t.Fatalf("worker gave up: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("no %q in the log:\n%s", want, logs.String())
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("connect: %v", err)
	}
}

// A refusal other than not_leader, at the leader, ends the worker.
func TestWorkerRefusedAtTheLeader(t *testing.T) {
	p := leadertest.NewPKI(t)
	ls := leadertest.Follower(t, p, proto.ALPNNode, func() *proto.Error {
		return &proto.Error{Code: proto.CodeUnauthorized, Message: "bad node token", Fatal: true}
	})
	fol := leadertest.Follower(t, p, proto.ALPNNode, func() *proto.Error { return proto.NotLeader(ls.Addr, nil) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := connect(ctx, leader.New([]string{fol.Addr}), nodeTLS(p), testHello, nil, discard())
	if err == nil || !strings.Contains(err.Error(), "bad node token") {
		t.Fatalf("got %v", err)
	}
}
