package store

// The disk-space guard. Badger writes its value log (NNNNNN.vlog), its
// memtable WAL (NNNNN.mem), its tables (NNNNNN.sst) and DISCARD through
// shared memory maps of files created sparse with ftruncate: a page the
// filesystem cannot back is not an error return but SIGBUS, which kills the
// process. So Badger must never be handed a write the disk cannot take:
// before every group commit the committer compares the filesystem's free
// space with what Badger may still allocate (headroom) plus the batch and a
// reserve, and refuses the batch (Badger untouched) when it does not fit.
//
// What Badger may allocate, from its source (v4.9.6):
//   - the current value log: created sparse at 2×ValueLogFileSize
//     (valueLog.createVlogFile); entries are copied into the map at the
//     write offset; after each request, once the offset passes
//     ValueLogFileSize, the file is truncated to the offset and a new one is
//     created (valueLog.write, toDisk). So Badger fills a value log up to
//     ValueLogFileSize plus the request that crosses it.
//   - the current memtable WAL: created sparse at 2×MemTableSize
//     (openMemTable); the memtable is full once the WAL offset reaches
//     MemTableSize (isFull, checked before each request); a new WAL is
//     then created and the full memtable flushed to an L0 table.
//   - a flush: table.CreateTable truncates the new .sst to the builder's
//     size and copies the table in through the map. An L0 table measured
//     0.47× the WAL bytes it came from for frames (keys share prefixes);
//     by the two formats it stays under 1.1× for small inline values;
//     1.25× is counted. Close flushes the memtable too.
//   - a compaction writes its output tables (through the map, as above)
//     before it deletes its input, and the output is no bigger than the
//     input; two compactors work on disjoint tables, so the whole LSM (1.1×)
//     bounds them.
//   - DISCARD: 1 MiB, sparse, written through the map.
//
// Headroom = the rest of the current value log up to ValueLogFileSize + the
// rest of the current WAL up to MemTableSize + 1.25 × every WAL's bytes
// (flushes) + 1.1 × the tables' bytes (a compaction) + the unallocated part
// of tables being written and of DISCARD + 256 KiB (file headers, page
// rounding). A batch adds its value-log bytes and 2.25× its WAL bytes (the
// WAL and its later flush), whether or not it makes Badger rotate to new
// files. Everything is measured with stat (apparent size and allocated
// blocks) and statfs (blocks available to an unprivileged user).

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrDiskFull is wrapped by every error of a write (or an Open) refused
// because the filesystem lacks the room Badger may need.
var ErrDiskFull = errors.New("store: disk full")

// DefaultDiskReserve is the free space kept beyond Badger's headroom before
// audio is refused: about 20 s of the busiest appliance's audio (200 calls ×
// 2 channels × 32 KB/s), room for other writers on the filesystem (logs)
// between two commits, and what metadata still needs once audio stops.
const DefaultDiskReserve = 256 << 20

// DiskFullError is the error of a refused write or Open.
type DiskFullError struct {
	Dir      string
	What     string // "audio", "metadata", "value-log GC" or "open"
	Free     uint64 // bytes available on the store's filesystem
	Needed   uint64 // Headroom + Batch + Reserve
	Headroom uint64 // what Badger may still allocate
	Batch    uint64 // what this write adds
	Reserve  uint64
}

func (e *DiskFullError) Error() string {
	then := "the store resumes by itself"
	if e.What == "open" {
		then = "start again"
	}
	return fmt.Sprintf("store %s: disk full: %s refused: %s free, %s needed (%s Badger may still allocate + %s for this write + %s reserve); free space on that filesystem and %s",
		e.Dir, e.What, mib(e.Free), mib(e.Needed), mib(e.Headroom), mib(e.Batch), mib(e.Reserve), then)
}

// Is makes errors.Is(err, ErrDiskFull) true.
func (e *DiskFullError) Is(target error) bool { return target == ErrDiskFull }

// DiskStatus is the store's view of its disk, for readiness and metrics.
type DiskStatus struct {
	Dir   string
	Free  uint64 // bytes available on the store's filesystem
	Total uint64 // the filesystem's size
	// Headroom is what Badger may still allocate in its files before
	// another check (see the package's disk guard).
	Headroom uint64
	// AudioNeeds and MetaNeeds are the free space below which audio frames
	// and metadata writes are refused: Headroom plus the reserve of each.
	AudioNeeds, MetaNeeds     uint64
	AudioRefused, MetaRefused bool
	// Reason says why writes are refused, or that they are not.
	Reason string
	// RefusedAudio and RefusedMeta count writes refused since Open (one
	// PutFrames call is one write).
	RefusedAudio, RefusedMeta uint64
	Checked                   time.Time
}

