package coordinator

import (
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/callscribe/callscribe/coordinator/calls"
	"github.com/callscribe/callscribe/coordinator/store"
	"github.com/callscribe/callscribe/internal/integrity"
)

// digestSnapshot returns a call's record and, per channel, the frame digest
// of what is durable now (ok false where none is known: a call whose audio
// retention deleted before digests were kept).
func (c *Coordinator) digestSnapshot(rec *store.Call) (store.Call, []integrity.Digest, []bool, error) {
	ds := make([]integrity.Digest, len(rec.Channels))
	known := make([]bool, len(rec.Channels))
	if cp, live, ok := c.calls.Digests(rec.ID); ok {
		copy(ds, live)
		for i := range known {
			known[i] = i < len(live)
		}
		rec = &cp
	}
	for i := range ds {
		if i < len(rec.Integrity) { // the call ended: its record holds them
			sum, err := hex.DecodeString(rec.Integrity[i].SHA256)
			if err != nil || len(sum) != 32 {
				return *rec, nil, nil, fmt.Errorf("call %s channel %d: recorded digest %q is not a SHA-256", rec.ID, i, rec.Integrity[i].SHA256)
			}
			ds[i].Next, known[i] = rec.Integrity[i].Frames, true
			copy(ds[i].Sum[:], sum)
			continue
		}
		if known[i] {
			continue
		}
		d, ok, err := c.store.Digest(rec.ID, i)
		if err != nil {
			return *rec, nil, nil, err
		}
		if !ok && rec.AudioDeleted == nil {
			// Stored before digests were kept: computed once.
			n, err := c.store.NextSeq(rec.ID, i)
			if err != nil {
				return *rec, nil, nil, err
			}
			if d, err = c.calls.LoadDigest(rec, i, n); err != nil {
				return *rec, nil, nil, err
			}
			ok = true
		}
		ds[i], known[i] = d, ok
	}
	return *rec, ds, known, nil
}

// transcriptOf returns a call's finals as the transcript API serves them.
func (c *Coordinator) transcriptOf(rec *store.Call) ([]Utterance, error) {
	var out []Utterance
	for i, l := range rec.Channels {
		fs, err := c.store.Finals(rec.ID, i, 0)
		if err != nil {
			return nil, err
		}
		for _, f := range fs {
			out = append(out, Utterance{Channel: i, Label: l, Index: f.Index, StartMS: calls.SamplesToMS(f.Start), EndMS: calls.SamplesToMS(f.End), Text: f.Text, Heard: f.Heard})
		}
	}
	return out, nil
}

func transcriptHash(us []Utterance) store.TranscriptIntegrity {
	iu := make([]integrity.Utterance, len(us))
	for i, u := range us {
		iu[i] = integrity.Utterance{Channel: u.Channel, Index: u.Index, StartMS: u.StartMS, EndMS: u.EndMS, Text: u.Text, Heard: u.Heard}
	}
	sum := integrity.TranscriptSum(iu)
	return store.TranscriptIntegrity{Finals: len(us), SHA256: hex.EncodeToString(sum[:])}
}

// sealTranscript records in rec, the record that finalises the call, the
// hash of its finals (all stored by now): statements about the finalised
// call carry it, so a final altered later no longer matches.
func (c *Coordinator) sealTranscript(rec *store.Call) {
	us, err := c.transcriptOf(rec)
	if err != nil {
		c.log.Error("integrity: cannot read the finals to seal the transcript: statements will cover the finals as served", "call", rec.ID, "err", err)
		return
	}
	h := transcriptHash(us)
	rec.Transcript = &h
}

