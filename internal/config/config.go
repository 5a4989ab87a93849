// Package config loads callscribe's configuration: a TOML file plus a
// drop-in directory (FILE.d/*.toml, applied in name order), then
// CALLSCRIBE_* environment variables, then command-line flags, each
// overriding the one before. Parsing is strict: an unknown key is an error
// naming its file and line. Flags and environment names are derived from
// the TOML keys, so the three never drift apart.
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Duration is a time.Duration written as "1s", "2m" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Source records where the effective value of each key came from.
type Source map[string]string

// Load applies path (if it exists or required) and its drop-ins onto cfg,
// a pointer to a struct whose fields carry `toml` tags and hold defaults.
func Load(path string, required bool, cfg any, src Source) error {
	files := []string{}
	if path != "" {
		if _, err := os.Stat(path); err == nil {
			files = append(files, path)
		} else if required {
			return fmt.Errorf("config: %w", err)
		}
		drop, _ := filepath.Glob(path + ".d/*.toml")
		sort.Strings(drop)
		files = append(files, drop...)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
		if err := decode(f, b, cfg, src); err != nil {
			return err
		}
	}
	return nil
}

func decode(name string, b []byte, cfg any, src Source) error {
	md, err := toml.NewDecoder(bytes.NewReader(b)).Decode(cfg)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return fmt.Errorf("%s:%d: %s", name, pe.Position.Line, pe.Message)
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		var msgs []string
		for _, k := range und {
			msgs = append(msgs, fmt.Sprintf("%s:%d: unknown key %q", name, lineOf(b, k[len(k)-1]), k.String()))
		}
		return errors.New(strings.Join(msgs, "\n"))
	}
	for _, k := range md.Keys() {
		src[k.String()] = name
	}
	return nil
}

func lineOf(b []byte, key string) int {
	re := regexp.MustCompile(`^\s*"?` + regexp.QuoteMeta(key) + `"?\s*=`)
	for i, l := range strings.Split(string(b), "\n") {
		if re.MatchString(l) {
			return i + 1
		}
	}
	return 0
}

// field is one configurable value.
type field struct {
	key  string // TOML key
	v    reflect.Value
	help string
}

func fields(cfg any) []field {
	rv := reflect.ValueOf(cfg).Elem()
	rt := rv.Type()
	var out []field
	for i := range rt.NumField() {
		f := rt.Field(i)
		key := strings.Split(f.Tag.Get("toml"), ",")[0]
		if key == "" || key == "-" {
			continue
		}
		out = append(out, field{key: key, v: rv.Field(i), help: f.Tag.Get("help")})
	}
	return out
}

// FlagName is the command-line flag of a TOML key.
func FlagName(key string) string { return strings.ReplaceAll(key, "_", "-") }

// EnvName is the environment variable of a TOML key.
func EnvName(key string) string { return "CALLSCRIBE_" + strings.ToUpper(key) }

// Bind registers one flag per field of cfg (with its current value as the
// default shown in help). Call Resolve after fs.Parse.
func Bind(fs *flag.FlagSet, cfg any) {
	for _, f := range fields(cfg) {
		fs.Var(&value{v: reflect.New(f.v.Type()).Elem(), def: f.v}, FlagName(f.key), f.help)
	}
}

// Resolve builds the effective configuration: defaults (cfg as passed),
// then the file and drop-ins, then the environment, then the flags the user
// set. It returns where each key came from.
func Resolve(fs *flag.FlagSet, cfg any, path string, required bool) (Source, error) {
	src := Source{}
	for _, f := range fields(cfg) {
		src[f.key] = "default"
	}
	if err := Load(path, required, cfg, src); err != nil {
		return nil, err
	}
	for _, f := range fields(cfg) {
		if s, ok := os.LookupEnv(EnvName(f.key)); ok {
			if err := set(f.v, s); err != nil {
				return nil, fmt.Errorf("%s: %w", EnvName(f.key), err)
			}
			src[f.key] = "env " + EnvName(f.key)
		}
	}
	var ferr error
	fs.Visit(func(fl *flag.Flag) {
		for _, f := range fields(cfg) {
			if FlagName(f.key) == fl.Name {
				f.v.Set(fl.Value.(*value).v)
				src[f.key] = "flag --" + fl.Name
			}
		}
	})
	return src, ferr
}

// Effective lists key = value (source) lines for the start-up log;
// secrets (keys containing "token") are masked.
func Effective(cfg any, src Source) []string {
	var out []string
	for _, f := range fields(cfg) {
		v := fmt.Sprint(f.v.Interface())
		if d, ok := f.v.Interface().(Duration); ok {
			v = d.Duration.String()
		}
		if strings.Contains(f.key, "token") && v != "" && v != "[]" {
			v = "(set)"
		}
		out = append(out, fmt.Sprintf("%s=%s (%s)", f.key, v, src[f.key]))
	}
	return out
}

// value is a flag.Value over a field of any supported type.
type value struct {
	v   reflect.Value
	def reflect.Value
	set bool
}

func (x *value) String() string {
	if x == nil || !x.def.IsValid() {
		return ""
	}
	if d, ok := x.def.Interface().(Duration); ok {
		return d.Duration.String()
	}
	return fmt.Sprint(x.def.Interface())
}

func (x *value) Set(s string) error { x.set = true; return set(x.v, s) }

func (x *value) IsBoolFlag() bool { return x.v.Kind() == reflect.Bool }

func set(v reflect.Value, s string) error {
	switch v.Interface().(type) {
	case Duration:
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		v.Set(reflect.ValueOf(Duration{d}))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", s)
		}
		v.SetInt(int64(n))
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		v.SetBool(b)
	case reflect.Slice:
		parts := strings.Split(s, ",")
		sl := reflect.MakeSlice(v.Type(), 0, len(parts))
		for _, p := range parts {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			e := reflect.New(v.Type().Elem()).Elem()
			if err := set(e, p); err != nil {
				return err
			}
			sl = reflect.Append(sl, e)
		}
		v.Set(sl)
	case reflect.Uint64:
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", s)
		}
		v.SetUint(n)
	default:
		return fmt.Errorf("unsupported type %s", v.Type())
	}
	return nil
}
