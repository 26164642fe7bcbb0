// omniserve playground: one page over the server's own OpenAI API. Chat (text, an image, a recorded
// question; answers streamed, or spoken), a realtime voice conversation over WebRTC (/v1/realtime/calls) or,
// failing that, the WebSocket (/v1/realtime), and image and video generation when the server has a model for
// them. No build step: plain browser JavaScript.
"use strict";

const $ = (id) => document.getElementById(id);
const RATE = 24000; // the Realtime API's pcm16 rate; recordings are made at it too

// ---- the API key and requests ------------------------------------------------------------------------

const keyInput = $("key");
keyInput.value = localStorage.getItem("omniserve-key") || "";
keyInput.addEventListener("change", () => {
  localStorage.setItem("omniserve-key", keyInput.value);
  loadModels();
});

function headers(json = true) {
  const h = json ? { "Content-Type": "application/json" } : {};
  if (keyInput.value) h.Authorization = "Bearer " + keyInput.value;
  return h;
}

async function api(path, body) {
  // GET without a body; POST a form as it is, anything else as JSON
  const init = body === undefined ? { headers: headers(false) }
    : body instanceof FormData ? { method: "POST", headers: headers(false), body }
      : { method: "POST", headers: headers(), body: JSON.stringify(body) };
  const response = await fetch(path, init);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch { /* not the error envelope */ }
    throw new Error(message);
  }
  return response;
}

let models = [];
const modelOf = (type) => models.find((m) => m.type === type);

async function loadModels() {
  try {
    models = (await (await api("/v1/models")).json()).data;
    $("status").textContent = "";
  } catch (error) {
    models = [];
    $("status").textContent = error.message;
  }
  $("models").replaceChildren(...models.map((m) => {
    const item = document.createElement("li");
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = m.type;
    item.append(m.id, kind);
    return item;
  }));
  const image = modelOf("image");
  document.querySelector("[data-tab=images]").hidden = !image;
  document.querySelector("[data-tab=videos]").hidden = !(image && (image.output_modalities || []).includes("video"));
}

for (const tab of document.querySelectorAll("#tabs button")) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll("#tabs button")) {
      other.classList.toggle("active", other === tab);
      $(other.dataset.tab).hidden = other !== tab;
    }
  });
}

// ---- audio: the microphone, WAV files, and playback ------------------------------------------------------

function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function unbase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function wav(chunks, rate) {
  const samples = chunks.reduce((n, c) => n + c.length, 0);
  const bytes = new Uint8Array(44 + samples * 2);
  const view = new DataView(bytes.buffer);
  const text = (at, s) => [...s].forEach((c, i) => view.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + samples * 2, true); text(8, "WAVEfmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples * 2, true);
  let at = 44;
  for (const chunk of chunks) { bytes.set(new Uint8Array(chunk.buffer), at); at += chunk.length * 2; }
  return bytes;
}

class Mic {
  // Mono 16-bit PCM at 24 kHz, chunk by chunk (the browser resamples the microphone to the context's rate).
  async start(onChunk) {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
    this.context = new AudioContext({ sampleRate: RATE });
    const source = this.context.createMediaStreamSource(this.stream);
    this.node = this.context.createScriptProcessor(1024, 1, 1);
    this.node.onaudioprocess = (event) => {
      const input = event.inputBuffer.getChannelData(0);
      const pcm = new Int16Array(input.length);
      for (let i = 0; i < input.length; i++) pcm[i] = Math.max(-1, Math.min(1, input[i])) * 0x7fff;
      onChunk(pcm);
    };
    source.connect(this.node);
    this.node.connect(this.context.destination); // a processor only runs when connected; it outputs silence
  }

  stop() {
    this.node?.disconnect();
    this.stream?.getTracks().forEach((track) => track.stop());
    this.context?.close();
  }
}

class Player {
  // pcm16 at 24 kHz, played gaplessly as it arrives; `stop` silences what is queued (barge-in).
  constructor() {
    this.context = new AudioContext({ sampleRate: RATE });
    this.until = 0;
    this.sources = new Set();
    this.played = 0; // seconds of audio queued so far
  }

  play(bytes) {
    const pcm = new Int16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 1);
    if (!pcm.length) return;
    const buffer = this.context.createBuffer(1, pcm.length, RATE);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 0x8000;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    const at = Math.max(this.context.currentTime, this.until);
    source.start(at);
    this.until = at + buffer.duration;
    this.played += buffer.duration;
    this.sources.add(source);
    source.onended = () => this.sources.delete(source);
  }

  stop() {
    for (const source of this.sources) source.stop();
    this.sources.clear();
    this.until = 0;
  }

  close() {
    this.stop();
    this.context.close();
  }
}

