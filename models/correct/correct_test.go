package correct

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/callscribe/callscribe/proto"
)

// testLex is a small dictionary of ordinary words, standing in for CMUdict.
var testLex = map[string]string{
	"there's": "DH EH R Z", "a": "AH", "crash": "K R AE SH", "on": "AA N", "road": "R OW D", "near": "N IH R",
	"pen": "P EH N", "he": "HH IY", "uses": "Y UW S AH Z", "daily": "D EY L IY", "about": "AH B AW T",
	"pens": "P EH N Z", "fence": "F EH N S", "the": "DH AH", "ten": "T EH N", "meters": "M IY T ER Z",
	"go": "G OW", "forward": "F AO R W ER D", "sal": "S AE L", "it": "IH T", "is": "IH Z", "by": "B AY",
	"sense": "S EH N S", "penance": "P EH N AH N S", "motor": "M OW T ER", "way": "W EY", "and": "AH N D",
	"salt": "S AO L T", "stand": "S T AE N D", "tree": "T R IY", "gun": "G AH N", "to": "T UW", "her": "HH ER",
	"she": "SH IY", "took": "T UH K", "inhaler": "IH N HH EY L ER", "but": "B AH T", "did": "D IH D",
	"not": "N AA T", "help": "HH EH L P", "there": "DH EH R", "was": "W AA Z", "hunter": "HH AH N T ER",
	"counter": "K AW N T ER", "under": "AH N D ER", "tribute": "T R IH B Y UW T", "beautiful": "B Y UW T AH F AH L",
	"canter": "K AE N T ER", "all": "AO L", "bottle": "B AA T AH L", "dance": "D AE N S", "pants": "P AE N T S",
	"man": "M AE N", "is't": "IH Z T", "zone": "Z OW N", "gave": "G EY V", "naloxone": "N AH L AA K S OW N",
	"in": "IH N", "of": "AH V", "house": "HH AW S", "fire": "F AY ER", "main": "M EY N", "camp": "K AE M P",
	"born": "B AO R N", "corn": "K AO R N", "lemon": "L EH M AH N", "oven": "AH V AH N",
}

func lex(w string) ([]string, bool) {
	p, ok := testLex[w]
	return strings.Fields(p), ok
}

var vocab = []proto.Word{
	{Word: "tregunter", Phones: "T R AH G AH N T ER"},
	{Word: "penzance", Phones: "P EH N Z AE N S"},
	{Word: "salbutamol", Phones: "S AE L B Y UW T AH M AA L"},
	{Word: "motorway", Phones: "M OW T ER W EY"},
	{Word: "camborne", Phones: "K AE M B AO R N"},
	{Word: "porthleven", Phones: "P AO R TH L EH V AH N"},
	{Word: "kernick", Phones: "K ER N IH K"},
	{Word: "looe", Phones: "L UW"}, // too short to correct towards, but known
}

var cases = []struct{ name, in, want string }{
	// Near-misses.
	{"one non-word", "There's a crash on Tregunta Road.", "There's a crash on Tregunter Road."},
	{"split name", "near Pen Zance,", "near Penzance,"},
	{"one word", "near Pensance.", "near Penzance."},
	{"split drug", "he uses sal beautamol daily", "he uses salbutamol daily"},
	{"misspelt drug", "he uses salbutamoll daily", "he uses salbutamol daily"},
	{"two dictionary words", "a crash on the motor way", "a crash on the motorway"},
	{"three words", "She took her sal buta mol inhaler", "She took her salbutamol inhaler"},
	{"camborne", "outside the station in Cambourne.", "outside the station in Camborne."},
	{"porthleven", "a boat off Porth Leven!", "a boat off Porthleven!"},
	{"kernick", "on the Kernik estate", "on the Kernick estate"},
	{"quotes kept", `"Tregunta" road`, `"Tregunter" road`},
	{"upper case", "TREGUNTA ROAD", "TREGUNTER ROAD"},
	{"possessive", "Pensance's harbour", "Penzance's harbour"},
	{"two in one", "Tregunta Road, Pen Zance.", "Tregunter Road, Penzance."},
	{"white space kept", "  on  Tregunta\tRoad \n", "  on  Tregunter\tRoad \n"},
	// The rest is left alone.
	{"about", "It is about the pens by the fence.", "It is about the pens by the fence."},
	{"ten meters", "Go forward ten meters.", "Go forward ten meters."},
	{"penance", "A sense of penance.", "A sense of penance."},
	{"ordinary words", "salt and a tree to her", "salt and a tree to her"},
	{"stop words only", "took her to the house", "took her to the house"},
	{"hunter", "the hunter was under the counter", "the hunter was under the counter"},
	{"beautiful", "a beautiful tribute", "a beautiful tribute"},
	{"pants dance", "the man in pants did a dance", "the man in pants did a dance"},
	{"already right", "Tregunter Road, Penzance.", "Tregunter Road, Penzance."},
	{"listed word not eaten", "the Looe road", "the Looe road"},
	{"no crossing commas", "near pen, zance", "near pen, zance"},
	{"no crossing full stops", "The pen. Zance is here.", "The pen. Zance is here."},
	{"digits", "Call 999 now.", "Call 999 now."},
	{"empty", "", ""},
	{"punctuation only", "  ...  ", "  ...  "},
	{"one letter", "a", "a"},
}

