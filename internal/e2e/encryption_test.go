package e2e

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/keys"
)

// storeOptions opens the store of data directory dir with the key the
// appliance made for it.
func storeOptions(t *testing.T, dir string) store.Options {
	t.Helper()
	k, err := keys.Read(keys.DefaultFile(dir))
	if err != nil {
		t.Fatalf("the store's key: %v", err)
	}
	return store.Options{Key: k, KeyFile: keys.DefaultFile(dir)}
}

// A stolen copy of the data directory shows no audio and no transcript:
// after a real call, no file outside keys/ holds a phrase of its
// transcript or a 64-byte run of the PCM sent, though the store holds both.
func TestNoAudioOrTranscriptAtRest(t *testing.T) {
	a := newAppliance(t)
	dev := a.dev(t, 1)
	clip := referenceClips(t)[0]
	s := streamCall(t, a, "at-rest", clip, 8)
	s.wait(t)
	phrase := ""
	for _, f := range s.texts()[0] {
		if len(f) > len(phrase) {
			phrase = f
		}
	}
	if len(phrase) < 10 {
		t.Fatalf("no transcript to look for: %q", s.texts())
	}
	frame := s.frames[0][len(s.frames[0])/2]
	run := frame[len(frame)/2 : len(frame)/2+64]
	if bytes.Count(run, run[:1]) == len(run) {
		t.Fatal("the PCM run is silence: pick another")
	}
	dev.kill(syscall.SIGTERM)

	for p, mode := range map[string]os.FileMode{keys.DefaultFile(a.dir): 0o600, filepath.Dir(keys.DefaultFile(a.dir)): 0o700 | os.ModeDir} {
		if fi, err := os.Stat(p); err != nil || fi.Mode() != mode {
			t.Fatalf("%s: %v %v", p, fi.Mode(), err)
		}
	}
	files := 0
	err := filepath.WalkDir(a.dir, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && p == filepath.Dir(keys.DefaultFile(a.dir)):
			return filepath.SkipDir
		case d.IsDir() || !d.Type().IsRegular():
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files++
		if bytes.Contains(b, []byte(phrase)) {
			t.Errorf("%s holds the transcript phrase %q", p, phrase)
		}
		if bytes.Contains(b, run) {
			t.Errorf("%s holds a run of the PCM sent", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The store does hold both (so the search above can fail).
	st, err := store.Open(filepath.Join(a.dir, "store"), storeOptions(t, a.dir))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if !st.Encrypted() {
		t.Fatal("the appliance's store is not encrypted")
	}
	found := false
	err = st.Frames("at-rest", 0, 0, 0, func(f store.Frame) error {
		found = found || bytes.Contains(f.Payload, run)
		return nil
	})
	if err != nil || !found {
		t.Fatalf("the store does not hold the PCM run: %v", err)
	}
	fins, err := st.Finals("at-rest", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, f := range fins {
		texts = append(texts, f.Text)
	}
	if !strings.Contains(strings.Join(texts, "\n"), phrase) {
		t.Fatalf("the store does not hold the transcript: %q", texts)
	}
	t.Logf("%d files searched; phrase %q", files, phrase)
}
