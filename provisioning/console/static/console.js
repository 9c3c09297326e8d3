// The console's only script: the live queue (server-sent events from /events) with a visible and an
// audible cue, and the image-decoded flags the tests read. Nothing is written to browser storage.
"use strict";

(function () {
  let audio = null;
  let soundOn = true;
  const fresh = new Set();  // alerts that arrived while this page was open: highlighted until reload

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

  function refreshQueue(eventId) {
    return fetch("/queue/rows", {credentials: "same-origin", cache: "no-store"}).then(function (r) {
      if (r.status === 401) { banner("Session ended: log in again to keep receiving alerts.", "bad"); return; }
      return r.text().then(function (html) {
        const body = document.getElementById("queue-rows");
        body.innerHTML = html;
        const rows = body.querySelectorAll("tr.alert-row");
        document.getElementById("open-count").textContent = String(rows.length);
        document.title = "Queue (" + rows.length + ") · edge console";
        fresh.add(eventId);
        rows.forEach(function (row) { if (fresh.has(row.dataset.event)) row.classList.add("new"); });
      });
    });
  }

  function live() {
    const state = document.getElementById("live-state");
    const source = new EventSource("/events");
    source.onopen = function () { state.textContent = "live"; state.className = "dot on"; };
    source.onerror = function () { state.textContent = "reconnecting"; state.className = "dot off"; };
    source.addEventListener("alert", function (e) {
      refreshQueue(e.data).then(function () {
        banner("New alert: review it now.", "new");
        beep();
      });
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
