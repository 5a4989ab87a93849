package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// productForbidden are import paths (prefixes) the product binary must not
// link: the benchmark's brokers and charts, and simulated GPUs.
var productForbidden = []string{
	"github.com/nats-io/",
	"github.com/rabbitmq/",
	"golang.org/x/image/",
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock",
	"github.com/callscribe/callscribe/bench/brokers",
	"github.com/callscribe/callscribe/bench/plot",
	"github.com/callscribe/callscribe/agent/gpu/gpusim",
}

// deps lists the packages this binary links, as go build would with tags.
func deps(t *testing.T, tags string) []string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not on PATH: %v", err)
	}
	cmd := exec.Command(goBin, "list", "-deps", "-tags", tags, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1") // as make build
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	return strings.Fields(string(out))
}

func forbidden(pkgs []string) []string {
	var bad []string
	for _, p := range pkgs {
		for _, f := range productForbidden {
			if strings.HasPrefix(p, f) {
				bad = append(bad, p)
				break
			}
		}
	}
	return bad
}

// TestProductLinksNoBenchOrSimulation: the binary that runs as the
// coordinator and agent services links no message broker client, no
// plotting and no simulated GPU; a development build (-tags simgpus) does
// link the simulator, which shows the check sees what it looks for.
func TestProductLinksNoBenchOrSimulation(t *testing.T) {
	if bad := forbidden(deps(t, "")); len(bad) > 0 {
		t.Errorf("the product binary links %v: benchmark and simulation code belongs in bench/cmd/benchreport or a -tags simgpus build", bad)
	}
	dev := forbidden(deps(t, "simgpus"))
	if len(dev) == 0 || !strings.Contains(strings.Join(dev, " "), "gpusim") {
		t.Errorf("a -tags simgpus build links %v, want the GPU simulator among them", dev)
	}
}
