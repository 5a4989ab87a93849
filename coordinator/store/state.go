package store

// The state record: a small JSON file beside the store directory
// (<dir>.state.json) saying which store this is and what it last held, so
// that a store that lost its files is never taken for a new, empty one.
// It is written atomically (temporary file, fsync, rename, directory fsync)
// at clean points only: after Open (Clean false), before the first value-log
// GC of a session (GCSince), and after Close (Clean true). A crash therefore
// leaves a record that is behind the store, never ahead of it, and the
// checks tolerate a store that is ahead of its record but never one that is
// behind it.

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// StateRecord is the content of <dir>.state.json.
type StateRecord struct {
	Format  int       `json:"format"`
	UUID    string    `json:"uuid"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	// Clean is true when the record was written by Close after Badger
	// closed: nothing has touched the files since, so they must match it
	// exactly. Open writes the record again with Clean false.
	Clean bool `json:"clean"`
	// GCSince is set once value-log GC has run since the file lists were
	// taken: GC deletes value-log files.
	GCSince *time.Time `json:"gc_since,omitempty"`
	// MaxVersion is Badger's newest commit version (m/opened or m/closed):
	// the store can never be behind it.
	MaxVersion   uint64 `json:"max_version"`
	Calls        int    `json:"calls"`
	ManifestSize int64  `json:"manifest_size"`
	// Tables are the .sst ids the MANIFEST listed.
	Tables []uint64     `json:"tables"`
	Vlogs  []VlogRecord `json:"vlogs"`
}

// VlogRecord is one value-log file in the state record.
type VlogRecord struct {
	Fid  uint64 `json:"fid"`
	Size int64  `json:"size"`
	// Complete: Badger no longer writes to it, so its size is final.
	Complete bool `json:"complete"`
}

// StatePath is where the state record of the store in dir lives.
func StatePath(dir string) string { return filepath.Clean(dir) + ".state.json" }

// readState reads the record; (nil, nil) when there is none.
func readState(dir string) (*StateRecord, error) {
	b, err := os.ReadFile(StatePath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r StateRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("does not decode: %w", err)
	}
	if r.UUID == "" {
		return nil, errors.New("holds no store UUID")
	}
	return &r, nil
}

// writeState replaces the record atomically and durably.
func writeState(dir string, r *StateRecord) error {
	r.Format = 1
	r.Updated = time.Now().UTC()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	path := StatePath(dir)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // variant
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// identity is the value of m/identity inside Badger.
type identity struct {
	UUID    string    `json:"uuid"`
	Created time.Time `json:"created"`
}

var (
	identityKey = []byte("m/identity")
	openedKey   = []byte("m/opened")
	closedKey   = []byte("m/closed")
)
