// Package correct is the vocabulary pass for speech engines that print
// words rather than phones (Moonshine). A call centre lists local names
// (streets, places, drugs) with CMUdict pronunciations; an engine that has
// never seen "Tregunter" or "salbutamol" prints something that sounds like
// it ("Tregunta", "sal beautamol"). Correct finds runs of one to three words
// in a final whose pronunciation is close to a listed name's and replaces
// them with the name.
//
// Sound is compared as CMUdict phones: the final's words come from a
// pronunciation dictionary (the system's pocketsphinx CMUdict, see
// SystemLexicon) or, for words it lacks, from crude letter-to-sound rules
// (Spell); the listed names use the vocabulary's own pronunciations. The
// comparison is a weighted phone edit distance in which similar phones
// (two vowels, a voiced/unvoiced pair, two nasals) cost less to swap than
// unrelated ones, normalised by the longer of the two phone strings.
package correct

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/callscribe/callscribe/proto"
)

// Lexicon looks up the pronunciation of an ordinary word: lower-case, no
// surrounding punctuation. ok is false when the word is unknown.
type Lexicon func(word string) (phones []string, ok bool)

// SystemDict is the pronunciation dictionary of Debian's pocketsphinx-en-us
// package, which SystemLexicon loads.
const SystemDict = "/usr/share/pocketsphinx/model/en-us/cmudict-en-us.dict"

// LoadCMUDict reads a CMUdict file in pocketsphinx's format: one word a
// line, then its phones ("road R OW D"); alternate pronunciations are
// written "word(2) ..." and ignored (the first one is kept). Stress digits
// ("OW1") are dropped, words are folded to lower case, and lines starting
// with ";;;" are comments.
func LoadCMUDict(path string) (Lexicon, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d := make(map[string][]string, 1<<17)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, ";;;") || strings.HasPrefix(line, "#") {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) < 2 {
			continue
		}
		w := strings.ToLower(fs[0])
		if i := strings.IndexByte(w, '('); i > 0 && strings.HasSuffix(w, ")") {
			w = w[:i] // an alternate: kept only if the first is missing
		}
		if _, ok := d[w]; ok {
			continue
		}
		ph := make([]string, 0, len(fs)-1)
		for _, p := range fs[1:] {
			if p == "#" || strings.HasPrefix(p, "#") {
				break // trailing comment
			}
			ph = append(ph, strings.TrimRight(strings.ToUpper(p), "0123456789"))
		}
		if len(ph) > 0 {
			d[w] = ph
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return func(w string) ([]string, bool) {
		p, ok := d[w]
		return p, ok
	}, nil
}

var (
	sysOnce sync.Once
	sysLex  Lexicon
)

// SystemLexicon is SystemDict, loaded on first use and then shared. When
// the file is missing or unreadable every lookup fails, so every word is
// spelled by rule (Spell).
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

// Thresholds on the normalised distance (weighted edits divided by the
// longer phone count) at or under which a span is replaced. One unit is
// roughly one unrelated consonant swapped, inserted or dropped; two vowels
// swap for 0.25–0.45, a voiced/unvoiced pair or two nasals for 0.3, and a
// vowel comes or goes for 0.5–0.6.
//
// MaxDistance (0.3: about one wrong consonant in three phones, or one in
// four plus a vowel) applies to spans holding at least one word the
// lexicon lacks: an engine printing a non-word is good evidence that it
// heard something it does not know. MaxDistanceWords applies to spans of
// two or three dictionary words ("motor way", "pen sense"), and
// MaxDistanceWord to a single dictionary word, which must be very close
// (a voicing change or a near vowel in a long word): an engine printing a
// real word is weak evidence of a miss, and most of a final is real words.
// Very common words (the, about, near, …) are never replaced on their own,
// nor is a span made only of them ("to the").
const (
	MaxDistance      = 0.30
	MaxDistanceWords = 0.20
	MaxDistanceWord  = 0.12
	// MinPhones is the shortest listed pronunciation that is corrected
	// towards: shorter names match too much by chance (they are still
	// known to Knows).
	MinPhones = 3
	// MaxSpan is the most words a span replaced by one name may hold.
	MaxSpan = 3
)

// Corrector replaces near-misses of listed names in text. It is immutable
// after New and safe for concurrent use.
type Corrector struct {
	lex   Lexicon
	names []name
	byLen [][][]int32 // names by phone count, then by vowel count
	known map[string]bool
}

type name struct {
	word string
	ph   []uint8
	bag  bag
}

