// mugv annotate: one page, keyboard first. Talks to the server under the page's own URL
// (/a/<token>/api/...), so nothing here knows who the annotator is or where files live.
"use strict";

const $ = (id) => document.getElementById(id);
const players = [$("v0"), $("v1")];
const PAIR_KEYS = { "1": "left", "2": "right", "3": "tie", "4": "both_bad" };
const PAIR_LABELS = { left: "Left better (1)", right: "Right better (2)", tie: "Tie, both good (3)", both_bad: "Both bad (4)" };
const GRADE_KEYS = { f: "fail", p: "pass", h: "high_quality" };
const TAG_KEYS = "1234567890";
const SPEEDS = [0.25, 0.5, 1, 2];

let item = null;        // the item on screen, as sent by the server
let choices = {};       // aspect -> left / right / tie / both_bad
let row = 0;            // highlighted aspect row
let grade = null;
let tags = new Set();
let played = [false, false];
let lastTime = [0, 0];
let plays = 0, seeks = 0, shownAt = 0;
let busy = false, revealed = false;
let lastItem = null;    // the item of the last answer, for undo
let speed = 1;

function active() { return item && item.videos.length === 2 ? players : [players[0]]; }
function leader() { return players[0]; }
function frameTime() { return 1 / ((item && item.fps) || 30); }
function setState(s) { document.body.dataset.state = s; }

async function api(path, body) {
  const init = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  for (let attempt = 0; ; attempt++) {
    try {
      const r = await fetch("api/" + path, init);
      if (!r.ok) {
        const detail = await r.json().catch(() => ({}));
        throw new Error(detail.detail || ("HTTP " + r.status));
      }
      return await r.json();
    } catch (e) {
      if (attempt >= 4 || !(e instanceof TypeError)) throw e;  // retry network errors only: answers are idempotent
      await new Promise((ok) => setTimeout(ok, 500 * (attempt + 1)));
    }
  }
}

function status(text) { $("status").textContent = text || ""; }

async function loadNext() {
  setState("loading");
  const data = await api("next");
  $("campaign").textContent = data.campaign || "mugv annotate";
  $("who").textContent = data.annotator;
  $("progress").textContent = data.progress.done + " done, " + data.progress.remaining + " to go";
  if (data.instructions) { $("instructions").textContent = data.instructions; $("instructions-box").hidden = false; }
  $("reveal").hidden = true;
  revealed = false;
  if (data.done) {
    item = null;
    for (const v of players) { v.pause(); v.removeAttribute("src"); v.load(); }
    for (const id of ["players", "transport", "answer-pair", "answer-grade", "actions", "prompt-box"]) $(id).hidden = true;
    $("done").hidden = false;
    setState("done");
    return;
  }
  item = data;
  choices = {}; row = 0; grade = null; tags = new Set();
  played = [false, item.videos.length < 2]; lastTime = [0, 0];
  plays = 0; seeks = 0; shownAt = performance.now();
  $("done").hidden = true;
  for (const id of ["players", "transport", "actions", "prompt-box"]) $(id).hidden = false;
  $("prompt").textContent = item.prompt;
  const img = $("cond-image");
  if (item.image) { img.src = item.image; img.hidden = false; } else { img.hidden = true; img.removeAttribute("src"); }
  const pair = item.videos.length === 2;
  $("fig1").hidden = !pair;
  $("cap0").textContent = pair ? "Left" : "Clip";
  item.videos.forEach((url, i) => { players[i].src = url; players[i].load(); players[i].playbackRate = speed; });
  $("answer-pair").hidden = !pair;
  $("answer-grade").hidden = pair;
  if (pair) buildAspects(); else buildTags();
  document.querySelectorAll("#help .pair").forEach((e) => (e.hidden = !pair));
  document.querySelectorAll("#help .grade").forEach((e) => (e.hidden = pair));
  document.body.dataset.item = item.item;
  refresh();
  setState("ready");
  status(item.require_full_play ? "Play both clips to the end once (space), then vote." : "");
}

function buildAspects() {
  const table = $("aspects");
  table.textContent = "";
  item.aspects.forEach((aspect, i) => {
    const tr = table.insertRow();
    tr.dataset.aspect = aspect.key;
    const th = document.createElement("th");
    th.textContent = aspect.label;
    tr.appendChild(th);
    for (const value of Object.values(PAIR_KEYS)) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = PAIR_LABELS[value];
      b.dataset.choice = value;
      b.addEventListener("click", () => { row = i; choose(value); });
      tr.insertCell().appendChild(b);
    }
  });
}