func mib(b uint64) string {
	switch {
	case b >= 10<<20:
		return fmt.Sprintf("%d MiB", b>>20)
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", (b+1023)>>10)
}

// fileUse is one of Badger's files as stat sees it.
type fileUse struct {
	path        string
	fid         uint64
	size, alloc int64
}

func statUse(path string) (size, alloc int64, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, err
	}
	return st.Size, st.Blocks * 512, nil
}

// dirFiles is what the guard knows of the store directory.
type dirFiles struct {
	vlog    *fileUse  // the newest value log
	mems    []fileUse // WALs, oldest first; the last is the current one
	lsm     int64     // bytes of all tables
	unalloc int64     // unallocated bytes of tables and DISCARD
	discard bool      // DISCARD exists
}

// scanDir lists Badger's files in dir with their sizes.
func scanDir(dir string) (dirFiles, error) {
	var f dirFiles
	es, err := os.ReadDir(dir)
	if err != nil {
		return f, err
	}
	for _, e := range es {
		name := e.Name()
		p := filepath.Join(dir, name)
		kind, fid := fileKind(name)
		if kind == "" {
			continue
		}
		size, alloc, err := statUse(p)
		if errors.Is(err, os.ErrNotExist) {
			continue // deleted since the listing
		}
		if err != nil {
			return f, err
		}
		u := fileUse{path: p, fid: fid, size: size, alloc: alloc}
		switch kind {
		case "vlog":
			if f.vlog == nil || fid > f.vlog.fid {
				f.vlog = &u
			}
		case "mem":
			f.mems = append(f.mems, u) // ReadDir sorts by name: by fid
		case "sst":
			f.lsm += size
			f.unalloc += max(0, size-alloc)
		case "discard":
			f.discard = true
			f.unalloc += max(0, size-alloc)
		}
	}
	return f, nil
}

// fileKind classifies a file name of a Badger directory.
func fileKind(name string) (kind string, fid uint64) {
	if name == "DISCARD" {
		return "discard", 0
	}
	for _, k := range []string{"vlog", "mem", "sst"} {
		if base, ok := strings.CutSuffix(name, "."+k); ok {
			id, err := strconv.ParseUint(base, 10, 64)
			if err != nil {
				return "", 0
			}
			return k, id
		}
	}
	return "", 0
}

// headroom is what Badger may still allocate given the files in f.
func headroom(f dirFiles) int64 {
	h := f.lsm*11/10 + 1<<20 + f.unalloc + 256<<10
	if f.vlog != nil {
		h += max(0, min(f.vlog.size, vlogFileSize)-f.vlog.alloc)
	}
	for i, m := range f.mems {
		h += m.alloc*5/4 + 64<<10
		if i == len(f.mems)-1 {
			h += max(0, min(m.size, memTableSize)-m.alloc)
		}
	}
	return h
}

// openHeadroom is what Badger may allocate once it has opened the files in
// f: it flushes every WAL it finds to a table, creates a new WAL and a new
// value log (both sparse) and DISCARD if missing.
func openHeadroom(f dirFiles) int64 {
	g := f
	g.vlog = &fileUse{size: 2 * vlogFileSize}
	g.mems = append(append([]fileUse(nil), f.mems...), fileUse{size: 2 * memTableSize})
	if !f.discard {
		g.unalloc += 1 << 20
	}
	return headroom(g)
}

// batchCost is what a batch with these value-log and WAL bytes adds.
func batchCost(vlog, wal int64) int64 { return vlog + wal*9/4 + 32<<10 }

// diskGuard decides, before each commit, which writes the disk can take.
type diskGuard struct {
	dir string
	// replicated: writes also go to the cluster's log, on this filesystem.
	replicated                bool
	audioReserve, metaReserve int64
	log                       *slog.Logger

	mu       sync.Mutex
	files    dirFiles
	scanned  time.Time // when files was listed
	dirMtime unix.Timespec
	audioOff bool // for logging transitions
	metaOff  bool
	statErr  bool
	refusedA atomic.Uint64
	refusedM atomic.Uint64
	// The last measurement, reused for measureEvery by commits, less what
	// the commits admitted since.
	measured time.Time
	lastFree int64
	lastHead int64
	admitted int64
}

// measureEvery is how long a measurement serves commits: a busy store
// commits every millisecond or two; the bytes admitted meanwhile are
// subtracted from the free space measured.
const measureEvery = 2 * time.Millisecond

func newDiskGuard(dir string, audioReserve, metaReserve int64, log *slog.Logger) *diskGuard {
	return &diskGuard{dir: dir, audioReserve: audioReserve, metaReserve: metaReserve, log: log}
}

