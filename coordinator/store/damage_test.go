package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callscribe/callscribe/proto"
	"go.uber.org/goleak"
)

const populatedCalls = 300

var (
	pristineMu   sync.Mutex
	pristineDirs = map[string]string{} // by key
)

// tkey is the key the damage tests run with: none, then testKey (both).
var tkey []byte

// testKey is the encryption key of the encrypted runs.
var testKey = []byte("0123456789abcdef0123456789abcdef")

// both runs f plain and encrypted.
func both(t *testing.T, f func(t *testing.T)) {
	for _, c := range []struct {
		name string
		key  []byte
	}{{"plain", nil}, {"encrypted", testKey}} {
		t.Run(c.name, func(t *testing.T) {
			defer func(k []byte) { tkey = k }(tkey)
			tkey = c.key
			f(t)
		})
	}
}

// testLogKeys is what the damage scan decrypts the logs in dir with.
func testLogKeys(t *testing.T, dir string) logKeys {
	t.Helper()
	reg, err := openRegistry(dir, tkey, "")
	if err != nil {
		t.Fatal(err)
	}
	return logKeys{reg: reg}
}

// pristine is a populated store, closed cleanly, shared by the damage
// tests (each works on a copy); one per key.
func pristine(t *testing.T) string {
	t.Helper()
	pristineMu.Lock()
	defer pristineMu.Unlock()
	if d, ok := pristineDirs[string(tkey)]; ok {
		return d
	}
	root, err := os.MkdirTemp("", "store-pristine-")
	if err != nil {
		t.Fatal(err)
	}
	d := filepath.Join(root, "store")
	if err := populate(d, populatedCalls, 0); err != nil {
		os.RemoveAll(root)
		t.Fatal(err)
	}
	pristineDirs[string(tkey)] = d
	return d
}

func TestMain(m *testing.M) {
	if dir := os.Getenv("STORE_CRASH_CHILD"); dir != "" {
		tkey = []byte(os.Getenv("STORE_CRASH_KEY"))
		crashChild(dir)
		return
	}
	code := m.Run()
	for _, d := range pristineDirs {
		os.RemoveAll(filepath.Dir(d))
	}
	// Every goroutine of the store (its committer, Badger's own) ends
	// with Close.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func callID(i int) proto.CallID { return proto.CallID(fmt.Sprintf("0193c3a2-7b1e-7c3d-9f00-%012d", i)) }

// payload is audio-like: not zeros, different per frame.
func payload(call, seq int) []byte {
	b := make([]byte, 640)
	r := rand.New(rand.NewPCG(uint64(call), uint64(seq)))
	for i := range b {
		b[i] = byte(r.UintN(255) + 1)
	}
	return b
}

// populate writes calls [from, from+n) with 10 frames and one final each
// and closes the store cleanly.
func populate(dir string, n, from int) error {
	s, err := Open(dir, Options{Key: tkey})
	if err != nil {
		return err
	}
	if err := writeCalls(s, n, from); err != nil {
		s.Close()
		return err
	}
	return s.Close()
}

func writeCalls(s *Store, n, from int) error {
	ctx := context.Background()
	for i := from; i < from+n; i++ {
		id := callID(i)
		c := &Call{ID: id, Console: "console-1", Channels: []string{"caller"}, Codec: proto.CodecL16, Model: "base", State: StateStreaming, Created: time.Unix(1700000000+int64(i), 0).UTC(), Decoded: []uint32{0}}
		if err := s.PutCall(ctx, c); err != nil {
			return err
		}
		fs := make([]Frame, 10)
		for j := range fs {
			fs[j] = Frame{Seq: uint32(j), Capture: int64(j), Payload: payload(i, j)}
		}
		if err := s.PutFrames(ctx, id, 0, fs); err != nil {
			return err
		}
		if err := s.PutFinal(ctx, id, Final{Channel: 0, Index: 0, Text: fmt.Sprint("final of call ", i), NextSeq: 10, Checkpoint: []byte(`{"state":"abc"}`)}, c); err != nil {
			return err
		}
	}
	return nil
}

// verifyCalls checks that calls [from, from+n) read back whole.
func verifyCalls(t *testing.T, s *Store, n, from int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		id := callID(i)
		c, err := s.Call(id)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if c.Console != "console-1" {
			t.Fatalf("call %d: %+v", i, c)
		}
		seq := 0
		err = s.Frames(id, 0, 0, 0, func(f Frame) error {
			if f.Seq != uint32(seq) || string(f.Payload) != string(payload(i, seq)) {
				return fmt.Errorf("frame %d of call %d differs", seq, i)
			}
			seq++
			return nil
		})
		if err != nil || seq != 10 {
			t.Fatalf("call %d: frames: %v (%d read)", i, err, seq)
		}
		fs, err := s.Finals(id, 0, 0)
		if err != nil || len(fs) == 0 || fs[0].Text != fmt.Sprint("final of call ", i) {
			t.Fatalf("call %d: finals %+v %v", i, fs, err)
		}
	}
}

