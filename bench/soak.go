package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/callscribe/callscribe/proto"
	"github.com/quic-go/quic-go"
)

// ProcMemory is a process's resident memory as /proc/PID/status gives it,
// in bytes: RSS in all, and its anonymous part (the heap and stacks; the
// rest is file pages, Badger's memory-mapped files among them).
type ProcMemory struct {
	RSS, Anon int64
}

// ReadProcMemory reads pid's VmRSS and RssAnon.
func ReadProcMemory(pid int) (ProcMemory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcMemory{}, err
	}
	defer f.Close()
	var m ProcMemory
	found := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "RssAnon") {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) != 2 || fs[1] != "kB" {
			return m, fmt.Errorf("bench: /proc/%d/status: %s: %q", pid, k, v)
		}
		n, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			return m, err
		}
		if k == "VmRSS" {
			m.RSS = n << 10
		} else {
			m.Anon = n << 10
		}
		found++
	}
	if found != 2 {
		return m, fmt.Errorf("bench: /proc/%d/status has no VmRSS or RssAnon", pid)
	}
	return m, sc.Err()
}

// AbandonConfig configures AbandonCalls.
type AbandonConfig struct {
	// QUIC is the coordinator's QUIC address.
	QUIC    string
	RootCAs *x509.CertPool
	Token   string
	// Prefix makes call ids unique.
	Prefix string
	// Calls is how many calls, Frames how many 100 ms L16 frames each
	// sends (each acked) before its console vanishes.
	Calls, Frames int
}

// AbandonCalls opens cfg.Calls calls at once from one QUIC connection, each
// sending cfg.Frames frames and waiting for their acks, then vanishing:
// the stream is reset and the connection closed, with no end. The
// coordinator ends such a call after its abandon timeout and finalises it
// with the audio it received.
func AbandonCalls(ctx context.Context, cfg AbandonConfig) error {
	conn, err := quic.DialAddr(ctx, cfg.QUIC, &tls.Config{RootCAs: cfg.RootCAs, ServerName: "localhost", NextProtos: []string{proto.ALPNConsole}},
		&quic.Config{MaxIncomingStreams: int64(cfg.Calls) + 8})
	if err != nil {
		return fmt.Errorf("bench: abandon: %w", err)
	}
	defer conn.CloseWithError(0, "console gone")
	errs := make([]error, cfg.Calls)
	var wg sync.WaitGroup
	for i := range cfg.Calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = abandonOne(ctx, conn, cfg, proto.CallID(fmt.Sprintf("%s-%d", cfg.Prefix, i)))
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func abandonOne(ctx context.Context, conn *quic.Conn, cfg AbandonConfig, id proto.CallID) error {
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	defer func() { st.CancelWrite(0); st.CancelRead(0) }() // vanish: no end
	_ = st.SetReadDeadline(time.Now().Add(30 * time.Second))
	r, w := proto.NewReader(st), proto.NewWriter(st)
	h := proto.Hello{Version: proto.Version, Token: cfg.Token, CallID: id, Channels: []string{"caller"}, Codec: proto.CodecL16}
	if err := w.WriteJSON(proto.THello, h); err != nil {
		return err
	}
	var wel proto.Welcome
	if err := r.ReadJSON(proto.TWelcome, &wel); err != nil {
		return fmt.Errorf("call %s: hello: %w", id, err)
	}
	payload := make([]byte, 3200)
	for seq := range uint32(cfg.Frames) {
		if _, err := w.WriteRaw(proto.AppendAudio(nil, proto.Audio{Seq: seq, Capture: time.Now().UnixMicro(), Payload: payload})); err != nil {
			return err
		}
	}
	for acked := uint32(0); acked < uint32(cfg.Frames); {
		m, err := r.Read()
		if err != nil {
			return fmt.Errorf("call %s: %d of %d frames acked: %w", id, acked, cfg.Frames, err)
		}
		switch m.Type {
		case proto.TAck:
			a, err := proto.ParseAck(m.Body)
			if err != nil {
				return err
			}
			acked = max(acked, a.NextSeq)
		case proto.TError:
			return fmt.Errorf("call %s: %s", id, m.Body)
		}
	}
	return nil
}
