// Load generator: N WebSocket clients in one Node process (npm "ws"), each subscribing and
// recording when every message of every block arrives.  Driven by bench/run.py over stdin/stdout:
//
//   node loadgen.mjs --url ws://127.0.0.1:PORT/v1/stream --clients 1000 \
//        [--channels newBlocks,newTxs] [--batch] [--silent 0.1] [--hosts 4] [--host-base 2] \
//        [--concurrency 200] [--max-seconds 900] [--id 0] [--verify] [--silent-keepalive 15]
//        [--channels logs --logs-filters FILE --client-offset K]
//
// stdout (JSON lines):  {"event":"ready", ...}  once every client is subscribed (or gave up);
//                       {"event":"progress", ...} for each "progress" line read on stdin;
//                       {"event":"done", ...}  on "report" (or stdin EOF, or --max-seconds), then exit;
//                       with --report-file F the summary goes to F and the line is {"event":"done","file":F}.
//
// Times are CLOCK_MONOTONIC seconds (process.hrtime), the clock the servers log hand-offs with
// (Python's time.monotonic(), Node's process.hrtime), so latencies need no wall-clock sync.
// A message's arrival time is the moment the read holding its last bytes came off the socket:
// reads are stamped and queued, and parsed later in ~1 ms slices between socket polls, so
// the time spent parsing one client's frames is not charged to the next client's latency.
//
// Parsing is cheap on purpose (the client shares 2 cores with the server): ws does the handshake,
// pings and closes, but text frames are cut out of the socket's bytes here and the type, height
// and tx_index read straight from them; --verify JSON.parses every message as well and counts any
// disagreement (use it in smoke runs to check each server's output).
// Clients in the --silent share stop reading once subscribed (socket paused), to test slow-client
// isolation; at "report" they are resumed for a moment to learn how the server closed them.
// With --silent-keepalive S they send {"action":"ping"} every S s (writing, never reading), so a
// server cannot drop them for silence and only its slow-client policy can close them.
//
// --logs-filters FILE gives every client its own `logs` filter and what it should receive (bench/run.py
// writes it): {"heights": [H, ...], "filters": [[address, ...], ...], "expect": [[logs, ...], ...]},
// one filter and one row of expected log counts (per height) per client of the whole cell; this
// process's client i is the cell's client K + i (--client-offset K).  A client subscribes with
// {"logs": {"address": its filter}}, and each `logs` message is checked against its row: a message
// for a block it expects nothing of is counted as unexpected (and not as delivered), one with
// another number of logs as a count mismatch.  Without the file a `logs` subscriber takes every log.
//
// --protocol eth-subscribe speaks Ethereum JSON-RPC instead (explorerd's /v1/rpc, or a node's own
// WebSocket, e.g. anvil's): each client sends {"jsonrpc":"2.0","id":1,"method":"eth_subscribe",
// "params":["newHeads"]}, counts as subscribed on its answer, and records each eth_subscription
// notification under the block number in it ("number":"0x..").  --protocol eth-subscribe-fetch
// does the same, and on each notification asks the same connection, in one JSON-RPC batch, for
// the block with its transactions and for its receipts (eth_getBlockByNumber [n, true] +
// eth_getBlockReceipts [n], ids 2n and 2n+1): the block counts as delivered when the batch's
// answer has come (its first arrival is the notification's, its last the answer's).  An answer
// with an error or a null result counts as a fetch error and not as delivered.
//
// --protocol wamp speaks WAMP v2 over WebSocket with JSON (subprotocol wamp.2.json), what AutobahnJS
// puts on the wire: HELLO (realm --realm, default "explorer", AutobahnJS's roles), on WELCOME one
// SUBSCRIBE per topic (--channels newBlocks -> explorer.block, newTxs -> explorer.tx), subscribed
// once every SUBSCRIBED has come; each EVENT counts as the raw protocol's newBlock (its "height")
// or newTx ("block_height", "tx_index") by the subscription it is for, with the same bookkeeping.
// An ABORT or ERROR before that is a failed client (its reason in errorKinds).  Works against
// explorerd's /v1/wamp and any WAMP router (Crossbar.io) alike.
import WebSocket from "ws";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { readFileSync, writeFileSync } from "node:fs";

