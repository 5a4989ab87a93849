package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/keys"
	"github.com/callscribe/callscribe/internal/raftlog"
)

// cmdStore checks the coordinator's store.
func cmdStore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := func() error {
		fmt.Fprintln(stderr, "usage: callscribe store check [--json] [--key FILE] DIR   (DIR: the store directory, or the data directory holding store/)")
		fmt.Fprintln(stderr, "       callscribe store rotate-key --data DIR --new-key FILE [--key FILE]")
		fmt.Fprintln(stderr, "       callscribe store encrypt --data DIR [--key FILE]")
		return errUsage
	}
	if len(args) < 1 {
		return usage()
	}
	switch args[0] {
	case "check":
		fs := flag.NewFlagSet("store check", flag.ContinueOnError)
		fs.SetOutput(stderr)
		asJSON := fs.Bool("json", false, "print the report as JSON")
		keyFile := fs.String("key", "", "the store's encryption key (default: DIR/keys/store.key when present; without it an encrypted store is checked as far as its plain parts allow)")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 1 {
			return usage()
		}
		key, kf, err := checkKey(fs.Arg(0), *keyFile)
		if err != nil {
			return err
		}
		r, err := store.Check(fs.Arg(0), key, kf)
		if err != nil {
			return err
		}
		if *asJSON {
			e := json.NewEncoder(stdout)
			e.SetIndent("", "  ")
			if err := e.Encode(struct {
				*store.Report
				Intact  bool   `json:"intact"`
				Verdict string `json:"verdict"`
			}{r, r.Intact(), r.Verdict()}); err != nil {
				return err
			}
		} else {
			r.WriteText(stdout)
		}
		if !r.Intact() {
			return fmt.Errorf("%s is damaged (%d problem(s)); see the report above", r.Dir, len(r.Problems))
		}
		return nil
	case "rotate-key":
		fs := flag.NewFlagSet("store rotate-key", flag.ContinueOnError)
		fs.SetOutput(stderr)
		data := fs.String("data", "", "the coordinator's data directory (or its store/); the coordinator must be stopped")
		newKey := fs.String("new-key", "", "the new key (32 bytes or 64 hex digits; created if missing)")
		keyFile := fs.String("key", "", "the key file the store is encrypted with now, replaced by the new key (default: DATA/keys/store.key; the packaged service's is /etc/callscribe/store.key)")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 0 || *data == "" || *newKey == "" {
			return usage()
		}
		return rotateKey(*data, *keyFile, *newKey, stdout)
	case "encrypt":
		fs := flag.NewFlagSet("store encrypt", flag.ContinueOnError)
		fs.SetOutput(stderr)
		data := fs.String("data", "", "the coordinator's data directory (or its store/); the coordinator must be stopped")
		keyFile := fs.String("key", "", "the key to encrypt with, created if missing (default: DATA/keys/store.key; the packaged service's is /etc/callscribe/store.key)")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 0 || *data == "" {
			return usage()
		}
		return encryptStore(*data, *keyFile, stdout)
	}
	fmt.Fprintf(stderr, "callscribe store: unknown subcommand %q\n", args[0])
	return usage()
}

// dataDirOf is the data directory of a store argument (the data directory
// or its store/).
func dataDirOf(arg string) string {
	dir := store.ResolveDir(arg)
	if filepath.Clean(arg) == dir {
		return filepath.Dir(dir)
	}
	return filepath.Clean(arg)
}

// checkKey reads the key store check uses: file, else the default key
// file (or systemd credential) when present, else none.
func checkKey(arg, file string) ([]byte, string, error) {
	if file != "" {
		k, err := keys.Read(file)
		return k, file, err
	}
	p, _ := keys.Locate(keys.DefaultFile(dataDirOf(arg)))
	k, err := keys.Read(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, "", nil
	}
	return k, p, err
}

// rotateKey re-encrypts the store's data keys under the key in newFile
// (created if missing), then installs it as keyFile. The order makes an
// interruption safe: until the registry is rewritten the old key works;
// after it, running the same command again finds the store under the new
// key and only installs it.
func rotateKey(data, keyFile, newFile string, stdout io.Writer) error {
	dir := store.ResolveDir(data)
	if keyFile == "" {
		keyFile, _ = keys.Locate(keys.DefaultFile(dataDirOf(data)))
	}
	if a, b := filepath.Clean(keyFile), filepath.Clean(newFile); a == b {
		return fmt.Errorf("--new-key %s is the store's key file; give the new key another path", newFile)
	}
	old, err := keys.Read(keyFile)
	if err != nil {
		return err
	}
	nk, err := keys.Read(newFile)
	if errors.Is(err, os.ErrNotExist) {
		if nk, err = keys.Create(newFile); err == nil {
			fmt.Fprintf(stdout, "created a new key in %s\n", newFile)
		}
	}
	if err != nil {
		return err
	}
	// The cluster's log shares the store's key: it is re-encrypted first,
	// and back again if the store's rotation fails.
	rlog := filepath.Join(dataDirOf(data), "raft", "log")
	if err := raftlog.Rekey(rlog, old, nk); err != nil {
		return fmt.Errorf("the cluster log could not be re-encrypted; nothing was changed: %w", err)
	}
	if err := store.RotateKey(dir, old, nk, keyFile); err != nil {
		if rerr := raftlog.Rekey(rlog, nk, old); rerr != nil {
			return fmt.Errorf("%w; and the cluster log, already encrypted with the key in %s, could not be put back: %w", err, newFile, rerr)
		}
		return err
	}
	if err := keys.Install(keyFile, nk, true); err != nil {
		return fmt.Errorf("the store is now encrypted with the key in %s, but installing it as %s failed (run the same command again): %w", newFile, keyFile, err)
	}
	fmt.Fprintf(stdout, "store %s: master key rotated; %s holds the new key. Back it up now: the old key no longer opens the store. You may delete %s.\n", dir, keyFile, newFile)
	return nil
}

// encryptStore rewrites a store written before encryption into an
// encrypted one (store.Encrypt), with the key in keyFile, created if
// missing.
func encryptStore(data, keyFile string, stdout io.Writer) error {
	if keyFile == "" {
		keyFile, _ = keys.Locate(keys.DefaultFile(dataDirOf(data)))
	}
	key, err := keys.Read(keyFile)
	if errors.Is(err, os.ErrNotExist) {
		if key, err = keys.Create(keyFile); err == nil {
			fmt.Fprintf(stdout, "created the store's key in %s: back it up now, apart from the data\n", keyFile)
		}
	}
	if err != nil {
		return err
	}
	plain, err := store.Encrypt(data, key, nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "store %s is encrypted with the key in %s. The plain store was moved to %s: delete it (shred, or discard the disk's blocks) once you have checked the new one; backups made before now are still plain.\n", store.ResolveDir(data), keyFile, plain)
	return nil
}
