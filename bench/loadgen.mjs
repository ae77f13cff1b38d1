// Load generator: N WebSocket clients in one process (Node ws), each subscribing
// and recording every message's arrival.  Prints one JSON summary line on exit.
//
//   node loadgen.mjs --url ws://127.0.0.1:8080/v1/stream --clients 1000 \
//        --channels newBlocks,newTxs --duration 20 [--batch] [--silent 0.1] [--hosts 4]
//
// Arrival is recorded per (client, block height): the time its newBlock came, the time its
// last newTx for that block came, and how many newTx it got. Clients with --silent share
// stop reading after subscribing (their socket is paused), to test slow-client isolation.
import WebSocket from "ws";
import { performance } from "node:perf_hooks";

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1] && !all[i + 1].startsWith("--") ? all[i + 1] : "true"]);
  return acc;
}, []));
const url = args.url;
const N = parseInt(args.clients || "100", 10);
const channels = (args.channels || "newBlocks,newTxs").split(",");
const duration = parseFloat(args.duration || "20") * 1000;
const silentShare = parseFloat(args.silent || "0");
const hosts = parseInt(args.hosts || "1", 10);
const batch = args.batch === "true";
const epoch0 = Date.now() - performance.now();          // wall clock = epoch0 + performance.now()
const now = () => (epoch0 + performance.now()) / 1000;   // seconds since the Unix epoch, sub-ms

const clients = [];
let opened = 0, subscribed = 0, closed = 0, errors = 0;
const closeCodes = {};
let ready;
const allSubscribed = new Promise(r => (ready = r));

function start(i) {
  const silent = i < Math.round(N * silentShare);
  const localAddress = `127.0.0.${1 + (i % hosts)}`;
  const ws = new WebSocket(url, { perMessageDeflate: false, localAddress });
  const c = { i, silent, ws, blocks: new Map(), txs: 0, dupes: 0, messages: 0 };
  clients.push(c);
  ws.on("open", () => {
    opened++;
    const sub = { action: "subscribe", channels };
    if (batch) sub.batch = true;
    ws.send(JSON.stringify(sub));
  });
  ws.on("message", (data) => {
    const t = now();
    c.messages++;
    const m = JSON.parse(data);
    if (m.type === "subscribed") {
      if (++subscribed === N) ready();
      if (silent) ws._socket.pause();
      return;
    }
    if (m.type === "newBlock") {
      const h = m.data.height;
      if (c.blocks.has(h)) { c.dupes++; return; }
      c.blocks.set(h, { block: t, last: t, txs: 0, expect: m.data.tx_count });
    } else if (m.type === "newTx") {
      const h = m.data.block_height;
      let b = c.blocks.get(h);
      if (!b) { b = { block: null, last: t, txs: 0, expect: null }; c.blocks.set(h, b); }
      b.txs++; b.last = t; c.txs++;
    } else if (m.type === "newTxs") {
      const h = m.data.block_height;
      let b = c.blocks.get(h);
      if (!b) { b = { block: null, last: t, txs: 0, expect: null }; c.blocks.set(h, b); }
      b.txs += m.data.txs.length; b.last = t; c.txs += m.data.txs.length;
    }
  });
  ws.on("close", (code) => { closed++; closeCodes[code] = (closeCodes[code] || 0) + 1; });
  ws.on("error", () => { errors++; });
}

const t0 = now();
for (let i = 0; i < N; i++) {
  start(i);
  if (i % 200 === 199) await new Promise(r => setTimeout(r, 5));
}
const timer = setTimeout(() => ready(), 60000);
await allSubscribed;
clearTimeout(timer);
console.error(`loadgen: ${subscribed}/${N} subscribed in ${(now() - t0).toFixed(2)}s`);
process.stdout.write(JSON.stringify({ event: "ready", t: now(), subscribed }) + "\n");
await new Promise(r => setTimeout(r, duration));

const summary = { event: "done", clients: N, subscribed, opened, closed, errors, closeCodes, silent: 0, perClient: [] };
for (const c of clients) {
  if (c.silent) { summary.silent++; continue; }
  const blocks = {};
  for (const [h, b] of c.blocks) blocks[h] = [b.block, b.last, b.txs, b.expect];
  summary.perClient.push({ dupes: c.dupes, txs: c.txs, blocks });
}
process.stdout.write(JSON.stringify(summary) + "\n");
for (const c of clients) c.ws.terminate();
process.exit(0);
