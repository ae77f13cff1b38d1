// Soak clients: many WebSocket clients of /v1/stream in one Node process (npm "ws" from
// tests/node/node_modules), each playing a role, each verifying what it is sent.
//
//   node tests/soak/clients.mjs --url ws://127.0.0.1:PORT/v1/stream --seconds 120 \
//        --roles batch=300,blocks=300,hashes=150,pertx=50,churn=100,slow=50,hostile=50 \
//        [--ramp 10] [--seed 1] [--id 0] [--slow-hold 75] [--history-seconds 300]
//        [--slow-kinds silent,keepalive,burst,late] [--late-after 13.5]
//        [--since-height H --since-hash 0x..] [--resume]
//
// Roles (well-behaved ones verify their sequence; see Chain below):
//   batch    newBlocks + newTxs, "batch": true (one newTxs frame per block, full txs)
//   blocks   newBlocks only
//   hashes   newBlocks + newTxs, batch + hashes_only
//   pertx    newBlocks + newTxs, one newTx message per transaction
//   churn    like batch, but disconnects after a random while and reconnects with "since" =
//            the last block it holds complete; across reconnects it must see no gap and no
//            duplicate (unless the server answers history_unavailable)
//   slow     subscribes to everything, then never reads (socket paused); three kinds (silent,
//            keepalive, burst, late: see slow() below); learns how the server dropped it, starts over
//   hostile  garbage JSON, unknown actions, invalid messages, binary frames (answered with
//            errors), floods past the message budget (close 1008), frames and fragmented
//            messages over 1 MiB (1009), invalid UTF-8 (1007); reconnects after each close
//
// --resume (the fault soak): every well-behaved client, not only churners, reconnects after an
// unexpected close with "since" = the last block it holds complete, and must see no gap and no
// duplicate across it.  While the runner says on stdin that the server is restarting
// ({"restarting": true} ... {"restarting": false}), a close with 1001 (going away) or 1006 (the
// process was killed) is what a restart looks like: counted in restart_closes, not unexpected.
// A history_unavailable answer is counted as outside the history when the "since" sent is below
// the oldest block the server holds less one, as history_unavailable_within (a server that lost
// what it had published) when it is at or above it, and at oldest_height - 1 in
// history_unavailable_edge ("height:hash" -> count): resumable if that block is canonical (the
// oldest block's parent), not if a reorg the client missed orphaned it; the runner asks the node.
//
// stdout, JSON lines: {"kind":"progress", ...} every --report-every seconds, then one
// {"kind":"final", ...}, then the process exits (bounded: --seconds + 20 s at most).
// Every loop here is bounded in count or time; only 127.0.0.x is ever contacted.
import { createRequire } from "node:module";
import { monitorEventLoopDelay } from "node:perf_hooks";

const require = createRequire(new URL("../node/node_modules/", import.meta.url));
const WebSocket = require("ws");

const args = {};
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (!a.startsWith("--")) continue;
  const next = process.argv[i + 1];
  if (next !== undefined && !next.startsWith("--")) { args[a.slice(2)] = next; i++; } else args[a.slice(2)] = "true";
}
const URL_ = args.url;
if (!URL_ || !/^ws:\/\/127\.0\.0\.\d+:\d+\//.test(URL_)) {
  process.stderr.write("--url ws://127.0.0.x:PORT/... required (loopback only)\n");
  process.exit(2);
}
const SECONDS = parseFloat(args.seconds || "60");
const RAMP = parseFloat(args.ramp || String(Math.min(10, SECONDS / 6)));
const REPORT_EVERY = parseFloat(args["report-every"] || "10");
const SLOW_HOLD = parseFloat(args["slow-hold"] || "75");
const RESUME = args.resume === "true";
let restarting = false;
const HISTORY_SECONDS = parseFloat(args["history-seconds"] || "300");
const ID = parseInt(args.id || "0", 10);
const ROLES = {};
for (const part of (args.roles || "batch=10").split(",")) {
  const [k, v] = part.split("=");
  ROLES[k] = parseInt(v, 10);
}
const KNOWN = ["batch", "blocks", "hashes", "pertx", "churn", "slow", "hostile"];
for (const k of Object.keys(ROLES)) if (!KNOWN.includes(k)) { process.stderr.write(`unknown role ${k}\n`); process.exit(2); }
const WELL = new Set(["batch", "blocks", "hashes", "pertx", "churn"]);

