package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/proto"
	"github.com/pion/webrtc/v4"
	"github.com/quic-go/quic-go"
	"golang.org/x/sys/unix"
)

// faultResult is one row of the chaos report's table of faults that are
// not process kills: what the console saw, how long until calls flowed
// again, acknowledged frames lost, and whether the real call's transcript
// is complete (equal to a fault-free decode of the audio it sent).
type faultResult struct {
	name, fault string
	consoleSaw  string
	recovered   time.Duration
	ackedLost   int
	complete    bool
	note        string
}

func (r faultResult) check(t *testing.T) {
	t.Helper()
	t.Logf("%s: console saw %q; recovered after %v; acked frames lost %d; transcript complete %v; %s", r.name, r.consoleSaw, r.recovered.Round(time.Millisecond), r.ackedLost, r.complete, r.note)
	if r.ackedLost != 0 || !r.complete {
		t.Errorf("%s: acked frames lost %d, transcript complete %v", r.name, r.ackedLost, r.complete)
	}
}

// TestFaults runs, in make test, the faults that must never stop the
// centre: a full disk mid-call, a poisoned frame, and a flood of junk set-up
// requests during a real call. make chaos runs them too, with the rest.
func TestFaults(t *testing.T) {
	t.Run("disk-full", func(t *testing.T) { diskFullFault(t).check(t) })
	t.Run("poisoned-frame", func(t *testing.T) { poisonedFrameFault(t).check(t) })
	t.Run("junk-flood", func(t *testing.T) { junkFloodFault(t).check(t) })
}

// errLog collects the distinct errors a console saw.
type errLog struct {
	mu   sync.Mutex
	seen []string
	n    int
}

func (e *errLog) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if len(e.seen) == 0 {
		e.seen = append(e.seen, err.Error())
	}
}

func (e *errLog) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == 0 {
		return "nothing: acks and transcript as usual"
	}
	return fmt.Sprintf("%d connection errors (retried), the first: %s", e.n, e.seen[0])
}

// ackedLostIn stops nothing: it opens the (closed) store in dir and counts
// frames the console had acknowledged that are missing or differ.
func ackedLostIn(t *testing.T, dir, id string, c *sentCall) int {
	t.Helper()
	st, err := store.Open(filepath.Join(dir, "store"), storeOptions(t, dir))
	if err != nil {
		t.Fatalf("reopen the store: %v", err)
	}
	defer st.Close()
	ack := c.call.Acked()
	lost := 0
	for ch := range c.frames {
		have := map[uint32]bool{}
		_ = st.Frames(proto.CallID(id), ch, 0, 0, func(f store.Frame) error {
			if int(f.Seq) < len(c.frames[ch]) && bytes.Equal(f.Payload, c.frames[ch][f.Seq]) {
				have[f.Seq] = true
			}
			return nil
		})
		for seq := range ack[ch] {
			if !have[seq] {
				lost++
			}
		}
	}
	return lost
}

func readyz(addr string) (int, string) {
	r, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r.StatusCode, strings.TrimSpace(string(b))
}

