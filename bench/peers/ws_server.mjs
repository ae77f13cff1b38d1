// Peer 1: a minimal Node "ws" broadcast server speaking explorerd's /v1/stream subscribe
// protocol (channels newBlocks/newTxs, "batch": true), fed the same blocks at the same rate
// as bench/hubserver.py and logging hand-offs the same way.
//
//   node bench/peers/ws_server.mjs --events events.json [--rate 1] [--mode send|prepared]
//
// --mode send (default, the idiom): each message is JSON.stringify'd once per event, then
//   client.send(str) for every subscriber and every message.
// --mode prepared: each message is also framed once (ws Sender.frame) and a client gets
//   its frames for an event in one corked socket write, like explorerd's one write per client.
// Neither has a slow-client policy: ws buffers without bound for a client that does not read.
//
// --events: a JSON list of {"block": newBlock data, "txs": [newTx data, ...]}.
// Control protocol (stdin "stats" / "go" / "quit"; JSON lines out) as in bench/benchserver.py;
// times are CLOCK_MONOTONIC seconds (process.hrtime).
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import WebSocket, { Sender, WebSocketServer } from "ws";

const args = {};
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (!a.startsWith("--")) continue;
  const next = process.argv[i + 1];
  if (next !== undefined && !next.startsWith("--")) { args[a.slice(2)] = next; i++; } else args[a.slice(2)] = "true";
}
const allEvents = JSON.parse(readFileSync(args.events, "utf8"));
const events = args.count ? allEvents.slice(0, parseInt(args.count, 10)) : allEvents;
const rate = parseFloat(args.rate || "1");
const mode = args.mode || "send";
const port = parseInt(args.port || "0", 10);
const backlog = parseInt(args.backlog || "4096", 10);

const mono = () => Number(process.hrtime.bigint()) / 1e9;
const emit = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const CHANNELS = new Set(["newBlocks", "newTxs"]);

const clients = new Set();
const blockSubs = new Set(), txSubs = new Set(), batchSubs = new Set();

function resubscribe(ws) {
  blockSubs.delete(ws); txSubs.delete(ws); batchSubs.delete(ws);
  if (ws.channels.has("newBlocks")) blockSubs.add(ws);
  if (ws.channels.has("newTxs")) (ws.batch ? batchSubs : txSubs).add(ws);
}

const http = createServer((req, res) => { res.writeHead(404); res.end(); });
const wss = new WebSocketServer({ server: http, path: "/v1/stream", perMessageDeflate: false });
wss.on("connection", (ws) => {
  ws.channels = new Set();
  ws.batch = false;
  clients.add(ws);
  ws.on("message", (data, isBinary) => {
    let m;
    try { m = JSON.parse(data); } catch { m = null; }
    if (!m || typeof m.action !== "string") {
      ws.send(JSON.stringify({ type: "error", error: { code: "invalid_message", message: "bad message" } }));
      return;
    }
    if (m.action === "ping") { ws.send('{"type":"pong"}'); return; }
    const chans = (Array.isArray(m.channels) ? m.channels : []).filter((c) => CHANNELS.has(c));
    if (m.action === "subscribe") {
      for (const c of chans) ws.channels.add(c);
      if (chans.includes("newTxs")) ws.batch = m.batch === true;
    } else if (m.action === "unsubscribe") {
      for (const c of chans) ws.channels.delete(c);
    } else {
      ws.send(JSON.stringify({ type: "error", error: { code: "unknown_action", message: m.action } }));
      return;
    }
    resubscribe(ws);
    ws.send(JSON.stringify({ type: m.action + "d", channels: [...ws.channels].sort() }));
  });
  ws.on("close", () => {
    clients.delete(ws); blockSubs.delete(ws); txSubs.delete(ws); batchSubs.delete(ws);
  });
  ws.on("error", () => {});
});

const OPEN = WebSocket.OPEN;
const frameOptions = { fin: true, rsv1: false, opcode: 1, mask: false, readOnly: true };
const framed = (str) => Buffer.concat(Sender.frame(Buffer.from(str), frameOptions));

function publishSend(block, txs) {
  const blockStr = JSON.stringify({ type: "newBlock", data: block });
  for (const ws of blockSubs) if (ws.readyState === OPEN) ws.send(blockStr);
  if (txs.length && txSubs.size) {
    const txStrs = txs.map((tx) => JSON.stringify({ type: "newTx", data: tx }));
    for (const ws of txSubs) if (ws.readyState === OPEN) for (const s of txStrs) ws.send(s);
  }
  if (txs.length && batchSubs.size) {
    const s = JSON.stringify({ type: "newTxs", data: { block_height: block.height, block_hash: block.hash, txs } });
    for (const ws of batchSubs) if (ws.readyState === OPEN) ws.send(s);
  }
}

function publishPrepared(block, txs) {
  const blockFrame = framed(JSON.stringify({ type: "newBlock", data: block }));
  const txFrames = txs.length && txSubs.size
    ? Buffer.concat(txs.map((tx) => framed(JSON.stringify({ type: "newTx", data: tx })))) : null;
  const batchFrame = txs.length && batchSubs.size
    ? framed(JSON.stringify({ type: "newTxs", data: { block_height: block.height, block_hash: block.hash, txs } })) : null;
  for (const ws of clients) {
    if (ws.readyState !== OPEN) continue;
    const b = blockSubs.has(ws);
    const t = txFrames !== null && txSubs.has(ws) ? txFrames : batchFrame !== null && batchSubs.has(ws) ? batchFrame : null;
    if (!b && t === null) continue;
    const socket = ws._socket;
    if (b && t !== null) { socket.cork(); socket.write(blockFrame); socket.write(t); socket.uncork(); }
    else socket.write(b ? blockFrame : t);
  }
}

const publish = mode === "prepared" ? publishPrepared : publishSend;

function stats(extra = {}) {
  const cpu = process.cpuUsage();
  emit({ event: "stats", t: mono(), cpu: (cpu.user + cpu.system) / 1e6, sys: cpu.system / 1e6, rss_kb: Math.round(process.memoryUsage.rss() / 1024),
    clients: clients.size, sent, slow_closed: 0, ...extra });
}

let sent = 0, started = false;
function go() {
  if (started) return;
  started = true;
  const t0 = mono();
  const one = () => {
    if (sent >= events.length) { emit({ event: "sent_all", t: mono() }); return; }
    const e = events[sent];
    const t = mono();
    publish(e.block, e.txs);
    const took = mono() - t;
    emit({ event: "block", t, t_sched: t0 + sent / rate, took, clients: clients.size, height: e.block.height, txs: e.txs.length });
    sent++;
    const wait = (t0 + sent / rate - mono()) * 1000;
    setTimeout(one, Math.max(0, wait));
  };
  one();
}

http.listen({ port, host: "127.0.0.1", backlog }, () => {
  emit({ event: "listening", port: http.address().port, pid: process.pid, mode });
});
const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const cmd = line.trim();
  if (cmd === "stats") stats();
  else if (cmd === "go") go();
  else if (cmd === "quit") { stats({ final: true }); process.exit(0); }
});
rl.on("close", () => process.exit(0));