func TestCorrect(t *testing.T) {
	c, err := New(vocab, lex)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := c.Correct(tc.in); got != tc.want {
				t.Errorf("Correct(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestDeterministic(t *testing.T) {
	// Two names equally close to the same span: the one listed first wins,
	// every time, whatever the order of internal maps.
	words := []proto.Word{
		{Word: "trevanna", Phones: "T R AH V AE N AH"},
		{Word: "trefanna", Phones: "T R AH F AE N AH"},
	}
	c, err := New(append(words, vocab...), lex)
	if err != nil {
		t.Fatal(err)
	}
	in := "on Treganna Road near Pen Zance, he uses sal beautamol"
	want := c.Correct(in)
	for range 200 {
		c, _ := New(append(words, vocab...), lex)
		if got := c.Correct(in); got != want {
			t.Fatalf("Correct(%q) = %q, then %q", in, want, got)
		}
	}
}

func TestNoVocabularyIsIdentity(t *testing.T) {
	for _, v := range [][]proto.Word{nil, {}, {{Word: "looe", Phones: "L UW"}}} {
		c, err := New(v, lex)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range cases {
			if got := c.Correct(tc.in); got != tc.in {
				t.Errorf("%v: %q → %q", v, tc.in, got)
			}
		}
	}
}

func TestKnows(t *testing.T) {
	c, err := New(vocab, lex)
	if err != nil {
		t.Fatal(err)
	}
	for w, want := range map[string]bool{
		"penzance": true, "Penzance": true, "SALBUTAMOL": true, "looe": true,
		"road": false, "": false, "pen zance": false, "tregunta": false,
	} {
		if got := c.Knows(w); got != want {
			t.Errorf("Knows(%q) = %v", w, got)
		}
	}
}

func TestBadVocabulary(t *testing.T) {
	for _, w := range []proto.Word{
		{Word: "x", Phones: "QQ"},
		{Word: "x"},
		{Phones: "AH"},
	} {
		if _, err := New([]proto.Word{w}, lex); err == nil {
			t.Errorf("%+v accepted", w)
		}
	}
	// Stress digits and lower case are tolerated.
	c, err := New([]proto.Word{{Word: "Penzance", Phones: "p eh1 n z ae2 n s"}}, lex)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Correct("near Pensance"); got != "near Penzance" {
		t.Errorf("got %q", got)
	}
}

func TestSpell(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"tregunta", "T R EH G AH N T AH"},
		{"zance", "Z AE N S"},
		{"pensance", "P EH N S AE N S"},
		{"beautamol", "B Y UW T AE M AA L"},
		{"church", "CH ER CH"},
		{"station", "S T AE SH AH N"},
		{"mole", "M OW L"},
		{"city", "S IH T IY"},
		{"box", "B AA K S"},
		{"knight", "N AY T"},
		{"quick", "K W IH K"},
		{"ring", "R IH NG"},
		{"phone", "F OW N"},
		{"table", "T AE B AH L"},
		{"Pen-Zance!", "P EH N Z AE N S"},
		{"", ""},
		{"999", ""},
	} {
		if got := strings.Join(Spell(tc.in), " "); got != tc.want {
			t.Errorf("Spell(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	// Every letter sequence spells to known phones.
	for _, w := range []string{"xyzzy", "qqq", "aeiouy", "ggghhh", "cccc", "yyy", "e", "ee", "ea"} {
		for _, p := range Spell(w) {
			if _, ok := phoneID[p]; !ok {
				t.Errorf("Spell(%q): phone %q", w, p)
			}
		}
	}
}

func TestDistance(t *testing.T) {
	d := func(a, b string) float64 {
		x, y := encode(strings.Fields(a)), encode(strings.Fields(b))
		var r dpRows
		v, _ := r.distance(x, y, 1<<30)
		return float64(v) / float64(unit*max(len(x), len(y)))
	}
	if v := d("P EH N Z AE N S", "P EH N Z AE N S"); v != 0 {
		t.Errorf("identical: %v", v)
	}
	if near, far := d("P EH N S AE N S", "P EH N Z AE N S"), d("F EH N S", "P EH N Z AE N S"); near >= far || near > 0.1 {
		t.Errorf("pensance %v, fence %v", near, far)
	}
	if v := d("AH B AW T", "S AE L B Y UW T AH M AA L"); v <= MaxDistance {
		t.Errorf("about ~ salbutamol: %v", v)
	}
	// The bag bound never exceeds the distance.
	for _, a := range testLex {
		for _, w := range vocab {
			x, y := encode(strings.Fields(a)), encode(strings.Fields(w.Phones))
			var r dpRows
			v, _ := r.distance(x, y, 1<<30)
			bx, by := bagOf(x), bagOf(y)
			if b := bagBound(&bx, &by, 1<<30); b > v {
				t.Errorf("%s ~ %s: bound %d > distance %d", a, w.Phones, b, v)
			}
		}
	}
}

func TestLoadCMUDict(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d.dict")
	dict := ";;; comment\nroad R OW1 D\nread R IY1 D\nread(2) R EH1 D\nLIVE L IH V\nlive(2) L AY V\n" +
		"only(2) OW N L IY\nbare B EH R # a comment\n\n"
	if err := os.WriteFile(p, []byte(dict), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := LoadCMUDict(p)
	if err != nil {
		t.Fatal(err)
	}
	for w, want := range map[string]string{
		"road": "R OW D", "read": "R IY D", "live": "L IH V", "only": "OW N L IY", "bare": "B EH R", "nope": "",
	} {
		ph, ok := l(w)
		if got := strings.Join(ph, " "); got != want || ok != (want != "") {
			t.Errorf("%s: %q %v, want %q", w, got, ok, want)
		}
	}
	if _, err := LoadCMUDict(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file loaded")
	}
}

func TestSystemDictionary(t *testing.T) {
	if _, err := os.Stat(SystemDict); err != nil {
		t.Skip("pocketsphinx-en-us is not installed")
	}
	if ph, ok := SystemLexicon()("forward"); !ok || strings.Join(ph, " ") != "F AO R W ER D" {
		t.Fatalf("forward: %v %v", ph, ok)
	}
	c, err := New(vocab, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"He was not an ill-disposed young man.",
		"Go forward ten meters.",
		"It is about the pens by the fence.",
		"The hunter was under the counter.",
		"She took her inhaler but it did not help.",
		"There is a fire in the main road near the station.",
		"My mother is in pain and she can't breathe.",
		"He's fallen down the stairs and hit his head.",
		"There's smoke coming from the house next door.",
		"The patient is conscious and breathing normally.",
		"A lorry has overturned on the industrial estate.",
		"Please send an ambulance to the services on the motorway.",
	} {
		if got := c.Correct(s); got != s {
			t.Errorf("system dictionary: %q → %q", s, got)
		}
	}
	for in, want := range map[string]string{
		"There's a crash on Tregunta Road near Pensance.": "There's a crash on Tregunter Road near Penzance.",
		"He uses sal beautamol daily.":                    "He uses salbutamol daily.",
		"outside the station in Cambourne":                "outside the station in Camborne",
	} {
		if got := c.Correct(in); got != want {
			t.Errorf("system dictionary: %q → %q, want %q", in, got, want)
		}
	}
}

// bigVocab is n made-up names of 4 to 12 phones.
func bigVocab(n int) []proto.Word {
	var ws []proto.Word
	x := uint32(1)
	for i := range n {
		var ph []string
		for range 4 + i%9 {
			x = x*1664525 + 1013904223
			ph = append(ph, phoneNames[(x>>8)%uint32(len(phoneNames))])
		}
		ws = append(ws, proto.Word{Word: fmt.Sprintf("name%d", i), Phones: strings.Join(ph, " ")})
	}
	return append(ws, vocab...)
}

var final30 = "There's a crash on Tregunta Road near Pen Zance, he uses sal beautamol daily and the man " +
	"took her to the house about ten meters from the fire on the main road near the motor way."

func TestBigVocabulary(t *testing.T) {
	c, err := New(bigVocab(10000), lex)
	if err != nil {
		t.Fatal(err)
	}
	got := c.Correct(final30)
	for _, w := range []string{"Tregunter Road", "Penzance,", "salbutamol daily"} {
		if !strings.Contains(got, w) {
			t.Errorf("%q lacks %q", got, w)
		}
	}
}

func BenchmarkCorrect(b *testing.B) {
	for _, n := range []int{100, 10000} {
		c, err := New(bigVocab(n), lex)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				c.Correct(final30)
			}
		})
	}
}

func FuzzCorrect(f *testing.F) {
	for _, tc := range cases {
		f.Add(tc.in)
	}
	c, err := New(vocab, lex)
	if err != nil {
		f.Fatal(err)
	}
	none, err := New(nil, lex)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := c.Correct(s)
		if again := c.Correct(s); again != out {
			t.Fatalf("Correct(%q) = %q, then %q", s, out, again)
		}
		if got := none.Correct(s); got != s {
			t.Fatalf("no vocabulary changed %q to %q", s, got)
		}
		_ = Spell(s)
	})
}
