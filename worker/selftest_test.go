package worker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/callscribe/callscribe/internal/wer"
	"github.com/callscribe/callscribe/models"
	"github.com/callscribe/callscribe/models/engine"
)

// Every shipped model passes its own self-test (the transcript its
// manifest expects of the built-in clip): a worker of any of them can
// become ready.
func TestEveryModelPassesItsSelfTest(t *testing.T) {
	cat, err := models.Load("")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range cat.Names() {
		t.Run(name, func(t *testing.T) {
			m := cat[name]
			f, err := engine.NewFactory(m)
			if err != nil {
				if errors.Is(err, models.ErrModelFile) && os.Getenv("CALLSCRIBE_REQUIRE_MODELS") == "" {
					t.Skipf("model not installed: %v", err)
				}
				t.Fatal(err)
			}
			pool := engine.NewPool(f, 1)
			defer pool.Close()
			text, err := SelfTest(context.Background(), pool, m)
			if err != nil {
				t.Fatal(err)
			}
			// As written words: an engine may spell "metres" as "meters"
			// on another CPU (SelfTest compares the same way).
			if !slices.Equal(wer.Words(text), wer.Words(m.SelfTest.Expect)) {
				t.Fatalf("self-test %q, manifest expects %q", text, m.SelfTest.Expect)
			}
		})
	}
}

// A worker whose model file is damaged does not start: the error names the
// file and the expected hash, before any connection to a coordinator.
func TestWorkerRefusesDamagedModel(t *testing.T) {
	dir := t.TempDir()
	src := models.Dir()
	for _, f := range []string{"moonshine/base/encoder_model.onnx", "moonshine/tokens.txt"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(src, f), filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "moonshine/base/decoder_model_merged.onnx"), []byte("not a model"), 0o644)
	man := filepath.Join(t.TempDir(), "m.toml")
	os.WriteFile(man, []byte(strings.ReplaceAll(string(mustRead(t, "../models/manifests/moonshine-base.toml")), `"moonshine/`, `"`+dir+`/moonshine/`)), 0o644)
	err := Run(context.Background(), Config{Model: "moonshine-base", ModelDir: filepath.Dir(man), Coordinator: "127.0.0.1:1", Logger: discard()})
	if err == nil || !strings.Contains(err.Error(), "decoder_model_merged.onnx (decoder) is damaged") || !strings.Contains(err.Error(), "cc9f3cd6698a369c6008b41aa60aa3fb3322e7f03c9bdf19d8e6b7200afca4f3") {
		t.Fatalf("got %v", err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
