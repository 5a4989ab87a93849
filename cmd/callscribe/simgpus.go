//go:build simgpus

package main

import (
	"github.com/callscribe/callscribe/agent/gpu"
	"github.com/callscribe/callscribe/agent/gpu/gpusim"
)

// simulatedGPUs is a simulated GPU server of kind (go-nvml's mock) in place
// of NVML, for running a rack of agents on one machine. Only development
// builds (-tags simgpus) have it: the product binary links no mock.
func simulatedGPUs(kind string) (gpu.Collector, error) {
	s, err := gpusim.New(kind)
	if err != nil {
		return nil, err
	}
	return gpu.New(s)
}
