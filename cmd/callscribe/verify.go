package main

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/internal/integrity"
)

// errNotVerified is verify's failure: something does not match.
var errNotVerified = errors.New("not verified")

// cmdVerify checks a call's signed integrity statement against its
// transcript and stored audio: `callscribe verify [options] CALL`.
func cmdVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	flags := addAPIFlags(fs)
	keyFile := fs.String("key", "", "the coordinator's signing public key (DATA/keys/signing.pub, distributed out of band); default: ask the server")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	rest := fs.Args()
	if len(rest) > 0 { // flags may follow CALL too
		if err := fs.Parse(rest[1:]); err != nil {
			return errUsage
		}
		rest = append(rest[:1], fs.Args()...)
	}
	if len(rest) != 1 {
		fmt.Fprintln(stderr, "usage: callscribe verify --server URL --token TOKEN [--ca FILE] [--key PUBKEYFILE] CALL")
		return errUsage
	}
	call := rest[0]
	api, err := flags.client()
	if err != nil {
		return err
	}
	v := &verifier{api: api, call: call, out: stdout}
	if err := v.run(ctx, *keyFile); err != nil {
		return err
	}
	if len(v.problems) > 0 {
		fmt.Fprintf(stdout, "NOT VERIFIED: %s\n", strings.Join(v.problems, "; "))
		return fmt.Errorf("call %s: %w: %s", call, errNotVerified, strings.Join(v.problems, "; "))
	}
	fmt.Fprintf(stdout, "VERIFIED: call %s's audio and transcript are complete and unaltered as signed\n", call)
	return nil
}

type verifier struct {
	api      *apiClient
	call     string
	out      io.Writer
	problems []string
}

func (v *verifier) fail(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	v.problems = append(v.problems, msg)
	fmt.Fprintf(v.out, "  FAIL  %s\n", msg)
}

func (v *verifier) ok(format string, a ...any) {
	fmt.Fprintf(v.out, "  ok    %s\n", fmt.Sprintf(format, a...))
}

// run checks everything it can; an error is one that stopped it (the
// server unreachable, a refused request), a mismatch goes to problems.
func (v *verifier) run(ctx context.Context, keyFile string) error {
	var tr struct {
		CallID     string                  `json:"call_id"`
		State      string                  `json:"state"`
		Utterances []coordinator.Utterance `json:"utterances"`
		Integrity  *integrity.Signed       `json:"integrity"`
		Error      string                  `json:"integrity_error"`
	}
	body, err := v.api.get(ctx, "/v1/calls/"+url.PathEscape(v.call)+"/transcript")
	if err != nil {
		return fmt.Errorf("transcript: %w", err)
	}
	if err := json.Unmarshal(body, &tr); err != nil {
		return fmt.Errorf("transcript: %w", err)
	}
	if tr.Integrity == nil {
		why := "none given"
		if tr.Error != "" {
			why = tr.Error
		}
		v.fail("the server served no integrity statement with the transcript (%s)", why)
		return nil
	}
	var pub ed25519.PublicKey
	var from string
	if keyFile != "" {
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return err
		}
		if pub, err = integrity.ParsePublicKey(b); err != nil {
			return fmt.Errorf("%s: %w", keyFile, err)
		}
		from = keyFile
	} else {
		b, err := v.api.get(ctx, "/v1/signing-key")
		if err != nil {
			return fmt.Errorf("signing key: %w", err)
		}
		if pub, err = integrity.ParsePublicKey(b); err != nil {
			return fmt.Errorf("signing key from the server: %w", err)
		}
		from = "the server (GET /v1/signing-key; pass --key with the key distributed out of band to rule out a substituted key)"
	}
	fmt.Fprintf(v.out, "call %s: checking against signing key %s from %s\n", v.call, integrity.KeyID(pub), from)
	st, err := integrity.Verify(pub, *tr.Integrity)
	if err != nil {
		v.fail("signature: %v: the statement was not signed by this key or was altered", err)
		return nil
	}
	v.ok("signature: valid, statement signed at %s (call %s, console %s, state %s)", st.SignedAt.Format(time.RFC3339), st.CallID, st.Console, st.State)
	if st.CallID != v.call {
		v.fail("the statement is about call %s, not %s", st.CallID, v.call)
	}
	iu := make([]integrity.Utterance, len(tr.Utterances))
	for i, u := range tr.Utterances {
		iu[i] = integrity.Utterance{Channel: u.Channel, Index: u.Index, StartMS: u.StartMS, EndMS: u.EndMS, Text: u.Text, Heard: u.Heard}
	}
	sum := integrity.TranscriptSum(iu)
	basis := "sealed when the call was finalised"
	if !st.Transcript.Sealed {
		basis = "of the finals as served: the call is not finalised"
	}
	switch {
	case len(iu) != st.Transcript.Finals:
		v.fail("transcript: %s finals served, %s signed: transcript altered or incomplete", commas(len(iu)), commas(st.Transcript.Finals))
	case hex.EncodeToString(sum[:]) != st.Transcript.SHA256:
		v.fail("transcript: %s finals, hash differs from the signed one (%s): transcript altered", commas(len(iu)), basis)
	default:
		v.ok("transcript: %s finals, hash matches (%s; %s)", commas(len(iu)), st.Transcript.SHA256, basis)
	}
	for _, ch := range st.Channels {
		if err := v.channel(ctx, st, ch); err != nil {
			return err
		}
	}
	return nil
}