// ---- chat --------------------------------------------------------------------------------------------

const history = [];
let attachedImage = null; // a data URL
let recorded = null; // base64 WAV
let recorder = null;

function line(log, role, text = "") {
  // One message in a log (the chat's or the voice mode's).
  const div = document.createElement("div");
  div.className = `message ${role}`;
  div.textContent = text;
  $(log).append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

const bubble = (role, text) => line("messages", role, text);

function showAttachments() {
  const parts = [];
  if (attachedImage) {
    const img = document.createElement("img");
    img.src = attachedImage;
    parts.push(img);
  }
  if (recorded) parts.push(document.createTextNode("recorded question attached"));
  $("attachments").replaceChildren(...parts);
}

$("image").addEventListener("change", () => {
  const file = $("image").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => { attachedImage = reader.result; showAttachments(); };
  reader.readAsDataURL(file);
});

$("record").addEventListener("click", async () => {
  if (recorder) {
    recorder.mic.stop();
    recorded = base64(wav(recorder.chunks, RATE));
    recorder = null;
    $("record").classList.remove("on");
    $("record").textContent = "Record";
    showAttachments();
    return;
  }
  recorder = { mic: new Mic(), chunks: [] };
  try {
    await recorder.mic.start((pcm) => recorder && recorder.chunks.push(pcm));
    $("record").classList.add("on");
    $("record").textContent = "Stop";
  } catch (error) {
    recorder = null;
    bubble("error", `microphone: ${error.message}`);
  }
});

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("chat-form").requestSubmit(); }
});

$("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text && !attachedImage && !recorded) return;
  const content = [];
  if (text) content.push({ type: "text", text });
  if (attachedImage) content.push({ type: "image_url", image_url: { url: attachedImage } });
  if (recorded) content.push({ type: "input_audio", input_audio: { data: recorded, format: "wav" } });
  const shown = bubble("user", text || (recorded ? "(spoken question)" : ""));
  if (attachedImage) { const img = document.createElement("img"); img.src = attachedImage; shown.append(img); }
  history.push({ role: "user", content });
  $("prompt").value = "";
  $("image").value = "";
  attachedImage = recorded = null;
  showAttachments();
  const answer = bubble("assistant", "…");
  $("send").disabled = true;
  try {
    const model = modelOf("chat")?.id;
    const said = $("speak").checked ? await spokenAnswer(model, answer) : await streamedAnswer(model, answer);
    history.push({ role: "assistant", content: said });
  } catch (error) {
    answer.className = "message error";
    answer.textContent = error.message;
    history.pop();
  } finally {
    $("send").disabled = false;
  }
});

const temperature = () => Number($("temperature").value);