const args = {};
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (!a.startsWith("--")) continue;
  const next = process.argv[i + 1];
  if (next !== undefined && !next.startsWith("--")) { args[a.slice(2)] = next; i++; } else args[a.slice(2)] = "true";
}
const url = args.url;
const N = parseInt(args.clients || "100", 10);
const channels = (args.channels || "newBlocks,newTxs").split(",");
const silentShare = parseFloat(args.silent || "0");
const silentKeepalive = parseFloat(args["silent-keepalive"] || "0");
const hosts = parseInt(args.hosts || "1", 10);
const hostBase = parseInt(args["host-base"] || "1", 10);
const concurrency = parseInt(args.concurrency || "200", 10);
const maxSeconds = parseFloat(args["max-seconds"] || "900");
const connectSeconds = parseFloat(args["connect-seconds"] || "120");
const batch = args.batch === "true";
const verify = args.verify === "true";
const id = parseInt(args.id || "0", 10);
const reportFile = args["report-file"] || "";
const logPlan = args["logs-filters"] ? JSON.parse(readFileSync(args["logs-filters"], "utf8")) : null;
const clientOffset = parseInt(args["client-offset"] || "0", 10);
const protocol = args.protocol || "stream";
if (!["stream", "eth-subscribe", "eth-subscribe-fetch", "wamp"].includes(protocol)) {
  process.stderr.write(`loadgen: unknown --protocol ${protocol} (stream, eth-subscribe, eth-subscribe-fetch, wamp)\n`);
  process.exit(2);
}
const wampProtocol = protocol === "wamp";
const rpcProtocol = protocol !== "stream" && !wampProtocol;
const fetchBlocks = protocol === "eth-subscribe-fetch";

const mono = () => Number(process.hrtime.bigint()) / 1e9;
const emit = (o) => process.stdout.write(JSON.stringify(o) + "\n");

const T_OTHER = 0, T_BLOCK = 1, T_TX = 2, T_TXS = 3, T_SUB = 4, T_LOGS = 5;
const PREFIX = Buffer.from('{"type":"');
const K_HEIGHT = Buffer.from('"height":');
const K_BHEIGHT = Buffer.from('"block_height":');
const K_INDEX = Buffer.from('"tx_index":');
const K_HASH = Buffer.from('"hash":');
const K_HASHES = Buffer.from('"hashes":[');
const K_LOG_INDEX = Buffer.from('"log_index":');

function intAfter(buf, key, from = 0) {
  const i = buf.indexOf(key, from);
  if (i < 0) return -1;
  let v = 0, j = i + key.length;
  for (; j < buf.length; j++) {
    const ch = buf[j];
    if (ch < 48 || ch > 57) break;
    v = v * 10 + (ch - 48);
  }
  return v;
}

function count(buf, key) {
  let n = 0, i = buf.indexOf(key);
  while (i >= 0) { n++; i = buf.indexOf(key, i + key.length); }
  return n;
}

// -> [type, height, txIndex or txCount or logCount]
function fastParse(buf) {
  if (buf.length < 16 || buf.compare(PREFIX, 0, 9, 0, 9) !== 0) return null;
  if (buf[9] === 0x6e && buf[10] === 0x65 && buf[11] === 0x77) {            // "new..."
    if (buf[12] === 0x42) return [T_BLOCK, intAfter(buf, K_HEIGHT, 20), 0];   // newBlock
    if (buf[12] === 0x54 && buf[13] === 0x78) {                              // newTx / newTxs
      if (buf[14] === 0x22) {
        const h = intAfter(buf, K_BHEIGHT, 20);
        return [T_TX, h, intAfter(buf, K_INDEX, 20)];
      }
      if (buf[14] === 0x73 && buf[15] === 0x22) {
        const h = intAfter(buf, K_BHEIGHT, 20);
        const hi = buf.indexOf(K_HASHES);
        const n = hi >= 0 ? (buf[hi + K_HASHES.length] === 0x5d ? 0 : count(buf.subarray(hi), ",") + 1)
          : count(buf, K_HASH);
        return [T_TXS, h, n];
      }
    }
  }
  if (buf[9] === 0x6c && buf[10] === 0x6f && buf[11] === 0x67 && buf[12] === 0x73 && buf[13] === 0x22) // "logs"
    return [T_LOGS, intAfter(buf, K_BHEIGHT, 20), count(buf, K_LOG_INDEX)];
  if (buf[9] === 0x73 && buf[10] === 0x75 && buf[11] === 0x62) return [T_SUB, 0, 0]; // subscribed
  return [T_OTHER, 0, 0];
}