// copyStore copies a store directory and its state record to a new place,
// keeping modification times.
func copyStore(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "store")
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		return copyFile(p, target)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(StatePath(src)); err == nil {
		if err := copyFile(StatePath(src), StatePath(dst)); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chtimes(dst, fi.ModTime(), fi.ModTime())
}

// hashes fingerprints every file of the store and its state record.
func hashes(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	add := func(p string) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		out[p] = hex.EncodeToString(sum[:])
	}
	es, _ := os.ReadDir(dir)
	for _, e := range es {
		add(filepath.Join(dir, e.Name()))
	}
	if _, err := os.Stat(StatePath(dir)); err == nil {
		add(StatePath(dir))
	}
	return out
}

func sameHashes(t *testing.T, before, after map[string]string) {
	t.Helper()
	for p, h := range before {
		if after[p] != h {
			t.Errorf("%s changed (or vanished) after the refused Open", p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s appeared after the refused Open", p)
		}
	}
}

func files(t *testing.T, dir, ext string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "*"+ext))
	slices.Sort(m)
	return m
}

// newestVlogWithEntries is the value log the last session wrote.
func newestVlogWithEntries(t *testing.T, dir string) string {
	t.Helper()
	vs := files(t, dir, ".vlog")
	for i := len(vs) - 1; i >= 0; i-- {
		if fi, _ := os.Stat(vs[i]); fi.Size() > logHeaderSize {
			return vs[i]
		}
	}
	t.Fatal("no value log with entries")
	return ""
}

type damageCase struct {
	name   string
	damage func(t *testing.T, dir string) (file string) // returns the file the error must name
}

