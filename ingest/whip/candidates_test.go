package whip

import (
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/internal/auth"
)

func TestParseCandidate(t *testing.T) {
	for _, c := range []struct {
		line, want string // want: the candidate's String, or the error's text
		ok         bool
	}{
		{"a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host", "udp host 127.0.0.1:40000", true},
		{"candidate:842163049 1 udp 1677729535 203.0.113.9 56789 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag Zq2k network-cost 999", "udp srflx 203.0.113.9:56789", true},
		{"candidate:0 1 UDP 2122252543 192.168.7.7 50000 typ host", "udp host 192.168.7.7:50000", true},
		{"candidate:1 1 TCP 1518280447 192.168.7.7 9 typ host tcptype active", "tcp host 192.168.7.7:9", true},
		{"candidate:2 1 udp 2122262783 fe80::1%eth0 50001 typ host", "udp host [fe80::1]:50001", true},
		{"candidate:3 1 udp 2122262783 ::ffff:10.1.2.3 50001 typ host", "udp host 10.1.2.3:50001", true},
		{"candidate:4 1 udp 2113937151 2b7f3c1e-91aa-4c2e-b1f3-1d2a3b4c5d6e.local 61234 typ host generation 0", "udp host 2b7f3c1e-91aa-4c2e-b1f3-1d2a3b4c5d6e.local:61234", true},
		{"candidate:5 1 udp 16777215 198.51.100.7 3478 typ relay raddr 203.0.113.9 rport 56789", "udp relay 198.51.100.7:3478", true},
		{"a=candidate:garbage", "fields", false},
		{"candidate:1 1 udp 2130706431 127.0.0.1 40000 typ", "fields", false},
		{"candidate:a-b 1 udp 1 127.0.0.1 40000 typ host", "foundation", false},
		{"candidate:1 0 udp 1 127.0.0.1 40000 typ host", "component", false},
		{"candidate:1 257 udp 1 127.0.0.1 40000 typ host", "component", false},
		{"candidate:1 x udp 1 127.0.0.1 40000 typ host", "component", false},
		{"candidate:1 1 udp 4294967296 127.0.0.1 40000 typ host", "priority", false},
		{"candidate:1 1 udp -1 127.0.0.1 40000 typ host", "priority", false},
		{"candidate:1 1 udp 1 not_an!address 40000 typ host", "neither an IP address nor a host name", false},
		{"candidate:1 1 udp 1 127.0.0.1 70000 typ host", "port", false},
		{"candidate:1 1 udp 1 127.0.0.1 4x typ host", "port", false},
		{"candidate:1 1 udp 1 127.0.0.1 40000 type host", `"typ" was expected`, false},
		{"candidate:1 1 udp 1 127.0.0.1 40000 typ lan", "candidate type", false},
		{"candidate:1 1 udp 1 127.0.0.1 40000 typ host generation", "has no value", false},
		{"candidate:1 1 udp 1 127.0.0.1 40000 typ srflx raddr 1.2.3.4 rport x", "rport", false},
		{"candidate:1  1 udp 1 127.0.0.1 40000 typ host", "component", false},
		{"ice-ufrag:abcd", "not a candidate", false},
	} {
		got, err := parseCandidate(c.line)
		switch {
		case c.ok && err != nil:
			t.Errorf("%q: %v", c.line, err)
		case c.ok && got.String() != c.want:
			t.Errorf("%q: parsed as %s, want %s", c.line, got, c.want)
		case !c.ok && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%q: err %v, want one containing %q", c.line, err, c.want)
		}
	}
}

func mustPrefixes(s ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, x := range s {
		ps = append(ps, netip.MustParsePrefix(x))
	}
	return ps
}

