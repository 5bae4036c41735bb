// meeting-sfu demo client: what a Carbonio web client does, in one file, as a reference.
//
// Four peer connections per participant (DESIGN section 6):
//   audio   sendrecv, client offers: PUT /audio/offer -> MEETING_AUDIO_ANSWERED (mix of the others)
//   video   sendonly, client offers: PUT /media {type:"video"}  -> MEETING_SDP_ANSWERED VIDEO
//   screen  sendonly, client offers: PUT /media {type:"screen"} -> MEETING_SDP_ANSWERED SCREEN
//   receive recvonly, server offers: PUT /media/subscribe -> MEETING_SDP_OFFERED, answered with
//           PUT /media/answer; remote tracks are placed by msid stream id "<userId>/<video|screen>".
// The API has no trickle channel: every SDP is sent once ICE gathering has finished.
"use strict";

const $ = (id) => document.getElementById(id);
const PC_CONFIG = { iceServers: [], bundlePolicy: "balanced" };

const S = {
  token: "", userId: "", grants: {}, createdRooms: new Set(),
  meeting: null, ws: null, queueId: "", joined: false, waiting: false,
  pcs: { audio: null, video: null, screen: null, recv: null },
  local: { audio: null, video: null, screen: null }, // MediaStreams we send
  audioEnabled: false, recording: false,
  subscribed: new Set(), // "<userId>/<kind>" we asked for and have not seen end
  participants: [],
  waiters: [],
  subChain: Promise.resolve(), offerChain: Promise.resolve(),
};

// --- small helpers ----------------------------------------------------------------------------

function log(text, error = false) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (error) li.className = "error";
  $("log").prepend(li);
}

function setStatus(text, state = "idle") {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

const short = (id) => (id === S.userId ? "you" : id.slice(0, 8));
const meetingPath = (suffix = "") => `/meetings/${S.meeting.id}${suffix}`;

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  if (S.token) init.headers.Authorization = `Bearer ${S.token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error(`${method} ${path}: ${response.status} ${data?.message ?? ""}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

// Runs a button's action, logging its failure instead of leaving an unhandled rejection.
function action(fn) {
  return async (...args) => {
    try { await fn(...args); } catch (e) { log(e.message, true); }
  };
}

// The next event matching `test`, registered before the request that causes it is sent.
function expectEvent(test, ms = 10000) {
  const promise = new Promise((resolve, reject) => {
    const waiter = { test, resolve };
    S.waiters.push(waiter);
    setTimeout(() => {
      S.waiters = S.waiters.filter((w) => w !== waiter);
      reject(new Error("no answer from the server in time"));
    }, ms);
  });
  promise.catch(() => {}); // the request may fail first: its error is the one reported
  return promise;
}

function gathered(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const check = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 5000); // host candidates on loopback come at once; do not hang
  });
}

function jwtClaims(token) {
  const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
}

// --- identity and the events socket -------------------------------------------------------------

async function mintToken() {
  const room = $("roomId").value.trim();
  const role = $("role").value;
  const body = { rooms: room && role !== "none" ? { [room]: role } : {} };
  if ($("userId").value.trim()) body.userId = $("userId").value.trim();
  if ($("name").value.trim()) body.name = $("name").value.trim();
  if (role === "none") body.guest = true;
  const minted = await api("POST", "/demo/token", body);
  $("token").value = minted.token;
  await useToken(minted.token);
}

async function useToken(token) {
  const claims = jwtClaims(token);
  S.token = token;
  S.userId = claims.sub;
  S.grants = claims.rooms || {};
  $("userId").value = S.userId;
  $("whoami").textContent = `You are ${claims.name || "user"} ${S.userId}`;
  await connectEvents();
  for (const id of ["open", "create"]) $(id).disabled = false;
  setStatus("ready");
  const room = $("roomId").value.trim();
  if ($("meetingId").value.trim()) return openMeeting();
  // The room's meeting, when there is one.
  const existing = (await api("GET", "/meetings")).find((m) => m.roomId === room);
  if (existing) showMeeting(existing);
}

