package coordinator

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Service is a coordinator as a member of its cluster (a cluster of one by
// default): while its member leads it serves consoles, nodes and the API
// (a Coordinator for each term as leader, built afresh from the store, so
// nothing soft outlives a term); otherwise it sends every client to the
// leader.
type Service struct {
	cfg Config
	m   *Member

	mu       sync.Mutex
	cur      *Coordinator
	reload   *Reloadable
	quicAddr net.Addr
	httpAddr net.Addr
	bound    chan struct{}
	boundOne sync.Once
}

// NewService opens the store and starts the cluster member.
func NewService(cfg Config) (*Service, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Service{cfg: cfg, bound: make(chan struct{})}
	m, err := OpenMember(cfg, nil)
	if err != nil {
		return nil, err
	}
	s.m = m
	return s, nil
}

// Member is the service's store and cluster member.
func (s *Service) Member() *Member { return s.m }

// Bound is closed once the listeners are bound (QUICAddr and HTTPAddr are
// then known).
func (s *Service) Bound() <-chan struct{} { return s.bound }

// QUICAddr is the bound QUIC address.
func (s *Service) QUICAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.quicAddr
}

// HTTPAddr is the bound HTTP address.
func (s *Service) HTTPAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.httpAddr
}

// Coordinator is the current term's coordinator (nil while following).
func (s *Service) Coordinator() *Coordinator {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

func (s *Service) setBound(q, h net.Addr) {
	s.mu.Lock()
	s.quicAddr, s.httpAddr = q, h
	// Later terms bind the same ports.
	s.cfg.QUICAddr, s.cfg.HTTPAddr = q.String(), h.String()
	s.mu.Unlock()
	s.boundOne.Do(func() { close(s.bound) })
}

// Reload applies a new reloadable configuration now and to later terms.
func (s *Service) Reload(r Reloadable) {
	s.mu.Lock()
	s.reload = &r
	c := s.cur
	s.mu.Unlock()
	if c != nil {
		c.Reload(r)
	}
}

// Healthy is the watchdog's check: the term's, or the member's while it
// follows.
func (s *Service) Healthy(ctx context.Context) error {
	if c := s.Coordinator(); c != nil {
		return c.Healthy(ctx)
	}
	return s.m.Node.Err()
}

// Run serves until ctx ends or the member fails, then closes the member.
func (s *Service) Run(ctx context.Context) error {
	defer func() {
		if err := s.m.Close(); err != nil {
			s.cfg.Logger.Error("coordinator: close", "err", err)
		}
	}()
	if s.m.Node.Single() {
		// A cluster of one leads within milliseconds: it serves nothing
		// as a follower meanwhile (clients would be told to wait).
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := s.m.waitLeader(wctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			return err
		}
	}
	for ctx.Err() == nil {
		if err := s.m.Node.Err(); err != nil {
			return err
		}
		leading, changed := s.m.Node.Leading()
		if !leading {
			if err := s.follow(ctx, changed); err != nil {
				return err
			}
			continue
		}
		err := s.lead(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrNotLeader):
			continue
		case err != nil && s.m.Node.Err() == nil && isTermError(err):
			s.cfg.Logger.Warn("coordinator: a term as leader could not start; trying again", "err", err)
			select {
			case <-time.After(200 * time.Millisecond):
			case <-ctx.Done():
			}
			continue
		}
		return err
	}
	return nil
}

// isTermError: a term ended or failed to begin for a reason of the
// cluster (leadership moved, a barrier timed out), not of this process.
func isTermError(err error) bool {
	return errors.Is(err, ErrNotLeader) || errors.Is(err, context.DeadlineExceeded)
}

// follow sends clients to the leader until this member's leadership
// changes.
func (s *Service) follow(ctx context.Context, changed <-chan struct{}) error {
	s.mu.Lock()
	cfg := s.cfg
	s.mu.Unlock()
	f, err := newFollower(cfg, s.m)
	if err != nil {
		return err
	}
	s.setBound(f.ql.Addr(), f.httpLn.Addr())
	name, _ := s.m.Node.Leader()
	s.cfg.Logger.Info("coordinator: following", "member", s.m.Node.Name(), "leader", name)
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-changed:
		case <-s.m.Node.Failed():
		case <-fctx.Done():
		}
		cancel()
	}()
	f.serve(fctx)
	return nil
}

// lead serves one term as the leader.
func (s *Service) lead(ctx context.Context) error {
	s.mu.Lock()
	cfg := s.cfg
	r := s.reload
	s.mu.Unlock()
	cfg.Member = s.m
	c, err := New(cfg)
	if err != nil {
		return err
	}
	if err := c.Listen(); err != nil {
		_ = c.Close()
		return err
	}
	if r != nil {
		c.Reload(*r)
	}
	s.setBound(c.QUICAddr(), c.HTTPAddr())
	s.mu.Lock()
	s.cur = c
	s.mu.Unlock()
	s.cfg.Logger.Info("coordinator: leading", "member", s.m.Node.Name(), "quic", c.QUICAddr().String(), "http", c.HTTPAddr().String())
	err = c.Serve(ctx)
	s.mu.Lock()
	s.cur = nil
	s.mu.Unlock()
	return err
}

// AuditAs records an entry in the audit trail through the current term
// (nothing while following: only the leader writes).
func (s *Service) AuditAs(ctx context.Context, actor, action, target, outcome, detail string) error {
	if c := s.Coordinator(); c != nil {
		return c.AuditAs(ctx, actor, action, target, outcome, detail)
	}
	return ErrNotLeader
}