func TestCandidateFilter(t *testing.T) {
	attached := mustPrefixes("192.168.1.0/24", "fd00::/64")
	f := newCandidateFilter(mustPrefixes("127.0.0.0/8", "::1/128", "192.168.1.0/24", "::ffff:10.9.0.0/112"), attached, false)
	mdns := newCandidateFilter(nil, nil, true)
	cand := func(addr, typ string, rest ...string) string {
		return "candidate:1 1 udp 2130706431 " + addr + " 40000 typ " + typ + strings.Join(rest, "")
	}
	for _, c := range []struct {
		f      *candidateFilter
		line   string
		ok     bool
		reason string
	}{
		{f, cand("127.0.0.1", "host"), true, ""},
		{f, cand("127.3.4.5", "host"), true, ""},
		{f, cand("::1", "host"), true, ""},
		{f, cand("::ffff:127.0.0.1", "host"), true, ""},
		{f, cand("192.168.1.20", "host"), true, ""},
		{f, cand("10.9.0.7", "host"), true, ""}, // an IPv4-mapped prefix allows the IPv4 network
		{f, cand("192.168.1.255", "host"), false, "not a unicast address"},
		{f, cand("192.168.1.0", "host"), false, "not a unicast address"},
		{f, cand("255.255.255.255", "host"), false, "not a unicast address"},
		{f, cand("224.0.0.251", "host"), false, "not a unicast address"},
		{f, cand("0.0.0.0", "host"), false, "not a unicast address"},
		{f, cand("10.1.2.3", "host"), false, "outside the allowed networks"},
		{f, cand("192.168.7.7", "host"), false, "outside the allowed networks"},
		{f, cand("203.0.113.5", "srflx", " raddr 192.168.1.20 rport 40000"), false, "outside the allowed networks"},
		{f, cand("::2", "host"), false, "outside the allowed networks"},
		{f, cand("fd00::7", "host"), false, "outside the allowed networks"}, // attached, but not allowed
		{f, cand("fe80::1%eth0", "host"), false, "outside the allowed networks"},
		{f, cand("192.168.1.5", "relay", " raddr 203.0.113.5 rport 1"), true, ""},
		{f, cand("198.51.100.7", "relay", " raddr 192.168.1.20 rport 1"), false, "outside the allowed networks"},
		{f, "candidate:1 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active", false, "TCP"},
		{f, "candidate:1 1 sctp 1 127.0.0.1 9 typ host", false, `transport "sctp"`},
		{f, "candidate:1 2 udp 1 127.0.0.1 9 typ host", false, "component 2"},
		{f, "candidate:1 1 udp 1 127.0.0.1 0 typ host", false, "port 0"},
		{f, cand("1f2e3d4c-aaaa-bbbb-cccc-0123456789ab.local", "host"), false, "mDNS"},
		{f, cand("console-7.LOCAL.", "host"), false, "mDNS"},
		{f, cand("console.example.org", "host"), false, "host names are not resolved"},
		{mdns, cand("1f2e3d4c-aaaa-bbbb-cccc-0123456789ab.local", "host"), true, ""},
		{mdns, cand("relay.local", "relay"), false, "mDNS"},
		{mdns, cand("console.example.org", "host"), false, "host names are not resolved"},
	} {
		pc, err := parseCandidate(c.line)
		if err != nil {
			t.Fatalf("%q: %v", c.line, err)
		}
		ok, reason := c.f.check(pc)
		if ok != c.ok || !strings.Contains(reason, c.reason) {
			t.Errorf("%q: %v %q, want %v %q", c.line, ok, reason, c.ok, c.reason)
		}
	}
}

// The default is loopback plus the networks of the interfaces' addresses
// (with their masks); their IPv4 broadcast addresses are refused.
func TestDefaultAllowedNetworks(t *testing.T) {
	_, lan, _ := net.ParseCIDR("192.168.1.10/24")
	lan.IP = net.ParseIP("192.168.1.10") // as net.Interface.Addrs gives it: the host's address and the mask
	addrs := []net.Addr{
		lan,
		&net.IPNet{IP: net.ParseIP("fd00::2"), Mask: net.CIDRMask(64, 128)},
		&net.IPNet{IP: net.ParseIP("10.0.0.5").To4(), Mask: net.CIDRMask(32, 32)},
		&net.IPNet{IP: net.ParseIP("172.16.0.1"), Mask: net.CIDRMask(112, 128)}, // an IPv4 address with a 16-byte mask
		&net.IPAddr{IP: net.ParseIP("198.51.100.1")},                            // no mask: not a network
	}
	nets := networksOf(addrs)
	if got := fmtPrefixes(nets); got != "192.168.1.0/24 fd00::/64 10.0.0.5/32 172.16.0.0/16" {
		t.Fatalf("networks %s", got)
	}
	f := newCandidateFilter(nil, nets, false)
	if got := f.String(); got != "127.0.0.0/8 ::1/128 192.168.1.0/24 fd00::/64 10.0.0.5/32 172.16.0.0/16" {
		t.Fatalf("default allowed networks %s", got)
	}
	for a, want := range map[string]bool{"127.0.0.1": true, "::1": true, "192.168.1.77": true, "fd00::99": true, "10.0.0.5": true, "10.0.0.6": false,
		"172.16.200.1": true, "192.168.1.255": false, "172.16.255.255": false, "192.168.2.1": false, "203.0.113.5": false, "198.51.100.1": false} {
		c, _ := parseCandidate("candidate:1 1 udp 1 " + a + " 5000 typ host")
		if ok, why := f.check(c); ok != want {
			t.Errorf("%s: allowed %v (%s), want %v", a, ok, why, want)
		}
	}

	// This host's own interfaces.
	real, err := attachedNetworks()
	if err != nil {
		t.Fatal(err)
	}
	f = newCandidateFilter(nil, real, false)
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if i.Flags&net.FlagUp == 0 {
			continue
		}
		as, _ := i.Addrs()
		for _, a := range as {
			n, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, _ := netip.AddrFromSlice(n.IP)
			if !f.allowedAddr(ip.Unmap()) {
				t.Errorf("%s's address %s is not in the default networks %s", i.Name, n, f)
			}
		}
	}
	for _, a := range []string{"127.0.0.1", "::1"} {
		if !f.allowedAddr(netip.MustParseAddr(a)) {
			t.Errorf("%s not allowed by default (%s)", a, f)
		}
	}
	t.Logf("default allowed networks here: %s", f)
}

func fmtPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, " ")
}

func TestFilterSDP(t *testing.T) {
	f := newCandidateFilter(loopbackNetworks, nil, false)
	cands := "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n" +
		"a=candidate:2 1 udp 2130706431 10.1.2.3 40000 typ host\r\n" +
		"a=candidate:3 1 udp 2130706431 abcd.local 40000 typ host\r\n" +
		"a=candidate:4 1 udp 2130706431 ::1 40001 typ host\r\n"
	sdp := sdpHead + "a=ice-options:ice2 trickle\r\n" + audio("0", "0") + cands + audio("1", "0") + cands + "a=end-of-candidates\r\n"
	seen := map[string]bool{}
	out, tally, err := f.filterSDP(sdp, seen)
	if err != nil {
		t.Fatal(err)
	}
	if tally.distinct != 4 || tally.kept != 2 || tally.dropped != 2 || !tally.trickle || !strings.Contains(tally.example, "10.1.2.3:40000: outside the allowed networks") {
		t.Fatalf("tally %+v", tally)
	}
	if strings.Contains(out, "10.1.2.3") || strings.Contains(out, ".local") || strings.Count(out, "a=candidate:") != 4 || !strings.Contains(out, "a=end-of-candidates\r\n") {
		t.Fatalf("filtered SDP:\n%s", out)
	}
	if want := strings.ReplaceAll(strings.ReplaceAll(sdp, "a=candidate:2 1 udp 2130706431 10.1.2.3 40000 typ host\r\n", ""), "a=candidate:3 1 udp 2130706431 abcd.local 40000 typ host\r\n", ""); out != want {
		t.Fatalf("the rest of the SDP changed:\n%q\nwant\n%q", out, want)
	}
	// The same candidates again count for nothing; a new one counts.
	_, tally, _ = f.filterSDP(cands+"a=candidate:5 1 udp 1 127.0.0.2 9 typ host\n", seen)
	if tally.distinct != 1 || tally.kept != 1 || tally.trickle {
		t.Fatalf("second tally %+v", tally)
	}
	if _, _, err := f.filterSDP(sdpHead+audio("0", "0")+"a=candidate:1 1 udp 1 127.0.0.1 99999 typ host\r\n", map[string]bool{}); err == nil || !strings.Contains(err.Error(), "line 9: port") {
		t.Fatalf("malformed candidate: %v", err)
	}
}

// The server reads the interfaces again once its filter is older than
// filterTTL.
func TestCandidateFilterIsRefreshed(t *testing.T) {
	srv, err := New(Config{Sink: newFakeSink(), Auth: func(string, *tls.ConnectionState, netip.Addr) (auth.Principal, error) {
		return auth.Principal{Name: "c1", Role: auth.Console}, nil
	}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	f := srv.candidates()
	if srv.candidates() != f {
		t.Fatal("the filter was made again within its TTL")
	}
	f.made = time.Now().Add(-filterTTL - time.Second)
	g := srv.candidates()
	if g == f || time.Since(g.made) > time.Second || g.String() != f.String() {
		t.Fatalf("after the TTL: %p made %s ago, networks %s (was %p, %s)", g, time.Since(g.made), g, f, f)
	}
}
