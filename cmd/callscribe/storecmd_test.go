package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/proto"
)

// storeWithCalls makes a data directory with a store of n calls, closed.
func storeWithCalls(t *testing.T, n int) (dataDir, storeDir string) {
	t.Helper()
	dataDir = t.TempDir()
	storeDir = filepath.Join(dataDir, "store")
	s, err := store.Open(storeDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range n {
		id := proto.CallID(fmt.Sprintf("call-%04d", i))
		c := &store.Call{ID: id, Console: "c", Channels: []string{"caller"}, State: store.StateOpen, Created: time.Now()}
		if err := s.PutCall(ctx, c); err != nil {
			t.Fatal(err)
		}
		fs := make([]store.Frame, 5)
		for j := range fs {
			p := bytes.Repeat([]byte{byte(i), byte(j), 7}, 200)
			fs[j] = store.Frame{Seq: uint32(j), Payload: p}
		}
		if err := s.PutFrames(ctx, id, 0, fs); err != nil {
			t.Fatal(err)
		}
		if err := s.PutFinal(ctx, id, store.Final{Text: "hello"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return dataDir, storeDir
}

func runStoreCheck(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := cmdStore(context.Background(), append([]string{"check"}, args...), &out, &errb)
	if errors.Is(err, errUsage) {
		t.Fatalf("usage error: %s", errb.String())
	}
	return out.String(), err
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func TestStoreCheckIntact(t *testing.T) {
	data, dir := storeWithCalls(t, 40)
	for _, d := range []string{dir, data} { // the store or the data directory
		out, err := runStoreCheck(t, d)
		if err != nil {
			t.Fatalf("check %s: %v\n%s", d, err, out)
		}
		if v := lastLine(out); !strings.HasPrefix(v, "verdict: INTACT: 40 calls, 200 frames, 40 finals") {
			t.Fatalf("verdict: %q\n%s", v, out)
		}
	}
	out, err := runStoreCheck(t, "--json", dir)
	if err != nil || !strings.Contains(out, `"intact": true`) {
		t.Fatalf("json: %v\n%s", err, out)
	}
}

func TestStoreCheckDamaged(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string) string
	}{
		{"manifest cut", func(t *testing.T, dir string) string {
			if err := os.Truncate(filepath.Join(dir, "MANIFEST"), 10); err != nil {
				t.Fatal(err)
			}
			return "MANIFEST"
		}},
		{"manifest deleted", func(t *testing.T, dir string) string {
			if err := os.Remove(filepath.Join(dir, "MANIFEST")); err != nil {
				t.Fatal(err)
			}
			return "MANIFEST"
		}},
		{"missing table", func(t *testing.T, dir string) string {
			m, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
			if len(m) == 0 {
				t.Fatal("no table")
			}
			os.Remove(m[0])
			return filepath.Base(m[0])
		}},
		{"orphan table", func(t *testing.T, dir string) string {
			m, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
			b, _ := os.ReadFile(m[0])
			os.WriteFile(filepath.Join(dir, "000777.sst"), b, 0o600)
			return "000777.sst"
		}},
		{"vlog byte flipped", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "000001.vlog")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0x40
			os.WriteFile(p, b, 0o600)
			return "000001.vlog"
		}},
		{"vlog cut", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "000001.vlog")
			fi, _ := os.Stat(p)
			os.Truncate(p, fi.Size()-100)
			return "000001.vlog"
		}},
		{"store emptied", func(t *testing.T, dir string) string {
			es, _ := os.ReadDir(dir)
			for _, e := range es {
				os.Remove(filepath.Join(dir, e.Name()))
			}
			return "MANIFEST"
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, dir := storeWithCalls(t, 40)
			file := c.damage(t, dir)
			out, err := runStoreCheck(t, dir)
			if err == nil {
				t.Fatalf("check passed a damaged store:\n%s", out)
			}
			v := lastLine(out)
			if !strings.HasPrefix(v, "verdict: DAMAGED") || !strings.Contains(out, file) {
				t.Fatalf("verdict %q does not name %s:\n%s", v, file, out)
			}
			t.Logf("%s", v)
		})
	}
}
