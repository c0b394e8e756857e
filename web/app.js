// Parley browser client: one RTCPeerConnection carrying the mic, the reply audio and the "events" data channel.
// No build step. State for tests and debugging lives in window.parley.
"use strict";

const $ = (id) => document.getElementById(id);
const parley = (window.parley = {
  events: [], state: "idle", remoteLevelMax: 0, remoteSpeechFrames: 0, turns: [], sessionId: null,
  // From WebRTC statistics: what was received and decoded, whether or not this machine can play sound.
  inboundAudioEnergy: 0, inboundPackets: 0,
});
let pc = null;
let channel = null;
let meterTimer = null;
let audioCtx = null; // created in the Call click: browsers (Firefox) keep contexts made later suspended
const items = new Map(); // item_id / response_id -> <li>

const STATES = {
  idle: ["idle", "Not connected"],
  connecting: ["idle", "Connecting…"],
  listening: ["listening", "Listening"],
  user: ["user", "You're speaking"],
  thinking: ["thinking", "Thinking…"],
  speaking: ["speaking", "Speaking"],
};

function setState(name) {
  parley.state = name;
  const [cls, text] = STATES[name];
  $("state").className = `state ${cls}`;
  $("state-text").textContent = text;
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function bubble(key, who, text, cls) {
  let li = items.get(key);
  if (!li) {
    li = document.createElement("li");
    li.className = cls;
    li.innerHTML = `<span class="who"></span><span class="text"></span>`;
    li.querySelector(".who").textContent = who;
    $("transcript").appendChild(li);
    items.set(key, li);
  }
  li.className = cls;
  li.querySelector(".text").textContent = text;
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function onEvent(ev) {
  parley.events.push(ev);
  switch (ev.type) {
    case "session.created":
      parley.sessionId = ev.session.id;
      setState("listening");
      $("apply").disabled = false;
      break;
    case "input_audio_buffer.speech_started":
      setState("user");
      break;
    case "input_audio_buffer.speech_stopped":
      if (parley.state === "user") setState("thinking");
      break;
    case "conversation.item.input_audio_transcription.delta":
      bubble(ev.item_id, "You", ev.transcript, "user partial");
      break;
    case "conversation.item.input_audio_transcription.completed":
      bubble(ev.item_id, "You", ev.transcript, "user");
      break;
    case "response.created":
      setState("thinking");
      break;
    case "response.audio_transcript.delta": {
      const li = items.get(ev.response_id);
      const text = (li ? li.querySelector(".text").textContent : "") + ev.delta;
      bubble(ev.response_id, "Parley", text, "assistant");
      setState("speaking");
      break;
    }
    case "conversation.item.truncate":
      for (const li of items.values()) if (li.classList.contains("assistant") && !li.dataset.done) {
        li.querySelector(".text").textContent = ev.transcript;
        li.classList.add("cut");
        li.dataset.done = "1";
      }
      break;
    case "response.done": {
      const li = items.get(ev.response.id);
      if (li) li.dataset.done = "1";
      addLatency(ev.response.metrics || {});
      if (parley.state !== "user") setState("listening");
      break;
    }
    case "error":
      showError(`${ev.error.type}: ${ev.error.message}`);
      break;
    case "warning":
      console.warn(ev.message);
      break;
  }
}

function addLatency(m) {
  parley.turns.push(m);
  const tr = document.createElement("tr");
  const ms = (x) => (x == null ? "—" : `${Math.round(x)} ms`);
  const cells = [parley.turns.length, ms(m.speech_end_to_first_audio_ms), m.speculative ? "yes" : "no",
    ms(m.saved_ms), `${m.drafts_started ?? 0} (${m.drafts_discarded ?? 0} discarded)`];
  for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
  $("latency").appendChild(tr);
}

function watchRemote(stream) {
  // An analyser on the reply audio: drives the meter, and lets a test check that audio really arrived.
  const analyser = audioCtx.createAnalyser();
  analyser.fftSize = 1024;
  audioCtx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  let tick = 0;
  meterTimer = setInterval(() => {
    if (++tick % 10 === 0 && pc) readStats(pc);
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    const rms = Math.sqrt(sum / buf.length);
    parley.remoteLevelMax = Math.max(parley.remoteLevelMax, rms);
    if (rms > 0.01) parley.remoteSpeechFrames += 1;
    $("level").style.width = `${Math.min(100, rms * 400)}%`;
  }, 20);
}

async function readStats(conn) {
  (await conn.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "audio") {
      parley.inboundAudioEnergy = r.totalAudioEnergy || 0;
      parley.inboundPackets = r.packetsReceived || 0;
    }
  });
}

