// meeting-sfu demo client: what a Carbonio web client does, in one file, as a reference.
//
// Four peer connections per participant (DESIGN section 6):
//   audio   sendrecv, client offers: PUT /audio/offer -> MEETING_AUDIO_ANSWERED (mix of the others)
//   video   sendonly, client offers: PUT /media {type:"video"}  -> MEETING_SDP_ANSWERED VIDEO
//   screen  sendonly, client offers: PUT /media {type:"screen"} -> MEETING_SDP_ANSWERED SCREEN
//   receive recvonly, server offers: PUT /media/subscribe -> MEETING_SDP_OFFERED, answered with
//           PUT /media/answer; remote tracks are placed by msid stream id "<userId>/<video|screen>".
// The API has no trickle channel: every SDP is sent once ICE gathering has finished.
// Display names come from the participants' `name` (the token's claim, DESIGN section 4).
"use strict";

const $ = (id) => document.getElementById(id);
const PC_CONFIG = { iceServers: [], bundlePolicy: "balanced" };

const S = {
  token: "", userId: "", name: "", grants: {}, createdRooms: new Set(),
  meeting: null, ws: null, queueId: "", joined: false, waiting: false, invited: false,
  pcs: { audio: null, video: null, screen: null, recv: null },
  local: { audio: null, video: null, screen: null }, // MediaStreams we send
  audioEnabled: false, recording: false, recordingTarget: null,
  subscribed: new Set(), // "<userId>/<kind>" we asked for and have not seen end
  participants: [],
  names: new Map(), // userId -> display name, from participants, events and the queue
  talking: new Set(),
  waiters: [],
  subChain: Promise.resolve(), offerChain: Promise.resolve(),
};

// --- small helpers ----------------------------------------------------------------------------

function log(text, error = false) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (error) li.className = "error";
  $("log").prepend(li);
  while ($("log").childElementCount > 300) $("log").lastElementChild.remove(); // bounded
}

function setStatus(text, state = "idle") {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

let toastTimer = 0;
function toast(text) {
  $("toast").textContent = text;
  $("toast").hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { $("toast").hidden = true; }, 6000);
}

function notice(text) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
}

// A user's display name: his token's name claim when he had one, else a short id.
function displayName(userId) {
  return S.names.get(userId) || `Guest ${userId.slice(0, 4)}`;
}
const nameOf = (userId) => (userId === S.userId ? `${displayName(userId)} (you)` : displayName(userId));
const short = (id) => (id === S.userId ? "you" : displayName(id));
function initials(userId) {
  const words = displayName(userId).split(/\s+/).filter(Boolean);
  return words.slice(0, 2).map((w) => w[0].toUpperCase()).join("") || "?";
}
function hue(userId) { // a colour of one's own, the same on every page
  let h = 0;
  for (const c of userId) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h} 45% 42%)`;
}
function learnNames(participants) {
  for (const p of participants) if (p.name) S.names.set(p.userId, p.name);
}
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
  S.name = claims.name || "";
  if (S.name) S.names.set(S.userId, S.name);
  S.grants = claims.rooms || {};
  $("userId").value = S.userId;
  const role = S.grants[$("roomId").value.trim()] || "no role";
  $("whoami").textContent = `Signed in as ${displayName(S.userId)} (${role} in the room).`;
  await connectEvents();
  setStatus("ready", "ready");
  const room = $("roomId").value.trim();
  render();
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

function role() { // "owner", "member" or null: what the token grants or the page knows
  const m = S.meeting;
  const room = m ? m.roomId : $("roomId").value.trim();
  const me = m?.participants.find((p) => p.userId === S.userId);
  if (S.grants[room] === "owner" || S.createdRooms.has(room) || me?.userType === "moderator") return "owner";
  if (S.grants[room] || me || (m && !m.publicView)) return "member"; // we could read the meeting
  return null;
}
const isOwner = () => role() === "owner";

function showMeeting(meeting) {
  S.meeting = meeting;
  $("meetingId").value = meeting.id;
  if (meeting.roomId) $("roomId").value = meeting.roomId;
  const state = meeting.active ? "in progress" : "not started";
  const kind = meeting.meetingType === "scheduled" ? "scheduled, with a waiting room" : "permanent";
  $("meetingInfo").textContent = `“${meeting.name}” (${kind}), ${state}.`;
  $("title").textContent = meeting.name;
  const hash = `#room=${meeting.roomId}&meeting=${meeting.id}`;
  $("invite").href = `${location.origin}/demo${hash}`;
  $("invite").textContent = $("invite").href;
  history.replaceState(null, "", hash);
  learnNames(meeting.participants);
  S.participants = meeting.participants;
  S.recording = Boolean(meeting.recStartedAt);
  render();
}

