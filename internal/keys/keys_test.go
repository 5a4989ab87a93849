package keys

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCreateReadInstall(t *testing.T) {
	p := filepath.Join(t.TempDir(), "keys", "store.key")
	k, err := Create(p)
	if err != nil || len(k) != Size {
		t.Fatalf("Create: %v", err)
	}
	fi, _ := os.Stat(p)
	di, _ := os.Stat(filepath.Dir(p))
	if fi.Mode() != 0o600 || di.Mode().Perm() != 0o700 {
		t.Fatalf("modes %v %v", fi.Mode(), di.Mode())
	}
	if _, err := Create(p); err == nil || !strings.Contains(err.Error(), "not replacing") {
		t.Fatalf("Create over a key: %v", err)
	}
	if got, err := Read(p); err != nil || !bytes.Equal(got, k) {
		t.Fatalf("Read: %v", err)
	}
	k2 := bytes.Repeat([]byte{0xab}, Size)
	if err := Install(p, k2, true); err != nil {
		t.Fatal(err)
	}
	if got, _ := Read(p); !bytes.Equal(got, k2) {
		t.Fatal("Install did not replace the key")
	}
	hex := filepath.Join(filepath.Dir(p), "hex.key")
	os.WriteFile(hex, []byte(strings.Repeat("ab", Size)+"\n"), 0o600)
	if got, err := Read(hex); err != nil || !bytes.Equal(got, k2) {
		t.Fatalf("hex key: %v", err)
	}
	os.WriteFile(hex, []byte("short"), 0o600)
	if _, err := Read(hex); err == nil {
		t.Fatal("a short key was accepted")
	}
	if es, _ := os.ReadDir(filepath.Dir(p)); len(es) != 2 {
		t.Fatalf("temporary files left: %v", es)
	}
}
