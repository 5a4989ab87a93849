package whip

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callscribe/callscribe/ingest"
	"github.com/callscribe/callscribe/internal/auth"
	"github.com/callscribe/callscribe/proto"
	"github.com/pion/webrtc/v4"
)

// session is one WebRTC console session on one call.
type session struct {
	srv    *Server
	id     string
	call   proto.CallID
	codec  proto.Codec
	pc     *webrtc.PeerConnection
	sess   ingest.Session
	log    *slog.Logger
	opened time.Time
	chans  []*channel
	remote netip.Addr // where the offer came from
	// principal is the console that opened the session: only it may
	// change or end it. Set before the session is published.
	principal auth.Principal

	pending     bool         // counted as pending by the server (guarded by srv.mu)
	connectedAt atomic.Int64 // unix ns when ICE and DTLS were first up; 0 until then
	lastRTP     atomic.Int64 // unix ns of the last RTP audio packet

	mu           sync.Mutex
	connectTimer *time.Timer
	seen         map[string]bool // remote candidates signalled (keys), allowed or not
	dropped      int             // of which refused
	trickleLog   bool            // a trickled candidate was refused and logged
	ice          int             // ICE generation (restarts), part of the ETag
	dc           *webrtc.DataChannel
	dcOpen       bool
	backlog      [][]byte // events waiting for the data channel to open
	ending       bool
	ended        bool
	closed       bool
	done         chan struct{}
}

// channel is one audio track of a session.
type channel struct {
	idx  uint8
	mid  string
	base uint32 // the call channel's next frame number when the session opened

	mu       sync.Mutex // serialises appends (the reader, and the end)
	seq      *sequencer
	appended uint32 // frames appended by this session
	lastPkt  time.Time
	badPT    uint64
	tracked  bool

	failMu sync.Mutex
	failed error // the store refused a frame: the session stops
}

// setFailed records the first frame the sink refused (from the sink's
// completion callback as well as the reader).
func (ch *channel) setFailed(err error) bool {
	ch.failMu.Lock()
	defer ch.failMu.Unlock()
	if ch.failed != nil {
		return false
	}
	ch.failed = err
	return true
}

func (ch *channel) err() error {
	ch.failMu.Lock()
	defer ch.failMu.Unlock()
	return ch.failed
}

func (x *session) onTrack(t *webrtc.TrackRemote, r *webrtc.RTPReceiver) {
	var ch *channel
	for _, tr := range x.pc.GetTransceivers() {
		if tr.Receiver() == r {
			for _, c := range x.chans {
				if c.mid == tr.Mid() {
					ch = c
				}
			}
		}
	}
	if ch == nil {
		x.log.Warn("whip: a track on an unexpected section: ignored", "track", t.ID())
		return
	}
	if !strings.EqualFold(t.Codec().MimeType, codecCapability(x.codec).MimeType) {
		x.log.Warn("whip: track with an unexpected codec", "mime", t.Codec().MimeType)
		return
	}
	ch.mu.Lock()
	dup := ch.tracked
	ch.tracked = true
	ch.mu.Unlock()
	if dup {
		x.log.Warn("whip: a second track on one section: ignored", "mid", ch.mid)
		return
	}
	x.log.Debug("whip track", "channel", ch.idx, "mid", ch.mid, "ssrc", t.SSRC(), "codec", t.Codec().MimeType)
	x.srv.group.Go(func() { x.read(t, ch) })
}

// read is a track's loop: RTP → sequencer → durable frames.
func (x *session) read(t *webrtc.TrackRemote, ch *channel) {
	pt := t.PayloadType()
	for {
		_ = t.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		pkt, _, err := t.ReadRTP()
		now := time.Now()
		var ne net.Error
		switch {
		case err == nil:
		case errors.As(err, &ne) && ne.Timeout():
			ch.mu.Lock()
			x.appendLocked(ch, ch.seq.expire(now))
			ch.mu.Unlock()
			continue
		default:
			x.log.Debug("whip track ended", "channel", ch.idx, "err", err)
			return
		}
		if pkt.PayloadType != uint8(pt) {
			ch.mu.Lock()
			if ch.badPT++; ch.badPT == 1 {
				x.log.Warn("whip: RTP payload type not negotiated: packets ignored", "channel", ch.idx, "payload_type", pkt.PayloadType)
			}
			ch.mu.Unlock()
			continue
		}
		if len(pkt.Payload) == 0 || len(pkt.Payload) > proto.MaxAudioPayload {
			continue // padding-only packets carry no audio
		}
		payload := append([]byte(nil), pkt.Payload...)
		ch.mu.Lock()
		if x.isEnded() {
			ch.mu.Unlock()
			continue // the call has ended: nothing more is stored
		}
		ch.lastPkt = now
		x.lastRTP.Store(now.UnixNano())
		x.appendLocked(ch, ch.seq.push(pkt.SequenceNumber, payload, now))
		stop := ch.err() != nil
		ch.mu.Unlock()
		if stop {
			x.close("a frame could not be stored")
			return
		}
	}
}

