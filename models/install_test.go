package models

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func tgz(t *testing.T, files map[string][]byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, b := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b))})
		tw.Write(b)
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// The installer takes files only from a tarball with the pinned hash,
// writes only files with their pinned hash, and leaves good files alone.
func TestInstall(t *testing.T) {
	model := []byte("weights")
	js := []byte(`const llama_vocab_base64 = "` + "PHVuaz4KPHM+CuKWgWhlbGxvCjwweDBBPg==" + `";`) // <unk>, <s>, ▁hello, <0x0A>
	toks, err := LlamaTokens(js)
	if err != nil {
		t.Fatal(err)
	}
	pkg := tgz(t, map[string][]byte{"package/m.onnx": model, "package/t.js": js, "package/other": []byte("x")})
	src := Source{Name: "@x/y", Version: "1.0.0", SHA256: sum(pkg), Files: []SourceFile{
		{From: "package/m.onnx", To: "m/m.onnx", SHA256: sum(model)},
		{From: "package/t.js", To: "m/tokens.txt", Convert: "llama-tokens", SHA256: sum(toks)},
	}}
	fetches := 0
	fetch := func(_ context.Context, s Source, dir string) error {
		fetches++
		return os.WriteFile(filepath.Join(dir, s.Tarball()), pkg, 0o644)
	}
	dest, cache := t.TempDir(), t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := Install(context.Background(), []Source{src}, dest, cache, fetch, log); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "m/m.onnx")); !bytes.Equal(b, model) {
		t.Fatal("model file not installed")
	}
	lines := strings.Split(strings.TrimSpace(string(toks)), "\n")
	if len(lines) != MoonshineVocab || lines[2] != "IGhlbGxv 2" || lines[3] != "Cg== 3" || lines[4] != "PGV4dHJhXzQ+ 4" {
		t.Fatalf("tokens: %d lines, %q", len(lines), lines[:5])
	}
	// Installed and unchanged: nothing is fetched again.
	if err := Install(context.Background(), []Source{src}, dest, cache, fetch, log); err != nil || fetches != 1 {
		t.Fatalf("second install: %v, %d fetches", err, fetches)
	}
	// A damaged file is replaced from the cached tarball.
	os.WriteFile(filepath.Join(dest, "m/m.onnx"), []byte("damaged"), 0o644)
	if err := Install(context.Background(), []Source{src}, dest, cache, fetch, log); err != nil || fetches != 1 {
		t.Fatalf("repair: %v, %d fetches", err, fetches)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "m/m.onnx")); !bytes.Equal(b, model) {
		t.Fatal("damaged file not repaired")
	}
	// A tarball with other bytes than pinned is refused, and nothing written.
	bad := src
	bad.SHA256 = sum([]byte("something else"))
	dest2 := t.TempDir()
	err = Install(context.Background(), []Source{bad}, dest2, t.TempDir(), fetch, log)
	if err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("tampered tarball: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dest2, "m/m.onnx")); err == nil {
		t.Fatal("a file from a refused tarball was written")
	}
	// A file whose content differs from its pin is refused.
	bad = src
	bad.Files = []SourceFile{{From: "package/m.onnx", To: "m/m.onnx", SHA256: sum([]byte("other"))}}
	if err := Install(context.Background(), []Source{bad}, t.TempDir(), t.TempDir(), fetch, log); err == nil {
		t.Fatal("a file with the wrong hash was installed")
	}
}

// The shipped sources and manifests agree: every hashed manifest file is
// produced by a source with the same hash.
func TestSourcesMatchManifests(t *testing.T) {
	srcs, err := Sources()
	if err != nil {
		t.Fatal(err)
	}
	made := map[string]string{}
	for _, s := range srcs {
		for _, f := range s.Files {
			made[f.To] = f.SHA256
		}
	}
	cat, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range cat.Names() {
		m := cat[n]
		for _, f := range m.fileList() {
			want, ok := m.SHA256[f.role]
			if !ok {
				continue
			}
			if made[f.path] != want {
				t.Errorf("%s: %s (%s) sha256 %s, sources.toml gives %q", n, f.path, f.role, want, made[f.path])
			}
		}
	}
}

// A missing or damaged model file is an error naming the file, its role
// and the expected hash.
func TestCheckFilesNamesFileAndHash(t *testing.T) {
	dir := t.TempDir()
	good := []byte("encoder")
	os.WriteFile(filepath.Join(dir, "enc.onnx"), good, 0o644)
	os.WriteFile(filepath.Join(dir, "dec.onnx"), []byte("tampered"), 0o644)
	m := &Manifest{Name: "t", Engine: "moonshine", SampleRate: 16000}
	m.Files.Encoder, m.Files.Decoder, m.Files.Tokens = filepath.Join(dir, "enc.onnx"), filepath.Join(dir, "dec.onnx"), filepath.Join(dir, "tokens.txt")
	want := strings.Repeat("ab", 32)
	m.SHA256 = map[string]string{"encoder": sum(good), "decoder": want, "tokens": want}
	err := m.CheckFiles()
	if err == nil {
		t.Fatal("damaged and missing files passed")
	}
	for _, s := range []string{"dec.onnx (decoder) is damaged", "want " + want, "tokens.txt (tokens, sha256 " + want + ") is missing"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
	if strings.Contains(err.Error(), "enc.onnx") {
		t.Errorf("the good file is reported: %v", err)
	}
}
