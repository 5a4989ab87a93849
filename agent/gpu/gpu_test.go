package gpu

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/callscribe/callscribe/agent/gpu/gpusim"
)

func TestNoDriverIsReported(t *testing.T) {
	lib := &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }}
	_, err := New(lib)
	if !errors.Is(err, ErrNoDriver) {
		t.Fatalf("want ErrNoDriver, got %v", err)
	}
}

func TestDGXA100Inventory(t *testing.T) {
	srv, err := gpusim.New("dgxa100")
	if err != nil {
		t.Fatal(err)
	}
	srv.Set(2, 55, 71, 10<<30)
	n, err := New(srv)
	if err != nil {
		t.Fatal(err)
	}
	devs, err := n.Devices()
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 8 {
		t.Fatalf("want 8 GPUs, got %d", len(devs))
	}
	seen := map[string]bool{}
	for _, d := range devs {
		if d.UUID == "" || seen[d.UUID] {
			t.Fatalf("GPU %d: missing or duplicate UUID %q", d.Index, d.UUID)
		}
		seen[d.UUID] = true
		if d.MemTotalMB < 40000 {
			t.Fatalf("GPU %d: %d MB total, want an A100's 40 GB", d.Index, d.MemTotalMB)
		}
		if !d.Healthy {
			t.Fatalf("GPU %d unhealthy: %s", d.Index, d.Unhealthy)
		}
	}
	n.SetHealth(devs[3].UUID, "xid 79: fallen off the bus")
	devs, _ = n.Devices()
	if devs[3].Healthy || devs[3].Unhealthy == "" {
		t.Fatalf("GPU 3 should be unhealthy: %+v", devs[3])
	}
	n.SetHealth(devs[3].UUID, "")
	devs, _ = n.Devices()
	if !devs[3].Healthy {
		t.Fatalf("GPU 3 should be healthy again: %+v", devs[3])
	}
}

func TestReadingsFromPartialFake(t *testing.T) {
	dev := unsupported(&mock.Device{
		GetUUIDFunc: func() (string, nvml.Return) { return "GPU-1234", nvml.SUCCESS },
		GetNameFunc: func() (string, nvml.Return) { return "NVIDIA L4", nvml.SUCCESS },
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			return nvml.Memory{Total: 24 << 30, Used: 4 << 30, Free: 20 << 30}, nvml.SUCCESS
		},
		GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: 37}, nvml.SUCCESS
		},
		GetTemperatureFunc:     func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 61, nvml.SUCCESS },
		GetPowerUsageFunc:      func() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED },
		GetPersistenceModeFunc: func() (nvml.EnableState, nvml.Return) { return nvml.FEATURE_ENABLED, nvml.SUCCESS },
	})
	lib := &mock.Interface{
		InitFunc:                   func() nvml.Return { return nvml.SUCCESS },
		SystemGetDriverVersionFunc: func() (string, nvml.Return) { return "550.54.15", nvml.SUCCESS },
		DeviceGetCountFunc:         func() (int, nvml.Return) { return 1, nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(int) (nvml.Device, nvml.Return) { return dev, nvml.SUCCESS },
	}
	n, err := New(lib)
	if err != nil {
		t.Fatal(err)
	}
	devs, err := n.Devices()
	if err != nil {
		t.Fatal(err)
	}
	g := devs[0]
	if g.UUID != "GPU-1234" || g.MemTotalMB != 24<<10 || g.MemFreeMB != 20<<10 || *g.UtilPct != 37 || *g.TempC != 61 || g.PowerW != nil || !*g.Persistence || g.DriverVer != "550.54.15" {
		t.Fatalf("unexpected readings: %+v", g)
	}
}

func TestSimReadingsReachTheCollector(t *testing.T) {
	srv, err := gpusim.New("dgxa100")
	if err != nil {
		t.Fatal(err)
	}
	srv.Set(2, 55, 71, 10<<30)
	n, err := New(srv)
	if err != nil {
		t.Fatal(err)
	}
	devs, _ := n.Devices()
	g := devs[2]
	if *g.UtilPct != 55 || *g.TempC != 71 || g.MemUsedMB != 10<<10 || g.MemReservedMB != 512 || g.MemFreeMB != g.MemTotalMB-g.MemReservedMB-10<<10 {
		t.Fatalf("readings not passed through: %+v", g)
	}
	if _, err := gpusim.New("nope"); err == nil {
		t.Fatal("unknown simulated server accepted")
	}
}

