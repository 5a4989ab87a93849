package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"github.com/callscribe/callscribe/coordinator/store"
)

// cmdStore checks the coordinator's store.
func cmdStore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := func() error {
		fmt.Fprintln(stderr, "usage: callscribe store check [--json] DIR   (DIR: the store directory, or the data directory holding store/)")
		return errUsage
	}
	if len(args) < 1 {
		return usage()
	}
	switch args[0] {
	case "check":
		fs := flag.NewFlagSet("store check", flag.ContinueOnError)
		fs.SetOutput(stderr)
		asJSON := fs.Bool("json", false, "print the report as JSON")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 1 {
			return usage()
		}
		r, err := store.Check(fs.Arg(0))
		if err != nil {
			return err
		}
		if *asJSON {
			e := json.NewEncoder(stdout)
			e.SetIndent("", "  ")
			if err := e.Encode(struct {
				*store.Report
				Intact  bool   `json:"intact"`
				Verdict string `json:"verdict"`
			}{r, r.Intact(), r.Verdict()}); err != nil {
				return err
			}
		} else {
			r.WriteText(stdout)
		}
		if !r.Intact() {
			return fmt.Errorf("%s is damaged (%d problem(s)); see the report above", r.Dir, len(r.Problems))
		}
		return nil
	}
	fmt.Fprintf(stderr, "callscribe store: unknown subcommand %q\n", args[0])
	return usage()
}
