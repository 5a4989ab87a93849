package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"text/tabwriter"
	"time"

	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/internal/pki"
)

// cmdStatus prints nodes, GPUs, workers and calls from a coordinator.
func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := addAPIFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	body, err := api.call(ctx, http.MethodGet, "/v1/status", nil)
	if err != nil {
		return err
	}
	if *asJSON {
		_, err := stdout.Write(body)
		return err
	}
	var st coordinator.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("bad status document: %w", err)
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tCPUS\tCPU%\tMEM FREE\tDISK FREE\tGPUS\tLAST SEEN")
	for _, n := range st.Nodes {
		state := "up"
		if n.Lost {
			state = "LOST"
		}
		gpus := "cpu-only"
		if !n.CPUOnly {
			gpus = fmt.Sprint(len(n.GPUs))
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%d MB\t%d MB\t%s\t%s ago\n", n.ID, state, n.Host.CPUs, n.Host.CPUPct, n.Host.MemAvailMB, n.Host.DiskFreeMB, gpus, time.Since(n.LastSeen).Round(time.Millisecond))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "GPU\tNODE\tNAME\tMEM USED/TOTAL\tUTIL\tTEMP\tPOWER\tHEALTH")
	for _, n := range st.Nodes {
		for _, g := range n.GPUs {
			health := "ok"
			switch {
			case !g.Healthy:
				health = "UNHEALTHY: " + g.Unhealthy
			case g.Excluded != "":
				health = "EXCLUDED: " + g.Excluded
			}
			fmt.Fprintf(tw, "%d %s\t%s\t%s\t%d/%d MB\t%s\t%s\t%s\t%s\n", g.Index, short(g.UUID), n.ID, g.Name, g.MemUsedMB, g.MemTotalMB, opt(g.UtilPct, "%"), opt(g.TempC, "°C"), optf(g.PowerW, "W"), health)
		}
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "WORKER\tNODE\tMODEL\tSLOTS USED\tPID\tUP")
	for _, w := range st.Workers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%d\t%s\n", w.ID, w.Node, w.Model, w.Used, w.Slots, w.PID, time.Since(w.Since).Round(time.Second))
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "live calls: %d\tfinalised: %d\tfailovers: %d\tack p99: %.2f ms\n", st.Calls.Live, st.Stats.Finalised, st.Stats.Failovers, st.Stats.Ack.P99MS)
	if err := tw.Flush(); err != nil {
		return err
	}
	if st.Cluster != nil {
		fmt.Fprintln(stdout)
		b, _ := json.Marshal(st.Cluster)
		return printCluster(stdout, b)
	}
	return nil
}

func opt(v *uint32, unit string) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%d%s", *v, unit)
}

func optf(v *float64, unit string) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.0f%s", *v, unit)
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// cmdNode drains or undrains a node: `callscribe node drain NODE`.
func cmdNode(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := addAPIFlags(fs)
	if len(args) < 2 || (args[0] != "drain" && args[0] != "undrain") {
		fmt.Fprintln(stderr, "usage: callscribe node drain|undrain NODE [--server URL] [--token TOKEN | --token-file FILE]")
		return errUsage
	}
	op, node := args[0], args[1]
	if err := fs.Parse(args[2:]); err != nil {
		return errUsage
	}
	if _, err := api.call(ctx, http.MethodPost, "/v1/nodes/"+node+"/"+op, nil); err != nil {
		return fmt.Errorf("%s %s: %w", op, node, err)
	}
	if op == "drain" {
		fmt.Fprintf(stdout, "node %s draining: its calls move to other workers and resume; no new calls go there\n", node)
	} else {
		fmt.Fprintf(stdout, "node %s back in service\n", node)
	}
	return nil
}

// apiFlags are the flags of every subcommand that talks to a coordinator's
// HTTP API, and the credential it sends.
type apiFlags struct {
	server, ca, token, tokenFile *string
}

// defaultOperatorToken is where the packaged service keeps its operator
// token (dev: DIR/operator.token).
const defaultOperatorToken = "/var/lib/callscribe/operator.token"

func addAPIFlags(fs *flag.FlagSet) *apiFlags {
	return &apiFlags{
		server:    fs.String("server", "http://127.0.0.1:8080", "coordinator HTTP address (https://… when http_tls is on), or a comma-separated list of coordinators (a cluster: requests go to its leader)"),
		ca:        fs.String("ca", "", "CA to trust for an https:// coordinator"),
		token:     fs.String("token", "", "credential to send (default: $CALLSCRIBE_TOKEN, else --token-file; a supervisor's for verify)"),
		tokenFile: fs.String("token-file", "", "file holding the credential (default: $CALLSCRIBE_TOKEN_FILE, else "+defaultOperatorToken+" when readable)"),
	}
}

// credential is the token to send: --token, $CALLSCRIBE_TOKEN, --token-file,
// $CALLSCRIBE_TOKEN_FILE, then the packaged operator token.
func (a *apiFlags) credential() (string, error) {
	if *a.token != "" {
		return *a.token, nil
	}
	if t := os.Getenv("CALLSCRIBE_TOKEN"); t != "" {
		return t, nil
	}
	file := *a.tokenFile
	if file == "" {
		file = os.Getenv("CALLSCRIBE_TOKEN_FILE")
	}
	if file == "" {
		if _, err := os.Stat(defaultOperatorToken); err != nil {
			return "", nil
		}
		file = defaultOperatorToken
	}
	return pki.ReadToken(file)
}
