package models

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

//go:embed sources.toml
var sourcesTOML []byte

// Source is one pinned registry package and the files taken from it.
type Source struct {
	Name    string       `toml:"name"`
	Version string       `toml:"version"`
	License string       `toml:"license"`
	SHA256  string       `toml:"sha256"`
	Files   []SourceFile `toml:"file"`
}

// SourceFile is one file taken from a package.
type SourceFile struct {
	From    string `toml:"from"`    // path inside the tarball
	To      string `toml:"to"`      // path under the model directory
	Convert string `toml:"convert"` // "" (copy) or "llama-tokens"
	SHA256  string `toml:"sha256"`  // of the file written
}

// Tarball is the file name `npm pack` gives the package.
func (s Source) Tarball() string {
	n := strings.ReplaceAll(strings.TrimPrefix(s.Name, "@"), "/", "-")
	return n + "-" + s.Version + ".tgz"
}

// Sources returns the pinned model sources built into the binary.
func Sources() ([]Source, error) {
	var doc struct {
		Package []Source `toml:"package"`
	}
	md, err := toml.NewDecoder(bytes.NewReader(sourcesTOML)).Decode(&doc)
	if err != nil {
		return nil, fmt.Errorf("sources.toml: %w", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("sources.toml: unknown keys %v", und)
	}
	return doc.Package, nil
}

// Fetcher puts a package's tarball (as `npm pack` names it) into dir.
type Fetcher func(ctx context.Context, s Source, dir string) error

// NPMPack fetches with the npm client as this machine has it configured.
func NPMPack(ctx context.Context, s Source, dir string) error {
	cmd := exec.CommandContext(ctx, "npm", "pack", "--silent", "--pack-destination", dir, s.Name+"@"+s.Version)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = io.Discard
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("npm pack %s@%s: %w: %s", s.Name, s.Version, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Install puts every file of the sources under dest, fetching tarballs into
// cache when they are not there (or not the pinned bytes). Files already in
// place with the right hash are left alone. Every tarball and every file
// written is checked by hash; a mismatch is an error naming both hashes.
func Install(ctx context.Context, srcs []Source, dest, cache string, fetch Fetcher, log *slog.Logger) error {
	for _, s := range srcs {
		var todo []SourceFile
		for _, f := range s.Files {
			if got, err := FileSHA256(filepath.Join(dest, f.To)); err == nil && got == f.SHA256 {
				continue
			}
			todo = append(todo, f)
		}
		if len(todo) == 0 {
			continue
		}
		tgz := filepath.Join(cache, s.Tarball())
		if got, err := FileSHA256(tgz); err != nil || got != s.SHA256 {
			if err := os.MkdirAll(cache, 0o755); err != nil {
				return err
			}
			_ = os.Remove(tgz)
			log.Info("fetching model package", "package", s.Name, "version", s.Version)
			if err := fetch(ctx, s, cache); err != nil {
				return err
			}
			got, err := FileSHA256(tgz)
			if err != nil {
				return fmt.Errorf("%s@%s: %w", s.Name, s.Version, err)
			}
			if got != s.SHA256 {
				return fmt.Errorf("%s@%s: tarball %s has sha256 %s, want %s: refusing it", s.Name, s.Version, tgz, got, s.SHA256)
			}
		}
		if err := extract(tgz, s, todo, dest); err != nil {
			return err
		}
		for _, f := range todo {
			log.Info("model file installed", "file", filepath.Join(dest, f.To), "from", s.Name+"@"+s.Version)
		}
	}
	return nil
}

func extract(tgz string, s Source, files []SourceFile, dest string) error {
	want := map[string][]SourceFile{}
	for _, f := range files {
		want[f.From] = append(want[f.From], f)
	}
	fh, err := os.Open(tgz)
	if err != nil {
		return err
	}
	defer fh.Close()
	zr, err := gzip.NewReader(fh)
	if err != nil {
		return fmt.Errorf("%s: %w", tgz, err)
	}
	tr := tar.NewReader(zr)
	for len(want) > 0 {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", tgz, err)
		}
		fs, ok := want[h.Name]
		if !ok {
			continue
		}
		delete(want, h.Name)
		data, err := io.ReadAll(io.LimitReader(tr, 1<<30))
		if err != nil {
			return fmt.Errorf("%s: %s: %w", tgz, h.Name, err)
		}
		for _, f := range fs {
			out := data
			switch f.Convert {
			case "":
			case "llama-tokens":
				if out, err = LlamaTokens(data); err != nil {
					return fmt.Errorf("%s: %s: %w", tgz, h.Name, err)
				}
			default:
				return fmt.Errorf("%s: unknown conversion %q", f.To, f.Convert)
			}
			if err := writeChecked(filepath.Join(dest, f.To), out, f.SHA256); err != nil {
				return err
			}
		}
	}
	for name := range want {
		return fmt.Errorf("%s@%s: %s is not in %s", s.Name, s.Version, name, tgz)
	}
	return nil
}

// writeChecked writes data to path through a temporary file, only if its
// hash is want.
func writeChecked(path string, data []byte, want string) error {
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != want {
		return fmt.Errorf("%s: would have sha256 %s, want %s: refusing it", path, got, want)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".install-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

var (
	llamaVocabRE = regexp.MustCompile(`const llama_vocab_base64 = "([A-Za-z0-9+/=]+)"`)
	bytePieceRE  = regexp.MustCompile(`^<0x([0-9A-F]{2})>$`)
)

// MoonshineVocab is the size of Moonshine's output layer: the 32,000 Llama
// pieces and 768 unused ids, written as <extra_ID>.
const MoonshineVocab = 32768

// LlamaTokens turns llama-tokenizer-js's vocabulary into sherpa-onnx's
// tokens.txt: one line per id, "base64(piece bytes) id", where a piece's
// U+2581 becomes a space and a <0xNN> piece is that one byte.
func LlamaTokens(js []byte) ([]byte, error) {
	m := llamaVocabRE.FindSubmatch(js)
	if m == nil {
		return nil, errors.New("llama-tokens: no llama_vocab_base64 in the file")
	}
	raw, err := base64.StdEncoding.DecodeString(string(m[1]))
	if err != nil {
		return nil, fmt.Errorf("llama-tokens: %w", err)
	}
	pieces := strings.Split(string(raw), "\n")
	if len(pieces) > MoonshineVocab {
		return nil, fmt.Errorf("llama-tokens: %d pieces, more than %d", len(pieces), MoonshineVocab)
	}
	var b bytes.Buffer
	for id := range MoonshineVocab {
		var p []byte
		switch {
		case id >= len(pieces):
			p = []byte("<extra_" + strconv.Itoa(id) + ">")
		case bytePieceRE.MatchString(pieces[id]):
			v, _ := strconv.ParseUint(pieces[id][3:5], 16, 8)
			p = []byte{byte(v)}
		default:
			p = []byte(strings.ReplaceAll(pieces[id], "\u2581", " "))
		}
		b.WriteString(base64.StdEncoding.EncodeToString(p))
		b.WriteByte(' ')
		b.WriteString(strconv.Itoa(id))
		b.WriteByte('\n')
	}
	return b.Bytes(), nil
}