// mountTmpfs mounts a tmpfs of sizeMB at a new directory (root only).
func mountTmpfs(t *testing.T, sizeMB int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "small-fs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%dm,mode=0700", sizeMB)); err != nil {
		t.Skipf("cannot mount a small filesystem (needs root): %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// diskFullFault fills the data directory's filesystem mid-call, holds it
// full for 3 s, then frees it: the console is refused with a retryable
// storage error, /readyz says why, and the call resumes by itself.
func diskFullFault(t *testing.T) faultResult {
	res := faultResult{name: "disk full", fault: "the data directory's filesystem (a 700 MiB tmpfs) filled mid-call, freed 3 s later"}
	want := transcribeChannels(t, demoCall)
	a := newAppliance(t)
	a.dir = filepath.Join(mountTmpfs(t, 700), "data")
	dev := a.dev(t, 2)
	var errs errLog
	c := startCall(t, callTarget{quic: a.quic, dir: a.dir, consoleID: "e2e-console", onError: errs.add}, "disk-full", demoCall, 1)
	waitUntil(t, "a final", 60*time.Second, func() bool { return len(c.texts()[0]) >= 1 })
	// Fill the filesystem in steps until the coordinator refuses audio.
	filler, err := os.Create(filepath.Join(filepath.Dir(a.dir), "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4<<20)
	var why string
	for {
		code, body := readyz(a.http)
		if code == http.StatusServiceUnavailable && strings.Contains(body, "disk") {
			why = body
			break
		}
		if _, err := filler.Write(chunk); err != nil {
			t.Fatalf("the filesystem filled up without the coordinator noticing: %v (readyz %d %q)", err, code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	filler.Close()
	full := c.call.Acked()
	t.Logf("disk full: readyz says %q; acked %v", why, full)
	time.Sleep(3 * time.Second)
	if errs.String() == "nothing: acks and transcript as usual" {
		t.Error("the console was not told about the full disk")
	}
	freed := time.Now()
	if err := os.Remove(filler.Name()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "acks again", 30*time.Second, func() bool { return c.call.Acked()[0] > full[0] })
	res.recovered = time.Since(freed)
	waitUntil(t, "ready again", 10*time.Second, func() bool { code, _ := readyz(a.http); return code == http.StatusOK })
	c.wait(t)
	res.consoleSaw = errs.String() + "; /readyz: " + why
	res.complete = reflect.DeepEqual(c.texts(), want)
	if !res.complete {
		t.Logf("transcript:\n got  %q\n want %q", c.texts(), want)
	}
	dev.kill(syscall.SIGTERM)
	res.ackedLost = ackedLostIn(t, a.dir, "disk-full", c)
	return res
}

// poisonedFrameFault sends, mid-call, a frame no decoder can read (an
// odd-length L16 frame). It is stored and acked, concealed by the worker,
// counted, and the call finalises with the transcript of the audio with
// that frame silenced.
func poisonedFrameFault(t *testing.T) faultResult {
	res := faultResult{name: "poisoned frame", fault: "one odd-length (undecodable) L16 frame sent mid-call on the caller's channel"}
	w, err := audio.ReadWAVFile(demoCall)
	if err != nil {
		t.Fatal(err)
	}
	const bad = 120 // 12 s into the call
	// The reference: the same audio with that frame's 100 ms silenced,
	// which is how the worker conceals it.
	silenced := &audio.WAV{Rate: w.Rate, Channels: w.Channels, Samples: append([]int16(nil), w.Samples...)}
	for i := bad * 1600; i < (bad+1)*1600; i++ {
		silenced.Samples[i*w.Channels] = 0
	}
	want := transcribeWAV(t, silenced)
	a := newAppliance(t)
	dev := a.dev(t, 2)
	var errs errLog
	c := startCall(t, callTarget{quic: a.quic, dir: a.dir, consoleID: "e2e-console", onError: errs.add,
		mutate: func(f [][][]byte) { f[0][bad] = append(f[0][bad], 0) }}, "poisoned", demoCall, 3)
	c.wait(t)
	res.consoleSaw = errs.String()
	res.complete = reflect.DeepEqual(c.texts(), want)
	if !res.complete {
		t.Logf("transcript:\n got  %q\n want %q", c.texts(), want)
	}
	var v struct {
		State       string `json:"state"`
		ChannelInfo []struct {
			Undecodable uint64 `json:"frames_undecodable"`
		} `json:"channel_info"`
	}
	a.getJSON(t, "/v1/calls/poisoned", &v)
	if v.State != store.StateFinalised || len(v.ChannelInfo) != 2 || v.ChannelInfo[0].Undecodable != 1 || v.ChannelInfo[1].Undecodable != 0 {
		t.Errorf("call record: %+v", v)
	}
	res.note = fmt.Sprintf("the call record counts %d undecodable frame(s); finalised", v.ChannelInfo[0].Undecodable)
	dev.kill(syscall.SIGTERM)
	res.ackedLost = ackedLostIn(t, a.dir, "poisoned", c)
	return res
}

// tlsFor is a console's TLS configuration for the appliance's CA.
func tlsFor(pool *x509.CertPool) *tls.Config {
	return &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{proto.ALPNConsole}, MinVersion: tls.VersionTLS13}
}

// junkOffer is a WebRTC offer that will never connect: no candidates, and
// nobody behind it.
func junkOffer(t *testing.T) string {
	t.Helper()
	pc, err := webrtc.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		t.Fatal(err)
	}
	off, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	// Announce trickle ICE, as browsers do: the offer is acceptable without
	// candidates, and the coordinator waits for candidates that never come.
	sdp := off.SDP
	if !strings.Contains(sdp, "a=ice-options:trickle") {
		sdp = strings.Replace(sdp, "t=0 0\r\n", "t=0 0\r\na=ice-options:trickle\r\n", 1)
	}
	if !strings.Contains(sdp, "a=ice-options:trickle") {
		t.Fatalf("cannot mark the junk offer for trickle ICE:\n%s", sdp)
	}
	return sdp
}

// junkFloodFault floods the appliance with set-up requests that never
// carry audio — ~300 WHIP offers without candidates and 24 QUIC hellos
// that never send a frame — and starts a real call in the middle of it.
// The real call must get its workers and its transcript as usual, and the
// junk must be gone within seconds.
func junkFloodFault(t *testing.T) faultResult {
	res := faultResult{name: "junk flood", fault: "from another console and address (127.0.0.2): 300 WHIP offers (trickle ICE, no candidate ever sent) in ~2 s from 6 clients and 24 half-open QUIC calls; a real call started during it"}
	want := transcribeChannels(t, demoCall)
	a := newAppliance(t)
	dev := a.dev(t, 2)
	// The junk comes from a console of its own (a misbehaving or stolen
	// console credential): it must not hold up any other console's call.
	tok := strings.TrimSpace(run(t, "token", "add", "--server", a.http, "--token", a.operatorToken(t), "--role", "console", "--name", "junk-console"))
	offer := junkOffer(t)
	var mu sync.Mutex
	statuses := map[int]int{}
	var wg sync.WaitGroup
	start := time.Now()
	// The junk comes from another host (127.0.0.2), the real call from this
	// one: the coordinator bounds set-up per address, whatever console ids
	// the junk claims.
	junkHost := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}
	// WHIP: 300 offers over ~2 s from 6 clients, each request bounded.
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: junkHost.IP}, Timeout: 5 * time.Second}
			cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dialer.DialContext}}
			for i := range 50 {
				req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("http://%s/v1/whip/junk-%d-%d", a.http, g, i), strings.NewReader(offer))
				req.Header.Set("Authorization", "Bearer "+tok)
				req.Header.Set("Content-Type", "application/sdp")
				r, err := cl.Do(req)
				code := 0
				if err == nil {
					code = r.StatusCode
					r.Body.Close()
				}
				mu.Lock()
				statuses[code]++
				mu.Unlock()
				time.Sleep(40 * time.Millisecond)
			}
		}()
	}
	// QUIC: 24 hellos that never send audio, held open.
	pool, err := pki.CertPool(filepath.Join(a.dir, pki.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp", junkHost)
	if err != nil {
		t.Fatal(err)
	}
	qt := &quic.Transport{Conn: udp}
	t.Cleanup(func() { qt.Close() })
	server, err := net.ResolveUDPAddr("udp", a.quic)
	if err != nil {
		t.Fatal(err)
	}
	refused := 0
	for i := range 24 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := qt.Dial(ctx, server, tlsFor(pool), nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.CloseWithError(0, "") })
		st, err := conn.OpenStreamSync(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		w, r := proto.NewWriter(st), proto.NewReader(st)
		_ = w.WriteJSON(proto.THello, proto.Hello{Version: proto.Version, Token: tok, CallID: proto.CallID(fmt.Sprintf("half-open-%d", i)), ConsoleID: "junk",
			Channels: []string{"caller"}, Codec: proto.CodecL16})
		var wel proto.Welcome
		_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
		var pe *proto.Error
		if err := r.ReadJSON(proto.TWelcome, &wel); errors.As(err, &pe) && pe.Code == proto.CodeUnavailable {
			refused++
		}
	}
	// The real call starts in the middle of the flood.
	var errs errLog
	callStart := time.Now()
	c := startCall(t, callTarget{quic: a.quic, dir: a.dir, consoleID: "e2e-console", onError: errs.add}, "real-call", demoCall, 2)
	waitUntil(t, "the real call's first final", 60*time.Second, func() bool { return len(c.texts()[0]) >= 1 })
	firstFinal := time.Since(callStart)
	wg.Wait()
	flood := time.Since(start)
	mu.Lock()
	if statuses[http.StatusCreated] == 0 || statuses[http.StatusServiceUnavailable] == 0 || statuses[http.StatusCreated]+statuses[http.StatusServiceUnavailable] != 300 {
		t.Errorf("the junk offers were not answered as a flood should be (some 201, the rest 503): %v", statuses)
	}
	mu.Unlock()
	c.wait(t)
	res.consoleSaw = errs.String()
	res.complete = reflect.DeepEqual(c.texts(), want)
	if !res.complete {
		t.Logf("transcript:\n got  %q\n want %q", c.texts(), want)
	}
	// The junk is gone within seconds: no WebRTC session, no call left.
	var left int
	waitUntil(t, "the junk calls gone", 40*time.Second, func() bool {
		var calls struct {
			Calls []struct {
				ID string `json:"id"`
			} `json:"calls"`
		}
		a.getJSONWith(t, "/v1/calls", tok, &calls) // the junk console's own calls
		left = len(calls.Calls)
		return left == 0
	})
	res.recovered = firstFinal
	mu.Lock()
	res.note = fmt.Sprintf("WHIP answers %v in %v; %d of 24 half-open QUIC calls refused; the real call's first final %v after it started; every junk call gone %v after the flood",
		statuses, flood.Round(time.Millisecond), refused, firstFinal.Round(time.Millisecond), time.Since(start.Add(flood)).Round(time.Second))
	mu.Unlock()
	dev.kill(syscall.SIGTERM)
	res.ackedLost = ackedLostIn(t, a.dir, "real-call", c)
	return res
}