async function openMeeting() {
  const id = $("meetingId").value.trim();
  notice("");
  try {
    showMeeting(await api("GET", `/meetings/${id}`));
  } catch (e) {
    if (e.status === 404) return notice("There is no such meeting (it may have been deleted).");
    if (e.status !== 403) throw e;
    // Not a member (a guest): the public view of a scheduled meeting is all we may see;
    // joining puts us in its waiting room. A permanent meeting has no public view.
    let name;
    try {
      ({ name } = await api("GET", `/public/meetings/${id}`));
    } catch (e2) {
      if (e2.status !== 404) throw e2;
      return notice("This meeting has no waiting room: it is a permanent meeting, open to the members " +
        "of its room only. Ask its organiser to add you to the room, or to invite you to a scheduled " +
        "meeting, where guests wait to be let in.");
    }
    showMeeting({ id, name, roomId: $("roomId").value, meetingType: "scheduled", active: true,
      participants: [], publicView: true });
    notice("You are a guest: when you join, a moderator is asked to let you in.");
  }
  if (isOwner() && S.meeting.active) await refreshQueue();
}

async function refreshMeeting() {
  if (!S.meeting || (S.meeting.publicView && !S.joined)) return; // a guest may read it once let in
  showMeeting(await api("GET", meetingPath()));
}

async function createMeeting() {
  const room = $("roomId").value.trim();
  const body = { name: `${S.name ? `${S.name}'s` : "Demo"} meeting ${new Date().toLocaleTimeString()}`,
    meetingType: $("meetingType").value };
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
    notice("You are in the waiting room: a moderator has been told and will let you in.");
    return render();
  }
  S.waiting = false;
  S.joined = true;
  notice("");
  setStatus("in the meeting", "joined");
  $("setup").open = false; // the set-up steps fold away: the meeting takes the page
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
  notice("");
  $("setup").open = true;
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

// Publishing, in one place: capture, a sendonly PC with one transceiver, a complete offer
// (gathering finished), PUT /media, and the answer from MEETING_SDP_ANSWERED. Encodings
// (simulcast layers, say) belong in the addTransceiver init below.
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
  showTrack(S.userId, kind, track);
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
  hideTrack(S.userId, kind);
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
  if (!userId || (kind !== "video" && kind !== "screen")) return;
  showTrack(userId, kind, event.track);
}

// --- tiles: one per participant (his camera, or his initials), one per shared screen ------------

function tile(userId, kind) {
  const selector = kind === "screen"
    ? `.tile.screen[data-user="${CSS.escape(userId)}"]` : `.tile.person[data-user="${CSS.escape(userId)}"]`;
  let el = document.querySelector(selector);
  if (el) return el;
  el = document.createElement("div");
  el.className = `tile ${kind === "screen" ? "screen" : "person"}`;
  el.dataset.user = userId;
  // data-key names what the tile shows: "<userId>/video" or "<userId>/screen", or the bare
  // user id while a camera is off.
  el.dataset.key = kind === "screen" ? `${userId}/screen` : userId;
  if (userId === S.userId) el.classList.add("self");
  el.innerHTML = '<video autoplay playsinline muted></video><div class="avatar"></div>'
    + '<span class="label"><span class="name"></span><span class="muted-mic"></span></span>';
  $("videos").append(el);
  labelTile(el);
  orderTiles();
  return el;
}

