package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/callscribe/callscribe/coordinator"
)

// cmdCluster manages the cluster of coordinators:
//
//	callscribe cluster status                 this member's view
//	callscribe cluster init                   start a cluster with this member (or make a new join token)
//	callscribe cluster join --leader URL --join-token T
//	callscribe cluster remove NAME
func cmdCluster(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) < 1 {
		fmt.Fprintln(stderr, "usage: callscribe cluster status|init|join|remove [flags]")
		return errUsage
	}
	sub := args[0]
	fs := flag.NewFlagSet("cluster "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := addAPIFlags(fs)
	asJSON := fs.Bool("json", false, "status: print JSON")
	leader := fs.String("leader", "", "join: the HTTP address of a member of the cluster to join (http[s]://HOST:PORT)")
	joinToken := fs.String("join-token", "", "join: the token `cluster init` printed on a member")
	if err := fs.Parse(args[1:]); err != nil {
		return errUsage
	}
	switch sub {
	case "status":
		b, err := api.call(ctx, http.MethodGet, "/v1/cluster", nil)
		if err != nil {
			return err
		}
		if *asJSON {
			_, err := stdout.Write(b)
			return err
		}
		return printCluster(stdout, b)
	case "init":
		// A member waiting for a cluster starts one; a member of a cluster
		// (or once started) hands out a new join token.
		var ans coordinator.JoinAnswer
		deadline := time.Now().Add(30 * time.Second)
		for {
			b, err := api.call(ctx, http.MethodPost, "/v1/cluster/init", nil)
			if err == nil {
				if err := json.Unmarshal(b, &ans); err != nil {
					return fmt.Errorf("cluster init: %w", err)
				}
				break
			}
			if time.Now().After(deadline) || !retryable(err) {
				return err
			}
			select {
			case <-time.After(500 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		fmt.Fprintf(stdout, "cluster %s (leader %s)\njoin token: %s\n", ans.Cluster, ans.Leader, ans.Token)
		fmt.Fprintln(stdout, "on each new member: callscribe cluster join --leader URL-OF-A-MEMBER --join-token TOKEN")
		return nil
	case "join":
		if *leader == "" || *joinToken == "" {
			fmt.Fprintln(stderr, "cluster join: --leader and --join-token are required")
			return errUsage
		}
		// This member's addresses, from itself.
		b, err := api.call(ctx, http.MethodGet, "/v1/cluster", nil)
		if err != nil {
			return fmt.Errorf("cluster join: this member: %w", err)
		}
		var self coordinator.ClusterView
		if err := json.Unmarshal(b, &self); err != nil {
			return fmt.Errorf("cluster join: this member: %w", err)
		}
		if len(self.Members) > 0 || self.Cluster != "" {
			return fmt.Errorf("cluster join: this member already belongs to cluster %s; a member joins with an empty data directory", self.Cluster)
		}
		if self.Raft == "" || self.QUIC == "" || self.HTTP == "" {
			return errors.New("cluster join: this member does not know its own addresses: set cluster_listen, and cluster_quic and cluster_http when quic and http listen on all interfaces")
		}
		lc, err := newAPIClient(*leader, *api.ca, *joinToken)
		if err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		resp, err := lc.do(rctx, http.MethodPost, "/v1/cluster/members", coordinator.JoinRequest{Name: self.Self, Raft: self.Raft, QUIC: self.QUIC, HTTP: self.HTTP})
		if err != nil {
			return fmt.Errorf("cluster join: %w", err)
		}
		defer resp.Body.Close()
		var ans coordinator.JoinAnswer
		_ = json.NewDecoder(resp.Body).Decode(&ans)
		fmt.Fprintf(stdout, "%s joined cluster %s (leader %s); it catches up from the leader now\n", self.Self, ans.Cluster, ans.Leader)
		return nil
	case "remove":
		if fs.NArg() != 1 {
			fmt.Fprintln(stderr, "usage: callscribe cluster remove NAME")
			return errUsage
		}
		if _, err := api.call(ctx, http.MethodDelete, "/v1/cluster/members/"+fs.Arg(0), nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed %s from the cluster\n", fs.Arg(0))
		return nil
	}
	fmt.Fprintln(stderr, "usage: callscribe cluster status|init|join|remove [flags]")
	return errUsage
}

// retryable: a member answering while it becomes the leader. Its switch
// from follower to leader closes the connections it had (a request sent
// then sees a reset or an early EOF) before the leader listens (refused).
func retryable(err error) bool {
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "503") || strings.Contains(s, "connection refused") || strings.Contains(s, "connection reset")
}

func printCluster(w io.Writer, b []byte) error {
	var v coordinator.ClusterView
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	s := v.Status
	fmt.Fprintf(w, "cluster %s; this member %s is %s; leader %s; term %d\n", orDash(v.Cluster), v.Self, s.State, orDash(s.Leader), s.Term)
	fmt.Fprintf(w, "log: last %d, committed %d, applied %d, %d bytes; %d leader changes seen\n", s.LastIndex, s.CommitIndex, s.AppliedIndex, s.LogBytes, s.LeaderChanges)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tCLUSTER ADDRESS\tVOTER\tQUIC\tHTTP")
	for _, m := range s.Members {
		q, h := "-", "-"
		for _, x := range v.Members {
			if x.Name == m.Name {
				q, h = orDash(x.QUIC), orDash(x.HTTP)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\n", m.Name, m.Address, m.Voter, q, h)
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
