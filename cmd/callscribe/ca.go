package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/callscribe/callscribe/internal/pki"
)

// cmdCA manages the appliance's local certificate authority:
//
//	callscribe ca init  --dir DIR
//	callscribe ca issue --dir DIR --name NAME --kind node|console|coordinator --out PREFIX
func cmdCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) < 1 || (args[0] != "init" && args[0] != "issue") {
		fmt.Fprintln(stderr, "usage: callscribe ca init --dir DIR | callscribe ca issue --dir DIR --name NAME --kind node|console|coordinator --out PREFIX")
		return errUsage
	}
	fs := flag.NewFlagSet("ca", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "/var/lib/callscribe", "the coordinator's state directory (holds ca.pem and ca-key.pem)")
	name := fs.String("name", "", "certificate name (the node id or console id)")
	kind := fs.String("kind", pki.KindNode, "node, console or coordinator (a member of a coordinator cluster)")
	var hosts stringList
	fs.Var(&hosts, "host", "with --kind coordinator: an address of the member (repeat)")
	out := fs.String("out", "", "write PREFIX.pem and PREFIX-key.pem")
	if err := fs.Parse(args[1:]); err != nil {
		return errUsage
	}
	if args[0] == "init" {
		ca, _, err := pki.EnsureCA(*dir)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "CA %q in %s (valid until %s)\n", ca.Subject.CommonName, filepath.Join(*dir, pki.CAFile), ca.NotAfter.Format("2006-01-02"))
		return nil
	}
	if *name == "" || *out == "" {
		fmt.Fprintln(stderr, "ca issue: --name and --out are required")
		return errUsage
	}
	ca, key, err := pki.LoadCA(*dir)
	if err != nil {
		return fmt.Errorf("no CA in %s (callscribe ca init): %w", *dir, err)
	}
	if *kind == pki.KindCoordinator {
		err = pki.IssueCoordinator(ca, key, *name, hosts, *out+".pem", *out+"-key.pem")
	} else {
		err = pki.IssueClient(ca, key, *name, *kind, *out+".pem", *out+"-key.pem")
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "issued %s certificate %q: %s.pem, %s-key.pem (key 0600)\n", *kind, *name, *out, *out)
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}
