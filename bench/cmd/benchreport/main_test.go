package main

import (
	"context"
	"os"
	"path/filepath"
	"runtime/trace"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/bench"
	"github.com/callscribe/callscribe/coordinator/store"
)

// The report explains Badger's commit time from a syscall profile of an
// execution trace; the profile's format belongs to the Go toolchain, so a
// new Go that changes it must fail here, not in a report nobody reads.
func TestSyscallProfileFindsBadgerSyncs(t *testing.T) {
	dir := t.TempDir()
	com := &bench.Commits{}
	sink, closeFn, err := bench.BadgerSink(filepath.Join(dir, "db"), com)
	if err != nil {
		t.Fatal(err)
	}
	tf := filepath.Join(dir, "trace")
	f, err := os.Create(tf)
	if err != nil {
		t.Fatal(err)
	}
	if err := trace.Start(f); err != nil {
		t.Fatal(err)
	}
	r := bench.Workload{Calls: 20, FrameSize: 3200, Interval: 100 * time.Millisecond, Duration: time.Second}.Run(context.Background(), sink)
	trace.Stop()
	f.Close()
	closeFn()
	if r.Errors != 0 || r.Frames != 200 {
		t.Fatalf("workload: %+v", r)
	}
	sites, err := syscallProfile(tf)
	if err != nil {
		t.Fatal(err)
	}
	commits := int64(com.Count())
	if len(sites) != 3 || commits == 0 {
		t.Fatalf("sites %+v, %d commits", sites, commits)
	}
	for _, s := range sites[:2] {
		// Each commit syncs the value log and the WAL once (a rotation can
		// add one).
		if s.count < commits || s.count > commits+2 || s.ms <= 0 {
			t.Errorf("%s: %d syncs taking %.2f ms for %d commits", s.name, s.count, s.ms, commits)
		}
	}
	if all := sites[2]; all.count < sites[0].count+sites[1].count || all.ms < sites[0].ms+sites[1].ms {
		t.Errorf("total %+v below its parts %+v", all, sites[:2])
	}
	t.Logf("%d commits: %+v", commits, sites)
}

func TestVerdictAndMedian(t *testing.T) {
	if v := verdictAtMost(1.2, 1.3, "×"); v != "met" {
		t.Errorf("1.2 ≤ 1.3: %q", v)
	}
	if v := verdictAtMost(1.56, 1.3, "×"); v != "**missed** by 0.26× (20 % over)" {
		t.Errorf("1.56 vs 1.3: %q", v)
	}
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median of 3,1,2 = %g", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median of 4,1,3,2 = %g", m)
	}
}

func TestOwnFramesKeepsOursOnly(t *testing.T) {
	top := `Showing nodes accounting for 6.62s, 60.13% of 11.01s total
      flat  flat%   sum%        cum   cum%
         0     0%     0%      5.00s 45.00%  runtime.goexit
     0.09s  0.82%  0.82%      0.69s  6.27%  github.com/callscribe/callscribe/coordinator.(*session).Append
         0     0%  0.82%      0.50s  4.50%  github.com/quic-go/quic-go.(*connection).run
         0     0%  0.82%      0.30s  2.70%  github.com/dgraph-io/badger/v4.(*DB).writeRequests
         0     0%  0.82%      0.20s  1.80%  internal/runtime/syscall/linux.Syscall6
`
	got := ownFrames(top, 2)
	for _, want := range []string{"flat  flat%", "(*session).Append", "(*connection).run"} {
		if !strings.Contains(got, want) {
			t.Errorf("lacks %q:\n%s", want, got)
		}
	}
	for _, not := range []string{"goexit", "Syscall6", "writeRequests"} {
		if strings.Contains(got, not) {
			t.Errorf("keeps %q (not ours, or past n):\n%s", not, got)
		}
	}
	if ownFrames("flat flat%\n", 5) != "" {
		t.Error("a listing with none of our frames should give nothing")
	}
}

// fresh gives a clean place for a new store: the state record an earlier
// store left beside it goes too, or the new store is refused as damaged.
func TestFreshForgetsTheOldStore(t *testing.T) {
	dir := t.TempDir()
	for i := range 2 {
		p, err := fresh(dir, "badger")
		if err != nil {
			t.Fatal(err)
		}
		st, err := store.Open(p, store.Options{})
		if err != nil {
			t.Fatalf("store %d in a fresh directory: %v", i, err)
		}
		if err := st.PutCall(context.Background(), &store.Call{ID: "c"}); err != nil {
			t.Fatal(err)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