function connectEvents() {
  if (S.ws) S.ws.close();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/events?access_token=${S.token}`);
  S.ws = ws;
  return new Promise((resolve, reject) => {
    ws.onmessage = (msg) => {
      const event = JSON.parse(msg.data);
      if (event.type === "websocketConnected") {
        S.queueId = event.queueId;
        resolve();
      }
      onEvent(event);
    };
    ws.onerror = () => reject(new Error("events socket failed"));
    ws.onclose = () => {
      if (S.ws !== ws) return;
      log("events socket closed", true);
      teardownMedia();
      setStatus("disconnected", "error");
    };
    const ping = setInterval(() => {
      if (ws.readyState === WebSocket.OPEN) ws.send('{"type":"ping"}'); else clearInterval(ping);
    }, 30000);
  });
}

// --- meeting lifecycle --------------------------------------------------------------------------

function isOwner() {
  const m = S.meeting;
  if (!m) return false;
  const me = m.participants.find((p) => p.userId === S.userId);
  return S.grants[m.roomId] === "owner" || S.createdRooms.has(m.roomId)
    || me?.userType === "moderator";
}

function showMeeting(meeting) {
  S.meeting = meeting;
  $("meetingId").value = meeting.id;
  $("roomId").value = meeting.roomId;
  const state = meeting.active ? "active" : "not started";
  $("meetingInfo").textContent = `"${meeting.name}" (${meeting.meetingType}), ${state}`;
  const hash = `#room=${meeting.roomId}&meeting=${meeting.id}`;
  $("invite").href = `${location.origin}/demo${hash}`;
  $("invite").textContent = $("invite").href;
  history.replaceState(null, "", hash);
  S.participants = meeting.participants;
  S.recording = Boolean(meeting.recStartedAt);
  render();
}

async function openMeeting() {
  const id = $("meetingId").value.trim();
  try {
    showMeeting(await api("GET", `/meetings/${id}`));
  } catch (e) {
    if (e.status !== 403) throw e;
    // Not a member (a guest): the public view of a scheduled meeting is all we may see;
    // joining puts us in its waiting room.
    const { name } = await api("GET", `/public/meetings/${id}`);
    showMeeting({ id, name, roomId: $("roomId").value, meetingType: "scheduled", active: true,
      participants: [] });
  }
  if (isOwner() && S.meeting.active) await refreshQueue();
}

async function refreshMeeting() {
  if (S.meeting) showMeeting(await api("GET", meetingPath()));
}

async function createMeeting() {
  const room = $("roomId").value.trim();
  const body = { name: `Demo ${new Date().toLocaleTimeString()}`, meetingType: $("meetingType").value };
  if (room && S.grants[room]) body.roomId = room;
  const meeting = await api("POST", "/meetings", body);
  if (!body.roomId) S.createdRooms.add(meeting.roomId); // a new room, owned by us
  showMeeting(meeting);
}

async function join() {
  const { status } = await api("POST", meetingPath("/join"),
    { audioStreamEnabled: false, videoStreamEnabled: false }, { "queue-id": S.queueId });
  log(`join: ${status}`);
  if (status === "WAITING") {
    S.waiting = true;
    setStatus("waiting for a moderator", "waiting");
    return render();
  }
  S.waiting = false;
  S.joined = true;
  setStatus("in the meeting", "joined");
  await refreshMeeting();
  if (isOwner()) await refreshQueue();
  // Streams that were on before we came: the events about them went by already.
  const streams = [];
  for (const p of S.participants) {
    if (p.userId === S.userId) continue;
    if (p.videoStreamEnabled) streams.push({ userId: p.userId, type: "video" });
    if (p.screenStreamEnabled) streams.push({ userId: p.userId, type: "screen" });
  }
  if (streams.length) subscribe(streams, []);
  await startAudio(); // joined muted: the Unmute button sends PUT /audio {enabled:true}
}

async function leave() {
  if (S.waiting) { // a waiting user leaves the queue by rejecting himself
    await api("POST", meetingPath(`/queue/${S.userId}`), { status: "REJECTED" });
  } else {
    await api("POST", meetingPath("/leave"));
  }
  leftMeeting("you left");
}