function slowParse(buf) {
  const m = JSON.parse(buf.toString("utf8"));
  switch (m.type) {
    case "newBlock": return [T_BLOCK, m.data.height, 0];
    case "newTx": return [T_TX, m.data.block_height, m.data.tx_index];
    case "newTxs": return [T_TXS, m.data.block_height, (m.data.txs || m.data.hashes).length];
    case "logs": return [T_LOGS, m.data.block_height, m.data.logs.length];
    case "subscribed": return [T_SUB, 0, 0];
    default: return [T_OTHER, 0, 0];
  }
}

// JSON-RPC (--protocol eth-subscribe*): a notification's block number, read straight from the frame.
const K_NOTIFICATION = Buffer.from('"method":"eth_subscription"');
const K_NUMBER = Buffer.from('"number":"0x');
const K_ID = Buffer.from('"id":');
const K_ERROR = Buffer.from('"error":');
const K_NULL_RESULT = Buffer.from('"result":null');

function hexAfter(buf, key) {
  const i = buf.indexOf(key);
  if (i < 0) return -1;
  let v = 0, j = i + key.length, digits = 0;
  for (; j < buf.length; j++) {
    const ch = buf[j];
    const d = ch >= 48 && ch <= 57 ? ch - 48 : ch >= 97 && ch <= 102 ? ch - 87 : ch >= 65 && ch <= 70 ? ch - 55 : -1;
    if (d < 0) break;
    v = v * 16 + d; digits++;
  }
  return digits ? v : -1;
}

const clients = [];
let opened = 0, subscribed = 0, failed = 0, closedN = 0, errors = 0, retries = 0, verifyErrors = 0;
let totalUnique = 0, totalDupes = 0, orderErrors = 0, otherMessages = 0;
let logsMessages = 0, logsReceived = 0, logsBytes = 0, logsUnexpected = 0, logsMismatch = 0;
let fetchSent = 0, fetchAnswers = 0, fetchErrors = 0, fetchBytes = 0, fetchUnexpected = 0, subscribeErrors = 0;
const fetchErrorKinds = {};
const closeCodes = {};
const errorKinds = {};
const silentCloseCodes = {};
let readyResolve;
const allSettled = new Promise((r) => (readyResolve = r));
let settled = 0;                       // clients subscribed or given up
const settle = () => { if (++settled === N) readyResolve(); };

function isSilent(i) {
  return Math.floor((i + 1) * silentShare) > Math.floor(i * silentShare);
}

// Per client, per block height: [first arrival, last arrival, unique messages, next tx index, txs,
// newBlock seen (0/1), logs in its logs message (-1: none yet)]
function onMessage(c, data) {
  if (rpcProtocol) { onRpcMessage(c, data); return; }
  const t = c.tData;
  let p;
  if (wampProtocol) {
    p = wampParse(c, data);
    if (p === null) return;
  } else {
    p = fastParse(data);
    if (p === null) p = slowParse(data);
    else if (verify) {
      const q = slowParse(data);
      if (q[0] !== p[0] || q[1] !== p[1] || q[2] !== p[2]) verifyErrors++;
    }
  }
  const type = p[0];
  if (c.silent) c.silentMessages++;
  if (type === T_BLOCK) {
    const h = p[1];
    const b = c.blocks.get(h);
    if (b === undefined) {
      if (h < c.lastHeight) orderErrors++;
      c.lastHeight = h;
      c.blocks.set(h, [t, t, 1, 0, 0, 1, -1]);
      if (!c.silent) totalUnique++;
    } else if (b[5] === 1) {
      totalDupes++;
    } else {
      orderErrors++;                       // its txs came before the block
      b[5] = 1; b[2]++; b[1] = t;
      if (!c.silent) totalUnique++;
    }
  } else if (type === T_TX || type === T_TXS) {
    const h = p[1];
    let b = c.blocks.get(h);
    if (b === undefined) {
      if (h < c.lastHeight) orderErrors++;
      c.lastHeight = h;
      b = [t, t, 0, 0, 0, 0, -1];
      if (c.wantsBlocks) orderErrors++;    // a tx before its block
      c.blocks.set(h, b);
    }
    if (type === T_TX) {
      const idx = p[2];
      if (idx < b[3]) { totalDupes++; return; }
      if (idx > b[3]) orderErrors++;       // a gap (or reordering)
      b[3] = idx + 1; b[4]++;
    } else {
      if (b[4] > 0) { totalDupes++; return; }
      b[4] += p[2];
    }
    b[1] = t; b[2]++;
    if (!c.silent) totalUnique++;
  } else if (type === T_LOGS) {
    const h = p[1];
    if (c.expect !== null) {
      const want = c.expect.get(h) || 0;
      if (want === 0) { logsUnexpected++; return; }
      if (p[2] !== want) logsMismatch++;
    }
    let b = c.blocks.get(h);
    if (b === undefined) {
      if (h < c.lastHeight) orderErrors++;
      c.lastHeight = h;
      b = [t, t, 0, 0, 0, 0, -1];
      if (c.wantsBlocks) orderErrors++;    // logs before their block
      c.blocks.set(h, b);
    } else if (b[6] >= 0) { totalDupes++; return; }
    b[6] = p[2];
    b[1] = t; b[2]++;
    if (!c.silent) { totalUnique++; logsMessages++; logsReceived += p[2]; logsBytes += data.length; }
  } else if (type === T_SUB) {
    if (!c.subscribed) {
      c.subscribed = true; subscribed++;
      if (c.silent) {
        c.ws.pause();
        // Still alive (it writes), just never reads: then only a slow-client policy can close it.
        if (silentKeepalive > 0) c.keepalive = setInterval(() => { if (c.closed === null) c.ws.send('{"action":"ping"}'); }, silentKeepalive * 1000);
      }
      settle();
    }
  } else {
    otherMessages++;
  }
}

