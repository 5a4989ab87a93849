// callscribe browser console: sends a call's audio over WHIP and shows its
// transcript from the data channel. It reconnects with the same call id
// after a network drop or a coordinator restart; the coordinator resends
// the finals the page has not got.
'use strict';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const ui = {
  token: $('token'), call: $('call'), codec: $('codec'), file: $('file'),
  start: $('start'), end: $('end'), state: $('state'), log: $('log'),
};

// The token is typed in (or kept for this tab only): never taken from the
// URL, which ends up in histories and server logs.
ui.token.value = sessionStorage.getItem('callscribe.token') || '';
if (params.has('token')) {
  history.replaceState(null, '', location.pathname + location.search.replace(/([?&])token=[^&]*&?/, '$1'));
}
ui.call.value = params.get('call') || 'call-' + new Date().toISOString().replace(/[^0-9]/g, '').slice(0, 14);
if (params.get('codec')) ui.codec.value = params.get('codec');
if (params.get('source')) document.querySelector(`input[name=source][value=${params.get('source')}]`).checked = true;

function log(msg) {
  const line = `${new Date().toLocaleTimeString()} ${msg}\n`;
  ui.log.textContent = line + ui.log.textContent;
  console.log('callscribe:', msg);
}

function setState(s) {
  ui.state.textContent = s;
  ui.state.className = s;
  document.body.dataset.state = s;
}

// Transcript: finals keyed by channel and index, so a resend after a
// reconnect never shows twice.
const finals = [new Map(), new Map()];

