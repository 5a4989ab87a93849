package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/keys"
)

// storeKey returns the store's encryption key and where it came from: the
// systemd credential, else file (default DATA/keys/store.key). A missing
// key is created only for a store that does not exist yet; a store written
// without encryption gets none (it opens as it is, with a warning); an
// encrypted store without its key is an error, and never a new key or a
// new empty store.
func storeKey(data, file string, log *slog.Logger) ([]byte, string, error) {
	if file == "" {
		file = keys.DefaultFile(data)
	}
	path, _ := keys.Locate(file)
	key, err := keys.Read(path)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return key, path, err
	}
	dir := filepath.Join(data, "store")
	enc, err := store.EncryptionOf(dir)
	if err != nil {
		return nil, path, err
	}
	switch enc {
	case store.Encrypted:
		return nil, path, &store.KeyError{Dir: dir, KeyFile: path, Missing: true}
	case store.Plain:
		return nil, path, nil
	}
	if key, err = keys.Create(path); err != nil {
		return nil, path, fmt.Errorf("create the store's encryption key: %w", err)
	}
	log.Warn("created the store's encryption key: back it up now, apart from the data (without it the store cannot be read)", "path", path)
	return key, path, nil
}
