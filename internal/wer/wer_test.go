package wer

import "testing"

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