async function streamedAnswer(model, answer) {
  const response = await api("/v1/chat/completions", {
    model, messages: history, stream: true, temperature: temperature(),
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let text = "", pending = "";
  answer.textContent = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += value;
    const lines = pending.split("\n");
    pending = lines.pop();
    for (const line of lines) {
      if (!line.startsWith("data: {")) continue;
      const chunk = JSON.parse(line.slice(6));
      text += chunk.choices?.[0]?.delta?.content || "";
      answer.textContent = text;
    }
  }
  answer.dataset.done = "true";
  return text;
}

async function spokenAnswer(model, answer) {
  const response = await api("/v1/chat/completions", {
    model, messages: history, modalities: ["text", "audio"], audio: { voice: "alloy", format: "wav" },
    temperature: temperature(),
  });
  const message = (await response.json()).choices[0].message;
  const text = message.content ?? message.audio?.transcript ?? "";
  answer.textContent = text;
  if (message.audio) {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.autoplay = true;
    audio.src = "data:audio/wav;base64," + message.audio.data;
    answer.append(audio);
  }
  answer.dataset.done = "true";
  return text;
}

// ---- voice: /v1/realtime/calls (WebRTC), or /v1/realtime (WebSocket) ---------------------------------

let voice = null;

const voiceLine = (role, text) => line("voice-log", role, text);
const VOICE_SESSION = { type: "realtime", output_modalities: ["audio"], max_output_tokens: 200 };

function realtimeQuery() {
  const model = modelOf("chat")?.id;
  return model ? `?model=${encodeURIComponent(model)}` : "";
}

class WebRtcLink {
  // The session as OpenAI's WebRTC clients open it: the microphone as a track, the answers played from the
  // server's track by an <audio> element, events on the "oai-events" data channel.
  constructor(session) {
    this.kind = "webrtc";
    this.session = session;
  }

  async open() {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
    this.alive();
    this.pc = new RTCPeerConnection();
    this.stream.getTracks().forEach((track) => this.pc.addTrack(track, this.stream));
    this.audio = new Audio();
    this.audio.autoplay = true;
    this.pc.ontrack = (event) => { this.audio.srcObject = event.streams[0] || new MediaStream([event.track]); };
    this.channel = this.pc.createDataChannel("oai-events");
    const opened = new Promise((resolve, reject) => {
      this.channel.onopen = resolve;
      setTimeout(() => reject(new Error("the events channel did not open in 10 s")), 10000);
    });
    opened.catch(() => {}); // awaited below, unless the call is refused first
    this.channel.onmessage = (message) => this.session.take(JSON.parse(message.data));
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await gathered(this.pc, 2000);
    this.alive();
    const form = new FormData();
    form.append("sdp", this.pc.localDescription.sdp);
    form.append("session", JSON.stringify(VOICE_SESSION));
    const answer = await api("/v1/realtime/calls" + realtimeQuery(), form);
    this.location = answer.headers.get("Location");
    await this.pc.setRemoteDescription({ type: "answer", sdp: await answer.text() });
    await opened;
    this.alive();
    this.channel.onclose = () => this.session.closed();
    this.pc.onconnectionstatechange = () => {
      if (["failed", "closed"].includes(this.pc.connectionState)) this.session.closed();
    };
  }

  alive() {
    // Stop was pressed while this was connecting: go no further (close() frees what was made)
    if (this.session.ended) throw new Error("stopped");
  }

  send(event) {
    if (this.channel?.readyState === "open") this.channel.send(JSON.stringify(event));
  }

  close() {
    if (this.location && this.channel?.readyState !== "open") {
      // answered, but never connected: the server would hold the call for a while
      fetch(this.location + "/hangup", { method: "POST", headers: headers(false) }).catch(() => {});
    }
    this.location = null;
    this.pc?.close();
    this.stream?.getTracks().forEach((track) => track.stop());
    if (this.audio) this.audio.srcObject = null;
  }
}

function gathered(pc, ms) {
  // The offer with the browser's candidates in it (the server takes no trickled ones), or what there is by `ms`.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
    setTimeout(resolve, ms);
  });
}

class WebSocketLink {
  // The session over the WebSocket: the microphone sent as input_audio_buffer.append, the answers'
  // response.output_audio.delta played here.
  constructor(session) {
    this.kind = "websocket";
    this.session = session;
  }

  open() {
    const protocols = ["realtime"];
    if (keyInput.value) protocols.push("openai-insecure-api-key." + keyInput.value);
    const url = location.origin.replace(/^http/, "ws") + "/v1/realtime" + realtimeQuery();
    this.ws = new WebSocket(url, protocols);
    this.mic = new Mic();
    this.player = new Player();
    this.ws.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.type === "response.output_audio.delta") {
        this.player.play(unbase64(event.delta));
        this.session.playing(this.player.played);
      }
      if (event.type === "input_audio_buffer.speech_started") this.player.stop(); // and the server cuts it
      this.session.take(event);
    };
    this.ws.onclose = () => this.session.closed();
    return new Promise((resolve) => {
      this.ws.onopen = async () => {
        this.send({ type: "session.update", session: VOICE_SESSION });
        try {
          await this.mic.start((pcm) => this.send({
            type: "input_audio_buffer.append", audio: base64(new Uint8Array(pcm.buffer)),
          }));
          if (this.session.ended) this.mic.stop(); // Stop was pressed while the microphone was asked for
        } catch (error) {
          voiceLine("error", `microphone: ${error.message}`);
          this.ws.close();
        }
        resolve();
      };
    });
  }

  send(event) {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(event));
  }

  close() {
    this.ws.close();
    this.mic.stop();
    this.player.close();
  }
}

