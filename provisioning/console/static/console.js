// The console's only script: the live queue (server-sent events from /events) with a visible and an
// audible cue, and the image-decoded flags the tests read. Nothing is written to browser storage.
"use strict";

(function () {
  let audio = null;
  let soundOn = true;

  function beep() {
    // WebAudio, generated here: no sound file, nothing fetched. Browsers start audio only after the
    // officer has interacted with the page once (autoplay policy); the button says when it is blocked.
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!soundOn || !Ctx) return;
    if (audio === null) audio = new Ctx();
    if (audio.state === "suspended") audio.resume();
    const t = audio.currentTime;
    [0, 0.25].forEach(function (offset) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = "square";
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.0001, t + offset);
      gain.gain.exponentialRampToValueAtTime(0.2, t + offset + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + offset + 0.18);
      osc.connect(gain).connect(audio.destination);
      osc.start(t + offset);
      osc.stop(t + offset + 0.2);
    });
    document.body.dataset.beeps = String(Number(document.body.dataset.beeps || "0") + 1);
  }

  function banner(text, kind) {
    const b = document.getElementById("live-banner");
    if (!b) return;
    b.textContent = text;
    b.className = "banner " + kind;
    b.hidden = false;
  }

  function counted(body) {
    const rows = body.querySelectorAll("tr.alert-row");
    if (rows.length === 0 && !body.querySelector("tr.empty")) {
      body.innerHTML = '<tr class="empty"><td colspan="7">No open alerts.</td></tr>';
    }
    document.getElementById("open-count").textContent = String(rows.length);
    document.title = "Queue (" + rows.length + ") · edge console";
  }

  function rowOf(body, eventId) {
    return body.querySelector('tr[data-event="' + CSS.escape(eventId) + '"]');
  }

  function parsed(html) {
    const holder = document.createElement("tbody");
    holder.innerHTML = html;
    return holder.querySelector("tr.alert-row");
  }

  function added(body, msg) {
    // the server rendered the row (escaped by its templates): a row the page has is replaced (a decision
    // changed it, or a replay); a new one goes in newest first by event time. The server never sends a row
    // for an alert after its "decided" unless the alert is open again (the node refused the review).
    const row = parsed(msg.html);
    if (!row) return false;
    const old = rowOf(body, msg.id);
    if (old) {
      if (old.classList.contains("new")) row.classList.add("new");
      old.replaceWith(row);
      return false;
    }
    row.classList.add("new");
    const empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    const older = Array.from(body.querySelectorAll("tr.alert-row")).find(function (r) {
      return r.dataset.time < row.dataset.time;
    });
    body.insertBefore(row, older || null);
    counted(body);
    return true;
  }

  function live() {
    const state = document.getElementById("live-state");
    const body = document.getElementById("queue-rows");
    // from the position the page was rendered at: what arrived while it loaded comes first; on a reconnect
    // the browser sends the last id it got (Last-Event-ID) and the server sends what was missed
    const source = new EventSource("/events?since=" + encodeURIComponent(body.dataset.since || ""));
    source.onopen = function () { state.textContent = "live"; state.className = "dot on"; };
    source.onerror = function () { state.textContent = "reconnecting"; state.className = "dot off"; };
    source.addEventListener("alert", function (e) {
      if (added(body, JSON.parse(e.data))) {
        banner("New alert: review it now.", "new");
        beep();
      }
    });
    source.addEventListener("changed", function (e) {
      // a decision that did not settle it ("1 of 2", disputed): the row as it is now, no cue
      added(body, JSON.parse(e.data));
    });
    source.addEventListener("decided", function (e) {
      const id = JSON.parse(e.data).id;
      const row = rowOf(body, id);
      if (row) { row.remove(); counted(body); }
    });
    source.addEventListener("reset", function () {
      // too far behind, or the console restarted: the queue is loaded afresh
      source.close();
      window.location.reload();
    });
    source.addEventListener("ended", function () {
      source.close();
      state.textContent = "ended"; state.className = "dot off";
      banner("Session ended: log in again to keep receiving alerts.", "bad");
    });
  }

  function sound() {
    const button = document.getElementById("sound");
    if (!button) return;
    button.addEventListener("click", function () {
      soundOn = !soundOn;
      button.textContent = "Sound: " + (soundOn ? "on" : "off");
      if (soundOn) beep();
    });
    // the first interaction unlocks audio for later alerts
    document.addEventListener("pointerdown", function () {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (audio === null && Ctx) audio = new Ctx();
      if (audio && audio.state === "suspended") audio.resume();
    }, {once: true});
  }

  function images() {
    // a flag per image once decoded (naturalWidth > 0), or "broken": the tests read these
    document.querySelectorAll("img").forEach(function (img) {
      function mark() { img.dataset.decoded = img.naturalWidth > 0 ? "yes" : "broken"; }
      if (img.complete) mark(); else { img.addEventListener("load", mark); img.addEventListener("error", mark); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    images();
    if (document.getElementById("queue-rows")) { live(); sound(); }
  });
})();
