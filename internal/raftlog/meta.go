package raftlog

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// metaFile is the meta file's name in the log directory.
const metaFile = "meta"

// tmpPrefix starts the names of the temporary files of atomic writes; Open
// removes any a crash left behind.
const tmpPrefix = ".tmp-"

// meta is the content of the meta file.
type meta struct {
	Version int `json:"version"`
	// Floor: entries below it are deleted (0: none). A prefix DeleteRange
	// raises it before it removes segments, so a crash in between does not
	// bring deleted entries back.
	Floor uint64 `json:"floor"`
	// KeyCheck is an HMAC-SHA256 of a label under the key, in hex ("": the
	// log is not encrypted).
	KeyCheck string `json:"key_check,omitempty"`
}

const metaVersion = 1

// readMeta reads dir's meta file; ok is false when there is none.
func readMeta(dir string) (m meta, ok bool, err error) {
	p := filepath.Join(dir, metaFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return meta{}, false, nil
	}
	if err != nil {
		return meta{}, false, fmt.Errorf("raftlog: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return meta{}, false, fmt.Errorf("raftlog: %s: %v: %w", p, err, ErrDamaged)
	}
	if m.Version != metaVersion {
		return meta{}, false, fmt.Errorf("raftlog: %s: version %d, want %d: %w", p, m.Version, metaVersion, ErrDamaged)
	}
	return m, true, nil
}

// writeMeta replaces dir's meta file atomically and durably.
func writeMeta(dir string, m meta) error {
	m.Version = metaVersion
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("raftlog: %w", err)
	}
	return writeFileAtomic(dir, metaFile, append(b, '\n'))
}

// checkKey compares the key the log was opened with (c, nil: none) with
// the one its meta file names.
func checkKey(dir string, m meta, c *crypt) error {
	switch {
	case m.KeyCheck == "":
		return nil // plain; Open upgrades it when given a key
	case c == nil:
		return fmt.Errorf("raftlog: %s is encrypted and no key was given; nothing was changed: %w", dir, ErrWrongKey)
	case subtle.ConstantTimeCompare([]byte(m.KeyCheck), []byte(c.check)) != 1:
		return fmt.Errorf("raftlog: %s is encrypted with another key than the one given; nothing was changed: %w", dir, ErrWrongKey)
	}
	return nil
}

// writeFileAtomic replaces dir/name with data: a temporary file, synced,
// renamed over it, the directory synced. A crash leaves the old file or
// the new one.
func writeFileAtomic(dir, name string, data []byte) error {
	tmp, err := os.CreateTemp(dir, tmpPrefix+name+"-*")
	if err != nil {
		return fmt.Errorf("raftlog: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename: nothing to remove
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("raftlog: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("raftlog: sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("raftlog: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("raftlog: %w", err)
	}
	return syncDir(dir)
}

// syncDir makes the directory's entries (files created, renamed, removed)
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("raftlog: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("raftlog: sync %s: %w", dir, err)
	}
	return nil
}

// removeTemps removes the temporary files a crash during an atomic write
// left in dir.
func removeTemps(dir string, names []string) error {
	for _, n := range names {
		if strings.HasPrefix(n, tmpPrefix) {
			if err := os.Remove(filepath.Join(dir, n)); err != nil {
				return fmt.Errorf("raftlog: %w", err)
			}
		}
	}
	return nil
}
