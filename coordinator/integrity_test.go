package coordinator

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/integrity"
	"github.com/callscribe/callscribe/proto"
)

// sentFrame is a frame as the console sent it.
type sentFrame struct {
	seq     uint32
	capture int64
	payload []byte
}

// chainOf is the frame digest of frames, computed here from the documented
// formula, not with package integrity.
func chainOf(frames []sentFrame) string {
	var h [32]byte
	for _, f := range frames {
		in := append([]byte(nil), h[:]...)
		in = binary.BigEndian.AppendUint32(in, f.seq)
		in = binary.BigEndian.AppendUint64(in, uint64(f.capture))
		in = binary.BigEndian.AppendUint32(in, uint32(len(f.payload)))
		h = sha256.Sum256(append(in, f.payload...))
	}
	return hex.EncodeToString(h[:])
}

// send streams frames from..to-1 of channel ch, each acked before the next.
func (s *rawStream) send(ch uint8, from, to uint32, sent *[]sentFrame) {
	s.t.Helper()
	for seq := from; seq < to; seq++ {
		f := sentFrame{seq: seq, capture: time.Now().UnixMicro() + int64(ch), payload: []byte(fmt.Sprintf("ch%d frame %d %s", ch, seq, string(make([]byte, int(seq%7)))))}
		if _, err := s.w.WriteRaw(proto.AppendAudio(nil, proto.Audio{Channel: ch, Seq: seq, Capture: f.capture, Payload: f.payload})); err != nil {
			s.t.Fatal(err)
		}
		s.expectAck(seq + 1)
		*sent = append(*sent, f)
	}
}

func (tc *testCoord) get(t *testing.T, path string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+tc.c.HTTPAddr().String()+path, nil)
	req.Header.Set("Authorization", "Bearer "+testSupervisor)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// statement fetches a call's transcript and checks its signature with the
// key the coordinator serves, returning the signed statement.
func (tc *testCoord) statement(t *testing.T, id string) *integrity.Statement {
	t.Helper()
	code, b := tc.get(t, "/v1/signing-key")
	if code != 200 {
		t.Fatalf("signing key: %d %s", code, b)
	}
	pub, err := integrity.ParsePublicKey(b)
	if err != nil {
		t.Fatal(err)
	}
	code, b = tc.get(t, "/v1/calls/"+id+"/transcript")
	if code != 200 {
		t.Fatalf("transcript: %d %s", code, b)
	}
	var tr struct {
		Integrity integrity.Signed `json:"integrity"`
	}
	if err := json.Unmarshal(b, &tr); err != nil {
		t.Fatal(err)
	}
	st, err := integrity.Verify(pub, tr.Integrity)
	if err != nil {
		t.Fatalf("served statement: %v", err)
	}
	return st
}

// audioDigest downloads a channel's audio and recomputes its digest.
func (tc *testCoord) audioDigest(t *testing.T, id string, ch int) (frames uint32, sum string) {
	t.Helper()
	code, b := tc.get(t, fmt.Sprintf("/v1/calls/%s/audio?channel=%d", id, ch))
	if code != 200 {
		t.Fatalf("audio: %d %s", code, b)
	}
	var fs []sentFrame
	var off int
	for off < len(b) {
		seq, capture, n := integrity.ParseHeader(b[off:])
		off += integrity.RecordHeader
		fs = append(fs, sentFrame{seq: seq, capture: capture, payload: b[off : off+int(n)]})
		off += int(n)
	}
	return uint32(len(fs)), chainOf(fs)
}

