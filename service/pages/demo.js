// rnnserve live demo: plain JavaScript and a canvas, no libraries. Each tab opens a session of the
// server's default model for its task and streams events over the session's WebSocket.
"use strict";

const $ = (id) => document.getElementById(id);
const keyInput = $("key");
keyInput.value = localStorage.getItem("rnnserve-key") || "";
// a new key starts over: the sessions belong to the key that opened them
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  localStorage.setItem("rnnserve-key", keyInput.value);
  location.reload();
});

function headers() {
  const h = { "content-type": "application/json" };
  if (keyInput.value) h.authorization = "Bearer " + keyInput.value;
  return h;
}

async function api(method, path, body) {
  const r = await fetch(path, { method, headers: headers(), body: body && JSON.stringify(body) });
  const answer = await r.json().catch(() => ({}));
  if (r.status === 401) throw keyError(answer);
  if (!r.ok) throw new Error((answer.error && answer.error.message) || r.status + " " + r.statusText);
  return answer;
}

// 401: the server has API keys and this page sent none or a wrong one
function keyError(answer) {
  keyInput.focus();
  const why = (answer.error && answer.error.message) || "401 Unauthorized";
  return new Error(keyInput.value
    ? "The server refused this API key (" + why + "): type the right key above and press Use key."
    : "This server needs an API key: type it above and press Use key.");
}

async function defaultModel(task) {
  const { models } = await api("GET", "/v1/models");
  const found = models.find((m) => m.task === task && m.default) || models.find((m) => m.task === task);
  if (!found) throw new Error("this server has no " + task + " model");
  return found;
}

// One session and its WebSocket; send() resolves with the answer to that message (answers come in order).
class Stream {
  static async open(model) {
    const { session_id } = await api("POST", "/v1/sessions", { model: model.name, version: model.version });
    const url = new URL("/v1/sessions/" + session_id + "/stream", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (keyInput.value) url.searchParams.set("token", keyInput.value);
    const ws = new WebSocket(url);
    await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error("WebSocket failed")); });
    return new Stream(session_id, ws);
  }
  constructor(id, ws) {
    this.id = id; this.ws = ws; this.waiting = [];
    ws.onmessage = (m) => {
      const answer = JSON.parse(m.data);
      const waiter = this.waiting.shift();  // none: the server refused the stream itself (then closes it)
      if (waiter) answer.error ? waiter.fail(new Error(answer.error.message)) : waiter.ok(answer);
    };
    ws.onclose = (e) => {
      const why = "stream closed" + (e.code === 4401 ? ": " + keyError({}).message : e.reason ? " (" + e.reason + ")" : "");
      this.closed = why;
      this.waiting.splice(0).forEach(({ fail }) => fail(new Error(why)));
    };
  }
  send(body) {
    if (this.ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error(this.closed || "stream closed"));
    return new Promise((ok, fail) => { this.waiting.push({ ok, fail }); this.ws.send(JSON.stringify(body)); });
  }
  reset() { return api("POST", "/v1/sessions/" + this.id + "/reset"); }
}

// ---- tabs ---------------------------------------------------------------------------------------

const tabs = { lm: startLm, sensor: startSensor };
const started = {};
for (const name of Object.keys(tabs)) {
  $("tab-" + name).addEventListener("click", () => show(name));
}
function show(name) {
  for (const other of Object.keys(tabs)) {
    $(other).classList.toggle("on", other === name);
    $("tab-" + other).classList.toggle("on", other === name);
  }
  if (!started[name]) started[name] = tabs[name]();
  location.hash = name;
}

// ---- lm: next-word suggestions while typing -----------------------------------------------------

// WikiText writes "well-known" as "well @-@ known": show and insert the plain mark
const PLAIN = { "@-@": "-", "@,@": ",", "@.@": "." };
const GLUED = new Set([".", ",", ";", ":", "!", "?", ")", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "@-@", "@,@", "@.@"]);

