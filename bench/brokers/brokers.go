// Package brokers starts RabbitMQ and NATS JetStream on loopback and makes
// durable sinks of them, for the durable-storage comparison of make bench
// (bench/cmd/benchreport). The product binary does not link it.
package brokers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/callscribe/callscribe/bench"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
)

// The reference design handed audio to a broker; these sinks measure the
// same durable hand-off through RabbitMQ and NATS JetStream, each started on
// 127.0.0.1 by the benchmark and stopped afterwards.

// ErrNotInstalled says a broker is not on this machine; the report skips it.
var ErrNotInstalled = errors.New("not installed")

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// server is a broker process in its own process group.
type server struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

func startServer(logPath string, env []string, name string, args ...string) (*server, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	// Run in the server's scratch directory: what it leaves in its working
	// directory (Erlang's crash dumps, MnesiaCore files) goes with it.
	cmd.Dir = filepath.Dir(logPath)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	s := &server{cmd: cmd, done: make(chan struct{}), log: lf}
	go func() { _ = cmd.Wait(); close(s.done) }()
	return s, nil
}

func (s *server) stop() {
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	s.log.Close()
}

// waitFor retries connect until it succeeds, the server exits or d passes.
func (s *server) waitFor(d time.Duration, connect func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := connect()
		if err == nil {
			return nil
		}
		select {
		case <-s.done:
			b, _ := os.ReadFile(s.log.Name())
			return fmt.Errorf("server exited: %s", tail(string(b), 600))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not up after %v: %w", d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// RabbitMQVersion is the installed Debian package's version.
func RabbitMQVersion() string {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server").Output()
	if err != nil {
		return "?"
	}
	return string(out)
}

// RabbitMQ starts Debian's rabbitmq-server with its state in dir and returns
// a sink that publishes each frame as a persistent message to a durable
// quorum queue and returns once the broker confirms it (publisher
// confirms: the message is on disk on the queue's replica). One channel per
// call.
func RabbitMQ(ctx context.Context, dir string) (bench.Sink, func(), error) {
	bin := "/usr/lib/rabbitmq/bin/rabbitmq-server"
	if _, err := os.Stat(bin); err != nil {
		return nil, nil, fmt.Errorf("rabbitmq-server: %w (Debian package rabbitmq-server)", ErrNotInstalled)
	}
	// Absolute: the server runs in dir (see startServer).
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	dist, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	for _, d := range []string{"mnesia", "log", "home"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, nil, err
		}
	}
	node := fmt.Sprintf("callscribe-bench-%d@localhost", port)
	env := []string{"RABBITMQ_NODENAME=" + node, "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1", fmt.Sprintf("RABBITMQ_NODE_PORT=%d", port),
		fmt.Sprintf("RABBITMQ_DIST_PORT=%d", dist), "RABBITMQ_MNESIA_BASE=" + filepath.Join(dir, "mnesia"), "RABBITMQ_LOG_BASE=" + filepath.Join(dir, "log"),
		"HOME=" + filepath.Join(dir, "home"), "ERL_EPMD_ADDRESS=127.0.0.1", "RABBITMQ_ENABLED_PLUGINS_FILE=" + filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_CONFIG_FILE=" + filepath.Join(dir, "rabbitmq")}
	if err := os.WriteFile(filepath.Join(dir, "enabled_plugins"), []byte("[].\n"), 0o600); err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "rabbitmq.conf"), []byte("loopback_users.guest = true\n"), 0o600); err != nil {
		return nil, nil, err
	}
	srv, err := startServer(filepath.Join(dir, "server.log"), env, bin)
	if err != nil {
		return nil, nil, err
	}
	url := fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", port)
	var conn *amqp.Connection
	if err := srv.waitFor(90*time.Second, func() (err error) { conn, err = amqp.Dial(url); return err }); err != nil {
		srv.stop()
		return nil, nil, fmt.Errorf("rabbitmq: %w", err)
	}
	stop := func() {
		_ = conn.Close()
		srv.stop()
		_ = exec.Command("epmd", "-kill").Run()
	}
	setup, err := conn.Channel()
	if err == nil {
		_, err = setup.QueueDeclare("audio", true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	}
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("rabbitmq: declare quorum queue: %w", err)
	}
	// One confirm-mode channel per call, opened on the call's first frame.
	var mu sync.Mutex
	chans := map[int]*amqp.Channel{}
	channel := func(call int) (*amqp.Channel, error) {
		mu.Lock()
		defer mu.Unlock()
		if ch, ok := chans[call]; ok {
			return ch, nil
		}
		ch, err := conn.Channel()
		if err == nil {
			err = ch.Confirm(false)
		}
		if err != nil {
			return nil, fmt.Errorf("rabbitmq: channel: %w", err)
		}
		chans[call] = ch
		return ch, nil
	}
	sink := func(ctx context.Context, call, seq int, payload []byte) error {
		ch, err := channel(call)
		if err != nil {
			return err
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", "audio", true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, MessageId: fmt.Sprintf("%d/%d", call, seq), Body: payload})
		if err != nil {
			return err
		}
		ok, err := dc.WaitContext(ctx)
		if err == nil && !ok {
			err = errors.New("rabbitmq: message nacked")
		}
		return err
	}
	return sink, stop, nil
}

// NATSServerVersion is the version go install builds.
const NATSServerVersion = "v2.15.2"

// NATSServer builds nats-server (JetStream) into dir with go install,
// unless it is already there.
func NATSServer(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "nats-server")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	cmd := exec.CommandContext(ctx, "go", "install", "github.com/nats-io/nats-server/v2@"+NATSServerVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("nats-server: %w: go install: %v: %s", ErrNotInstalled, err, tail(string(out), 400))
	}
	return bin, nil
}