// freeSpace returns the bytes available to an unprivileged user and the
// filesystem's size.
func freeSpace(dir string) (free, total uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
}

// relistWindow: file times come from a coarse clock (a jiffy, at most
// 10 ms), so a file created in the same tick as the last listing may leave
// the directory's mtime unchanged; the directory is listed again on every
// measurement until this long after its last change.
const relistWindow = 50 * time.Millisecond

// measure returns free space and Badger's headroom. The directory is listed
// again only when it changed (its mtime, see relistWindow); otherwise only
// the current value log and the WALs are stat'ed. Call with g.mu held.
func (g *diskGuard) measure() (free, total uint64, head int64, err error) {
	var st unix.Stat_t
	if err := unix.Stat(g.dir, &st); err != nil {
		return 0, 0, 0, err
	}
	now := time.Now()
	mt := time.Unix(st.Mtim.Unix())
	if st.Mtim != g.dirMtime || g.scanned.Sub(mt) < relistWindow {
		f, err := scanDir(g.dir)
		if err != nil {
			return 0, 0, 0, err
		}
		g.files, g.scanned, g.dirMtime = f, now, st.Mtim
	} else {
		ok := true
		if v := g.files.vlog; v != nil {
			if v.size, v.alloc, err = statUse(v.path); err != nil {
				ok = false
			}
		}
		for i := range g.files.mems {
			m := &g.files.mems[i]
			if m.size, m.alloc, err = statUse(m.path); err != nil {
				ok = false
			}
		}
		if !ok { // a file went away: list again
			f, err := scanDir(g.dir)
			if err != nil {
				return 0, 0, 0, err
			}
			g.files, g.scanned = f, now
		}
	}
	free, total, err = freeSpace(g.dir)
	if err != nil {
		return 0, 0, 0, err
	}
	head = headroom(g.files)
	g.measured, g.lastFree, g.lastHead, g.admitted = now, int64(min(free, 1<<62)), head, 0
	return free, total, head, nil
}

// admission is one commit's decision state.
type admission struct {
	g         *diskGuard
	ok        bool // measured; false: the guard could not measure and lets writes through
	free      int64
	head      int64
	vlog, wal int64 // admitted so far
	log       int64 // what they add to the replicated log
}

// begin measures once for a commit (or reuses a measurement younger than
// measureEvery).
func (g *diskGuard) begin() *admission {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.statErr && !g.measured.IsZero() && time.Since(g.measured) < measureEvery {
		return &admission{g: g, ok: true, head: g.lastHead, free: g.lastFree - g.admitted}
	}
	free, _, head, err := g.measure()
	a := &admission{g: g, head: head, free: int64(min(free, 1<<62))}
	if err != nil {
		if !g.statErr {
			g.log.Error("store: cannot measure free disk space; writes are not guarded", "dir", g.dir, "err", err)
			g.statErr = true
		}
		return a
	}
	if g.statErr {
		g.log.Info("store: free disk space measured again", "dir", g.dir)
		g.statErr = false
	}
	a.ok = true
	g.transitions(a.free, head)
	return a
}

// transitions logs when audio or metadata starts or stops being refused.
func (g *diskGuard) transitions(free, head int64) {
	audioOff := free < head+g.audioReserve
	metaOff := free < head+g.metaReserve
	if audioOff != g.audioOff {
		if audioOff {
			g.log.Error("store: disk nearly full: audio frames are refused until space is freed", "dir", g.dir, "free", mib(uint64(free)), "needed", mib(uint64(head+g.audioReserve)))
		} else {
			g.log.Info("store: disk space back: audio frames accepted again", "dir", g.dir, "free", mib(uint64(free)))
		}
		g.audioOff = audioOff
	}
	if metaOff != g.metaOff {
		if metaOff {
			g.log.Error("store: disk full: metadata (call records, finals) refused too", "dir", g.dir, "free", mib(uint64(free)), "needed", mib(uint64(head+g.metaReserve)))
		} else {
			g.log.Info("store: disk space back: metadata accepted again", "dir", g.dir, "free", mib(uint64(free)))
		}
		g.metaOff = metaOff
	}
}

