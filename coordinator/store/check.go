package store

// Read-only checks of a store directory, run by Open before Badger sees the
// files and by `callscribe store check`. Badger repairs some things on open
// by cutting and deleting: it truncates the newest value log and every WAL at
// the first entry that does not check out, it deletes every .sst the
// MANIFEST does not list, and a missing MANIFEST makes it start an empty
// store (and later delete the old tables). The checks find the cases where
// that repair would throw away acknowledged data, and refuse them.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/pb"
	"github.com/dgraph-io/badger/v4/table"
	"golang.org/x/sys/unix"
)

// ErrDamaged is wrapped by the error of an Open that found the store
// damaged and by the error of a value that cannot be read or decoded.
var ErrDamaged = errors.New("store: damaged")

// ResolveDir takes the store directory or the data directory holding
// store/ and returns the store directory.
func ResolveDir(dir string) string {
	dir = filepath.Clean(dir)
	if _, err := os.Stat(filepath.Join(dir, badger.ManifestFilename)); err == nil {
		return dir
	}
	sub := filepath.Join(dir, "store")
	if fi, err := os.Stat(sub); err == nil && fi.IsDir() {
		return sub
	}
	if _, err := os.Stat(StatePath(sub)); err == nil {
		return sub
	}
	return dir
}

// Check inspects the store in dir (the store directory, or the data
// directory holding store/) without changing anything: the MANIFEST, every
// table (all blocks' checksums), every value log and WAL entry by entry, the
// state record, and, when nothing is wrong and no other process has the
// store open, what it holds (Badger opened read-only). key is the store's
// encryption key (nil: none); keyFile names it in errors. An encrypted
// store checked without its key is checked as far as the plain parts allow
// (entry headers and checksums; no tables, no counts). The error is for
// failures to check, and a *KeyError for a key that is not the store's;
// damage is in the report.
func Check(dir string, key []byte, keyFile string) (*Report, error) {
	dir = ResolveDir(dir)
	unlock, err := lockDir(dir, true)
	inUse := errors.Is(err, errInUse)
	if err != nil && !inUse {
		return nil, err
	}
	defer unlock()
	reg, err := openRegistry(dir, key, keyFile)
	var ke *KeyError
	switch {
	case errors.As(err, &ke) && ke.Missing:
		reg = nil
	case err != nil:
		return nil, err
	}
	// A running coordinator's Badger truncates a table to nothing before
	// it deletes it: reading tables through a map then would fault.
	r := inspect(dir, true, !inUse, reg)
	r.InUse = inUse
	if ke != nil {
		r.Encrypted = true
		r.note("the store is encrypted and no key was given: tables and what the store holds were not read, log entries were checked by their checksums only; give --key for a full check")
	}
	if inUse && !r.Intact() {
		r.note("the store is in use: Badger may have changed a file during the check (a compaction deletes tables); stop the coordinator and check again before acting on this report")
	}
	switch {
	case r.New:
	case !r.Intact():
		r.CountsNote = "the store is damaged; Badger was not opened"
	case inUse:
		r.CountsNote = "a running coordinator has the store open; stop it to count"
	case ke != nil:
		r.CountsNote = "the store is encrypted; give its key to count"
	case hasWAL(r):
		r.CountsNote = "the store did not close cleanly (memtable logs present); Badger must replay them read-write, which only the coordinator does"
	default:
		unlock() // Badger takes its own shared lock (a second unlock, deferred, does nothing)
		if reg == nil {
			key = nil // a store from before encryption: read as it is
		}
		c, err := countReadOnly(dir, r.State, key)
		if err != nil {
			var de *DamageError
			if errors.As(err, &de) {
				r.Problems = append(r.Problems, de.Problems...)
			} else {
				r.CountsNote = "Badger read-only open failed: " + err.Error()
			}
		} else {
			r.Counts = c
		}
	}
	return r, nil
}

func hasWAL(r *Report) bool {
	for _, l := range r.Logs {
		if l.Kind == "wal" {
			return true
		}
	}
	return false
}

var errInUse = errors.New("in use by another process")

// lockDir takes the flock Badger takes on its directory (shared or
// exclusive, never waiting), so checks do not read files another process is
// writing. A missing directory needs no lock.
func lockDir(dir string, shared bool) (unlock func(), err error) {
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return func() {}, nil
	}
	if err != nil {
		return func() {}, fmt.Errorf("store: open %s: %w", dir, err)
	}
	how := unix.LOCK_EX
	if shared {
		how = unix.LOCK_SH
	}
	if err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return func() {}, fmt.Errorf("store %s: %w", dir, errInUse)
		}
		return func() {}, fmt.Errorf("store %s: lock: %w", dir, err)
	}
	done := false
	return func() {
		if !done {
			done = true
			f.Close() // releases the flock
		}
	}, nil
}