// --protocol eth-subscribe*: the same bookkeeping per client and block number ([first arrival,
// last arrival, delivered (0/1), 0, 0, notified (0/1), -1]).
function onRpcMessage(c, data) {
  const t = c.tData;
  if (data[0] === 0x5b) { onFetchAnswer(c, data, t); return; }          // "[": a batch's answer
  if (data.indexOf(K_NOTIFICATION) >= 0) {
    const h = hexAfter(data, K_NUMBER);
    if (verify) {
      let q = -2;
      try { q = parseInt(JSON.parse(data.toString("utf8")).params.result.number, 16); } catch (e) { /* counted below */ }
      if (q !== h) verifyErrors++;
    }
    if (h < 0) { otherMessages++; return; }
    if (c.silent) { c.silentMessages++; return; }
    const b = c.blocks.get(h);
    if (b !== undefined) { totalDupes++; return; }
    if (h < c.lastHeight) orderErrors++;
    c.lastHeight = h;
    if (fetchBlocks) {
      c.blocks.set(h, [t, t, 0, 0, 0, 1, -1]);
      const n = "0x" + h.toString(16);
      c.ws.send(`[{"jsonrpc":"2.0","id":${2 * h},"method":"eth_getBlockByNumber","params":["${n}",true]},` +
                `{"jsonrpc":"2.0","id":${2 * h + 1},"method":"eth_getBlockReceipts","params":["${n}"]}]`);
      fetchSent++;
    } else {
      c.blocks.set(h, [t, t, 1, 0, 0, 1, -1]);
      totalUnique++;
    }
    return;
  }
  if (!c.subscribed) {                    // the answer to eth_subscribe
    let m = null;
    try { m = JSON.parse(data.toString("utf8")); } catch (e) { /* not JSON */ }
    if (m !== null && m.id === 1 && typeof m.result === "string") {
      c.subscribed = true; subscribed++;
      if (c.silent) c.ws.pause();
    } else {
      subscribeErrors++;
      const key = "subscribe: " + (m && m.error ? String(m.error.message).slice(0, 60) : data.toString("utf8").slice(0, 60));
      errorKinds[key] = (errorKinds[key] || 0) + 1;
      c.gaveUp = true; failed++;
      c.ws.terminate();
    }
    settle();
    return;
  }
  otherMessages++;
}

