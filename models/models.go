// Package models loads model manifests: what an ASR model is, which engine
// runs it, which files it needs and what one instance of it costs. The
// manifests shipped with callscribe live in models/manifests and are embedded
// in the binary; operators add their own in a directory.
package models

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

//go:embed manifests/*.toml
var builtin embed.FS

// Manifest describes one model.
type Manifest struct {
	Name        string `toml:"name"`
	Engine      string `toml:"engine"`
	Language    string `toml:"language"`
	SampleRate  int    `toml:"sample_rate"`
	Description string `toml:"description"`
	// Files names the model's files by role. A relative path is relative to
	// the model directory (Dir); the installer puts them there.
	Files struct {
		HMM     string `toml:"hmm"`     // pocketsphinx: acoustic model directory
		LM      string `toml:"lm"`      // pocketsphinx: language model
		Dict    string `toml:"dict"`    // pocketsphinx: pronunciation dictionary
		Encoder string `toml:"encoder"` // moonshine: encoder_model.onnx
		Decoder string `toml:"decoder"` // moonshine: decoder_model_merged.onnx
		Tokens  string `toml:"tokens"`  // moonshine: tokens.txt
	} `toml:"files"`
	// SHA256 is the expected hash of each file by role; a worker checks
	// them before it loads the model.
	SHA256    map[string]string `toml:"sha256"`
	Resources Resources         `toml:"resources"`
	// SelfTest is checked by every worker before it takes calls.
	SelfTest struct {
		// Expect is the exact transcript of the built-in test clip; empty
		// means any non-empty transcript passes.
		Expect string `toml:"expect"`
	} `toml:"self_test"`
	// EngineOptions are passed to the engine as flag/value pairs.
	EngineOptions map[string]string `toml:"engine_options"`
}

// Resources is what one instance of a model needs and serves.
type Resources struct {
	GPUMemoryMB        int `toml:"gpu_memory_mb"`
	CPUThreads         int `toml:"cpu_threads"`
	MemoryMB           int `toml:"memory_mb"`
	StreamsPerInstance int `toml:"streams_per_instance"`
}

// Engines known to this build.
var Engines = map[string]bool{"pocketsphinx": true, "moonshine": true}

// ErrUnknownModel is returned for a model name no manifest declares.
var ErrUnknownModel = errors.New("unknown model")

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// Parse reads one manifest strictly: unknown keys are errors.
func Parse(name string, data []byte) (*Manifest, error) {
	var m Manifest
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&m)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("%s: unknown keys %v", name, und)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &m, nil
}

// Validate checks a manifest's fields.
func (m *Manifest) Validate() error {
	var errs []error
	if !nameRE.MatchString(m.Name) {
		errs = append(errs, fmt.Errorf("name %q: want lower-case letters, digits, '.', '_' or '-'", m.Name))
	}
	if !Engines[m.Engine] {
		errs = append(errs, fmt.Errorf("engine %q is not built in", m.Engine))
	}
	if m.SampleRate != 16000 {
		errs = append(errs, fmt.Errorf("sample_rate %d: engines take 16000", m.SampleRate))
	}
	switch m.Engine {
	case "pocketsphinx":
		if m.Files.HMM == "" || m.Files.Dict == "" {
			errs = append(errs, errors.New("files.hmm and files.dict are required"))
		}
	case "moonshine":
		if m.Files.Encoder == "" || m.Files.Decoder == "" || m.Files.Tokens == "" {
			errs = append(errs, errors.New("files.encoder, files.decoder and files.tokens are required"))
		}
	}
	roles := map[string]bool{}
	for _, f := range m.fileList() {
		roles[f.role] = true
	}
	for role, h := range m.SHA256 {
		if !roles[role] {
			errs = append(errs, fmt.Errorf("sha256.%s: the manifest has no such file", role))
		}
		if !sha256RE.MatchString(h) {
			errs = append(errs, fmt.Errorf("sha256.%s: want 64 lower-case hex digits", role))
		}
	}
	if m.Resources.StreamsPerInstance < 1 {
		errs = append(errs, errors.New("resources.streams_per_instance must be at least 1"))
	}
	if m.Resources.MemoryMB < 0 || m.Resources.GPUMemoryMB < 0 || m.Resources.CPUThreads < 0 {
		errs = append(errs, errors.New("resources must not be negative"))
	}
	return errors.Join(errs...)
}

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

type modelFile struct{ role, path string }

func (m *Manifest) fileList() []modelFile {
	var out []modelFile
	for _, f := range []modelFile{
		{"hmm", m.Files.HMM}, {"lm", m.Files.LM}, {"dict", m.Files.Dict},
		{"encoder", m.Files.Encoder}, {"decoder", m.Files.Decoder}, {"tokens", m.Files.Tokens},
	} {
		if f.path != "" {
			out = append(out, f)
		}
	}
	return out
}

// Path returns where the file of a role is on this machine: a relative
// path in the manifest is taken relative to Dir().
func (m *Manifest) Path(role string) string {
	for _, f := range m.fileList() {
		if f.role == role {
			return Resolve(f.path)
		}
	}
	return ""
}

// ErrModelFile means a model file is missing or is not the file the
// manifest names.
var ErrModelFile = errors.New("model file")

// CheckFiles reports model files missing on this machine and, for those
// with a hash in the manifest, files whose content differs. Each error names
// the file, the expected hash and how to install it.
func (m *Manifest) CheckFiles() error {
	var errs []error
	for _, f := range m.fileList() {
		p := Resolve(f.path)
		want := m.SHA256[f.role]
		if want == "" {
			if _, err := os.Stat(p); err != nil {
				errs = append(errs, fmt.Errorf("model %s: %w: %w", m.Name, ErrModelFile, err))
			}
			continue
		}
		got, err := FileSHA256(p)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("model %s: %w %s (%s, sha256 %s) is missing: %w; install it with `callscribe models install`", m.Name, ErrModelFile, p, f.role, want, err))
		case got != want:
			errs = append(errs, fmt.Errorf("model %s: %w %s (%s) is damaged: sha256 %s, want %s; reinstall it with `callscribe models install`", m.Name, ErrModelFile, p, f.role, got, want))
		}
	}
	return errors.Join(errs...)
}

// Catalog is a set of manifests by name.
type Catalog map[string]*Manifest

// Default is the model used when a call names none.
const Default = "moonshine-base"

// Load returns the built-in manifests plus those in dir (if not empty), where
// a file in dir overrides a built-in of the same name.
func Load(dir string) (Catalog, error) {
	c := Catalog{}
	ents, _ := builtin.ReadDir("manifests")
	for _, e := range ents {
		b, _ := builtin.ReadFile("manifests/" + e.Name())
		m, err := Parse("builtin/"+e.Name(), b)
		if err != nil {
			return nil, err
		}
		c[m.Name] = m
	}
	if dir == "" {
		return c, nil
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.toml"))
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		m, err := Parse(f, b)
		if err != nil {
			return nil, err
		}
		c[m.Name] = m
	}
	return c, nil
}

// Get returns a model by name ("" means Default).
func (c Catalog) Get(name string) (*Manifest, error) {
	if name == "" {
		name = Default
	}
	m, ok := c[name]
	if !ok {
		return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownModel, name, strings.Join(c.Names(), ", "))
	}
	return m, nil
}

// Names lists the catalog's model names, sorted.
func (c Catalog) Names() []string {
	n := make([]string, 0, len(c))
	for k := range c {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}
