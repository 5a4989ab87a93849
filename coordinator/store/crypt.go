package store

// Encryption at rest with Badger's own encryption. The master key (Options.
// Key, 32 bytes: AES-256) encrypts only Badger's KEYREGISTRY, which holds
// the data keys; the data keys encrypt the tables, the value logs and the
// WALs, and Badger makes a new one every KeyRotation. Rotating the master
// key rewrites the registry only (RotateKey).
//
// What stays plain: each log entry's header (lengths, meta), each log
// file's key id and IV, table footers, the MANIFEST (table ids and levels),
// DISCARD, and the state record beside the store (StatePath: sizes and
// counts). Keys and values, audio and transcripts among them, are
// encrypted.

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// KeySize is the master key's size: AES-256.
const KeySize = 32

// DefaultKeyRotation is how long Badger encrypts new data with one data
// key before it makes the next. A data key only ever encrypts what was
// written in its week; rotating them costs one registry entry each.
const DefaultKeyRotation = 7 * 24 * time.Hour

// indexCacheSize is Badger's cache of decrypted table indexes (block
// offsets and bloom filters), which Badger requires with encryption: an
// encrypted table's index is decrypted into it rather than kept with the
// table. A lookup (a call record, a resume's frames) consults one table per
// level, mostly the newest; audio lives in the value log, so tables hold
// only keys and value pointers and their indexes are small. 32 MiB keeps
// the indexes of the tables in use without growing with the store (a
// store of months of audio has more); a miss costs one decryption of one
// table's index, not a read of the audio.
const indexCacheSize = 32 << 20

// blockCacheSize is Badger's cache of decrypted table blocks, which Badger
// also requires with encryption. Blocks hold keys and value pointers (the
// audio is in the value log, decrypted per read, never cached); the reads
// that go through tables are a call's frames in order, so a small cache
// serves them.
const blockCacheSize = 16 << 20

// ErrWrongKey is wrapped by the error of an Open or Check given a key the
// store is not encrypted with, or no key for an encrypted store.
var ErrWrongKey = errors.New("store: wrong encryption key")

// KeyError is the error of an encrypted store opened with another key or
// none. Nothing was changed.
type KeyError struct {
	Dir     string
	KeyFile string // where the key came from, for the message ("" unknown)
	Missing bool   // no key was given
}

func (e *KeyError) Error() string {
	from := "the key given"
	if e.KeyFile != "" {
		from = "the key in " + e.KeyFile
	}
	if e.Missing {
		if e.KeyFile != "" {
			return fmt.Sprintf("store %s is encrypted, but its key file %s is missing. Nothing was changed. Restore the key file from your backup (without it the store cannot be read); do not remove the store to make it start", e.Dir, e.KeyFile)
		}
		return fmt.Sprintf("store %s is encrypted and no key was given. Nothing was changed. Give its key file (--key)", e.Dir)
	}
	return fmt.Sprintf("store %s is encrypted with another key than %s. Nothing was changed. Use the key file the store was written with (restore it from your backup; if a `callscribe store rotate-key` was interrupted, run it again with the same files)", e.Dir, from)
}

// Is makes errors.Is(err, ErrWrongKey) true.
func (e *KeyError) Is(target error) bool { return target == ErrWrongKey }

// Encryption is whether a store directory is encrypted.
type Encryption int

// Encryption states.
const (
	// NoStore: no store here yet.
	NoStore Encryption = iota
	// Plain: a store written without encryption.
	Plain
	// Encrypted: a store encrypted with a master key.
	Encrypted
)

func (e Encryption) String() string {
	return [...]string{"no store", "not encrypted", "encrypted"}[e]
}

// EncryptionOf says whether the store in dir is encrypted, from Badger's
// key registry, without changing anything. A directory without a store and
// without a state record is NoStore; one with only a state record (its
// store gone) is Plain, so that no new key is made for it.
func EncryptionOf(dir string) (Encryption, error) {
	dir = filepath.Clean(dir)
	f, err := os.Open(filepath.Join(dir, badger.KeyRegistryFileName))
	if errors.Is(err, os.ErrNotExist) {
		for _, p := range []string{filepath.Join(dir, badger.ManifestFilename), StatePath(dir)} {
			if _, err := os.Stat(p); err == nil {
				return Plain, nil
			}
		}
		return NoStore, nil
	}
	if err != nil {
		return NoStore, fmt.Errorf("store %s: %w", dir, err)
	}
	defer f.Close()
	// KEYREGISTRY: IV (16) | sanity text, encrypted with the master key
	// when there is one.
	b := make([]byte, aes.BlockSize+len(sanityText))
	if _, err := io.ReadFull(f, b); err != nil {
		return NoStore, fmt.Errorf("store %s: %s: %w", dir, badger.KeyRegistryFileName, err)
	}
	if bytes.Equal(b[aes.BlockSize:], sanityText) {
		return Plain, nil
	}
	return Encrypted, nil
}