function labelTile(el) {
  const userId = el.dataset.user;
  const p = S.participants.find((x) => x.userId === userId);
  const screen = el.classList.contains("screen");
  const avatar = el.querySelector(".avatar");
  avatar.textContent = initials(userId);
  avatar.style.setProperty("--hue", hue(userId));
  el.querySelector(".name").textContent = screen
    ? (userId === S.userId ? "Your screen" : `${displayName(userId)}'s screen`) : nameOf(userId);
  el.querySelector(".muted-mic").textContent = !screen && p && !p.audioStreamEnabled ? "muted" : "";
  el.classList.toggle("talking", !screen && S.talking.has(userId));
}

// A stable order: screens first, then ourselves, then everyone by the time he joined.
function orderTiles() {
  const rank = new Map();
  [...S.participants].sort((a, b) => (a.joinedAt < b.joinedAt ? -1 : a.joinedAt > b.joinedAt ? 1 : 0))
    .forEach((p, i) => rank.set(p.userId, i + 1));
  for (const el of document.querySelectorAll("#videos .tile")) {
    const userId = el.dataset.user;
    const r = userId === S.userId ? 0 : rank.get(userId) ?? 999;
    el.style.order = String(el.classList.contains("screen") ? r - 1000 : r);
  }
}

function showTrack(userId, kind, track) {
  for (const other of document.querySelectorAll("#videos .tile")) {
    // A reused m-line brings the same track under a new stream id: the old place lets go.
    const shown = other.querySelector("video").srcObject?.getTracks()[0];
    if (shown === track && (other.dataset.user !== userId || other.classList.contains("screen") !== (kind === "screen"))) {
      hideTrack(other.dataset.user, other.classList.contains("screen") ? "screen" : "video");
    }
  }
  const el = tile(userId, kind);
  const video = el.querySelector("video");
  video.srcObject = new MediaStream([track]);
  el.classList.add("has-video");
  if (kind === "video") el.dataset.key = `${userId}/video`;
  // Each stream's resolution as received (it changes with the simulcast layer).
  video.onresize = () => {
    let res = el.querySelector(".res");
    if (!res) {
      res = document.createElement("span");
      res.className = "res";
      el.querySelector(".label").append(res);
    }
    res.textContent = ` ${video.videoWidth}x${video.videoHeight}`;
  };
}

function hideTrack(userId, kind) {
  if (kind === "screen") {
    document.querySelector(`.tile.screen[data-user="${CSS.escape(userId)}"]`)?.remove();
    return;
  }
  const el = document.querySelector(`.tile.person[data-user="${CSS.escape(userId)}"]`);
  if (!el) return;
  el.querySelector("video").srcObject = null;
  el.classList.remove("has-video");
  el.dataset.key = userId;
}

// Tiles follow the participants: one for each, none for those who left (a tile that plays a
// track stays until its user's LEFT event, which a late participant list cannot undo).
function syncTiles() {
  if (!S.joined) {
    $("videos").replaceChildren();
    return;
  }
  const present = new Set(S.participants.map((p) => p.userId));
  present.add(S.userId);
  for (const userId of present) tile(userId, "video");
  for (const el of document.querySelectorAll("#videos .tile.person:not(.has-video)")) {
    if (!present.has(el.dataset.user)) el.remove();
  }
  for (const el of document.querySelectorAll("#videos .tile")) labelTile(el);
  orderTiles();
}

function removeUser(userId) {
  for (const el of document.querySelectorAll(`.tile[data-user="${CSS.escape(userId)}"]`)) el.remove();
  for (const key of [...S.subscribed]) if (key.startsWith(`${userId}/`)) S.subscribed.delete(key);
  S.talking.delete(userId);
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
  S.talking.clear();
  $("videos").replaceChildren();
  render();
}

