package correct

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/callscribe/callscribe/proto"
)

// testLex is a small dictionary of ordinary words.
var testLex = map[string]string{
	"there's": "DH EH R Z", "a": "AH", "crash": "K R AE SH", "on": "AA N", "road": "R OW D", "near": "N IH R",
	"pen": "P EH N", "he": "HH IY", "uses": "Y UW S AH Z", "daily": "D EY L IY", "about": "AH B AW T",
	"pens": "P EH N Z", "fence": "F EH N S", "the": "DH AH", "ten": "T EH N", "meters": "M IY T ER Z",
	"go": "G OW", "forward": "F AO R W ER D", "sal": "S AE L", "it": "IH T", "is": "IH Z", "by": "B AY",
	"sense": "S EH N S", "penance": "P EH N AH N S", "motor": "M OW T ER", "way": "W EY", "and": "AH N D",
	"salt": "S AO L T", "stand": "S T AE N D", "tree": "T R IY", "gun": "G AH N", "to": "T UW", "her": "HH ER",
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
}

var cases = []struct{ in, want string }{
	{"There's a crash on Tregunta Road.", "There's a crash on Tregunter Road."},
	{"near Pen Zance,", "near Penzance,"},
	{"near pensance.", "near penzance."},
	{"he uses sal beautamol daily", "he uses salbutamol daily"},
	{"he uses salbutamoll daily", "he uses salbutamol daily"},
	{"a crash on the motor way", "a crash on the motorway"},
	// The rest is left alone.
	{"It is about the pens by the fence.", "It is about the pens by the fence."},
	{"Go forward ten meters.", "Go forward ten meters."},
	{"A sense of penance.", "A sense of penance."},
	{"salt and a tree to her", "salt and a tree to her"},
	{"Tregunter Road, Penzance.", "Tregunter Road, Penzance."},
	{"", ""},
	{"  ...  ", "  ...  "},
}

func TestCorrect(t *testing.T) {
	c, err := New(vocab, lex)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		if got := c.Correct(tc.in); got != tc.want {
			t.Errorf("Correct(%q) = %q, want %q", tc.in, got, tc.want)
		}
		for range 5 {
			if again := c.Correct(tc.in); again != c.Correct(tc.in) {
				t.Fatalf("Correct(%q) is not deterministic", tc.in)
			}
		}
	}
	if !c.Knows("Penzance") || c.Knows("road") {
		t.Error("Knows")
	}
}

func TestNoVocabularyIsIdentity(t *testing.T) {
	c, err := New(nil, lex)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		if got := c.Correct(tc.in); got != tc.in {
			t.Errorf("%q → %q", tc.in, got)
		}
	}
}

func TestBadVocabulary(t *testing.T) {
	if _, err := New([]proto.Word{{Word: "x", Phones: "QQ"}}, lex); err == nil {
		t.Error("unknown phone accepted")
	}
	if _, err := New([]proto.Word{{Word: "x"}}, lex); err == nil {
		t.Error("word without phones accepted")
	}
}

func TestLoadCMUDict(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d.dict")
	os.WriteFile(p, []byte(";;; comment\nroad R OW1 D\nread R IY1 D\nread(2) R EH1 D\n"), 0o600)
	l, err := LoadCMUDict(p)
	if err != nil {
		t.Fatal(err)
	}
	if ph, ok := l("read"); !ok || strings.Join(ph, " ") != "R IY D" {
		t.Errorf("read: %v %v", ph, ok)
	}
	if _, ok := l("nope"); ok {
		t.Error("nope found")
	}
}

func TestSystemDictionary(t *testing.T) {
	if _, err := os.Stat(SystemDict); err != nil {
		t.Skip("pocketsphinx-en-us not installed")
	}
	if ph, ok := SystemLexicon()("forward"); !ok || len(ph) < 5 {
		t.Fatalf("forward: %v", ph)
	}
	c, err := New(vocab, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"He was not an ill-disposed young man.", "Go forward ten metres.", "It is about the pens by the fence."} {
		if got := c.Correct(s); got != s {
			t.Errorf("system dictionary: %q → %q", s, got)
		}
	}
	if got := c.Correct("There's a crash on Tregunta Road near Pensance."); got != "There's a crash on Tregunter Road near Penzance." {
		t.Errorf("system dictionary: %q", got)
	}
}

func FuzzCorrect(f *testing.F) {
	for _, tc := range cases {
		f.Add(tc.in)
	}
	c, _ := New(vocab, lex)
	none, _ := New(nil, lex)
	f.Fuzz(func(t *testing.T, s string) {
		_ = c.Correct(s)
		if got := none.Correct(s); got != s {
			t.Fatalf("no vocabulary changed %q to %q", s, got)
		}
	})
}
