package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// wire is a network made by the test: a network namespace per host, each
// with one TUN device as its only link, and this process as the switch
// between them. It forwards each IPv4 packet to the host owning its
// destination address after a fixed delay (one way; the same for every
// packet, so order is kept), and drops the packets of a pair of hosts it
// was told to cut. It stands in for veth pairs with `tc qdisc … netem`,
// which this kernel may not have (CONFIG_NET_SCH_NETEM), and it can cut
// one pair of hosts while both still reach every other.
type wire struct {
	delay  time.Duration
	prefix [3]byte // 10.217.N: host i is 10.217.N.i
	tag    string  // namespace names: cs<tag>-NAME

	mu         sync.RWMutex
	hosts      map[byte]*wireHost
	cut        map[[2]byte]bool
	all        []*wireHost
	namespaces []string // deleted at close

	forwarded, dropped atomic.Uint64
	closing            chan struct{}
	wg                 sync.WaitGroup
}

// wireHost is one host: its namespace and the TUN device this process
// reads its packets from and writes packets for it to.
type wireHost struct {
	name, ns, ip string
	f            *os.File
	q            chan wirePacket
}

type wirePacket struct {
	due time.Time
	b   []byte
}

// newWire prepares a network with the given one-way delay; hosts are added
// with add. It skips the test where namespaces or TUN devices cannot be
// made.
func newWire(t *testing.T, delay time.Duration) *wire {
	t.Helper()
	requireWire(t)
	n := os.Getpid() % 250
	w := &wire{delay: delay, prefix: [3]byte{10, 217, byte(n)}, tag: fmt.Sprint(os.Getpid()),
		hosts: map[byte]*wireHost{}, cut: map[[2]byte]bool{}, closing: make(chan struct{})}
	t.Cleanup(w.close)
	return w
}

// ip is host i's address.
func (w *wire) ip(i byte) string {
	return fmt.Sprintf("%d.%d.%d.%d", w.prefix[0], w.prefix[1], w.prefix[2], i)
}

// requireWire skips the test where a wire cannot be made: not root, no
// iproute2, no TUN device.
func requireWire(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("iproute2 not installed")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no TUN devices here: %v", err)
	}
}

// add makes host i (1–254) named name: its namespace, with loopback up
// and the TUN device holding its address, and starts forwarding for it.
// The namespace is deleted when the test ends.
func (w *wire) add(t *testing.T, i byte, name string) *wireHost {
	t.Helper()
	h := &wireHost{name: name, ns: "cs" + w.tag + "-" + name, ip: w.ip(i), q: make(chan wirePacket, 4096)}
	if out, err := exec.Command("ip", "netns", "add", h.ns).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace here: %v %s", err, out)
	}
	f, err := openTUN(h.ns, "cswire")
	if err != nil {
		_ = exec.Command("ip", "netns", "del", h.ns).Run()
		t.Skipf("cannot make a TUN device in a namespace here: %v", err)
	}
	h.f = f
	w.mu.Lock()
	w.namespaces = append(w.namespaces, h.ns)
	w.mu.Unlock()
	ipCmd(t, "-n", h.ns, "link", "set", "lo", "up")
	ipCmd(t, "-n", h.ns, "addr", "add", h.ip+"/24", "dev", "cswire")
	ipCmd(t, "-n", h.ns, "link", "set", "cswire", "up")
	w.mu.Lock()
	w.hosts[i] = h
	w.all = append(w.all, h)
	w.mu.Unlock()
	w.wg.Add(2)
	go w.read(i, h)
	go w.write(h)
	return h
}

// openTUN creates the TUN device name in namespace ns and opens it (non-
// blocking, so reads and writes go through Go's poller and Close ends
// them). The thread that entered the namespace is discarded.
func openTUN(ns, name string) (*os.File, error) {
	return inNetns(ns, func() (*os.File, error) {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return nil, err
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("TUNSETIFF %s: %w", name, err)
		}
		return os.NewFile(uintptr(fd), "/dev/net/tun:"+ns), nil
	})
}