class VoiceSession {
  // A spoken conversation: over WebRTC where the browser and the server can, else over the WebSocket.
  constructor() {
    this.lines = new Map(); // assistant item id -> its line
    this.heardSince = null; // over WebRTC: when the answer now playing began
    this.seconds = 0; // of answers played
    this.start();
  }

  async start() {
    if (window.RTCPeerConnection) {
      const link = new WebRtcLink(this);
      try {
        this.link = link;
        await link.open();
      } catch (error) {
        link.close();
        console.warn("WebRTC failed, using the WebSocket:", error);
      }
    }
    if (this.ended) { this.link?.close(); return; }
    if (this.link?.channel?.readyState !== "open") {
      this.link = new WebSocketLink(this);
      await this.link.open();
      if (this.ended) { this.link.close(); return; }
    }
    $("voice-log").dataset.transport = this.link.kind;
    $("voice-state").title = this.link.kind === "webrtc" ? "over WebRTC" : "over the WebSocket";
    this.state("listening");
  }

  state(text) {
    $("voice-state").textContent = text;
  }

  playing(seconds) {
    this.seconds = seconds;
    $("voice-log").dataset.audioSeconds = seconds.toFixed(2);
    this.state("speaking");
  }

  take(event) {
    switch (event.type) {
      case "input_audio_buffer.speech_started":
        this.state("hearing you");
        break;
      case "input_audio_buffer.speech_stopped":
        this.state("thinking");
        break;
      case "conversation.item.input_audio_transcription.completed":
        voiceLine("user", event.transcript || "(unclear)");
        break;
      case "response.output_audio_transcript.delta": {
        let line = this.lines.get(event.item_id);
        if (!line) { line = voiceLine("assistant", ""); this.lines.set(event.item_id, line); }
        line.textContent += event.delta;
        break;
      }
      case "output_audio_buffer.started": // WebRTC: the answer plays from the server's track
        this.heardSince = performance.now();
        this.state("speaking");
        break;
      case "output_audio_buffer.stopped":
      case "output_audio_buffer.cleared":
        if (this.heardSince !== null) this.playing(this.seconds + (performance.now() - this.heardSince) / 1000);
        this.heardSince = null;
        this.state("listening");
        break;
      case "response.done": {
        const line = this.lines.get(event.response.output?.[0]?.id);
        if (line) line.dataset.done = event.response.status;
        if (this.heardSince === null) this.state("listening");
        break;
      }
      case "error":
        voiceLine("error", event.error.message);
        break;
    }
  }

  close() {
    this.ended = true;
    this.link?.close();
    this.closed();
  }

  closed() {
    if (voice !== this) return;
    this.ended = true;
    this.link?.close();
    voice = null;
    this.state("off");
    $("voice-toggle").textContent = "Start talking";
  }
}

$("voice-toggle").addEventListener("click", () => {
  if (voice) { voice.close(); return; }
  voice = new VoiceSession();
  $("voice-toggle").textContent = "Stop";
  voice.state("connecting");
});

// ---- images and videos --------------------------------------------------------------------------------

$("image-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = $("image-out");
  out.textContent = "drawing…";
  try {
    const body = { model: modelOf("image").id, prompt: $("image-prompt").value, size: $("image-size").value,
      response_format: "b64_json" };
    const data = (await (await api("/v1/images/generations", body)).json()).data;
    out.replaceChildren(...data.map((d) => Object.assign(document.createElement("img"),
      { src: "data:image/png;base64," + d.b64_json })));
  } catch (error) {
    out.textContent = error.message;
  }
});

$("video-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = $("video-out");
  out.textContent = "filming…";
  try {
    const job = await (await api("/v1/videos/sync", { model: modelOf("image").id, prompt: $("video-prompt").value })).json();
    if (job.status !== "completed") throw new Error(job.error?.message || `the video job ${job.status}`);
    const blob = await (await fetch(`/v1/videos/${job.id}/content`, { headers: headers(false) })).blob();
    out.replaceChildren(Object.assign(document.createElement("video"),
      { src: URL.createObjectURL(blob), controls: true, autoplay: true, muted: true, loop: true }));
  } catch (error) {
    out.textContent = error.message;
  }
});

loadModels();
