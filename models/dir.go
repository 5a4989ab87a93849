package models

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// DirEnv names the environment variable that overrides the model directory.
const DirEnv = "CALLSCRIBE_MODEL_DIR"

var (
	dirOnce sync.Once
	dir     string
)

// Dir is the directory holding installed model files: $CALLSCRIBE_MODEL_DIR
// if set, else the first of EXEDIR/models (a build tree: bin/models) and
// EXEDIR/../share/callscribe/models (an installed appliance) that exists.
func Dir() string {
	dirOnce.Do(func() { dir = findDir() })
	return dir
}

func findDir() string {
	if d := os.Getenv(DirEnv); d != "" {
		return d
	}
	exe, err := os.Executable()
	if err != nil {
		return "/usr/share/callscribe/models"
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	base := filepath.Dir(exe)
	cands := []string{filepath.Join(base, "models"), filepath.Join(base, "..", "share", "callscribe", "models")}
	for _, c := range cands {
		if st, err := os.Stat(c); err == nil && st.IsDir() {
			return filepath.Clean(c)
		}
	}
	return filepath.Clean(cands[1])
}

// Resolve turns a manifest path into a path on this machine.
func Resolve(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(Dir(), p)
}

// FileSHA256 hashes a file.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
