// Package audit is the pure part of callscribe's audit trail: the entry,
// its hash chain and the check that proves a run of entries intact. The
// coordinator's store keeps the entries (coordinator/store); the CLI and any
// third party verify them with this package or with the definition below.
//
// # Hash
//
// Every entry's Hash is the lower-case hex SHA-256 of
//
//	"callscribe-audit-1\n" || N(prev) || N(seq) || N(time) || N(actor) ||
//	N(role) || N(remote) || N(action) || N(target) || N(outcome) || N(detail)
//
// where N(s) is the netstring of the UTF-8 bytes of s: the decimal byte
// length, ":", the bytes, "," (so "ok" is "2:ok,"); prev is the previous
// entry's Hash as 64 hex digits (64 zeros for seq 1); seq is decimal with
// no leading zeros; time is the entry's time in UTC formatted as Go's
// time.RFC3339Nano (trailing zeros of the fraction dropped, "Z" zone): the
// very string the JSON form carries in "time". The chain is intact when
// every entry's Hash is that digest, seqs run 1, 2, 3 … without a gap, and
// each entry's Prev is the Hash of the one before.
package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"
)

// ZeroHash is the Prev of the first entry (seq 1).
const ZeroHash = "0000000000000000000000000000000000000000000000000000000000000000"

// Actions recorded.
const (
	ActionTranscriptRead  = "transcript.read"
	ActionTranscriptWatch = "transcript.watch"
	ActionCallsList       = "calls.list"
	ActionCallRead        = "call.read"
	ActionCallTransfer    = "call.transfer"
	ActionNodeDrain       = "node.drain"
	ActionNodeUndrain     = "node.undrain"
	ActionTokenAdd        = "token.add"
	ActionTokenRevoke     = "token.revoke"
	ActionTokenList       = "token.list"
	ActionConfigReload    = "config.reload"
	ActionExport          = "export"
	ActionAudioRead       = "audio.read"
	ActionAuthDenied      = "auth.denied"
	// Cluster membership: a new join token, a member joined or removed.
	ActionClusterToken  = "cluster.token"
	ActionClusterJoin   = "cluster.join"
	ActionClusterRemove = "cluster.remove"
)

// Outcomes; an error is "error: " and its text.
const (
	OutcomeOK     = "ok"
	OutcomeDenied = "denied"
)

// Entry is one audited action: who, what, when, from where, and the
// outcome, chained by hash to the entry before it.
type Entry struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Actor is the principal's name ("system" for a SIGHUP reload,
	// "exporter" for exports).
	Actor string `json:"actor"`
	Role  string `json:"role,omitempty"`
	// Remote is the address the request came from ("" when none).
	Remote string `json:"remote,omitempty"`
	Action string `json:"action"`
	// Target is what the action was on: a call id, a node id, a
	// credential's name …
	Target  string `json:"target,omitempty"`
	Outcome string `json:"outcome"`
	Detail  string `json:"detail,omitempty"`
	Prev    string `json:"prev"`
	Hash    string `json:"hash"`
}

// ErrorOutcome is the outcome of an action that failed with err.
func ErrorOutcome(err error) string { return "error: " + err.Error() }

// ComputeHash returns the hash e should carry (the package comment defines
// it); e.Hash itself is not part of it.
func ComputeHash(e Entry) string {
	h := sha256.New()
	buf := make([]byte, 0, 256)
	buf = append(buf, "callscribe-audit-1\n"...)
	for _, s := range []string{e.Prev, strconv.FormatUint(e.Seq, 10), e.Time.UTC().Format(time.RFC3339Nano),
		e.Actor, e.Role, e.Remote, e.Action, e.Target, e.Outcome, e.Detail} {
		buf = strconv.AppendInt(buf, int64(len(s)), 10)
		buf = append(buf, ':')
		buf = append(buf, s...)
		buf = append(buf, ',')
	}
	h.Write(buf)
	return hex.EncodeToString(h.Sum(nil))
}

// Seal sets e's Seq, Prev and Hash to follow head and returns it.
func Seal(e Entry, head Head) Entry {
	e.Seq, e.Prev = head.Seq+1, head.hash()
	e.Time = e.Time.UTC()
	e.Hash = ComputeHash(e)
	return e
}

// Head is the newest entry of a chain: its seq and hash (0 and "" or
// ZeroHash for an empty chain).
type Head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

func (h Head) hash() string {
	if h.Hash == "" {
		return ZeroHash
	}
	return h.Hash
}

// ChainError names the first entry that breaks a chain.
type ChainError struct {
	Seq uint64 // the entry's seq as stored
	// Index is its position in what was verified.
	Index int
	Why   string
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("audit chain broken at seq %d: %s", e.Seq, e.Why)
}

// Chain verifies entries one at a time, so a long log can be checked page
// by page. Its zero value expects seq 1 first.
type Chain struct {
	head Head
	n    int
}

// NewChain returns a chain that expects, first, the entry after head.
func NewChain(head Head) *Chain { return &Chain{head: head} }

// Add checks that e follows the entries added before it; after an error
// the chain is unchanged.
func (c *Chain) Add(e Entry) error {
	want := c.head.Seq + 1
	switch {
	case e.Seq > want:
		return &ChainError{Seq: e.Seq, Index: c.n, Why: fmt.Sprintf("seq %d where %d was due: entries are missing or out of order", e.Seq, want)}
	case e.Seq < want:
		return &ChainError{Seq: e.Seq, Index: c.n, Why: fmt.Sprintf("seq %d where %d was due: entries are repeated or out of order", e.Seq, want)}
	case e.Prev != c.head.hash():
		return &ChainError{Seq: e.Seq, Index: c.n, Why: fmt.Sprintf("prev %s is not the hash of entry %d (%s): one of them was changed", short(e.Prev), c.head.Seq, short(c.head.hash()))}
	}
	if h := ComputeHash(e); h != e.Hash {
		return &ChainError{Seq: e.Seq, Index: c.n, Why: fmt.Sprintf("hash %s does not match its contents (%s): the entry was changed", short(e.Hash), short(h))}
	}
	c.head = Head{Seq: e.Seq, Hash: e.Hash}
	c.n++
	return nil
}

// Head is the last entry added (the one the chain started after, if none).
func (c *Chain) Head() Head { return c.head }

// Len is how many entries were added without error.
func (c *Chain) Len() int { return c.n }

// Verify checks that entries form an intact chain starting after startPrev:
// ZeroHash (or "") means the log's beginning, so the first entry must be
// seq 1; otherwise the first entry's Prev must be startPrev and its seq is
// taken as given. It returns a *ChainError naming the first bad entry.
func Verify(entries []Entry, startPrev string) error {
	c := &Chain{}
	if startPrev != "" && startPrev != ZeroHash && len(entries) > 0 {
		c = NewChain(Head{Seq: entries[0].Seq - 1, Hash: startPrev})
	}
	for _, e := range entries {
		if err := c.Add(e); err != nil {
			return err
		}
	}
	return nil
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12] + "…"
	}
	return h
}