func (x *session) isClosed() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.closed
}

// connectExpired closes the session if it never connected.
func (x *session) connectExpired() {
	if x.connectedAt.Load() == 0 {
		x.close(fmt.Sprintf("never connected: ICE and DTLS not up within %s", x.srv.cfg.ConnectTimeout))
	}
}

// idle is how long a connected session's tracks have brought no RTP audio.
func (x *session) idle(now time.Time) time.Duration {
	c := x.connectedAt.Load()
	if c == 0 {
		return 0
	}
	return now.Sub(time.Unix(0, max(c, x.lastRTP.Load())))
}

func (x *session) isEnded() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.ended
}

// appendLocked hands frames to the sink in order; nil payloads are loss
// markers. A sink that can have many frames on their way to disk
// (ingest.Submitter) gets them without waiting, so a slow disk batches
// more per commit instead of holding the track back; a refusal, reported
// later, stops the session.
func (x *session) appendLocked(ch *channel, frames [][]byte) {
	sub, pipelined := x.sess.(ingest.Submitter)
	for _, p := range frames {
		if ch.err() != nil {
			return
		}
		a := proto.Audio{Channel: ch.idx, Seq: ch.base + ch.appended, Capture: time.Now().UnixMicro(), Payload: p}
		refused := func(err error) {
			if ch.setFailed(err) {
				x.log.Warn("whip: frame refused", "channel", ch.idx, "seq", a.Seq, "err", err)
				x.send(ingest.Event{Error: ingest.AsProtoError(err)})
				x.srv.group.Go(func() { x.close("a frame could not be stored") })
			}
		}
		if pipelined {
			sub.Submit(a, func(_ proto.Ack, err error) {
				if err != nil {
					refused(err)
				}
			})
		} else if _, err := x.sess.Append(context.Background(), a); err != nil {
			refused(err)
			return
		}
		ch.appended++
	}
}

