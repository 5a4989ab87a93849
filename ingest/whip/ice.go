package whip

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/pion/webrtc/v4"
)

// admitCandidates checks trickled candidates (or those of an ICE restart)
// and returns the ones pion may have. One that does not parse refuses the
// fragment (400); so does going over MaxCandidates (422): either way the
// session keeps what it had and none of the fragment's candidates is used.
func (x *session) admitCandidates(lines []string) ([]string, int, error) {
	type checked struct {
		line   string
		c      candidate
		ok     bool
		reason string
	}
	var cs []checked
	filter := x.srv.candidates()
	for _, l := range lines {
		c, err := parseCandidate(l)
		if err != nil {
			return nil, http.StatusBadRequest, fmt.Errorf("bad ICE candidate: %w", err)
		}
		ok, reason := filter.check(c)
		cs = append(cs, checked{l, c, ok, reason})
	}
	x.mu.Lock()
	fresh := map[string]bool{}
	for _, c := range cs {
		if k := c.c.key(); !x.seen[k] {
			fresh[k] = true
		}
	}
	if n, most := len(x.seen)+len(fresh), x.srv.cfg.MaxCandidates; n > most {
		x.mu.Unlock()
		return nil, http.StatusUnprocessableEntity, fmt.Errorf("%d more ICE candidates would make %d: at most %d are accepted per session (none of these was added)", len(fresh), n, most)
	}
	var t candidateTally
	var add []string
	for _, c := range cs {
		if k := c.c.key(); !x.seen[k] {
			x.seen[k] = true
			t.note(c.c, c.ok, c.reason)
		}
		if c.ok {
			add = append(add, c.line) // again after an ICE restart, too
		}
	}
	x.dropped += t.dropped
	first := t.dropped > 0 && !x.trickleLog
	x.trickleLog = x.trickleLog || first
	x.mu.Unlock()
	if first {
		x.log.Info("whip: trickled remote ICE candidates dropped (further ones are only counted)", "dropped", t.dropped, "example", t.example)
	}
	return add, 0, nil
}

// addCandidates gives pion remote candidates that passed admitCandidates.
func (x *session) addCandidates(mid string, lines []string) error {
	for _, c := range lines {
		if err := x.pc.AddICECandidate(webrtc.ICECandidateInit{Candidate: c, SDPMid: &mid}); err != nil {
			return err
		}
	}
	return nil
}

func (x *session) etag() string {
	x.mu.Lock()
	defer x.mu.Unlock()
	return fmt.Sprintf(`"%s-%d"`, x.id[:8], x.ice)
}

// frag is a parsed trickle-ice-sdpfrag (RFC 8840).
type frag struct {
	ufrag, pwd, mid string
	candidates      []string
}

func parseFrag(s string) frag {
	var f frag
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "a=ice-ufrag:"):
			f.ufrag = strings.TrimPrefix(l, "a=ice-ufrag:")
		case strings.HasPrefix(l, "a=ice-pwd:"):
			f.pwd = strings.TrimPrefix(l, "a=ice-pwd:")
		case strings.HasPrefix(l, "a=mid:") && f.mid == "":
			f.mid = strings.TrimPrefix(l, "a=mid:")
		case strings.HasPrefix(l, "a=candidate:"):
			f.candidates = append(f.candidates, strings.TrimPrefix(l, "a="))
		}
	}
	return f
}

func (x *session) remoteUfrag() string {
	rd := x.pc.RemoteDescription()
	if rd == nil {
		return ""
	}
	return parseFrag(rd.SDP).ufrag
}

// restartICE applies the console's new ICE credentials as a new offer and
// answers with ours (and our candidates) as a fragment.
func (x *session) restartICE(ctx context.Context, f frag) (string, error) {
	if f.pwd == "" {
		return "", errors.New("the fragment has an ice-ufrag but no ice-pwd")
	}
	rd := x.pc.RemoteDescription()
	old := parseFrag(rd.SDP)
	sdp := strings.ReplaceAll(rd.SDP, "a=ice-ufrag:"+old.ufrag, "a=ice-ufrag:"+f.ufrag)
	sdp = strings.ReplaceAll(sdp, "a=ice-pwd:"+old.pwd, "a=ice-pwd:"+f.pwd)
	if err := x.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: sdp}); err != nil {
		return "", err
	}
	ans, err := x.pc.CreateAnswer(nil)
	if err != nil {
		return "", err
	}
	gathered := webrtc.GatheringCompletePromise(x.pc)
	if err := x.pc.SetLocalDescription(ans); err != nil {
		return "", err
	}
	select {
	case <-gathered:
	case <-time.After(5 * time.Second):
		return "", errors.New("ICE gathering did not finish in 5 s")
	case <-ctx.Done():
		return "", ctx.Err()
	}
	x.mu.Lock()
	x.ice++
	x.mu.Unlock()
	local := parseFrag(x.pc.LocalDescription().SDP)
	var b strings.Builder
	fmt.Fprintf(&b, "a=ice-ufrag:%s\r\na=ice-pwd:%s\r\n", local.ufrag, local.pwd)
	for _, c := range local.candidates {
		fmt.Fprintf(&b, "a=%s\r\n", c)
	}
	x.log.Info("whip ICE restart")
	return b.String(), nil
}