// New builds a corrector for a vocabulary. lex pronounces ordinary words;
// nil means SystemLexicon. A vocabulary entry with no phones, no word or a
// phone outside CMUdict's set is an error. No vocabulary is not: the
// corrector then returns text unchanged.
func New(words []proto.Word, lex Lexicon) (*Corrector, error) {
	if lex == nil {
		lex = SystemLexicon()
	}
	c := &Corrector{lex: lex, known: make(map[string]bool, len(words))}
	type key struct{ w, p string }
	seen := map[key]bool{}
	for _, w := range words {
		word := strings.ToLower(strings.TrimSpace(w.Word))
		if word == "" {
			return nil, errors.New("correct: a vocabulary entry has no word")
		}
		fs := strings.Fields(w.Phones)
		if len(fs) == 0 {
			return nil, fmt.Errorf("correct: %q has no phones", w.Word)
		}
		ph := make([]uint8, len(fs))
		for i, p := range fs {
			id, ok := phoneID[strings.TrimRight(strings.ToUpper(p), "012")]
			if !ok {
				return nil, fmt.Errorf("correct: %q: unknown phone %q", w.Word, p)
			}
			ph[i] = id
		}
		c.known[word] = true
		k := key{word, string(ph)}
		if len(ph) < MinPhones || seen[k] {
			continue
		}
		seen[k] = true
		n := name{word: word, ph: ph, bag: bagOf(ph)}
		for len(c.byLen) <= len(ph) {
			c.byLen = append(c.byLen, make([][]int32, len(c.byLen)+1))
		}
		v := vowels(ph)
		c.byLen[len(ph)][v] = append(c.byLen[len(ph)][v], int32(len(c.names)))
		c.names = append(c.names, n)
	}
	return c, nil
}

// Knows reports whether word (any case) is on the vocabulary list.
func (c *Corrector) Knows(word string) bool {
	return c.known[strings.ToLower(word)]
}

// token is one whitespace-separated field of the text: [start, end) in
// bytes, the word inside it [ws, we), and what it sounds like.
type token struct {
	start, end int
	ws, we     int
	phones     []uint8
	inDict     bool // every part of it is in the lexicon
	ok         bool // a word that may take part in a span
	last       bool // it may only end a span (possessive 's)
	stop       bool // a very common word
	upper      bool // first letter upper case
	allUpper   bool
}

// sentence punctuation a span may not cross.
const breakers = ",.;:?!"

func isWordRune(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) }

// tokenize splits text at white space, keeping punctuation with its token.
func (c *Corrector) tokenize(text string) []token {
	var toks []token
	i := 0
	for i < len(text) {
		r, sz := utf8.DecodeRuneInString(text[i:])
		if unicode.IsSpace(r) {
			i += sz
			continue
		}
		j := i
		for j < len(text) {
			r, sz := utf8.DecodeRuneInString(text[j:])
			if unicode.IsSpace(r) {
				break
			}
			j += sz
		}
		t := token{start: i, end: j}
		f := text[i:j]
		if a := strings.IndexFunc(f, isWordRune); a >= 0 {
			b := strings.LastIndexFunc(f, isWordRune)
			_, sz := utf8.DecodeRuneInString(f[b:])
			t.ws, t.we = i+a, i+b+sz
			c.pronounce(&t, text[t.ws:t.we])
		}
		toks = append(toks, t)
		i = j
	}
	return toks
}

// pronounce fills in a token's phones from its word.
func (c *Corrector) pronounce(t *token, w string) {
	lw := strings.ToLower(strings.ReplaceAll(w, "’", "'"))
	for _, r := range lw {
		if !unicode.IsLetter(r) && r != '\'' && r != '-' {
			return // digits and odd marks: never matched
		}
	}
	if c.known[lw] {
		return // already a listed word: left as it is
	}
	r, _ := utf8.DecodeRuneInString(w)
	t.upper = unicode.IsUpper(r)
	t.allUpper = utf8.RuneCountInString(w) > 1 && strings.ToUpper(w) == w
	t.stop = stopWords[lw]
	if ph, ok := c.lex(lw); ok {
		t.phones, t.inDict, t.ok = encode(ph), true, true
		return
	}
	if base, ok := strings.CutSuffix(lw, "'s"); ok && base != "" {
		// A possessive the lexicon lacks: match the base, keep the 's.
		lw, t.last = base, true
		t.we -= 2
		if c.known[base] {
			return
		}
	}
	t.inDict = true
	for part := range strings.FieldsFuncSeq(lw, func(r rune) bool { return r == '-' || r == '\'' }) {
		if ph, ok := c.lex(part); ok {
			t.phones = append(t.phones, encode(ph)...)
		} else {
			t.phones = append(t.phones, encode(Spell(part))...)
			t.inDict = false
		}
	}
	if len(lw) > 0 && strings.ContainsAny(lw, "-'") {
		if ph, ok := c.lex(strings.ReplaceAll(lw, "'", "")); ok { // "o'brien"-style
			t.phones, t.inDict = encode(ph), true
		}
	}
	t.ok = len(t.phones) > 0
}

type match struct {
	from, to int // tokens [from, to)
	name     int32
	score    float64
}

