package whip

import (
	"errors"
	"strings"
	"testing"

	"github.com/callscribe/callscribe/proto"
)

const sdpHead = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"

func audio(mid, fmts string, attrs ...string) string {
	s := "m=audio 9 UDP/TLS/RTP/SAVPF " + fmts + "\r\nc=IN IP4 0.0.0.0\r\na=mid:" + mid + "\r\na=sendonly\r\n"
	for _, a := range attrs {
		s += "a=" + a + "\r\n"
	}
	return s
}

func TestInspectOffer(t *testing.T) {
	opus := "rtpmap:111 opus/48000/2"
	for _, c := range []struct {
		name  string
		sdp   string
		want  proto.Codec
		codec proto.Codec
		mids  int
		err   string
	}{
		{"opus preferred", sdpHead + audio("0", "111 0 8", opus), "", proto.CodecOpus, 1, ""},
		{"static PCMU", sdpHead + audio("0", "0"), "", proto.CodecPCMU, 1, ""},
		{"asked for pcma", sdpHead + audio("0", "111 0 8", opus, "rtpmap:8 PCMA/8000"), proto.CodecPCMA, proto.CodecPCMA, 1, ""},
		{"two tracks", sdpHead + audio("a", "111", opus) + audio("b", "111", opus) + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n", "", proto.CodecOpus, 2, ""},
		{"common codec of two tracks", sdpHead + audio("a", "111 0", opus) + audio("b", "0"), "", proto.CodecPCMU, 2, ""},
		{"garbage", "this is not SDP", "", "", 0, "does not parse"},
		{"no audio", sdpHead + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\n", "", "", 0, "no audio track"},
		{"receive-only audio", sdpHead + strings.Replace(audio("0", "111", opus), "sendonly", "recvonly", 1), "", "", 0, "no audio track"},
		{"unsupported codec only", sdpHead + audio("0", "9", "rtpmap:9 G722/8000"), "", "", 0, "no supported audio codec"},
		{"asked-for codec not offered", sdpHead + audio("0", "111", opus), proto.CodecPCMU, "", 0, "not offered"},
		{"three tracks", sdpHead + audio("a", "0") + audio("b", "0") + audio("c", "0"), "", "", 0, "3 audio tracks"},
		{"no mid", sdpHead + "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=sendonly\r\n", "", "", 0, "no a=mid"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o, err := inspectOffer([]byte(c.sdp), c.want)
			if c.err != "" {
				if err == nil || !errors.Is(err, errBadOffer) || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want one containing %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.codec != c.codec || len(o.mids) != c.mids {
				t.Fatalf("codec %s mids %v, want %s and %d", o.codec, o.mids, c.codec, c.mids)
			}
		})
	}
}
