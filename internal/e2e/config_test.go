package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/proto"
)

func TestShippedConfigsAreValid(t *testing.T) {
	for _, f := range []string{"../../systemd/coordinator.toml", "../../systemd/agent.toml", "../../firmware-configs/h100-sxm.toml"} {
		out := run(t, "config", "check", f)
		if !strings.Contains(out, "valid") {
			t.Errorf("%s: %s", f, out)
		}
	}
	bad := filepath.Join(t.TempDir(), "coordinator.toml")
	os.WriteFile(bad, []byte("http = \"x\"\n\nidle_slot = 3\n"), 0o600)
	out, err := exec.Command(binPath, "config", "check", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "coordinator.toml:3: unknown key \"idle_slot\"") {
		t.Fatalf("bad config: %v %s", err, out)
	}
}

// SIGHUP reloads console tokens: a token added to the file works at once,
// without a restart; a broken file is refused and the running config kept.
func TestSIGHUPReloadsConsoleTokens(t *testing.T) {
	a := newAppliance(t)
	cfg := filepath.Join(t.TempDir(), "coordinator.toml")
	os.WriteFile(cfg, []byte("workers = 1\n"), 0o600)
	p := start(t, "dev", "--config", cfg, "--data", a.dir, "--http", a.http, "--quic", a.quic)
	a.waitReady(t, p)
	clip := testData + "/cards/001.wav"
	stream := func(token, call string) (string, error) {
		out, err := exec.Command(binPath, "stream", "--server", a.quic, "--ca", filepath.Join(a.dir, pki.CAFile), "--token", token,
			"--call", call, "--speed", "0", "--quiet", clip).CombinedOutput()
		return string(out), err
	}
	const extra = "an-extra-console-token-0123456789"
	if out, err := stream(extra, "before"); err == nil || !strings.Contains(out, "unauthorized") {
		t.Fatalf("unknown token accepted: %v %s", err, out)
	}
	os.WriteFile(cfg, []byte("workers = 1\nconsole_tokens = [\""+extra+"\"]\n"), 0o600)
	syscall.Kill(p.cmd.Process.Pid, syscall.SIGHUP)
	waitUntil(t, "reload", 10*time.Second, func() bool { return strings.Contains(p.output(), "configuration reloaded") })
	if out, err := stream(extra, "after"); err != nil {
		t.Fatalf("reloaded token refused: %v %s", err, out)
	}
	// The file's own token still works.
	if out, err := stream(a.token(t), "own"); err != nil {
		t.Fatalf("data-dir token refused after reload: %v %s", err, out)
	}
	os.WriteFile(cfg, []byte("workers = \"one\"\n"), 0o600)
	syscall.Kill(p.cmd.Process.Pid, syscall.SIGHUP)
	waitUntil(t, "refused reload", 10*time.Second, func() bool { return strings.Contains(p.output(), "reload refused") })
	if out, err := stream(extra, "still"); err != nil {
		t.Fatalf("a refused reload changed the running config: %v %s", err, out)
	}
}

// SIGHUP reloads the vocabulary: calls opened afterwards are decoded with
// the new words, a call opened before keeps its own, and a broken file is
// refused with the running vocabulary kept.
func TestSIGHUPReloadsVocabulary(t *testing.T) {
	a := newAppliance(t)
	dir := t.TempDir()
	cfg, vocab := filepath.Join(dir, "coordinator.toml"), filepath.Join(dir, "vocabulary.dict")
	os.WriteFile(vocab, []byte("motorway M OW T ER W EY\n"), 0o600)
	os.WriteFile(cfg, []byte("workers = 1\nvocabulary = \""+vocab+"\"\n"), 0o600)
	if out := run(t, "config", "check", cfg); !strings.Contains(out, "1 extra words") {
		t.Fatalf("config check: %s", out)
	}
	p := start(t, "dev", "--config", cfg, "--data", a.dir, "--http", a.http, "--quic", a.quic)
	a.waitReady(t, p)
	clip := testData + "/cards/001.wav"
	stream := func(call string) {
		run(t, "stream", "--server", a.quic, "--ca", filepath.Join(a.dir, pki.CAFile), "--token", a.token(t), "--call", call, "--speed", "0", "--quiet", clip)
	}
	words := func(call string) []string {
		var v struct {
			Vocabulary []proto.Word `json:"vocabulary"`
			State      string       `json:"state"`
		}
		a.getJSON(t, "/v1/calls/"+call, &v)
		if v.State != "finalised" {
			t.Fatalf("%s: %s, want finalised (decoded with its vocabulary)", call, v.State)
		}
		var ws []string
		for _, w := range v.Vocabulary {
			ws = append(ws, w.Word)
		}
		return ws
	}
	stream("before")
	os.WriteFile(vocab, []byte("motorway M OW T ER W EY\nsalbutamol S AE L B Y UW T AH M AA L\n"), 0o600)
	syscall.Kill(p.cmd.Process.Pid, syscall.SIGHUP)
	waitUntil(t, "reload", 10*time.Second, func() bool { return strings.Contains(p.output(), "vocabulary_words=2") })
	stream("after")
	if b, af := strings.Join(words("before"), ","), strings.Join(words("after"), ","); b != "motorway" || af != "motorway,salbutamol" {
		t.Fatalf("vocabulary before the reload %q, after %q", b, af)
	}
	os.WriteFile(vocab, []byte("motorway M OW T ER W EY\nbroken XX\n"), 0o600)
	syscall.Kill(p.cmd.Process.Pid, syscall.SIGHUP)
	waitUntil(t, "refused reload", 10*time.Second, func() bool {
		return strings.Contains(p.output(), "reload refused") && strings.Contains(p.output(), "vocabulary.dict:2")
	})
	stream("still")
	if w := strings.Join(words("still"), ","); w != "motorway,salbutamol" {
		t.Fatalf("after a refused reload: %q", w)
	}
}
