// Package wer computes word error rate: the word-level edit distance between
// a hypothesis and a reference, divided by the reference length.
package wer

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
)

// Counts are the edit operations of an alignment.
type Counts struct {
	Ref, Sub, Del, Ins int
}

// Errors is Sub+Del+Ins.
func (c Counts) Errors() int { return c.Sub + c.Del + c.Ins }

// Rate is Errors/Ref (0 for an empty reference with an empty hypothesis).
func (c Counts) Rate() float64 {
	if c.Ref == 0 {
		if c.Ins == 0 {
			return 0
		}
		return 1
	}
	return float64(c.Errors()) / float64(c.Ref)
}

// Add sums counts (for a corpus WER).
func (c Counts) Add(o Counts) Counts {
	return Counts{c.Ref + o.Ref, c.Sub + o.Sub, c.Del + o.Del, c.Ins + o.Ins}
}

// Compare aligns hyp to ref with a minimum-edit-distance alignment.
func Compare(ref, hyp []string) Counts {
	n, m := len(ref), len(hyp)
	type cell struct{ cost, sub, del, ins int }
	prev := make([]cell, m+1)
	cur := make([]cell, m+1)
	for j := 1; j <= m; j++ {
		prev[j] = cell{j, 0, 0, j}
	}
	for i := 1; i <= n; i++ {
		cur[0] = cell{i, 0, i, 0}
		for j := 1; j <= m; j++ {
			if ref[i-1] == hyp[j-1] {
				cur[j] = prev[j-1]
				continue
			}
			s, d, in := prev[j-1], prev[j], cur[j-1]
			best := cell{s.cost + 1, s.sub + 1, s.del, s.ins}
			if d.cost+1 < best.cost {
				best = cell{d.cost + 1, d.sub, d.del + 1, d.ins}
			}
			if in.cost+1 < best.cost {
				best = cell{in.cost + 1, in.sub, in.del, in.ins + 1}
			}
			cur[j] = best
		}
		prev, cur = cur, prev
	}
	c := prev[m]
	return Counts{Ref: n, Sub: c.sub, Del: c.del, Ins: c.ins}
}

// ReadReferences reads pocketsphinx-testdata's referenced clips under dir
// (librivox/transcription and cards/cards.transcription): each clip's WAV
// path and its reference text, without <s> markers.
func ReadReferences(dir string) (map[string]string, error) {
	refs := map[string]string{}
	for _, set := range []struct{ sub, list string }{{"librivox", "transcription"}, {"cards", "cards.transcription"}} {
		f, err := os.Open(filepath.Join(dir, set.sub, set.list))
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			l := sc.Text()
			i, j := strings.LastIndexByte(l, '('), strings.LastIndexByte(l, ')')
			if i >= 0 && j > i {
				refs[filepath.Join(dir, set.sub, l[i+1:j]+".wav")] = strings.NewReplacer("<s>", "", "</s>", "").Replace(l[:i])
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return refs, nil
}