// diskFile is one file of the store directory.
type diskFile struct {
	name        string
	kind        string
	fid         uint64
	size, alloc int64
	mtime       time.Time
}

// inspect checks dir read-only. full: every value log and every table's
// blocks (store check); otherwise only what Badger acts on when it opens
// (Open): the MANIFEST against the tables present (and each table's index),
// the newest value logs and the WALs, and the state record. tables: read
// the tables (not while another process has the store open).
//
// reg is the store's key registry (nil: a plain store, or an encrypted one
// checked without its key).
func inspect(dir string, full, tables bool, reg *badger.KeyRegistry) *Report {
	r := &Report{Dir: dir, StatePath: StatePath(dir), Encrypted: reg != nil}
	keys := logKeys{reg: reg}
	rec, err := readState(dir)
	if err != nil {
		r.problem(r.StatePath, "the state record %v; if it cannot be restored from a backup, remove it to accept the store as it is", err)
	}
	r.State = rec
	r.Clean = rec != nil && rec.Clean

	var files []diskFile
	var manifest *diskFile
	es, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if rec != nil {
			r.problem(dir, "the store directory is missing, but the state record says store %s held %d calls (updated %s)", rec.UUID, rec.Calls, rec.Updated.Format(time.RFC3339))
		} else {
			r.New = true
		}
		return r
	case err != nil:
		r.problem(dir, "cannot list the directory: %v", err)
		return r
	}
	for _, e := range es {
		fi, err := e.Info()
		if err != nil {
			continue
		}
		kind, fid := fileKind(e.Name())
		if e.Name() == badger.ManifestFilename {
			kind = "manifest"
		}
		if kind == "" || kind == "discard" {
			continue
		}
		df := diskFile{name: e.Name(), kind: kind, fid: fid, size: fi.Size(), mtime: fi.ModTime()}
		if st, ok := fi.Sys().(*unix.Stat_t); ok {
			df.alloc = st.Blocks * 512
		}
		if kind == "manifest" {
			manifest = &df
			continue
		}
		files = append(files, df)
	}
	byKind := func(k string) []diskFile {
		var out []diskFile
		for _, f := range files {
			if f.kind == k {
				out = append(out, f)
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].fid < out[j].fid })
		return out
	}
	ssts, vlogs, mems := byKind("sst"), byKind("vlog"), byKind("mem")
	if r.Clean && len(mems) > 0 {
		r.note("WAL files are present although the state record says the store closed cleanly: it was opened since without updating the record; checking as after a crash")
		r.Clean = false
	}
	hasData := len(ssts) > 0 || len(mems) > 0
	for _, v := range vlogs {
		if v.size > logHeaderSize {
			hasData = true
		}
	}
	if manifest == nil && rec == nil && !hasData {
		r.New = true
		return r
	}

	// MANIFEST and tables.
	var live map[uint64]int
	var tableKeys map[uint64]uint64
	var deleted map[uint64]bool
	mpath := filepath.Join(dir, badger.ManifestFilename)
	if manifest == nil {
		switch {
		case rec != nil:
			r.problem(mpath, "missing, but the state record says store %s held %d calls and %d tables: Badger would start an empty store and delete the tables left", rec.UUID, rec.Calls, len(rec.Tables))
		default:
			r.problem(mpath, "missing while %d tables and %d value-log files are present: Badger would start an empty store and delete the tables", len(ssts), len(vlogs))
		}
	} else {
		r.Manifest.Present, r.Manifest.Size = true, manifest.size
		live, tableKeys, deleted, r.Manifest.ValidEnd, err = readManifest(mpath)
		switch {
		case err != nil:
			r.Manifest.Err = err.Error()
			r.problem(mpath, "unreadable: %v", err)
		case len(live) == 0 && rec != nil && len(rec.Tables) > 0:
			r.problem(mpath, "lists no tables (%d bytes, %d readable), but the state record lists %d and %d are present: it was cut or replaced; Badger would delete the tables", manifest.size, r.Manifest.ValidEnd, len(rec.Tables), len(ssts))
		}
		// Without a record, tables it does not list are judged one by one
		// below (a crash during the first flush leaves one legitimately).
		r.Manifest.Deleted = len(deleted)
		if err == nil && r.Manifest.ValidEnd < manifest.size {
			if r.Clean {
				r.problem(mpath, "ends in %d bytes that are not a whole change set, although the store closed cleanly", manifest.size-r.Manifest.ValidEnd)
			} else {
				r.note("MANIFEST ends in a partial change set (%d bytes, a crash while Badger appended); Badger drops it", manifest.size-r.Manifest.ValidEnd)
			}
		}
		if r.Clean && manifest.size != rec.ManifestSize && err == nil {
			r.problem(mpath, "is %d bytes, but was %d bytes when the store closed cleanly", manifest.size, rec.ManifestSize)
		}
	}
	onDisk := map[uint64]diskFile{}
	for _, s := range ssts {
		onDisk[s.fid] = s
	}
	levels := map[int]*LevelReport{}
	for id, lvl := range live {
		t := TableReport{ID: id, Level: lvl, InManifest: true}
		if f, ok := onDisk[id]; ok {
			t.OnDisk, t.Size = true, f.size
		} else {
			r.problem(table.NewFilename(id, dir), "listed in the MANIFEST (level %d) but missing", lvl)
		}
		if levels[lvl] == nil {
			levels[lvl] = &LevelReport{Level: lvl}
		}
		levels[lvl].Tables++
		levels[lvl].Bytes += t.Size
		r.Tables = append(r.Tables, t)
	}
	for _, l := range levels {
		r.Manifest.Levels = append(r.Manifest.Levels, *l)
	}
	sort.Slice(r.Manifest.Levels, func(i, j int) bool { return r.Manifest.Levels[i].Level < r.Manifest.Levels[j].Level })
	if live != nil || manifest == nil {
		for _, s := range ssts {
			if _, ok := live[s.fid]; ok {
				continue
			}
			r.Tables = append(r.Tables, TableReport{ID: s.fid, Level: -1, OnDisk: true, Size: s.size})
			path := filepath.Join(dir, s.name)
			switch {
			case manifest == nil:
				// reported with the MANIFEST
			case deleted[s.fid] && !r.Clean:
				r.note("%s: recorded as deleted in the MANIFEST (a compaction finished just before a crash); Badger removes it", s.name)
			case !r.Clean && !s.mtime.Before(manifest.mtime):
				r.note("%s: written after the MANIFEST's last change (a flush or compaction cut short by a crash); Badger removes it", s.name)
			default:
				r.problem(path, "present but not listed in the MANIFEST (older than its last change%s): Badger would delete it", map[bool]string{true: ", and the store closed cleanly"}[r.Clean])
			}
		}
	}
	if r.Clean && live != nil {
		for _, id := range rec.Tables {
			if _, ok := live[id]; !ok {
				r.problem(table.NewFilename(id, dir), "was in the store at its clean close but the MANIFEST no longer lists it")
			}
		}
	}
	sort.Slice(r.Tables, func(i, j int) bool { return r.Tables[i].ID < r.Tables[j].ID })
	for i := range r.Tables {
		t := &r.Tables[i]
		if !t.OnDisk || !t.InManifest {
			continue
		}
		if !tables {
			t.Verified = "not read (the store is in use)"
			continue
		}
		var dk *pb.DataKey
		if kid := tableKeys[t.ID]; kid != 0 {
			if reg == nil {
				if enc, _ := EncryptionOf(dir); enc == Encrypted {
					t.Verified = "not read (encrypted; no key given)"
				} else {
					r.problem(table.NewFilename(t.ID, dir), "encrypted with data key %d, but the store has no encrypted key registry (%s): Badger cannot read it", kid, badger.KeyRegistryFileName)
				}
				continue
			}
			if dk, err = reg.DataKey(kid); err != nil {
				r.problem(table.NewFilename(t.ID, dir), "encrypted with data key %d, which the key registry does not hold", kid)
				continue
			}
		}
		nk, err := verifyTable(table.NewFilename(t.ID, dir), full, dk)
		t.Keys = nk
		switch {
		case err != nil:
			t.Verified = "FAILED: " + err.Error()
			r.problem(table.NewFilename(t.ID, dir), "table does not check out: %v", err)
		case full:
			t.Verified = "all blocks"
		default:
			t.Verified = "index"
		}
	}

	// Value logs against the state record.
	vl := map[uint64]diskFile{}
	for _, v := range vlogs {
		vl[v.fid] = v
	}
	if rec != nil {
		for _, rv := range rec.Vlogs {
			name := vlogName(dir, rv.Fid)
			f, ok := vl[rv.Fid]
			switch {
			case !ok && rv.Size <= logHeaderSize:
				// Badger deletes empty value logs when it opens.
			case !ok && rec.GCSince != nil && !r.Clean:
				r.note("%s: gone; value-log GC ran since the state record was written (%s) and deletes rewritten files", baseName(name), rec.GCSince.Format(time.RFC3339))
			case !ok:
				r.problem(name, "missing; the state record lists it with %d bytes", rv.Size)
			case rv.Complete && f.size < rv.Size:
				r.problem(name, "cut short: %d bytes, but %d when the state record was written (Badger had finished it)", f.size, rv.Size)
			case rv.Complete && f.size > rv.Size:
				r.problem(name, "grew: %d bytes, but %d when the state record was written (Badger had finished it)", f.size, rv.Size)
			}
		}
		if r.Clean {
			for _, v := range vlogs {
				if !slices.ContainsFunc(rec.Vlogs, func(x VlogRecord) bool { return x.Fid == v.fid }) {
					r.problem(filepath.Join(dir, v.name), "not in the state record written at the clean close")
				}
			}
		}
	}

	// Log files, entry by entry: all in a full check; otherwise the WALs
	// and the newest value logs (the one Badger truncates on open and the
	// newest holding entries: what the last session wrote).
	scan := map[uint64]bool{}
	if len(vlogs) > 0 {
		scan[vlogs[len(vlogs)-1].fid] = true
		for i := len(vlogs) - 1; i >= 0; i-- {
			if vlogs[i].size > logHeaderSize {
				scan[vlogs[i].fid] = true
				break
			}
		}
	}
	for i, v := range vlogs {
		path := filepath.Join(dir, v.name)
		if !full && !scan[v.fid] {
			r.Logs = append(r.Logs, LogReport{Name: v.name, Kind: "vlog", Fid: v.fid, Size: v.size, FirstBad: -1, ValidAfter: -1, LastValidEnd: -1})
			continue
		}
		r.scanLog(path, "vlog", v.fid, i == len(vlogs)-1 && stillWritten(v.size), keys)
	}
	for i, m := range mems {
		r.scanLog(filepath.Join(dir, m.name), "wal", m.fid, i == len(mems)-1 && stillWritten(m.size), keys)
	}
	if reg == nil {
		// Encrypted files without an encrypted registry: Badger would
		// start a new registry and fail on every one of them.
		if enc, _ := EncryptionOf(dir); enc != Encrypted {
			for _, l := range r.Logs {
				if l.KeyID != 0 {
					r.problem(filepath.Join(dir, l.Name), "encrypted with data key %d, but the store has no encrypted key registry (%s): restore it from the backup", l.KeyID, badger.KeyRegistryFileName)
				}
			}
		}
	}
	return r
}

