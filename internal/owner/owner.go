// Package owner gives goroutines an owner: every goroutine a component
// starts is started through its Group, and the component's Close (or Stop)
// ends them and waits for them. A Group refuses new goroutines once its
// Wait has begun, so a late callback cannot start one nobody waits for.
package owner

import "sync"

// Group owns goroutines. Its zero value is ready to use.
type Group struct {
	mu     sync.Mutex
	wg     sync.WaitGroup
	closed bool
}

// Go runs f in a goroutine the group waits for. Once Wait has begun it runs
// nothing and reports false: the caller does what f would have cleaned up
// itself, or nothing.
func (g *Group) Go(f func()) bool {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return false
	}
	g.wg.Add(1)
	g.mu.Unlock()
	go func() {
		defer g.wg.Done()
		f()
	}()
	return true
}

// Wait refuses new goroutines and waits for those running to return. The
// owner must first make them return (cancel their context, close what they
// block on).
func (g *Group) Wait() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}
