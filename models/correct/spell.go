package correct

import "strings"

// rule is a letter-to-sound rule: letters g give phones p.
type rule struct {
	g string
	p []string
}

func ph(s string) []string { return strings.Fields(s) }

// rules, tried longest first at each position (single letters last).
var rules = []rule{
	{"tion", ph("SH AH N")}, {"sion", ph("ZH AH N")}, {"cian", ph("SH AH N")}, {"ture", ph("CH ER")},
	{"ough", ph("AO")}, {"augh", ph("AO")}, {"eigh", ph("EY")},
	{"igh", ph("AY")}, {"tch", ph("CH")}, {"dge", ph("JH")}, {"sch", ph("S K")}, {"eau", ph("Y UW")},
	{"our", ph("AW ER")}, {"air", ph("EH R")}, {"ear", ph("IH R")}, {"eer", ph("IH R")},
	{"ch", ph("CH")}, {"sh", ph("SH")}, {"th", ph("TH")}, {"ph", ph("F")}, {"ck", ph("K")},
	{"qu", ph("K W")}, {"wh", ph("W")}, {"ee", ph("IY")}, {"ea", ph("IY")}, {"oo", ph("UW")},
	{"ai", ph("EY")}, {"ay", ph("EY")}, {"ou", ph("AW")}, {"ow", ph("OW")}, {"oa", ph("OW")},
	{"oi", ph("OY")}, {"oy", ph("OY")}, {"au", ph("AO")}, {"aw", ph("AO")}, {"ie", ph("IY")},
	{"ei", ph("EY")}, {"ey", ph("EY")}, {"ue", ph("UW")}, {"ew", ph("UW")}, {"ui", ph("UW")},
	{"er", ph("ER")}, {"ir", ph("ER")}, {"ur", ph("ER")}, {"yr", ph("ER")}, {"ar", ph("AA R")},
	{"or", ph("AO R")},
	{"a", ph("AE")}, {"e", ph("EH")}, {"i", ph("IH")}, {"o", ph("AA")}, {"u", ph("AH")},
	{"b", ph("B")}, {"d", ph("D")}, {"f", ph("F")}, {"h", ph("HH")}, {"j", ph("JH")},
	{"k", ph("K")}, {"l", ph("L")}, {"m", ph("M")}, {"n", ph("N")}, {"p", ph("P")},
	{"r", ph("R")}, {"s", ph("S")}, {"t", ph("T")}, {"v", ph("V")}, {"w", ph("W")}, {"z", ph("Z")},
	{"c", ph("K")}, {"g", ph("G")}, {"q", ph("K")}, {"x", ph("K S")}, {"y", ph("IY")},
}

func isVowel(c byte) bool { return strings.IndexByte("aeiou", c) >= 0 }

// long is a vowel letter's "magic e" sound (mole, mine, cane).
var long = map[byte][]string{'a': ph("EY"), 'e': ph("IY"), 'i': ph("AY"), 'o': ph("OW"), 'u': ph("UW")}