// stillWritten says whether a log file has the size Badger creates it with
// (2×ValueLogFileSize, 2×MemTableSize: whole MiB) rather than the size it
// truncates it to when done with it (the end of its last entry): only a
// file Badger was still writing when the process stopped can end in a torn
// write.
func stillWritten(size int64) bool { return size >= 2<<20 && size%(1<<20) == 0 }

func vlogName(dir string, fid uint64) string {
	return filepath.Join(dir, fmt.Sprintf("%06d.vlog", fid))
}

// countReadOnly opens Badger read-only and counts what the store holds,
// checking its identity against the record.
func countReadOnly(dir string, rec *StateRecord, key []byte) (*Counts, error) {
	db, err := badger.Open(badgerOptions(dir, nil, key).WithReadOnly(true).WithLogger(nil))
	if err != nil {
		return nil, err
	}
	defer db.Close()
	if err := verifyContents(db, dir, rec, nil); err != nil {
		return nil, err
	}
	c := &Counts{}
	err = db.View(func(txn *badger.Txn) error {
		if it, err := txn.Get(identityKey); err == nil {
			var id identity
			if err := it.Value(func(v []byte) error { return jsonDecode(v, &id) }); err == nil {
				c.UUID = id.UUID
			}
		}
		for _, p := range []struct {
			prefix string
			n      *int
		}{{"c/", &c.Calls}, {"a/", &c.Frames}, {"f/", &c.Finals}, {"n/", &c.Nodes}, {"o/", &c.Outbox}} {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(p.prefix)})
			for it.Rewind(); it.Valid(); it.Next() {
				*p.n++
			}
			it.Close()
		}
		return nil
	})
	return c, err
}

// scanLog reads one value log or WAL entry by entry and reports what it
// finds; newest says it is the log still being written (a torn tail is
// expected there after a crash).
func (r *Report) scanLog(path, kind string, fid uint64, newest bool, keys logKeys) {
	l := scanLog(path, kind, fid, keys)
	if p, n := l.classify(newest && !r.Clean); p != "" {
		r.problem(path, "%s", p)
	} else if n != "" {
		r.note("%s", n)
	}
	r.Logs = append(r.Logs, l)
}