function leftMeeting(why) {
  teardownMedia();
  S.joined = false;
  S.waiting = false;
  setStatus(why);
  refreshMeeting().catch(() => {});
}

// --- media: audio (sendrecv; we hear the mix of everyone else) ---------------------------------

async function startAudio() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const pc = (S.pcs.audio = new RTCPeerConnection(PC_CONFIG));
    S.local.audio = stream;
    for (const track of stream.getTracks()) pc.addTrack(track, stream);
    pc.ontrack = (e) => { $("remoteAudio").srcObject = e.streams[0] || new MediaStream([e.track]); };
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const answered = expectEvent((e) => e.type === "MEETING_AUDIO_ANSWERED");
    await api("PUT", meetingPath("/audio/offer"), { sdp: pc.localDescription.sdp });
    await pc.setRemoteDescription({ type: "answer", sdp: (await answered).sdp });
    log("audio connected (muted)");
  } catch (e) {
    log(`audio unavailable: ${e.message}`, true);
    closePc("audio");
  }
  render();
}

async function toggleMic() {
  const enabled = !S.audioEnabled;
  await api("PUT", meetingPath("/audio"), { enabled });
  S.audioEnabled = enabled;
  render();
}

async function muteOther(userId) {
  await api("PUT", meetingPath("/audio"), { enabled: false, userToModerate: userId });
}

// --- media: camera and screen (one sendonly PC each) -------------------------------------------

async function publish(kind) {
  const stream = kind === "video"
    ? await navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720 } })
    : await navigator.mediaDevices.getDisplayMedia({ video: true });
  const [track] = stream.getVideoTracks();
  const pc = (S.pcs[kind] = new RTCPeerConnection(PC_CONFIG));
  S.local[kind] = stream;
  // The camera goes out in simulcast (DESIGN 6.1): the server gives each viewer the layer its
  // link (and tile) can take. Lowest first: a server without simulcast gets that one alone.
  // The browser drops the upper layers when the camera is too small for them.
  const sendEncodings = kind === "video"
    ? [{ rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000 },
       { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000 },
       { rid: "f", maxBitrate: 1500000 }]
    : undefined;
  pc.addTransceiver(track, { direction: "sendonly", streams: [stream], sendEncodings });
  track.onended = action(() => unpublish(kind)); // the browser's "stop sharing"
  showTile(`${S.userId}/${kind}`, track, `you (${kind})`);
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const mediaType = kind.toUpperCase();
    const answered = expectEvent((e) => e.type === "MEETING_SDP_ANSWERED" && e.mediaType === mediaType);
    await api("PUT", meetingPath("/media"), { type: kind, enabled: true, sdp: pc.localDescription.sdp });
    await pc.setRemoteDescription({ type: "answer", sdp: (await answered).sdp });
    log(`${kind} published`);
  } catch (e) {
    stopLocal(kind);
    throw e;
  } finally {
    render();
  }
}

async function unpublish(kind) {
  if (!S.pcs[kind]) return;
  try { // tell the server first, then hang up (else it sees a lost peer)
    await api("PUT", meetingPath("/media"), { type: kind, enabled: false });
  } finally {
    stopLocal(kind);
    render();
  }
}

function stopLocal(kind) {
  closePc(kind);
  S.local[kind]?.getTracks().forEach((t) => t.stop());
  S.local[kind] = null;
  removeTile(`${S.userId}/${kind}`);
}

// --- media: receiving (one recvonly PC, offered by the server) ---------------------------------

