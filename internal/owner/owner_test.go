package owner

import (
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestGroupWaitsAndRefusesAfterWait(t *testing.T) {
	var g Group
	var ran atomic.Int32
	release := make(chan struct{})
	for range 3 {
		if !g.Go(func() { <-release; ran.Add(1) }) {
			t.Fatal("Go refused before Wait")
		}
	}
	close(release)
	g.Wait()
	if n := ran.Load(); n != 3 {
		t.Fatalf("Wait returned with %d of 3 goroutines done", n)
	}
	if g.Go(func() { ran.Add(1) }) {
		t.Fatal("Go accepted a goroutine after Wait")
	}
	if n := ran.Load(); n != 3 {
		t.Fatalf("a refused goroutine ran")
	}
}
