package models

import (
	"strings"
	"testing"
)

func TestParseVocabulary(t *testing.T) {
	ws, err := ParseVocabulary(strings.NewReader("# streets\nMotorway  M OW1 T ER0 W EY2\n\nsalbutamol S AE L B Y UW T AH M AA L\n"), "v.dict")
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 2 || ws[0].Word != "motorway" || ws[0].Phones != "M OW T ER W EY" || ws[1].Word != "salbutamol" {
		t.Fatalf("got %+v", ws)
	}
	for _, c := range []struct{ in, want string }{
		{"motorway", "v.dict:1: \"motorway\" has no pronunciation"},
		{"ok OW K EY\nbad! B AE D", "v.dict:2: \"bad!\" is not a word"},
		{"word W ER D\nother AX TH ER", "v.dict:2: \"other\": unknown phone \"AX\""},
		{"word W ER D\n\nword W ER D", "v.dict:3: \"word\" is already defined on line 1"},
	} {
		if _, err := ParseVocabulary(strings.NewReader(c.in), "v.dict"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.in, err, c.want)
		}
	}
}
