package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/callscribe/callscribe/internal/config"
	"github.com/callscribe/callscribe/internal/tuning"
)

// The agent's coordinators: the old single address still works, a
// comma-separated list or the coordinators array gives several, and a
// malformed address is refused by config check, naming the key.
func TestAgentCoordinatorList(t *testing.T) {
	for _, c := range []struct {
		toml string
		want []string
		bad  string
	}{
		{toml: `coordinator = "coord.local:4433"`, want: []string{"coord.local:4433"}},
		{toml: `coordinator = "c1:4433, c2:4433,c3:4433"`, want: []string{"c1:4433", "c2:4433", "c3:4433"}},
		{toml: "coordinator = \"old:4433\"\ncoordinators = [\"c1:4433\", \"c2:4433\"]", want: []string{"c1:4433", "c2:4433"}},
		{toml: `coordinators = ["c1:4433"]`, want: []string{"c1:4433"}},
		{toml: `coordinator = "c1:4433,c2"`, bad: `coordinator: coordinator address "c2": want host:port`},
		{toml: `coordinators = ["c1:4433", "http://c2:4433"]`, bad: `coordinators: coordinator address "http://c2:4433"`},
	} {
		path := filepath.Join(t.TempDir(), "agent.toml")
		if err := os.WriteFile(path, []byte(c.toml+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		var out, errOut bytes.Buffer
		err := cmdConfig(context.Background(), []string{"check", path}, &out, &errOut)
		if c.bad != "" {
			if err == nil || !strings.Contains(err.Error(), c.bad) {
				t.Errorf("%s: got %v, want %q", c.toml, err, c.bad)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.toml, err)
			continue
		}
		ac := defaultAgentConfig() // as the agent reads it
		if _, err := config.Resolve(flag.NewFlagSet("agent", flag.ContinueOnError), ac, path, true); err != nil {
			t.Fatal(err)
		}
		got, err := ac.coordinatorList()
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s: %v %v, want %v", c.toml, got, err, c.want)
		}
	}
}

func TestWorkerCoordinatorFlag(t *testing.T) {
	var out, errOut bytes.Buffer
	err := cmdWorker(context.Background(), []string{"--worker-id", "w1", "--ca", "ca.pem", "--coordinator", "c1:4433,nonsense"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), `"nonsense"`) {
		t.Fatalf("got %v", err)
	}
}

// The cluster's snapshot keys reach the member's configuration (the
// defaults are tuning's), and values that would never snapshot, or check
// all the time, are refused.
func TestClusterSnapshotKeys(t *testing.T) {
	for _, c := range []struct {
		args        []string
		bad         bool
		n, trailing uint64
		interval    time.Duration
	}{
		{n: tuning.ClusterSnapshotThreshold, trailing: tuning.ClusterTrailingLogs, interval: tuning.ClusterSnapshotInterval},
		{args: []string{"--cluster-snapshot-entries", "64", "--cluster-trailing-entries", "16", "--cluster-snapshot-interval", "1s"}, n: 64, trailing: 16, interval: time.Second},
		{args: []string{"--cluster-snapshot-entries", "0"}, bad: true},
		{args: []string{"--cluster-trailing-entries", "-1"}, bad: true},
		{args: []string{"--cluster-snapshot-interval", "1ms"}, bad: true},
	} {
		dir := t.TempDir()
		fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
		l, _, err := loadCoordinatorConfig(fs, append([]string{"--data", dir}, c.args...), dir, "", io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		cfg, _, _, err := l.setup(slog.New(slog.NewTextHandler(io.Discard, nil)))
		if c.bad {
			if err == nil || !strings.Contains(err.Error(), "cluster_snapshot_entries") {
				t.Errorf("%v: got %v, want a refusal naming the keys", c.args, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if cl := cfg.Cluster; cl.SnapshotThreshold != c.n || cl.TrailingLogs != c.trailing || cl.SnapshotInterval != c.interval {
			t.Errorf("%v: got entries %d, trailing %d, interval %v", c.args, cl.SnapshotThreshold, cl.TrailingLogs, cl.SnapshotInterval)
		}
	}
}

// cluster init retries while the member it bootstrapped becomes the
// leader: the answer that says so (503), and the connections its switch
// from follower to leader closes (reset, EOF) or refuses; not a refusal
// of the request itself.
func TestClusterInitRetryable(t *testing.T) {
	reset := &url.Error{Op: "Post", URL: "https://10.0.0.1:8080/v1/cluster/init",
		Err: &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("coordinator at https://10.0.0.1:8080: %w", reset), true},
		{fmt.Errorf("coordinator at https://10.0.0.1:8080: %w", &url.Error{Op: "Post", URL: "u", Err: io.EOF}), true},
		{errors.New("coordinator answered 503 Service Unavailable: a new cluster was started with this member"), true},
		{errors.New("dial tcp 10.0.0.1:8080: connect: connection refused"), true},
		{errors.New("coordinator answered 401 Unauthorized: operators only"), false},
		{errors.New("coordinator answered 409 Conflict: a cluster of one"), false},
	} {
		if got := retryable(c.err); got != c.want {
			t.Errorf("retryable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
