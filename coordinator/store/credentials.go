package store

import (
	"context"
	"encoding/json"

	"github.com/callscribe/callscribe/internal/auth"
)

// credentialKey is where a credential's record lives: "k/" and its id.
func credentialKey(id string) []byte { return append([]byte("k/"), id...) }

// PutCredential makes a credential record durable (a new token's hash, or
// a revocation). It implements auth.Persister.
func (s *Store) PutCredential(ctx context.Context, c auth.Credential) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return s.write(ctx, false, entry{key: credentialKey(c.ID), val: b})
}

// Credentials returns every credential record, revoked ones included.
func (s *Store) Credentials() ([]auth.Credential, error) {
	return scanJSON[auth.Credential](s, "k/", "credential record")
}
