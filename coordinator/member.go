package coordinator

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/callscribe/callscribe/coordinator/cluster"
	"github.com/callscribe/callscribe/coordinator/store"
)

// ClusterConfig makes the coordinator a member of a cluster of
// coordinators (README, Cluster). The zero value is a cluster of one.
type ClusterConfig struct {
	// Name is this member's name in the cluster (default: the host name,
	// kept in DATA/raft/name from the first start).
	Name string
	// Bind is the address the member listens on for the other members;
	// empty: a cluster of one, without a network.
	Bind string
	// Advertise is the address the others dial (default: Bind).
	Advertise string
	// Cert is this member's coordinator certificate and CAs the
	// appliance's CA, which every member's certificate must come from.
	Cert tls.Certificate
	CAs  *x509.CertPool
	// QUIC and HTTP are the addresses clients reach this member at, given
	// to them by the other members (default: QUICAddr and HTTPAddr, when
	// those name a host).
	QUIC, HTTP string
	// SnapshotThreshold, SnapshotInterval and TrailingLogs override
	// tuning's ClusterSnapshot* and ClusterTrailingLogs (zero: those).
	SnapshotThreshold, TrailingLogs uint64
	SnapshotInterval                time.Duration
}

// Member is this coordinator's lasting part: its store and its member of
// the cluster, which outlive each term as leader (Run).
type Member struct {
	Store *store.Store
	Node  *cluster.Node
	// onCommit is the current term's observer of group commits.
	onCommit atomic.Pointer[func(writes, bytes int, took time.Duration)]
}

// OpenMember opens the store and starts the cluster member.
func OpenMember(cfg Config, onCommit func(writes, bytes int, took time.Duration)) (*Member, error) {
	m := &Member{}
	if onCommit != nil {
		m.onCommit.Store(&onCommit)
	}
	observe := func(writes, bytes int, took time.Duration) {
		if f := m.onCommit.Load(); f != nil {
			(*f)(writes, bytes, took)
		}
	}
	st, err := store.Open(filepath.Join(cfg.DataDir, "store"), store.Options{Logger: cfg.Logger.With("component", "store"), OnCommit: observe,
		DiskReserve: cfg.DiskReserve, Key: cfg.StoreKey, KeyFile: cfg.StoreKeyFile, Replicated: true})
	if err != nil {
		return nil, err
	}
	name, err := memberName(cfg.DataDir, cfg.Cluster.Name)
	if err != nil {
		_ = st.Close()
		return nil, err
	}
	// The cluster's ID never changes once set: read it until then.
	var known atomic.Pointer[string]
	clusterID := func() string {
		if id := known.Load(); id != nil {
			return *id
		}
		ci, err := st.Cluster()
		if err != nil || ci == nil {
			return ""
		}
		known.Store(&ci.ID)
		return ci.ID
	}
	node, err := cluster.Start(cluster.Config{Dir: filepath.Join(cfg.DataDir, "raft"), Name: name, Bind: cfg.Cluster.Bind, Advertise: cfg.Cluster.Advertise,
		Cert: cfg.Cluster.Cert, CAs: cfg.Cluster.CAs, Key: cfg.StoreKey, FSM: st, ClusterID: clusterID, Logger: cfg.Logger.With("component", "cluster"),
		SnapshotThreshold: cfg.Cluster.SnapshotThreshold, TrailingLogs: cfg.Cluster.TrailingLogs, SnapshotInterval: cfg.Cluster.SnapshotInterval})
	if err != nil {
		_ = st.Close()
		return nil, err
	}
	st.SetReplicator(node)
	m.Store, m.Node = st, node
	return m, nil
}

// advertised is the address clients are given: the configured one, or the
// listen address when it names a host.
func advertised(set, listen string) string {
	if set != "" {
		return set
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil || host == "" || net.ParseIP(host).IsUnspecified() {
		return ""
	}
	return listen
}

// Close hands leadership over if this member leads a cluster, stops the
// member, then closes the store.
func (m *Member) Close() error {
	if err := m.Node.Handover(); err != nil {
		m.Node.Logger().Warn("coordinator: leadership not handed over; the others elect a leader after their timeout", "err", err)
	}
	err := m.Node.Shutdown()
	if cerr := m.Store.Close(); err == nil {
		err = cerr
	}
	return err
}

// lead prepares this member to serve as the leader: every entry of earlier
// terms is applied, the store reloads what it keeps in memory and the
// cluster has an identity.
func (m *Member) lead(ctx context.Context) error {
	if err := m.Node.Barrier(ctx); err != nil {
		return err
	}
	if err := m.Store.Lead(); err != nil {
		return err
	}
	ci, err := m.Store.Cluster()
	if err != nil {
		return err
	}
	if ci == nil {
		if err := m.Store.PutCluster(ctx, store.ClusterInfo{ID: newClusterID(), Created: time.Now().UTC()}); err != nil {
			return fmt.Errorf("coordinator: cluster identity: %w", err)
		}
	}
	// A cluster of one that gained a network keeps its configuration's
	// address current.
	if !m.Node.Single() {
		members, err := m.Node.Members()
		if err == nil {
			for _, x := range members {
				if x.Name == m.Node.Name() && x.Address != m.Node.Address() {
					if err := m.Node.AddVoter(x.Name, m.Node.Address()); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// publish records where this member serves clients, if that changed.
func (m *Member) publish(ctx context.Context, quicAddr, httpAddr string) error {
	info := store.MemberInfo{Name: m.Node.Name(), Raft: m.Node.Address(), QUIC: quicAddr, HTTP: httpAddr}
	ms, err := m.Store.Members()
	if err != nil {
		return err
	}
	for _, x := range ms {
		if x == info {
			return nil
		}
	}
	if err := m.Store.PutMember(ctx, info); err != nil {
		return fmt.Errorf("coordinator: member addresses: %w", err)
	}
	return nil
}

// waitLeader waits until this member leads.
func (m *Member) waitLeader(ctx context.Context) error {
	for {
		l, ch := m.Node.Leading()
		if l {
			return nil
		}
		select {
		case <-ch:
		case <-m.Node.Failed():
			return m.Node.Err()
		case <-ctx.Done():
			return fmt.Errorf("coordinator: this member does not lead: %w", ctx.Err())
		}
	}
}

func newClusterID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "cs-" + hex.EncodeToString(b[:])
}

// memberName is the member's lasting name: the one recorded at its first
// start; a configured name must match it.
func memberName(dataDir, want string) (string, error) {
	path := filepath.Join(dataDir, "raft", "name")
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		have := strings.TrimSpace(string(b))
		if want != "" && want != have {
			return "", fmt.Errorf("coordinator: cluster.name is %q, but this member was %q (%s): a member keeps its name; to rename, remove it from the cluster and join it again with a new data directory", want, have, path)
		}
		return have, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("coordinator: member name: %w", err)
	}
	if want == "" {
		want, _ = os.Hostname()
		if want == "" {
			want = "coordinator"
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(path, []byte(want+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("coordinator: member name: %w", err)
	}
	return want, nil
}
