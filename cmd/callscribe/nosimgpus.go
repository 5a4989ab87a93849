//go:build !simgpus

package main

import (
	"fmt"

	"github.com/callscribe/callscribe/agent/gpu"
)

// simulatedGPUs refuses: the product binary has no simulated GPUs (go-nvml's
// mock stays out of it). A development build has them (simgpus.go).
func simulatedGPUs(kind string) (gpu.Collector, error) {
	return nil, fmt.Errorf("simulated GPUs (%q) need a development build: go build -tags simgpus ./cmd/callscribe (make build-dev)", kind)
}
