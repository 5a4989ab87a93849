package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/callscribe/callscribe/proto"
)

// Spec describes a worker process.
type Spec struct {
	ID    proto.WorkerID
	Model string
	GPU   string // UUID, or "" for CPU
	Path  string
	Args  []string
	// Env is added to the agent's environment (minus NOTIFY_SOCKET, which
	// belongs to the agent alone).
	Env []string
}

// Supervisor runs and restarts worker processes.
type Supervisor struct {
	log      *slog.Logger
	policy   Policy
	onChange func()
	mu       sync.Mutex
	procs    map[proto.WorkerID]*proc
	wg       sync.WaitGroup
}

type proc struct {
	spec     Spec
	state    string
	pid      int
	restarts int
	exits    []time.Time
	lastExit string
	stop     chan struct{}
	stopped  bool
	// ended is when the worker was stopped or gave up for good: it is
	// reported a while, then forgotten (endedKept).
	ended time.Time
}

// endedKept is how long a stopped or failed worker stays in the status
// the agent reports: long enough for the coordinator to see it end, not
// for ever (each scale-up is a new worker id).
var endedKept = time.Minute

// New returns a supervisor; onChange is called (without locks held) after
// any worker changes state.
func New(log *slog.Logger, p Policy, onChange func()) *Supervisor {
	if onChange == nil {
		onChange = func() {}
	}
	return &Supervisor{log: log, policy: p, onChange: onChange, procs: map[proto.WorkerID]*proc{}}
}

// Start runs a worker unless one with the same ID is already supervised.
func (s *Supervisor) Start(spec Spec) {
	s.mu.Lock()
	if p, ok := s.procs[spec.ID]; ok && !p.stopped && p.state != proto.WorkerFailed {
		s.mu.Unlock()
		return
	}
	p := &proc{spec: spec, state: proto.WorkerStarting, stop: make(chan struct{})}
	s.procs[spec.ID] = p
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.run(p)
	}()
}

// Stop stops one worker: SIGTERM to its process group, SIGKILL after grace.
func (s *Supervisor) Stop(id proto.WorkerID) {
	s.mu.Lock()
	p, ok := s.procs[id]
	if ok && !p.stopped {
		p.stopped = true
		close(p.stop)
	}
	s.mu.Unlock()
}

// StopAll stops every worker and waits for them, at most until ctx ends
// (then they are killed).
func (s *Supervisor) StopAll(ctx context.Context) {
	s.mu.Lock()
	for _, p := range s.procs {
		if !p.stopped {
			p.stopped = true
			close(p.stop)
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		for _, p := range s.procs {
			if p.pid > 0 {
				_ = syscall.Kill(-p.pid, syscall.SIGKILL)
			}
		}
		s.mu.Unlock()
		<-done
	}
}

// Status lists the supervised workers.
func (s *Supervisor) Status() []proto.WorkerStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]proto.WorkerStatus, 0, len(s.procs))
	for id, p := range s.procs {
		if !p.ended.IsZero() && time.Since(p.ended) > endedKept {
			delete(s.procs, id)
			continue
		}
		out = append(out, proto.WorkerStatus{ID: p.spec.ID, Model: p.spec.Model, GPU: p.spec.GPU, State: p.state, PID: p.pid, Restarts: p.restarts, LastExit: p.lastExit})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// PID returns a worker's current process ID (0 if none).
func (s *Supervisor) PID(id proto.WorkerID) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.procs[id]; ok {
		return p.pid
	}
	return 0
}

func (s *Supervisor) set(p *proc, f func()) {
	s.mu.Lock()
	f()
	s.mu.Unlock()
	s.onChange()
}

func (s *Supervisor) run(p *proc) {
	log := s.log.With("worker", p.spec.ID)
	for {
		cmd := exec.Command(p.spec.Path, p.spec.Args...)
		cmd.Env = append(childEnv(), p.spec.Env...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		// Own process group, so stop kills the worker and anything it
		// started; and die with the agent, so no worker is orphaned.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			s.set(p, func() { p.state, p.lastExit = proto.WorkerBackoff, "start: "+err.Error() })
			log.Error("worker did not start", "err", err)
		} else {
			s.set(p, func() { p.state, p.pid = proto.WorkerRunning, cmd.Process.Pid })
			log.Info("worker started", "pid", cmd.Process.Pid)
			waitc := make(chan error, 1)
			go func() { waitc <- cmd.Wait() }()
			var err error
			select {
			case err = <-waitc:
			case <-p.stop:
				err = terminate(cmd.Process.Pid, waitc)
			}
			why := exitReason(err)
			// Whatever the worker left in its group goes with it.
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			s.set(p, func() {
				p.pid, p.lastExit = 0, why
				if !p.stopped {
					p.state = proto.WorkerBackoff
				}
			})
			if !p.stopped {
				log.Warn("worker exited", "why", why)
			}
		}
		select {
		case <-p.stop:
			s.set(p, func() { p.state, p.ended = proto.WorkerStopped, time.Now() })
			log.Info("worker stopped")
			return
		default:
		}
		now := time.Now()
		s.mu.Lock()
		p.exits = append(p.exits, now)
		if len(p.exits) > 64 {
			p.exits = p.exits[len(p.exits)-64:]
		}
		restart, delay := s.policy.Decide(p.exits, now)
		s.mu.Unlock()
		if !restart {
			s.set(p, func() { p.state, p.ended = proto.WorkerFailed, time.Now() })
			log.Error("worker keeps failing: giving up", "exits", len(p.exits))
			return
		}
		select {
		case <-time.After(delay):
			s.set(p, func() { p.restarts++; p.state = proto.WorkerStarting })
		case <-p.stop:
			s.set(p, func() { p.state = proto.WorkerStopped })
			return
		}
	}
}

// terminate sends SIGTERM to the group, then SIGKILL after 5 s.
func terminate(pid int, waitc chan error) error {
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case err := <-waitc:
		return err
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		return <-waitc
	}
}

func exitReason(err error) string {
	if err == nil {
		return "exited 0"
	}
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fmt.Sprintf("killed by %v", ws.Signal())
		}
		return fmt.Sprintf("exited %d", ee.ExitCode())
	}
	return err.Error()
}

func childEnv() []string {
	var out []string
	for _, e := range os.Environ() {
		if strings.HasPrefix(e, "NOTIFY_SOCKET=") || strings.HasPrefix(e, "WATCHDOG_") || strings.HasPrefix(e, "LISTEN_") {
			continue
		}
		out = append(out, e)
	}
	return out
}
