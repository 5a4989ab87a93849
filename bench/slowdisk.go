package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/callscribe/callscribe/internal/pki"
)

// blkioRoot is where cgroup v1's blkio controller is mounted.
const blkioRoot = "/sys/fs/cgroup/blkio"

// SlowDisk is an ext4 filesystem on a loop device over a file-backed image
// in a temporary directory, and a cgroup v1 blkio group whose writes to that
// device can be throttled (Throttle). Throttling applies to the processes
// in the group, to the I/O they issue themselves: writes they sync
// (fdatasync, msync) are throttled, the kernel's own threads (the ext4
// journal's commits, background writeback) are not.
type SlowDisk struct {
	// Mount is where the filesystem is mounted.
	Mount string
	// Loop is the loop device (/dev/loopN) and MajMin its "major:minor".
	Loop, MajMin string
	// Cgroup is the blkio group's directory.
	Cgroup string
	tmp    string
}

// SlowDiskUnavailable says why this machine cannot make a SlowDisk (not
// root, no cgroup v1 blkio, no loop devices or tools), or "" if it can.
func SlowDiskUnavailable() string {
	if os.Geteuid() != 0 {
		return "not root (a loop device, a mount and a blkio cgroup need root)"
	}
	if !cgroupV1Blkio() {
		return "cgroup v1 blkio is not mounted at " + blkioRoot + " (on cgroup v2 throttling is io.max, not measured here)"
	}
	for _, f := range []string{"blkio.throttle.write_iops_device", "blkio.throttle.io_serviced", "blkio.throttle.io_service_bytes", "cgroup.procs"} {
		if _, err := os.Stat(filepath.Join(blkioRoot, f)); err != nil {
			return "cgroup v1 blkio lacks " + f
		}
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return "no loop devices (/dev/loop-control is missing)"
	}
	for _, t := range []string{"losetup", "mkfs.ext4"} {
		if _, err := exec.LookPath(t); err != nil {
			return t + " is not installed"
		}
	}
	return ""
}

// cgroupV1Blkio reports whether blkioRoot is a cgroup v1 mount with the
// blkio controller.
func cgroupV1Blkio() bool {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 4 && fs[1] == blkioRoot && fs[2] == "cgroup" && slices.Contains(strings.Split(fs[3], ","), "blkio") {
			return true
		}
	}
	return false
}

// SetupError is a failure to make the slow disk itself (no free loop
// device, a mount refused): the machine cannot run the measurement.
type SetupError struct{ Err error }

func (e *SetupError) Error() string { return e.Err.Error() }
func (e *SetupError) Unwrap() error { return e.Err }

// NewSlowDisk makes a sparse image of size bytes in a new temporary
// directory under parent, attaches it to a free loop device, makes an ext4
// filesystem on it (inode tables and journal initialised now, not by a
// kernel thread during the measurement), mounts it, and makes an empty
// blkio cgroup. On failure whatever was made is undone. Close undoes it all.
func NewSlowDisk(ctx context.Context, parent string, size int64) (_ *SlowDisk, err error) {
	if why := SlowDiskUnavailable(); why != "" {
		return nil, &SetupError{errors.New(why)}
	}
	tmp, err := os.MkdirTemp(parent, "slowdisk-")
	if err != nil {
		return nil, err
	}
	tmp, _ = filepath.Abs(tmp)
	d := &SlowDisk{tmp: tmp}
	defer func() {
		if err != nil {
			d.Close()
			if !errors.As(err, new(*SetupError)) {
				err = &SetupError{err}
			}
		}
	}()
	img := filepath.Join(tmp, "disk.img")
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, "losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("losetup: %v: %s", err, strings.TrimSpace(string(out)))
	}
	d.Loop = strings.TrimSpace(string(out))
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(d.Loop), "dev"))
	if err != nil {
		return nil, err
	}
	d.MajMin = strings.TrimSpace(string(b))
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", d.Loop).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mkfs.ext4: %v: %s", err, strings.TrimSpace(string(out)))
	}
	mnt := filepath.Join(tmp, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		return nil, err
	}
	if err := syscall.Mount(d.Loop, mnt, "ext4", 0, ""); err != nil {
		return nil, fmt.Errorf("mount %s on %s: %w", d.Loop, mnt, err)
	}
	d.Mount = mnt
	cg := filepath.Join(blkioRoot, fmt.Sprintf("callscribe-slowdisk-%d-%s", os.Getpid(), filepath.Base(tmp)))
	if err := os.Mkdir(cg, 0o755); err != nil {
		return nil, err
	}
	d.Cgroup = cg
	return d, nil
}

