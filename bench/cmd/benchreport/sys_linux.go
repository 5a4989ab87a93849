package main

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// fsType names the filesystem holding dir (from /proc/mounts).
func fsType(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "?"
	}
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "?"
	}
	defer f.Close()
	best, typ := "", "?"
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 3 && strings.HasPrefix(abs, fs[1]) && len(fs[1]) > len(best) {
			best, typ = fs[1], fs[2]+" on "+fs[0]
		}
	}
	return typ
}
