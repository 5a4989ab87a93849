// Package gpusim is a simulated GPU server built on go-nvml's mock package,
// for tests and for development builds (cmd/callscribe built with
// -tags simgpus: --sim-gpus). The product binary does not link it.
package gpusim

import (
	"fmt"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
)

// Server is a simulated GPU server, an nvml.Interface for gpu.New. Its
// telemetry can be set.
type Server struct {
	*dgxa100.Server
	mu    sync.Mutex
	util  []uint32
	temp  []uint32
	power []uint32 // mW
	used  []uint64 // bytes
}

// Kinds lists the inventories New knows.
var Kinds = []string{"dgxa100"}

// New returns a simulated server: "dgxa100" is eight A100-40GB GPUs.
func New(kind string) (*Server, error) {
	if kind != "dgxa100" {
		return nil, fmt.Errorf("gpusim: unknown simulated server %q (known: %v)", kind, Kinds)
	}
	s := &Server{Server: dgxa100.New()}
	// The simulator has no event support: health comes from readings.
	s.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return nil, nvml.ERROR_NOT_SUPPORTED }
	n := len(s.Devices)
	s.util, s.temp, s.power, s.used = make([]uint32, n), make([]uint32, n), make([]uint32, n), make([]uint64, n)
	for i, d := range s.Devices {
		s.temp[i], s.power[i] = 35, 60000
		md := &d.(*dgxa100.Device).Device
		s.fill(i, md)
	}
	return s, nil
}

func (s *Server) fill(i int, d *mock.Device) {
	total := uint64(40 << 30)
	if m, ret := d.GetMemoryInfo(); ret == nvml.SUCCESS {
		total = m.Total
	}
	d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return nvml.Memory{Total: total, Used: s.used[i], Free: total - s.used[i]}, nvml.SUCCESS
	}
	const reserved = 512 << 20 // what a driver holds back on an A100
	d.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return nvml.Memory_v2{Total: total, Reserved: reserved, Used: s.used[i], Free: total - reserved - s.used[i]}, nvml.SUCCESS
	}
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return nvml.Utilization{Gpu: s.util[i]}, nvml.SUCCESS
	}
	d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.temp[i], nvml.SUCCESS
	}
	d.GetPowerUsageFunc = func() (uint32, nvml.Return) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.power[i], nvml.SUCCESS
	}
	persist, limit := nvml.FEATURE_ENABLED, uint32(400000)
	d.GetPersistenceModeFunc = func() (nvml.EnableState, nvml.Return) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return persist, nvml.SUCCESS
	}
	d.SetPersistenceModeFunc = func(m nvml.EnableState) nvml.Return {
		s.mu.Lock()
		defer s.mu.Unlock()
		persist = m
		return nvml.SUCCESS
	}
	d.GetVbiosVersionFunc = func() (string, nvml.Return) { return "92.00.25.00.08", nvml.SUCCESS }
	d.GetEccModeFunc = func() (nvml.EnableState, nvml.EnableState, nvml.Return) {
		return nvml.FEATURE_ENABLED, nvml.FEATURE_ENABLED, nvml.SUCCESS
	}
	d.GetEnforcedPowerLimitFunc = func() (uint32, nvml.Return) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return limit, nvml.SUCCESS
	}
	d.SetPowerManagementLimitFunc = func(mw uint32) nvml.Return {
		s.mu.Lock()
		defer s.mu.Unlock()
		limit = mw
		return nvml.SUCCESS
	}
}

// Set changes one GPU's readings.
func (s *Server) Set(i int, utilPct, tempC uint32, usedBytes uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.util[i], s.temp[i], s.used[i] = utilPct, tempC, usedBytes
}
