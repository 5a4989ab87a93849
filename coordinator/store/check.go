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
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/fb"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/pb"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/ristretto/v2"
	"github.com/dgraph-io/ristretto/v2/z"
	"golang.org/x/sys/unix"
)

// ErrDamaged is wrapped by the error of an Open that found the store
// damaged and by the error of a value that cannot be read or decoded.
var ErrDamaged = errors.New("store: damaged")

// Problem is one thing found wrong.
type Problem struct {
	File string `json:"file"` // a file of the store, or a key
	What string `json:"what"`
}

// DamageError is the error of a damaged store or value.
type DamageError struct {
	Dir      string
	Problems []Problem
	// Err is the underlying error of a value that failed (Badger's, or the
	// JSON decoder's).
	Err error
	// Value: the error of one value read at run time, not of Open.
	Value bool
}

func (e *DamageError) Error() string {
	var b strings.Builder
	p := Problem{File: e.Dir, What: "damaged"}
	if len(e.Problems) > 0 {
		p = e.Problems[0]
	}
	if e.Value {
		fmt.Fprintf(&b, "store %s: %s: %s: the store is damaged; run `callscribe store check %s`", e.Dir, p.File, p.What, e.Dir)
		return b.String()
	}
	fmt.Fprintf(&b, "store %s is damaged: %s: %s", e.Dir, p.File, p.What)
	if n := len(e.Problems) - 1; n > 0 {
		fmt.Fprintf(&b, " (and %d more problem%s)", n, map[bool]string{true: "s"}[n > 1])
	}
	fmt.Fprintf(&b, ". Nothing was changed. Run `callscribe store check %s` for the full report, then restore the data directory from a backup; do not delete or edit files to make it start (Badger would discard what it cannot read). If this store was restored from a backup on purpose, restore %s from the same backup too, or remove it to accept the store as it is", e.Dir, StatePath(e.Dir))
	return b.String()
}

// Is makes errors.Is(err, ErrDamaged) true.
func (e *DamageError) Is(target error) bool { return target == ErrDamaged }

// Unwrap returns the underlying error of a value.
func (e *DamageError) Unwrap() error { return e.Err }

// Report is what a check of a store directory found.
type Report struct {
	Dir       string       `json:"dir"`
	StatePath string       `json:"state_path"`
	State     *StateRecord `json:"state,omitempty"`
	// InUse: another process holds the store open; the newest files may be
	// half written.
	InUse    bool           `json:"in_use"`
	Manifest ManifestReport `json:"manifest"`
	Tables   []TableReport  `json:"tables"`
	Logs     []LogReport    `json:"logs"`
	// Counts are read with Badger opened read-only, when that is safe.
	Counts     *Counts   `json:"counts,omitempty"`
	CountsNote string    `json:"counts_note,omitempty"`
	Problems   []Problem `json:"problems"`
	Notes      []string  `json:"notes"`
	// Encrypted: the store is encrypted (Badger's encryption at rest).
	Encrypted bool `json:"encrypted"`
	// Clean: the state record was written by a clean Close and nothing has
	// opened the store since, so the files must match it exactly.
	Clean bool `json:"clean"`
	// New: no store here yet (nothing to check, nothing to lose).
	New bool `json:"new"`
}

// ManifestReport describes the MANIFEST.
type ManifestReport struct {
	Present  bool          `json:"present"`
	Size     int64         `json:"size"`
	ValidEnd int64         `json:"valid_end"`
	Err      string        `json:"error,omitempty"`
	Levels   []LevelReport `json:"levels"`
	Deleted  int           `json:"deleted"` // tables it records as deleted
}

// LevelReport is one LSM level as the MANIFEST lists it.
type LevelReport struct {
	Level  int   `json:"level"`
	Tables int   `json:"tables"`
	Bytes  int64 `json:"bytes"`
}

// TableReport is one .sst.
type TableReport struct {
	ID         uint64 `json:"id"`
	Level      int    `json:"level"` // -1: not in the MANIFEST
	Size       int64  `json:"size"`
	OnDisk     bool   `json:"on_disk"`
	InManifest bool   `json:"in_manifest"`
	Keys       uint32 `json:"keys"`
	Verified   string `json:"verified"` // "index", "all blocks", or the error
}

// Counts is what the store holds.
type Counts struct {
	UUID   string `json:"uuid"`
	Calls  int    `json:"calls"`
	Frames int    `json:"frames"`
	Finals int    `json:"finals"`
	Nodes  int    `json:"nodes"`
	Outbox int    `json:"outbox"`
}

// Intact reports whether nothing was found wrong.
func (r *Report) Intact() bool { return len(r.Problems) == 0 }

