package leader

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callscribe/callscribe/internal/tuning"
	"github.com/callscribe/callscribe/proto"
)

func next(t *Targets, n int) []string {
	var out []string
	for range n {
		out = append(out, t.Next())
	}
	return out
}

func TestNextTakesTurnsWithoutDuplicates(t *testing.T) {
	tg := New([]string{"a:1", "b:2", " a:1 ", "", "c:3", "b:2"})
	if got := tg.Addrs(); !slices.Equal(got, []string{"a:1", "b:2", "c:3"}) {
		t.Fatalf("addrs %v", got)
	}
	if got := next(tg, 5); !slices.Equal(got, []string{"a:1", "b:2", "c:3", "a:1", "b:2"}) {
		t.Fatalf("turns %v", got)
	}
	if New(nil).Next() != "" {
		t.Fatal("no address, yet Next named one")
	}
}

func TestRedirectDialsTheLeaderOnceAndLearnsMembers(t *testing.T) {
	tg := New([]string{"a:1"})
	if tg.Next() != "a:1" {
		t.Fatal("first address")
	}
	wait := tg.Redirect(proto.NotLeader("c:3", []string{"a:1", "b:2", "c:3", "not-an-address", "d:0", "e:99999", "host with space:4", ":5"}))
	if wait != 0 {
		t.Fatalf("a named leader waits %v, want at once", wait)
	}
	if got := tg.Addrs(); !slices.Equal(got, []string{"a:1", "b:2", "c:3"}) {
		t.Fatalf("learned %v (malformed members must be ignored)", got)
	}
	// The leader once, then the list in turn from where it was.
	if got := next(tg, 4); !slices.Equal(got, []string{"c:3", "b:2", "c:3", "a:1"}) {
		t.Fatalf("after the redirect: %v", got)
	}
}

func TestNoLeaderForgetsAnEarlierLeader(t *testing.T) {
	tg := New([]string{"a:1", "b:2"})
	tg.Redirect(proto.NotLeader("b:2", nil))
	tg.Redirect(proto.NotLeader("", nil))
	if got := tg.Next(); got != "a:1" {
		t.Fatalf("next %q: the later answer (no leader) should count", got)
	}
}

func TestRedirectIgnoresAMalformedLeader(t *testing.T) {
	tg := New([]string{"a:1", "b:2"})
	tg.Next()
	if wait := tg.Redirect(&proto.Error{Code: proto.CodeNotLeader, Leader: "nonsense"}); wait == 0 {
		t.Fatal("a malformed leader was followed at once")
	}
	if got := tg.Next(); got != "b:2" {
		t.Fatalf("next %q, want the next address in turn", got)
	}
}

func TestRedirectLearnsBoundedMembers(t *testing.T) {
	var many []string
	for i := range 100 {
		many = append(many, fmt.Sprintf("10.0.0.%d:4433", i))
	}
	tg := New([]string{"a:1"})
	tg.Redirect(proto.NotLeader("10.0.0.99:4433", many))
	if n := len(tg.Addrs()); n != tuning.MaxCoordinators {
		t.Fatalf("%d addresses kept, want %d", n, tuning.MaxCoordinators)
	}
	// The named leader is dialled even when the list is full.
	if got := tg.Next(); got != "10.0.0.99:4433" {
		t.Fatalf("next %q, want the leader", got)
	}
	tg.Redirect(proto.NotLeader("", many[20:]))
	if n := len(tg.Addrs()); n != tuning.MaxCoordinators {
		t.Fatalf("%d addresses kept, want %d", n, tuning.MaxCoordinators)
	}
	// Configured addresses are kept whatever their number.
	tg = New(many[:20])
	tg.Redirect(proto.NotLeader("", []string{"x:1"}))
	if n := len(tg.Addrs()); n != 20 {
		t.Fatalf("%d addresses, want the 20 configured", n)
	}
}