// Throttle limits the group's writes to the loop device to iops per second
// (0 removes the limit).
func (d *SlowDisk) Throttle(iops int) error {
	return os.WriteFile(filepath.Join(d.Cgroup, "blkio.throttle.write_iops_device"), fmt.Appendf(nil, "%s %d\n", d.MajMin, iops), 0o644)
}

// Command is exec.CommandContext(ctx, name, args...) but run inside the
// group: a shell joins it (cgroup.procs) and then execs name, so the process
// and every thread and child it will have are in the group from their first
// I/O, and the command's pid is the process's own.
func (d *SlowDisk) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(d.Cgroup, "cgroup.procs"), name}, args...)...)
}

// WriteIOs is how many write requests the group has issued to the loop
// device (blkio.throttle.io_serviced), throttled or not.
func (d *SlowDisk) WriteIOs() (int64, error) {
	b, err := os.ReadFile(filepath.Join(d.Cgroup, "blkio.throttle.io_serviced"))
	if err != nil {
		return 0, err
	}
	return ioServiced(string(b), d.MajMin, "Write")
}

// WriteBytes is how many bytes the group has written to the loop device
// (blkio.throttle.io_service_bytes).
func (d *SlowDisk) WriteBytes() (int64, error) {
	b, err := os.ReadFile(filepath.Join(d.Cgroup, "blkio.throttle.io_service_bytes"))
	if err != nil {
		return 0, err
	}
	return ioServiced(string(b), d.MajMin, "Write")
}

// ioServiced reads one device's count of one operation from a cgroup v1
// blkio.throttle.io_serviced or io_service_bytes file ("7:0 Write 300"
// lines); a device the group has not touched yet has no lines, which is 0.
func ioServiced(text, majMin, op string) (int64, error) {
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) == 3 && f[0] == majMin && f[1] == op {
			return strconv.ParseInt(f[2], 10, 64)
		}
	}
	return 0, nil
}

// Procs lists the processes in the group.
func (d *SlowDisk) Procs() []int {
	b, _ := os.ReadFile(filepath.Join(d.Cgroup, "cgroup.procs"))
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// Close undoes NewSlowDisk, whatever state it is in: it kills what is still
// in the group (only processes started through Command are), removes the
// group, unmounts the filesystem (lazily if it stays busy), detaches the
// loop device and removes the image and its directory. It returns the first
// failure, having tried every step.
func (d *SlowDisk) Close() error {
	var errs []error
	if d.Cgroup != "" {
		_ = d.Throttle(0)
		for try := 0; ; try++ {
			pids := d.Procs()
			if len(pids) == 0 {
				break
			}
			if try == 50 {
				errs = append(errs, fmt.Errorf("slow disk: processes %v stay in %s", pids, d.Cgroup))
				break
			}
			for _, p := range pids {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err := os.Remove(d.Cgroup); err != nil {
			errs = append(errs, err)
		} else {
			d.Cgroup = ""
		}
	}
	if d.Mount != "" {
		var err error
		for try := 0; try < 20; try++ {
			if err = syscall.Unmount(d.Mount, 0); err == nil || !errors.Is(err, syscall.EBUSY) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if errors.Is(err, syscall.EBUSY) {
			err = syscall.Unmount(d.Mount, syscall.MNT_DETACH)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", d.Mount, err))
		} else {
			d.Mount = ""
		}
	}
	if d.Loop != "" {
		if out, err := exec.Command("losetup", "--detach", d.Loop).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("losetup --detach %s: %v: %s", d.Loop, err, strings.TrimSpace(string(out))))
		} else {
			d.Loop = ""
		}
	}
	if d.tmp != "" && d.Mount == "" { // never remove through a live mount
		if err := os.RemoveAll(d.tmp); err != nil {
			errs = append(errs, err)
		} else {
			d.tmp = ""
		}
	}
	return errors.Join(errs...)
}

// FsyncProbe is what FsyncRate measured.
type FsyncProbe struct {
	Syncs   int           `json:"syncs"`
	Elapsed time.Duration `json:"elapsed"`
	Latency Summary       `json:"latency"`
}

// PerSecond is the probe's syncs per second.
func (p FsyncProbe) PerSecond() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return float64(p.Syncs) / p.Elapsed.Seconds()
}

// FsyncRate appends 4 KiB and fdatasyncs, one at a time, for d (at most
// maxSyncs times), in a new file in dir which it removes: a disk's synced writes
// per second, each one write request.
func FsyncRate(dir string, d time.Duration, maxSyncs int) (FsyncProbe, error) {
	p := filepath.Join(dir, "fsync-rate.probe")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return FsyncProbe{}, err
	}
	defer os.Remove(p)
	defer f.Close()
	var rec Recorder
	b := make([]byte, 4096)
	t0 := time.Now()
	n := 0
	for ; n < maxSyncs && time.Since(t0) < d; n++ {
		t := time.Now()
		if _, err := f.Write(b); err != nil {
			return FsyncProbe{}, err
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return FsyncProbe{}, err
		}
		rec.Add(time.Since(t))
	}
	return FsyncProbe{Syncs: n, Elapsed: time.Since(t0), Latency: rec.Summary()}, nil
}

