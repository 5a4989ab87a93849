// Package e2e runs the real callscribe binary: a whole appliance, separate
// coordinator and agent processes, real worker processes, real PocketSphinx,
// real QUIC on loopback, and faults injected with SIGKILL.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callscribe/callscribe/ingest/console"
	"github.com/callscribe/callscribe/internal/audio"
	"github.com/callscribe/callscribe/internal/pki"
	"github.com/callscribe/callscribe/proto"
)

var binPath string

const testData = "/usr/share/pocketsphinx/test/data"

func TestMain(m *testing.M) {
	if _, err := os.Stat(testData); err != nil {
		fmt.Println("e2e: pocketsphinx-testdata is not installed (make test installs it); skipping")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "callscribe-e2e")
	if err != nil {
		panic(err)
	}
	binPath = filepath.Join(dir, "callscribe")
	build := exec.Command("go", "build", "-o", binPath, "../../cmd/callscribe")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Println("e2e: build failed:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running callscribe process.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	out  *bytes.Buffer
	mu   *sync.Mutex
	done chan struct{}
}

type syncBuf struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (s syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, out: &bytes.Buffer{}, mu: &sync.Mutex{}, done: make(chan struct{})}
	p.cmd = exec.Command(binPath, args...)
	if len(args) > 2 && args[0] == "netns-exec" { // run inside a test-made namespace
		p.cmd = exec.Command("ip", append([]string{"netns", "exec", args[1], binPath}, args[2:]...)...)
	}
	w := syncBuf{p.mu, p.out}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, p.output())
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// kill signals the whole process group and waits for the process.
func (p *proc) kill(sig syscall.Signal) {
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// killLeader SIGKILLs the process alone (its children see it die).
func (p *proc) killLeader() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func freeUDP(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

func freeTCP(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// appliance is a coordinator (possibly with its agent in the same process).
type appliance struct {
	dir, http, quic string
}

func newAppliance(t *testing.T) *appliance {
	return &appliance{dir: t.TempDir(), http: freeTCP(t), quic: freeUDP(t)}
}

func (a *appliance) dev(t *testing.T, workers int) *proc {
	p := start(t, "dev", "--data", a.dir, "--http", a.http, "--quic", a.quic, "--workers", fmt.Sprint(workers))
	a.waitReady(t, p)
	return p
}

// coordinator starts a coordinator and waits until it serves HTTP as the
// leader (by then its CA and tokens exist, so agents can be started).
func (a *appliance) coordinator(t *testing.T, workers int) *proc {
	t.Helper()
	p := start(t, "coordinator", "--data", a.dir, "--http", a.http, "--quic", a.quic, "--workers", fmt.Sprint(workers))
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("coordinator exited:\n%s", p.output())
		default:
		}
		if r, err := http.Get("http://" + a.http + "/healthz"); err == nil {
			b, _ := io.ReadAll(r.Body)
			r.Body.Close()
			// A coordinator follows (and says so) until its member leads,
			// a moment after it starts.
			if r.StatusCode == 200 && !strings.Contains(string(b), "follower") {
				return p
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("coordinator not serving within 60 s:\n%s", p.output())
	return nil
}

func (a *appliance) agent(t *testing.T, node string) *proc {
	return start(t, "agent", "--coordinator", a.quic, "--ca", filepath.Join(a.dir, pki.CAFile), "--node", node,
		"--token-file", filepath.Join(a.dir, pki.NodeToken), "--state", a.dir,
		"--cert", filepath.Join(a.dir, pki.NodeCert), "--key", filepath.Join(a.dir, pki.NodeKey))
}

func (a *appliance) waitReady(t *testing.T, p *proc) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("process exited before ready:\n%s", p.output())
		default:
		}
		if r, err := http.Get("http://" + a.http + "/readyz"); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("not ready within 60 s:\n%s", p.output())
}

func (a *appliance) token(t *testing.T) string {
	t.Helper()
	tok, err := pki.ReadToken(filepath.Join(a.dir, pki.ConsoleToken))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// operatorToken is the appliance's operator credential (status, drain).
func (a *appliance) operatorToken(t *testing.T) string {
	t.Helper()
	tok, err := pki.ReadToken(filepath.Join(a.dir, pki.OperatorToken))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// getJSON reads the API with the credential its path needs: the operator's
// for status and stats, the console's for its calls.
func (a *appliance) getJSON(t *testing.T, path string, v any) {
	t.Helper()
	tok := a.token(t)
	if strings.HasPrefix(path, "/v1/status") || strings.HasPrefix(path, "/v1/stats") {
		tok = a.operatorToken(t)
	}
	a.getJSONWith(t, path, tok, v)
}

// getJSONAuth is getJSON with the console token (the transcript API).
func (a *appliance) getJSONAuth(t *testing.T, path string, v any) {
	t.Helper()
	a.getJSONWith(t, path, a.token(t), v)
}

func (a *appliance) getJSONWith(t *testing.T, path, token string, v any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+a.http+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	if r.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, r.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

// run runs the binary to completion and returns its stdout.
func run(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("callscribe %v: %v\nstderr:\n%s", args, err, errb.String())
	}
	return out.String()
}

// referenceClips lists pocketsphinx-testdata's clips that have a reference
// transcription, in a fixed order.
func referenceClips(t *testing.T) []string {
	t.Helper()
	clips := slices.Sorted(maps.Keys(references(t)))
	if len(clips) != 10 {
		t.Fatalf("want 10 reference clips, found %d", len(clips))
	}
	return clips
}

// sentCall streams a WAV through the console library, paced, recording
// every payload sent so the test can check the store byte for byte, and
// when each channel was told it resumed.
type sentCall struct {
	call      *console.Call
	frames    [][][]byte
	finals    [][]string
	resumedAt [][]time.Time
	// acks is every acknowledgement the console received, in order: each
	// ack, and each welcome's next_seq (which acknowledges what the
	// coordinator holds), with the coordinator that sent it.
	acks     []ackRecord
	addr     string // the coordinator of the current session
	errors   int    // errors that ended a connection
	errTexts []timedText
	mu       sync.Mutex
	done     chan error
}

// ackRecord is one acknowledgement a console received: every frame of
// channel ch below next is durable, says the coordinator at addr.
type ackRecord struct {
	at      time.Time
	addr    string
	ch      int
	next    uint32
	welcome bool // a welcome's next_seq, not an ack
}

// timedText is a message and when it came.
type timedText struct {
	at   time.Time
	text string
}

// errorsAfter returns the errors that ended a connection after t.
func (s *sentCall) errorsAfter(t time.Time) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, e := range s.errTexts {
		if e.at.After(t) {
			out = append(out, e.text)
		}
	}
	return out
}

// ackRecords returns a copy of the call's acknowledgements.
func (s *sentCall) ackRecords() []ackRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.acks)
}

// connErrors is how many connections ended in an error.
func (s *sentCall) connErrors() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errors
}

