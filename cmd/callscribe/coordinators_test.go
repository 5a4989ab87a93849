package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/callscribe/callscribe/internal/config"
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
