package integrity

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The chain is exactly the documented formula, computed here by hand.
func TestDigestMatchesTheFormula(t *testing.T) {
	frames := []struct {
		capture int64
		payload []byte
	}{{1000, []byte("abc")}, {-5, nil}, {1 << 40, bytes.Repeat([]byte{7}, 320)}}
	var want [32]byte
	var d Digest
	for i, f := range frames {
		var in []byte
		in = append(in, want[:]...)
		in = binary.BigEndian.AppendUint32(in, uint32(i))
		in = binary.BigEndian.AppendUint64(in, uint64(f.capture))
		in = binary.BigEndian.AppendUint32(in, uint32(len(f.payload)))
		in = append(in, f.payload...)
		want = sha256.Sum256(in)
		if err := d.Add(uint32(i), f.capture, f.payload); err != nil {
			t.Fatal(err)
		}
		if d.Sum != want || d.Next != uint32(i+1) {
			t.Fatalf("frame %d: digest %x next %d, want %x next %d", i, d.Sum, d.Next, want, i+1)
		}
		// H_n = SHA-256(H_{n-1} || record n)
		if rec := AppendRecord(nil, uint32(i), f.capture, f.payload); !bytes.Equal(rec, in[32:]) {
			t.Fatalf("record %d is not the hashed bytes", i)
		}
	}
	var empty Digest
	if empty.Hex() != strings.Repeat("0", 64) {
		t.Fatalf("H_0 = %s", empty.Hex())
	}
}

// Every change a tamperer could make changes the digest; gaps and
// reordering are refused.
func TestDigestDetectsChanges(t *testing.T) {
	base := func(mod func(i int, c *int64, p *[]byte)) [32]byte {
		var d Digest
		for i := range 5 {
			c, p := int64(i*20), []byte{byte(i), 1, 2}
			if mod != nil {
				mod(i, &c, &p)
			}
			if err := d.Add(uint32(i), c, p); err != nil {
				t.Fatal(err)
			}
		}
		return d.Sum
	}
	ref := base(nil)
	for name, mod := range map[string]func(int, *int64, *[]byte){
		"payload byte": func(i int, _ *int64, p *[]byte) {
			if i == 2 {
				(*p)[1] ^= 1
			}
		},
		"capture": func(i int, c *int64, _ *[]byte) {
			if i == 4 {
				*c++
			}
		},
		"payload length": func(i int, _ *int64, p *[]byte) {
			if i == 0 {
				*p = (*p)[:2]
			}
		},
		"loss marker": func(i int, _ *int64, p *[]byte) {
			if i == 3 {
				*p = nil
			}
		},
	} {
		if base(mod) == ref {
			t.Errorf("%s changed, digest did not", name)
		}
	}
	var d Digest
	if err := d.Add(1, 0, nil); err == nil {
		t.Fatal("a digest accepted frame 1 before frame 0")
	}
	_ = d.Add(0, 0, nil)
	if err := d.Add(0, 0, nil); err == nil {
		t.Fatal("a digest accepted frame 0 twice")
	}
}

func TestDigestBinaryRoundTrip(t *testing.T) {
	var d Digest
	_ = d.Add(0, 1, []byte("x"))
	b, _ := d.MarshalBinary()
	var e Digest
	if err := e.UnmarshalBinary(b); err != nil || e != d {
		t.Fatalf("round trip: %+v %v, want %+v", e, err, d)
	}
	if err := e.UnmarshalBinary(b[:10]); err == nil {
		t.Fatal("a short digest decoded")
	}
}

func TestReadRecords(t *testing.T) {
	var b []byte
	for i := range 3 {
		b = AppendRecord(b, uint32(i), int64(i)*7, bytes.Repeat([]byte{byte(i)}, i))
	}
	var got []string
	err := ReadRecords(bytes.NewReader(b), func(seq uint32, c int64, p []byte) error {
		got = append(got, hex.EncodeToString(AppendRecord(nil, seq, c, p)))
		return nil
	})
	if err != nil || len(got) != 3 {
		t.Fatalf("read %d records: %v", len(got), err)
	}
	if err := ReadRecords(bytes.NewReader(b[:len(b)-1]), func(uint32, int64, []byte) error { return nil }); err == nil {
		t.Fatal("a stream cut inside a record read without error")
	}
}