// sanityText is what Badger writes after the key registry's IV.
var sanityText = []byte("Hello Badger")

// openRegistry reads the key registry read-only. It returns nil for a
// store without encryption, and a *KeyError for an encrypted store when key
// is not its key.
func openRegistry(dir string, key []byte, keyFile string) (*badger.KeyRegistry, error) {
	enc, err := EncryptionOf(dir)
	if err != nil || enc != Encrypted {
		return nil, err
	}
	if len(key) == 0 {
		return nil, &KeyError{Dir: dir, KeyFile: keyFile, Missing: true}
	}
	kr, err := badger.OpenKeyRegistry(badger.KeyRegistryOptions{Dir: dir, ReadOnly: true, EncryptionKey: key})
	if errors.Is(err, badger.ErrEncryptionKeyMismatch) {
		return nil, &KeyError{Dir: dir, KeyFile: keyFile}
	}
	if err != nil {
		return nil, fmt.Errorf("store %s: key registry: %w", dir, err)
	}
	return kr, nil
}

// logKeys decrypts the start of log entries' keys, for the damage scan to
// tell entries of this store from random bytes.
type logKeys struct {
	reg *badger.KeyRegistry // nil: none (a plain store, or no key given)
}

// cipher returns the data key's cipher for a log file's key id: nil for
// plain files (id 0), and ok false when the file is encrypted but its key
// is not at hand.
func (k logKeys) cipher(id uint64) (c cipher.Block, ok bool) {
	if id == 0 {
		return nil, true
	}
	if k.reg == nil {
		return nil, false
	}
	dk, err := k.reg.DataKey(id)
	if err != nil || dk == nil {
		return nil, false
	}
	c, err = aes.NewCipher(dk.Data)
	return c, err == nil
}

// decryptAt decrypts b, the first bytes of the key+value of the entry at
// off in a log file with base IV iv (Badger's logFile.generateIV: the IV
// then the entry's offset, big endian, as AES-CTR's counter block).
func decryptAt(c cipher.Block, iv []byte, off int64, b []byte) []byte {
	ctr := make([]byte, aes.BlockSize)
	copy(ctr, iv)
	binary.BigEndian.PutUint32(ctr[12:], uint32(off))
	out := make([]byte, len(b))
	cipher.NewCTR(c, ctr).XORKeyStream(out, b)
	return out
}

// Encrypted says whether the store is encrypted at rest.
func (s *Store) Encrypted() bool { return s.encrypted }

// RotateKey re-encrypts the data keys of the encrypted store in dir under
// newKey, offline: it fails with an error naming the store as in use while
// a process has it open. Only Badger's key registry is rewritten (to a
// temporary file, synced, then renamed over the old one), so the store is
// under the old key or the new one, never neither. A store already under
// newKey (a rotation interrupted after the rewrite) is left as it is and
// nil returned, so running the same rotation again completes it.
func RotateKey(dir string, oldKey, newKey []byte, keyFile string) error {
	dir = ResolveDir(dir)
	if len(newKey) != KeySize {
		return fmt.Errorf("store: rotate key: the new key is %d bytes, want %d", len(newKey), KeySize)
	}
	unlock, err := lockDir(dir, false)
	if err != nil {
		if errors.Is(err, errInUse) {
			return fmt.Errorf("store: rotate key: %w: stop the coordinator first", err)
		}
		return fmt.Errorf("store: rotate key: %w", err)
	}
	defer unlock()
	enc, err := EncryptionOf(dir)
	switch {
	case err != nil:
		return fmt.Errorf("store: rotate key: %w", err)
	case enc == NoStore:
		return fmt.Errorf("store: rotate key: no store in %s", dir)
	case enc == Plain:
		return fmt.Errorf("store: rotate key: store %s is not encrypted; there is no key to rotate", dir)
	}
	reg, err := openRegistry(dir, oldKey, keyFile)
	var ke *KeyError
	if errors.As(err, &ke) {
		if _, nerr := openRegistry(dir, newKey, ""); nerr == nil {
			return nil // rotated already
		}
	}
	if err != nil {
		return err
	}
	opt := badger.KeyRegistryOptions{Dir: dir, EncryptionKey: newKey}
	if err := badger.WriteKeyRegistry(reg, opt); err != nil {
		return fmt.Errorf("store: rotate key: %w", err)
	}
	if _, err := openRegistry(dir, newKey, ""); err != nil {
		return fmt.Errorf("store: rotate key: the rewritten key registry does not open with the new key: %w", err)
	}
	return nil
}