// Err is a *DamageError when something was found wrong.
func (r *Report) Err() error {
	if r.Intact() {
		return nil
	}
	return &DamageError{Dir: r.Dir, Problems: r.Problems}
}

// Verdict is the one-line summary.
func (r *Report) Verdict() string {
	if !r.Intact() {
		p := r.Problems[0]
		more := ""
		if n := len(r.Problems) - 1; n > 0 {
			more = fmt.Sprintf(" (and %d more)", n)
		}
		return fmt.Sprintf("DAMAGED: %s: %s%s — restore the data directory from a backup; do not start the coordinator on it", p.File, p.What, more)
	}
	if r.New {
		return "EMPTY: no store here yet"
	}
	v := "INTACT"
	if r.InUse {
		v += " (in use: a running coordinator is writing the newest files)"
	}
	if r.Counts != nil {
		v += fmt.Sprintf(": %d calls, %d frames, %d finals", r.Counts.Calls, r.Counts.Frames, r.Counts.Finals)
	}
	return v
}

func (r *Report) problem(file, format string, a ...any) {
	r.Problems = append(r.Problems, Problem{File: file, What: fmt.Sprintf(format, a...)})
}

func (r *Report) note(format string, a ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, a...))
}

// WriteText writes the report for people.
func (r *Report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "store %s\n", r.Dir)
	switch {
	case r.State == nil:
		fmt.Fprintf(w, "state record %s: none\n", r.StatePath)
	default:
		s := r.State
		how := "written while open or before a crash (the store may be ahead of it)"
		if s.Clean {
			how = "written at a clean close (the files must match it)"
		}
		fmt.Fprintf(w, "state record %s: store %s, created %s, updated %s, %s\n", r.StatePath, s.UUID, s.Created.Format(time.RFC3339), s.Updated.Format(time.RFC3339), how)
		fmt.Fprintf(w, "  held: %d calls, version %d, %d tables, %d value-log files, MANIFEST %d bytes\n", s.Calls, s.MaxVersion, len(s.Tables), len(s.Vlogs), s.ManifestSize)
	}
	if r.InUse {
		fmt.Fprintln(w, "in use: another process has the store open")
	}
	if !r.New {
		fmt.Fprintf(w, "encrypted at rest: %s\n", map[bool]string{true: "yes", false: "no"}[r.Encrypted])
	}
	m := r.Manifest
	switch {
	case !m.Present:
		fmt.Fprintln(w, "MANIFEST: missing")
	case m.Err != "":
		fmt.Fprintf(w, "MANIFEST: %d bytes, unreadable: %s\n", m.Size, m.Err)
	default:
		fmt.Fprintf(w, "MANIFEST: %d bytes (%d valid), %d tables recorded as deleted\n", m.Size, m.ValidEnd, m.Deleted)
		for _, l := range m.Levels {
			fmt.Fprintf(w, "  level %d: %d tables, %d bytes\n", l.Level, l.Tables, l.Bytes)
		}
	}
	for _, t := range r.Tables {
		lvl := fmt.Sprintf("L%d", t.Level)
		if !t.InManifest {
			lvl = "not in MANIFEST"
		}
		state := "present"
		if !t.OnDisk {
			state = "MISSING"
		}
		fmt.Fprintf(w, "  %s: %s, %s, %d bytes, %d keys, checked: %s\n", table.IDToFilename(t.ID), lvl, state, t.Size, t.Keys, t.Verified)
	}
	for _, l := range r.Logs {
		if !l.Scanned {
			fmt.Fprintf(w, "%s: %d bytes (not scanned)\n", l.Name, l.Size)
			continue
		}
		fmt.Fprintf(w, "%s: %d bytes, %d entries, data to offset %d, stops at: %s", l.Name, l.Size, l.Entries, l.DataEnd, l.Stop)
		if l.FirstBad >= 0 {
			fmt.Fprintf(w, ", first bad offset %d (%s)", l.FirstBad, l.BadReason)
		}
		if l.ValidAfter >= 0 {
			fmt.Fprintf(w, ", good entries again from %d to %d", l.ValidAfter, l.LastValidEnd)
		}
		fmt.Fprintf(w, ": %s\n", l.Verdict)
	}
	if r.Counts != nil {
		c := r.Counts
		fmt.Fprintf(w, "contents: store %s: %d calls, %d frames, %d finals, %d nodes, %d queued exports\n", c.UUID, c.Calls, c.Frames, c.Finals, c.Nodes, c.Outbox)
	} else if r.CountsNote != "" {
		fmt.Fprintf(w, "contents: not counted: %s\n", r.CountsNote)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "PROBLEM: %s: %s\n", p.File, p.What)
	}
	fmt.Fprintf(w, "verdict: %s\n", r.Verdict())
}

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