function fmtTime(ms) {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}.${String(ms % 1000).padStart(3, '0')}`;
}

function onEvent(ev) {
  if (ev.type === 'transcript') {
    const box = $('ch' + ev.channel);
    if (!box) return;
    box.querySelector('h2').textContent = ev.label || box.querySelector('h2').textContent;
    if (ev.kind === 'partial') {
      box.querySelector('.partial').textContent = ev.text || '';
    } else if (ev.kind === 'final') {
      if (finals[ev.channel].has(ev.index)) return;
      finals[ev.channel].set(ev.index, ev);
      const div = document.createElement('div');
      div.className = 'final';
      div.dataset.index = ev.index;
      div.innerHTML = '<span class="t"></span><span class="x"></span>';
      div.querySelector('.t').textContent = `${fmtTime(ev.start_ms)}–${fmtTime(ev.end_ms)}`;
      div.querySelector('.x').textContent = ev.text;
      // Keep finals ordered by index even when resent out of order.
      const list = box.querySelector('.finals');
      const after = [...list.children].find((c) => Number(c.dataset.index) > ev.index);
      list.insertBefore(div, after || null);
      box.querySelector('.partial').textContent = '';
    } else if (ev.kind === 'resumed') {
      log(`channel ${ev.label}: moved to another worker, resumed from stored audio`);
    }
  } else if (ev.type === 'finalised') {
    log(`call finalised (${ev.finals.join(' + ')} finals)`);
    call.finalised = true;
    document.body.dataset.finalised = 'true';
    if (call.onFinalised) call.onFinalised();
  } else if (ev.type === 'error') {
    log(`error from the coordinator: ${ev.code}: ${ev.message}`);
  }
}

// call is the state of the current call.
const call = { id: '', tracks: [], pc: null, dc: null, session: null, ending: false, finalised: false, stopped: true, attempt: 0 };

async function getTracks(source) {
  const constraints = { audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 } };
  if (source === 'mic') {
    const s = await navigator.mediaDevices.getUserMedia(constraints);
    return s.getAudioTracks().slice(0, 1);
  }
  const f = ui.file.files[0];
  if (!f) throw new Error('choose an audio file first');
  const ctx = new AudioContext({ sampleRate: 48000 });
  const buf = await ctx.decodeAudioData(await f.arrayBuffer());
  const src = ctx.createBufferSource();
  src.buffer = buf;
  const tracks = [];
  // A stereo file is a two-channel call: left the caller, right the call-taker.
  const n = Math.min(buf.numberOfChannels, 2);
  const split = ctx.createChannelSplitter(buf.numberOfChannels);
  src.connect(split);
  for (let i = 0; i < n; i++) {
    const dst = ctx.createMediaStreamDestination();
    dst.channelCount = 1;
    split.connect(dst, i);
    tracks.push(dst.stream.getAudioTracks()[0]);
  }
  src.onended = () => log('audio file played to its end');
  src.start(ctx.currentTime + 0.5);
  call.audioCtx = ctx;
  return tracks;
}

function waitGathering(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, 2000);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') { clearTimeout(t); resolve(); }
    });
  });
}

function headers(extra) {
  return Object.assign({ Authorization: 'Bearer ' + ui.token.value }, extra || {});
}

// connect opens (or reopens) the WebRTC session for the call.
async function connect() {
  setState(call.attempt ? 'reconnecting' : 'connecting');
  const pc = new RTCPeerConnection({ iceServers: [] });
  call.pc = pc;
  for (const t of call.tracks) pc.addTransceiver(t, { direction: 'sendonly' });
  const dc = pc.createDataChannel('callscribe');
  call.dc = dc;
  call.lastMsg = Date.now();
  dc.onmessage = (m) => {
    call.lastMsg = Date.now();
    try { onEvent(JSON.parse(m.data)); } catch (e) { log('bad event: ' + e); }
  };
  dc.onopen = () => { if (call.ending) sendEnd(); };
  pc.onconnectionstatechange = () => {
    if (pc !== call.pc) return;
    const s = pc.connectionState;
    if (s === 'connected') { call.attempt = 0; setState('connected'); }
    if (s === 'failed' || s === 'disconnected' || s === 'closed') lost(pc, s);
  };
  dc.onclose = () => { if (pc === call.pc) lost(pc, 'data channel closed'); };
  await pc.setLocalDescription(await pc.createOffer());
  await waitGathering(pc);
  const h = headers({
    'Content-Type': 'application/sdp',
    'X-Callscribe-Codec': ui.codec.value,
    'X-Callscribe-Console': 'browser',
    'X-Callscribe-Next-Final': finals.slice(0, call.tracks.length).map((m) => m.size).join(','),
  });
  if (call.tracks.length === 1) h['X-Callscribe-Channels'] = 'caller';
  const res = await fetch('/v1/whip/' + encodeURIComponent(call.id), { method: 'POST', headers: h, body: pc.localDescription.sdp });
  const body = await res.text();
  if (res.status !== 201) {
    pc.close();
    const err = new Error(`${res.status}: ${body.trim()}`);
    err.status = res.status;
    throw err;
  }
  call.session = res.headers.get('Location');
  if (res.headers.get('X-Callscribe-Resumed') === 'true') log('call resumed');
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
  log(`WHIP session ${call.session} (${ui.codec.value})`);
}

// lost reconnects after a drop, with backoff, keeping the call id.
function lost(pc, why) {
  if (pc !== call.pc || call.stopped) return;
  if (pc.connectionState === 'disconnected') {
    // ICE may recover by itself; give it a moment before starting over.
    setTimeout(() => { if (pc === call.pc && pc.connectionState === 'disconnected') lost(pc, 'still disconnected'); }, 1500);
    if (why === 'disconnected') return;
  }
  call.pc = null;
  try { pc.close(); } catch (e) { /* already closed */ }
  if (call.finalised) { stopped(); return; }
  log(`connection lost (${why}): reconnecting`);
  reconnect();
}

async function reconnect() {
  while (!call.stopped && !call.finalised) {
    const delay = Math.min(250 * 2 ** call.attempt, 4000);
    call.attempt++;
    setState('reconnecting');
    await new Promise((r) => setTimeout(r, delay));
    try {
      await connect();
      return;
    } catch (e) {
      log(`reconnect failed: ${e.message}`);
      if (e.status && e.status < 500 && e.status !== 429) { setState('failed'); return; }
    }
  }
}

async function sendEnd() {
  const pc = call.pc;
  const packets = [];
  if (pc) {
    const stats = await pc.getStats();
    const byMid = {};
    stats.forEach((s) => { if (s.type === 'outbound-rtp' && s.kind === 'audio') byMid[s.mid] = s.packetsSent; });
    pc.getTransceivers().forEach((t) => packets.push(byMid[t.mid] || 0));
  }
  if (call.dc && call.dc.readyState === 'open') call.dc.send(JSON.stringify({ type: 'end', packets }));
}

async function start() {
  sessionStorage.setItem('callscribe.token', ui.token.value);
  finals[0].clear(); finals[1].clear();
  document.querySelectorAll('.finals, .partial').forEach((e) => { e.textContent = ''; });
  delete document.body.dataset.finalised;
  Object.assign(call, { id: ui.call.value.trim(), ending: false, finalised: false, stopped: false, attempt: 0 });
  ui.start.disabled = true;
  try {
    const source = document.querySelector('input[name=source]:checked').value;
    call.tracks = await getTracks(source);
    $('ch1').style.display = call.tracks.length > 1 ? '' : 'none';
    await connect();
    ui.end.disabled = false;
  } catch (e) {
    log(`cannot start: ${e.message}`);
    setState('failed');
    call.stopped = true;
    ui.start.disabled = false;
  }
}

// end stops the audio, tells the coordinator how much was sent, waits for
// the last finals, then deletes the session.
async function end() {
  ui.end.disabled = true;
  call.ending = true;
  await sendEnd();
  call.tracks.forEach((t) => t.stop());
  setState('finishing');
  await new Promise((resolve) => {
    if (call.finalised) return resolve();
    call.onFinalised = resolve;
    setTimeout(resolve, 30000);
  });
  if (call.session) {
    await fetch(call.session, { method: 'DELETE', headers: headers() }).catch(() => {});
  }
  stopped();
}

function stopped() {
  call.stopped = true;
  if (call.pc) { call.pc.close(); call.pc = null; }
  if (call.audioCtx) call.audioCtx.close();
  setState(call.finalised ? 'finalised' : 'ended');
  ui.start.disabled = false;
  ui.end.disabled = true;
}

// The coordinator sends a keep-alive every second: three seconds of silence
// on an open data channel means it is gone (ICE would take much longer).
setInterval(() => {
  const pc = call.pc;
  if (pc && !call.stopped && call.dc && call.dc.readyState === 'open' && Date.now() - call.lastMsg > 3000) {
    lost(pc, 'no keep-alive from the coordinator');
  }
}, 500);

ui.start.onclick = start;
ui.end.onclick = end;
window.callscribe = { start, end, call };
if (params.get('autostart') === '1') start();
