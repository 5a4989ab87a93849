package e2e

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/internal/wer"
)

// references maps each referenced clip to its reference transcription.
func references(t *testing.T) map[string]string {
	t.Helper()
	refs, err := wer.ReadReferences(testData)
	if err != nil {
		t.Fatal(err)
	}
	return refs
}

// The same WAV through WHIP and through QUIC prints exactly the same
// transcript, for PCMU and Opus (and PCMA on one clip): WebRTC's transport, RTP sequencing and
// jitter handling add nothing. (How Opus compares with L16 in word error
// rate is the codec's business: worker.TestOpusAccuracyMatchesL16.)
func TestWHIPMatchesQUIC(t *testing.T) {
	a := newAppliance(t)
	a.dev(t, 2)
	tok := a.token(t)
	ca := filepath.Join(a.dir, pki.CAFile)
	refs := references(t)
	var l16, opus wer.Counts
	for i, clip := range referenceClips(t) {
		codecs := []string{"pcmu", "opus"}
		if i == 0 {
			codecs = append(codecs, "pcma") // once: the same G.711 path as PCMU
		}
		for _, codec := range codecs {
			quic := run(t, "stream", "--server", a.quic, "--ca", ca, "--token", tok, "--call", fmt.Sprintf("q-%s-%d", codec, i), "--codec", codec, "--speed", "0", "--quiet", clip)
			whip := run(t, "stream", "--transport", "whip", "--server", a.http, "--token", tok, "--call", fmt.Sprintf("w-%s-%d", codec, i), "--codec", codec, "--speed", "10", "--quiet", clip)
			if whip != quic {
				t.Errorf("%s, %s:\nwhip: %q\nquic: %q", filepath.Base(clip), codec, whip, quic)
			}
			if codec == "opus" {
				opus = opus.Add(wer.Compare(wer.Words(refs[clip]), wer.Words(whip)))
			}
		}
		l16 = l16.Add(wer.Compare(wer.Words(refs[clip]), wer.Words(run(t, "transcribe", clip))))
	}
	t.Logf("WER at alignment 0: L16 over QUIC %.1f%%, Opus over WHIP %.1f%%", 100*l16.Rate(), 100*opus.Rate())
}

// A supervisor watching a call over server-sent events sees the finals the
// console gets, then "finalised"; the transcript API wants a console token.
func TestSupervisorWatchesACallLive(t *testing.T) {
	a := newAppliance(t)
	a.dev(t, 2)
	tok := a.token(t)
	// The call must exist before it can be watched: open it with a first run.
	out := make(chan string, 1)
	go func() {
		out <- run(t, "stream", "--transport", "whip", "--server", a.http, "--token", tok, "--call", "watched", "--codec", "opus", "--speed", "2", "--quiet", demoCall)
	}()
	var res *http.Response
	waitUntil(t, "the call is watchable", 20*time.Second, func() bool {
		req, _ := http.NewRequest(http.MethodGet, "http://"+a.http+"/v1/calls/watched/events", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		r, err := http.DefaultClient.Do(req)
		if err == nil && r.StatusCode == 200 {
			res = r
			return true
		}
		if err == nil {
			r.Body.Close()
		}
		return false
	})
	defer res.Body.Close()
	if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	body, err := io.ReadAll(res.Body) // ends when the call is finalised
	if err != nil {
		t.Fatal(err)
	}
	console := <-out
	var finals []string
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "data: ") && strings.Contains(l, `"kind":"final"`) {
			finals = append(finals, l)
		}
	}
	if !strings.Contains(string(body), "event: finalised") {
		t.Fatalf("no finalised event:\n%s", body)
	}
	if lines := strings.Count(strings.TrimSpace(console), "\n") + 1; len(finals) != lines {
		t.Errorf("SSE gave %d finals, the console printed %d lines:\n%s", len(finals), lines, console)
	}
	for _, l := range strings.Split(strings.TrimSpace(console), "\n") {
		_, text, _ := strings.Cut(l, ": ")
		if !strings.Contains(string(body), text) {
			t.Errorf("console final %q not in the SSE stream", text)
		}
	}
	for _, p := range []string{"/v1/calls/watched/transcript", "/v1/calls/watched/events"} {
		r, err := http.Get("http://" + a.http + p + "?token=wrong")
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != 400 {
			t.Errorf("GET %s with a token in the URL: %d, want 400 (tokens travel in headers only)", p, r.StatusCode)
		}
	}
}