func (s *sentCall) texts() [][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([][]string, len(s.finals))
	for i := range s.finals {
		out[i] = append([]string(nil), s.finals[i]...)
	}
	return out
}

// resumed counts the resumed events the console got, all channels.
func (s *sentCall) resumed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, ts := range s.resumedAt {
		n += len(ts)
	}
	return n
}

// callTarget is the coordinator a test console talks to.
type callTarget struct {
	quic, dir string // QUIC address; data directory (CA and console token)
	// servers are more coordinators (a cluster), dialled after quic.
	servers   []string
	consoleID string
	// token is the console's credential (default: DATA/console.token).
	token string
	netns string // run the console inside this namespace ("": here)
	// mutate, if set, changes the frames before they are sent (a poisoned
	// frame); the recorded frames are what is sent.
	mutate func(frames [][][]byte)
	// onError, if set, sees every error that ends a console connection.
	onError func(error)
}

func streamCall(t *testing.T, a *appliance, id, wavPath string, speed float64) *sentCall {
	return startCall(t, callTarget{quic: a.quic, dir: a.dir, consoleID: "e2e-console"}, id, wavPath, speed)
}

func startCall(t *testing.T, to callTarget, id, wavPath string, speed float64) *sentCall {
	t.Helper()
	w, err := audio.ReadWAVFile(wavPath)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pki.CertPool(filepath.Join(to.dir, pki.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	tok := to.token
	if tok == "" {
		if tok, err = pki.ReadToken(filepath.Join(to.dir, pki.ConsoleToken)); err != nil {
			t.Fatal(err)
		}
	}
	labels := []string{proto.ChannelCaller, proto.ChannelCallTaker}[:w.Channels]
	s := &sentCall{frames: make([][][]byte, w.Channels), finals: make([][]string, w.Channels),
		resumedAt: make([][]time.Time, w.Channels), done: make(chan error, 1)}
	for c := range w.Channels {
		pcm := w.Channel(c)
		for off := 0; off < len(pcm); off += 1600 {
			s.frames[c] = append(s.frames[c], audio.PCMToBytes(pcm[off:min(off+1600, len(pcm))]))
		}
	}
	if to.mutate != nil {
		to.mutate(s.frames)
	}
	onError := func(err error) {
		s.mu.Lock()
		s.errors++
		s.errTexts = append(s.errTexts, timedText{time.Now(), err.Error()})
		s.mu.Unlock()
		if to.onError != nil {
			to.onError(err)
		}
	}
	onConnect := func(addr string, next []uint32) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.addr = addr
		for ch, n := range next {
			s.acks = append(s.acks, ackRecord{at: time.Now(), addr: addr, ch: ch, next: n, welcome: true})
		}
	}
	onAck := func(ch int, next uint32) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.acks = append(s.acks, ackRecord{at: time.Now(), addr: s.addr, ch: ch, next: next})
	}
	s.call = console.New(console.Config{Server: to.quic, Servers: to.servers, RootCAs: pool, ServerName: "localhost", Token: tok, CallID: proto.CallID(id),
		ConsoleID: proto.ConsoleID(to.consoleID), Channels: labels, Codec: proto.CodecL16, ReconnectFor: 45 * time.Second, OnError: onError,
		OnConnect: onConnect, OnAck: onAck})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	go func() {
		if to.netns != "" {
			if err := pinToNetns(to.netns); err != nil {
				s.done <- err
				return
			}
		}
		s.done <- s.call.Run(ctx)
	}()
	go func() {
		for ev := range s.call.Events() {
			if ev.Transcript == nil {
				continue
			}
			s.mu.Lock()
			switch ev.Transcript.Kind {
			case proto.KindFinal:
				s.finals[ev.Transcript.Channel] = append(s.finals[ev.Transcript.Channel], ev.Transcript.Text)
			case proto.KindResumed:
				s.resumedAt[ev.Transcript.Channel] = append(s.resumedAt[ev.Transcript.Channel], time.Now())
			}
			s.mu.Unlock()
		}
	}()
	go func() {
		start := time.Now()
		for i := range len(s.frames[0]) {
			time.Sleep(time.Until(start.Add(time.Duration(float64(i) * float64(100*time.Millisecond) / speed))))
			for c := range s.frames {
				if _, err := s.call.Send(c, s.frames[c][i], time.Now()); err != nil {
					return
				}
			}
		}
		s.call.End()
	}()
	return s
}

