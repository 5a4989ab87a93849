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
	Files       struct {
		HMM  string `toml:"hmm"`
		LM   string `toml:"lm"`
		Dict string `toml:"dict"`
	} `toml:"files"`
	Resources Resources `toml:"resources"`
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
var Engines = map[string]bool{"pocketsphinx": true}

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
	if m.Files.HMM == "" || m.Files.Dict == "" {
		errs = append(errs, errors.New("files.hmm and files.dict are required"))
	}
	if m.Resources.StreamsPerInstance < 1 {
		errs = append(errs, errors.New("resources.streams_per_instance must be at least 1"))
	}
	if m.Resources.MemoryMB < 0 || m.Resources.GPUMemoryMB < 0 || m.Resources.CPUThreads < 0 {
		errs = append(errs, errors.New("resources must not be negative"))
	}
	return errors.Join(errs...)
}

// CheckFiles reports model files missing on this machine.
func (m *Manifest) CheckFiles() error {
	var errs []error
	for _, p := range []string{m.Files.HMM, m.Files.LM, m.Files.Dict} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			errs = append(errs, fmt.Errorf("model %s: %w", m.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Catalog is a set of manifests by name.
type Catalog map[string]*Manifest

// Default is the model used when a call names none.
const Default = "en-us"

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