// A small seeded PRNG (mulberry32) so that runs are repeatable in their choices.
let seed = (parseInt(args.seed || "1", 10) * 7919 + ID * 104729) >>> 0;
function rand() {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const between = (a, b) => a + (b - a) * rand();

const t0 = Date.now();
const elapsed = () => (Date.now() - t0) / 1000;
const emit = (o) => process.stdout.write(JSON.stringify(o) + "\n");
let stopping = false;
const loopDelay = monitorEventLoopDelay({ resolution: 20 });
loopDelay.enable();

// ---------------------------------------------------------------- statistics

function newStats() {
  return {
    clients: 0, connects: 0, opens: 0, connect_errors: {}, closes: {}, messages: 0, blocks: 0,
    txs: 0, reorgs: 0, reorg_depths: {}, errors: {}, violations: 0, resumes: 0, replayed: 0,
    history_unavailable: 0, history_unavailable_within: 0, history_unavailable_samples: [], history_unavailable_edge: {}, restart_closes: {},
    attacks: {}, outcomes: {}, unexpected: 0, unexpected_samples: [],
    violation_samples: [], still_open_after_hold: 0, bytes: 0, kinds: {}, dropped_after: {}, open_at_end: {}, open_held_max: {},
  };
}
const stats = {};
for (const role of Object.keys(ROLES)) stats[role] = newStats();
const bump = (obj, key, n = 1) => { obj[key] = (obj[key] || 0) + n; };
// A close that a restart explains (the runner said one is under way): counted, not unexpected.
function restartClose(role, code) {
  if (!restarting || (code !== 1001 && code !== 1006)) return false;
  bump(stats[role].restart_closes, String(code));
  return true;
}

function violation(role, client, what) {
  const s = stats[role];
  s.violations++;
  if (s.violation_samples.length < 20) s.violation_samples.push({ t: +elapsed().toFixed(2), client, what });
}

function unexpected(role, client, what) {
  const s = stats[role];
  s.unexpected++;
  if (s.unexpected_samples.length < 20) s.unexpected_samples.push({ t: +elapsed().toFixed(2), client, what });
}

// ---------------------------------------------------------------- the chain a client holds

const KEEP = 300; // blocks kept per client (the server's history is 256 by default)

// mode: "blocks" (newBlocks only), "batch", "hashes" (batch hashes_only), "pertx"
class Chain {
  constructor(role, client, mode) {
    this.role = role; this.client = client; this.mode = mode;
    this.blocks = []; // {height, hash, parent, txc, got}
    this.anchor = null; // {height, hash}: what the next block must extend when blocks is empty
  }
  tip() { return this.blocks.length ? this.blocks[this.blocks.length - 1] : this.anchor; }
  bad(what) { violation(this.role, this.client, what); }
  txsComplete(b) { return this.mode === "blocks" || b.got === b.txc; }

  checkTipComplete(why) {
    const b = this.blocks[this.blocks.length - 1];
    if (b && !this.txsComplete(b)) this.bad(`block ${b.height} had ${b.got}/${b.txc} txs before ${why}`);
  }

  onBlock(d) {
    stats[this.role].blocks++;
    const prev = this.tip();
    this.checkTipComplete(`block ${d.height}`);
    if (prev) {
      if (d.height !== prev.height + 1) this.bad(`height ${d.height} after ${prev.height}`);
      else if (d.parent_hash !== prev.hash) this.bad(`block ${d.height} parent ${d.parent_hash.slice(0, 10)} != held ${prev.hash.slice(0, 10)}`);
    }
    if (typeof d.tx_count !== "number" || d.tx_count < 0) this.bad(`block ${d.height} tx_count ${d.tx_count}`);
    this.blocks.push({ height: d.height, hash: d.hash, parent: d.parent_hash, txc: d.tx_count, got: 0 });
    if (this.blocks.length > KEEP) this.blocks.splice(0, this.blocks.length - KEEP);
  }

  onTx(d) {
    stats[this.role].txs++;
    const b = this.blocks[this.blocks.length - 1];
    if (this.mode !== "pertx") return this.bad("newTx on a batch subscription");
    if (!b) return this.bad(`newTx ${d.block_height} with no block held`);
    if (d.block_hash !== b.hash || d.block_height !== b.height) return this.bad(`newTx of ${d.block_height} while at ${b.height}`);
    if (d.tx_index !== b.got) this.bad(`block ${b.height} tx_index ${d.tx_index}, expected ${b.got}`);
    b.got++;
    if (b.got > b.txc) this.bad(`block ${b.height}: more txs than tx_count ${b.txc}`);
  }

  onTxs(d) {
    const b = this.blocks[this.blocks.length - 1];
    const list = d.txs || d.hashes || [];
    stats[this.role].txs += list.length;
    if (this.mode !== "batch" && this.mode !== "hashes") return this.bad("newTxs on a non-batch subscription");
    if (this.mode === "hashes" ? !Array.isArray(d.hashes) : !Array.isArray(d.txs)) this.bad("newTxs of the wrong shape");
    if (!b) return this.bad(`newTxs ${d.block_height} with no block held`);
    if (d.block_hash !== b.hash || d.block_height !== b.height) return this.bad(`newTxs of ${d.block_height} while at ${b.height}`);
    if (b.got) this.bad(`block ${b.height}: a second newTxs`);
    if (list.length !== b.txc) this.bad(`block ${b.height}: newTxs of ${list.length}, tx_count ${b.txc}`);
    if (d.txs) {
      for (let i = 0; i < d.txs.length; i++) {
        const tx = d.txs[i];
        if (tx.tx_index !== i || tx.block_hash !== b.hash) { this.bad(`block ${b.height}: tx ${i} index ${tx.tx_index}`); break; }
      }
    }
    b.got = list.length;
  }

  onReorg(d) {
    stats[this.role].reorgs++;
    bump(stats[this.role].reorg_depths, String(d.depth));
    const ca = d.common_ancestor;
    const removed = new Map(d.removed.map((r) => [r.height, r.hash]));
    if (d.removed.length !== d.depth) this.bad(`reorg depth ${d.depth} with ${d.removed.length} removed`);
    this.checkTipComplete("a reorg");
    const tip = this.tip();
    for (const r of d.removed) {
      if (r.height <= ca.height) this.bad(`reorg removes ${r.height} at or below the ancestor ${ca.height}`);
      if (tip && r.height > tip.height) this.bad(`reorg removes ${r.height}, above the held tip ${tip.height}`);
    }
    for (const b of this.blocks) {
      if (b.height === ca.height && b.hash !== ca.hash) this.bad(`reorg ancestor ${ca.height} ${ca.hash.slice(0, 10)} is not the held ${b.hash.slice(0, 10)}`);
      if (b.height > ca.height) {
        const h = removed.get(b.height);
        if (h !== b.hash) this.bad(`reorg to ${ca.height}: held ${b.height} ${b.hash.slice(0, 10)} but removed says ${h && h.slice(0, 10)}`);
      }
    }
    if (this.anchor && !this.blocks.length && this.anchor.height > ca.height) {
      const h = removed.get(this.anchor.height);
      if (h !== this.anchor.hash) this.bad(`reorg to ${ca.height} does not remove the anchor ${this.anchor.height}`);
    }
    while (this.blocks.length && this.blocks[this.blocks.length - 1].height > ca.height) this.blocks.pop();
    if (!this.blocks.length || this.blocks[this.blocks.length - 1].height !== ca.height) {
      this.blocks = [];
      this.anchor = { height: ca.height, hash: ca.hash };
    }
  }

  // Before a reconnect: the last block held complete (a newBlock whose txs did not all arrive
  // is not held), as {height, hash} for "since".
  resumePoint() {
    while (this.blocks.length && !this.txsComplete(this.blocks[this.blocks.length - 1])) this.blocks.pop();
    const tip = this.tip();
    if (this.blocks.length === 0 && tip) this.anchor = tip;
    return tip ? { height: tip.height, hash: tip.hash } : null;
  }

  reset() { this.blocks = []; this.anchor = null; }
}

// ---------------------------------------------------------------- clients

const SUBSCRIBE = {
  batch: { action: "subscribe", channels: ["newBlocks", "newTxs"], batch: true },
  churn: { action: "subscribe", channels: ["newBlocks", "newTxs"], batch: true },
  blocks: { action: "subscribe", channels: ["newBlocks"] },
  hashes: { action: "subscribe", channels: ["newBlocks", "newTxs"], batch: true, hashes_only: true },
  pertx: { action: "subscribe", channels: ["newBlocks", "newTxs"] },
  slow: { action: "subscribe", channels: ["newBlocks", "newTxs"] },
};
const MODE = { batch: "batch", churn: "batch", blocks: "blocks", hashes: "hashes", pertx: "pertx" };

const live = new Set(); // open sockets, to close them all at the end
const timers = new Set();
function later(seconds, f) {
  const t = setTimeout(() => { timers.delete(t); f(); }, Math.max(0, seconds * 1000));
  timers.add(t);
  return t;
}

function open(role, onOpen, onMessage, onClose) {
  const s = stats[role];
  s.connects++;
  const ws = new WebSocket(URL_, { perMessageDeflate: false, handshakeTimeout: 20000, maxPayload: 64 << 20 });
  ws.__role = role;
  let opened = false;
  ws.on("open", () => { opened = true; s.opens++; live.add(ws); onOpen(ws); });
  ws.on("message", (data, isBinary) => { s.messages++; s.bytes += data.length; onMessage(ws, data, isBinary); });
  ws.on("unexpected-response", (req, res) => {
    bump(s.connect_errors, `http_${res.statusCode}`);
    res.resume();
    ws.terminate();
  });
  ws.on("error", (e) => {
    if (!opened) bump(s.connect_errors, e.code || String(e.message).slice(0, 40));
    else ws.__error = e.code || String(e.message).slice(0, 40);
  });
  ws.on("close", (code, reason) => {
    live.delete(ws);
    if (opened) bump(s.closes, String(code));
    onClose(ws, opened, code, reason.toString());
  });
  return ws;
}

// Well-behaved: batch, blocks, hashes, pertx (stay connected), churn (reconnect with since).
function wellBehaved(role, n) {
  const chain = new Chain(role, n, MODE[role]);
  const s = stats[role];
  let answered = false;
  const connect = (attempt) => {
    if (stopping) return;
    answered = false;
    const ws = open(role, (ws) => {
      const msg = { ...SUBSCRIBE[role] };
      ws.__since = null;
      if (role === "churn" || RESUME) {
        const since = chain.resumePoint();
        if (since) { msg.since = since; s.resumes++; ws.__since = since; }
      }
      if (role === "churn") {
        later(between(3, 20), () => { if (!stopping && ws.readyState === WebSocket.OPEN) ws.close(1000); });
      }
      ws.send(JSON.stringify(msg));
    }, (ws, data) => {
      let m;
      try { m = JSON.parse(data); } catch { return chain.bad("unparseable message"); }
      switch (m.type) {
        case "newBlock": if (!answered) chain.bad("newBlock before subscribed"); return chain.onBlock(m.data);
        case "newTxs": return chain.onTxs(m.data);
        case "newTx": return chain.onTx(m.data);
        case "reorg": return chain.onReorg(m.data);
        case "subscribed":
          answered = true;
          if (typeof m.replayed === "number") s.replayed += m.replayed;
          return;
        case "error":
          bump(s.errors, m.error.code);
          if (m.error.code === "history_unavailable") {
            const oldest = m.error.oldest_height;
            const since = ws.__since;
            if (since && typeof oldest === "number" && since.height >= oldest) {
              s.history_unavailable_within++;
              if (s.history_unavailable_samples.length < 20) {
                s.history_unavailable_samples.push({ t: +elapsed().toFixed(2), client: n, since: since.height, oldest, message: m.error.message });
              }
            } else if (since && since.height === oldest - 1) {
              // Resumable if the block is canonical (the oldest block's
              // parent); not if a reorg this client missed orphaned it (the
              // canonical block at its height is gone): the soak asks the node.
              const key = `${since.height}:${since.hash}`;
              s.history_unavailable_edge[key] = (s.history_unavailable_edge[key] || 0) + 1;
            } else s.history_unavailable++;
            chain.reset();
          }
          else chain.bad(`error ${m.error.code}: ${m.error.message}`);
          return;
        default: return chain.bad(`unexpected message type ${m.type}`);
      }
    }, (ws, opened, code) => {
      if (stopping) return;
      if (role === "churn" && opened && code === 1000) {
        // A long absence now and then (past the server's history) when the run is long enough.
        const long = elapsed() + HISTORY_SECONDS + 60 < SECONDS && rand() < 0.02;
        later(long ? HISTORY_SECONDS + between(10, 40) : between(0.2, 3), () => connect(0));
        return;
      }
      if (opened && !restartClose(role, code)) unexpected(role, n, `closed with ${code}${ws.__error ? " " + ws.__error : ""}`);
      // reconnect after a failed connect or an unexpected close, with backoff
      if (role === "churn" || RESUME) chain.resumePoint(); else chain.reset();
      later(Math.min(10, 0.5 * 2 ** Math.min(attempt, 5)) * between(0.5, 1.5), () => connect(attempt + 1));
    });
    ws.__chain = chain;
  };
  s.clients++;
  connect(0);
  return chain;
}

// Slow: subscribe to everything, then stop reading (the socket is paused), in one of three kinds:
//   silent     sends nothing more: only the server's ping sweep can tell (pong timeout)
//   keepalive  keeps sending {"action":"ping"} every 5 s: talking is no sign of reading, so the
//              pong timeout (its pongs never come) or the slow-client policy drops it
//   burst      like keepalive, but first asks for the server's history once (subscribe with
//              "since" = an old block, from --since or stdin), megabytes to write at once
//   late       like burst, but reads again --late-after seconds later (past the write deadline,
//              before the close timeout): it should find the backlog and then a 1008 close
//              (outside that window: "late_1006_read_before_deadline" or a reset)
// A slow client learns that the server dropped it when a keepalive write fails, or when it reads
// again after --slow-hold seconds (silent ones); then it starts over.
const SLOW_KINDS = (args["slow-kinds"] || "silent,keepalive,burst,late").split(",");
const LATE_AFTER = parseFloat(args["late-after"] || "13.5");
let oldSince = args["since-height"] ? { height: parseInt(args["since-height"], 10), hash: args["since-hash"] } : null;

function slow(n, index) {
  const role = "slow";
  const s = stats[role];
  const kind = SLOW_KINDS[index % SLOW_KINDS.length];
  s.clients++;
  bump(s.kinds, kind);
  const connect = () => {
    if (stopping) return;
    let pausedAt = null;
    let ended = false;
    const ws = open(role, (ws) => {
      ws.__kind = kind;
      ws.send(JSON.stringify(SUBSCRIBE.slow));
    }, (ws) => {
      if (pausedAt !== null) return;
      // the first message is the "subscribed" answer: stop reading from here on
      if ((kind === "burst" || kind === "late") && oldSince) {
        ws.send(JSON.stringify({ ...SUBSCRIBE.slow, since: oldSince }));
      }
      ws.pause();
      pausedAt = ws.__pausedAt = elapsed();
      if (kind !== "silent") {
        const keepalive = () => {
          if (ended || stopping || ws.readyState !== WebSocket.OPEN) return;
          ws.send('{"action":"ping"}', (err) => { if (err && !ws.__error) ws.__error = err.code || "write"; });
          later(5, keepalive);
        };
        later(5, keepalive);
      }
      if (kind === "late") {
        later(LATE_AFTER, () => { if (!ended) { ws.__resumed = true; ws.resume(); } });
        later(LATE_AFTER + 15, () => {
          if (!ended && ws.readyState === WebSocket.OPEN) {
            // it read again before the server's deadline fired: no longer slow, not a fault
            ws.__error = "read_before_deadline";
            ws.terminate();
          }
        });
      }
      if (kind === "silent") later(SLOW_HOLD, () => {
        if (ended || ws.readyState === WebSocket.CLOSED) return;
        ws.__resumed = true;
        ws.resume();
        later(5, () => {
          if (!ended && ws.readyState === WebSocket.OPEN) {
            s.still_open_after_hold++;
            unexpected(role, n, `${kind}: still open ${SLOW_HOLD + 5}s after it stopped reading`);
            ws.terminate();
          }
        });
      });
    }, (ws, opened, code) => {
      ended = true;
      if (opened && !stopping) restartClose(role, code);
      if (opened && pausedAt !== null && !stopping) {
        bump(s.outcomes, `${kind}_${code}${ws.__error ? "_" + ws.__error : ""}`);

        const held = elapsed() - pausedAt;
        {
          (s.dropped_after[kind] ||= []).push(+held.toFixed(1));
          if (s.dropped_after[kind].length > 2000) s.dropped_after[kind].shift();
        }
      }
      if (stopping) return;
      later(between(0.5, 2), connect);
    });
  };
  connect();
}

// The runner tells us, on stdin, of an old block the server should still hold ({"since": {...}}).
process.stdin.setEncoding("utf8");
let stdinBuf = "";
process.stdin.on("data", (chunk) => {
  stdinBuf += chunk;
  let i;
  while ((i = stdinBuf.indexOf("\n")) >= 0) {
    const line = stdinBuf.slice(0, i);
    stdinBuf = stdinBuf.slice(i + 1);
    try {
      const m = JSON.parse(line);
      if (m.since) oldSince = m.since;
      if (typeof m.restarting === "boolean") restarting = m.restarting;
    } catch { /* ignore */ }
  }
});
process.stdin.on("error", () => {});

// Hostile: one attack per connection, reconnect after being closed.
const ATTACKS = ["garbage", "flood", "oversize", "fragments", "utf8", "garbage", "flood", "replays"];
// What each attack must end with.  After a 1009 the server waits (its close timeout) for our close
// reply, which queues behind the rest of the big message we are still sending: on a busy server
// that can take longer, and the server then aborts (1006).
const EXPECT = { garbage: ["1000"], flood: ["1008"], oversize: ["1009", "1006"], fragments: ["1009", "1006"],
  utf8: ["1007"], replays: ["1008"] };
const GARBAGE = [
  () => "{not json",
  () => "[1,2,3]",
  () => JSON.stringify({ action: "dance" }),
  () => JSON.stringify({ action: "subscribe", channels: ["newBlocks", "bogus" + Math.floor(rand() * 1e6)] }),
  () => JSON.stringify({ action: "subscribe", channels: "newBlocks" }),
  () => JSON.stringify({ action: "subscribe", channels: ["newTxs"], batch: "yes" }),
  () => JSON.stringify({ action: "subscribe", channels: ["newBlocks"], since: { height: -1, hash: "0x" } }),
  () => JSON.stringify({ action: "subscribe", channels: ["newTxs"], filter: { addresses: ["0x12"] } }),
  () => JSON.stringify({ action: "unsubscribe", channels: ["newBlocks"], since: 5 }),
  () => JSON.stringify({ action: 12 }),
  () => "\u0000\u0001\u0002",
  () => "x".repeat(2000),
  () => "[".repeat(1100), // deeper than the parser goes; 5,000 would count as 40 messages (parse cost)
  () => JSON.stringify({ action: "subscribe", channels: ["newBlocks"], since: { height: 5, hash: "0x" + "ab".repeat(32) } }),
];
const ERROR_CODES = new Set(["invalid_json", "invalid_message", "unknown_action", "unknown_channel",
  "binary_not_supported", "history_unavailable"]);

function hostile(n) {
  const role = "hostile";
  const s = stats[role];
  s.clients++;
  let k = Math.floor(rand() * ATTACKS.length);
  const connect = (attempt) => {
    if (stopping) return;
    // Until the runner has named an old block there is nothing big to replay: flood instead.
    const planned = ATTACKS[k++ % ATTACKS.length];
    const attack = planned === "replays" && !oldSince ? "flood" : planned;
    let errors = 0;
    let openedAt = null;
    const ws = open(role, (ws) => {
      openedAt = elapsed();
      bump(s.attacks, attack);
      if (attack === "garbage") {
        let sent = 0;
        const step = () => {
          if (stopping || ws.readyState !== WebSocket.OPEN) return;
          if (sent >= 12) { later(1, () => ws.readyState === WebSocket.OPEN && ws.close(1000)); return; }
          sent++;
          if (rand() < 0.15) ws.send(Buffer.from([1, 2, 3, 4]), { binary: true });
          else ws.send(GARBAGE[Math.floor(rand() * GARBAGE.length)]());
          later(0.15, step); // ~7 a second: under the budget of 20/s
        };
        step();
      } else if (attack === "flood") {
        for (let i = 0; i < 300 && ws.readyState === WebSocket.OPEN; i++) ws.send('{"action":"ping"}');
      } else if (attack === "oversize") {
        ws.send(Buffer.alloc((1 << 20) + 4096, 0x61), { binary: false });
      } else if (attack === "fragments") {
        const piece = Buffer.alloc(256 << 10, 0x62);
        for (let i = 0; i < 5 && ws.readyState === WebSocket.OPEN; i++) ws.send(piece, { binary: false, fin: i === 4 });
      } else if (attack === "replays") {
        // Amplification: every resume makes the server write up to its whole history.  The
        // message budget charges a replay by the bytes it writes, so a loop of them is closed.
        const since = oldSince;
        for (let i = 0; i < 30 && ws.readyState === WebSocket.OPEN; i++) {
          ws.send(JSON.stringify({ action: "subscribe", channels: ["newBlocks", "newTxs"], since }));
        }
      } else if (attack === "utf8") {
        ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false });
      }
      // Whatever the attack, the server must end it or answer it in bounded time (a replay loop
      // reads megabytes first).
      const bound = attack === "replays" ? 60 : 20;
      later(bound, () => { if (ws.readyState === WebSocket.OPEN) { unexpected(role, n, `${attack}: still open after ${bound}s`); ws.__error = "timeout"; ws.terminate(); } });
    }, (ws, data, isBinary) => {
      let m;
      try { m = JSON.parse(data); } catch { return unexpected(role, n, "unparseable reply"); }
      if (m.type === "error") {
        errors++;
        bump(s.errors, m.error.code);
        if (!ERROR_CODES.has(m.error.code)) unexpected(role, n, `error code ${m.error.code}`);
        if (JSON.stringify(m).length > 2000) unexpected(role, n, "an error echoing large input");
      } else if (!["pong", "subscribed", "unsubscribed", "newBlock", "newTx", "newTxs", "reorg"].includes(m.type)) {
        unexpected(role, n, `reply type ${m.type}`);
      }
    }, (ws, opened, code) => {
      if (opened && !stopping) {
        const key = `${attack}_${code}`;
        bump(s.outcomes, key);
        if (attack !== "garbage") {
          const list = (s.dropped_after[attack] ||= []);
          list.push(+(elapsed() - openedAt).toFixed(2));
          if (list.length > 2000) list.shift();
        }
        if (!EXPECT[attack].includes(String(code)) && ws.__error !== "timeout" && !restartClose(role, code)) unexpected(role, n, `${attack} ended with ${code}${ws.__error ? " " + ws.__error : ""}`);
        if (attack === "garbage" && !errors && code === 1000) unexpected(role, n, "garbage got no error replies");
      }
      if (stopping) return;
      later(opened ? between(0.5, 3) : Math.min(10, 0.5 * 2 ** Math.min(attempt, 5)), () => connect(opened ? 0 : attempt + 1));
    });
  };
  connect(0);
}

