package supervisor

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/callscribe/callscribe/proto"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRestartsAKilledWorkerAndStopsTheGroup(t *testing.T) {
	dir := t.TempDir()
	// The "worker" starts a grandchild; stopping must kill both.
	script := filepath.Join(dir, "w.sh")
	os.WriteFile(script, []byte("#!/bin/sh\nsleep 600 &\necho $! > "+dir+"/child.$$\nwait\n"), 0o755)
	t.Setenv("NOTIFY_SOCKET", "/run/should-not-leak")
	s := New(slog.New(slog.NewTextHandler(io.Discard, nil)), Policy{Attempts: 5, Interval: time.Minute, Delay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond}, nil)
	s.Start(Spec{ID: "w0", Model: "m", Path: script, Env: []string{"X=1"}})
	waitFor(t, "worker running", func() bool { return s.PID("w0") > 0 })
	first := s.PID("w0")
	env, _ := os.ReadFile("/proc/" + itoa(first) + "/environ")
	if strings.Contains(string(env), "NOTIFY_SOCKET") || !strings.Contains(string(env), "X=1") {
		t.Fatalf("worker environment wrong: NOTIFY_SOCKET leaked or X missing")
	}
	syscall.Kill(first, syscall.SIGKILL)
	waitFor(t, "restart", func() bool { p := s.PID("w0"); return p > 0 && p != first })
	st := s.Status()
	if len(st) != 1 || st[0].Restarts != 1 || st[0].LastExit != "killed by killed" || st[0].State != proto.WorkerRunning {
		t.Fatalf("status after restart: %+v", st)
	}
	second := s.PID("w0")
	var childPID string
	waitFor(t, "grandchild pid file", func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "child."+itoa(second)))
		childPID = strings.TrimSpace(string(b))
		return err == nil && childPID != ""
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.StopAll(ctx)
	if st := s.Status(); st[0].State != proto.WorkerStopped {
		t.Fatalf("state after stop: %+v", st)
	}
	waitFor(t, "grandchild killed with the group", func() bool {
		b, err := os.ReadFile("/proc/" + childPID + "/stat")
		return err != nil || strings.Contains(string(b), ") Z ")
	})
}

func TestGivesUpOnACrashLoop(t *testing.T) {
	s := New(slog.New(slog.NewTextHandler(io.Discard, nil)), Policy{Attempts: 3, Interval: time.Minute, Delay: time.Millisecond, MaxDelay: time.Millisecond}, nil)
	s.Start(Spec{ID: "bad", Path: "/bin/false"})
	waitFor(t, "failed state", func() bool { st := s.Status(); return st[0].State == proto.WorkerFailed })
	if st := s.Status(); st[0].Restarts != 2 || st[0].LastExit != "exited 1" {
		t.Fatalf("status: %+v", st)
	}
}

// A worker that gave up or was stopped is reported a while (the coordinator
// sees it end), then forgotten: scale-ups make new ids, and the status an
// agent sends every heartbeat must not grow with them.
func TestEndedWorkersAreForgotten(t *testing.T) {
	old := endedKept
	endedKept = 100 * time.Millisecond
	defer func() { endedKept = old }()
	s := New(slog.New(slog.NewTextHandler(io.Discard, nil)), Policy{Attempts: 1, Interval: time.Minute, Delay: time.Millisecond, MaxDelay: time.Millisecond}, nil)
	s.Start(Spec{ID: "bad", Path: "/bin/false"})
	waitFor(t, "failed state", func() bool { st := s.Status(); return len(st) == 1 && st[0].State == proto.WorkerFailed })
	waitFor(t, "forgotten", func() bool { return len(s.Status()) == 0 })
	s.Start(Spec{ID: "sleeper", Path: "/bin/sleep", Args: []string{"30"}})
	waitFor(t, "running", func() bool { st := s.Status(); return len(st) == 1 && st[0].State == proto.WorkerRunning })
	s.Stop("sleeper")
	waitFor(t, "stopped", func() bool { st := s.Status(); return len(st) == 1 && st[0].State == proto.WorkerStopped })
	waitFor(t, "forgotten", func() bool { return len(s.Status()) == 0 })
}

func itoa(n int) string {
	b := []byte{}
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}