var damageCases = []damageCase{
	{"manifest cut to 10 bytes", func(t *testing.T, dir string) string {
		p := filepath.Join(dir, "MANIFEST")
		if err := os.Truncate(p, 10); err != nil {
			t.Fatal(err)
		}
		return "MANIFEST"
	}},
	{"manifest deleted", func(t *testing.T, dir string) string {
		if err := os.Remove(filepath.Join(dir, "MANIFEST")); err != nil {
			t.Fatal(err)
		}
		return "MANIFEST"
	}},
	{"orphan sst", func(t *testing.T, dir string) string {
		ssts := files(t, dir, ".sst")
		if len(ssts) == 0 {
			t.Fatal("no tables")
		}
		p := filepath.Join(dir, "000999.sst")
		if err := copyFile(ssts[0], p); err != nil {
			t.Fatal(err)
		}
		return "000999.sst"
	}},
	{"missing sst", func(t *testing.T, dir string) string {
		ssts := files(t, dir, ".sst")
		if len(ssts) == 0 {
			t.Fatal("no tables")
		}
		if err := os.Remove(ssts[0]); err != nil {
			t.Fatal(err)
		}
		return filepath.Base(ssts[0])
	}},
	{"vlog byte flipped in the middle", func(t *testing.T, dir string) string {
		p := newestVlogWithEntries(t, dir)
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fi, _ := f.Stat()
		off := fi.Size() / 2
		b := make([]byte, 1)
		f.ReadAt(b, off)
		b[0] ^= 0x55
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		return filepath.Base(p)
	}},
	{"vlog end cut by 100 bytes", func(t *testing.T, dir string) string {
		p := newestVlogWithEntries(t, dir)
		fi, _ := os.Stat(p)
		if err := os.Truncate(p, fi.Size()-100); err != nil {
			t.Fatal(err)
		}
		return filepath.Base(p)
	}},
	{"store directory emptied", func(t *testing.T, dir string) string {
		es, _ := os.ReadDir(dir)
		for _, e := range es {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
		return "MANIFEST"
	}},
	{"another store's files", func(t *testing.T, dir string) string {
		other := filepath.Join(t.TempDir(), "other")
		if err := populate(other, 5, 0); err != nil {
			t.Fatal(err)
		}
		es, _ := os.ReadDir(dir)
		for _, e := range es {
			os.Remove(filepath.Join(dir, e.Name()))
		}
		es, _ = os.ReadDir(other)
		for _, e := range es {
			if err := copyFile(filepath.Join(other, e.Name()), filepath.Join(dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
		return "" // several files differ from the record
	}},
}

// A damaged store is refused, by name, and left exactly as it was.
func TestOpenRefusesDamagedStore(t *testing.T) { both(t, testOpenRefusesDamagedStore) }

func testOpenRefusesDamagedStore(t *testing.T) {
	src := pristine(t)
	for _, c := range damageCases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyStore(t, src)
			file := c.damage(t, dir)
			before := hashes(t, dir)
			s, err := Open(dir, Options{Key: tkey})
			if err == nil {
				s.Close()
				t.Fatal("Open accepted a damaged store")
			}
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("error does not wrap ErrDamaged: %v", err)
			}
			if file != "" && !strings.Contains(err.Error(), file) {
				t.Fatalf("error does not name %s: %v", file, err)
			}
			if !strings.Contains(err.Error(), "callscribe store check") {
				t.Fatalf("error does not say what to do: %v", err)
			}
			t.Logf("%v", err)
			sameHashes(t, before, hashes(t, dir))
			// Refused again on a retry (the service restarts), still unchanged.
			if s, err := Open(dir, Options{Key: tkey}); err == nil {
				s.Close()
				t.Fatal("second Open accepted it")
			}
			sameHashes(t, before, hashes(t, dir))

			r, err := Check(dir, tkey, "")
			if err != nil {
				t.Fatal(err)
			}
			if r.Intact() {
				t.Fatal("Check found nothing wrong")
			}
			if file != "" && !strings.Contains(r.Verdict(), file) && !strings.Contains(fmt.Sprint(r.Problems), file) {
				t.Fatalf("Check does not name %s: %v", file, r.Problems)
			}
			sameHashes(t, before, hashes(t, dir))
		})
	}
}

// A store damaged while the state record is missing (a store from before
// the record existed, or a lost record) is still refused where Badger would
// destroy data.
func TestOpenRefusesDamageWithoutStateRecord(t *testing.T) {
	both(t, testOpenRefusesDamageWithoutStateRecord)
}

func testOpenRefusesDamageWithoutStateRecord(t *testing.T) {
	for _, c := range []string{"manifest cut to 10 bytes", "manifest deleted", "vlog byte flipped in the middle", "vlog end cut by 100 bytes", "missing sst"} {
		t.Run(c, func(t *testing.T) {
			dir := copyStore(t, pristine(t))
			os.Remove(StatePath(dir))
			i := slices.IndexFunc(damageCases, func(d damageCase) bool { return d.name == c })
			damageCases[i].damage(t, dir)
			before := hashes(t, dir)
			s, err := Open(dir, Options{Key: tkey})
			if err == nil {
				s.Close()
				t.Fatal("Open accepted a damaged store")
			}
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("error does not wrap ErrDamaged: %v", err)
			}
			sameHashes(t, before, hashes(t, dir))
		})
	}
}

func TestCleanReopenAndCheck(t *testing.T) { both(t, testCleanReopenAndCheck) }

