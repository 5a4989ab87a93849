package correct

import "strings"

// rules are letter-to-sound rules, longest first at each position.
var rules = []struct {
	g string
	p []string
}{
	{"tion", []string{"SH", "AH", "N"}}, {"sion", []string{"ZH", "AH", "N"}}, {"igh", []string{"AY"}},
	{"tch", []string{"CH"}}, {"dge", []string{"JH"}}, {"ough", []string{"AO"}},
	{"ch", []string{"CH"}}, {"sh", []string{"SH"}}, {"th", []string{"TH"}}, {"ph", []string{"F"}},
	{"ck", []string{"K"}}, {"ng", []string{"NG"}}, {"qu", []string{"K", "W"}}, {"wh", []string{"W"}},
	{"ee", []string{"IY"}}, {"ea", []string{"IY"}}, {"oo", []string{"UW"}}, {"ai", []string{"EY"}},
	{"ay", []string{"EY"}}, {"ou", []string{"AW"}}, {"ow", []string{"OW"}}, {"oa", []string{"OW"}},
	{"oi", []string{"OY"}}, {"oy", []string{"OY"}}, {"au", []string{"AO"}}, {"aw", []string{"AO"}},
	{"ie", []string{"IY"}}, {"ei", []string{"EY"}}, {"ue", []string{"UW"}}, {"ew", []string{"UW"}},
	{"er", []string{"ER"}}, {"ir", []string{"ER"}}, {"ur", []string{"ER"}}, {"ar", []string{"AA", "R"}},
	{"or", []string{"AO", "R"}}, {"ll", []string{"L"}}, {"ss", []string{"S"}}, {"tt", []string{"T"}},
	{"nn", []string{"N"}}, {"mm", []string{"M"}}, {"pp", []string{"P"}}, {"rr", []string{"R"}},
	{"ff", []string{"F"}}, {"bb", []string{"B"}}, {"dd", []string{"D"}}, {"gg", []string{"G"}},
	{"zz", []string{"Z"}}, {"kn", []string{"N"}}, {"wr", []string{"R"}},
	{"a", []string{"AE"}}, {"e", []string{"EH"}}, {"i", []string{"IH"}}, {"o", []string{"AA"}}, {"u", []string{"AH"}},
	{"b", []string{"B"}}, {"d", []string{"D"}}, {"f", []string{"F"}}, {"h", []string{"HH"}}, {"j", []string{"JH"}},
	{"k", []string{"K"}}, {"l", []string{"L"}}, {"m", []string{"M"}}, {"n", []string{"N"}}, {"p", []string{"P"}},
	{"r", []string{"R"}}, {"s", []string{"S"}}, {"t", []string{"T"}}, {"v", []string{"V"}}, {"w", []string{"W"}},
	{"x", []string{"K", "S"}}, {"z", []string{"Z"}},
}

// Spell guesses a word's phones from its letters (for words no dictionary
// has, such as an engine's misspelling of a name).
func Spell(word string) []string {
	w := strings.ToLower(word)
	var out []string
	for i := 0; i < len(w); {
		c := w[i]
		switch {
		case c == 'e' && i == len(w)-1 && i > 1: // silent final e
			i++
			continue
		case c == 'c':
			if i+1 < len(w) && strings.IndexByte("eiy", w[i+1]) >= 0 {
				out = append(out, "S")
			} else if i+1 < len(w) && w[i+1] == 'h' {
				break
			} else {
				out = append(out, "K")
			}
			if !(i+1 < len(w) && w[i+1] == 'h') {
				i++
				continue
			}
		case c == 'g':
			if i+1 < len(w) && strings.IndexByte("eiy", w[i+1]) >= 0 && i+1 < len(w)-1 {
				out = append(out, "JH")
			} else if i+1 < len(w) && w[i+1] == 'h' {
				i += 2 // gh: silent
				continue
			} else {
				out = append(out, "G")
			}
			i++
			continue
		case c == 'y':
			if i == 0 {
				out = append(out, "Y")
			} else if i == len(w)-1 {
				out = append(out, "IY")
			} else {
				out = append(out, "IH")
			}
			i++
			continue
		}
		matched := false
		for _, r := range rules {
			if strings.HasPrefix(w[i:], r.g) {
				out = append(out, r.p...)
				i += len(r.g)
				matched = true
				break
			}
		}
		if !matched {
			i++ // digits, apostrophes: no sound of their own here
		}
	}
	return out
}
