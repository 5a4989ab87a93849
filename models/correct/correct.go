// Package correct is the vocabulary pass for engines that print words, not
// phones (Moonshine): it replaces a run of words in a final that sounds like
// a name on the call centre's list (streets, places, drugs) with that name.
// Sound is compared as CMUdict phones: the final's words from the system
// dictionary (or letter-to-sound rules for words it lacks), the listed names
// from the vocabulary file's own pronunciations.
package correct

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"unicode"

	"github.com/callscribe/callscribe/proto"
)

// Lexicon looks up a lower-case word's phones.
type Lexicon func(word string) (phones []string, ok bool)

// SystemDict is the pronunciation dictionary Debian's pocketsphinx-en-us ships.
const SystemDict = "/usr/share/pocketsphinx/model/en-us/cmudict-en-us.dict"

// LoadCMUDict reads a CMUdict-format file (first pronunciation of each word;
// stress digits dropped).
func LoadCMUDict(path string) (Lexicon, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 || strings.HasPrefix(fs[0], ";;;") {
			continue
		}
		w := strings.ToLower(fs[0])
		if strings.Contains(w, "(") {
			continue // an alternate pronunciation
		}
		if _, ok := d[w]; ok {
			continue
		}
		ph := make([]string, len(fs)-1)
		for i, p := range fs[1:] {
			ph[i] = strings.TrimRight(strings.ToUpper(p), "012")
		}
		d[w] = ph
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return func(w string) ([]string, bool) { p, ok := d[w]; return p, ok }, nil
}

var (
	sysOnce sync.Once
	sysLex  Lexicon
)

// SystemLexicon is SystemDict, loaded once; without it every word is
// spelled by rule.
func SystemLexicon() Lexicon {
	sysOnce.Do(func() {
		l, err := LoadCMUDict(SystemDict)
		if err != nil {
			l = func(string) ([]string, bool) { return nil, false }
		}
		sysLex = l
	})
	return sysLex
}

// Thresholds: a span is replaced when the weighted edit distance between
// its phones and the name's is at most this share of the name's phone
// count (about one phone in three, vowels counting less). A single
// dictionary word must be closer: an engine printing a real word is weaker
// evidence that it missed a name than a non-word is.
const (
	MaxDistance     = 0.34
	MaxDistanceWord = 0.15
	minPhones       = 4
)

// Corrector replaces near-misses of listed names. Safe for concurrent use.
type Corrector struct {
	names []name
	lex   Lexicon
	known map[string]bool
}

type name struct {
	word   string
	phones []string
}

// New builds a corrector for a vocabulary (nil lex: SystemLexicon).
func New(words []proto.Word, lex Lexicon) (*Corrector, error) {
	if lex == nil {
		lex = SystemLexicon()
	}
	c := &Corrector{lex: lex, known: map[string]bool{}}
	for _, w := range words {
		ph := strings.Fields(w.Phones)
		if len(ph) == 0 {
			return nil, fmt.Errorf("correct: %q has no phones", w.Word)
		}
		for _, p := range ph {
			if _, ok := class[p]; !ok {
				return nil, fmt.Errorf("correct: %q: unknown phone %q", w.Word, p)
			}
		}
		c.known[strings.ToLower(w.Word)] = true
		if len(ph) >= minPhones {
			c.names = append(c.names, name{word: strings.ToLower(w.Word), phones: ph})
		}
	}
	if len(words) > 0 && len(c.names) == 0 && len(c.known) == 0 {
		return nil, errors.New("correct: empty vocabulary")
	}
	return c, nil
}

// Knows reports whether word is on the list.
func (c *Corrector) Knows(word string) bool { return c.known[strings.ToLower(word)] }

type token struct {
	pre, word, post string // punctuation before and after
}

func split(text string) []token {
	var out []token
	for _, f := range strings.Fields(text) {
		i := strings.IndexFunc(f, isWordRune)
		if i < 0 {
			out = append(out, token{pre: f})
			continue
		}
		j := strings.LastIndexFunc(f, isWordRune)
		_, size := utf8Last(f[:j+1])
		out = append(out, token{pre: f[:i], word: f[i : j+1], post: f[j+size:]})
		_ = size
	}
	return out
}

func utf8Last(s string) (rune, int) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] < 0x80 || s[i] >= 0xC0 {
			return []rune(s[i:])[0], len(s) - i
		}
	}
	return 0, 1
}

func isWordRune(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) || r == '\'' }

