package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGenDocs: every command gets a man page listing its flags, the pages
// format without warnings, and the completion script is valid bash.
func TestGenDocs(t *testing.T) {
	for _, k := range []string{"HOME", "XDG_CACHE_HOME", "CALLSCRIBE_MODEL_DIR"} {
		t.Setenv(k, os.Getenv(k)) // gendocs changes them; restored after the test
	}
	dir := t.TempDir()
	var stderr bytes.Buffer
	if err := cmdGenDocs(context.Background(), []string{"--man", dir, "--bash", filepath.Join(dir, "callscribe.bash"), "--date", "2026-01-01"}, &stderr, &stderr); err != nil {
		t.Fatalf("gendocs: %v\n%s", err, stderr.String())
	}
	for name := range commands {
		if name == "gendocs" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "callscribe-"+name+".1"))
		if err != nil {
			t.Errorf("no man page for %s: %v", name, err)
			continue
		}
		if name != "config" && !strings.Contains(string(b), ".SH OPTIONS") {
			t.Errorf("callscribe-%s.1 lists no options", name)
		}
		if !strings.Contains(string(b), ".TH CALLSCRIBE\\-"+strings.ToUpper(name)+" 1 \"2026-01-01\"") {
			t.Errorf("callscribe-%s.1: bad .TH line", name)
		}
	}
	page, _ := os.ReadFile(filepath.Join(dir, "callscribe-models.1"))
	for _, want := range []string{`.SS "callscribe models install"`, `.BI "\-\-dest " STRING`, "(default: /usr/share/callscribe/models)", "(default: ~/.cache/callscribe/npm)"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("callscribe-models.1 lacks %q:\n%s", want, page)
		}
	}
	if groff, err := exec.LookPath("groff"); err == nil {
		pages, _ := filepath.Glob(filepath.Join(dir, "*.1"))
		for _, p := range pages {
			out, err := exec.Command(groff, "-man", "-ww", "-z", p).CombinedOutput()
			if err != nil || len(out) > 0 {
				t.Errorf("groff -man -ww %s: %v\n%s", filepath.Base(p), err, out)
			}
		}
	}
	if out, err := exec.Command("bash", "-n", filepath.Join(dir, "callscribe.bash")).CombinedOutput(); err != nil {
		t.Errorf("bash -n callscribe.bash: %v\n%s", err, out)
	}
}