func (s *sentCall) wait(t *testing.T) {
	t.Helper()
	select {
	case err := <-s.done:
		if err != nil {
			t.Fatalf("call did not finalise: %v", err)
		}
	case <-time.After(4 * time.Minute):
		t.Fatal("call did not finalise within 4 minutes")
	}
	time.Sleep(50 * time.Millisecond) // let the event reader drain
}

// transcribeChannels runs `callscribe transcribe` on each channel's audio
// alone and returns the finals per channel.
func transcribeChannels(t *testing.T, wavPath string) [][]string {
	t.Helper()
	w, err := audio.ReadWAVFile(wavPath)
	if err != nil {
		t.Fatal(err)
	}
	return transcribeWAV(t, w)
}

// transcribeWAV is transcribeChannels for audio in memory.
func transcribeWAV(t *testing.T, w *audio.WAV) [][]string {
	t.Helper()
	out := make([][]string, w.Channels)
	for c := range w.Channels {
		p := filepath.Join(t.TempDir(), fmt.Sprintf("ch%d.wav", c))
		f, _ := os.Create(p)
		if err := audio.WriteWAV(f, w.Rate, 1, w.Channel(c)); err != nil {
			t.Fatal(err)
		}
		f.Close()
		for _, l := range strings.Split(strings.TrimSpace(run(t, "transcribe", p)), "\n") {
			if l != "" {
				out[c] = append(out[c], l)
			}
		}
	}
	return out
}
