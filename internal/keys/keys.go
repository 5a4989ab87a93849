// Package keys finds, reads and creates the store's master key: the key
// Badger's encryption at rest encrypts the store's data keys with.
//
// The key comes from systemd's credentials when the service runs with
// LoadCredential=store.key:… ($CREDENTIALS_DIRECTORY/store.key), otherwise
// from a file (store_key_file, default DATA/keys/store.key). A key file is
// 32 raw bytes (AES-256), or 64 hex digits and an optional newline.
package keys

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Size is a key's size in bytes.
const Size = 32

// Credential is the systemd credential name of the store key.
const Credential = "store.key"

// DefaultFile is the key file's path within the data directory.
func DefaultFile(data string) string { return filepath.Join(data, "keys", "store.key") }

// Locate returns the key file to use: the systemd credential when the
// service was given one, else file. fromCredential says which.
func Locate(file string) (path string, fromCredential bool) {
	if d := os.Getenv("CREDENTIALS_DIRECTORY"); d != "" {
		p := filepath.Join(d, Credential)
		if _, err := os.Stat(p); err == nil {
			return p, true
		}
	}
	return file, false
}

// Read reads a key file.
func Read(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	return parse(path, b)
}

func parse(path string, b []byte) ([]byte, error) {
	if len(b) == Size {
		return b, nil
	}
	if s := strings.TrimSpace(string(b)); len(s) == 2*Size {
		if k, err := hex.DecodeString(s); err == nil {
			return k, nil
		}
	}
	return nil, fmt.Errorf("keys: %s holds %d bytes; a key is %d raw bytes or %d hex digits", path, len(b), Size, 2*Size)
}

// Create writes a new random key to path (mode 0600; its directory, if
// created, 0700) and returns it. The file appears whole or not at all, and
// an existing file is never replaced.
func Create(path string) ([]byte, error) {
	k := make([]byte, Size)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	if err := Install(path, k, false); err != nil {
		return nil, err
	}
	return k, nil
}

// Install writes key to path atomically (a temporary file beside it,
// synced, renamed over it, the directory synced), mode 0600. replace: an
// existing file is replaced; otherwise it is an error wrapping
// os.ErrExist.
func Install(path string, key []byte, replace bool) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".store.key-*")
	if err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("keys: %w", err)
	}
	if _, err := tmp.Write(key); err != nil {
		tmp.Close()
		return fmt.Errorf("keys: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("keys: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	if replace {
		err = os.Rename(tmp.Name(), path)
	} else {
		// A link fails if path exists: no key is ever overwritten.
		err = os.Link(tmp.Name(), path)
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("keys: %s exists; not replacing a key: %w", path, os.ErrExist)
		}
	}
	if err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("keys: sync %s: %w", dir, err)
	}
	return nil
}