// ---------------------------------------------------------------- run

const order = [];
for (const role of KNOWN) for (let i = 0; i < (ROLES[role] || 0); i++) order.push(role);
// interleave roles so the ramp brings all of them up together
for (let i = order.length - 1; i > 0; i--) { const j = Math.floor(rand() * (i + 1)); [order[i], order[j]] = [order[j], order[i]]; }
const chains = { batch: [], blocks: [], hashes: [], pertx: [], churn: [] };
let slowIndex = 0;
order.forEach((role, i) => {
  later((RAMP * i) / Math.max(1, order.length), () => {
    if (stopping) return;
    const n = `${ID}.${i}`;
    if (WELL.has(role)) chains[role].push(wellBehaved(role, n));
    else if (role === "slow") slow(n, slowIndex++);
    else hostile(n);
  });
});

function snapshot() {
  const open = {};
  for (const ws of live) {
    const r = ws.__role;
    if (r) bump(open, r);
  }
  const d = loopDelay;
  const out = { kind: "progress", id: ID, t: +elapsed().toFixed(1), open_sockets: live.size,
    loop_delay_ms: { p50: +(d.percentile(50) / 1e6).toFixed(1), p99: +(d.percentile(99) / 1e6).toFixed(1), max: +(d.max / 1e6).toFixed(1) },
    rss_mb: +(process.memoryUsage().rss / 1048576).toFixed(1), roles: stats };
  d.reset();
  return out;
}
const progress = setInterval(() => emit(snapshot()), REPORT_EVERY * 1000);

