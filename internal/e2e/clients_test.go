package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator"
	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/internal/wer"
)

const webrtcDir = "../../tests/webrtc"

// needClient skips a real-client test when its tools are missing, unless
// CALLSCRIBE_REQUIRE_WEBRTC is set (make test sets it after installing them):
// then a missing tool is a failure, not a silent skip.
func needClient(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			if os.Getenv("CALLSCRIBE_REQUIRE_WEBRTC") != "" {
				t.Fatalf("%s is missing (make test installs it): %v", p, err)
			}
			t.Skipf("%s is missing; `make test` installs the WebRTC clients", p)
		}
	}
}

// selfTestWords is what the embedded engine hears in worker/selftest.wav.
const selfTestWords = "go forward ten meters"

// closeTo reports whether a transcript is the expected one with at most one
// word wrong. A browser's capture (its Opus encoder, where its audio frames
// fall) varies from run to run, and PocketSphinx is sensitive to both; one
// word of slack keeps the test honest without making it flaky.
func closeTo(got, want string) bool {
	c := wer.Compare(wer.Words(want), wer.Words(got))
	return c.Errors() <= 1 && strings.Contains(got, "forward")
}

// artefact is where a test leaves a file for people to look at.
func artefact(t *testing.T, name string) string {
	dir := os.Getenv("CALLSCRIBE_ARTEFACTS")
	if dir == "" {
		dir, _ = filepath.Abs("../../test-artefacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, name)
}

// runClient runs a client script and returns its one JSON line.
func runClient(t *testing.T, d time.Duration, name string, args ...string) []byte {
	t.Helper()
	out, err := runClientErr(d, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// runClientErr is runClient for other goroutines than the test's.
func runClientErr(d time.Duration, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second // a browser's children may hold the pipes open
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %v: %v\nstdout:\n%s\nstderr:\n%s", name, args, err, out.String(), errb.String())
	}
	return out.Bytes(), nil
}

type browserResult struct {
	Finals []string `json:"finals"`
	State  string   `json:"state"`
	Log    string   `json:"log"`
	Error  string   `json:"error"`
}

// padded writes a copy of a WAV with seconds of silence in front: Chromium's
// fake microphone starts playing its file when capture starts, before the
// call is connected, and a call's first words must not fall into that gap.
// Several mono clips of one rate are joined.
func padded(t *testing.T, seconds float64, srcs ...string) string {
	t.Helper()
	var w *audio.WAV
	var pcm []int16
	for i, src := range srcs {
		c, err := audio.ReadWAVFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			w = c
			pcm = make([]int16, int(seconds*float64(w.Rate))*w.Channels)
		} else if c.Rate != w.Rate || c.Channels != w.Channels {
			t.Fatalf("%s: rate or channels differ from %s", src, srcs[0])
		}
		pcm = append(pcm, c.Samples...)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(srcs[0]))
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := audio.WriteWAV(f, w.Rate, w.Channels, pcm); err != nil {
		t.Fatal(err)
	}
	return dst
}

// Debian's chromium, driven by playwright-core, opens the console page the
// coordinator serves, captures a WAV as its microphone and streams it over
// WHIP: the page must show the clip's words.
func TestBrowserConsole(t *testing.T) {
	needClient(t, "/usr/bin/chromium", filepath.Join(webrtcDir, "node_modules/playwright-core"))
	a := newAppliance(t)
	a.dev(t, 2)
	wav := padded(t, 3, "../../worker/selftest.wav")
	shot := artefact(t, "browser-console.png")
	out := runClient(t, 2*time.Minute, "node", filepath.Join(webrtcDir, "browser.mjs"), "http://"+a.http, a.token(t), "browser-1", wav, shot)
	var r browserResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got := strings.Join(r.Finals, " "); !closeTo(got, selfTestWords) || r.State != "finalised" {
		t.Fatalf("page shows %q (state %s), want %q (one word may differ) finalised; log:\n%s", got, r.State, selfTestWords, r.Log)
	}
	if _, err := os.Stat(shot); err != nil {
		t.Errorf("no screenshot: %v", err)
	}
	t.Logf("screenshot: %s", shot)
}

// The coordinator is killed while the page streams and started again on
// its data directory: the page reconnects by itself with the same call
// id, the call resumes, and what the page shows is what the coordinator
// stored.
func TestBrowserReconnectsAfterCoordinatorRestart(t *testing.T) {
	needClient(t, "/usr/bin/chromium", filepath.Join(webrtcDir, "node_modules/playwright-core"))
	a := newAppliance(t)
	dev := a.dev(t, 2)
	lib := filepath.Join(testData, "librivox")
	wav := padded(t, 1, filepath.Join(lib, "sense_and_sensibility_01_austen_64kb-0930.wav"), filepath.Join(lib, "sense_and_sensibility_01_austen_64kb-0870.wav"),
		filepath.Join(lib, "sense_and_sensibility_01_austen_64kb-0880.wav"))
	marker := filepath.Join(t.TempDir(), "connected")
	shot := artefact(t, "browser-console-after-restart.png")
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	tok := a.token(t)
	go func() {
		out, err := runClientErr(3*time.Minute, "node", filepath.Join(webrtcDir, "browser.mjs"), "http://"+a.http, tok, "browser-2", wav, shot, marker)
		done <- result{out, err}
	}()
	waitUntil(t, "the page is connected", 30*time.Second, func() bool { _, err := os.Stat(marker); return err == nil })
	time.Sleep(3 * time.Second) // speech stored before the fault
	dev.kill(syscall.SIGKILL)
	a.dev(t, 2)
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	var r browserResult
	if err := json.Unmarshal(res.out, &r); err != nil {
		t.Fatal(err)
	}
	if r.State != "finalised" || len(r.Finals) == 0 || !strings.Contains(r.Log, "call resumed") {
		t.Fatalf("page state %s, finals %q; log:\n%s", r.State, r.Finals, r.Log)
	}
	var tr struct {
		Utterances []coordinator.Utterance `json:"utterances"`
	}
	a.getJSONAuth(t, "/v1/calls/browser-2/transcript", &tr)
	var stored []string
	for _, u := range tr.Utterances {
		stored = append(stored, u.Text)
	}
	if strings.Join(stored, "|") != strings.Join(r.Finals, "|") {
		t.Fatalf("page shows %q, the coordinator stored %q", r.Finals, stored)
	}
}

type gstResult struct {
	Call struct {
		State     string   `json:"state"`
		EndFrames []uint32 `json:"end_frames"`
		Received  []uint64 `json:"received"`
		Decoded   []uint32 `json:"decoded"`
		Concealed []uint64 `json:"concealed"`
	} `json:"call"`
	Transcript struct {
		Utterances []coordinator.Utterance `json:"utterances"`
	} `json:"transcript"`
}

// An independent WebRTC stack, GStreamer's webrtcbin from Python, streams
// the same clip with Opus and with PCMU: every packet is stored and
// decoded. With Opus the words come through; PCMU's 8 kHz audio is beyond
// the 16 kHz model (a known limit), so it only has to produce a final.
func TestGStreamerClient(t *testing.T) {
	needClient(t, "/usr/lib/python3/dist-packages/gi", "/usr/lib/x86_64-linux-gnu/gstreamer-1.0/libgstwebrtc.so", "/usr/lib/x86_64-linux-gnu/gstreamer-1.0/libgstnice.so")
	a := newAppliance(t)
	a.dev(t, 2)
	wav, _ := filepath.Abs("../../worker/selftest.wav")
	for _, codec := range []string{"opus", "pcmu"} {
		out := runClient(t, 2*time.Minute, "/usr/bin/python3", filepath.Join(webrtcDir, "gst_whip.py"), "http://"+a.http, a.token(t), "gst-"+codec, wav, codec)
		var r gstResult
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("%s: %v: %s", codec, err, out)
		}
		c := r.Call
		if c.State != "finalised" || len(c.EndFrames) != 1 || c.EndFrames[0] < 100 || uint64(c.EndFrames[0]) != c.Received[0] || c.Decoded[0] != c.EndFrames[0] {
			t.Errorf("%s: call %+v: want finalised with every packet (20 ms each, ≥100) stored and decoded", codec, c)
		}
		var words []string
		for _, u := range r.Transcript.Utterances {
			words = append(words, u.Text)
		}
		text := strings.Join(words, " ")
		t.Logf("%s: %q, %d packets, %v concealed", codec, text, c.EndFrames[0], c.Concealed)
		switch {
		case codec == "opus" && !closeTo(text, selfTestWords):
			t.Errorf("opus: transcript %q, want %q (one word may differ)", text, selfTestWords)
		case text == "":
			t.Errorf("%s: empty transcript", codec)
		}
	}
}

// The load generator drives simulated consoles (QUIC and WebRTC) against an
// appliance with the fast fake engine it starts for itself: every frame is
// stored, and the appliance's own figures come back.
func TestBenchLoad(t *testing.T) {
	for _, c := range []struct{ transport, engine, calls string }{{"quic", "fake", "4"}, {"whip", "fake", "4"}, {"quic", "real", "2"}} {
		out := run(t, "bench", "load", "--engine", c.engine, "--transport", c.transport, "--calls", c.calls, "--duration", "3s", "--audio", demoCall, "--json")
		var r struct {
			Calls, Connected, Sent, Stored, Lost, Finalised int
			EndToFinal                                      struct{ N int } `json:"end_to_final"`
			Server                                          *struct {
				CPUTotal       float64 `json:"cpu_total_pct"`
				ApplianceTotal float64 `json:"appliance_cpu_total_pct"`
				RSS            float64 `json:"rss_bytes"`
			}
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("%+v: %v: %s", c, err, out)
		}
		if r.Connected != r.Calls || r.Sent == 0 || r.Lost != 0 || r.Stored != r.Sent || r.Finalised != r.Calls || r.EndToFinal.N != r.Calls || r.Server == nil || r.Server.RSS == 0 {
			t.Errorf("%+v: %s", c, out)
			continue
		}
		// The appliance's CPU counts every process under it: with the real
		// engine, the PocketSphinx workers decoding are most of it.
		if c.engine == "real" && r.Server.ApplianceTotal < 2*r.Server.CPUTotal {
			t.Errorf("appliance CPU %.1f %% hardly above the coordinator's %.1f %%: workers not counted?", r.Server.ApplianceTotal, r.Server.CPUTotal)
		}
	}
}
