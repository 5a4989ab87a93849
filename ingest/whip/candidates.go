package whip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Remote ICE candidates tell the coordinator where to send connectivity
// checks. A console could name any address (the attack this file answers:
// 700 candidates at arbitrary private addresses), so only candidates the
// coordinator can use and is allowed to reach get to pion: UDP, component 1,
// an IP address (no name to resolve, unless mDNS is allowed) inside the
// allowed networks, and not a broadcast or multicast address. Everything
// else is dropped before pion ever sees it, and counted.

// loopbackNetworks are always part of the default allowed networks.
var loopbackNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// candidateFilter decides which remote ICE candidates a session may use.
type candidateFilter struct {
	allowed   []netip.Prefix
	deny      map[netip.Addr]bool // network and broadcast addresses of the attached IPv4 networks
	allowMDNS bool
	attached  []netip.Prefix // as it was given
	made      time.Time      // when the attached networks were read
}

// newCandidateFilter allows allowed (nil: loopback plus attached, the
// networks of this host's interfaces). attached also gives the broadcast
// addresses refused whatever is allowed.
func newCandidateFilter(allowed, attached []netip.Prefix, allowMDNS bool) *candidateFilter {
	f := &candidateFilter{allowMDNS: allowMDNS, attached: attached, deny: map[netip.Addr]bool{netip.AddrFrom4([4]byte{255, 255, 255, 255}): true}}
	if len(allowed) == 0 {
		allowed = append(append([]netip.Prefix(nil), loopbackNetworks...), attached...)
	}
	for _, p := range allowed {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p.Addr())).Masked()
		if !containsPrefix(f.allowed, p) {
			f.allowed = append(f.allowed, p)
		}
	}
	for _, p := range attached {
		if p.Addr().Is4() && p.Bits() <= 30 {
			f.deny[p.Masked().Addr()] = true
			f.deny[lastAddr(p)] = true
		}
	}
	return f
}

func unmapBits(a netip.Addr) int {
	if a.Is4In6() {
		return 96
	}
	return 0
}

func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// lastAddr is the highest address of an IPv4 prefix (its broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= uint32(1)<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// attachedNetworks returns the networks directly attached to this host: the
// address and mask of every address of every interface that is up.
func attachedNetworks() ([]netip.Prefix, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var addrs []net.Addr
	for _, i := range ifs {
		if i.Flags&net.FlagUp == 0 {
			continue
		}
		as, err := i.Addrs()
		if err != nil {
			return nil, fmt.Errorf("interface %s: %w", i.Name, err)
		}
		addrs = append(addrs, as...)
	}
	return networksOf(addrs), nil
}

// networksOf turns interface addresses into the networks they are on.
func networksOf(addrs []net.Addr) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ones, bits := n.Mask.Size()
		if bits == 0 {
			continue // a non-canonical mask
		}
		if ip.Is4In6() && bits == 128 {
			ones -= 96
		}
		ip = ip.Unmap()
		if ones < 0 || ones > ip.BitLen() {
			continue
		}
		p := netip.PrefixFrom(ip, ones).Masked()
		if !containsPrefix(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// candidate is a parsed ICE candidate attribute (RFC 8839 section 5.1).
type candidate struct {
	transport string // lower case
	component int
	addr      netip.Addr // the connection address, when it is an IP address
	host      string     // the connection address, when it is a name
	port      int
	typ       string // host, srflx, prflx or relay
}

// key identifies a candidate for counting: the same candidate repeated in
// every m= section of an offer, or trickled twice, counts once.
func (c candidate) key() string {
	return fmt.Sprintf("%s %d %s %d %s", c.transport, c.component, c.address(), c.port, c.typ)
}

func (c candidate) address() string {
	if c.addr.IsValid() {
		return c.addr.String()
	}
	return strings.ToLower(c.host)
}

func (c candidate) String() string {
	return fmt.Sprintf("%s %s %s", c.transport, c.typ, net.JoinHostPort(c.address(), strconv.Itoa(c.port)))
}

var candidateTypes = map[string]bool{"host": true, "srflx": true, "prflx": true, "relay": true}

// parseCandidate parses a candidate attribute: "candidate:foundation
// component transport priority address port typ type [raddr a] [rport p]
// *(name value)", with or without "a=" in front.
func parseCandidate(s string) (candidate, error) {
	var c candidate
	s = strings.TrimPrefix(strings.TrimSpace(s), "a=")
	v, ok := strings.CutPrefix(s, "candidate:")
	if !ok {
		return c, errors.New("not a candidate attribute (candidate:...)")
	}
	f := strings.Split(v, " ")
	if len(f) < 8 {
		return c, fmt.Errorf("%d fields; a candidate has foundation, component, transport, priority, address, port, \"typ\" and a type", len(f))
	}
	if len(f[0]) == 0 || len(f[0]) > 32 || strings.IndexFunc(f[0], func(r rune) bool { return !isICEChar(r) }) >= 0 {
		return c, fmt.Errorf("foundation %q is not 1 to 32 of A-Z a-z 0-9 + /", f[0])
	}
	comp, err := digits(f[1], 3)
	if err != nil || comp < 1 || comp > 256 {
		return c, fmt.Errorf("component %q is not a number from 1 to 256", f[1])
	}
	c.component = comp
	if f[2] == "" || strings.ContainsFunc(f[2], func(r rune) bool { return r <= ' ' || r > '~' }) {
		return c, fmt.Errorf("transport %q is not a token", f[2])
	}
	c.transport = strings.ToLower(f[2])
	if _, err := digits(f[3], 10); err != nil {
		return c, fmt.Errorf("priority %q is not a number from 0 to 4294967295", f[3])
	} else if _, err := strconv.ParseUint(f[3], 10, 32); err != nil {
		return c, fmt.Errorf("priority %q is not a number from 0 to 4294967295", f[3])
	}
	if c.addr, c.host, err = parseAddress(f[4]); err != nil {
		return c, err
	}
	if c.port, err = parsePort(f[5]); err != nil {
		return c, err
	}
	if f[6] != "typ" {
		return c, fmt.Errorf("%q where \"typ\" was expected", f[6])
	}
	c.typ = strings.ToLower(f[7])
	if !candidateTypes[c.typ] {
		return c, fmt.Errorf("candidate type %q is not host, srflx, prflx or relay", f[7])
	}
	rest := f[8:]
	if len(rest)%2 != 0 {
		return c, fmt.Errorf("%q has no value", rest[len(rest)-1])
	}
	for i := 0; i < len(rest); i += 2 {
		name, val := rest[i], rest[i+1]
		switch {
		case name == "" || val == "":
			return c, errors.New("an empty extension name or value (two spaces in a row?)")
		case name == "raddr":
			if _, _, err := parseAddress(val); err != nil {
				return c, fmt.Errorf("raddr: %w", err)
			}
		case name == "rport":
			if _, err := parsePort(val); err != nil {
				return c, fmt.Errorf("rport: %w", err)
			}
		}
	}
	return c, nil
}

func isICEChar(r rune) bool {
	return r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '+' || r == '/'
}

// digits parses 1 to max decimal digits.
func digits(s string, max int) (int, error) {
	if s == "" || len(s) > max || strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
		return 0, errors.New("not digits")
	}
	return strconv.Atoi(s)
}