// Correct returns text with each run of one to MaxSpan words that sounds
// like a listed name replaced by that name. A span never crosses
// punctuation between its words, never holds a listed word or a word with
// digits, and keeps the leading punctuation of its first token and the
// trailing punctuation of its last; the name is capitalised when the
// span's first word is (upper-cased when the span is). Overlapping
// candidates are settled greedily, best score first. Everything outside
// the replaced spans, white space included, is returned byte for byte.
func (c *Corrector) Correct(text string) string {
	if len(c.names) == 0 || text == "" {
		return text
	}
	toks := c.tokenize(text)
	var ms []match
	var span []uint8
	var rows dpRows
	for from := range toks {
		span = span[:0]
		inDict, stops := true, true
		for to := from + 1; to <= min(from+MaxSpan, len(toks)); to++ {
			t := &toks[to-1]
			if !t.ok {
				break
			}
			if to-1 > from {
				p := &toks[to-2]
				if p.last || p.we != p.end || t.ws != t.start ||
					strings.ContainsAny(text[p.we:p.end], breakers) {
					break
				}
			}
			span = append(span, t.phones...)
			inDict = inDict && t.inDict
			stops = stops && t.stop && t.inDict
			limit := MaxDistance
			switch {
			case stops:
				continue // "to the", "it is": never a name
			case to-from == 1 && t.inDict:
				limit = MaxDistanceWord
			case inDict:
				limit = MaxDistanceWords
			}
			c.candidates(span, limit, from, to, &rows, &ms)
		}
	}
	if len(ms) == 0 {
		return text
	}
	// Best first; ties: the earlier span, the longer span, the name listed first.
	slices.SortFunc(ms, func(a, b match) int {
		switch {
		case a.score != b.score:
			if a.score < b.score {
				return -1
			}
			return 1
		case a.from != b.from:
			return a.from - b.from
		case a.to != b.to:
			return b.to - a.to
		}
		return int(a.name - b.name)
	})
	taken := make([]bool, len(toks))
	var chosen []match
	for _, m := range ms {
		if slices.Contains(taken[m.from:m.to], true) {
			continue
		}
		for i := m.from; i < m.to; i++ {
			taken[i] = true
		}
		chosen = append(chosen, m)
	}
	slices.SortFunc(chosen, func(a, b match) int { return a.from - b.from })
	var b strings.Builder
	b.Grow(len(text) + 16)
	at := 0
	for _, m := range chosen {
		first, last := toks[m.from], toks[m.to-1]
		b.WriteString(text[at:first.ws])
		w := c.names[m.name].word
		switch {
		case first.allUpper && (m.to-m.from > 1 || utf8.RuneCountInString(w) > 1):
			w = strings.ToUpper(w)
		case first.upper:
			r, sz := utf8.DecodeRuneInString(w)
			w = string(unicode.ToUpper(r)) + w[sz:]
		}
		b.WriteString(w)
		at = last.we
	}
	b.WriteString(text[at:])
	return b.String()
}

// candidates appends the names within limit of span.
func (c *Corrector) candidates(span []uint8, limit float64, from, to int, rows *dpRows, ms *[]match) {
	l := len(span)
	if l == 0 {
		return
	}
	sb := bagOf(span)
	sv := vowels(span)
	for n := MinPhones; n < len(c.byLen); n++ {
		longer := float64(max(l, n) * unit)
		max := int32(limit * longer)
		if int32(abs(l-n))*minIndel > max {
			continue
		}
		for v, ids := range c.byLen[n] {
			// Vowels and consonants must each be made up in number:
			// bagWeight is at least 10 for vowels, 6 for any consonant.
			if len(ids) == 0 || 10*int32(abs(sv-v))+6*int32(abs(l-sv-(n-v))) > max {
				continue
			}
			for _, id := range ids {
				nm := &c.names[id]
				if bagBound(&sb, &nm.bag, max) > max {
					continue
				}
				d, ok := rows.distance(span, nm.ph, max)
				if !ok {
					continue
				}
				*ms = append(*ms, match{from: from, to: to, name: id, score: float64(d) / longer})
			}
		}
	}
}

// vowels counts the vowels of ph.
func vowels(ph []uint8) int {
	n := 0
	for _, p := range ph {
		if p < nVowels {
			n++
		}
	}
	return n
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// stopWords are very common English words that are never replaced on their
// own, however close they sound to a listed name.
var stopWords = func() map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(`a about above after again against all also am an and any are as at
		back be because been before being below between both but by came can come could did do does doing
		done down during each even ever every few for from get go going gone got had has have having he
		her here hers herself him himself his how i if in into is it its itself just know like made make
		many may me might more most much must my myself near need never new no nor not now of off often
		on once one only or other our ours out over own please right said same say see she should so
		some still such take than that the their theirs them then there these they this those though
		through to too two under until up upon us very was way we well were what when where which while
		who whom whose why will with would yes yet you your yours okay ok yeah hello sir madam
		there's it's he's she's that's what's i'm you're we're they're don't can't won't isn't
		doesn't didn't i've i'll i'd he'd she'd we've you've`) {
		m[w] = true
	}
	return m
}()