// read forwards host i's packets until its device is closed.
func (w *wire) read(i byte, h *wireHost) {
	defer w.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := h.f.Read(buf)
		if err != nil {
			return
		}
		p := buf[:n]
		// IPv4 only, within the network; the rest (IPv6 router
		// solicitations) goes nowhere.
		if n < 20 || p[0]>>4 != 4 || [3]byte(p[16:19]) != w.prefix {
			w.dropped.Add(1)
			continue
		}
		dst := p[19]
		w.mu.RLock()
		to := w.hosts[dst]
		cut := w.cut[[2]byte{i, dst}]
		w.mu.RUnlock()
		if to == nil || cut {
			w.dropped.Add(1)
			continue
		}
		select {
		case to.q <- wirePacket{due: time.Now().Add(w.delay), b: append([]byte(nil), p...)}:
			w.forwarded.Add(1)
		default: // the queue is full: dropped, as a real link would
			w.dropped.Add(1)
		}
	}
}

// write delivers host h's packets once due, in order.
func (w *wire) write(h *wireHost) {
	defer w.wg.Done()
	for {
		select {
		case p := <-h.q:
			if d := time.Until(p.due); d > 0 {
				time.Sleep(d)
			}
			// An error (the device is down) loses that packet only.
			if _, err := h.f.Write(p.b); errors.Is(err, os.ErrClosed) {
				return
			}
		case <-w.closing:
			return
		}
	}
}

// partition cuts host a off from each of others, both ways (their
// packets are dropped silently, as a dead switch port would), or heals
// that cut.
func (w *wire) partition(a byte, others []byte, cut bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range others {
		for _, k := range [][2]byte{{a, b}, {b, a}} {
			if cut {
				w.cut[k] = true
			} else {
				delete(w.cut, k)
			}
		}
	}
}

// remove takes host i off the network (its machine is gone).
func (w *wire) remove(i byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.hosts, i)
}

func (w *wire) close() {
	select {
	case <-w.closing:
		return
	default:
	}
	close(w.closing)
	w.mu.Lock()
	for _, h := range w.all {
		h.f.Close()
	}
	w.mu.Unlock()
	w.wg.Wait()
	for _, ns := range w.namespaces {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
}

// nsDialer dials from inside namespace ns: each connection's socket is
// made by a goroutine locked to a thread that entered it (and then
// discarded), so the test's own HTTP clients can reach hosts on a wire.
func nsDialer(ns string, timeout time.Duration) func(network, addr string) (net.Conn, error) {
	return func(network, addr string) (net.Conn, error) {
		return inNetns(ns, func() (net.Conn, error) { return net.DialTimeout(network, addr, timeout) })
	}
}

// The wire carries TCP between two of its hosts, delayed, and a cut
// stops it until healed.
func TestWire(t *testing.T) {
	w := newWire(t, 5*time.Millisecond)
	a, b := w.add(t, 1, "a"), w.add(t, 2, "b")
	// A listener in b, dialled from a.
	ln, err := inNetns(b.ns, func() (net.Listener, error) { return net.Listen("tcp", b.ip+":9000") })
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	dial := nsDialer(a.ns, time.Second)
	echo := func() error {
		c, err := dial("tcp", b.ip+":9000")
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if string(got) != "ping" {
			return fmt.Errorf("echo %q", got)
		}
		return nil
	}
	t0 := time.Now()
	if err := echo(); err != nil {
		t.Fatalf("across the wire: %v", err)
	}
	// A handshake and an echo: at least two round trips of 2 × 5 ms.
	if took := time.Since(t0); took < 20*time.Millisecond {
		t.Fatalf("the exchange took %v: the wire did not delay it", took)
	} else {
		t.Logf("connect and echo across the wire (5 ms each way): %v", took)
	}
	w.partition(1, []byte{2}, true)
	if err := echo(); err == nil {
		t.Fatal("the cut pair still talk")
	}
	w.partition(1, []byte{2}, false)
	if err := echo(); err != nil {
		t.Fatalf("after healing: %v", err)
	}
}
