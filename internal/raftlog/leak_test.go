package raftlog

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them (raft's
// included: every node a test starts is shut down).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
