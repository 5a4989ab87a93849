package loop

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestEveryTicksKicksAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	kick := make(chan struct{}, 1)
	var n atomic.Int32
	done := make(chan struct{})
	go func() { Every(ctx, time.Hour, kick, func() { n.Add(1) }); close(done) }()
	kick <- struct{}{}
	deadline := time.Now().Add(5 * time.Second)
	for n.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("kick did not run fn")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("did not stop with its context")
	}
	m := atomic.Int32{}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	Every(ctx2, 10*time.Millisecond, nil, func() { m.Add(1) })
	if m.Load() < 2 {
		t.Fatalf("ticked %d times in 300 ms at 10 ms", m.Load())
	}
}