// The statement served with a transcript carries, signed, the digest of
// exactly the frames the console sent; a coordinator restart mid-call
// continues the same chain; a frame altered in the store no longer matches
// its signed digest; audio deleted by retention is 410 Gone while the
// digests stand.
func TestIntegrityStatementCoversEveryFrame(t *testing.T) {
	dir := t.TempDir()
	cfgFor := func(c *Config) { c.DataDir = dir }
	a := startCoordinatorWith(t, cfgFor)
	const id = "proof-call"
	h := hello(id)
	h.Channels = []string{"caller", "taker"}
	s := a.stream(t)
	s.open(h)
	var sent [2][]sentFrame
	s.send(0, 0, 40, &sent[0])
	s.send(1, 0, 25, &sent[1])

	st := a.statement(t, id)
	if st.CallID != id || st.Console != "console-a" || st.State != store.StateStreaming || len(st.Channels) != 2 {
		t.Fatalf("statement %+v", st)
	}
	for i, want := range []string{chainOf(sent[0]), chainOf(sent[1])} {
		if c := st.Channels[i]; c.Frames != uint32(len(sent[i])) || c.SHA256 != want || c.Label != h.Channels[i] {
			t.Fatalf("channel %d signed %d frames %s, want %d %s", i, c.Frames, c.SHA256, len(sent[i]), want)
		}
	}
	if st.Transcript.Finals != 0 || st.Transcript.SHA256 != hex.EncodeToString(func() []byte { s := sha256.Sum256(nil); return s[:] }()) {
		t.Fatalf("transcript of no finals: %+v", st.Transcript)
	}
	// The key is on disk for distribution, and is the one that signs.
	pubPEM, err := os.ReadFile(filepath.Join(dir, integrity.KeyDir, integrity.SigningPubFile))
	if err != nil {
		t.Fatal(err)
	}
	if pub, err := integrity.ParsePublicKey(pubPEM); err != nil || integrity.KeyID(pub) != st.Key {
		t.Fatalf("signing.pub is not the signing key (%v)", err)
	}

	// Restart mid-call: the console resumes and the chain continues.
	a.stop()
	b := startCoordinatorWith(t, cfgFor)
	s = b.stream(t)
	w := s.open(h)
	if !w.Resumed || w.NextSeq[0] != 40 || w.NextSeq[1] != 25 {
		t.Fatalf("resume welcome %+v", w)
	}
	s.send(0, 40, 60, &sent[0])
	s.send(1, 25, 30, &sent[1])
	if err := s.w.WriteJSON(proto.TEnd, proto.End{Frames: []uint32{60, 30}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the call ended", 5*time.Second, func() bool {
		rec, err := b.c.store.Call(id)
		return err == nil && rec.State == store.StateEnded
	})
	rec, _ := b.c.store.Call(id)
	st = b.statement(t, id)
	if st.State != store.StateEnded || st.Ended == nil {
		t.Fatalf("statement of an ended call: %+v", st)
	}
	for i := range 2 {
		want := chainOf(sent[i])
		if c := st.Channels[i]; c.Frames != uint32(len(sent[i])) || c.SHA256 != want {
			t.Fatalf("after the restart, channel %d signed %d frames %s, want %d %s", i, c.Frames, c.SHA256, len(sent[i]), want)
		}
		if r := rec.Integrity[i]; r.Frames != uint32(len(sent[i])) || r.SHA256 != want {
			t.Fatalf("call record's channel %d digest %+v, want %d %s", i, r, len(sent[i]), want)
		}
		if n, sum := b.audioDigest(t, id, i); n != uint32(len(sent[i])) || sum != want {
			t.Fatalf("served audio of channel %d: %d frames %s, want %d %s", i, n, sum, len(sent[i]), want)
		}
	}

	// One frame altered behind the coordinator's back.
	f := sent[0][17]
	if err := b.c.store.PutFrames(t.Context(), id, 0, []store.Frame{{Seq: f.seq, Capture: f.capture, Payload: append([]byte("X"), f.payload[1:]...)}}); err != nil {
		t.Fatal(err)
	}
	if _, sum := b.audioDigest(t, id, 0); sum == st.Channels[0].SHA256 {
		t.Fatal("an altered frame still matches the signed digest")
	}
	if st2 := b.statement(t, id); st2.Channels[0].SHA256 != st.Channels[0].SHA256 {
		t.Fatal("the signed digest followed the altered frame")
	}
	if _, sum := b.audioDigest(t, id, 1); sum != st.Channels[1].SHA256 {
		t.Fatal("the other channel no longer matches")
	}

	// Audio deleted by retention: 410 with the time; the digests stand.
	if _, err := b.c.store.DeleteAudio(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	cp, ok := b.c.calls.SetAudioDeleted(proto.CallID(id), now)
	if !ok {
		t.Fatal("call not in memory")
	}
	if err := b.c.store.PutCall(t.Context(), &cp); err != nil {
		t.Fatal(err)
	}
	if code, body := b.get(t, "/v1/calls/"+id+"/audio?channel=0"); code != http.StatusGone || !json.Valid(body) {
		t.Fatalf("audio after retention: %d %s", code, body)
	}
	if st3 := b.statement(t, id); st3.AudioDeleted == nil || st3.Channels[0].SHA256 != st.Channels[0].SHA256 || st3.Channels[1].Frames != 30 {
		t.Fatalf("statement after retention: %+v", st3)
	}
}

// A call stored before digests were kept gets its digest computed once
// from its frames, and stored.
func TestIntegrityDigestOfAnOlderCall(t *testing.T) {
	tc := startCoordinator(t)
	const id = "old-call"
	rec := &store.Call{ID: id, Console: "c", Channels: []string{"caller"}, Codec: proto.CodecL16, State: store.StateFinalised, Created: time.Now().UTC(), Decoded: []uint32{5}, Complete: []bool{true}}
	if err := tc.c.store.PutCall(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	var sent []sentFrame
	for i := range uint32(5) {
		f := sentFrame{seq: i, capture: int64(i) * 20000, payload: []byte{byte(i), 9}}
		if i == 3 {
			f.payload = nil // a loss marker
		}
		sent = append(sent, f)
		if err := tc.c.store.PutFrames(t.Context(), id, 0, []store.Frame{{Seq: f.seq, Capture: f.capture, Payload: f.payload}}); err != nil {
			t.Fatal(err)
		}
	}
	st := tc.statement(t, id)
	if c := st.Channels[0]; c.Frames != 5 || c.SHA256 != chainOf(sent) {
		t.Fatalf("older call signed %+v, want 5 frames %s", c, chainOf(sent))
	}
	if d, ok, err := tc.c.store.Digest(id, 0); err != nil || !ok || d.Hex() != chainOf(sent) {
		t.Fatalf("digest not stored: %v %v", ok, err)
	}
}

// Finalising a call seals its transcript's hash in the record: statements
// carry that hash, so a final altered later no longer matches.
func TestIntegrityTranscriptIsSealed(t *testing.T) {
	tc := startCoordinator(t)
	const id = "sealed-call"
	rec := &store.Call{ID: id, Console: "c", Channels: []string{"caller", "taker"}, Codec: proto.CodecL16, State: store.StateEnded,
		Created: time.Now().UTC(), Decoded: []uint32{10, 10}, Complete: []bool{true, true}}
	tc.c.store.PutCall(t.Context(), rec)
	finals := []store.Final{{Channel: 0, Index: 0, Text: "help", Start: 1600, End: 8000}, {Channel: 1, Index: 0, Text: "where", Heard: "wear", Start: 3200, End: 9600},
		{Channel: 0, Index: 1, Text: "main street", Start: 9600, End: 20000}}
	for _, f := range finals {
		if err := tc.c.store.PutFinal(t.Context(), id, f, nil); err != nil {
			t.Fatal(err)
		}
	}
	tc.c.calls.FinaliseRecord(rec) // the real finalisation path
	var us []integrity.Utterance
	for _, f := range finals {
		us = append(us, integrity.Utterance{Channel: f.Channel, Index: f.Index, StartMS: f.Start / 16, EndMS: f.End / 16, Text: f.Text, Heard: f.Heard})
	}
	sum := integrity.TranscriptSum(us)
	want := hex.EncodeToString(sum[:])
	stored, _ := tc.c.store.Call(id)
	if stored.Transcript == nil || stored.Transcript.SHA256 != want || stored.Transcript.Finals != 3 {
		t.Fatalf("finalised record's transcript %+v, want 3 finals %s", stored.Transcript, want)
	}
	st := tc.statement(t, id)
	if !st.Transcript.Sealed || st.Transcript.SHA256 != want || st.State != store.StateFinalised {
		t.Fatalf("statement of a finalised call: %+v", st)
	}
	// Altered in the store: the statement keeps the sealed hash.
	f := finals[1]
	f.Text = "there"
	tc.c.store.PutFinal(t.Context(), id, f, nil)
	if st := tc.statement(t, id); st.Transcript.SHA256 != want {
		t.Fatal("the signed transcript hash followed an altered final")
	}
}

// A live call whose stored frames have a gap (damage) is still recovered
// at start; its digest then cannot match its audio.
func TestIntegrityGapDoesNotStopRecovery(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "store"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const id = "gap-call"
	rec := &store.Call{ID: id, Console: "console-a", Channels: []string{"caller"}, Codec: proto.CodecL16, State: store.StateStreaming, Created: time.Now().UTC()}
	st.PutCall(t.Context(), rec)
	for _, seq := range []uint32{0, 1, 2, 4} {
		st.PutFrames(t.Context(), id, 0, []store.Frame{{Seq: seq, Payload: []byte{byte(seq)}}})
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	tc := startCoordinatorWith(t, func(c *Config) { c.DataDir = dir })
	if !strings.Contains(tc.logs.String(), "will not verify") {
		t.Fatalf("no error logged for the gap:\n%s", tc.logs.String())
	}
	s := tc.statement(t, id)
	if n, sum := tc.audioDigest(t, id, 0); s.Channels[0].Frames != 5 || n != 4 || sum == s.Channels[0].SHA256 {
		t.Fatalf("statement %+v against %d frames %s", s.Channels[0], n, sum)
	}
}
