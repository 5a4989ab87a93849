package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"strconv"
	"strings"
	"testing"
)

func TestAudioRoundTrip(t *testing.T) {
	a := Audio{Channel: 1, Seq: 0xDEADBEEF, Capture: -12345678901, Payload: []byte{1, 2, 3}}
	b := AppendAudio(nil, a)
	r := NewReader(bytes.NewReader(b))
	m, err := r.Read()
	if err != nil || m.Type != TAudio {
		t.Fatalf("read: %v %v", m.Type, err)
	}
	got, err := ParseAudio(m.Body)
	if err != nil || got.Channel != a.Channel || got.Seq != a.Seq || got.Capture != a.Capture || !bytes.Equal(got.Payload, a.Payload) {
		t.Fatalf("got %+v, %v", got, err)
	}
	if _, err := r.Read(); err != io.EOF {
		t.Fatalf("want EOF after the frame, got %v", err)
	}
}

func TestAckRoundTrip(t *testing.T) {
	a := Ack{Channel: 1, NextSeq: 77}
	got, err := ParseAck(EncodeAck(a))
	if err != nil || got != a {
		t.Fatalf("got %+v %v", got, err)
	}
	if _, err := ParseAck([]byte{1}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short ack accepted: %v", err)
	}
}

var decodeCases = []struct {
	name string
	in   []byte
	want error
}{
	{"empty", nil, io.ErrUnexpectedEOF},
	{"short header", []byte{2, 0, 0}, io.ErrUnexpectedEOF},
	{"unknown type", []byte{99, 0, 0, 0, 0}, ErrUnknownType},
	{"type zero", []byte{0, 0, 0, 0, 0}, ErrUnknownType},
	{"oversized", []byte{2, 0x10, 0, 0, 0}, ErrTooLarge},
	{"truncated body", []byte{2, 0, 0, 0, 20, 1, 2}, io.ErrUnexpectedEOF},
	{"ok end", AppendFrame(nil, TEnd, []byte(`{"frames":[1]}`)), nil},
}

func TestDecodeErrors(t *testing.T) {
	for _, c := range decodeCases {
		_, _, err := Decode(c.in)
		if !errors.Is(err, c.want) && !(c.want == nil && err == nil) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
		// The streaming reader agrees with Decode.
		_, rerr := NewReader(bytes.NewReader(c.in)).Read()
		if c.want == nil && rerr != nil || c.want != nil && rerr == nil {
			t.Errorf("%s: reader got %v, Decode %v", c.name, rerr, err)
		}
	}
}