// JetStream starts nats-server with JetStream on file storage, configured
// to fsync every write before it acknowledges it (`sync_interval: always`),
// and returns a sink that publishes each frame to a stream and returns on
// the server's ack.
func JetStream(ctx context.Context, dir, bin string) (bench.Sink, func(), error) {
	// Absolute: the server runs in dir (see startServer).
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	conf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("listen: \"127.0.0.1:%d\"\njetstream {\n  store_dir: %q\n  sync_interval: always\n}\n", port, filepath.Join(dir, "js"))), 0o600); err != nil {
		return nil, nil, err
	}
	srv, err := startServer(filepath.Join(dir, "server.log"), nil, bin, "-c", conf)
	if err != nil {
		return nil, nil, err
	}
	var nc *nats.Conn
	if err := srv.waitFor(30*time.Second, func() (err error) { nc, err = nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", port)); return err }); err != nil {
		srv.stop()
		return nil, nil, fmt.Errorf("nats: %w", err)
	}
	stop := func() { nc.Close(); srv.stop() }
	js, err := jetstream.New(nc)
	if err == nil {
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "AUDIO", Subjects: []string{"audio.>"}, Storage: jetstream.FileStorage, Replicas: 1})
	}
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("nats: stream: %w", err)
	}
	var mu sync.Mutex
	subjects := map[int]string{}
	subject := func(call int) string {
		mu.Lock()
		defer mu.Unlock()
		s, ok := subjects[call]
		if !ok {
			s = fmt.Sprintf("audio.call%d", call)
			subjects[call] = s
		}
		return s
	}
	sink := func(ctx context.Context, call, seq int, payload []byte) error {
		_, err := js.Publish(ctx, subject(call), payload, jetstream.WithMsgID(fmt.Sprintf("%d/%d", call, seq)))
		return err
	}
	return sink, stop, nil
}

// NATSVersion asks a nats-server binary for its version.
func NATSVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return NATSServerVersion
	}
	return strings.TrimSpace(string(out))
}