// admit decides for one request; admitted requests count against the rest.
func (a *admission) admit(r *req) error {
	if !a.ok {
		return nil
	}
	reserve, what := a.g.metaReserve, "metadata"
	if r.audio {
		reserve, what = a.g.audioReserve, "audio"
	}
	batch := batchCost(a.vlog+r.vlog, a.wal+r.wal) + a.log + a.g.logCost(r)
	need := a.head + batch + reserve
	if a.free < need {
		if r.audio {
			a.g.refusedA.Add(1)
		} else {
			a.g.refusedM.Add(1)
		}
		return &DiskFullError{Dir: a.g.dir, What: what, Free: uint64(a.free), Needed: uint64(need), Headroom: uint64(a.head), Batch: uint64(batch), Reserve: uint64(reserve)}
	}
	a.vlog += r.vlog
	a.wal += r.wal
	a.log += a.g.logCost(r)
	return nil
}

// logCost is what a write adds to the replicated log (on the same
// filesystem, in DATA/raft) before a snapshot compacts it: its bytes and a
// record header.
func (g *diskGuard) logCost(r *req) int64 {
	if !g.replicated {
		return 0
	}
	return int64(r.size()) + 128
}

// done counts what the commit admitted against the measurement it used.
func (a *admission) done() {
	if !a.ok || (a.vlog == 0 && a.wal == 0 && a.log == 0) {
		return
	}
	a.g.mu.Lock()
	a.g.admitted += batchCost(a.vlog, a.wal) + a.log
	a.g.mu.Unlock()
}

// allowGC says whether a value-log GC step fits: it rewrites the live part
// of one value log (at most ValueLogFileSize) before deleting it.
func (g *diskGuard) allowGC() error {
	a := g.begin()
	if !a.ok {
		return nil
	}
	extra := vlogFileSize + batchCost(0, 0)
	need := a.head + extra + g.metaReserve
	if a.free < need {
		return &DiskFullError{Dir: g.dir, What: "value-log GC", Free: uint64(a.free), Needed: uint64(need), Headroom: uint64(a.head), Batch: uint64(extra), Reserve: uint64(g.metaReserve)}
	}
	return nil
}

// status measures and reports.
func (g *diskGuard) status() DiskStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	d := DiskStatus{Dir: g.dir, Checked: time.Now(), RefusedAudio: g.refusedA.Load(), RefusedMeta: g.refusedM.Load()}
	free, total, head, err := g.measure()
	if err != nil {
		d.Reason = "free space unknown: " + err.Error()
		return d
	}
	g.transitions(int64(min(free, 1<<62)), head)
	d.Free, d.Total, d.Headroom = free, total, uint64(head)
	d.AudioNeeds, d.MetaNeeds = uint64(head+g.audioReserve), uint64(head+g.metaReserve)
	d.AudioRefused, d.MetaRefused = free < d.AudioNeeds, free < d.MetaNeeds
	switch {
	case d.MetaRefused:
		d.Reason = fmt.Sprintf("disk full: all writes refused: %s free, metadata needs %s", mib(free), mib(d.MetaNeeds))
	case d.AudioRefused:
		d.Reason = fmt.Sprintf("disk nearly full: audio refused, metadata accepted: %s free, audio needs %s", mib(free), mib(d.AudioNeeds))
	default:
		d.Reason = fmt.Sprintf("ok: %s free, audio needs %s", mib(free), mib(d.AudioNeeds))
	}
	return d
}

// checkOpenSpace refuses to open a store whose filesystem cannot take what
// Badger allocates as it opens and what the first metadata writes need.
func checkOpenSpace(dir string, metaReserve int64) error {
	probe := dir
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		probe = filepath.Dir(dir)
	}
	var f dirFiles
	if probe == dir {
		var err error
		if f, err = scanDir(dir); err != nil {
			return fmt.Errorf("store: open %s: %w", dir, err)
		}
	}
	free, _, err := freeSpace(probe)
	if err != nil {
		return nil // unknown: let Badger try
	}
	head := openHeadroom(f)
	batch := batchCost(0, 4<<10)
	if need := head + batch + metaReserve; int64(min(free, 1<<62)) < need {
		return &DiskFullError{Dir: dir, What: "open", Free: free, Needed: uint64(need), Headroom: uint64(head), Batch: uint64(batch), Reserve: uint64(metaReserve)}
	}
	return nil
}

// room reports whether the disk can take a write without any reserve: a
// batch already committed by the cluster, which this member must apply or
// stop (Apply), never one Badger cannot back.
func (g *diskGuard) room(r *req) error {
	a := g.begin()
	if !a.ok {
		return nil
	}
	batch := batchCost(r.vlog, r.wal) + g.logCost(r)
	if need := a.head + batch; a.free < need {
		return &DiskFullError{Dir: g.dir, What: "a committed batch", Free: uint64(max(a.free, 0)), Needed: uint64(need), Headroom: uint64(a.head), Batch: uint64(batch)}
	}
	g.mu.Lock()
	g.admitted += batch
	g.mu.Unlock()
	return nil
}