// channel recomputes one channel's digest from the served audio.
func (v *verifier) channel(ctx context.Context, st *integrity.Statement, ch integrity.ChannelDigest) error {
	name := fmt.Sprintf("channel %d (%s)", ch.Channel, ch.Label)
	if ch.SHA256 == "" {
		v.fail("%s: the statement records no digest (audio deleted before digests were kept)", name)
		return nil
	}
	resp, err := v.api.open(ctx, fmt.Sprintf("/v1/calls/%s/audio?channel=%d", url.PathEscape(v.call), ch.Channel))
	if err != nil {
		var gone *goneError
		if errors.As(err, &gone) {
			v.fail("%s: %s signed frames, but the audio is gone (%s): it cannot be checked", name, commas(int(ch.Frames)), gone.msg)
			return nil
		}
		return fmt.Errorf("%s audio: %w", name, err)
	}
	defer resp.Body.Close()
	var d integrity.Digest
	var later int
	var gap string
	err = integrity.ReadRecords(resp.Body, func(seq uint32, capture int64, payload []byte) error {
		if d.Next >= ch.Frames {
			later++
			return nil
		}
		if seq != d.Next {
			if gap == "" {
				gap = fmt.Sprintf("frame %d is followed by frame %d", int64(d.Next)-1, seq)
			}
			return nil
		}
		return d.Add(seq, capture, payload)
	})
	switch {
	case err != nil:
		v.fail("%s: audio download failed after %s frames: %v", name, commas(int(d.Next)), err)
	case gap != "":
		v.fail("%s: %s of %s signed frames in sequence, then a gap (%s): audio incomplete", name, commas(int(d.Next)), commas(int(ch.Frames)), gap)
	case d.Next < ch.Frames:
		v.fail("%s: only %s of %s signed frames are stored: audio incomplete", name, commas(int(d.Next)), commas(int(ch.Frames)))
	case d.Hex() != ch.SHA256:
		v.fail("%s: %s frames, digest differs from the signed one: audio altered or incomplete", name, commas(int(ch.Frames)))
	case later > 0 && st.State != "open" && st.State != "streaming":
		v.fail("%s: %s frames match, but %s more are stored after the signed end of the call", name, commas(int(ch.Frames)), commas(later))
	case later > 0:
		v.ok("%s: %s frames, digest matches (%s); %s frames stored since (the call is live)", name, commas(int(ch.Frames)), ch.SHA256, commas(later))
	default:
		v.ok("%s: %s frames, digest matches (%s)", name, commas(int(ch.Frames)), ch.SHA256)
	}
	return nil
}

// commas writes n with thousands separators.
func commas(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// goneError is a 410 answer: what was asked for was deleted.
type goneError struct{ msg string }

func (e *goneError) Error() string { return e.msg }
