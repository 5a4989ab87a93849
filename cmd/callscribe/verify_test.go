package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/internal/integrity"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/proto"
)

// TestVerify runs `callscribe verify` against a real coordinator (no
// engine: the call is written to its store): it passes on the call as
// stored and fails, naming what, once a frame or a final is altered or the
// key is not the coordinator's.
func TestVerify(t *testing.T) {
	dir := t.TempDir()
	ca, caKey, err := pki.EnsureCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.EnsureServerCert(dir, ca, caKey, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := integrity.EnsureSigningKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	const token = "verify-token-0123456789"
	c, err := coordinator.New(coordinator.Config{DataDir: dir, QUICAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{cert}},
		Credentials: []auth.Static{{Name: "investigator", Role: auth.Supervisor, Token: token, Source: "config"}}, Signer: signer, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	const id = "call-to-verify"
	st := c.Store()
	now := time.Now().UTC()
	rec := &store.Call{ID: id, Console: "desk-1", Channels: []string{"caller", "taker"}, Codec: proto.CodecL16, State: store.StateFinalised,
		Created: now.Add(-time.Minute), Ended: &now, Finalised: &now, Decoded: []uint32{1200, 800}, Complete: []bool{true, true}}
	if err := st.PutCall(ctx, rec); err != nil {
		t.Fatal(err)
	}
	var frames [2][]store.Frame
	for ch, n := range []int{1200, 800} {
		for i := range n {
			frames[ch] = append(frames[ch], store.Frame{Seq: uint32(i), Capture: int64(i) * 20000, Payload: bytes.Repeat([]byte{byte(i), byte(ch)}, 80)})
		}
		if err := st.PutFrames(ctx, id, ch, frames[ch]); err != nil {
			t.Fatal(err)
		}
	}
	var us []integrity.Utterance
	for i, text := range []string{"fire on the second floor", "which address"} {
		if err := st.PutFinal(ctx, id, store.Final{Channel: i, Index: 0, Text: text, Start: 16000, End: 32000}, nil); err != nil {
			t.Fatal(err)
		}
		us = append(us, integrity.Utterance{Channel: i, StartMS: 1000, EndMS: 2000, Text: text})
	}
	// Sealed as the coordinator seals a call it finalises.
	sum := integrity.TranscriptSum(us)
	rec.Transcript = &store.TranscriptIntegrity{Finals: 2, SHA256: hex.EncodeToString(sum[:])}
	if err := st.PutCall(ctx, rec); err != nil {
		t.Fatal(err)
	}
	server := "http://" + c.HTTPAddr().String()
	verify := func(extra ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := cmdVerify(ctx, append([]string{"--server", server, "--token", token, id}, extra...), &out, &errOut)
		return out.String() + errOut.String(), err
	}

	out, err := verify()
	if err != nil || !strings.Contains(out, "VERIFIED") || !strings.Contains(out, "channel 0 (caller): 1,200 frames, digest matches") ||
		!strings.Contains(out, "from the server") || !strings.Contains(out, "transcript: 2 finals, hash matches") {
		t.Fatalf("verify of an intact call: %v\n%s", err, out)
	}
	t.Log(out)
	pubFile := filepath.Join(dir, integrity.KeyDir, integrity.SigningPubFile)
	if out, err := verify("--key", pubFile); err != nil || !strings.Contains(out, "from "+pubFile) {
		t.Fatalf("verify with --key: %v\n%s", err, out)
	}

	// Another key: the signature fails.
	other, _ := integrity.EnsureSigningKey(t.TempDir())
	otherPub, _ := integrity.MarshalPublicKey(other.Public().(ed25519.PublicKey))
	otherFile := filepath.Join(t.TempDir(), "other.pub")
	os.WriteFile(otherFile, otherPub, 0o644)
	if out, err := verify("--key", otherFile); !errors.Is(err, errNotVerified) || !strings.Contains(out, "signature") {
		t.Fatalf("verify with another key: %v\n%s", err, out)
	}

	// One frame altered in the store.
	if err := st.PutFrames(ctx, id, 0, []store.Frame{{Seq: 500, Capture: 500 * 20000, Payload: []byte("not what was said")}}); err != nil {
		t.Fatal(err)
	}
	out, err = verify()
	if !errors.Is(err, errNotVerified) || !strings.Contains(out, "channel 0 (caller): 1,200 frames, digest differs from the signed one: audio altered or incomplete") ||
		!strings.Contains(out, "channel 1 (taker): 800 frames, digest matches") {
		t.Fatalf("verify after a frame was altered: %v\n%s", err, out)
	}

	t.Log(out)
	// A final altered after the call was finalised.
	if err := st.PutFinal(ctx, id, store.Final{Channel: 1, Index: 0, Text: "which address?", Start: 16000, End: 32000}, nil); err != nil {
		t.Fatal(err)
	}
	out, err = verify()
	if !errors.Is(err, errNotVerified) || !strings.Contains(out, "transcript: 2 finals, hash differs from the signed one (sealed when the call was finalised): transcript altered") {
		t.Fatalf("verify after a final was altered: %v\n%s", err, out)
	}

	// Frames missing at the end of channel 1.
	if _, err := st.DeleteAudio(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := st.PutFrames(ctx, id, 1, frames[1][:700]); err != nil {
		t.Fatal(err)
	}
	out, err = verify()
	if !errors.Is(err, errNotVerified) || !strings.Contains(out, "channel 1 (taker): only 700 of 800 signed frames are stored: audio incomplete") ||
		!strings.Contains(out, "channel 0 (caller): only 0 of 1,200") {
		t.Fatalf("verify with frames missing: %v\n%s", err, out)
	}
}