func TestParseAudioRejects(t *testing.T) {
	for name, b := range map[string][]byte{
		"short":     make([]byte, 12),
		"too large": make([]byte, 13+MaxAudioPayload+1),
	} {
		if _, err := ParseAudio(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestReadJSONSurfacesErrors(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.WriteJSON(TError, &Error{Code: CodeUnauthorized, Message: "no", Fatal: true}); err != nil {
		t.Fatal(err)
	}
	var wel Welcome
	err := NewReader(&buf).ReadJSON(TWelcome, &wel)
	var pe *Error
	if !errors.As(err, &pe) || pe.Code != CodeUnauthorized || pe.Retryable() {
		t.Fatalf("got %v", err)
	}
}

func TestValidID(t *testing.T) {
	for id, ok := range map[string]bool{"call-1": true, "a": true, "C.2:x_y": true, "": false, "-x": false, "a/b": false, "a b": false,
		string(make([]byte, 129)): false} {
		if ValidID(id) != ok {
			t.Errorf("ValidID(%q) = %v", id, !ok)
		}
	}
}

// FuzzDecode: no input makes the decoder panic, and whatever it accepts
// re-encodes to the same bytes.
func FuzzDecode(f *testing.F) {
	for _, c := range decodeCases {
		f.Add(c.in)
	}
	f.Add(AppendAudio(nil, Audio{Channel: 0, Seq: 1, Capture: 2, Payload: []byte("pcm")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, n, err := Decode(b)
		if err != nil {
			return
		}
		if n > len(b) || n != HeaderSize+len(m.Body) {
			t.Fatalf("consumed %d of %d", n, len(b))
		}
		if !bytes.Equal(AppendFrame(nil, m.Type, m.Body), b[:n]) {
			t.Fatal("re-encoding differs")
		}
		if m.Type == TAudio {
			if a, err := ParseAudio(m.Body); err == nil {
				if !bytes.Equal(AppendAudio(nil, a), b[:n]) {
					t.Fatal("audio re-encoding differs")
				}
			}
		}
		if m.Type == TAck {
			_, _ = ParseAck(m.Body)
		}
	})
}

// Which errors a console reconnects after: the ones PROTOCOL.md says to
// reconnect and resume after, and no others. Every Code constant declared
// in messages.go must be listed, so a new code cannot be forgotten here.
func TestRetryable(t *testing.T) {
	want := map[string]bool{
		CodeStorage: true, CodeUnavailable: true, CodeInternal: true, CodeOutOfOrder: true, CodeNotLeader: true,
		CodeUnauthorized: false, CodeForbidden: false, CodeThrottled: false, CodeTransferred: false,
		CodeBadRequest: false, CodeBadVersion: false, CodeUnknownCodec: false, CodeUnknownModel: false, CodeCallInUse: false, CodeTooLarge: false,
	}
	for code, retry := range want {
		if got := (&Error{Code: code}).Retryable(); got != retry {
			t.Errorf("%s: retryable %v, want %v", code, got, retry)
		}
	}
	f, err := parser.ParseFile(token.NewFileSet(), "messages.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	declared := 0
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, spec := range g.Specs {
			for i, name := range spec.(*ast.ValueSpec).Names {
				if !strings.HasPrefix(name.Name, "Code") || strings.HasPrefix(name.Name, "Codec") {
					continue
				}
				declared++
				lit, ok := spec.(*ast.ValueSpec).Values[i].(*ast.BasicLit)
				if !ok {
					t.Fatalf("%s is not a string literal", name.Name)
				}
				code, _ := strconv.Unquote(lit.Value)
				if _, ok := want[code]; !ok {
					t.Errorf("%s (%q) is not in this test: is it retryable?", name.Name, code)
				}
			}
		}
	}
	if declared != len(want) {
		t.Errorf("messages.go declares %d codes, the test lists %d", declared, len(want))
	}
}

// A follower's not_leader answer reaches the client whole: the leader, the
// members, fatal, and a message that names the leader.
func TestNotLeaderRoundTrip(t *testing.T) {
	for _, c := range []struct {
		leader string
		msg    string
	}{{"10.0.0.2:4433", "the leader is 10.0.0.2:4433"}, {"", "no leader elected yet"}} {
		var buf bytes.Buffer
		if err := NewWriter(&buf).WriteJSON(TError, NotLeader(c.leader, []string{"10.0.0.1:4433", "10.0.0.2:4433"})); err != nil {
			t.Fatal(err)
		}
		var wel AgentWelcome
		err := NewReader(&buf).ReadJSON(TAgentWelcome, &wel)
		var pe *Error
		if !errors.As(err, &pe) {
			t.Fatalf("got %v, want a proto error", err)
		}
		if pe.Code != CodeNotLeader || !pe.Fatal || !pe.Retryable() || pe.Leader != c.leader || len(pe.Members) != 2 || pe.Members[1] != "10.0.0.2:4433" ||
			!strings.Contains(pe.Message, c.msg) {
			t.Errorf("got %+v", pe)
		}
	}
	// Other errors carry neither field on the wire.
	b, _ := json.Marshal(&Error{Code: CodeInternal, Message: "x"})
	if strings.Contains(string(b), "leader") || strings.Contains(string(b), "members") {
		t.Errorf("%s", b)
	}
}