// --- waiting room (moderators) -------------------------------------------------------------------

async function refreshQueue() {
  const { users, names = {} } = await api("GET", meetingPath("/queue"));
  for (const [userId, name] of Object.entries(names)) S.names.set(userId, name);
  const list = $("waiting");
  list.replaceChildren();
  for (const userId of users) {
    const li = document.createElement("li");
    li.dataset.user = userId;
    li.append(dot(userId), span("who", displayName(userId)));
    for (const status of ["ACCEPTED", "REJECTED"]) {
      const button = document.createElement("button");
      button.textContent = status === "ACCEPTED" ? "Let in" : "Turn away";
      button.className = status.toLowerCase();
      button.onclick = action(() => api("POST", meetingPath(`/queue/${userId}`), { status }));
      li.append(button);
    }
    list.append(li);
  }
  $("waitingCount").textContent = users.length ? String(users.length) : "";
  $("waitingBox").hidden = users.length === 0;
}

// --- recording -----------------------------------------------------------------------------------

async function toggleRecording() {
  if (!S.recording) return api("POST", meetingPath("/startRecording"));
  const target = { name: $("recName").value.trim(), folderId: $("recFolder").value.trim() };
  S.recordingTarget = target;
  return api("POST", meetingPath("/stopRecording"), target);
}

// --- events --------------------------------------------------------------------------------------

const handlers = {
  MEETING_STARTED: () => refreshMeeting(),
  MEETING_STOPPED: () => leftMeeting("the meeting stopped"),
  MEETING_DELETED: () => { leftMeeting("the meeting was deleted"); S.meeting = null; render(); },
  MEETING_PARTICIPANT_JOINED: (e) => { if (e.name) S.names.set(e.userId, e.name); return refreshMeeting(); },
  MEETING_PARTICIPANT_LEFT: (e) => { removeUser(e.userId); return refreshMeeting(); },
  MEETING_PARTICIPANT_CLASHED: () => leftMeeting("you joined from elsewhere"),
  MEETING_WAITING_PARTICIPANT_JOINED: (e) => {
    if (e.name) S.names.set(e.userId, e.name);
    toast(`${displayName(e.userId)} is in the waiting room`);
    return refreshQueue();
  },
  MEETING_WAITING_PARTICIPANT_ACCEPTED: (e) => (e.userId === S.userId && S.waiting ? join()
    : isOwner() ? refreshQueue() : null),
  MEETING_WAITING_PARTICIPANT_REJECTED: (e) => {
    if (e.userId !== S.userId) return isOwner() ? refreshQueue() : null;
    S.waiting = false;
    notice("");
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
      // The server ends our consumer itself (and re-offers): only the picture goes.
      S.subscribed.delete(`${e.userId}/${kind}`);
      hideTrack(e.userId, kind);
    }
    return refreshMeeting();
  },
  MEETING_AUDIO_STREAM_CHANGED: (e) => {
    if (e.userId === S.userId) {
      S.audioEnabled = e.active;
      if (e.moderatorId) {
        log(`a moderator (${short(e.moderatorId)}) muted you`);
        toast(`${displayName(e.moderatorId)} muted you`);
      }
    }
    return refreshMeeting();
  },
  MEETING_PARTICIPANT_TALKING: (e) => {
    if (e.isTalking) S.talking.add(e.userId); else S.talking.delete(e.userId);
    document.querySelector(`#participants li[data-user="${CSS.escape(e.userId)}"]`)
      ?.classList.toggle("talking", e.isTalking);
    document.querySelector(`.tile.person[data-user="${CSS.escape(e.userId)}"]`)
      ?.classList.toggle("talking", e.isTalking);
  },
  MEETING_RECORDING_STARTED: (e) => {
    S.recording = true;
    toast(e.userId === S.userId ? "Recording started" : `${displayName(e.userId)} started recording`);
    render();
  },
  MEETING_RECORDING_STOPPED: (e) => {
    S.recording = false;
    const t = S.recordingTarget;
    if (e.userId === S.userId && t) toast(`Recording saved as ${t.folderId}/${t.name}.mkv`);
    else toast(`${displayName(e.userId)} stopped the recording; it is saved on the server`);
    S.recordingTarget = null;
    render();
  },
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