function onFetchAnswer(c, data, t) {
  fetchAnswers++;
  fetchBytes += data.length;
  const id = intAfter(data, K_ID);
  const h = id >= 0 ? Math.floor(id / 2) : -1;
  const b = c.blocks.get(h);
  if (b === undefined || b[2] !== 0 || b[1] !== b[0]) { fetchUnexpected++; return; }
  b[1] = t;
  if (data.indexOf(K_ERROR) >= 0 || data.indexOf(K_NULL_RESULT) >= 0) {
    fetchErrors++;
    let key = "unparsable answer";
    try {
      const answers = JSON.parse(data.toString("utf8"));
      const bad = answers.find((a) => a.error || a.result === null);
      key = bad ? (bad.error ? String(bad.error.message).slice(0, 60) : "null result") : "no answer with an error";
    } catch (e) { /* keep the key */ }
    fetchErrorKinds[key] = (fetchErrorKinds[key] || 0) + 1;
    return;
  }
  if (verify) {
    try {
      const answers = JSON.parse(data.toString("utf8"));
      const block = answers.find((a) => a.id === 2 * h), receipts = answers.find((a) => a.id === 2 * h + 1);
      if (!block || !receipts || parseInt(block.result.number, 16) !== h
          || receipts.result.length !== block.result.transactions.length) verifyErrors++;
    } catch (e) { verifyErrors++; }
  }
  b[2] = 1;
  if (!c.silent) totalUnique++;
}

// --protocol wamp: one client's WAMP session.  Message types (WAMP v2): HELLO 1, WELCOME 2, ABORT 3,
// GOODBYE 6, ERROR 8, SUBSCRIBE 32, SUBSCRIBED 33, EVENT 36.
const WAMP_TOPICS = { newBlocks: "explorer.block", newTxs: "explorer.tx" };
const realm = args.realm || "explorer";
// AutobahnJS's HELLO details (lib/session.js WAMP_FEATURES), no authmethods: anonymous.
const WAMP_HELLO = JSON.stringify([1, realm, { roles: {
  caller: { features: { caller_identification: true, call_canceling: true, progressive_call_results: true } },
  callee: { features: { caller_identification: true, pattern_based_registration: true, shared_registration: true,
    progressive_call_results: true, registration_revocation: true } },
  publisher: { features: { publisher_identification: true, subscriber_blackwhite_listing: true, publisher_exclusion: true } },
  subscriber: { features: { publisher_identification: true, pattern_based_subscription: true, subscription_revocation: true } },
} }]);
const wampTopics = wampProtocol ? channels.map((ch) => {
  if (!WAMP_TOPICS[ch]) { process.stderr.write(`loadgen: --protocol wamp has no topic for channel ${ch}\n`); process.exit(2); }
  return WAMP_TOPICS[ch];
}) : [];
const K_EVENT = Buffer.from("[36,");

function wampType(buf) {
  if (buf[0] !== 0x5b) return -1;
  let v = 0, j = 1;
  for (; j < buf.length && j < 4; j++) {
    const ch = buf[j];
    if (ch < 48 || ch > 57) break;
    v = v * 10 + (ch - 48);
  }
  return j > 1 ? v : -1;
}

function wampFail(c, key) {
  errorKinds[key] = (errorKinds[key] || 0) + 1;
  subscribeErrors++;
  if (!c.subscribed && !c.gaveUp) { c.gaveUp = true; failed++; settle(); }
  c.ws.terminate();
}

// -> [type, height, txIndex] as fastParse, or null for a message that is not an event (handled here).
function wampParse(c, data) {
  if (data.length > 4 && data.compare(K_EVENT, 0, 4, 0, 4) === 0) {
    const kind = c.subKinds.get(intAfter(data, K_EVENT));
    let p;
    if (kind === "explorer.block") p = [T_BLOCK, intAfter(data, K_HEIGHT, 8), 0];
    else if (kind === "explorer.tx") p = [T_TX, intAfter(data, K_BHEIGHT, 8), intAfter(data, K_INDEX, 8)];
    else p = [T_OTHER, 0, 0];
    if (verify) {
      let q = [-1, -1, -1];
      try {
        const d = JSON.parse(data.toString("utf8"))[4][0];
        q = kind === "explorer.block" ? [T_BLOCK, d.height, 0]
          : kind === "explorer.tx" ? [T_TX, d.block_height, d.tx_index] : [T_OTHER, 0, 0];
      } catch (e) { /* counted below */ }
      if (q[0] !== p[0] || q[1] !== p[1] || q[2] !== p[2]) verifyErrors++;
    }
    return p;
  }
  const type = wampType(data);
  let m = null;
  try { m = JSON.parse(data.toString("utf8")); } catch (e) { /* not JSON */ }
  if (type === 2) {                                  // WELCOME: subscribe to every topic
    wampTopics.forEach((topic, k) => c.ws.send(JSON.stringify([32, k + 1, {}, topic])));
  } else if (type === 33 && m !== null) {            // SUBSCRIBED [33, request, subscription]
    c.subKinds.set(m[2], wampTopics[m[1] - 1]);
    if (c.subKinds.size === wampTopics.length) return [T_SUB, 0, 0];
  } else if ((type === 3 || type === 8) && !c.subscribed) {   // ABORT [3, details, reason] / ERROR [8, type, request, details, error]
    wampFail(c, String(m === null ? "unparsable" : type === 3 ? "abort: " + m[2] : "error: " + m[4]).slice(0, 60));
  } else {
    otherMessages++;
  }
  return null;
}