func TestTranscriptSumIsCanonical(t *testing.T) {
	us := []Utterance{{Channel: 1, Index: 0, StartMS: 10, EndMS: 900, Text: "hello"}, {Channel: 0, Index: 1, StartMS: 500, EndMS: 800, Text: "b", Heard: "bee"}, {Channel: 0, Index: 0, Text: "a"}}
	rev := []Utterance{us[2], us[0], us[1]}
	if TranscriptSum(us) != TranscriptSum(rev) {
		t.Fatal("the transcript hash depends on the order the finals are listed in")
	}
	// By hand: channel 0 index 0, channel 0 index 1, channel 1 index 0.
	var in []byte
	for _, u := range []Utterance{us[2], us[1], us[0]} {
		in = binary.BigEndian.AppendUint32(in, uint32(u.Channel))
		in = binary.BigEndian.AppendUint32(in, u.Index)
		in = binary.BigEndian.AppendUint64(in, uint64(u.StartMS))
		in = binary.BigEndian.AppendUint64(in, uint64(u.EndMS))
		in = binary.BigEndian.AppendUint32(in, uint32(len(u.Text)))
		in = append(in, u.Text...)
		in = binary.BigEndian.AppendUint32(in, uint32(len(u.Heard)))
		in = append(in, u.Heard...)
	}
	if TranscriptSum(us) != sha256.Sum256(in) {
		t.Fatal("the transcript hash is not the documented one")
	}
	mod := append([]Utterance(nil), us...)
	mod[0].Text = "hellO"
	if TranscriptSum(mod) == TranscriptSum(us) {
		t.Fatal("an edited final kept the hash")
	}
	// Boundaries between fields are unambiguous.
	a := []Utterance{{Text: "ab", Heard: ""}}
	b := []Utterance{{Text: "a", Heard: "b"}}
	if TranscriptSum(a) == TranscriptSum(b) {
		t.Fatal("text/heard boundary is ambiguous")
	}
}

func TestSignAndVerify(t *testing.T) {
	dir := t.TempDir()
	key, err := EnsureSigningKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, KeyDir, SigningKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("signing key file: %v %v", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Join(dir, KeyDir)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("key directory: %v %v", fi.Mode(), err)
	}
	again, err := EnsureSigningKey(dir)
	if err != nil || !again.Equal(key) {
		t.Fatalf("second start: another key (%v)", err)
	}
	pubPEM, err := os.ReadFile(filepath.Join(dir, KeyDir, SigningPubFile))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	if raw, err := ParsePublicKey([]byte(base64.StdEncoding.EncodeToString(pub))); err != nil || !raw.Equal(pub) {
		t.Fatalf("base64 public key: %v", err)
	}
	st := Statement{CallID: "c1", Console: "desk", State: "finalised", Channels: []ChannelDigest{{Label: "caller", Frames: 3, SHA256: "ab"}}}
	s, err := Sign(key, st)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Verify(pub, s)
	if err != nil {
		t.Fatal(err)
	}
	if got.CallID != "c1" || got.Channels[0].Frames != 3 || got.Key != KeyID(pub) {
		t.Fatalf("verified statement %+v", got)
	}
	// Any change to the signed bytes fails.
	b, _ := base64.StdEncoding.DecodeString(s.SignedStatement)
	bad := s
	bad.SignedStatement = base64.StdEncoding.EncodeToString(bytes.Replace(b, []byte(`"frames":3`), []byte(`"frames":4`), 1))
	if _, err := Verify(pub, bad); err == nil {
		t.Fatal("an altered statement verified")
	}
	other, _ := EnsureSigningKey(t.TempDir())
	if _, err := Verify(other.Public().(ed25519.PublicKey), s); err == nil {
		t.Fatal("a statement verified with another key")
	}
}

// The README's by-hand check: openssl verifies the signed statement with
// DATA/keys/signing.pub.
func TestOpenSSLVerifiesTheStatement(t *testing.T) {
	ossl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("no openssl")
	}
	dir := t.TempDir()
	key, err := EnsureSigningKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Sign(key, Statement{CallID: "c1", Channels: []ChannelDigest{{Label: "caller", Frames: 1, SHA256: "00"}}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := base64.StdEncoding.DecodeString(s.SignedStatement)
	sig, _ := base64.StdEncoding.DecodeString(s.Signature)
	os.WriteFile(filepath.Join(dir, "statement.json"), b, 0o644)
	os.WriteFile(filepath.Join(dir, "statement.sig"), sig, 0o644)
	run := func() ([]byte, error) {
		return exec.Command(ossl, "pkeyutl", "-verify", "-pubin", "-inkey", filepath.Join(dir, KeyDir, SigningPubFile), "-rawin",
			"-in", filepath.Join(dir, "statement.json"), "-sigfile", filepath.Join(dir, "statement.sig")).CombinedOutput()
	}
	if out, err := run(); err != nil {
		t.Fatalf("openssl pkeyutl -verify: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(dir, "statement.json"), bytes.Replace(b, []byte(`"frames":1`), []byte(`"frames":2`), 1), 0o644)
	if out, err := run(); err == nil {
		t.Fatalf("openssl verified an altered statement:\n%s", out)
	}
}