// end stores what is in flight and ends the call. packets, when given, is
// what the console says it sent per track: end waits (boundedly) for them.
func (x *session) end(ctx context.Context, packets []uint64) error {
	x.mu.Lock()
	if x.ended || x.ending {
		x.mu.Unlock()
		return nil
	}
	x.ending = true
	x.mu.Unlock()
	defer func() {
		x.mu.Lock()
		x.ending = false
		x.mu.Unlock()
	}()
	deadline := time.Now().Add(3 * time.Second)
	quiet := x.srv.cfg.EndQuiet
	for time.Now().Before(deadline) && ctx.Err() == nil {
		ready := true
		for i, ch := range x.chans {
			ch.mu.Lock()
			switch {
			case i < len(packets):
				ready = ready && ch.seq.span() >= packets[i]
			default:
				ready = ready && time.Since(ch.lastPkt) >= quiet
			}
			ch.mu.Unlock()
		}
		if ready {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	x.mu.Lock()
	x.ended = true
	x.mu.Unlock()
	e := proto.End{}
	for _, ch := range x.chans {
		ch.mu.Lock()
		x.appendLocked(ch, ch.seq.flush())
		if err := ch.err(); err != nil {
			ch.mu.Unlock()
			return err
		}
		e.Frames = append(e.Frames, ch.base+ch.appended)
		x.log.Info("whip channel ended", "channel", ch.idx, "frames", ch.appended, "concealed", ch.seq.lost, "late", ch.seq.late, "duplicates", ch.seq.dup, "resyncs", ch.seq.resyncs)
		ch.mu.Unlock()
	}
	if err := x.sess.End(ctx, e); err != nil {
		x.mu.Lock()
		x.ended = false
		x.mu.Unlock()
		return err
	}
	return nil
}

// dcMessage is what a console may send on the data channel.
type dcMessage struct {
	Type string `json:"type"`
	// Packets is, per track, the RTP packets sent (for "end").
	Packets []uint64 `json:"packets,omitempty"`
}

func (x *session) onDataChannel(dc *webrtc.DataChannel) {
	dc.OnOpen(func() {
		x.mu.Lock()
		x.dc, x.dcOpen = dc, true
		backlog := x.backlog
		x.backlog = nil
		x.mu.Unlock()
		for _, b := range backlog {
			_ = dc.SendText(string(b))
		}
	})
	dc.OnClose(func() {
		x.mu.Lock()
		if x.dc == dc {
			x.dcOpen = false
		}
		x.mu.Unlock()
	})
	dc.OnMessage(func(m webrtc.DataChannelMessage) {
		var msg dcMessage
		if err := json.Unmarshal(m.Data, &msg); err != nil {
			x.log.Warn("whip: bad data channel message", "err", err)
			x.send(ingest.Event{Error: &proto.Error{Code: proto.CodeBadRequest, Message: "data channel messages are JSON objects: " + err.Error()}})
			return
		}
		switch msg.Type {
		case "end":
			x.srv.group.Go(func() {
				if err := x.end(context.Background(), msg.Packets); err != nil {
					x.send(ingest.Event{Error: ingest.AsProtoError(err)})
				}
			})
		default:
			x.send(ingest.Event{Error: &proto.Error{Code: proto.CodeBadRequest, Message: fmt.Sprintf("unknown data channel message %q", msg.Type)}})
		}
	})
}

// ping sends a keep-alive if the data channel is open.
func (x *session) ping() {
	x.mu.Lock()
	dc, open := x.dc, x.dcOpen
	x.mu.Unlock()
	if open {
		_ = dc.SendText(pingMsg)
	}
}

// send queues or sends one event on the data channel.
func (x *session) send(ev ingest.Event) {
	_, b := ingest.EventJSON(ev)
	if b == nil {
		return
	}
	x.mu.Lock()
	dc, open := x.dc, x.dcOpen
	if !open {
		if len(x.backlog) < 10000 {
			x.backlog = append(x.backlog, b)
		}
		x.mu.Unlock()
		return
	}
	x.mu.Unlock()
	if err := dc.SendText(string(b)); err != nil {
		x.log.Debug("whip: data channel send failed", "err", err)
	}
}

// forward sends the call's events to the console until the coordinator
// closes the session (finalised, or replaced by a newer connection).
// A keep-alive every second lets a console notice a dead coordinator in
// seconds, well before ICE gives up.
//
// It also closes a session whose tracks have been silent for IdleTimeout.
func (x *session) forward() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	idleTimeout := x.srv.cfg.IdleTimeout
	check := time.NewTicker(min(time.Second, idleTimeout/4))
	defer check.Stop()
	fatal := false // the last event ended the session (revoked, transferred)
events:
	for {
		select {
		case ev, ok := <-x.sess.Events():
			if !ok {
				break events
			}
			fatal = ev.Error != nil && ev.Error.Fatal
			x.send(ev)
		case <-tick.C:
			x.ping()
		case now := <-check.C:
			if x.idle(now) >= idleTimeout && !x.isEnded() {
				x.close(fmt.Sprintf("no audio for %s", idleTimeout))
				return
			}
		case <-x.done:
			return
		}
	}
	// Let the data channel deliver the last events, then hang up (at once
	// after a fatal error: a revoked console is cut off within a second).
	linger := time.Second
	if fatal {
		linger = 100 * time.Millisecond
	}
	select {
	case <-x.done:
	case <-time.After(linger):
		x.close("call session closed by the coordinator")
	}
}

func (x *session) onState(st webrtc.PeerConnectionState) {
	x.log.Debug("whip connection state", "state", st.String())
	switch st {
	case webrtc.PeerConnectionStateConnected:
		if x.connectedAt.CompareAndSwap(0, time.Now().UnixNano()) {
			x.srv.connected(x)
			x.log.Info("whip session connected", "after", time.Since(x.opened).Round(time.Millisecond))
		}
	case webrtc.PeerConnectionStateFailed:
		x.close("connection failed")
	case webrtc.PeerConnectionStateClosed:
		x.close("connection closed")
	}
}

// close tears the WebRTC session down; the call stays open for the
// console to reconnect (or for the abandon timer).
func (x *session) close(why string) {
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return
	}
	x.closed = true
	close(x.done)
	if x.connectTimer != nil {
		x.connectTimer.Stop()
	}
	candidates, dropped := len(x.seen), x.dropped
	x.mu.Unlock()
	x.srv.removed(x)
	x.sess.Close()
	// Not inline: close may run in a pion callback. Refused only after
	// Close's wait began, when every peer connection is closed already.
	x.srv.group.Go(func() { _ = x.pc.Close() })
	x.log.Info("whip session closed", "why", why, "lasted", time.Since(x.opened).Round(time.Millisecond),
		"connected", x.connectedAt.Load() != 0, "remote", x.remote, "candidates", candidates, "candidates_dropped", dropped)
}