// ApplianceProcess is `callscribe bench appliance` (a coordinator with the
// fast fake engine, what `bench load --engine fake` starts) running as a
// process of its own.
type ApplianceProcess struct {
	Dir, QUIC, HTTP, Token string
	// CA is the appliance's CA certificate file.
	CA     string
	Cmd    *exec.Cmd
	exited chan struct{}
}

// StartApplianceProcess starts `bin bench appliance` on dir with slots
// fake-worker slots, on free loopback ports, through command (exec.Command,
// or SlowDisk.Command to run it in a cgroup), and waits until it is ready
// and slots worker slots are free. extra are more flags for it.
func StartApplianceProcess(ctx context.Context, command func(ctx context.Context, name string, args ...string) *exec.Cmd, bin, dir string, slots int, extra ...string) (*ApplianceProcess, error) {
	q, err1 := FreeAddr("udp")
	h, err2 := FreeAddr("tcp")
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("bench: no free port: %w", err)
	}
	cmd := command(ctx, bin, append([]string{"bench", "appliance", "--data", dir, "--quic", q, "--http", h, "--slots", fmt.Sprint(slots)}, extra...)...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	a := &ApplianceProcess{Dir: dir, QUIC: q, HTTP: "http://" + h, CA: filepath.Join(dir, pki.CAFile), Cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(a.exited) }()
	deadline := time.Now().Add(60 * time.Second)
	client := &http.Client{Timeout: 2 * time.Second}
	const free = `callscribe_worker_slots{use="free"}`
	for {
		m, _ := ReadMetrics(ctx, client, a.HTTP, free) // nil until it answers
		if m[free] >= float64(slots) {
			break
		}
		select {
		case <-a.exited:
			return nil, fmt.Errorf("bench: the appliance exited while starting (%v)", cmd.ProcessState)
		case <-ctx.Done():
			a.Stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.Stop()
			return nil, fmt.Errorf("bench: the appliance on %s was not ready with %d free slots in 60 s", a.HTTP, slots)
		}
	}
	var err error
	if a.Token, err = pki.ReadToken(filepath.Join(dir, pki.ConsoleToken)); err != nil {
		a.Stop()
		return nil, err
	}
	return a, nil
}

// Stop stops the appliance (SIGTERM, then SIGKILL after 20 s) and waits
// for it.
func (a *ApplianceProcess) Stop() {
	_ = a.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(20 * time.Second):
		_ = a.Cmd.Process.Kill()
		<-a.exited
	}
}

// FreeAddr returns a free loopback address for network (udp or tcp).
func FreeAddr(network string) (string, error) {
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.LocalAddr().String(), nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