function buildTags() {
  const box = $("tags");
  box.textContent = "";
  item.tags.forEach((tag, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.tag = tag;
    b.textContent = (i < TAG_KEYS.length ? TAG_KEYS[i] + " " : "") + tag;
    b.addEventListener("click", () => toggleTag(tag));
    box.appendChild(b);
  });
}

function votingOpen() { return !item.require_full_play || played.every(Boolean); }

function complete() {
  if (!item) return false;
  if (item.videos.length === 2) return item.aspects.every((a) => choices[a.key]);
  return grade !== null;
}

function refresh() {
  if (!item) return;
  const open = votingOpen();
  document.querySelectorAll("#aspects tr").forEach((tr, i) => {
    tr.classList.toggle("current", i === row);
    tr.querySelectorAll("button").forEach((b) => {
      b.disabled = !open;
      b.classList.toggle("selected", choices[tr.dataset.aspect] === b.dataset.choice);
    });
  });
  document.querySelectorAll("#grades button").forEach((b) => {
    b.disabled = !open;
    b.classList.toggle("selected", b.dataset.grade === grade);
  });
  document.querySelectorAll("#tags button").forEach((b) => b.classList.toggle("selected", tags.has(b.dataset.tag)));
  $("submit").disabled = !(open && complete()) || busy;
  $("watched").textContent = played.every(Boolean) ? "watched" : "not yet watched to the end";
  $("play").innerHTML = leader().paused ? "&#9654;" : "&#10074;&#10074;";
  if (open && document.body.dataset.voting === "closed") status("");
  document.body.dataset.voting = open ? "open" : "closed";
}

function choose(value) {
  if (!votingOpen()) { status("Watch both clips to the end first."); return; }
  choices[item.aspects[row].key] = value;
  if (row < item.aspects.length - 1) row += 1;
  refresh();
}

function setGrade(value) {
  if (!votingOpen()) { status("Watch the clip to the end first."); return; }
  grade = value;
  refresh();
}

function toggleTag(tag) {
  if (tags.has(tag)) tags.delete(tag); else tags.add(tag);
  refresh();
}

async function submit() {
  if (!item || busy || !votingOpen() || !complete()) return;
  busy = true;
  refresh();
  const body = { item: item.item, time_ms: Math.round(performance.now() - shownAt), plays, seeks, full_watch: played.every(Boolean) };
  if (item.videos.length === 2) body.choices = choices; else { body.grade = grade; body.tags = [...tags]; }
  try {
    const result = await api("answer", body);
    lastItem = result.item;
    for (const v of active()) v.pause();
    if (result.reveal) {
      revealed = true;
      $("reveal").textContent = "Left was " + result.reveal.left + ", right was " + result.reveal.right + ". Press Enter for the next pair.";
      $("reveal").hidden = false;
      setState("revealed");
    } else {
      await loadNext();
    }
  } catch (e) {
    status("Not saved: " + e.message);
  } finally {
    busy = false;
    refresh();
  }
}

async function undo() {
  if (!lastItem || busy) return;
  busy = true;
  try {
    const r = await api("undo", { item: lastItem });
    status(r.withdrawn ? "Last answer taken back." : "Nothing to undo.");
    lastItem = null;
    await loadNext();
  } finally {
    busy = false;
    refresh();
  }
}

// ---- synchronised transport: the left clip leads, the right follows within half a frame ----

// Re-seeking a paused clip to where it already is can make Chrome jump to its end: every seek goes
// through setTime, which skips those. `loop` is set only while playing: Chrome wraps a paused
// looping clip to 0 when it is seeked to its last frame.
function setTime(v, t) { if (Math.abs(v.currentTime - t) > 1e-6) v.currentTime = t; }
function playAll() {
  plays += 1;
  const loop = $("loop").checked;
  for (const v of active()) { v.loop = loop; setTime(v, leader().currentTime); v.play().catch(() => {}); }
}
function pauseAll() {
  for (const v of active()) { v.pause(); v.loop = false; }
  const t = leader().currentTime;
  for (const v of active()) if (v !== leader()) setTime(v, t);
}
function togglePlay() { if (leader().paused) playAll(); else pauseAll(); refresh(); }
function seekAll(t) {
  seeks += 1;
  const d = leader().duration || 0;
  t = Math.max(0, Math.min(t, Math.max(0, d - frameTime() / 2)));
  for (const v of active()) setTime(v, t);
}
function changeSpeed(step) {
  const i = Math.max(0, Math.min(SPEEDS.length - 1, SPEEDS.indexOf(speed) + step));
  speed = SPEEDS[i];
  for (const v of players) v.playbackRate = speed;
  $("speed").textContent = speed + "x";
}
function stepFrames(n) {
  pauseAll();
  const ft = frameTime();
  const index = Math.floor(leader().currentTime / ft + 1e-3) + n;
  seekAll((Math.max(0, index) + 0.5) * ft);
  refresh();
}