async function startLm() {
  const status = $("lm-status");
  const text = $("text");
  let stream, last, sent = "", suggestions = [], busy = false;
  // a line start for the model (WikiText's lines end with <eos>), so the first word has suggestions too
  const begin = async () => { await stream.reset(); return stream.send({ tokens: ["<eos>"], top_k: 30 }); };
  try {
    stream = await Stream.open(await defaultModel("lm"));
    last = await begin();
  } catch (e) { status.textContent = e.message; status.className = "status error"; return; }

  async function sync() {
    if (busy) return;
    busy = true;
    try {
      for (;;) {
        const value = text.value;
        const cut = Math.max(value.lastIndexOf(" "), value.lastIndexOf("\n")) + 1;
        const complete = value.slice(0, cut);  // the words followed by a space: the model has seen them
        if (complete === sent) break;
        if (complete.startsWith(sent)) {
          last = await stream.send({ text: complete.slice(sent.length), top_k: 30 });
        } else {  // an edit before the end: start over from the line start
          last = await begin();
          if (complete.trim()) last = await stream.send({ text: complete, top_k: 30 });
        }
        sent = complete;
        status.textContent = "seq " + last.seq + " (events the session has consumed)";
        status.className = "status";
      }
      render();
    } catch (e) {
      status.textContent = e.message; status.className = "status error";
    } finally { busy = false; }
  }

  function render() {
    const value = text.value;
    const partial = value.slice(Math.max(value.lastIndexOf(" "), value.lastIndexOf("\n")) + 1);
    const next = last.outputs[last.outputs.length - 1].next;
    suggestions = next.filter((n) => n.token.startsWith(partial)).slice(0, 6);
    const box = $("suggestions");
    box.replaceChildren(...suggestions.map((n) => {
      const b = document.createElement("button");
      b.textContent = PLAIN[n.token] || n.token;
      const p = document.createElement("small");
      p.textContent = (100 * n.prob).toFixed(1) + "%";
      b.append(p);
      b.addEventListener("click", () => accept(n.token, partial));
      return b;
    }));
  }

  function accept(token, partial) {
    let value = text.value.slice(0, text.value.length - partial.length);
    // the model's tokens go in as WikiText has them ("city 's"), so the session sees what it was trained on
    text.value = value + token + " ";
    text.focus();
    sync();
  }

  text.addEventListener("input", () => { render(); sync(); });
  render();
  text.focus();
}

// ---- sensor: a simulated plant, streamed and drawn ----------------------------------------------

// The synthetic plant the shipped sensor model was trained on (training/data/synthetic.py, plant_seed 0):
// its levels, amplitudes and phases, with fresh noise. One step is 10 minutes; t = 0 is a Monday 00:00.
const DAY = 144, WEEK = 1008;
const PLANT = { phase: [4.0021, 1.6951, 0.2574, 0.1038], amp: [3.7199, 4.8255, 3.2133, 0.3459],
  temp: 21.1745, humid: 59.0261, power: 46.3171, business: 20.0411 };