// hashTree returns every regular file's contents hash under dir.
func hashTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[p] = fmt.Sprintf("%x", sha256.Sum256(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// damagedStoreFault populates a store with a real call, stops the
// appliance, keeps a backup copy of the data directory, damages the store
// (kind "manifest": MANIFEST cut to 10 bytes; "vlog": one byte flipped in
// the middle of the value log) and starts the coordinator on it: it must
// refuse to start, naming the damaged file, and leave every file as it
// was; `store check` must say so; the backup restored must start and hold
// every acknowledged frame and the same transcript.
func damagedStoreFault(t *testing.T, kind string) faultResult {
	res := faultResult{name: "damaged store (" + kind + ")"}
	a := newAppliance(t)
	dev := a.dev(t, 2)
	c := streamCall(t, a, "before-damage", demoCall, 4)
	c.wait(t)
	want := c.texts()
	dev.kill(syscall.SIGTERM)
	backup := t.TempDir()
	if out, err := exec.Command("cp", "-a", a.dir+"/.", backup).CombinedOutput(); err != nil {
		t.Fatalf("backup: %v %s", err, out)
	}
	sdir := filepath.Join(a.dir, "store")
	var victim string
	switch kind {
	case "manifest":
		victim = filepath.Join(sdir, "MANIFEST")
		res.fault = "the store's MANIFEST cut to 10 bytes (store of a finished call)"
		if err := os.Truncate(victim, 10); err != nil {
			t.Fatal(err)
		}
	case "vlog":
		res.fault = "one byte flipped in the middle of the value log (store of a finished call)"
		vlogs, _ := filepath.Glob(filepath.Join(sdir, "*.vlog"))
		var size int64
		for _, v := range vlogs {
			if fi, err := os.Stat(v); err == nil && fi.Size() > size {
				victim, size = v, fi.Size()
			}
		}
		if victim == "" {
			t.Fatal("no value log")
		}
		f, err := os.OpenFile(victim, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, size/2); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x5a
		if _, err := f.WriteAt(b, size/2); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	before := hashTree(t, sdir)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binPath, "coordinator", "--data", a.dir, "--http", a.http, "--quic", a.quic).CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("the coordinator started on a damaged store (err %v):\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	res.consoleSaw = "the coordinator refused to start: " + lines[len(lines)-1]
	if !strings.Contains(string(out), filepath.Base(victim)) {
		t.Errorf("the refusal does not name %s:\n%s", filepath.Base(victim), out)
	}
	if after := hashTree(t, sdir); !reflect.DeepEqual(before, after) {
		t.Errorf("refusing to start changed the damaged store's files")
	}
	check := exec.Command(binPath, "store", "check", sdir)
	cout, err := check.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("store check on the damaged store: %v\n%s", err, cout)
	}
	// Recover from the backup.
	t0 := time.Now()
	if err := os.RemoveAll(sdir); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(backup, "store"), sdir).CombinedOutput(); err != nil {
		t.Fatalf("restore: %v %s", err, out)
	}
	dev = a.dev(t, 2)
	res.recovered = time.Since(t0)
	var tr struct {
		Utterances []struct {
			Channel int    `json:"channel"`
			Text    string `json:"text"`
		} `json:"utterances"`
	}
	a.getJSONAuth(t, "/v1/calls/before-damage/transcript", &tr)
	got := make([][]string, len(want))
	for _, u := range tr.Utterances {
		got[u.Channel] = append(got[u.Channel], u.Text)
	}
	res.complete = reflect.DeepEqual(got, want)
	res.note = "restored from a copy of the data directory taken with the service stopped; " + strings.TrimSpace(lastLine(string(cout)))
	dev.kill(syscall.SIGTERM)
	res.ackedLost = ackedLostIn(t, a.dir, "before-damage", c)
	return res
}

func lastLine(s string) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	return ls[len(ls)-1]
}