function follow() {
  if (!item || item.videos.length < 2) return;
  const [a, b] = players;
  if (!a.paused && b.paused) { b.loop = a.loop; b.play().catch(() => {}); }
  if (a.paused && !b.paused) b.pause();
  if (Math.abs(b.currentTime - a.currentTime) > frameTime() / 2 && !a.seeking) setTime(b, a.currentTime);
}

function watchProgress(i) {
  const v = players[i];
  const t = v.currentTime, d = v.duration;
  if (!v.paused && d && (t >= d - 2 * frameTime() || t < lastTime[i] - 0.25)) played[i] = true;
  lastTime[i] = t;
}

players.forEach((v, i) => {
  v.addEventListener("timeupdate", () => {
    watchProgress(i);
    if (i === 0) {
      follow();
      const d = v.duration || 0;
      $("clock").textContent = v.currentTime.toFixed(2) + " / " + d.toFixed(2) + " s";
      if (d) $("seek").value = Math.round((1000 * v.currentTime) / d);
    }
    refresh();
  });
  v.addEventListener("ended", () => { played[i] = true; refresh(); });
  v.addEventListener("seeked", () => { lastTime[i] = v.currentTime; });
});
if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
  const onFrame = () => { follow(); players[0].requestVideoFrameCallback(onFrame); };
  players[0].requestVideoFrameCallback(onFrame);
}

$("seek").addEventListener("input", (e) => seekAll(((leader().duration || 0) * e.target.value) / 1000));
$("play").addEventListener("click", togglePlay);
$("loop").addEventListener("change", (e) => players.forEach((v) => (v.loop = e.target.checked && !v.paused)));
$("submit").addEventListener("click", submit);
$("undo").addEventListener("click", undo);
$("help-button").addEventListener("click", () => ($("help").hidden = !$("help").hidden));
$("help").addEventListener("click", () => ($("help").hidden = true));
document.querySelectorAll("#grades button").forEach((b) => b.addEventListener("click", () => setGrade(b.dataset.grade)));

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const key = e.key;
  if (key === "?") { $("help").hidden = !$("help").hidden; e.preventDefault(); return; }
  if (key === "Escape") { $("help").hidden = true; return; }
  if (!item) return;
  if (revealed) { if (key === "Enter") { e.preventDefault(); loadNext(); } return; }
  const pair = item.videos.length === 2;
  if (key === " ") { e.preventDefault(); togglePlay(); }
  else if (key === "," || (key === "ArrowLeft" && !e.shiftKey)) { e.preventDefault(); stepFrames(-1); }
  else if (key === "." || (key === "ArrowRight" && !e.shiftKey)) { e.preventDefault(); stepFrames(1); }
  else if (key === "ArrowLeft") { e.preventDefault(); seekAll(leader().currentTime - 1); }
  else if (key === "ArrowRight") { e.preventDefault(); seekAll(leader().currentTime + 1); }
  else if (key === "r") { seekAll(0); playAll(); }
  else if (key === "l") { $("loop").click(); }
  else if (key === "-" || key === "=") { changeSpeed(key === "-" ? -1 : 1); }
  else if (key === "u") { undo(); }
  else if (key === "Enter") { e.preventDefault(); submit(); }
  else if (pair && PAIR_KEYS[key]) { choose(PAIR_KEYS[key]); }
  else if (pair && (key === "Tab" || key === "ArrowDown" || key === "ArrowUp")) {
    e.preventDefault();
    const n = item.aspects.length;
    row = (row + ((key === "ArrowUp" || (key === "Tab" && e.shiftKey)) ? n - 1 : 1)) % n;
    refresh();
  }
  else if (!pair && GRADE_KEYS[key]) { setGrade(GRADE_KEYS[key]); }
  else if (!pair && TAG_KEYS.includes(key) && TAG_KEYS.indexOf(key) < item.tags.length) { toggleTag(item.tags[TAG_KEYS.indexOf(key)]); }
});

loadNext().catch((e) => status("Cannot load: " + e.message));