func testCleanReopenAndCheck(t *testing.T) {
	dir := copyStore(t, pristine(t))
	r, err := Check(dir, tkey, "")
	if err != nil {
		t.Fatal(err)
	}
	if !r.Intact() || r.Counts == nil || r.Counts.Calls != populatedCalls || r.Counts.Frames != populatedCalls*10 || r.Counts.Finals != populatedCalls {
		var b strings.Builder
		r.WriteText(&b)
		t.Fatalf("check of an intact store:\n%s", b.String())
	}
	for range 3 {
		s, err := Open(dir, Options{Key: tkey})
		if err != nil {
			t.Fatal(err)
		}
		verifyCalls(t, s, 20, populatedCalls-20)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if r, _ := Check(dir, tkey, ""); !r.Intact() {
		t.Fatalf("check after reopens: %v", r.Problems)
	}
}

// The child of TestReopenAfterCrash: writes, prints what was acknowledged,
// and is killed with SIGKILL in the middle of writing more.
func crashChild(dir string) {
	s, err := Open(dir, Options{Key: tkey})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(3)
	}
	if err := writeCalls(s, 50, populatedCalls); err != nil {
		fmt.Println("write:", err)
		os.Exit(3)
	}
	if os.Getenv("STORE_CRASH_BULK") != "" {
		// Well over tornWindow of acknowledged audio in this session's value log.
		fs := make([]Frame, 100)
		for k := range 50 {
			for j := range fs {
				fs[j] = Frame{Seq: uint32(k*100 + j), Payload: make([]byte, 3200)}
				copy(fs[j].Payload, payload(k, j))
			}
			if err := s.PutFrames(context.Background(), "bulk", 0, fs); err != nil {
				fmt.Println("write:", err)
				os.Exit(3)
			}
		}
	}
	fmt.Println("acked 50")
	go func() {
		for i := populatedCalls + 50; ; i++ {
			_ = writeCalls(s, 1, i)
		}
	}()
	time.Sleep(50 * time.Millisecond)
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

// crash runs the child on dir and returns once it was killed.
func crash(t *testing.T, dir string, env ...string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "STORE_CRASH_CHILD="+dir, "STORE_CRASH_KEY="+string(tkey)), env...)
	out, err := cmd.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "acked 50") {
		t.Fatalf("child: %s", out)
	}
}

// A store stopped by SIGKILL (state record not updated since Open) opens
// with everything acknowledged, and again after that.
func TestReopenAfterCrash(t *testing.T) { both(t, testReopenAfterCrash) }

func testReopenAfterCrash(t *testing.T) {
	dir := copyStore(t, pristine(t))
	crash(t, dir)
	rec, err := readState(dir)
	if err != nil || rec == nil || rec.Clean {
		t.Fatalf("state record after the crash: %+v %v", rec, err)
	}
	if len(files(t, dir, ".mem")) == 0 {
		t.Fatal("no WAL after the crash: not a crash")
	}
	if r, err := Check(dir, tkey, ""); err != nil || !r.Intact() {
		t.Fatalf("check after a crash: %v %v", err, r.Problems)
	}
	for range 2 {
		s, err := Open(dir, Options{Key: tkey})
		if err != nil {
			t.Fatal(err)
		}
		verifyCalls(t, s, 50, populatedCalls)
		verifyCalls(t, s, 10, 0)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// A torn last entry, as a crash in the middle of a write leaves it in the
// value log and the WAL (never acknowledged, never referenced), opens fine;
// the same bytes in a store that closed cleanly are damage.
func TestTornTailAfterCrashOpens(t *testing.T) { both(t, testTornTailAfterCrashOpens) }

func testTornTailAfterCrashOpens(t *testing.T) {
	dir := copyStore(t, pristine(t))
	crash(t, dir)
	vlog := files(t, dir, ".vlog")
	tearAfterData(t, vlog[len(vlog)-1])
	mems := files(t, dir, ".mem")
	tearAfterData(t, mems[len(mems)-1])
	r, err := Check(dir, tkey, "")
	if err != nil || !r.Intact() {
		t.Fatalf("check of a torn tail: %v %v", err, r.Problems)
	}
	if !strings.Contains(strings.Join(r.Notes, "\n"), "torn") {
		t.Fatalf("check does not mention the torn tail: %v", r.Notes)
	}
	s, err := Open(dir, Options{Key: tkey})
	if err != nil {
		t.Fatal(err)
	}
	verifyCalls(t, s, 50, populatedCalls)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Torn bytes after the data of a cleanly closed store: damage.
	dir = copyStore(t, pristine(t))
	p := newestVlogWithEntries(t, dir)
	fi, _ := os.Stat(p)
	f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	f.Write(tornEntry())
	f.Close()
	if err := os.Truncate(p, fi.Size()+int64(len(tornEntry()))); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{Key: tkey}); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Open of a cleanly closed store with bytes after its end: %v", err)
	}
}

