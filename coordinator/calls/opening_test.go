package calls

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/proto"
)

// slowOpenStore holds the first write of a new call's record until told:
// a slow disk at the moment a call is opened.
type slowOpenStore struct {
	*store.Store
	held, hold chan struct{}
}

func (s *slowOpenStore) PutCall(ctx context.Context, rec *store.Call) error {
	if rec.State == store.StateOpen {
		select {
		case s.held <- struct{}{}:
			<-s.hold
		default:
		}
	}
	return s.Store.PutCall(ctx, rec)
}

// A call being opened is not a set-up that came to nothing: a janitor pass
// while its record is on its way to a slow disk leaves it alone, and the
// console is welcomed to a new call, not told it resumed one.
func TestCallBeingOpenedIsNotDropped(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.Open(t.TempDir()+"/store", store.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	slow := &slowOpenStore{Store: st, held: make(chan struct{}), hold: make(chan struct{})}
	m := New(Config{Store: slow, Workers: noWorkers{}, Observer: &counts{}, Models: anyModel{}, Limits: Limits{IdleRelease: 5 * time.Second}, Log: log,
		AbandonAfter: func() time.Duration { return time.Minute }, Vocabulary: func() []proto.Word { return nil }})
	m.Run()
	defer func() {
		m.Stop()
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	}()
	type opened struct {
		s   interface{ Close() }
		wel *proto.Welcome
		err error
	}
	done := make(chan opened, 1)
	go func() {
		s, wel, err := m.Open(t.Context(), hello("slow-open"))
		done <- opened{s, wel, err}
	}()
	<-slow.held                       // the record is on its way to the disk
	m.endAbandoned(t.Context())       // a janitor pass meanwhile
	time.Sleep(50 * time.Millisecond) // (a drop deletes the record: let it land)
	close(slow.hold)
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	defer o.s.Close()
	if o.wel.Resumed {
		t.Fatal("a brand-new call was welcomed as resumed: it was dropped while being opened")
	}
	if _, err := st.Call("slow-open"); err != nil {
		t.Fatalf("the call's record: %v", err)
	}
	if n := m.InMemory(); n != 1 {
		t.Fatalf("%d calls in memory, want the one being streamed", n)
	}
}
