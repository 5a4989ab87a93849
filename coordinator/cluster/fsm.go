package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/hashicorp/raft"
)

// FSM is the state machine the log drives (*store.Store satisfies it).
type FSM interface {
	// Apply takes the command at index (skipping what it already holds)
	// and applies it, in order, possibly after it returns: the store's
	// reads wait for what was handed over before them.
	Apply(index uint64, cmd []byte) error
	// Applied is the index of the last command applied.
	Applied() uint64
	// Handed is the index of the last command taken by Apply.
	Handed() uint64
	// OnApplyFailure sets what is called when a command taken cannot be
	// applied.
	OnApplyFailure(fn func(error))
	// Checkpoint makes everything taken durable and returns its index.
	Checkpoint() (uint64, error)
	// Backup writes the state for a member that fell behind; Restore
	// replaces the state with one.
	Backup(w io.Writer) error
	Restore(r io.Reader) error
}

// fsm adapts FSM to raft.FSM.
type fsm struct {
	n *Node
}

func (f fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	if err := f.n.fsm.Apply(l.Index, l.Data); err != nil {
		f.n.fail(fmt.Errorf("cluster: this member cannot apply the log at %d and stops: %w", l.Index, err))
		return err
	}
	return nil
}

func (f fsm) Snapshot() (raft.FSMSnapshot, error) { return checkpoint(f), nil }

// Restore installs a snapshot: a backup from the leader (a checkpoint only
// names the store itself, already at or past it).
func (f fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	sr, _ := rc.(*snapReader)
	br := bufio.NewReader(rc)
	head, err := br.Peek(len(checkpointMagic))
	if err == nil && string(head) == checkpointMagic {
		line, _ := br.ReadString('\n')
		ix, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(line, checkpointMagic)), 10, 64)
		if got := f.n.fsm.Handed(); got < ix {
			return fmt.Errorf("cluster: the store holds the log up to %d, but its checkpoint says %d", got, ix)
		}
		return nil
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("cluster: restore: %w", err)
	}
	if err := f.n.fsm.Restore(br); err != nil {
		return err
	}
	if sr != nil {
		if err := f.n.snaps.checkpointed(sr.id); err != nil {
			f.n.log.Warn("cluster: restored snapshot kept as data", "snapshot", sr.id, "err", err)
		}
	}
	return nil
}

// checkpoint is a snapshot that is the store, synced.
type checkpoint struct{ n *Node }

func (c checkpoint) Persist(sink raft.SnapshotSink) error {
	ix, err := c.n.fsm.Checkpoint()
	if err != nil {
		_ = sink.Cancel()
		return err
	}
	// A leader applies an entry once the followers have it, maybe before
	// its own log's sync: the checkpoint is kept only once the log holds
	// everything it covers, so a crash never leaves the log ending before
	// the snapshot.
	if err := c.n.logs.Synced(); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("cluster: checkpoint: %w", err)
	}
	if s, ok := sink.(*snapSink); ok {
		s.checkpoint = true
	}
	if _, err := fmt.Fprintf(sink, "%s %d\n", checkpointMagic, ix); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (checkpoint) Release() {}