// readManifest replays the MANIFEST read-only with Badger's own code and
// also collects the tables it records as deleted.
// keyIDs is each live table's data key (0: plain).
func readManifest(path string) (live map[uint64]int, keyIDs map[uint64]uint64, deleted map[uint64]bool, validEnd int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, nil, 0, err
	}
	defer f.Close()
	m, end, err := badger.ReplayManifestFile(f, 0, badger.DefaultOptions("").WithLogger(nil))
	if err != nil {
		return nil, nil, nil, 0, err
	}
	live, keyIDs = map[uint64]int{}, map[uint64]uint64{}
	for id, t := range m.Tables {
		live[id] = int(t.Level)
		keyIDs[id] = t.KeyID
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, nil, 0, err
	}
	return live, keyIDs, manifestDeletes(b, end), end, nil
}

// manifestDeletes lists the table ids the change sets record as deleted
// (MANIFEST: magic (8), then len (4) | crc (4) | pb.ManifestChangeSet;
// ManifestChange: Id = 1, Op = 2 with DELETE = 1).
func manifestDeletes(b []byte, end int64) map[uint64]bool {
	del := map[uint64]bool{}
	b = b[:min(int64(len(b)), end)]
	for off := 8; off+8 <= len(b); {
		n := int(uint32(b[off])<<24 | uint32(b[off+1])<<16 | uint32(b[off+2])<<8 | uint32(b[off+3]))
		off += 8
		if n < 0 || off+n > len(b) {
			break
		}
		set := b[off : off+n]
		off += n
		forFields(set, func(field int, v uint64, sub []byte) {
			if field != 1 || sub == nil {
				return
			}
			var id, op uint64
			forFields(sub, func(f int, v uint64, _ []byte) {
				switch f {
				case 1:
					id = v
				case 2:
					op = v
				}
			})
			if op == 1 {
				del[id] = true
			}
		})
	}
	return del
}

// forFields walks a protobuf message's fields (varint and bytes; others
// skipped).
func forFields(b []byte, fn func(field int, v uint64, sub []byte)) {
	for len(b) > 0 {
		key, n := uvarint(b)
		if n <= 0 {
			return
		}
		b = b[n:]
		field, wire := int(key>>3), key&7
		switch wire {
		case 0:
			v, n := uvarint(b)
			if n <= 0 {
				return
			}
			b = b[n:]
			fn(field, v, nil)
		case 1:
			if len(b) < 8 {
				return
			}
			b = b[8:]
		case 2:
			l, n := uvarint(b)
			if n <= 0 || uint64(len(b)-n) < l {
				return
			}
			fn(field, 0, b[n:n+int(l)])
			b = b[n+int(l):]
		case 5:
			if len(b) < 4 {
				return
			}
			b = b[4:]
		default:
			return
		}
	}
}

func uvarint(b []byte) (uint64, int) {
	var x uint64
	for i, c := range b {
		if i == 10 {
			return 0, -1
		}
		x |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return x, i + 1
		}
	}
	return 0, 0
}

// verifyTable opens a table read-only the way Badger does (footer, index
// checksum, first and last key) and, for full, checks every block's
// checksum. dk is the table's data key (nil: plain). Badger's table code
// panics on some damage; the panic is caught.
func verifyTable(path string, full bool, dk *pb.DataKey) (keys uint32, err error) {
	defer func() {
		if p := recover(); p != nil {
			msg := fmt.Sprint(p)
			if i := strings.IndexByte(msg, '\n'); i > 0 {
				msg = msg[:i]
			}
			err = fmt.Errorf("unreadable (%s)", msg)
		}
	}()
	mf, err := z.OpenMmapFile(path, os.O_RDONLY, 0)
	if err != nil {
		return 0, err
	}
	topt := table.Options{ReadOnly: true, ChkMode: options.NoVerification, BlockSize: 4 << 10, BloomFalsePositive: 0.01}
	if dk != nil {
		// An encrypted table's index is decrypted into a cache.
		cache, err := ristretto.NewCache(&ristretto.Config[uint64, *fb.TableIndex]{NumCounters: 100, MaxCost: 64 << 20, BufferItems: 64})
		if err != nil {
			mf.Close(-1)
			return 0, err
		}
		defer cache.Close()
		topt.DataKey, topt.IndexCache = dk, cache
	}
	t, err := table.OpenTable(mf, topt)
	if err != nil {
		mf.Close(-1)
		return 0, err
	}
	defer t.Close(-1)
	if full {
		if err := t.VerifyChecksum(); err != nil {
			return t.KeyCount(), err
		}
	}
	return t.KeyCount(), nil
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