// Encrypt rewrites the plain store in dir (a store written before
// encryption) into a new store encrypted with key, offline (it fails while
// a process has the store open), and returns where the plain store was
// moved. The store is first opened and closed as the coordinator would
// (damage is refused, a crash replayed), then streamed into DIR.encrypting
// with every key's newest version, checked (what it holds, counted, must
// equal the original), and only then swapped in:
//
//	DIR → DIR.plain-TIME, DIR.encrypting → DIR,
//	DIR.encrypting.state.json → DIR.state.json
//
// Interrupted before the swap, DIR is untouched (a new run starts over).
// Interrupted inside it, the coordinator refuses to start (the state
// record does not match), and the swap is finished by hand with the same
// renames. The plain copy is left for the operator to delete securely.
func Encrypt(dir string, key []byte, log *slog.Logger) (plain string, err error) {
	dir = ResolveDir(dir)
	if len(key) != KeySize {
		return "", fmt.Errorf("store: encrypt: the key is %d bytes, want %d", len(key), KeySize)
	}
	if log == nil {
		log = slog.Default()
	}
	switch enc, err := EncryptionOf(dir); {
	case err != nil:
		return "", fmt.Errorf("store: encrypt: %w", err)
	case enc == NoStore:
		return "", fmt.Errorf("store: encrypt: no store in %s", dir)
	case enc == Encrypted:
		return "", fmt.Errorf("store: encrypt: store %s is encrypted already", dir)
	}
	quiet := slog.New(slog.DiscardHandler)
	s, err := Open(dir, Options{Logger: log})
	if err != nil {
		return "", err
	}
	if err := s.Close(); err != nil {
		return "", err
	}
	tmp := dir + ".encrypting"
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("store: encrypt: %w", err)
	}
	if err := os.Remove(StatePath(tmp)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("store: encrypt: %w", err)
	}
	if err := copyInto(dir, tmp, key); err != nil {
		return "", fmt.Errorf("store: encrypt %s: %w", dir, err)
	}
	// Open it as the coordinator will (this writes its state record), then
	// compare what both hold.
	ns, err := Open(tmp, Options{Key: key, KeyFile: "", Logger: quiet})
	if err != nil {
		return "", fmt.Errorf("store: encrypt: the new store: %w", err)
	}
	if err := ns.Close(); err != nil {
		return "", fmt.Errorf("store: encrypt: the new store: %w", err)
	}
	was, err := countReadOnly(dir, nil, nil)
	if err != nil {
		return "", fmt.Errorf("store: encrypt: count %s: %w", dir, err)
	}
	now, err := countReadOnly(tmp, nil, key)
	if err != nil {
		return "", fmt.Errorf("store: encrypt: count %s: %w", tmp, err)
	}
	if *was != *now {
		return "", fmt.Errorf("store: encrypt: the new store in %s holds %+v, the old one %+v; nothing was swapped", tmp, *now, *was)
	}
	plain = fmt.Sprintf("%s.plain-%s", dir, time.Now().UTC().Format("20060102T150405Z"))
	for _, mv := range [][2]string{{dir, plain}, {tmp, dir}, {StatePath(tmp), StatePath(dir)}} {
		if err := os.Rename(mv[0], mv[1]); err != nil {
			return "", fmt.Errorf("store: encrypt: swap: %w (finish by hand: mv %s %s; mv %s %s; mv %s %s)", err, dir, plain, tmp, dir, StatePath(tmp), StatePath(dir))
		}
	}
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return "", fmt.Errorf("store: encrypt: %w", err)
	}
	log.Info("store: encrypted", "dir", dir, "calls", now.Calls, "frames", now.Frames, "plain_copy", plain)
	return plain, nil
}

// copyInto streams the newest version of every key of the closed store in
// src into a new Badger in dst, encrypted with key (Badger's backup
// format, versions kept).
func copyInto(src, dst string, key []byte) error {
	from, err := badger.Open(badgerOptions(src, nil, nil).WithReadOnly(true).WithLogger(nil))
	if err != nil {
		return err
	}
	defer from.Close()
	to, err := badger.Open(badgerOptions(dst, nil, key).WithLogger(nil))
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := from.Backup(pw, 0)
		pw.CloseWithError(err)
	}()
	err = to.Load(pr, 64)
	pr.CloseWithError(errors.New("load stopped"))
	if cerr := to.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