// Subscription changes go one at a time: each waits for the server's offer and our answer.
function subscribe(subscribeList, unsubscribeList) {
  const wanted = subscribeList.filter((s) => !S.subscribed.has(`${s.userId}/${s.type}`));
  if (!wanted.length && !unsubscribeList.length) return S.subChain;
  wanted.forEach((s) => S.subscribed.add(`${s.userId}/${s.type}`));
  unsubscribeList.forEach((s) => S.subscribed.delete(`${s.userId}/${s.type}`));
  S.subChain = S.subChain.then(async () => {
    if (!S.joined) { // an event that came before our join's answer: join() looks again
      wanted.forEach((s) => S.subscribed.delete(`${s.userId}/${s.type}`));
      return;
    }
    const offered = expectEvent((e) => e.type === "MEETING_SDP_OFFERED", 3000);
    // Small tiles (a grid of four or more) ask for the low simulcast layer of cameras.
    const small = document.querySelectorAll(".tile").length >= 4;
    const items = wanted.map((s) => (small && s.type === "video" ? { ...s, quality: "low" } : s));
    try {
      await api("PUT", meetingPath("/media/subscribe"),
        { subscribe: items, unsubscribe: unsubscribeList });
    } catch (e) {
      wanted.forEach((s) => S.subscribed.delete(`${s.userId}/${s.type}`));
      return log(`subscribe: ${e.message}`, true);
    }
    // No offer comes when nothing changed (a stream already gone).
    if (await offered.catch(() => null)) await S.offerChain; // our answer has been sent
  });
  return S.subChain;
}

