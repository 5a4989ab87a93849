package gpu

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// fakeEvents is an NVML event set fed by the test.
type fakeEvents struct {
	ch chan nvml.EventData
}

func twoGPUs(es *fakeEvents, registered *int, mu *sync.Mutex) (*mock.Interface, []*mock.Device) {
	var devs []*mock.Device
	for _, u := range []string{"GPU-a", "GPU-b"} {
		d := unsupported(&mock.Device{
			GetUUIDFunc:             func() (string, nvml.Return) { return u, nvml.SUCCESS },
			GetNameFunc:             func() (string, nvml.Return) { return "NVIDIA L4", nvml.SUCCESS },
			GetMemoryInfoFunc:       func() (nvml.Memory, nvml.Return) { return nvml.Memory{Total: 1 << 34, Free: 1 << 34}, nvml.SUCCESS },
			GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.ERROR_NOT_SUPPORTED },
			GetTemperatureFunc:      func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED },
			GetPowerUsageFunc:       func() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED },
			GetPersistenceModeFunc:  func() (nvml.EnableState, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED },
			RegisterEventsFunc: func(uint64, nvml.EventSet) nvml.Return {
				mu.Lock()
				*registered++
				mu.Unlock()
				return nvml.SUCCESS
			},
		})
		devs = append(devs, d)
	}
	set := &mock.EventSet{
		WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) {
			select {
			case e := <-es.ch:
				return e, nvml.SUCCESS
			case <-time.After(time.Duration(ms) * time.Millisecond):
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
		},
		FreeFunc: func() nvml.Return { return nvml.SUCCESS },
	}
	lib := &mock.Interface{
		InitFunc:                   func() nvml.Return { return nvml.SUCCESS },
		SystemGetDriverVersionFunc: func() (string, nvml.Return) { return "550.54.15", nvml.SUCCESS },
		DeviceGetCountFunc:         func() (int, nvml.Return) { return len(devs), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) { return devs[i], nvml.SUCCESS },
		EventSetCreateFunc:         func() (nvml.EventSet, nvml.Return) { return set, nvml.SUCCESS },
	}
	return lib, devs
}

func TestHealthEventsAndRecovery(t *testing.T) {
	es := &fakeEvents{ch: make(chan nvml.EventData)}
	var mu sync.Mutex
	registered := 0
	lib, devs := twoGPUs(es, &registered, &mu)
	n, err := New(lib)
	if err != nil {
		t.Fatal(err)
	}
	var clock sync.Mutex
	now := time.Unix(1000, 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- n.WatchHealth(ctx, HealthConfig{RecoverAfter: time.Minute, Wait: 20 * time.Millisecond,
			Now: func() time.Time { clock.Lock(); defer clock.Unlock(); return now },
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}()
	health := func() map[string]bool {
		ds, _ := n.Devices()
		m := map[string]bool{}
		for _, d := range ds {
			m[d.UUID] = d.Healthy
		}
		return m
	}
	eventually := func(what string, cond func(map[string]bool) bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond(health()) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, health())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// An application XID leaves the GPU healthy.
	es.ch <- nvml.EventData{Device: devs[0], EventType: nvml.EventTypeXidCriticalError, EventData: 13}
	// XID 79 (fallen off the bus) does not.
	es.ch <- nvml.EventData{Device: devs[1], EventType: nvml.EventTypeXidCriticalError, EventData: 79}
	eventually("XID 79 marks b unhealthy", func(h map[string]bool) bool { return !h["GPU-b"] })
	if h := health(); !h["GPU-a"] {
		t.Fatalf("application XID 13 made a unhealthy: %v", h)
	}
	ds, _ := n.Devices()
	if ds[1].Unhealthy == "" {
		t.Fatal("no reason given")
	}
	// A minute later with no new event, b is healthy again.
	clock.Lock()
	now = now.Add(61 * time.Second)
	clock.Unlock()
	eventually("GPU-b recovers after a quiet minute", func(h map[string]bool) bool { return h["GPU-b"] })
	// Double-bit ECC errors count too.
	es.ch <- nvml.EventData{Device: devs[0], EventType: nvml.EventTypeDoubleBitEccError}
	eventually("a double-bit ECC error marks a unhealthy", func(h map[string]bool) bool { return !h["GPU-a"] })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("watcher did not stop with its context")
	}
	mu.Lock()
	defer mu.Unlock()
	if registered != 2 {
		t.Fatalf("registered events on %d GPUs", registered)
	}
}
