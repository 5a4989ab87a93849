package wer

import (
	"strings"
	"unicode"
)

// Words is the written normaliser every WER in callscribe uses, applied
// alike to reference and hypothesis:
//   - case folded; curly apostrophes straightened;
//   - punctuation removed, except an apostrophe inside a word ("there's");
//     hyphens and slashes split words ("ill-disposed" → "ill disposed");
//   - numbers written as words ("10" → "ten", "42" → "forty two",
//     "999" → "nine nine nine": runs of three or more digits are read digit
//     by digit, as emergency numbers and house numbers are spoken);
//   - common spellings folded to one (British → American: "metres" →
//     "meters", "centre" → "center"; "mr" → "mister", "ok" → "okay").
func Words(s string) []string {
	s = strings.NewReplacer("\u2019", "'", "\u2018", "'").Replace(strings.ToLower(s))
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || r == '-' || r == '/' || r == '\u2013' || r == '\u2014'
	}) {
		w := strings.TrimFunc(f, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) })
		w = strings.Map(func(r rune) rune {
			if unicode.IsLetter(r) || unicode.IsDigit(r) || r == '\'' {
				return r
			}
			return -1
		}, w)
		if w == "" {
			continue
		}
		if isDigits(w) {
			out = append(out, numberWords(w)...)
			continue
		}
		if v, ok := spellings[w]; ok {
			w = v
		}
		out = append(out, w)
	}
	return out
}

var spellings = map[string]string{
	"metres": "meters", "metre": "meter", "kilometres": "kilometers", "kilometre": "kilometer",
	"centre": "center", "centres": "centers", "colour": "color", "neighbour": "neighbor",
	"neighbours": "neighbors", "harbour": "harbor", "favour": "favor", "travelling": "traveling",
	"mr": "mister", "mrs": "missus", "dr": "doctor", "ok": "okay", "o'clock": "oclock",
	"tyre": "tire", "tyres": "tires", "programme": "program", "defence": "defense",
}

func isDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

var (
	ones = []string{"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
		"ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"}
	tens = []string{"", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"}
)

func numberWords(d string) []string {
	if len(d) >= 3 {
		out := make([]string, 0, len(d))
		for _, r := range d {
			out = append(out, ones[r-'0'])
		}
		return out
	}
	n := 0
	for _, r := range d {
		n = 10*n + int(r-'0')
	}
	if n < 20 {
		return []string{ones[n]}
	}
	if n%10 == 0 {
		return []string{tens[n/10]}
	}
	return []string{tens[n/10], ones[n%10]}
}
