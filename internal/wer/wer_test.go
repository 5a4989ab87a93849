package wer

import (
	"strings"
	"testing"
)

func TestCompare(t *testing.T) {
	cases := []struct {
		ref, hyp      string
		sub, del, ins int
	}{
		{"a b c", "a b c", 0, 0, 0},
		{"a b c", "a x c", 1, 0, 0},
		{"a b c", "a c", 0, 1, 0},
		{"a b c", "a b c d", 0, 0, 1},
		{"a b c", "", 0, 3, 0},
		{"", "a", 0, 0, 1},
		{"the cat sat on the mat", "the cat sat on mat", 0, 1, 0},
		{"he was not an ill disposed young man", "he was not an illness those young man", 2, 0, 0},
	}
	for _, c := range cases {
		got := Compare(Words(c.ref), Words(c.hyp))
		if got.Sub != c.sub || got.Del != c.del || got.Ins != c.ins {
			t.Errorf("%q vs %q: got %+v", c.ref, c.hyp, got)
		}
	}
	if r := Compare(Words("a b c d"), Words("a x c")).Rate(); r != 0.5 {
		t.Errorf("rate %v", r)
	}
}

func TestWordsNormalises(t *testing.T) {
	cases := map[string]string{
		"He was not an ill-disposed young man,": "he was not an ill disposed young man",
		"And Mr. John Dashwood":                 "and mister john dashwood",
		"Go forward ten metres.":                "go forward ten meters",
		"Go forward 10 meters":                  "go forward ten meters",
		"Call 999 now! There’s a fire at 42":    "call nine nine nine now there's a fire at forty two",
		"  ":                                    "",
		"<s> a b </s>":                          "s a b s",
	}
	for in, want := range cases {
		if got := strings.Join(Words(in), " "); got != want {
			t.Errorf("Words(%q) = %q, want %q", in, got, want)
		}
	}
}
