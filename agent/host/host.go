// Package host samples this machine's load through gopsutil: CPU, memory and
// the disk that holds the agent's state. host.Info is slow (~18 ms), so it is
// read once; a periodic sample costs well under a millisecond.
package host

import (
	"context"
	"os"
	"path/filepath"
	"runtime"

	"github.com/callscribe/callscribe/proto"
	"github.com/shirou/gopsutil/v3/cpu"
	"github.com/shirou/gopsutil/v3/disk"
	"github.com/shirou/gopsutil/v3/load"
	"github.com/shirou/gopsutil/v3/mem"
)

// Sampler reads host load.
type Sampler struct {
	hostname string
	cpus     int
	diskPath string
}

// New returns a sampler reporting free space of the filesystem holding diskPath.
func New(diskPath string) *Sampler {
	h, _ := os.Hostname()
	n, err := cpu.Counts(true)
	if err != nil || n == 0 {
		n = runtime.NumCPU()
	}
	if diskPath == "" {
		diskPath = "/"
	}
	return &Sampler{hostname: h, cpus: n, diskPath: diskPath}
}

// Sample returns the current readings; readings that fail are left zero.
func (s *Sampler) Sample(ctx context.Context) proto.Host {
	h := proto.Host{Hostname: s.hostname, CPUs: s.cpus}
	if p, err := cpu.PercentWithContext(ctx, 0, false); err == nil && len(p) > 0 {
		h.CPUPct = p[0]
	}
	if l, err := load.AvgWithContext(ctx); err == nil {
		h.Load1 = l.Load1
	}
	if m, err := mem.VirtualMemoryWithContext(ctx); err == nil {
		h.MemTotalMB, h.MemAvailMB = m.Total>>20, m.Available>>20
	}
	// The state directory may not exist yet: report the filesystem it
	// will be created on.
	for p := s.diskPath; ; p = filepath.Dir(p) {
		if d, err := disk.UsageWithContext(ctx, p); err == nil {
			h.DiskTotalMB, h.DiskFreeMB = d.Total>>20, d.Free>>20
			break
		}
		if p == filepath.Dir(p) {
			break
		}
	}
	return h
}
