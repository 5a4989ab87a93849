package store

import (
	"fmt"
	"os"
	"strings"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/fb"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/pb"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/ristretto/v2"
	"github.com/dgraph-io/ristretto/v2/z"
)

// readManifest replays the MANIFEST read-only with Badger's own code and
// also collects the tables it records as deleted.
// keyIDs is each live table's data key (0: plain).
func readManifest(path string) (live map[uint64]int, keyIDs map[uint64]uint64, deleted map[uint64]bool, validEnd int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, nil, 0, err
	}
	defer f.Close()
	m, end, err := badger.ReplayManifestFile(f, 0, badger.DefaultOptions("").WithLogger(nil))
	if err != nil {
		return nil, nil, nil, 0, err
	}
	live, keyIDs = map[uint64]int{}, map[uint64]uint64{}
	for id, t := range m.Tables {
		live[id] = int(t.Level)
		keyIDs[id] = t.KeyID
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, nil, 0, err
	}
	return live, keyIDs, manifestDeletes(b, end), end, nil
}

// manifestDeletes lists the table ids the change sets record as deleted
// (MANIFEST: magic (8), then len (4) | crc (4) | pb.ManifestChangeSet;
// ManifestChange: Id = 1, Op = 2 with DELETE = 1).
func manifestDeletes(b []byte, end int64) map[uint64]bool {
	del := map[uint64]bool{}
	b = b[:min(int64(len(b)), end)]
	for off := 8; off+8 <= len(b); {
		n := int(uint32(b[off])<<24 | uint32(b[off+1])<<16 | uint32(b[off+2])<<8 | uint32(b[off+3]))
		off += 8
		if n < 0 || off+n > len(b) {
			break
		}
		set := b[off : off+n]
		off += n
		forFields(set, func(field int, v uint64, sub []byte) {
			if field != 1 || sub == nil {
				return
			}
			var id, op uint64
			forFields(sub, func(f int, v uint64, _ []byte) {
				switch f {
				case 1:
					id = v
				case 2:
					op = v
				}
			})
			if op == 1 {
				del[id] = true
			}
		})
	}
	return del
}

// forFields walks a protobuf message's fields (varint and bytes; others
// skipped).
func forFields(b []byte, fn func(field int, v uint64, sub []byte)) {
	for len(b) > 0 {
		key, n := uvarint(b)
		if n <= 0 {
			return
		}
		b = b[n:]
		field, wire := int(key>>3), key&7
		switch wire {
		case 0:
			v, n := uvarint(b)
			if n <= 0 {
				return
			}
			b = b[n:]
			fn(field, v, nil)
		case 1:
			if len(b) < 8 {
				return
			}
			b = b[8:]
		case 2:
			l, n := uvarint(b)
			if n <= 0 || uint64(len(b)-n) < l {
				return
			}
			fn(field, 0, b[n:n+int(l)])
			b = b[n+int(l):]
		case 5:
			if len(b) < 4 {
				return
			}
			b = b[4:]
		default:
			return
		}
	}
}

func uvarint(b []byte) (uint64, int) {
	var x uint64
	for i, c := range b {
		if i == 10 {
			return 0, -1
		}
		x |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return x, i + 1
		}
	}
	return 0, 0
}

// verifyTable opens a table read-only the way Badger does (footer, index
// checksum, first and last key) and, for full, checks every block's
// checksum. dk is the table's data key (nil: plain). Badger's table code
// panics on some damage; the panic is caught.
func verifyTable(path string, full bool, dk *pb.DataKey) (keys uint32, err error) {
	defer func() {
		if p := recover(); p != nil {
			msg := fmt.Sprint(p)
			if i := strings.IndexByte(msg, '\n'); i > 0 {
				msg = msg[:i]
			}
			err = fmt.Errorf("unreadable (%s)", msg)
		}
	}()
	mf, err := z.OpenMmapFile(path, os.O_RDONLY, 0)
	if err != nil {
		return 0, err
	}
	topt := table.Options{ReadOnly: true, ChkMode: options.NoVerification, BlockSize: 4 << 10, BloomFalsePositive: 0.01}
	if dk != nil {
		// An encrypted table's index is decrypted into a cache.
		cache, err := ristretto.NewCache(&ristretto.Config[uint64, *fb.TableIndex]{NumCounters: 100, MaxCost: 64 << 20, BufferItems: 64})
		if err != nil {
			mf.Close(-1)
			return 0, err
		}
		defer cache.Close()
		topt.DataKey, topt.IndexCache = dk, cache
	}
	t, err := table.OpenTable(mf, topt)
	if err != nil {
		mf.Close(-1)
		return 0, err
	}
	defer t.Close(-1)
	if full {
		if err := t.VerifyChecksum(); err != nil {
			return t.KeyCount(), err
		}
	}
	return t.KeyCount(), nil
}