func parsePort(s string) (int, error) {
	p, err := digits(s, 5)
	if err != nil || p > 65535 {
		return 0, fmt.Errorf("port %q is not a number from 0 to 65535", s)
	}
	return p, nil
}

// parseAddress parses a connection address: an IP address (an IPv6 zone is
// ignored) or a host name.
func parseAddress(s string) (netip.Addr, string, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.WithZone("").Unmap(), "", nil
	}
	if isHostName(s) {
		return netip.Addr{}, s, nil
	}
	return netip.Addr{}, "", fmt.Errorf("address %q is neither an IP address nor a host name", s)
}

func isHostName(s string) bool {
	if s == "" || len(s) > 253 || strings.HasPrefix(s, ".") || strings.HasPrefix(s, "-") || strings.Contains(s, "..") {
		return false
	}
	return strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.')
	}) < 0
}

// allowedAddr reports whether a is inside the allowed networks.
func (f *candidateFilter) allowedAddr(a netip.Addr) bool {
	for _, p := range f.allowed {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// check decides whether a session may use a remote candidate; reason says
// why not.
func (f *candidateFilter) check(c candidate) (ok bool, reason string) {
	switch {
	case c.transport == "tcp":
		return false, "TCP candidates are not used (UDP only)"
	case c.transport != "udp":
		return false, fmt.Sprintf("transport %q is not used (UDP only)", c.transport)
	case c.component != 1:
		return false, fmt.Sprintf("component %d is not used (RTP and RTCP share one port)", c.component)
	case !c.addr.IsValid() && strings.HasSuffix(strings.ToLower(strings.TrimSuffix(c.host, ".")), ".local"):
		if f.allowMDNS && c.typ == "host" {
			return true, ""
		}
		return false, "mDNS (.local) candidates are not resolved"
	case !c.addr.IsValid():
		return false, "host names are not resolved"
	case c.port == 0:
		return false, "port 0"
	case c.addr.IsUnspecified() || c.addr.IsMulticast() || f.deny[c.addr]:
		return false, "not a unicast address"
	case !f.allowedAddr(c.addr):
		return false, "outside the allowed networks"
	}
	return true, ""
}

// candidateTally is what filtering found in an SDP or a fragment.
type candidateTally struct {
	distinct int    // candidates not seen before in the session
	kept     int    // of which allowed
	dropped  int    // of which refused
	example  string // one refused candidate, with the reason
	trickle  bool   // the SDP announces trickle ICE (a=ice-options:trickle)
}

func (t *candidateTally) note(c candidate, ok bool, reason string) {
	t.distinct++
	if ok {
		t.kept++
		return
	}
	t.dropped++
	if t.example == "" {
		t.example = c.String() + ": " + reason
	}
}

// filterSDP returns sdp without the candidates a session may not use, and
// a tally of them. seen holds the keys of the candidates counted so far in
// the session; filterSDP adds the new ones. A candidate line that does not
// parse is an error.
func (f *candidateFilter) filterSDP(sdp string, seen map[string]bool) (string, candidateTally, error) {
	var t candidateTally
	var b strings.Builder
	b.Grow(len(sdp))
	for n, line := range strings.SplitAfter(sdp, "\n") {
		l := strings.TrimRight(line, "\r\n")
		if opts, ok := strings.CutPrefix(l, "a=ice-options:"); ok {
			for _, o := range strings.Fields(opts) {
				t.trickle = t.trickle || strings.EqualFold(o, "trickle")
			}
		}
		if !strings.HasPrefix(l, "a=candidate:") {
			b.WriteString(line)
			continue
		}
		c, err := parseCandidate(l)
		if err != nil {
			return "", t, fmt.Errorf("line %d: %w", n+1, err)
		}
		ok, reason := f.check(c)
		if k := c.key(); !seen[k] {
			seen[k] = true
			t.note(c, ok, reason)
		}
		if ok {
			b.WriteString(line)
		}
	}
	return b.String(), t, nil
}

// String lists the allowed networks (for the log).
func (f *candidateFilter) String() string {
	s := make([]string, len(f.allowed))
	for i, p := range f.allowed {
		s[i] = p.String()
	}
	return strings.Join(s, " ")
}