// tornEntry is the start of a value-log entry whose write was cut: header
// and key whole, value partial, no checksum.
func tornEntry() []byte {
	key := []byte("a/0193c3a2-7b1e-7c3d-9f00-999999999999/\x00\x00\x00\x00\x07\xff\xff\xff\xff\xff\xff\xff\x00")
	b := []byte{0, 0}
	b = binaryAppendUvarint(b, uint64(len(key)))
	b = binaryAppendUvarint(b, 648)
	b = binaryAppendUvarint(b, 0)
	b = append(b, key...)
	return append(b, payload(999, 7)[:300]...)
}

func binaryAppendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// tearAfterData writes a torn entry where the data of a log ends.
func tearAfterData(t *testing.T, path string) {
	t.Helper()
	kind := "vlog"
	if strings.HasSuffix(path, ".mem") {
		kind = "wal"
	}
	l := scanLog(path, kind, 0, testLogKeys(t, filepath.Dir(path)))
	if l.Stop == stopBad && l.ValidAfter < 0 {
		return // the kill tore the last write already
	}
	if l.Stop != stopZeros {
		t.Fatalf("%s: the data does not end in zeros: %+v", path, l)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(tornEntry(), l.DataEnd); err != nil {
		t.Fatal(err)
	}
}

// Damage in the middle of the value log a crashed session was writing
// (valid entries after a bad one, far more than one write) is refused even
// though the store did not close cleanly.
func TestMiddleDamageAfterCrashRefused(t *testing.T) { both(t, testMiddleDamageAfterCrashRefused) }

func testMiddleDamageAfterCrashRefused(t *testing.T) {
	dir := copyStore(t, pristine(t))
	crash(t, dir, "STORE_CRASH_BULK=1")
	vlogs := files(t, dir, ".vlog")
	p := vlogs[len(vlogs)-1]
	l := scanLog(p, "vlog", 0, testLogKeys(t, dir))
	if l.Entries < 100 {
		t.Fatalf("%s: only %d entries", p, l.Entries)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	f.ReadAt(b, 1000)
	b[0] ^= 0xFF
	f.WriteAt(b, 1000)
	f.Close()
	before := hashes(t, dir)
	_, err = Open(dir, Options{Key: tkey})
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), filepath.Base(p)) {
		t.Fatalf("Open: %v", err)
	}
	if l.DataEnd-1000 <= tornWindow {
		t.Fatalf("test data too small: %d bytes after the damage", l.DataEnd-1000)
	}
	sameHashes(t, before, hashes(t, dir))
}

// editState rewrites the state record beside dir.
func editState(t *testing.T, dir string, edit func(r *StateRecord)) {
	t.Helper()
	r, err := readState(dir)
	if err != nil || r == nil {
		t.Fatalf("state record: %v", err)
	}
	edit(r)
	if err := writeState(dir, r); err != nil {
		t.Fatal(err)
	}
}

// A store that opens but is not what its state record says (another
// store, behind it, fewer calls than at its clean close) is refused after
// a read-only look: nothing changes.
func TestOpenRefusesStoreBehindItsRecord(t *testing.T) { both(t, testOpenRefusesStoreBehindItsRecord) }