func TestNoLeaderPausesAndGrows(t *testing.T) {
	tg := New([]string{"a:1", "b:2"})
	prevMax := time.Duration(0)
	for i := range 8 {
		tg.Next()
		wait := tg.Redirect(proto.NotLeader("", nil))
		b := min(tuning.ReconnectMin<<i, tuning.ReconnectMax)
		if wait < b/2 || wait > b {
			t.Fatalf("pause %d: %v, want within [%v, %v]", i, wait, b/2, b)
		}
		prevMax = max(prevMax, wait)
	}
	if prevMax > tuning.ReconnectMax {
		t.Fatalf("pause %v over the bound", prevMax)
	}
}

func TestFailedWaitsOnlyAfterAFullRound(t *testing.T) {
	tg := New([]string{"a:1", "b:2", "c:3"})
	errA, errB, errC := errors.New("timeout A"), errors.New("timeout B"), errors.New("refused C")
	for i, e := range []error{errA, errB} {
		addr := tg.Next()
		wait, err := tg.Failed(addr, e)
		if wait != 0 || err != e {
			t.Fatalf("failure %d: wait %v, err %v: want the next address at once", i, wait, err)
		}
	}
	wait, err := tg.Failed(tg.Next(), errC)
	if wait <= 0 || wait > tuning.ReconnectMin {
		t.Fatalf("after a full round: wait %v", wait)
	}
	var ue *UnreachableError
	if !errors.As(err, &ue) || !errors.Is(err, errB) {
		t.Fatalf("got %v, want an UnreachableError wrapping each", err)
	}
	want := "no coordinator reachable at a:1, b:2, c:3: a:1: timeout A; b:2: timeout B; c:3: refused C"
	if err.Error() != want {
		t.Fatalf("message\n%s\nwant\n%s", err, want)
	}
	// A new round: no wait until every address failed again.
	if wait, _ := tg.Failed(tg.Next(), errA); wait != 0 {
		t.Fatalf("new round waited %v", wait)
	}
}

func TestUnreachableErrorDoesNotRepeatTheAddress(t *testing.T) {
	tg := New([]string{"127.0.0.1:1"})
	_, err := tg.Failed(tg.Next(), errors.New("dial 127.0.0.1:1: timeout"))
	if got := err.Error(); got != "no coordinator reachable at 127.0.0.1:1: dial 127.0.0.1:1: timeout" {
		t.Fatal(got)
	}
}

func TestSingleAddressPausesEveryTime(t *testing.T) {
	tg := New([]string{"a:1"})
	for i := range 4 {
		if wait, _ := tg.Failed(tg.Next(), errors.New("x")); wait <= 0 {
			t.Fatalf("failure %d: no pause", i)
		}
	}
}

func TestRedirectToAFailedLeaderPauses(t *testing.T) {
	tg := New([]string{"f1:1", "f2:2", "l:3"})
	tg.Next()
	if wait := tg.Redirect(proto.NotLeader("l:3", nil)); wait != 0 {
		t.Fatalf("first redirect waited %v", wait)
	}
	if addr := tg.Next(); addr != "l:3" {
		t.Fatalf("next %q", addr)
	}
	if wait, _ := tg.Failed("l:3", errors.New("dead")); wait != 0 {
		t.Fatalf("one address of three failed: waited %v", wait)
	}
	tg.Next()
	// Another follower still names the dead leader: pause before it again.
	if wait := tg.Redirect(proto.NotLeader("l:3", nil)); wait == 0 {
		t.Fatal("redirected at once to an address that just failed")
	}
}

func TestRedirectHopsAreBounded(t *testing.T) {
	tg := New([]string{"a:1", "b:2"})
	free := 0
	for i := range 3 * tuning.RedirectHops {
		tg.Next()
		// Two followers naming each other, for ever.
		ldr := []string{"a:1", "b:2"}[i%2]
		if tg.Redirect(proto.NotLeader(ldr, nil)) == 0 {
			free++
		}
	}
	if free > 3*tuning.RedirectHops-2 || free < tuning.RedirectHops {
		t.Fatalf("%d of %d redirects followed at once", free, 3*tuning.RedirectHops)
	}
	// A welcome ends the run: the next redirect is free again.
	tg.Connected("a:1")
	if tg.Redirect(proto.NotLeader("b:2", nil)) != 0 {
		t.Fatal("redirect after a session waited")
	}
}