function gauss() {
  const u = 1 - Math.random(), v = Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

function* plant(start) {
  let arT = 0, arH = 0;
  for (let t = start; ; t++) {
    const day = 2 * Math.PI * t / DAY, week = 2 * Math.PI * t / WEEK;
    const hour = (t % DAY) / 6, weekday = Math.floor(t / DAY) % 7 < 5 ? 1 : 0;
    const business = weekday / ((1 + Math.exp(-(hour - 8) * 2)) * (1 + Math.exp((hour - 18) * 2)));
    const c = PLANT.amp.map((a, i) => a * Math.sin((i === 3 ? 2 * Math.PI * t / 12 : day) + PLANT.phase[i]));
    arT = 0.95 * arT + 0.08 * gauss();
    arH = 0.9 * arH + 0.3 * gauss();
    const season = Math.sin(2 * Math.PI * t / (13 * WEEK));
    const tempBase = PLANT.temp + 0.8 * Math.sin(week) + 1.5 * season + arT;
    const temp = tempBase + 0.15 * gauss();
    const humid = PLANT.humid - 1.2 * (c[0] + temp - PLANT.temp) + arH + 0.5 * gauss();
    const power = PLANT.power + PLANT.business * business + 0.8 * gauss();
    const vib = 1.5 + 0.03 * power + 0.05 * gauss();
    yield [temp + c[0], humid + c[1], power + c[2], vib + c[3]];
  }
}

const WINDOW = 288;  // two days on screen

async function startSensor() {
  const status = $("sensor-status");
  let model, stream;
  try {
    model = await defaultModel("sensor");
    stream = await Stream.open(model);
  } catch (e) { status.textContent = e.message; status.className = "status error"; return; }
  const names = model.features || ["temperature", "humidity", "power", "vibration"];
  const points = [];  // {x: reading, band: [mean, std] predicted one step earlier, flagged}
  let pending = null, running = true, queue = [], flagged = 0, spikeNext = false;
  const source = plant(3 * DAY);

  async function push(readings) {
    const answer = await stream.send({ readings });
    answer.outputs.forEach((o, i) => {
      points.push({ x: readings[i], band: pending, flagged: o.is_anomaly === true, p: o.probability });
      if (o.is_anomaly) flagged++;
      pending = [o.predicted_mean, o.predicted_std];
    });
    while (points.length > WINDOW) points.shift();
    draw();
    status.textContent = `seq ${answer.seq}: ${flagged} reading(s) flagged so far`;
    status.className = "status";
  }

  // a day of readings at once, so that the model's state has settled before the live part
  const warm = Array.from({ length: DAY }, () => source.next().value);
  try { await push(warm); } catch (e) { status.textContent = e.message; status.className = "status error"; return; }

  async function tick() {
    if (running) {
      let reading = queue.length ? queue.shift() : source.next().value;
      if (spikeNext) {
        reading = reading.slice();
        reading[2] += 5 * 8.0;  // power, 5 of its standard deviations
        spikeNext = false;
      }
      try { await push([reading]); } catch (e) { status.textContent = e.message; status.className = "status error"; }
    }
    setTimeout(tick, Number($("speed").value));
  }
  $("run").addEventListener("click", () => { running = !running; $("run").textContent = running ? "Pause" : "Run"; });
  $("spike").addEventListener("click", () => { spikeNext = true; });
  $("send-paste").addEventListener("click", () => {
    const rows = $("paste").value.split("\n").map((l) => l.split(/[,;\s]+/).filter(Boolean).map(Number));
    const good = rows.filter((r) => r.length === names.length && r.every(Number.isFinite));
    queue.push(...good);
    status.textContent = `${good.length} pasted reading(s) queued` + (good.length < rows.filter((r) => r.length).length ? " (some lines skipped)" : "");
  });
  tick();

  function draw() {
    const canvas = $("chart"), g = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height, rows = names.length, rowH = H / rows, left = 90;
    g.clearRect(0, 0, W, H);
    g.font = "12px system-ui, sans-serif";
    const xOf = (i) => left + (W - left - 8) * i / (WINDOW - 1);
    names.forEach((name, f) => {
      const top = f * rowH + 6, h = rowH - 14;
      const values = points.flatMap((p) => [p.x[f], ...(p.band ? [p.band[0][f] - 2 * p.band[1][f], p.band[0][f] + 2 * p.band[1][f]] : [])]);
      let lo = Math.min(...values), hi = Math.max(...values);
      if (!(hi > lo)) { lo -= 1; hi += 1; }
      const yOf = (v) => top + h - h * (v - lo) / (hi - lo);
      g.fillStyle = "#333";
      g.fillText(name, 4, top + 14);
      g.fillStyle = "#888";
      g.fillText(hi.toFixed(1), 4, top + 30);
      g.fillText(lo.toFixed(1), 4, top + h);
      g.strokeStyle = "#eee"; g.strokeRect(left, top, W - left - 8, h);
      // the band predicted for each reading one step before it came
      g.fillStyle = "rgba(120, 160, 200, 0.35)";
      points.forEach((p, i) => {
        if (!p.band) return;
        const m = p.band[0][f], s = p.band[1][f];
        g.fillRect(xOf(i) - 1, yOf(m + 2 * s), 2.2, yOf(m - 2 * s) - yOf(m + 2 * s));
      });
      g.strokeStyle = "#2b6cb0"; g.lineWidth = 1.4; g.beginPath();
      points.forEach((p, i) => (i ? g.lineTo(xOf(i), yOf(p.x[f])) : g.moveTo(xOf(i), yOf(p.x[f]))));
      g.stroke();
      g.fillStyle = "#d00";
      points.forEach((p, i) => {
        if (p.flagged) { g.beginPath(); g.arc(xOf(i), yOf(p.x[f]), 3.5, 0, 2 * Math.PI); g.fill(); }
      });
    });
  }
}

show(location.hash === "#sensor" ? "sensor" : "lm");