function span(className, text) {
  const el = document.createElement("span");
  el.className = className;
  el.textContent = text;
  return el;
}

function dot(userId) {
  const el = span("dot", initials(userId));
  el.style.setProperty("--hue", hue(userId));
  return el;
}

function press(id, on, label) {
  $(id).setAttribute("aria-pressed", String(on));
  $(id).querySelector(".label").textContent = label;
}

// Shows only what the user may do now: a guest sees no Start, a member no Record, and so on.
function render() {
  const m = S.meeting;
  const inside = S.joined;
  const signedIn = Boolean(S.token);
  const r = role();
  $("mint").textContent = signedIn ? "Sign in again" : "Sign in with a demo token";
  $("create").hidden = !signedIn || inside || S.waiting || Boolean(m) || S.invited;
  $("newMeeting").hidden = !signedIn || Boolean(m) || S.invited;
  $("open").hidden = !signedIn;
  $("inviteLine").hidden = !m || !r;
  $("start").hidden = !m || m.active || !r;
  $("join").hidden = !m || !m.active || inside || S.waiting || (!r && m.meetingType !== "scheduled");
  $("join").textContent = r || !m ? "Join" : "Ask to join";
  $("setupSummary").textContent = m ? `· ${displayName(S.userId)} in “${m.name}”` : "";

  $("controls").hidden = !inside && !S.waiting;
  for (const id of ["mic", "camera", "screen"]) $(id).hidden = !inside;
  $("mic").disabled = !inside || !S.pcs.audio;
  $("record").hidden = !inside || r !== "owner";
  $("stop").hidden = !inside || !r;
  $("leave").querySelector(".label").textContent = S.waiting ? "Leave the queue" : "Leave";
  press("mic", S.audioEnabled, S.audioEnabled ? "Mute" : "Unmute");
  press("camera", Boolean(S.pcs.video), S.pcs.video ? "Stop video" : "Start video");
  press("screen", Boolean(S.pcs.screen), S.pcs.screen ? "Stop sharing" : "Share screen");
  press("record", S.recording, S.recording ? "Stop recording" : "Record");
  $("recording").hidden = !S.recording || !inside;
  $("recordingBox").hidden = !inside || r !== "owner";
  if (!inside || r !== "owner") $("waitingBox").hidden = true;

  const people = inside || (m?.active && !m.publicView) ? S.participants : [];
  const list = $("participants");
  list.replaceChildren();
  for (const p of people) {
    const li = document.createElement("li");
    li.dataset.user = p.userId;
    if (S.talking.has(p.userId)) li.className = "talking";
    const media = [p.audioStreamEnabled ? "mic on" : "muted", p.videoStreamEnabled && "camera",
      p.screenStreamEnabled && "sharing"];
    const who = span("who", "");
    who.append(span("", nameOf(p.userId)), span("state", media.filter(Boolean).join(" · ")));
    li.append(dot(p.userId), who);
    if (p.userType === "moderator") li.append(span("badge", "moderator"));
    if (inside && r === "owner" && p.userId !== S.userId && p.audioStreamEnabled) {
      const button = document.createElement("button");
      button.textContent = "Mute";
      button.className = "mute";
      button.onclick = action(() => muteOther(p.userId));
      li.append(button);
    }
    list.append(li);
  }
  $("participantCount").textContent = people.length ? String(people.length) : "";
  $("participantsBox").hidden = !people.length;
  syncTiles();
}

// --- wiring --------------------------------------------------------------------------------------

function init() {
  const params = new URLSearchParams(location.hash.slice(1));
  $("roomId").value = params.get("room") || crypto.randomUUID();
  if (params.get("meeting")) {
    S.invited = true; // came by an invite link: that meeting, no other
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
