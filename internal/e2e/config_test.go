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