function waitForIce(conn, timeoutMs) {
  // The server does not trickle candidates: send the offer once gathering is complete (or after a timeout).
  if (conn.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { conn.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (conn.iceGatheringState === "complete") done(); };
    conn.addEventListener("icegatheringstatechange", check);
    setTimeout(done, timeoutMs);
  });
}

function sessionSettings() {
  return {
    speculation: $("speculation").checked,
    end_of_turn_ms: Number($("eot").value),
    speed: Number($("speed").value),
  };
}

async function call() {
  showError("");
  $("call").disabled = true;
  setState("connecting");
  if (!audioCtx) audioCtx = new AudioContext();
  audioCtx.resume();
  try {
    const mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
    pc = new RTCPeerConnection({ iceServers: [] });
    for (const track of mic.getTracks()) pc.addTrack(track, mic);
    pc.ontrack = (e) => {
      $("remote").srcObject = e.streams[0] || new MediaStream([e.track]);
      watchRemote($("remote").srcObject);
    };
    pc.onconnectionstatechange = () => {
      if (["failed", "closed", "disconnected"].includes(pc.connectionState)) hangup(`connection ${pc.connectionState}`);
    };
    channel = pc.createDataChannel("events");
    channel.onmessage = (e) => onEvent(JSON.parse(e.data));
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIce(pc, 3000);
    const res = await fetch("/offer", {
      method: "POST",
      headers: offerHeaders(),
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", session: sessionSettings() }),
    });
    const answer = await res.json();
    if (!res.ok) throw new Error(answer.error ? `${answer.error.type}: ${answer.error.message}` : res.statusText);
    await pc.setRemoteDescription(answer);
    $("hangup").disabled = false;
  } catch (err) {
    showError(String(err.message || err));
    hangup();
  }
}

function hangup(reason) {
  if (reason) showError(reason === "connection closed" ? "" : `Call ended: ${reason}`);
  clearInterval(meterTimer);
  if (pc) {
    for (const s of pc.getSenders()) if (s.track) s.track.stop();
    pc.close();
  }
  pc = null;
  channel = null;
  $("call").disabled = false;
  $("hangup").disabled = true;
  $("apply").disabled = true;
  setState("idle");
}

$("call").addEventListener("click", call);
$("hangup").addEventListener("click", () => hangup());
$("apply").addEventListener("click", () => {
  if (channel && channel.readyState === "open") {
    channel.send(JSON.stringify({ type: "session.update", session: sessionSettings() }));
  }
});

// A server with an API key takes a client secret (ek_..., one call each) instead: whoever hosts the page mints one
// with POST /v1/realtime/client_secrets and opens the page as /#client_secret=ek_... (docs/SECURITY.md). The
// fragment never reaches a server log, and the API key never reaches the browser.
function offerHeaders() {
  const headers = { "Content-Type": "application/json" };
  const secret = new URLSearchParams(location.hash.slice(1)).get("client_secret");
  if (secret) {
    headers.Authorization = `Bearer ${secret}`;
    history.replaceState(null, "", location.pathname + location.search); // one call: drop the used secret
  }
  return headers;
}
