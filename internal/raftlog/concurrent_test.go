package raftlog

import (
	"errors"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/hashicorp/raft"
)

// Readers run GetLog, FirstIndex and LastIndex while a writer appends
// (rolling segments) and compacts: every read is whole and correct (run
// with -race).
func TestConcurrentReads(t *testing.T) {
	keys(t, func(t *testing.T, key []byte) {
		l := openLog(t, t.TempDir(), key, 16<<10)
		store(t, l, 1, 16, 1, 16)
		done := make(chan struct{})
		var wg sync.WaitGroup
		for r := range 4 {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(r), 1))
				for n := 0; ; n++ {
					if n >= 500 {
						select {
						case <-done:
							return
						default:
						}
					}
					first, err1 := l.FirstIndex()
					last, err2 := l.LastIndex()
					if err1 != nil || err2 != nil || first == 0 || last < first {
						t.Errorf("FirstIndex %d, %v; LastIndex %d, %v", first, err1, last, err2)
						return
					}
					i := first + rng.Uint64N(last-first+1)
					var e raft.Log
					err := l.GetLog(i, &e)
					if errors.Is(err, raft.ErrLogNotFound) {
						if f, _ := l.FirstIndex(); f > i {
							continue // compacted meanwhile
						}
					}
					if err != nil {
						t.Errorf("GetLog(%d): %v", i, err)
						return
					}
					if !sameLog(&e, entry(i, 1)) {
						t.Errorf("GetLog(%d) = %+v", i, e)
						return
					}
				}
			})
		}
		for i := uint64(17); i <= 3000; i += 16 {
			if err := l.StoreLogs(batch(i, i+15, 1)); err != nil {
				t.Error(err)
				break
			}
			if i%512 == 1 {
				first, _ := l.FirstIndex()
				if err := l.DeleteRange(first, i-256); err != nil {
					t.Error(err)
					break
				}
			}
		}
		close(done)
		wg.Wait()
	})
}