// Every server offer (ours and its own re-offers when a stream ends) is answered in order.
function onOffer(event) {
  S.offerChain = S.offerChain.then(async () => {
    if (!S.joined) return;
    let pc = S.pcs.recv;
    if (!pc) {
      pc = S.pcs.recv = new RTCPeerConnection(PC_CONFIG);
      pc.ontrack = onRemoteTrack;
    }
    await pc.setRemoteDescription({ type: "offer", sdp: event.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    await api("PUT", meetingPath("/media/answer"), { sdp: pc.localDescription.sdp });
  }).catch((e) => log(`answering the server's offer: ${e.message}`, true));
}

// The msid stream id is "<publisherUserId>/<video|screen>" (Janus' use_msid format).
function onRemoteTrack(event) {
  const stream = event.streams[0];
  if (!stream) return;
  const [userId, kind] = stream.id.split("/");
  if (!userId || !kind) return;
  showTile(`${userId}/${kind}`, event.track, `${short(userId)} (${kind})`);
}

// --- tiles ---------------------------------------------------------------------------------------

function showTile(key, track, label) {
  for (const tile of document.querySelectorAll(".tile")) {
    // A reused m-line brings the same track under a new stream id: the old tile goes.
    if (tile.dataset.key !== key && tile.querySelector("video").srcObject?.getTracks()[0] === track) {
      tile.remove();
    }
  }
  let tile = document.querySelector(`.tile[data-key="${CSS.escape(key)}"]`);
  if (!tile) {
    tile = document.createElement("div");
    tile.className = "tile";
    tile.dataset.key = key;
    tile.dataset.user = key.split("/")[0];
    tile.innerHTML = '<video autoplay playsinline muted></video><span class="label"></span>';
    if (tile.dataset.user === S.userId) $("videos").prepend(tile); // our own first
    else $("videos").append(tile);
  }
  tile.querySelector(".label").textContent = label;
  const video = tile.querySelector("video");
  video.srcObject = new MediaStream([track]);
  // Each stream's resolution as received (it changes with the simulcast layer).
  video.onresize = () => {
    tile.querySelector(".label").textContent = `${label} ${video.videoWidth}x${video.videoHeight}`;
  };
}

function removeTile(key) {
  document.querySelector(`.tile[data-key="${CSS.escape(key)}"]`)?.remove();
}

function removeUser(userId) {
  for (const tile of document.querySelectorAll(`.tile[data-user="${CSS.escape(userId)}"]`)) tile.remove();
  for (const key of [...S.subscribed]) if (key.startsWith(`${userId}/`)) S.subscribed.delete(key);
}

function closePc(kind) {
  S.pcs[kind]?.close();
  S.pcs[kind] = null;
}

function teardownMedia() {
  for (const kind of ["video", "screen"]) stopLocal(kind);
  closePc("audio");
  closePc("recv");
  S.local.audio?.getTracks().forEach((t) => t.stop());
  S.local.audio = null;
  S.audioEnabled = false;
  S.subscribed.clear();
  $("videos").replaceChildren();
  render();
}

// --- waiting room (moderators) -------------------------------------------------------------------

async function refreshQueue() {
  const { users } = await api("GET", meetingPath("/queue"));
  const list = $("waiting");
  list.replaceChildren();
  for (const userId of users) {
    const li = document.createElement("li");
    li.dataset.user = userId;
    li.textContent = `${short(userId)} `;
    for (const status of ["ACCEPTED", "REJECTED"]) {
      const button = document.createElement("button");
      button.textContent = status === "ACCEPTED" ? "Accept" : "Reject";
      button.className = status.toLowerCase();
      button.onclick = action(() => api("POST", meetingPath(`/queue/${userId}`), { status }));
      li.append(button);
    }
    list.append(li);
  }
  $("waitingBox").hidden = users.length === 0;
}

// --- recording -----------------------------------------------------------------------------------

async function toggleRecording() {
  if (!S.recording) return api("POST", meetingPath("/startRecording"));
  return api("POST", meetingPath("/stopRecording"),
    { name: $("recName").value, folderId: $("recFolder").value });
}

// --- events --------------------------------------------------------------------------------------

const handlers = {
  MEETING_STARTED: () => refreshMeeting(),
  MEETING_STOPPED: () => leftMeeting("the meeting stopped"),
  MEETING_DELETED: () => { leftMeeting("the meeting was deleted"); S.meeting = null; },
  MEETING_PARTICIPANT_JOINED: () => refreshMeeting(),
  MEETING_PARTICIPANT_LEFT: (e) => { removeUser(e.userId); return refreshMeeting(); },
  MEETING_PARTICIPANT_CLASHED: () => leftMeeting("you joined from elsewhere"),
  MEETING_WAITING_PARTICIPANT_JOINED: () => refreshQueue(),
  MEETING_WAITING_PARTICIPANT_ACCEPTED: (e) => (e.userId === S.userId && S.waiting ? join()
    : isOwner() ? refreshQueue() : null),
  MEETING_WAITING_PARTICIPANT_REJECTED: (e) => {
    if (e.userId !== S.userId) return isOwner() ? refreshQueue() : null;
    S.waiting = false;
    setStatus("a moderator turned you away", "error");
    return render();
  },
  MEETING_SDP_OFFERED: onOffer,
  MEETING_PARTICIPANT_SUBSCRIBED: (e) =>
    log(`receiving ${e.streams.map((s) => `${short(s.userId)}/${s.type}@${s.mid}`).join(", ") || "nothing"}`),
  MEETING_MEDIA_STREAM_CHANGED: (e) => {
    const kind = e.mediaType.toLowerCase();
    if (e.userId === S.userId) return refreshMeeting();
    if (e.active) subscribe([{ userId: e.userId, type: kind }], []);
    else {
      // The server ends our consumer itself (and re-offers): only the tile goes.
      S.subscribed.delete(`${e.userId}/${kind}`);
      removeTile(`${e.userId}/${kind}`);
    }
    return refreshMeeting();
  },
  MEETING_AUDIO_STREAM_CHANGED: (e) => {
    if (e.userId === S.userId) {
      S.audioEnabled = e.active;
      if (e.moderatorId) log(`a moderator (${short(e.moderatorId)}) muted you`);
    }
    return refreshMeeting();
  },
  MEETING_PARTICIPANT_TALKING: (e) => {
    document.querySelector(`#participants li[data-user="${CSS.escape(e.userId)}"]`)
      ?.classList.toggle("talking", e.isTalking);
    for (const tile of document.querySelectorAll(`.tile[data-user="${CSS.escape(e.userId)}"]`)) {
      tile.classList.toggle("talking", e.isTalking);
    }
  },
  MEETING_RECORDING_STARTED: () => { S.recording = true; render(); },
  MEETING_RECORDING_STOPPED: () => { S.recording = false; render(); },
};

function onEvent(event) {
  if (event.type.startsWith("MEETING_") && event.meetingId === S.meeting?.id) {
    if (event.type !== "MEETING_PARTICIPANT_TALKING") log(event.type + eventSummary(event));
    const handler = handlers[event.type];
    // Called at once, so that an offer is queued before anyone waiting for it resumes.
    if (handler) action(handler)(event);
  }
  for (const w of S.waiters.filter((w) => w.test(event))) {
    S.waiters = S.waiters.filter((x) => x !== w);
    w.resolve(event);
  }
}

function eventSummary(e) {
  const parts = [];
  if (e.userId) parts.push(short(e.userId));
  if (e.mediaType) parts.push(e.mediaType);
  if (e.active !== undefined) parts.push(e.active ? "on" : "off");
  return parts.length ? ` ${parts.join(" ")}` : "";
}

// --- rendering -----------------------------------------------------------------------------------

function render() {
  const m = S.meeting;
  const inside = S.joined;
  $("start").disabled = !m || m.active;
  $("stop").disabled = !m || !m.active;
  $("join").disabled = !m || !m.active || inside || S.waiting;
  $("leave").disabled = !inside && !S.waiting;
  for (const id of ["camera", "screen"]) $(id).disabled = !inside;
  $("mic").disabled = !inside || !S.pcs.audio;
  $("record").disabled = !inside || !isOwner();
  $("camera").textContent = S.pcs.video ? "Camera off" : "Camera on";
  $("screen").textContent = S.pcs.screen ? "Stop sharing" : "Share screen";
  $("mic").textContent = S.audioEnabled ? "Mute" : "Unmute";
  $("record").textContent = S.recording ? "Stop recording" : "Start recording";
  $("recording").hidden = !S.recording;

  const list = $("participants");
  const talking = new Set([...list.querySelectorAll("li.talking")].map((li) => li.dataset.user));
  list.replaceChildren();
  for (const p of inside || m?.active ? S.participants : []) {
    const li = document.createElement("li");
    li.dataset.user = p.userId;
    if (talking.has(p.userId)) li.className = "talking";
    const media = [p.videoStreamEnabled && "cam", p.screenStreamEnabled && "screen"].filter(Boolean);
    li.textContent = `${short(p.userId)}${p.userType === "moderator" ? " ★" : ""}`;
    const mic = document.createElement("span");
    mic.className = "mic";
    mic.textContent = [p.audioStreamEnabled ? "mic on" : "muted", ...media].join(" · ");
    li.append(mic);
    if (inside && isOwner() && p.userId !== S.userId && p.audioStreamEnabled) {
      const button = document.createElement("button");
      button.textContent = "Mute";
      button.className = "mute";
      button.onclick = action(() => muteOther(p.userId));
      li.append(button);
    }
    list.append(li);
  }
}

// --- wiring --------------------------------------------------------------------------------------

function init() {
  const params = new URLSearchParams(location.hash.slice(1));
  $("roomId").value = params.get("room") || crypto.randomUUID();
  if (params.get("meeting")) {
    $("meetingId").value = params.get("meeting");
    $("role").value = "member"; // an invited guest is a member of the room by default
  }
  $("mint").onclick = action(mintToken);
  $("useToken").onclick = action(() => useToken($("token").value.trim()));
  $("open").onclick = action(openMeeting);
  $("create").onclick = action(createMeeting);
  $("start").onclick = action(async () => showMeeting(await api("POST", meetingPath("/start"))));
  $("stop").onclick = action(() => api("POST", meetingPath("/stop")));
  $("join").onclick = action(join);
  $("leave").onclick = action(leave);
  $("camera").onclick = action(() => (S.pcs.video ? unpublish("video") : publish("video")));
  $("screen").onclick = action(() => (S.pcs.screen ? unpublish("screen") : publish("screen")));
  $("mic").onclick = action(toggleMic);
  $("record").onclick = action(toggleRecording);
  render();
}

// For tests and the curious: the state, and what each receiving PC has decoded so far.
window.demo = {
  state: S,
  async inboundStats() {
    const out = { video: [], audio: [] };
    for (const kind of ["recv", "audio"]) {
      const stats = S.pcs[kind] ? await S.pcs[kind].getStats() : new Map();
      for (const r of stats.values()) {
        if (r.type !== "inbound-rtp") continue;
        out[r.kind].push({ mid: r.mid, packetsReceived: r.packetsReceived,
          framesDecoded: r.framesDecoded, totalAudioEnergy: r.totalAudioEnergy,
          frameWidth: r.frameWidth });
      }
    }
    return out;
  },
};

init();
