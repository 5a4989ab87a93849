package whip

import (
	"errors"
	"fmt"
	"strings"

	"github.com/callscribe/callscribe/proto"
	"github.com/pion/sdp/v3"
)

// offer is what callscribe needs to know of a WHIP offer before it answers.
type offer struct {
	// mids of the audio sections the console sends on, in offer order:
	// the first is channel 0 (the caller), the second channel 1.
	mids  []string
	codec proto.Codec
	// data reports whether the offer has a data channel section.
	data bool
}

// errBadOffer wraps every reason an offer is refused; the text is for the
// console.
var errBadOffer = errors.New("whip: offer refused")

// codecByMime maps SDP encoding names to callscribe codecs, in our order of
// preference: Opus keeps the most of the voice.
var codecByMime = []struct {
	name  string
	rate  string
	codec proto.Codec
}{
	{"opus", "48000", proto.CodecOpus},
	{"PCMU", "8000", proto.CodecPCMU},
	{"PCMA", "8000", proto.CodecPCMA},
}

// staticPT are the RTP/AVP static payload types (RFC 3551) an offer may
// list without an rtpmap.
var staticPT = map[string]proto.Codec{"0": proto.CodecPCMU, "8": proto.CodecPCMA}

// inspectOffer parses an SDP offer, finds its audio sections and picks the
// call's codec: want if given (and offered by every audio section), else the
// most preferred codec every audio section offers.
func inspectOffer(raw []byte, want proto.Codec) (*offer, error) {
	var d sdp.SessionDescription
	if err := d.Unmarshal(raw); err != nil {
		return nil, fmt.Errorf("%w: SDP does not parse: %v", errBadOffer, err)
	}
	o := &offer{}
	var offered []map[proto.Codec]bool
	for _, m := range d.MediaDescriptions {
		switch m.MediaName.Media {
		case "application":
			o.data = true
			continue
		case "audio":
		default:
			continue // video is ignored (its section is rejected by the answer)
		}
		if m.MediaName.Port.Value == 0 {
			continue
		}
		if _, ok := m.Attribute("recvonly"); ok {
			continue
		}
		if _, ok := m.Attribute("inactive"); ok {
			continue
		}
		mid, ok := m.Attribute("mid")
		if !ok || mid == "" {
			return nil, fmt.Errorf("%w: audio section %d has no a=mid", errBadOffer, len(o.mids))
		}
		codecs := map[proto.Codec]bool{}
		for _, f := range m.MediaName.Formats {
			if c, ok := staticPT[f]; ok {
				codecs[c] = true
			}
		}
		for _, a := range m.Attributes {
			if a.Key != "rtpmap" {
				continue
			}
			_, enc, _ := strings.Cut(a.Value, " ")
			parts := strings.Split(enc, "/")
			for _, c := range codecByMime {
				if len(parts) >= 2 && strings.EqualFold(parts[0], c.name) && parts[1] == c.rate {
					codecs[c.codec] = true
				}
			}
		}
		o.mids = append(o.mids, mid)
		offered = append(offered, codecs)
	}
	switch {
	case len(o.mids) == 0:
		return nil, fmt.Errorf("%w: the offer sends no audio track", errBadOffer)
	case len(o.mids) > proto.MaxChannels:
		return nil, fmt.Errorf("%w: %d audio tracks offered; a call has 1 or 2 (caller, call-taker)", errBadOffer, len(o.mids))
	}
	all := func(c proto.Codec) bool {
		for _, cs := range offered {
			if !cs[c] {
				return false
			}
		}
		return true
	}
	if want != "" {
		if !all(want) {
			return nil, fmt.Errorf("%w: codec %s was asked for but not offered on every audio track", errBadOffer, want)
		}
		o.codec = want
		return o, nil
	}
	for _, c := range codecByMime {
		if all(c.codec) {
			o.codec = c.codec
			return o, nil
		}
	}
	return nil, fmt.Errorf("%w: no supported audio codec offered (supported: opus/48000/2, PCMU/8000, PCMA/8000)", errBadOffer)
}
