package store

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4/table"
)

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
