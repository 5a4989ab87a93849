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

func TestSampleReportsTheFilesystemOfAStateDirNotYetCreated(t *testing.T) {
	h := New(t.TempDir() + "/not/yet/there").Sample(context.Background())
	if h.DiskTotalMB == 0 {
		t.Fatalf("no disk reading for a state directory still to be created: %+v", h)
	}
}