const RPC_SUBSCRIBE = '{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}';
const subscribeMessage = rpcProtocol ? RPC_SUBSCRIBE : JSON.stringify(Object.assign({ action: "subscribe", channels }, batch ? { batch: true } : {}));
const wantsBlocks = channels.includes("newBlocks");

// Client i's subscribe message and its expected log count per height (null: not checked).
function subscribeFor(i) {
  if (logPlan === null || !channels.includes("logs")) return subscribeMessage;
  const filter = logPlan.filters[clientOffset + i];
  if (filter === undefined) throw new Error(`--logs-filters has no filter for client ${clientOffset + i}`);
  return JSON.stringify(Object.assign({ action: "subscribe", channels, logs: { address: filter } }, batch ? { batch: true } : {}));
}
function expectFor(i) {
  if (logPlan === null || !channels.includes("logs")) return null;
  const row = logPlan.expect[clientOffset + i];
  return new Map(logPlan.heights.map((h, k) => [h, row[k]]));
}
// Per height: how many of the subscribed, reading clients should get a logs message for it.
function logsExpectation() {
  const out = {};
  for (const c of clients) {
    if (c.silent || !c.subscribed || c.expect === null) continue;
    for (const [h, n] of c.expect) if (n > 0) out[h] = (out[h] || 0) + 1;
  }
  return out;
}

// The socket's bytes are taken before ws's parser: each read is stamped and queued, and the
// queue is parsed in slices of at most ~1 ms between socket polls, so one client's parsing
// does not delay another client's arrival stamp.  Text frames are parsed here (server frames
// are unmasked); anything else (ping, close, fragments) is handed, whole frame by whole frame,
// to ws's own receiver, which answers pings and runs the close handshake.
const pending = [];           // c, chunk (null: end of stream), t
let pendingHead = 0, draining = false;
function enqueue(c, chunk) {
  pending.push(c, chunk, mono());
  if (!draining) { draining = true; setImmediate(drainQueue); }
}
function drainQueue() {
  const until = mono() + 0.001;
  let k = 0;
  while (pendingHead < pending.length) {
    const c = pending[pendingHead], chunk = pending[pendingHead + 1], t = pending[pendingHead + 2];
    pending[pendingHead] = pending[pendingHead + 1] = null;
    pendingHead += 3;
    c.tData = t;
    if (chunk === null) { if (c.onEnd !== null && !c.socketClosed) c.onEnd.call(c.ws._socket); }
    else if (!c.socketClosed && !c.ws._receiver._writableState.ending) onChunk(c, chunk);
    if ((++k & 7) === 0 && mono() > until) break;
  }
  if (pendingHead >= pending.length) { pending.length = 0; pendingHead = 0; draining = false; }
  else setImmediate(drainQueue);
}

function frameTotal(buf, off) {            // header + payload length, or -1 if the header is incomplete
  const avail = buf.length - off;
  if (avail < 2) return -1;
  const b1 = buf[off + 1];
  let len = b1 & 0x7f, hdr = 2;
  if (len === 126) { if (avail < 4) return -1; len = buf.readUInt16BE(off + 2); hdr = 4; }
  else if (len === 127) { if (avail < 10) return -1; len = buf.readUInt32BE(off + 2) * 4294967296 + buf.readUInt32BE(off + 6); hdr = 10; }
  if (b1 & 0x80) hdr += 4;
  return hdr + len;
}

