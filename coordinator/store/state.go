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
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	badger "github.com/dgraph-io/badger/v4"
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

// verifyContents checks what Badger opened against the state record: the
// same store (m/identity), not behind it (newest version), and after a
// clean close as many calls as it had; any of these is an error. It also
// reads every call record, node and outbox entry: one that cannot be read
// or decoded is logged (or, with log nil, returned as damage too), as it
// costs that call, not the store.
func verifyContents(db *badger.DB, dir string, rec *StateRecord, log *slog.Logger) error {
	var probs, values []Problem
	bad := func(file, format string, a ...any) {
		probs = append(probs, Problem{File: file, What: fmt.Sprintf(format, a...)})
	}
	calls := 0
	err := db.View(func(txn *badger.Txn) error {
		var id identity
		it, err := txn.Get(identityKey)
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
			if rec != nil {
				bad("key m/identity", "missing, but the state record says this is store %s with %d calls: Badger opened it as a different or empty store", rec.UUID, rec.Calls)
			}
		case err != nil:
			bad("key m/identity", "unreadable: %v", err)
		default:
			if err := it.Value(func(v []byte) error { return jsonDecode(v, &id) }); err != nil {
				bad("key m/identity", "unreadable: %v", err)
			} else if rec != nil && id.UUID != rec.UUID {
				bad("key m/identity", "this is store %s, but the state record is for store %s", id.UUID, rec.UUID)
			}
		}
		for _, prefix := range []string{"c/", "n/", "o/", "m/"} {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix), PrefetchValues: true, PrefetchSize: 64})
			for it.Rewind(); it.Valid(); it.Next() {
				item := it.Item()
				if prefix == "c/" {
					calls++
				}
				err := item.Value(func(v []byte) error {
					if prefix == "m/" && !bytes.Equal(item.Key(), identityKey) {
						return nil
					}
					var x json.RawMessage
					return jsonDecode(v, &x)
				})
				if err != nil && len(values) < 100 {
					values = append(values, Problem{File: fmt.Sprintf("key %q", item.Key()), What: "unreadable: " + err.Error()})
				}
			}
			it.Close()
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: open %s: verify: %w", dir, err)
	}
	if rec != nil {
		if v := db.MaxVersion(); v < rec.MaxVersion {
			bad(dir, "its newest write is version %d, but the state record says it reached version %d (updated %s): recent writes are missing", v, rec.MaxVersion, rec.Updated.Format(time.RFC3339))
		}
		if rec.Clean && calls < rec.Calls {
			bad(dir, "holds %d call records, but %d when it closed cleanly", calls, rec.Calls)
		}
	}
	if log == nil {
		probs = append(probs, values...)
	}
	for _, v := range values {
		log.Error("store: a value is damaged; run `callscribe store check`", "dir", dir, "key", v.File, "err", v.What)
	}
	if len(probs) > 0 {
		return &DamageError{Dir: dir, Problems: probs}
	}
	return nil
}

// stamp writes the identity (new or adopted store) and m/opened, then the
// state record (not clean: the store is open).
func (s *Store) stamp(rec *StateRecord) error {
	now := time.Now().UTC()
	var id identity
	err := s.view(func(txn *badger.Txn) error {
		it, err := txn.Get(identityKey)
		if err != nil {
			return err
		}
		return it.Value(func(v []byte) error { return jsonDecode(v, &id) })
	})
	var es []entry
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
		id = identity{UUID: newUUID(), Created: now}
		b, _ := json.Marshal(id)
		es = append(es, entry{key: identityKey, val: b})
		s.log.Info("store: new identity", "dir", s.dir, "uuid", id.UUID)
	case err != nil:
		return fmt.Errorf("store: open %s: identity: %w", s.dir, err)
	}
	if rec == nil && id.Created.Before(now.Add(-time.Minute)) {
		s.log.Warn("store: the state record was missing; writing it again", "dir", s.dir, "path", StatePath(s.dir), "uuid", id.UUID)
	}
	es = append(es, entry{key: openedKey, val: []byte(now.Format(time.RFC3339Nano))})
	r0 := newReq(false, es)
	if err := s.guard.begin().admit(r0); err != nil {
		return err
	}
	if err := s.commit([]*req{r0}); err != nil {
		return fmt.Errorf("store: open %s: %w", s.dir, err)
	}
	r := &StateRecord{UUID: id.UUID, Created: id.Created}
	if rec != nil {
		r.Created = rec.Created
	}
	if err := s.fillState(r); err != nil {
		return err
	}
	if err := writeState(s.dir, r); err != nil {
		return fmt.Errorf("store: open %s: write state record: %w", s.dir, err)
	}
	s.state = r
	return nil
}

// fillState records what the store holds now.
func (s *Store) fillState(r *StateRecord) error {
	// The record must never be ahead of what is on disk (Badger's writes
	// are not synced in a replicated store).
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("store %s: sync: %w", s.dir, err)
	}
	r.MaxVersion = s.db.MaxVersion()
	n := 0
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("c/")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store %s: count calls: %w", s.dir, err)
	}
	r.Calls = n
	return fillFiles(s.dir, r, false)
}

// fillFiles records the MANIFEST's size and tables and the value logs.
// closed: Badger has closed, every value log is final.
func fillFiles(dir string, r *StateRecord, closed bool) error {
	live, _, _, _, err := readManifest(filepath.Join(dir, badger.ManifestFilename))
	if err != nil {
		return fmt.Errorf("store %s: read MANIFEST: %w", dir, err)
	}
	fi, err := os.Stat(filepath.Join(dir, badger.ManifestFilename))
	if err != nil {
		return err
	}
	r.ManifestSize = fi.Size()
	r.Tables = r.Tables[:0]
	for id := range live {
		r.Tables = append(r.Tables, id)
	}
	slices.Sort(r.Tables)
	es, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	r.Vlogs = r.Vlogs[:0]
	for _, e := range es {
		if kind, fid := fileKind(e.Name()); kind == "vlog" {
			fi, err := e.Info()
			if err != nil {
				continue
			}
			r.Vlogs = append(r.Vlogs, VlogRecord{Fid: fid, Size: fi.Size(), Complete: true})
		}
	}
	if !closed && len(r.Vlogs) > 0 {
		r.Vlogs[len(r.Vlogs)-1].Complete = false // Badger writes to the newest
	}
	return nil
}