// Correct returns text with near-misses of listed names replaced.
func (c *Corrector) Correct(text string) string {
	if len(c.names) == 0 || text == "" {
		return text
	}
	toks := split(text)
	phones := make([][]string, len(toks))
	inDict := make([]bool, len(toks))
	for i, t := range toks {
		if t.word == "" {
			continue
		}
		w := strings.ToLower(t.word)
		if p, ok := c.lex(w); ok {
			phones[i], inDict[i] = p, true
		} else {
			phones[i] = Spell(w)
		}
	}
	type match struct {
		from, to int // tokens [from, to)
		name     string
		score    float64
	}
	var ms []match
	for from := range toks {
		var span []string
		for to := from + 1; to <= min(from+3, len(toks)); to++ {
			t := toks[to-1]
			// A span never crosses punctuation and never holds a listed
			// word: what is already right stays.
			if t.word == "" || c.known[strings.ToLower(t.word)] || (to-1 > from && (strings.ContainsAny(toks[to-2].post, ",.;:?!") || t.pre != "")) {
				break
			}
			span = append(span, phones[to-1]...)
			limit := MaxDistance
			if to-from == 1 && inDict[from] {
				limit = MaxDistanceWord
			}
			for _, n := range c.names {
				if float64(absInt(len(span)-len(n.phones))) > limit*float64(len(n.phones)) {
					continue
				}
				if s := distance(span, n.phones) / float64(len(n.phones)); s <= limit {
					ms = append(ms, match{from, to, n.word, s})
				}
			}
		}
	}
	if len(ms) == 0 {
		return text
	}
	// Best score first; ties: the earlier, then the longer span, then the name.
	sortMatches := func(a, b match) bool {
		if a.score != b.score {
			return a.score < b.score
		}
		if a.from != b.from {
			return a.from < b.from
		}
		if a.to != b.to {
			return a.to > b.to
		}
		return a.name < b.name
	}
	for i := 1; i < len(ms); i++ {
		for j := i; j > 0 && sortMatches(ms[j], ms[j-1]); j-- {
			ms[j], ms[j-1] = ms[j-1], ms[j]
		}
	}
	taken := make([]bool, len(toks))
	repl := map[int]match{}
	for _, m := range ms {
		free := true
		for i := m.from; i < m.to; i++ {
			free = free && !taken[i]
		}
		if !free {
			continue
		}
		for i := m.from; i < m.to; i++ {
			taken[i] = true
		}
		repl[m.from] = m
	}
	var b strings.Builder
	for i := 0; i < len(toks); i++ {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		m, ok := repl[i]
		if !ok {
			b.WriteString(toks[i].pre + toks[i].word + toks[i].post)
			continue
		}
		w := m.name
		if r := []rune(toks[i].word); len(r) > 0 && unicode.IsUpper(r[0]) {
			rs := []rune(w)
			rs[0] = unicode.ToUpper(rs[0])
			w = string(rs)
		}
		b.WriteString(toks[i].pre + w + toks[m.to-1].post)
		i = m.to - 1
	}
	return b.String()
}

func absInt(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// class groups phones by how they sound: a substitution within a class
// costs less than across classes.
var class = map[string]string{
	"AA": "v", "AE": "v", "AH": "v", "AO": "v", "AW": "v", "AY": "v", "EH": "v", "ER": "v", "EY": "v",
	"IH": "v", "IY": "v", "OW": "v", "OY": "v", "UH": "v", "UW": "v",
	"P": "pb", "B": "pb", "T": "td", "D": "td", "K": "kg", "G": "kg",
	"F": "fv", "V": "fv", "TH": "th", "DH": "th", "S": "sz", "Z": "sz", "SH": "sh", "ZH": "sh",
	"CH": "ch", "JH": "ch", "HH": "h", "M": "n", "N": "n", "NG": "n",
	"L": "l", "R": "r", "W": "w", "Y": "y",
}

// near pairs classes that are often confused.
var near = map[string]bool{"pb|fv": true, "td|th": true, "sz|sh": true, "sh|ch": true, "td|ch": true, "l|r": true, "w|v": true, "y|v": true, "kg|ch": true}

func subCost(a, b string) float64 {
	if a == b {
		return 0
	}
	ca, cb := class[a], class[b]
	switch {
	case ca == cb && ca == "v":
		return 0.4
	case ca == cb:
		return 0.3
	case near[ca+"|"+cb] || near[cb+"|"+ca]:
		return 0.6
	}
	return 1
}

func indelCost(p string) float64 {
	if class[p] == "v" || p == "HH" {
		return 0.6 // vowels and h come and go in spelling-based guesses
	}
	return 1
}

// distance is a weighted edit distance between phone sequences.
func distance(a, b []string) float64 {
	prev := make([]float64, len(b)+1)
	cur := make([]float64, len(b)+1)
	for j := range b {
		prev[j+1] = prev[j] + indelCost(b[j])
	}
	for i := range a {
		cur[0] = prev[0] + indelCost(a[i])
		for j := range b {
			cur[j+1] = min(prev[j]+subCost(a[i], b[j]), prev[j+1]+indelCost(a[i]), cur[j]+indelCost(b[j]))
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
