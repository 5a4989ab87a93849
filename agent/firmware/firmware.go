// Package firmware loads node-class GPU/driver profiles (firmware-configs/)
// and checks a node's GPUs against its profile. A GPU that does not comply
// is excluded from placement, with the reason.
package firmware

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/callscribe/callscribe/proto"
)

// Profile is one node class.
type Profile struct {
	Class       string `toml:"class"`
	Description string `toml:"description"`
	GPU         struct {
		Model        string   `toml:"model"`
		Count        int      `toml:"count"`
		MinDriver    string   `toml:"min_driver"`
		AllowedVBIOS []string `toml:"allowed_vbios"`
		ECC          *bool    `toml:"ecc"`
		Persistence  *bool    `toml:"persistence"`
		PowerLimitW  int      `toml:"power_limit_w"`
		MIG          *bool    `toml:"mig"`
	} `toml:"gpu"`
}

var classRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)

// Parse reads a profile strictly: unknown keys are errors, reported with
// the file name.
func Parse(name string, data []byte) (*Profile, error) {
	var p Profile
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("%s: unknown keys %v", name, und)
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &p, nil
}

// Load reads a profile file.
func Load(path string) (*Profile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, b)
}

// LoadDir reads every *.toml profile in dir.
func LoadDir(dir string) (map[string]*Profile, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.toml"))
	if err != nil {
		return nil, err
	}
	out := map[string]*Profile{}
	for _, f := range files {
		p, err := Load(f)
		if err != nil {
			return nil, err
		}
		if _, dup := out[p.Class]; dup {
			return nil, fmt.Errorf("%s: class %q defined twice", f, p.Class)
		}
		out[p.Class] = p
	}
	return out, nil
}

// Validate checks the profile's own consistency.
func (p *Profile) Validate() error {
	var errs []error
	if !classRE.MatchString(p.Class) {
		errs = append(errs, fmt.Errorf("class %q: want lower-case letters, digits and '-'", p.Class))
	}
	g := p.GPU
	if g.Count < 0 || g.Count > 64 {
		errs = append(errs, fmt.Errorf("gpu.count %d out of range", g.Count))
	}
	if g.Count > 0 {
		if g.Model == "" {
			errs = append(errs, errors.New("gpu.model is required when gpu.count > 0"))
		}
		if _, err := parseVersion(g.MinDriver); err != nil {
			errs = append(errs, fmt.Errorf("gpu.min_driver: %w", err))
		}
		if g.PowerLimitW < 0 || g.PowerLimitW > 2000 {
			errs = append(errs, fmt.Errorf("gpu.power_limit_w %d out of range", g.PowerLimitW))
		}
	} else if g.Model != "" || g.MinDriver != "" || len(g.AllowedVBIOS) > 0 {
		errs = append(errs, errors.New("a class without GPUs sets no GPU requirements"))
	}
	return errors.Join(errs...)
}

// Check returns, per GPU UUID, why it breaks the profile ("" when it
// complies). Readings a GPU could not give are not held against it, except
// the VBIOS when the profile lists allowed versions.
func (p *Profile) Check(driver string, gpus []proto.GPU) map[string]string {
	out := map[string]string{}
	dv, derr := parseVersion(driver)
	minDrv, _ := parseVersion(p.GPU.MinDriver)
	want := p.GPU
	for _, g := range gpus {
		var why []string
		if want.Count == 0 {
			why = append(why, "profile "+p.Class+" expects no GPU")
		}
		if want.Model != "" && g.Name != want.Model {
			why = append(why, fmt.Sprintf("model %q, profile wants %q", g.Name, want.Model))
		}
		if want.MinDriver != "" && (derr != nil || less(dv, minDrv)) {
			why = append(why, fmt.Sprintf("driver %q below %s", driver, want.MinDriver))
		}
		if len(want.AllowedVBIOS) > 0 && !slices.Contains(want.AllowedVBIOS, g.VBIOS) {
			why = append(why, fmt.Sprintf("VBIOS %q not allowed", g.VBIOS))
		}
		if want.ECC != nil && g.ECC != nil && *g.ECC != *want.ECC {
			why = append(why, fmt.Sprintf("ECC %v, profile wants %v", *g.ECC, *want.ECC))
		}
		if want.MIG != nil && g.MIG != nil && *g.MIG != *want.MIG {
			why = append(why, fmt.Sprintf("MIG %v, profile wants %v", *g.MIG, *want.MIG))
		}
		if want.Persistence != nil && g.Persistence != nil && *g.Persistence != *want.Persistence {
			why = append(why, fmt.Sprintf("persistence mode %v, profile wants %v", *g.Persistence, *want.Persistence))
		}
		if want.PowerLimitW > 0 && g.PowerLimitW != nil && int(*g.PowerLimitW+0.5) != want.PowerLimitW {
			why = append(why, fmt.Sprintf("power limit %.0f W, profile wants %d W", *g.PowerLimitW, want.PowerLimitW))
		}
		out[g.UUID] = strings.Join(why, "; ")
	}
	return out
}

func parseVersion(s string) ([]int, error) {
	if s == "" {
		return nil, errors.New("empty version")
	}
	var v []int
	for _, f := range strings.Split(s, ".") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("version %q is not dotted numbers", s)
		}
		v = append(v, n)
	}
	return v, nil
}

func less(a, b []int) bool {
	for i := 0; i < max(len(a), len(b)); i++ {
		var x, y int
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			return x < y
		}
	}
	return false
}
