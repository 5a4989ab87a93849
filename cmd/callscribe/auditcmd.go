package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/internal/audit"
)

// errChainBroken is the verdict of `audit --verify` on a broken chain.
var errChainBroken = errors.New("audit chain broken")

// cmdAudit prints the coordinator's audit trail, or verifies its chain.
func cmdAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	flags := addAPIFlags(fs)
	after := fs.Uint64("after", 0, "print entries after this seq")
	asJSON := fs.Bool("json", false, "print entries as JSON lines")
	verify := fs.Bool("verify", false, "page through the whole trail from seq 1 and verify its hash chain")
	expect := fs.String("expect", "", "with --verify: SEQ:HASH of an entry recorded earlier (a head printed before, or the last one exported) that must still be there")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return errUsage
	}
	var want *audit.Head
	if *expect != "" {
		s, h, ok := strings.Cut(*expect, ":")
		n, err := strconv.ParseUint(s, 10, 64)
		if !ok || err != nil || len(h) != 64 {
			fmt.Fprintln(stderr, "audit: --expect is SEQ:HASH (a seq and 64 hex digits)")
			return errUsage
		}
		want = &audit.Head{Seq: n, Hash: strings.ToLower(h)}
	}
	if *verify && *after != 0 {
		fmt.Fprintln(stderr, "audit: --verify reads from seq 1; it takes no --after")
		return errUsage
	}
	api, err := flags.client()
	if err != nil {
		return err
	}
	chain := &audit.Chain{}
	var tw *tabwriter.Writer
	if !*verify && !*asJSON {
		tw = tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tTIME\tACTOR\tROLE\tREMOTE\tACTION\tTARGET\tOUTCOME\tDETAIL")
	}
	enc := json.NewEncoder(stdout)
	cur, found, retries := *after, false, 0
	var head audit.Head
	for {
		var page coordinator.AuditPage
		body, err := api.get(ctx, "/v1/audit?after="+strconv.FormatUint(cur, 10)+"&limit=1000")
		if err != nil {
			return err
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return fmt.Errorf("bad audit document: %w", err)
		}
		head = page.Head
		if len(page.Entries) == 0 {
			if head.Seq > cur && retries < 3 { // appended while we read
				retries++
				continue
			}
			break
		}
		for _, e := range page.Entries {
			switch {
			case *verify:
				if err := chain.Add(e); err != nil {
					fmt.Fprintf(stdout, "audit chain BROKEN after %d intact entries: %v\n", chain.Len(), err)
					return errChainBroken
				}
				if want != nil && e.Seq == want.Seq {
					if e.Hash != want.Hash {
						fmt.Fprintf(stdout, "audit chain BROKEN: entry %d has hash %s, not the %s recorded earlier: the log was rewritten from there on\n", e.Seq, e.Hash, want.Hash)
						return errChainBroken
					}
					found = true
				}
			case *asJSON:
				if err := enc.Encode(e); err != nil {
					return err
				}
			default:
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Local().Format(time.DateTime), printable(e.Actor), dash(printable(e.Role)), dash(printable(e.Remote)), printable(e.Action), dash(printable(e.Target)), printable(e.Outcome), printable(e.Detail))
			}
			if e.Seq <= cur {
				return fmt.Errorf("the coordinator sent seq %d after asking for entries after %d", e.Seq, cur)
			}
			cur = e.Seq
		}
	}
	if tw != nil {
		return tw.Flush()
	}
	if !*verify {
		return nil
	}
	last := chain.Head()
	if last.Seq == 0 {
		last.Hash = audit.ZeroHash
	}
	switch {
	case head.Seq > last.Seq || (head.Seq == last.Seq && head.Hash != last.Hash):
		fmt.Fprintf(stdout, "audit chain BROKEN: the coordinator's head is %d %s, but the entries end at %d %s\n", head.Seq, head.Hash, last.Seq, last.Hash)
		return errChainBroken
	case want != nil && !found:
		fmt.Fprintf(stdout, "audit chain BROKEN: entry %d, recorded earlier with hash %s, is no longer there (the log ends at %d): newest entries were removed\n", want.Seq, want.Hash, last.Seq)
		return errChainBroken
	}
	fmt.Fprintf(stdout, "audit chain intact: %d entries, head %d %s\n", chain.Len(), last.Seq, last.Hash)
	return nil
}

// printable shows a field on one terminal line: control characters (a
// newline, an escape sequence) are quoted, so an entry cannot forge
// another line of the table.
func printable(s string) string {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			q := strconv.QuoteToASCII(s)
			return q[1 : len(q)-1]
		}
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