func testOpenRefusesStoreBehindItsRecord(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(r *StateRecord)
		want string
	}{
		{"record of another store", func(r *StateRecord) { r.UUID = newUUID() }, "m/identity"},
		{"store behind its record", func(r *StateRecord) { r.MaxVersion += 1000 }, "recent writes are missing"},
		{"fewer calls than at its clean close", func(r *StateRecord) { r.Calls += 100 }, "call records"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := copyStore(t, pristine(t))
			editState(t, dir, c.edit)
			before := hashes(t, dir)
			s, err := Open(dir, Options{Key: tkey})
			if err == nil {
				s.Close()
				t.Fatal("Open accepted it")
			}
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open: %v", err)
			}
			t.Logf("%v", err)
			sameHashes(t, before, hashes(t, dir))
			if r, _ := Check(dir, tkey, ""); r.Intact() {
				t.Fatal("Check found nothing wrong")
			}
		})
	}
}

// Value-log GC deletes value-log files: after a crash following GC the
// missing files are expected (the record says GC ran), not damage; without
// that mark they would be. A clean close after GC records the new set.
func TestValueLogGCThenCrash(t *testing.T) { both(t, testValueLogGCThenCrash) }

func testValueLogGCThenCrash(t *testing.T) {
	defer func(v int64) { vlogFileSize = v }(vlogFileSize)
	vlogFileSize = 1 << 20
	dir := filepath.Join(t.TempDir(), "store")
	if err := populate(dir, populatedCalls, 0); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, Options{Key: tkey})
	if err != nil {
		t.Fatal(err)
	}
	for i := range populatedCalls - 20 {
		if _, err := s.DeleteAudio(context.Background(), callID(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Each session flushes a table to L0; five make Badger compact them,
	// and compactions count the garbage GC needs.
	for range 5 {
		if s, err = Open(dir, Options{Key: tkey}); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	s, err = Open(dir, Options{Key: tkey})
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		if s.db.Levels()[0].NumTables < 5 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	vlogsBefore := files(t, dir, ".vlog")
	n := s.CollectGarbage()
	vlogsAfter := files(t, dir, ".vlog")
	if n == 0 || len(vlogsAfter) >= len(vlogsBefore) {
		t.Fatalf("GC rewrote %d files: %d value logs before, %d after", n, len(vlogsBefore), len(vlogsAfter))
	}
	crashed := copyStore(t, dir) // what a SIGKILL now leaves: the page cache is the files
	unmarked := copyStore(t, dir)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(crashed, Options{Key: tkey})
	if err != nil {
		t.Fatalf("Open after GC and a crash: %v", err)
	}
	verifyCalls(t, s, 20, populatedCalls-20)
	s.Close()

	editState(t, unmarked, func(r *StateRecord) { r.GCSince = nil })
	if _, err := Open(unmarked, Options{Key: tkey}); !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("Open with value logs gone and no GC noted: %v", err)
	}

	s, err = Open(dir, Options{Key: tkey})
	if err != nil {
		t.Fatalf("clean reopen after GC: %v", err)
	}
	verifyCalls(t, s, 20, populatedCalls-20)
	s.Close()
	if r, err := Check(dir, tkey, ""); err != nil || !r.Intact() {
		t.Fatalf("check after GC: %v %v", err, r.Problems)
	}
}

// store check on a store a process has open: in use, no false alarm.
func TestCheckStoreInUse(t *testing.T) { both(t, testCheckStoreInUse) }

func testCheckStoreInUse(t *testing.T) {
	dir := copyStore(t, pristine(t))
	s, err := Open(dir, Options{Key: tkey})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := writeCalls(s, 5, populatedCalls); err != nil {
		t.Fatal(err)
	}
	r, err := Check(dir, tkey, "")
	if err != nil {
		t.Fatal(err)
	}
	if !r.InUse || !r.Intact() || r.Counts != nil || !strings.Contains(r.Verdict(), "in use") {
		t.Fatalf("check of a store in use: %+v %v", r.Problems, r.Verdict())
	}
}
