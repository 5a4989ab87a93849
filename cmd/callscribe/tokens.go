package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/internal/auth"
)

// cmdToken manages credentials on a running coordinator (operator role):
// `token add --role ROLE --name NAME` prints a new token, `token list`,
// `token revoke --name NAME`.
func cmdToken(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) < 1 {
		fmt.Fprintln(stderr, "usage: callscribe token add|list|revoke [--server URL] [--token OPERATOR_TOKEN] [--ca FILE] …")
		return errUsage
	}
	op := args[0]
	fs := flag.NewFlagSet("token "+op, flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := addAPIFlags(fs)
	role := fs.String("role", "", "console, supervisor or operator (add)")
	name := fs.String("name", "", "the credential's name: for a console, its console id (add, revoke)")
	asJSON := fs.Bool("json", false, "print JSON (list)")
	if err := fs.Parse(args[1:]); err != nil {
		return errUsage
	}
	switch op {
	case "add":
		if *name == "" || !auth.Role(*role).Valid() {
			fmt.Fprintln(stderr, "usage: callscribe token add --role console|supervisor|operator --name NAME")
			return errUsage
		}
		body, err := api.call(ctx, http.MethodPost, "/v1/tokens", coordinator.TokenRequest{Name: *name, Role: auth.Role(*role)})
		if err != nil {
			return fmt.Errorf("token add: %w", err)
		}
		var tr coordinator.TokenResponse
		if err := json.Unmarshal(body, &tr); err != nil || tr.Token == "" {
			return errors.New("token add: the coordinator's answer holds no token")
		}
		// The token alone on stdout, so that it can be captured; it is
		// shown this once (the coordinator keeps only its hash).
		fmt.Fprintln(stdout, tr.Token)
		fmt.Fprintf(stderr, "%s %q added (id %s): keep the token above, it is not shown again\n", tr.Credential.Role, tr.Credential.Name, tr.Credential.ID)
		return nil
	case "list":
		body, err := api.call(ctx, http.MethodGet, "/v1/tokens", nil)
		if err != nil {
			return fmt.Errorf("token list: %w", err)
		}
		if *asJSON {
			_, err := stdout.Write(body)
			return err
		}
		var cs []auth.Credential
		if err := json.Unmarshal(body, &cs); err != nil {
			return fmt.Errorf("token list: bad answer: %w", err)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tID\tSOURCE\tCREATED\tSTATE")
		for _, c := range cs {
			state, created := "active", "-"
			if c.Revoked != nil {
				state = "revoked " + c.Revoked.Local().Format(time.DateTime)
			}
			if !c.Created.IsZero() {
				created = c.Created.Local().Format(time.DateTime)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, c.Role, c.ID, c.Source, created, state)
		}
		return tw.Flush()
	case "revoke":
		if *name == "" {
			fmt.Fprintln(stderr, "usage: callscribe token revoke --name NAME")
			return errUsage
		}
		body, err := api.call(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(*name), nil)
		if err != nil {
			return fmt.Errorf("token revoke: %w", err)
		}
		var out struct {
			Revoked []auth.Credential `json:"revoked"`
		}
		_ = json.Unmarshal(body, &out)
		for _, c := range out.Revoked {
			fmt.Fprintf(stdout, "revoked %s %q (%s, id %s): its live sessions are ended\n", c.Role, c.Name, c.Source, c.ID)
		}
		return nil
	}
	fmt.Fprintln(stderr, "usage: callscribe token add|list|revoke")
	return errUsage
}
