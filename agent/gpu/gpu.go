// Package gpu reads GPU inventory and telemetry through NVML. It is the only
// package that imports go-nvml; the rest of the agent sees Collector. NVML is
// loaded at run time: on a machine without the NVIDIA driver New returns
// ErrNoDriver and the agent runs CPU-only.
package gpu

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/callscribe/callscribe/proto"
)

// ErrNoDriver means NVML (the NVIDIA driver) is not installed.
var ErrNoDriver = errors.New("gpu: no NVIDIA driver (NVML not found)")

// Collector reads the GPUs of this node.
type Collector interface {
	// Devices returns every GPU with its current readings.
	Devices() ([]proto.GPU, error)
	// Driver returns the driver version.
	Driver() string
	Close() error
}

// NVML is a Collector backed by an nvml.Interface (the real library, or
// go-nvml's mock in tests).
type NVML struct {
	lib    nvml.Interface
	driver string
	mu     sync.Mutex
	health map[string]string // UUID → why unhealthy ("" = healthy)
}

var _ Collector = (*NVML)(nil)

// New initialises NVML. Pass nil to use the system library.
func New(lib nvml.Interface) (*NVML, error) {
	if lib == nil {
		lib = nvml.New()
	}
	if ret := lib.Init(); ret != nvml.SUCCESS {
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND || ret == nvml.ERROR_DRIVER_NOT_LOADED {
			return nil, fmt.Errorf("%w: %v", ErrNoDriver, ret)
		}
		return nil, fmt.Errorf("gpu: nvml init: %v", ret)
	}
	n := &NVML{lib: lib, health: map[string]string{}}
	if v, ret := lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		n.driver = v
	}
	return n, nil
}

// Driver implements Collector.
func (n *NVML) Driver() string { return n.driver }

// Close implements Collector.
func (n *NVML) Close() error {
	if ret := n.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("gpu: nvml shutdown: %v", ret)
	}
	return nil
}

// SetHealth marks a GPU unhealthy (why non-empty) or healthy again.
func (n *NVML) SetHealth(uuid, why string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.health[uuid] = why
}

// Devices implements Collector. A reading a device does not support is left
// nil; a device that fails basic queries is reported unhealthy.
func (n *NVML) Devices() ([]proto.GPU, error) {
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("gpu: device count: %v", ret)
	}
	out := make([]proto.GPU, 0, count)
	for i := range count {
		d, ret := n.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			out = append(out, proto.GPU{Index: i, Healthy: false, Unhealthy: fmt.Sprintf("handle: %v", ret)})
			continue
		}
		out = append(out, n.read(i, d))
	}
	return out, nil
}

func (n *NVML) read(i int, d nvml.Device) proto.GPU {
	g := proto.GPU{Index: i, Healthy: true, DriverVer: n.driver}
	var problems []string
	if u, ret := d.GetUUID(); ret == nvml.SUCCESS {
		g.UUID = u
	} else {
		problems = append(problems, fmt.Sprintf("uuid: %v", ret))
	}
	if s, ret := d.GetName(); ret == nvml.SUCCESS {
		g.Name = s
	}
	// Version 2 splits the driver's reservation out of "used", as
	// nvidia-smi does (an idle H100 80GB: 0 MB used, ~480 MB reserved);
	// version 1 counts it as used.
	if m, ret := d.GetMemoryInfo_v2(); ret == nvml.SUCCESS {
		g.MemTotalMB, g.MemReservedMB, g.MemUsedMB, g.MemFreeMB = m.Total>>20, m.Reserved>>20, m.Used>>20, m.Free>>20
	} else if m, ret := d.GetMemoryInfo(); ret == nvml.SUCCESS {
		g.MemTotalMB, g.MemUsedMB, g.MemFreeMB = m.Total>>20, m.Used>>20, m.Free>>20
	} else if ret != nvml.ERROR_NOT_SUPPORTED {
		problems = append(problems, fmt.Sprintf("memory: %v", ret))
	}
	if u, ret := d.GetUtilizationRates(); ret == nvml.SUCCESS {
		v := u.Gpu
		g.UtilPct = &v
	}
	if t, ret := d.GetTemperature(nvml.TEMPERATURE_GPU); ret == nvml.SUCCESS {
		v := t
		g.TempC = &v
	}
	if p, ret := d.GetPowerUsage(); ret == nvml.SUCCESS {
		v := float64(p) / 1000
		g.PowerW = &v
	}
	if pm, ret := d.GetPersistenceMode(); ret == nvml.SUCCESS {
		v := pm == nvml.FEATURE_ENABLED
		g.Persistence = &v
	}
	if v, ret := d.GetVbiosVersion(); ret == nvml.SUCCESS {
		g.VBIOS = v
	}
	if cur, _, ret := d.GetEccMode(); ret == nvml.SUCCESS {
		v := cur == nvml.FEATURE_ENABLED
		g.ECC = &v
	}
	if cur, _, ret := d.GetMigMode(); ret == nvml.SUCCESS {
		v := cur == nvml.DEVICE_MIG_ENABLE
		g.MIG = &v
	}
	if mw, ret := d.GetEnforcedPowerLimit(); ret == nvml.SUCCESS {
		v := float64(mw) / 1000
		g.PowerLimitW = &v
	}
	n.mu.Lock()
	why := n.health[g.UUID]
	n.mu.Unlock()
	if why != "" {
		problems = append(problems, why)
	}
	if len(problems) > 0 {
		g.Healthy, g.Unhealthy = false, strings.Join(problems, "; ")
	}
	return g
}

// Settings are what Apply may change on a GPU.
type Settings struct {
	Persistence *bool
	PowerLimitW int // 0: leave as is
}

// Apply sets what NVML can set (persistence mode, power limit) on the GPU
// with the given UUID and returns one line per change or failure.
func (n *NVML) Apply(uuid string, want Settings) []string {
	d, ret := n.lib.DeviceGetHandleByUUID(uuid)
	if ret != nvml.SUCCESS {
		return []string{fmt.Sprintf("%s: not found: %v", uuid, ret)}
	}
	var out []string
	if want.Persistence != nil {
		mode := nvml.FEATURE_DISABLED
		if *want.Persistence {
			mode = nvml.FEATURE_ENABLED
		}
		if ret := d.SetPersistenceMode(mode); ret != nvml.SUCCESS {
			out = append(out, fmt.Sprintf("%s: persistence mode not set: %v", uuid, ret))
		} else {
			out = append(out, fmt.Sprintf("%s: persistence mode set to %v", uuid, *want.Persistence))
		}
	}
	if want.PowerLimitW > 0 {
		if ret := d.SetPowerManagementLimit(uint32(want.PowerLimitW * 1000)); ret != nvml.SUCCESS {
			out = append(out, fmt.Sprintf("%s: power limit not set to %d W: %v", uuid, want.PowerLimitW, ret))
		} else {
			out = append(out, fmt.Sprintf("%s: power limit set to %d W", uuid, want.PowerLimitW))
		}
	}
	return out
}