function onFrame(c, buf, start, end) {
  const b0 = buf[start], b1 = buf[start + 1];
  if (b0 === 0x81 && (b1 & 0x80) === 0) {  // FIN + text, unmasked
    const len7 = b1 & 0x7f;
    const hdr = len7 === 126 ? 4 : len7 === 127 ? 10 : 2;
    onMessage(c, buf.subarray(start + hdr, end));
  } else {
    c.ws._receiver.write(buf.subarray(start, end));
  }
}

// A frame that spans reads is kept as its parts and joined once it is whole (anvil's answer to a
// block-and-receipts batch is hundreds of KiB: joining at every read would copy it many times).
function onChunk(c, chunk) {
  let buf = chunk;
  if (c.parts !== null) {
    c.parts.push(chunk);
    c.partsLen += chunk.length;
    if (c.need < 0) {
      const head = Buffer.concat(c.parts, c.partsLen);
      c.parts = [head];
      c.need = frameTotal(head, 0);
      if (c.need < 0) return;
    }
    if (c.partsLen < c.need) return;
    buf = c.parts.length === 1 ? c.parts[0] : Buffer.concat(c.parts, c.partsLen);
    c.parts = null;
  }
  let off = 0;
  while (off < buf.length) {
    const total = frameTotal(buf, off);
    if (total < 0 || off + total > buf.length) break;
    onFrame(c, buf, off, off + total);
    off += total;
  }
  if (off < buf.length) {
    const rest = buf.subarray(off);
    c.parts = [rest];
    c.partsLen = rest.length;
    c.need = frameTotal(rest, 0);
  }
}

function connect(c, done) {
  const localAddress = `127.0.0.${hostBase + (c.i % hosts)}`;
  const options = { perMessageDeflate: false, localAddress, skipUTF8Validation: !verify, handshakeTimeout: 30000 };
  const ws = wampProtocol ? new WebSocket(url, "wamp.2.json", options) : new WebSocket(url, options);
  c.ws = ws;
  let isOpen = false;
  ws.on("open", () => {
    isOpen = true; opened++;
    c.tData = mono();
    const socket = ws._socket;
    for (const f of socket.listeners("data")) if (f.name === "socketOnData") socket.removeListener("data", f);
    for (const f of socket.listeners("end")) if (f.name === "socketOnEnd") { c.onEnd = f; socket.removeListener("end", f); }
    socket.on("data", (chunk) => enqueue(c, chunk));
    socket.on("end", () => enqueue(c, null));
    socket.on("close", () => { c.socketClosed = true; });   // after ws's own close handling
    if (wampProtocol && ws.protocol !== "wamp.2.json") wampFail(c, `subprotocol ${JSON.stringify(ws.protocol)}`);
    else ws.send(wampProtocol ? WAMP_HELLO : c.subscribe);
    done();
  });
  // Messages ws parsed itself (fragmented ones, or data read at close): same bookkeeping.
  ws.on("message", (data) => onMessage(c, data));
  ws.on("close", (code) => {
    if (!isOpen) return;
    closedN++;
    const into = c.silent ? silentCloseCodes : closeCodes;
    into[code] = (into[code] || 0) + 1;
    c.closed = code;
    if (c.keepalive) clearInterval(c.keepalive);
    if (!c.subscribed && !c.gaveUp) { c.gaveUp = true; failed++; settle(); }
  });
  ws.on("error", (err) => {
    errors++;
    const key = err.code || String(err.message).slice(0, 60);
    errorKinds[key] = (errorKinds[key] || 0) + 1;
    if (isOpen || c.gaveUp) return;
    if (c.attempts++ < 5) {
      retries++;
      setTimeout(() => connect(c, () => {}), 200 * c.attempts);
      done();
    } else {
      failed++; c.gaveUp = true; settle(); done();
    }
  });
}