function finish() {
  if (stopping) return;
  stopping = true;
  clearInterval(progress);
  for (const t of timers) clearTimeout(t);
  timers.clear();
  // Each well-behaved client's chain, for the runner to compare with the node: blocks at least
  // 3 below the client's tip (a reorg after the client left may still replace the last ones).
  const canon = {};
  const tips = {};
  for (const [role, list] of Object.entries(chains)) {
    for (const c of list) {
      const tip = c.tip();
      if (!tip) continue;
      bump(tips, role);
      for (const b of c.blocks) {
        if (b.height > tip.height - 3) continue;
        const byHash = (canon[b.height] ||= {});
        byHash[b.hash] = (byHash[b.hash] || 0) + 1;
      }
    }
  }
  for (const ws of [...live]) {
    if (ws.__role === "slow" && ws.__pausedAt !== undefined && ws.readyState === WebSocket.OPEN) {
      const s = stats.slow;
      bump(s.open_at_end, ws.__kind);
      s.open_held_max[ws.__kind] = Math.max(s.open_held_max[ws.__kind] || 0, +(elapsed() - ws.__pausedAt).toFixed(1));
    }
    if (ws.isPaused) ws.terminate();
    else if (ws.readyState === WebSocket.OPEN) ws.close(1000);
  }
  const deadline = Date.now() + 10000;
  const wait = setInterval(() => {
    if (live.size === 0 || Date.now() > deadline) {
      clearInterval(wait);
      for (const ws of [...live]) ws.terminate();
      const final = snapshot();
      final.kind = "final";
      final.chains = canon;
      final.clients_with_chain = tips;
      emit(final);
      // let stdout flush, then leave
      setTimeout(() => process.exit(0), 200);
    }
  }, 100);
}
setTimeout(finish, SECONDS * 1000);
process.on("SIGTERM", finish);
process.on("SIGINT", finish);
// a hard stop in case something above never finishes
setTimeout(() => process.exit(3), (SECONDS + 20) * 1000).unref();
