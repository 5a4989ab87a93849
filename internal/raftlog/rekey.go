package raftlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"
)

// Rekey rewrites the log in dir, encrypted with oldKey (nil: plain), so
// that it is encrypted with newKey instead (the store's key rotation: the
// log shares the store's key). The log must not be open. A new log is
// written beside it with every entry and the stable store, then swapped in
// with renames; an interrupted Rekey leaves the old log in place (and a
// dir.rekey directory to delete). A directory without a log is left alone.
func Rekey(dir string, oldKey, newKey []byte) error {
	if _, err := os.Stat(filepath.Join(dir, metaFile)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	old, err := Open(dir, Options{Key: oldKey})
	if err != nil {
		return err
	}
	defer old.Close()
	tmp := filepath.Clean(dir) + ".rekey"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("raftlog: rekey: %w", err)
	}
	nl, err := Open(tmp, Options{Key: newKey})
	if err != nil {
		return fmt.Errorf("raftlog: rekey: %w", err)
	}
	fail := func(err error) error {
		nl.Close()
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("raftlog: rekey %s: %w", dir, err)
	}
	for _, k := range []string{"CurrentTerm", "LastVoteTerm", "LastVoteCand"} {
		v, err := old.Get([]byte(k))
		if errors.Is(err, ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return fail(err)
		}
		if err := nl.Set([]byte(k), v); err != nil {
			return fail(err)
		}
	}
	first, err := old.FirstIndex()
	if err != nil {
		return fail(err)
	}
	last, err := old.LastIndex()
	if err != nil {
		return fail(err)
	}
	if last > 0 {
		batch := make([]*raft.Log, 0, 256)
		for i := first; i <= last; i++ {
			e := new(raft.Log)
			if err := old.GetLog(i, e); err != nil {
				return fail(err)
			}
			batch = append(batch, e)
			if len(batch) == cap(batch) || i == last {
				if err := nl.StoreLogs(batch); err != nil {
					return fail(err)
				}
				batch = batch[:0]
			}
		}
	}
	if err := nl.Close(); err != nil {
		return fail(err)
	}
	if err := old.Close(); err != nil {
		return fail(err)
	}
	prev := filepath.Clean(dir) + ".old"
	if err := os.RemoveAll(prev); err != nil {
		return fail(err)
	}
	if err := os.Rename(dir, prev); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		_ = os.Rename(prev, dir)
		return fail(err)
	}
	if err := syncDir(filepath.Dir(filepath.Clean(dir))); err != nil {
		return fmt.Errorf("raftlog: rekey %s: %w", dir, err)
	}
	return os.RemoveAll(prev)
}
