#!/usr/bin/env python3
"""A WHIP console on an independent WebRTC stack: GStreamer's webrtcbin.

Streams a WAV file in real time to callscribe's WHIP endpoint as one audio
track (Opus or PCMU, encoded by GStreamer), DELETEs the session at the end
of the file, waits for the call to be finalised and prints the stored
transcript. Used by internal/e2e's TestGStreamerClient.

usage: gst_whip.py BASE_URL TOKEN CALL_ID WAV opus|pcmu
"""
import json
import sys
import time
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

base, token, call, wav, codec = sys.argv[1:6]
Gst.init(None)

RTP = {
    "opus": "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000",
    "pcmu": "application/x-rtp,media=audio,encoding-name=PCMU,payload=0,clock-rate=8000",
}[codec]
ENC = {
    "opus": "audioresample ! audio/x-raw,rate=48000 ! opusenc ! rtpopuspay pt=111",
    "pcmu": "audioresample ! audio/x-raw,rate=8000,channels=1 ! mulawenc ! rtppcmupay pt=0 min-ptime=20000000 max-ptime=20000000",
}[codec] + " ! " + RTP
pipe = Gst.parse_launch(
    f"webrtcbin name=w bundle-policy=max-bundle "
    f"filesrc location={wav} ! wavparse ! audioconvert ! audio/x-raw,channels=1 ! identity name=pace sync=true ! {ENC} ! w."
)
w = pipe.get_by_name("w")
# The file's track only sends (set before the offer is made).
w.emit("get-transceiver", 0).set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
loop = GLib.MainLoop()
state = {"session": None, "error": None}
# libnice leaves loopback out unless told; keep a reference to the agent.
agent = w.get_property("ice-agent")
agent.emit("add-local-ip-address", "127.0.0.1")


def request(method, url, body=None, ctype=None):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if ctype:
        req.add_header("Content-Type", ctype)
    return urllib.request.urlopen(req, timeout=15)


def fail(msg):
    state["error"] = msg
    loop.quit()


def on_gathered():
    offer = w.get_property("local-description").sdp.as_text()
    try:
        res = request("POST", f"{base}/v1/whip/{call}", offer.encode(), "application/sdp")
    except urllib.error.HTTPError as e:
        return fail(f"POST: {e.code} {e.read().decode().strip()}")
    state["session"] = res.headers["Location"]
    _, sdp = GstSdp.SDPMessage.new_from_text(res.read().decode())
    answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
    w.emit("set-remote-description", answer, None)
    print(f"WHIP session {state['session']}", file=sys.stderr)


def on_gathering_state(el, _):
    if el.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not state.get("posted"):
        state["posted"] = True
        GLib.idle_add(on_gathered)


def on_offer(promise, _):
    # Keep the reply alive while its offer is used: PyGObject frees a
    # temporary structure, and the offer's SDP with it.
    reply = promise.get_reply()
    offer = reply.get_value("offer")
    w.emit("set-local-description", offer, None)


def create_offer():
    w.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer, None))
    return False


def on_negotiation_needed(el):
    if not state.get("offered"):
        state["offered"] = True
        GLib.idle_add(create_offer)


def on_message(bus, msg):
    if msg.type == Gst.MessageType.ERROR:
        err, dbg = msg.parse_error()
        fail(f"gstreamer: {err.message} ({dbg})")


def on_eos(pad, info):
    # webrtcbin posts no EOS on the bus: watch the end of the file pass.
    if info.get_event().type == Gst.EventType.EOS:
        print("end of file", file=sys.stderr)
        GLib.idle_add(loop.quit)
    return Gst.PadProbeReturn.OK


pipe.get_by_name("pace").get_static_pad("src").add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, on_eos)
w.connect("on-negotiation-needed", on_negotiation_needed)

w.connect("notify::ice-gathering-state", on_gathering_state)
bus = pipe.get_bus()
bus.add_signal_watch()
bus.connect("message", on_message)
pipe.set_state(Gst.State.PLAYING)
GLib.timeout_add_seconds(120, lambda: fail("timed out"))
loop.run()
if state["error"]:
    print(state["error"], file=sys.stderr)
    sys.exit(1)
time.sleep(0.5)  # the last packets in flight
request("DELETE", base + state["session"]).read()
pipe.set_state(Gst.State.NULL)

deadline = time.time() + 60
while time.time() < deadline:
    info = json.load(request("GET", f"{base}/v1/calls/{call}"))
    if info["state"] == "finalised":
        break
    time.sleep(0.2)
else:
    print(f"call not finalised: {info['state']}", file=sys.stderr)
    sys.exit(1)
print(json.dumps({"call": info, "transcript": json.load(request("GET", f"{base}/v1/calls/{call}/transcript"))}))