// unsupported fills the optional readings a partial fake leaves nil with
// ERROR_NOT_SUPPORTED, as a device without the feature answers.
func unsupported(d *mock.Device) *mock.Device {
	if d.GetMemoryInfo_v2Func == nil { // an older driver: version 1 figures only
		d.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) { return nvml.Memory_v2{}, nvml.ERROR_FUNCTION_NOT_FOUND }
	}
	if d.GetVbiosVersionFunc == nil {
		d.GetVbiosVersionFunc = func() (string, nvml.Return) { return "", nvml.ERROR_NOT_SUPPORTED }
	}
	if d.GetEccModeFunc == nil {
		d.GetEccModeFunc = func() (nvml.EnableState, nvml.EnableState, nvml.Return) { return 0, 0, nvml.ERROR_NOT_SUPPORTED }
	}
	if d.GetMigModeFunc == nil {
		d.GetMigModeFunc = func() (int, int, nvml.Return) { return 0, 0, nvml.ERROR_NOT_SUPPORTED }
	}
	if d.GetEnforcedPowerLimitFunc == nil {
		d.GetEnforcedPowerLimitFunc = func() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	}
	return d
}

func TestApplyOnSimulatedServer(t *testing.T) {
	srv, _ := gpusim.New("dgxa100")
	n, err := New(srv)
	if err != nil {
		t.Fatal(err)
	}
	devs, _ := n.Devices()
	off := false
	rep := n.Apply(devs[0].UUID, Settings{Persistence: &off, PowerLimitW: 300})
	if len(rep) != 2 {
		t.Fatalf("report %q", rep)
	}
	devs, _ = n.Devices()
	if *devs[0].Persistence || *devs[0].PowerLimitW != 300 || *devs[1].PowerLimitW != 400 {
		t.Fatalf("not applied: %+v", devs[0])
	}
	if rep := n.Apply("GPU-none", Settings{}); len(rep) != 1 {
		t.Fatalf("unknown GPU: %q", rep)
	}
}

// systemNVML opens the real driver, or skips the test where there is none.
func systemNVML(t *testing.T) *NVML {
	t.Helper()
	n, err := New(nil)
	if errors.Is(err, ErrNoDriver) {
		t.Skip("no NVIDIA driver on this machine:", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// TestSystemNVML reads the real driver where there is one (a GPU server);
// elsewhere it is skipped, since New must then report ErrNoDriver.
func TestSystemNVML(t *testing.T) {
	n := systemNVML(t)
	devs, err := n.Devices()
	if err != nil {
		t.Fatal(err)
	}
	if n.Driver() == "" || len(devs) == 0 {
		t.Fatalf("driver %q with %d GPUs", n.Driver(), len(devs))
	}
	for _, d := range devs {
		if d.UUID == "" || d.Name == "" || d.MemTotalMB == 0 || d.TempC == nil || *d.TempC > 120 || !d.Healthy {
			t.Errorf("implausible reading: %+v", d)
		}
		if sum := d.MemUsedMB + d.MemReservedMB + d.MemFreeMB; sum+2 < d.MemTotalMB || sum > d.MemTotalMB+2 {
			t.Errorf("used %d + reserved %d + free %d MB is not the total %d MB", d.MemUsedMB, d.MemReservedMB, d.MemFreeMB, d.MemTotalMB)
		}
		t.Logf("GPU %d %s %s: %d/%d MB used (%d reserved), util %v%%, %v °C, %v W (limit %v W), healthy %v", d.Index, d.Name, d.UUID, d.MemUsedMB, d.MemTotalMB, d.MemReservedMB, deref(d.UtilPct), deref(d.TempC), deref(d.PowerW), deref(d.PowerLimitW), d.Healthy)
	}
}

// TestSystemNVMLHealthEvents runs the health watcher against the real
// driver for a second: it must register for events (or say it cannot) and
// leave healthy GPUs healthy.
func TestSystemNVMLHealthEvents(t *testing.T) {
	n := systemNVML(t)
	var logs bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if err := n.WatchHealth(ctx, HealthConfig{Wait: 100 * time.Millisecond, Log: slog.New(slog.NewTextHandler(&logs, nil))}); err != nil {
		t.Fatal(err)
	}
	t.Logf("health watcher log: %q", logs.String())
	devs, err := n.Devices()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if !d.Healthy {
			t.Errorf("GPU %s unhealthy after a quiet second: %s", d.UUID, d.Unhealthy)
		}
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return "n/a"
	}
	return *p
}