// signTranscript signs a statement of the call's audio digests and of its
// transcript: the hash sealed when the call was finalised, or else that of
// us, the finals served with it.
func (c *Coordinator) signTranscript(rec *store.Call, us []Utterance) (integrity.Signed, error) {
	r, ds, known, err := c.digestSnapshot(rec)
	if err != nil {
		return integrity.Signed{}, err
	}
	st := integrity.Statement{CallID: string(r.ID), Console: string(r.Console), Created: r.Created.UTC(), Ended: r.Ended, State: r.State, AudioDeleted: r.AudioDeleted}
	for i, l := range r.Channels {
		cd := integrity.ChannelDigest{Channel: i, Label: l}
		if known[i] {
			cd.Frames, cd.SHA256 = ds[i].Next, ds[i].Hex()
		}
		st.Channels = append(st.Channels, cd)
	}
	th := transcriptHash(us)
	if r.Transcript != nil { // sealed when the call was finalised
		th, st.Transcript.Sealed = *r.Transcript, true
	}
	st.Transcript.Finals, st.Transcript.SHA256 = th.Finals, th.SHA256
	return integrity.Sign(c.cfg.Signer, st)
}

// handleSigningKey serves the public key statements are signed with (PKIX
// PEM; its fingerprint in X-Callscribe-Key-Id).
func (c *Coordinator) handleSigningKey(w http.ResponseWriter, r *http.Request) {
	pub := c.signingPublic()
	b, err := integrity.MarshalPublicKey(pub)
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("X-Callscribe-Key-Id", integrity.KeyID(pub))
	_, _ = w.Write(b)
}

// auditFramesPerRead bounds the frames one store read serves to the audio
// endpoint (no read transaction lasts as long as a slow download).
const auditFramesPerRead = 1024

// handleAudio streams one channel's stored frames in order, each as
// integrity.AppendRecord's record: seq u32, capture i64, payload length
// u32 (big-endian), payload. A storage error after the first byte cuts the
// response (the client sees it incomplete, never short and whole).
func (c *Coordinator) handleAudio(w http.ResponseWriter, r *http.Request) {
	rec := c.lookup(w, r)
	if rec == nil {
		return
	}
	if rec.AudioDeleted != nil {
		writeJSON(w, http.StatusGone, map[string]any{"error": fmt.Sprintf("audio of call %s was deleted by retention at %s", rec.ID, rec.AudioDeleted.Format(time.RFC3339)),
			"audio_deleted": rec.AudioDeleted})
		return
	}
	ch, err := strconv.Atoi(r.URL.Query().Get("channel"))
	if err != nil || ch < 0 || ch >= len(rec.Channels) {
		httpError(w, http.StatusBadRequest, fmt.Sprintf("channel is required: 0 to %d", len(rec.Channels)-1))
		return
	}
	w.Header().Set("Content-Type", "application/vnd.callscribe.frames")
	w.Header().Set("X-Callscribe-Codec", string(rec.Codec))
	w.Header().Set("X-Callscribe-Channel-Label", rec.Channels[ch])
	w.Header().Set("Cache-Control", "no-store")
	var buf []byte
	wrote := false
	for from, more := uint32(0), true; more; {
		n := 0
		buf = buf[:0]
		err := c.store.Frames(rec.ID, ch, from, auditFramesPerRead, func(f store.Frame) error {
			buf = integrity.AppendRecord(buf, f.Seq, f.Capture, f.Payload)
			from, n = f.Seq+1, n+1
			return nil
		})
		if err != nil {
			c.log.Error("audio download: store read failed", "call", rec.ID, "channel", ch, "from", from, "err", err)
			if !wrote {
				httpError(w, http.StatusInternalServerError, err.Error())
				return
			}
			panic(http.ErrAbortHandler)
		}
		more = n == auditFramesPerRead
		if len(buf) == 0 {
			break
		}
		wrote = true
		if _, err := w.Write(buf); err != nil || r.Context().Err() != nil {
			return
		}
	}
	if !wrote {
		w.WriteHeader(http.StatusOK) // no frames stored
	}
}

func (c *Coordinator) signingPublic() ed25519.PublicKey {
	return c.cfg.Signer.Public().(ed25519.PublicKey)
}
