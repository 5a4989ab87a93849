package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestReplaceSection(t *testing.T) {
	doc := "# r\n\n## A\n\ntext\n\n### Old one (x)\n\nold\n\n### Next\n\nnext\n"
	got := replaceSection(doc, "### Old one", "### Next", "### Old one (y)\n\nnew\n")
	if want := "# r\n\n## A\n\ntext\n\n### Old one (y)\n\nnew\n\n### Next\n\nnext\n"; got != want {
		t.Fatalf("replaced:\n%q\nwant\n%q", got, want)
	}
	// Absent: inserted before the next section named, or at the end.
	doc = "## A\n\ntext\n\n### Next\n\nnext\n"
	if got, want := replaceSection(doc, "### Old one", "### Next", "### Old one\n\nnew"), "## A\n\ntext\n\n### Old one\n\nnew\n\n### Next\n\nnext\n"; got != want {
		t.Fatalf("inserted:\n%q\nwant\n%q", got, want)
	}
	if got, want := replaceSection("## A\n\ntext\n", "### Old one", "### Next", "### Old one\n\nnew"), "## A\n\ntext\n\n### Old one\n\nnew\n\n"; got != want {
		t.Fatalf("appended:\n%q\nwant\n%q", got, want)
	}
	// The last section of the document.
	if got, want := replaceSection("## A\n\n### Old one\n\nold\n", "### Old one", "### Next", "### Old one\n\nnew"), "## A\n\n### Old one\n\nnew\n\n"; got != want {
		t.Fatalf("replaced at the end:\n%q\nwant\n%q", got, want)
	}
}

// The comparison, in tiny turns in this process (the relay adding the
// delay), writes a row per store and number of calls and every ratio.
func TestClusterTurnsWritesEveryRow(t *testing.T) {
	var b strings.Builder
	w := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	log := func(f string, a ...any) { t.Logf(f, a...) }
	err := clusterTurns(context.Background(), w, log, t.TempDir(), 500*time.Millisecond, clusterOpts{delay: time.Millisecond, link: "auto", turns: 1}, false, "a test")
	if err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, calls := range []string{"| 1 | ", "| 200 | "} {
		for _, store := range []string{"floor", "Badger alone", "single coordinator", "3-coordinator cluster"} {
			if !strings.Contains(out, calls+store) {
				t.Errorf("no row %s%s in\n%s", calls, store, out)
			}
		}
	}
	for _, r := range []string{"1 call: cluster / single coordinator", "200 calls: single coordinator / floor", "relay", "leadership changed", "Where a replicated commit"} {
		if !strings.Contains(out, r) {
			t.Errorf("no %q in\n%s", r, out)
		}
	}
	rows := 0
	for _, l := range strings.Split(out, "\n") {
		f := strings.Split(l, " | ")
		if len(f) < 5 || (f[0] != "| 1" && f[0] != "| 200") {
			continue
		}
		rows++
		if f[2] == "0" || f[3] != "0" {
			t.Errorf("acks %s, errors %s: %s", f[2], f[3], l)
		}
	}
	if rows != 8 {
		t.Errorf("%d rows", rows)
	}
}
