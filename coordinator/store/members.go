package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// ClusterInfo is the cluster's identity, written through the log by its
// first leader.
type ClusterInfo struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	// JoinTokenHash is the SHA-256 (hex) of the token a new member
	// presents to join (`callscribe cluster init` makes a new one).
	JoinTokenHash string `json:"join_token_hash,omitempty"`
}

// MemberInfo is where a member serves clients, written through the log
// when it joins and by each leader for itself.
type MemberInfo struct {
	Name string `json:"name"`
	// Raft is the member's cluster address.
	Raft string `json:"raft"`
	// QUIC and HTTP are where it serves consoles, nodes and the API.
	QUIC string `json:"quic"`
	HTTP string `json:"http"`
}

var clusterKey = []byte("x/cluster")

const memberPrefix = "x/member/"

// Cluster returns the cluster's identity (nil before there is one).
func (s *Store) Cluster() (*ClusterInfo, error) {
	var ci *ClusterInfo
	err := s.view(func(txn *badger.Txn) error {
		it, err := txn.Get(clusterKey)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		ci = &ClusterInfo{}
		return s.readJSON(it, "cluster identity", ci)
	})
	if err != nil {
		return nil, fmt.Errorf("store: cluster: %w", err)
	}
	return ci, nil
}

// PutCluster writes the cluster's identity.
func (s *Store) PutCluster(ctx context.Context, ci ClusterInfo) error {
	b, err := json.Marshal(ci)
	if err != nil {
		return err
	}
	return s.write(ctx, false, entry{key: clusterKey, val: b})
}

// Members returns every member's addresses.
func (s *Store) Members() ([]MemberInfo, error) {
	var ms []MemberInfo
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(memberPrefix), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var m MemberInfo
			if err := s.readJSON(it.Item(), "member", &m); err != nil {
				return err
			}
			ms = append(ms, m)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: members: %w", err)
	}
	return ms, nil
}

// PutMember writes a member's addresses.
func (s *Store) PutMember(ctx context.Context, m MemberInfo) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return s.write(ctx, false, entry{key: []byte(memberPrefix + m.Name), val: b})
}

// DeleteMember forgets a member's addresses.
func (s *Store) DeleteMember(ctx context.Context, name string) error {
	return s.write(ctx, false, entry{key: []byte(memberPrefix + name), del: true})
}