func TestLostSessionPausesAndStableSessionResets(t *testing.T) {
	now := time.Unix(1000, 0)
	tg := New([]string{"a:1", "b:2"})
	tg.now = func() time.Time { return now }
	grow := func() {
		for range 6 {
			tg.Redirect(proto.NotLeader("", nil))
		}
	}
	grow()
	addr := tg.Next()
	tg.Connected(addr)
	boom := errors.New("stream reset")
	wait, err := tg.Failed(addr, boom)
	if err != boom || wait < tuning.ReconnectMax/2 {
		t.Fatalf("short session lost: wait %v, err %v: want the grown pause", wait, err)
	}
	grow()
	addr = tg.Next()
	tg.Connected(addr)
	now = now.Add(tuning.ReconnectStable)
	if wait, _ := tg.Failed(addr, boom); wait > tuning.ReconnectMin {
		t.Fatalf("after a stable session the pause is %v, want at most %v", wait, tuning.ReconnectMin)
	}
	// The same address failing to dial later is a new attempt, not the
	// session again.
	tg.Next()
	if wait, _ := tg.Failed("b:2", boom); wait != 0 {
		t.Fatalf("dial failure of one of two addresses waited %v", wait)
	}
}

func TestConcurrentUse(t *testing.T) {
	tg := New([]string{"a:1", "b:2"})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				a := tg.Next()
				switch j % 4 {
				case 0:
					tg.Redirect(proto.NotLeader(fmt.Sprintf("10.0.%d.%d:1", i, j%20), []string{"c:3"}))
				case 1:
					tg.Failed(a, errors.New("x"))
				case 2:
					tg.Connected(a)
				default:
					_ = tg.String()
				}
			}
		})
	}
	wg.Wait()
	if n := len(tg.Addrs()); n > tuning.MaxCoordinators {
		t.Fatalf("%d addresses", n)
	}
}

func TestParseList(t *testing.T) {
	got, err := ParseList(" a:1, [::1]:4433 ,,10.0.0.1:4433")
	if err != nil || !slices.Equal(got, []string{"a:1", "[::1]:4433", "10.0.0.1:4433"}) {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range []string{"", " , ", "a:1,b", "a:1,:2", "a:x", "a:70000", "http://a:1"} {
		if _, err := ParseList(bad); err == nil {
			t.Errorf("%q accepted", bad)
		} else if bad != "" && strings.TrimSpace(strings.ReplaceAll(bad, ",", "")) != "" && !strings.Contains(err.Error(), "host:port") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

// A leader reached through a redirect that then dies is not dialled first
// again, and a follower still naming it is not followed at once.
func TestALostLeaderIsTriedLast(t *testing.T) {
	tg := New([]string{"a:1", "b:2", "c:3"})
	for range 2 {
		tg.Next() // a, b: the turn is at c
	}
	if got := tg.Next(); got != "c:3" {
		t.Fatalf("Next %s", got)
	}
	tg.Redirect(&proto.Error{Code: proto.CodeNotLeader, Leader: "a:1"})
	if got := tg.Next(); got != "a:1" {
		t.Fatalf("after the redirect: %s", got)
	}
	tg.Connected("a:1")
	tg.Failed("a:1", errors.New("idle timeout"))
	if got := tg.Next(); got == "a:1" {
		t.Fatal("the lost leader is dialled first again")
	}
	if wait := tg.Redirect(&proto.Error{Code: proto.CodeNotLeader, Leader: "a:1"}); wait == 0 {
		t.Fatal("a stale redirect to the lost leader is followed at once")
	}
}