// Spell guesses a word's CMUdict phones from its letters, for words no
// dictionary has, such as an engine's misspelling of a name ("Tregunta",
// "Pensance", "beautamol"). The rules are crude English ones: consonant
// digraphs (ch sh th ph ck ng qu wh), vowel digraphs (ee oo ea ai ay ou ow
// oa igh …), -tion, c and g softened before e i y, x as K S, doubled
// consonants as one, a silent final e that lengthens the vowel before a
// single consonant, y as a vowel after a consonant, final a as a schwa.
// Letters other than a–z are ignored.
func Spell(word string) []string {
	var bs []byte
	for i := 0; i < len(word); i++ {
		c := word[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'a' <= c && c <= 'z' {
			bs = append(bs, c)
		}
	}
	w := string(bs)
	n := len(w)
	if n == 0 {
		return nil
	}
	// A silent final e: "zance", "mole"; it lengthens a lone vowel before
	// a single consonant.
	magic := -1
	if n > 2 && w[n-1] == 'e' && !isVowel(w[n-2]) && w[n-2] != 'y' {
		n--
		if n >= 2 && isVowel(w[n-2]) && (n < 3 || !isVowel(w[n-3])) && w[n-1] != 'r' {
			magic = n - 2
		}
		if w[n-1] == 'l' && n >= 2 && !isVowel(w[n-2]) { // table
			w = w[:n-1] + "ul"
			n++
		} else {
			w = w[:n]
		}
	}
	full := string(bs) // the letters, a silent e included
	var out []string
	prevVowel := false
	for i := 0; i < n; {
		c := w[i]
		next := byte(0)
		if i+1 < n {
			next = w[i+1]
		}
		after := byte(0) // the next letter, a silent e included
		if i+1 < len(full) {
			after = full[i+1]
		}
		soft := after == 'e' || after == 'i' || after == 'y'
		var p []string
		adv := 1
		switch {
		case i == magic:
			p = long[c]
		case c == next && !isVowel(c) && c != 'c':
			p, adv = []string{rules[indexRule(string(c))].p[0]}, 2 // doubled
		case c == 'c' && next == 'c':
			if i+2 < n && strings.IndexByte("eiy", w[i+2]) >= 0 {
				p, adv = ph("K S"), 2 // accept
			} else {
				p, adv = ph("K"), 2
			}
		case c == 'c' && next != 'h' && next != 'k':
			if soft {
				p = ph("S")
			} else {
				p = ph("K")
			}
		case c == 'g' && next == 'h':
			if i == 0 {
				p = ph("G")
			}
			adv = 2
		case c == 'g' && next == 'n' && (i == 0 || i+2 == n):
			p, adv = ph("N"), 2
		case c == 'g':
			if soft && i+2 <= n-1 || soft && i+2 == n && next == 'y' {
				p = ph("JH")
			} else {
				p = ph("G")
			}
		case c == 'n' && next == 'g':
			if i+2 < n && strings.IndexByte("eiy", w[i+2]) >= 0 {
				p = ph("N") // danger: n, then a soft g
			} else {
				p, adv = ph("NG"), 2
			}
		case c == 'n' && next == 'k':
			p = ph("NG")
		case c == 'k' && next == 'n' && i == 0, c == 'w' && next == 'r' && i == 0:
			adv = 1 // silent: knock, wreck
		case c == 'x':
			if i == 0 {
				p = ph("Z")
			} else {
				p = ph("K S")
			}
		case c == 'y':
			switch {
			case i == 0 || prevVowel:
				p = ph("Y")
			case i == n-1:
				p = ph("IY")
			default:
				p = ph("IH")
			}
		case c == 's' && prevVowel && i+1 < n && (isVowel(next) || next == 'y'):
			p = ph("Z") // rose, easy
		case c == 's' && i == n-1 && i > 0 && (prevVowel || strings.IndexByte("bdglmnrvw", w[i-1]) >= 0):
			p = ph("Z") // plural after a voiced sound
		case c == 'a' && i == n-1 && n > 1:
			p = ph("AH") // tregunta
		case c == 'o' && i == n-1 && n > 1:
			p = ph("OW")
		case c == 'e' && i == n-1 && n > 1 && n == len(w):
			p = ph("IY") // be, me
		default:
			r := rules[matchRule(w[i:n])]
			p, adv = r.p, len(r.g)
		}
		out = append(out, p...)
		if len(p) > 0 {
			prevVowel = phoneID[p[len(p)-1]] < nVowels
		}
		i += adv
	}
	return out
}

// matchRule is the index of the first rule whose letters start s.
func matchRule(s string) int {
	for i, r := range rules {
		if strings.HasPrefix(s, r.g) {
			return i
		}
	}
	panic("correct: no rule for " + s) // every letter has one
}

func indexRule(g string) int {
	for i, r := range rules {
		if r.g == g {
			return i
		}
	}
	panic("correct: no rule " + g)
}
