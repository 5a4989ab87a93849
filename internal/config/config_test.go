package config

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type testCfg struct {
	HTTP    string   `toml:"http" help:"HTTP address"`
	Workers int      `toml:"workers"`
	Tokens  []string `toml:"console_tokens"`
	Check   Duration `toml:"check_interval"`
	Apply   bool     `toml:"apply"`
	XIDs    []uint64 `toml:"ignore_xids"`
}

func defaults() *testCfg {
	return &testCfg{HTTP: "127.0.0.1:8080", Workers: 2, Check: Duration{time.Second}}
}

func write(t *testing.T, dir, name, s string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPrecedenceFlagsEnvFileDropIns(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "c.toml", "http = \"0.0.0.0:80\"\nworkers = 4\ncheck_interval = \"5s\"\nignore_xids = [13, 31]\n")
	write(t, dir, "c.toml.d/10-more.toml", "workers = 6\n")
	write(t, dir, "c.toml.d/20-last.toml", "workers = 8\n")
	t.Setenv("CALLSCRIBE_CHECK_INTERVAL", "3s")
	t.Setenv("CALLSCRIBE_HTTP", "10.0.0.1:80")
	cfg := defaults()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	Bind(fs, cfg)
	if err := fs.Parse([]string{"--http", "127.0.0.2:81", "--apply"}); err != nil {
		t.Fatal(err)
	}
	src, err := Resolve(fs, cfg, p, true)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTP != "127.0.0.2:81" || cfg.Workers != 8 || cfg.Check.Duration != 3*time.Second || !cfg.Apply || len(cfg.XIDs) != 2 {
		t.Fatalf("effective %+v", cfg)
	}
	if src["http"] != "flag --http" || !strings.HasSuffix(src["workers"], "20-last.toml") || src["check_interval"] != "env CALLSCRIBE_CHECK_INTERVAL" {
		t.Fatalf("sources %v", src)
	}
	eff := strings.Join(Effective(cfg, src), "\n")
	if !strings.Contains(eff, "workers=8") || !strings.Contains(eff, "check_interval=3s (env") {
		t.Fatalf("effective listing:\n%s", eff)
	}
}

func TestStrictErrorsNameFileAndLine(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "c.toml", "http = \"x\"\n\nworkres = 3\n")
	_, err := Resolve(flag.NewFlagSet("t", flag.ContinueOnError), defaults(), p, true)
	if err == nil || !strings.Contains(err.Error(), "c.toml:3: unknown key \"workres\"") {
		t.Fatalf("got %v", err)
	}
	p = write(t, dir, "d.toml", "http = \n")
	if _, err := Resolve(flag.NewFlagSet("t", flag.ContinueOnError), defaults(), p, true); err == nil || !strings.Contains(err.Error(), "d.toml:1") {
		t.Fatalf("syntax error: %v", err)
	}
	p = write(t, dir, "e.toml", "workers = \"two\"\n")
	if _, err := Resolve(flag.NewFlagSet("t", flag.ContinueOnError), defaults(), p, true); err == nil || !strings.Contains(err.Error(), "e.toml") {
		t.Fatalf("type error: %v", err)
	}
	if _, err := Resolve(flag.NewFlagSet("t", flag.ContinueOnError), defaults(), filepath.Join(dir, "missing.toml"), true); err == nil {
		t.Fatal("a missing required file passed")
	}
	t.Setenv("CALLSCRIBE_WORKERS", "many")
	if _, err := Resolve(flag.NewFlagSet("t", flag.ContinueOnError), defaults(), "", false); err == nil || !strings.Contains(err.Error(), "CALLSCRIBE_WORKERS") {
		t.Fatalf("bad env: %v", err)
	}
}

func TestSecretsAreMasked(t *testing.T) {
	cfg := defaults()
	cfg.Tokens = []string{"very-secret"}
	if eff := strings.Join(Effective(cfg, Source{}), " "); strings.Contains(eff, "very-secret") {
		t.Fatalf("token logged: %s", eff)
	}
}
