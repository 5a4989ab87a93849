package host

import (
	"context"
	"testing"
)

func TestSampleReadsThisMachine(t *testing.T) {
	s := New(t.TempDir())
	h := s.Sample(context.Background())
	if h.CPUs < 1 || h.MemTotalMB == 0 || h.MemAvailMB > h.MemTotalMB || h.DiskTotalMB == 0 || h.DiskFreeMB > h.DiskTotalMB || h.Hostname == "" {
		t.Fatalf("implausible readings: %+v", h)
	}
}