const t0 = mono();
// Connect with at most `concurrency` handshakes in flight.
{
  let next = 0, inFlight = 0;
  const pump = () => {
    while (inFlight < concurrency && next < N) {
      const i = next++;
      const c = { i, silent: isSilent(i), wantsBlocks, ws: null, blocks: new Map(), lastHeight: -1, tData: 0,
        subscribe: subscribeFor(i), expect: expectFor(i),
        subscribed: false, subKinds: new Map(), attempts: 0, closed: null, gaveUp: false, silentMessages: 0, parts: null, partsLen: 0, need: -1, onEnd: null, socketClosed: false };
      clients.push(c);
      inFlight++;
      let once = false;
      connect(c, () => { if (!once) { once = true; inFlight--; setImmediate(pump); } });
    }
  };
  pump();
}
const connectTimer = setTimeout(() => {
  for (const c of clients) if (!c.subscribed && !c.gaveUp) { c.gaveUp = true; failed++; settle(); }
  while (settled < N) { failed++; settle(); }
}, connectSeconds * 1000);
await allSettled;
clearTimeout(connectTimer);
const tReady = mono();
process.stderr.write(`loadgen ${id}: ${subscribed}/${N} subscribed in ${(tReady - t0).toFixed(2)}s (${retries} retries, errors ${JSON.stringify(errorKinds)})\n`);
const loop = monitorEventLoopDelay({ resolution: 10 });
loop.enable();
const cpu0 = process.cpuUsage();
const logsExpect = logPlan === null ? null : logsExpectation();
emit({ event: "ready", id, t: tReady, subscribed, failed, retries, errorKinds, connect_s: tReady - t0, logsExpect });

let reported = false;
async function report(reason) {
  if (reported) return;
  reported = true;
  const cpu = process.cpuUsage(cpu0);
  loop.disable();
  const tEnd = mono();
  // Let the silent clients read again briefly, to see whether the server closed them (and how).
  const silentClients = clients.filter((c) => c.silent);
  let silentOpen = 0;
  if (silentClients.length) {
    for (const c of silentClients) if (c.ws && c.closed === null) c.ws.resume();
    await new Promise((r) => setTimeout(r, 1500));
    for (const c of silentClients) if (c.subscribed && c.closed === null) silentOpen++;
  }
  const base = tReady;
  const blocks = {};
  let nonSilent = 0;
  for (const c of clients) {
    if (c.silent || !c.subscribed) continue;
    nonSilent++;
    for (const [h, b] of c.blocks) {
      let e = blocks[h];
      if (e === undefined) e = blocks[h] = { first: [], last: [], n: [], txs: [] };
      e.first.push(Math.round((b[0] - base) * 1e6));
      e.last.push(b[2] > 0 ? Math.round((b[1] - base) * 1e6) : null);
      e.n.push(b[2]);
      e.txs.push(b[4]);
    }
  }
  // Reading clients the server closed during the run (e.g. 1013, overloaded): the code and the
  // newest height each had, so that what they did not get after it is not counted as lost.
  const serverClosed = [];
  for (const c of clients) if (!c.silent && c.subscribed && c.closed !== null) serverClosed.push([c.closed, c.lastHeight]);
  const summary = {
    event: "done", id, reason, base, protocol, clients: N, subscribed, failed, retries, opened, errors, serverClosed,
    closed: closedN, closeCodes, errorKinds, nonSilent, verify, verifyErrors,
    silent: { count: silentClients.length, messages: silentClients.reduce((s, c) => s + c.silentMessages, 0),
      closeCodes: silentCloseCodes, stillOpen: silentOpen },
    unique: totalUnique, dupes: totalDupes, orderErrors, otherMessages,
    logs: { expect: logsExpect, messages: logsMessages, logs: logsReceived, bytes: logsBytes,
      unexpected: logsUnexpected, mismatch: logsMismatch },
    fetch: { sent: fetchSent, answers: fetchAnswers, errors: fetchErrors, errorKinds: fetchErrorKinds,
      bytes: fetchBytes, unexpected: fetchUnexpected },
    subscribeErrors,
    cpu_s: (cpu.user + cpu.system) / 1e6, window_s: tEnd - tReady,
    loop_delay_ms: { p50: loop.percentile(50) / 1e6, p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 },
    blocks,
  };
  // The summary can be megabytes: into a file (written synchronously), and a short line out.
  if (reportFile) {
    writeFileSync(reportFile, JSON.stringify(summary));
    emit({ event: "done", id, file: reportFile });
  } else emit(summary);
  for (const c of clients) { if (c.keepalive) clearInterval(c.keepalive); if (c.ws) c.ws.terminate(); }
  setTimeout(() => process.exit(0), 50);
}

setTimeout(() => report("max-seconds"), maxSeconds * 1000).unref();
const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const cmd = line.trim();
  if (cmd === "progress") emit({ event: "progress", id, t: mono(), unique: totalUnique, dupes: totalDupes, fetchErrors });
  else if (cmd === "report") report("report");
});
rl.on("close", () => report("stdin closed"));
