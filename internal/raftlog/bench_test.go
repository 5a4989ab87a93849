package raftlog

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// benchKeys are the benchmarks' runs: no key, and AES-256-GCM.
var benchKeys = []struct {
	name string
	key  []byte
}{{"plain", nil}, {"aes-gcm", testKey}}

// BenchmarkStoreLogs stores batches of 16 entries of 3,200 bytes (raft's
// leader handing over a console's audio frames), each one write and one
// fdatasync.
func BenchmarkStoreLogs(b *testing.B) {
	const n, size = 16, 3200
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	for _, c := range benchKeys {
		b.Run(c.name, func(b *testing.B) {
			l, err := Open(b.TempDir(), Options{Key: c.key, Logger: quiet()})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			batch := make([]*raft.Log, n)
			for i := range batch {
				batch[i] = &raft.Log{Term: 1, Type: raft.LogCommand, Data: data, AppendedAt: time.Now()}
			}
			next := uint64(1)
			b.SetBytes(n * size)
			for b.Loop() {
				for i, e := range batch {
					e.Index = next + uint64(i)
				}
				if err := l.StoreLogs(batch); err != nil {
					b.Fatal(err)
				}
				next += n
			}
		})
	}
}

// BenchmarkGetLog reads 3,200-byte entries back at random.
func BenchmarkGetLog(b *testing.B) {
	const entries, size = 4096, 3200
	for _, c := range benchKeys {
		b.Run(c.name, func(b *testing.B) {
			l, err := Open(b.TempDir(), Options{Key: c.key, Logger: quiet()})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			var batch []*raft.Log
			for i := uint64(1); i <= entries; i++ {
				batch = append(batch, &raft.Log{Index: i, Term: 1, Data: make([]byte, size)})
			}
			if err := l.StoreLogs(batch); err != nil {
				b.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			var e raft.Log
			b.SetBytes(size)
			for b.Loop() {
				if err := l.GetLog(1+rng.Uint64N(entries), &e); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkEncode is StoreLogs' work without the write and the sync:
// laying out, checksumming and (with a key) sealing a batch of 16 entries
// of 3,200 bytes.
func BenchmarkEncode(b *testing.B) {
	const n, size = 16, 3200
	for _, c := range benchKeys {
		b.Run(c.name, func(b *testing.B) {
			cr, err := newCrypt(c.key)
			if err != nil {
				b.Fatal(err)
			}
			l := &Log{crypt: cr}
			batch := make([]*raft.Log, n)
			for i := range batch {
				batch[i] = &raft.Log{Index: uint64(i + 1), Term: 1, Data: make([]byte, size)}
			}
			b.SetBytes(n * size)
			for b.Loop() {
				if _, _, err := l.encode(batch); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
