package models

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"github.com/callscribe/callscribe/proto"
)

// cmuPhones is the phone set of CMUdict and of the en-us acoustic model.
var cmuPhones = map[string]bool{}

func init() {
	for _, p := range strings.Fields("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH") {
		cmuPhones[p] = true
	}
}

var wordRE = regexp.MustCompile(`^[a-z0-9][a-z0-9'._-]{0,63}$`)

// MaxVocabulary bounds a vocabulary file.
const MaxVocabulary = 10000

// ParseVocabulary reads extra words, one per line: the word, then its
// phones (CMUdict style; stress digits are dropped). Blank lines and lines
// starting with # are skipped. Errors name the file and line.
//
//	motorway   M OW T ER W EY
//	salbutamol S AE L B Y UW T AH M AA L
func ParseVocabulary(r io.Reader, name string) ([]proto.Word, error) {
	var out []proto.Word
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		word := strings.ToLower(f[0])
		if !wordRE.MatchString(word) {
			return nil, fmt.Errorf("%s:%d: %q is not a word (lower-case letters, digits, ' . _ -)", name, n, f[0])
		}
		if len(f) < 2 {
			return nil, fmt.Errorf("%s:%d: %q has no pronunciation (phones such as %q)", name, n, word, "M OW T ER W EY")
		}
		phones := make([]string, 0, len(f)-1)
		for _, p := range f[1:] {
			p = strings.TrimRight(strings.ToUpper(p), "012")
			if !cmuPhones[p] {
				return nil, fmt.Errorf("%s:%d: %q: unknown phone %q (the model's phones are CMUdict's: AA AE AH … ZH)", name, n, word, p)
			}
			phones = append(phones, p)
		}
		if prev, ok := seen[word]; ok {
			return nil, fmt.Errorf("%s:%d: %q is already defined on line %d", name, n, word, prev)
		}
		seen[word] = n
		if len(out) == MaxVocabulary {
			return nil, fmt.Errorf("%s:%d: more than %d words", name, n, MaxVocabulary)
		}
		out = append(out, proto.Word{Word: word, Phones: strings.Join(phones, " ")})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

// LoadVocabulary reads a vocabulary file ("" gives none).
func LoadVocabulary(path string) ([]proto.Word, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vocabulary: %w", err)
	}
	defer f.Close()
	return ParseVocabulary(f, path)
}
