// The explorerd dashboard: renders the /v1/stream feed.  Plain ES modules,
// no build step, no third-party code, nothing fetched but the daemon's own.
//
// URL parameters (for trying things out; the defaults suit everyone else):
//   ?heartbeat=15   seconds between app-level pings (a silent connection is
//                   dropped after about two of them)
//
// window.__explorer exposes the state (store, connection, what happened) to
// tests and to anyone curious in the devtools console.

import { StreamClient, streamUrl } from "./stream.js";
import { Store } from "./store.js";
import {
  formatAge, formatCompact, formatEther, formatInt, formatSeconds, formatTimestamp, formatUnits, shortHex, splitEther,
} from "./format.js";
import { eventName, eventSignature } from "./topics.js";

const params = new URLSearchParams(location.search);
const positive = (name, fallback) => {
  const v = Number(params.get(name));
  return Number.isFinite(v) && v > 0 ? v : fallback;
};

const MAX_TICKER = 60; // block items in the DOM (the store keeps more)
const MAX_TX_ROWS = 100;
const MAX_LOG_ROWS = 100;
const SPARK_BLOCKS = 60;
const MAX_EVENTS = 4;

const $ = (id) => document.getElementById(id);

/** el("span", {class: "x", title: "y"}, "text", child, ...) */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const store = new Store({ maxTxs: MAX_TX_ROWS, maxLogs: MAX_LOG_ROWS });
const stream = new StreamClient({
  url: streamUrl(),
  // Logs are asked for on every (re)connection: a server without them says
  // logs_unavailable and serves the other channels; a restarted one may have them.
  channels: ["newBlocks", "newTxs", "logs"],
  resumePoint: () => store.resumePoint(),
  heartbeatMs: positive("heartbeat", 15) * 1000,
});

// What happened, for tests and the curious (each list keeps its last 500).
const log = { states: [], shown: [], sent: [], answers: [], messages: 0 };
function remember(list, item) {
  list.push(item);
  if (list.length > 500) list.splice(0, list.length - 500);
}
// Whether the server sends logs: null until it answers a subscribe; why not.
let logsAvailable = null;
let logsUnavailableWhy = "";
window.__explorer = {
  store, stream, log,
  get state() { return stream.state; },
  get logsAvailable() { return logsAvailable; },
  /** Draw what is pending now (tests read the DOM right after the store). */
  render() {
    scheduled = true;
    flush();
  },
};

// ---------------------------------------------------------------- messages

let replayLeft = 0; // blocks still to come from a resume
let resumedFrom = null; // the `since` of the subscribe in flight
let gapOnResume = false; // the server answered that subscribe with history_unavailable
const pending = { items: [], txs: [], changed: [], events: [], logs: [], removedLogs: [], logsState: true };

stream.addEventListener("sent", (e) => {
  const message = e.detail;
  if (message.action === "subscribe") {
    resumedFrom = message.since || null;
    gapOnResume = false;
    remember(log.sent, { at: Date.now(), message });
  }
});

stream.addEventListener("state", (e) => {
  remember(log.states, { at: Date.now(), ...e.detail });
  renderConnection();
});

stream.addEventListener("message", (e) => {
  const message = e.detail;
  log.messages += 1;
  const now = Date.now();
  switch (message.type) {
    case "newBlock": {
      const rec = store.addBlock(message.data, now, { replayed: replayLeft > 0 });
      if (replayLeft > 0) replayLeft -= 1;
      if (rec && rec.inferredReorg) {
        pending.changed.push(...rec.inferredReorg.changed);
        pending.removedLogs.push(...rec.inferredReorg.changedLogs);
        pending.events.push(reorgEvent(rec.inferredReorg.event));
      }
      pending.logsState = true;
      if (rec) keepLast(pending.items, rec, MAX_TICKER);
      break;
    }
    case "newTx": {
      const tx = store.addTx(message.data, now);
      if (tx) keepLast(pending.txs, tx, MAX_TX_ROWS);
      break;
    }
    case "logs": {
      if (!message.data || typeof message.data !== "object") break;
      const { added, changed } = store.addLogs(message.data, now);
      for (const rec of added) keepLast(pending.logs, rec, MAX_LOG_ROWS);
      pending.removedLogs.push(...changed);
      break;
    }
    case "reorg": {
      const { event, changed, changedLogs } = store.reorg(message.data, now);
      pending.changed.push(...changed);
      pending.removedLogs.push(...changedLogs);
      pending.events.push(reorgEvent(event));
      break;
    }
    case "subscribed":
      remember(log.answers, { at: now, message });
      replayLeft = message.replayed || 0;
      // The channels we have now: without "logs", this server has none to send.
      if (Array.isArray(message.channels)) logsAvailable = message.channels.includes("logs");
      pending.logsState = true;
      if (resumedFrom && !gapOnResume) {
        const n = message.replayed || 0;
        pending.events.push({
          kind: "resume", at: now,
          parts: [["strong", "Reconnected"], ` after #${resumedFrom.height}: `,
            n ? `${n} missed block${n === 1 ? "" : "s"} caught up` : "nothing missed"],
        });
      }
      break;
    case "error": {
      remember(log.answers, { at: now, message });
      const error = message.error || {};
      if (error.code === "logs_unavailable") {
        // Not a chain event: the events view says it, for as long as it is so.
        logsAvailable = false;
        logsUnavailableWhy = error.message || "";
        pending.logsState = true;
      } else if (error.code === "history_unavailable") {
        gapOnResume = true;
        const marker = store.gap(error, now);
        keepLast(pending.items, marker, MAX_TICKER);
        pending.events.push(gapEvent(marker));
      } else {
        pending.events.push({ kind: "error", at: now, parts: [["strong", `Server error ${error.code}`], `: ${error.message || ""}`] });
      }
      break;
    }
    default:
      break; // pong, unsubscribed
  }
  schedule();
});

/** Only the newest `n` can be drawn: a background tab, whose timers run late, need not hoard more. */
function keepLast(list, item, n) {
  list.push(item);
  if (list.length > 2 * n) list.splice(0, list.length - n);
}

function reorgEvent(event) {
  const removed = event.removed || [];
  const heights = removed.map((r) => r.height).sort((a, b) => a - b);
  const which = heights.length === 0 ? "" : heights.length === 1 ? `block #${heights[0]}`
    : `blocks #${heights[0]}–#${heights[heights.length - 1]}`;
  const anc = event.common_ancestor || {};
  return {
    kind: "reorg", at: event.at,
    parts: [["strong", `Reorg, depth ${event.depth}`], which ? `: ${which} orphaned` : "",
      typeof anc.height === "number" ? `; chain continues from #${anc.height} ${shortHex(anc.hash || "")}` : "",
      event.inferred ? " (seen in the catch-up after a reconnect)" : ""],
  };
}

function gapEvent(marker) {
  return {
    kind: "gap", at: marker.at,
    parts: [["strong", "Gap"], ": the server could not resume",
      marker.after ? ` after #${marker.after.height}` : "",
      marker.oldestHeight !== null ? ` (it keeps #${marker.oldestHeight} onward)` : "",
      "; blocks in between are not shown"],
  };
}

// ---------------------------------------------------------------- rendering

// Messages are applied to the store at once and drawn at most every
// FLUSH_MS, in one go: a chain with hundreds of transactions per block, or a
// replay after a reconnect, costs a few DOM updates, not thousands.
const FLUSH_MS = 150;
let scheduled = false;
let lastFlush = 0;
function schedule() {
  if (scheduled) return;
  scheduled = true;
  const wait = Math.max(0, lastFlush + FLUSH_MS - performance.now());
  // rAF does not run in a background tab; a timer does (slowly).
  setTimeout(() => (document.hidden ? flush() : requestAnimationFrame(flush)), wait);
}

const blockNodes = new Map(); // key -> li
const blocksList = $("blocks");
const txBody = $("tx-rows");
const logBody = $("log-rows");
let shownMaxGas = 0;

function flush() {
  if (!scheduled) return;
  scheduled = false;
  lastFlush = performance.now();
  const items = pending.items.splice(0);
  const txs = pending.txs.splice(0);
  const changed = pending.changed.splice(0);
  const events = pending.events.splice(0);
  const logs = pending.logs.splice(0);
  const removedLogs = pending.removedLogs.splice(0);
  if (items.length) renderBlocks(items);
  if (changed.length) renderOrphans(changed);
  if (txs.length) renderTxs(txs);
  if (logs.length) renderLogs(logs);
  if (removedLogs.length) renderRemovedLogs(removedLogs);
  if (logs.length || pending.logsState) renderLogsState();
  pending.logsState = false;
  if (events.length) renderEvents(events);
  if (store.maxGas !== shownMaxGas) {
    shownMaxGas = store.maxGas;
    for (const li of blockNodes.values()) updateGasBar(li, store.blocks.get(li.dataset.key));
  }
  if (items.some((i) => i.kind === "block")) beat();
  if (items.length || changed.length) {
    drawSpark();
    if (details.open && details.current && changed.some((r) => r.key === details.current.key)) showDetails(details.current);
  }
  if (details.open && details.current && removedLogs.includes(details.current)) showDetails(details.current);
  renderStats();
}

/** The status dot beats once when blocks arrive (no endless animation on a screen left open). */
function beat() {
  if (stream.state !== "live" || document.hidden || !ring.animate) return;
  if (window.matchMedia("(prefers-reduced-motion: reduce)").matches) return;
  ring.animate([{ transform: "scale(1)", opacity: 0.7 }, { transform: "scale(2.6)", opacity: 0 }],
    { duration: 700, easing: "ease-out" });
}
const ring = document.querySelector("#conn .ring");

function dropEmpty(list) {
  const empty = list.querySelector(".empty");
  if (empty) empty.remove();
}

function renderBlocks(items) {
  dropEmpty(blocksList);
  const fresh = items.slice(-MAX_TICKER);
  const animate = fresh.length <= 8;
  const frag = document.createDocumentFragment();
  for (let i = fresh.length - 1; i >= 0; i--) {
    const item = fresh[i];
    const li = item.kind === "gap" ? gapItem(item) : blockItem(item);
    if (animate) li.classList.add("enter");
    blockNodes.set(item.key, li);
    frag.append(li);
  }
  blocksList.prepend(frag);
  while (blocksList.children.length > MAX_TICKER) {
    const last = blocksList.lastElementChild;
    blockNodes.delete(last.dataset.key);
    last.remove();
  }
}

function blockItem(rec) {
  const d = rec.data;
  const li = el("li", {
    class: "block",
    "data-key": rec.key, "data-epoch": rec.epoch, "data-height": d.height, "data-hash": d.hash,
    "data-tx-count": d.tx_count, "data-gas-used": d.gas_used, "data-miner": d.miner, "data-orphaned": "false",
  });
  const gas = el("span", { class: "gas" },
    el("span", { class: "gasbar", "aria-hidden": "true" }, el("span", { class: "fill" })),
    el("span", { class: "gas-num" }, formatInt(d.gas_used), el("span", { class: "unit" }, " gas")));
  const button = el("button", { type: "button", class: "block-btn", "data-key": rec.key },
    el("span", { class: "b-line" },
      el("span", { class: "b-height" }, el("span", { class: "visually-hidden" }, "Block "), `#${d.height}`),
      el("span", { class: "b-hash mono", title: d.hash }, shortHex(d.hash)),
      el("span", { class: "tag orphan-tag", hidden: true }, "orphaned"),
      rec.replayed ? el("span", { class: "tag replay-tag", title: "caught up after a reconnect" }, "caught up") : null,
      el("span", { class: "b-age age", "data-ts": d.timestamp }, formatAge(Date.now() / 1000 - d.timestamp))),
    el("span", { class: "b-line sub" },
      el("span", { class: "b-txs" }, el("strong", {}, formatInt(d.tx_count)), d.tx_count === 1 ? " tx" : " txs"),
      gas,
      el("span", { class: "b-miner" }, "by ", el("span", { class: "mono", title: d.miner }, shortHex(d.miner)))));
  li.append(button);
  updateGasBar(li, rec);
  if (rec.orphaned) markOrphan(li, rec);
  return li;
}

function updateGasBar(li, rec) {
  if (!li || !rec || rec.kind !== "block") return;
  const d = rec.data;
  const fill = li.querySelector(".gasbar .fill");
  if (!fill) return;
  let share;
  let title;
  if (typeof d.gas_limit === "number" && d.gas_limit > 0) {
    share = d.gas_used / d.gas_limit;
    title = `${Math.round(share * 100)}% of the gas limit (${formatInt(d.gas_limit)})`;
  } else {
    share = store.maxGas > 0 ? d.gas_used / store.maxGas : 0;
    title = `gas used, relative to the largest block seen (${formatInt(store.maxGas)})`;
  }
  fill.style.width = `${Math.max(0, Math.min(1, share)) * 100}%`;
  li.querySelector(".gas").title = title;
}

function gapItem(marker) {
  return el("li", { class: "gap", "data-key": marker.key, "data-after-height": marker.after ? marker.after.height : "" },
    el("span", { class: "gap-label" }, "gap"),
    el("span", { class: "gap-text" },
      "The server could not resume",
      marker.after ? ` after #${marker.after.height}` : "",
      "; blocks may be missing here."));
}

function markOrphan(li, rec) {
  li.classList.add("orphaned");
  li.dataset.orphaned = "true";
  const tag = li.querySelector(".orphan-tag");
  if (tag) tag.hidden = false;
  const btn = li.querySelector(".block-btn");
  if (btn && rec.orphanedBy) btn.title = `orphaned by a reorg of depth ${rec.orphanedBy.depth}`;
}

function renderOrphans(changed) {
  const keys = new Set();
  for (const rec of changed) {
    keys.add(rec.key);
    const li = blockNodes.get(rec.key);
    if (li) markOrphan(li, rec);
  }
  for (const tr of txBody.querySelectorAll("tr[data-block-key]")) {
    if (keys.has(tr.dataset.blockKey)) {
      tr.classList.add("orphaned");
      tr.dataset.orphaned = "true";
    }
  }
}

function valueCell(wei) {
  const parts = splitEther(wei);
  const td = el("td", { class: "num value" });
  if (!parts) {
    td.append(String(wei));
    return td;
  }
  td.append(parts.whole);
  if (parts.fraction) {
    // Full precision, but the digits past the sixth are dimmed.
    td.append(".", parts.fraction.slice(0, 6));
    if (parts.fraction.length > 6) td.append(el("span", { class: "dim" }, parts.fraction.slice(6)));
  }
  td.append(el("span", { class: "unit" }, " ETH"));
  if (parts.whole === "0" && !parts.fraction) td.classList.add("zero");
  return td;
}

const NO_RECEIPT = "not known: the server has no receipt for it";

/** "—" for a value the server does not know (a null receipt field): never 0, never success. */
function unknown(what = "unknown") {
  return [el("span", { "aria-hidden": "true" }, "—"), el("span", { class: "visually-hidden" }, what)];
}

function statusCell(status) {
  if (status === 1) {
    return el("td", { class: "c-status" }, el("span", { class: "status ok-status" }, "success"));
  }
  if (status === 0) {
    return el("td", { class: "c-status" }, el("span", { class: "tag fail-tag" }, "failed"));
  }
  return el("td", { class: "c-status unknown", title: `Status ${NO_RECEIPT}` }, ...unknown("status unknown"));
}

/** The fee in ETH to six decimals (the exact amount in its title and in the details). */
function feeCell(wei) {
  const text = formatUnits(wei, 18, 6);
  if (text === null) return el("td", { class: "num c-fee unknown", title: `Fee ${NO_RECEIPT}` }, ...unknown("fee unknown"));
  return el("td", { class: wei === "0" ? "num c-fee zero" : "num c-fee", title: `${formatEther(wei)} ETH (${wei} wei)` },
    text, el("span", { class: "unit" }, " ETH"));
}

function txRow(tx) {
  const d = tx.data;
  const classes = [tx.orphaned ? "orphaned" : null, d.status === 0 ? "failed" : null].filter(Boolean).join(" ");
  const tr = el("tr", {
    "data-key": tx.key, "data-epoch": tx.epoch, "data-hash": d.hash, "data-block-hash": d.block_hash,
    "data-block-key": tx.blockKey || "", "data-block-height": d.block_height, "data-value-wei": d.value_wei,
    "data-from": d.from_addr, "data-to": d.to_addr || "", "data-orphaned": tx.orphaned ? "true" : "false",
    "data-status": typeof d.status === "number" ? d.status : "", "data-fee-wei": d.fee_wei ?? "",
    class: classes || null,
  },
  el("td", { class: "c-hash" }, el("button", { type: "button", class: "link mono", "data-key": tx.key, title: d.hash },
    el("span", { class: "visually-hidden" }, "Transaction "), shortHex(d.hash, 6, 4))),
  statusCell(d.status),
  el("td", { class: "c-from mono", title: d.from_addr }, shortHex(d.from_addr)),
  el("td", { class: "c-to mono", title: d.to_addr || "contract creation" },
    d.to_addr ? shortHex(d.to_addr) : el("span", { class: "create" }, "contract creation")),
  valueCell(d.value_wei),
  feeCell(d.fee_wei),
  el("td", { class: "num c-block" }, `#${d.block_height}`));
  return tr;
}

function renderTxs(txs) {
  dropEmpty(txBody);
  const fresh = txs.slice(-MAX_TX_ROWS);
  const animate = fresh.length <= 12;
  const frag = document.createDocumentFragment();
  for (let i = fresh.length - 1; i >= 0; i--) {
    const tr = txRow(fresh[i]);
    if (animate) tr.classList.add("enter");
    frag.append(tr);
  }
  txBody.prepend(frag);
  while (txBody.children.length > MAX_TX_ROWS) txBody.lastElementChild.remove();
}

// ---------------------------------------------------------------- logs (the events view)

function logRow(rec) {
  const d = rec.data;
  const topic = Array.isArray(d.topics) && d.topics.length ? d.topics[0] : null;
  const name = eventName(topic);
  const tx = store.txOfLog(rec);
  const txText = [el("span", { class: "visually-hidden" }, "Transaction "), shortHex(d.tx_hash, 6, 4)];
  const tr = el("tr", {
    "data-key": rec.key, "data-epoch": rec.epoch, "data-block-hash": rec.blockHash, "data-block-height": rec.blockHeight,
    "data-log-index": d.log_index, "data-address": d.address, "data-topic": topic ?? "", "data-tx-hash": d.tx_hash,
    "data-removed": rec.removed ? "true" : "false", class: rec.removed ? "removed" : null,
  },
  el("td", { class: "c-event" },
    el("button", {
      type: "button", class: "link", "data-key": rec.key,
      title: eventSignature(topic) || topic || "no topics: an anonymous event",
    },
      el("span", { class: "visually-hidden" }, "Event "),
      name ? el("span", { class: "ev-name" }, name) : null, name ? " " : null,
      topic ? el("span", { class: "mono ev-topic" }, shortHex(topic)) : el("span", { class: "ev-none" }, "no topic")),
    rec.removed ? removedMark() : null),
  el("td", { class: "c-address mono", title: d.address }, shortHex(d.address)),
  el("td", { class: "c-logtx", title: d.tx_hash },
    tx ? el("button", { type: "button", class: "link mono", "data-key": tx.key }, ...txText)
      : el("span", { class: "mono" }, ...txText)),
  el("td", { class: "num c-block", title: `log ${d.log_index} of block ${rec.blockHash}` }, `#${rec.blockHeight}`));
  return tr;
}

/** The "removed" tag (in a box of its own: the row's strike-through does not run into it). */
function removedMark() {
  return el("span", { class: "removed-mark" }, " ",
    el("span", { class: "tag removed-tag", title: "no longer canonical: its block was orphaned by a reorg" }, "removed"));
}

function renderLogs(logs) {
  const fresh = logs.slice(-MAX_LOG_ROWS);
  const animate = fresh.length <= 12;
  const frag = document.createDocumentFragment();
  for (let i = fresh.length - 1; i >= 0; i--) {
    const tr = logRow(fresh[i]);
    if (animate) tr.classList.add("enter");
    frag.append(tr);
  }
  logBody.prepend(frag);
  const rows = logBody.querySelectorAll("tr[data-key]");
  for (let i = MAX_LOG_ROWS; i < rows.length; i++) rows[i].remove();
}

/** Logs that stopped being canonical stay in view, struck through and tagged, as orphaned blocks do. */
function renderRemovedLogs(recs) {
  for (const rec of recs) {
    const tr = logBody.querySelector(`tr[data-key="${rec.key}"]`);
    if (!tr || tr.dataset.removed === "true") continue;
    tr.classList.add("removed");
    tr.dataset.removed = "true";
    tr.querySelector(".c-event").append(removedMark());
  }
}

/** What the events view says while it has nothing to list, and whether logs are available at all. */
function renderLogsState() {
  const pane = $("logs-pane");
  const notice = $("logs-notice");
  const empty = $("logs-empty");
  const hasRows = logBody.querySelector("tr[data-key]") !== null;
  pane.dataset.logs = logsAvailable === false ? "unavailable" : logsAvailable ? "available" : "pending";
  const says = logsAvailable === false ? "Logs are not available on this server, so no events can be shown." : "";
  if (notice.textContent !== says) notice.textContent = says; // a live region: only a change is announced
  notice.title = logsAvailable === false ? logsUnavailableWhy : "";
  $("logs-note").hidden = logsAvailable === false;
  empty.hidden = hasRows || logsAvailable === false;
  let text = "Waiting for events…";
  const latest = store.latest;
  if (logsAvailable && latest && latest.data.log_count == null) {
    text = "Waiting for events… the server does not know the logs of the latest blocks.";
  }
  const cell = empty.firstElementChild;
  if (cell.textContent !== text) cell.textContent = text;
}

const eventsList = $("events");
function renderEvents(events) {
  const idle = eventsList.querySelector(".idle");
  if (idle) idle.remove();
  for (const event of events) {
    const li = el("li", { class: `event ${event.kind}`, "data-kind": event.kind },
      el("time", { datetime: new Date(event.at).toISOString() }, clock(event.at)), " ");
    for (const part of event.parts) {
      if (!part) continue;
      li.append(Array.isArray(part) ? el(part[0], {}, part[1]) : part);
    }
    eventsList.prepend(li);
  }
  while (eventsList.children.length > MAX_EVENTS) eventsList.lastElementChild.remove();
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

// ---------------------------------------------------------------- stats

function renderStats() {
  const nowMs = Date.now();
  const now = nowMs / 1000;
  const latest = store.latest;
  if (latest) {
    $("head-height").textContent = `#${latest.height}`;
    const txs = latest.data.tx_count;
    $("head-age").textContent = `${ago(now - latest.data.timestamp)} · ${formatInt(txs)} tx${txs === 1 ? "" : "s"}`;
    $("head-age").title = latest.hash;
    const lag = latest.lag;
    $("lag").textContent = formatSeconds(Math.max(0, lag));
    $("lag").title = lag < 0 ? `the block's timestamp is ${(-lag).toFixed(1)} s ahead of this computer's clock` : "";
    document.title = `#${latest.height} · explorerd`;
  }
  const { blocksPerMin, txsPerMin } = store.throughput(now);
  $("bpm").textContent = blocksPerMin === null ? "–" : formatCompact(blocksPerMin);
  $("tpm").textContent = txsPerMin === null ? "–" : formatCompact(txsPerMin);
  $("reorg-count").textContent = formatInt(store.reorgs.length);
  const last = store.reorgs.at(-1);
  if (last) {
    $("reorg-last").textContent = `last depth ${last.depth}, ${ago((nowMs - last.at) / 1000)}`;
  }
}

function ago(seconds) {
  const text = formatAge(seconds);
  return text === "now" ? "just now" : `${text} ago`;
}

const connState = $("conn-state");
const connDetail = $("conn-detail");
const STATE_LABELS = { idle: "Idle", connecting: "Connecting", live: "Live", reconnecting: "Reconnecting", offline: "Offline" };

function renderConnection() {
  const conn = $("conn");
  const state = stream.state;
  conn.dataset.state = state;
  const label = STATE_LABELS[state] || state;
  if (connState.textContent !== label) connState.textContent = label;
  let detail = "";
  if (state === "reconnecting" && stream.retryAt) {
    detail = ` in ${Math.max(1, Math.ceil((stream.retryAt - Date.now()) / 1000))} s`;
  } else if (state === "connecting" || state === "reconnecting") {
    detail = "…";
  } else if (state === "offline") {
    detail = " · waiting for the network";
  }
  if (connDetail.textContent !== detail) connDetail.textContent = detail;
  if (log.shown.at(-1) !== label + detail) remember(log.shown, label + detail); // what the status said
  const last = log.states.at(-1);
  conn.title = last && last.reason ? last.reason : "";
}

// ---------------------------------------------------------------- chart

const spark = $("spark");
function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function drawSpark() {
  const wrap = spark.parentElement;
  const width = wrap.clientWidth;
  const height = wrap.clientHeight;
  if (!width || !height) return;
  const dpr = window.devicePixelRatio || 1;
  if (spark.width !== Math.round(width * dpr) || spark.height !== Math.round(height * dpr)) {
    spark.width = Math.round(width * dpr);
    spark.height = Math.round(height * dpr);
  }
  const ctx = spark.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const recs = store.recentCanonical(SPARK_BLOCKS);
  const desc = $("spark-desc");
  if (!recs.length) {
    desc.textContent = "no blocks yet";
    return;
  }
  const counts = recs.map((r) => r.data.tx_count);
  const max = Math.max(1, ...counts);
  const slot = width / SPARK_BLOCKS;
  const barWidth = Math.max(1, slot - Math.min(2, slot * 0.25));
  const base = cssVar("--spark") || "#3f8cff";
  const hot = cssVar("--accent") || "#2fd3a7";
  const grid = cssVar("--grid") || "rgba(255,255,255,.08)";
  ctx.fillStyle = grid;
  ctx.fillRect(0, height - 1, width, 1);
  ctx.fillRect(0, 0, width, 1);
  counts.forEach((count, i) => {
    const x = width - (counts.length - i) * slot;
    const h = count === 0 ? 0 : Math.max(2, (count / max) * (height - 4));
    ctx.fillStyle = i === counts.length - 1 ? hot : base;
    ctx.fillRect(x + (slot - barWidth) / 2, height - 1 - h, barWidth, h);
  });
  const avg = counts.reduce((a, b) => a + b, 0) / counts.length;
  desc.textContent = `last ${counts.length} blocks · max ${formatInt(max)} · avg ${formatCompact(avg)}`;
}

new ResizeObserver(() => drawSpark()).observe(spark.parentElement);
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", drawSpark);

// ---------------------------------------------------------------- details

const details = $("details");
details.current = null;

function field(label, ...value) {
  return [el("dt", {}, label), el("dd", {}, ...value)];
}

function jumpButton(text, key) {
  return el("button", { type: "button", class: "link mono", "data-key": key }, text);
}

function showDetails(rec) {
  const body = $("details-body");
  body.replaceChildren();
  details.current = rec;
  const dl = el("dl", { class: "fields" });
  let message;
  if (rec.kind === "block") {
    const d = rec.data;
    $("details-title").textContent = `Block #${d.height}`;
    const parent = store.block(d.parent_hash, rec.epoch);
    const status = rec.orphaned
      ? el("span", { class: "tag orphan-tag" }, `orphaned (reorg of depth ${rec.orphanedBy ? rec.orphanedBy.depth : "?"})`)
      : el("span", { class: "tag ok-tag" }, "canonical");
    dl.append(
      ...field("Status", status, rec.canonicalAgain ? " again, after being orphaned" : "",
        rec.replayed ? " · caught up after a reconnect" : ""),
      ...field("Height", formatInt(d.height)),
      ...field("Hash", el("code", { class: "hex" }, d.hash)),
      ...field("Parent", parent ? jumpButton(d.parent_hash, parent.key) : el("code", { class: "hex" }, d.parent_hash)),
      ...field("Timestamp", `${formatTimestamp(d.timestamp)} (${d.timestamp}) · ${ago(Date.now() / 1000 - d.timestamp)}`),
      ...field("Transactions", formatInt(d.tx_count)),
      ...field("Logs", ...count(d.log_count, "the server does not know this block's logs")),
      ...field("Gas used", formatInt(d.gas_used), typeof d.gas_limit === "number" ? ` of ${formatInt(d.gas_limit)}` : ""),
      ...field("Base fee", ...gwei(d.base_fee_per_gas, "none (no EIP-1559 base fee in this block)")),
      ...field("Burnt fees", ...ether(d.burnt_fees_wei, "none (no EIP-1559 base fee in this block)")),
      ...field("Size", ...(typeof d.size === "number" ? [`${formatInt(d.size)} bytes`] : unknown())),
      ...field("Miner", el("code", { class: "hex" }, d.miner)),
      ...field("Received", `${clock(rec.receivedAt)} · lag ${formatSeconds(rec.lag)}`),
    );
    message = { type: "newBlock", data: d };
  } else if (rec.kind === "log") {
    message = logDetails(rec, dl);
  } else {
    const d = rec.data;
    $("details-title").textContent = "Transaction";
    const blockRec = store.blocks.get(rec.blockKey);
    dl.append(
      ...field("Status", d.status === 1 ? el("span", { class: "tag ok-tag" }, "success")
        : d.status === 0 ? el("span", { class: "tag fail-tag" }, "failed")
        : unknownWhy("the server has no receipt for it")),
      ...field("Chain", rec.orphaned || (blockRec && blockRec.orphaned)
        ? el("span", { class: "tag orphan-tag" }, "in an orphaned block") : el("span", { class: "tag ok-tag" }, "in a canonical block")),
      ...field("Hash", el("code", { class: "hex" }, d.hash)),
      ...field("Block", blockRec ? jumpButton(`#${d.block_height}`, rec.blockKey) : `#${d.block_height}`,
        " · index ", String(d.tx_index)),
      ...field("Block hash", el("code", { class: "hex" }, d.block_hash)),
      ...field("From", el("code", { class: "hex" }, d.from_addr)),
      ...field("To", d.to_addr ? el("code", { class: "hex" }, d.to_addr) : el("span", { class: "create" }, "contract creation")),
      ...field("Value", el("span", { class: "value-full" }, `${formatEther(d.value_wei) ?? d.value_wei} ETH`),
        el("br"), el("span", { class: "muted" }, `${d.value_wei} wei`)),
      ...field("Fee", ...(typeof d.fee_wei === "string"
        ? [el("span", { class: "value-full" }, `${formatEther(d.fee_wei) ?? d.fee_wei} ETH`),
          el("br"), el("span", { class: "muted" }, `${d.fee_wei} wei`)]
        : [unknownWhy("the server has no receipt for it")])),
      ...field("Gas used", ...(typeof d.gas_used === "number" ? [formatInt(d.gas_used)] : unknown()),
        typeof d.gas === "number" ? ` of ${formatInt(d.gas)} (its gas limit)` : ""),
      ...field("Gas price", ...gasPrice(d)),
      ...field("Nonce", ...(typeof d.nonce === "number" ? [formatInt(d.nonce)] : unknown())),
      ...field("Type", TX_TYPES[d.type] ? `${d.type} (${TX_TYPES[d.type]})` : String(d.type ?? "—")),
      ...field("Call", ...call(d)),
      ...(d.contract_address ? field("Contract created", el("code", { class: "hex" }, d.contract_address)) : []),
      ...field("Logs", ...count(d.log_count, "the server does not know its logs")),
    );
    message = { type: "newTx", data: d };
  }
  const raw = rec.kind === "log" ? "Log as received" : "Message as received";
  body.append(dl, el("details", { class: "raw" }, el("summary", {}, raw),
    el("pre", {}, JSON.stringify(message, null, 2))));
  if (!details.open) details.showModal();
}

function recordFor(key) {
  return store.blocks.get(key) || store.txByKey.get(key) || store.logByKey.get(key) || null;
}

const TX_TYPES = { 0: "legacy", 1: "access list, EIP-2930", 2: "EIP-1559", 3: "blob, EIP-4844", 4: "set code, EIP-7702" };

/** "—" and, dimmed, why it is not known. */
function unknownWhy(why) {
  return el("span", { class: "unknown" }, ...unknown(), el("span", { class: "muted" }, ` ${why}`));
}

function count(n, why) {
  return typeof n === "number" ? [formatInt(n)] : [unknownWhy(why)];
}

function gwei(wei, none) {
  const text = formatUnits(wei, 9, 3);
  if (text === null) return [el("span", { class: "muted" }, none)];
  return [`${text} gwei`, el("span", { class: "muted" }, ` (${wei} wei)`)];
}

function ether(wei, none) {
  const text = formatEther(wei);
  return text === null ? [el("span", { class: "muted" }, none)] : [`${text} ETH`];
}

function gasPrice(d) {
  const parts = [];
  const price = formatUnits(d.gas_price_wei, 9, 3);
  parts.push(price === null ? unknownWhy("not given") : `${price} gwei`);
  const max = formatUnits(d.max_fee_per_gas_wei, 9, 3);
  const tip = formatUnits(d.max_priority_fee_per_gas_wei, 9, 3);
  if (max !== null) parts.push(el("span", { class: "muted" }, ` · max ${max} gwei`));
  if (tip !== null) parts.push(el("span", { class: "muted" }, ` · priority ${tip} gwei`));
  return parts;
}

function call(d) {
  if (d.method_id) {
    return [el("code", { class: "hex" }, d.method_id),
      el("span", { class: "muted" }, ` · ${formatInt(d.input_size)} bytes of input`)];
  }
  if (d.input_size === 0) return [el("span", { class: "muted" }, "none (no input)")];
  return typeof d.input_size === "number" ? [`${formatInt(d.input_size)} bytes of input`] : unknown();
}

/** A log's fields into `dl`; returns what to show as received. */
function logDetails(rec, dl) {
  const d = rec.data;
  const topics = Array.isArray(d.topics) ? d.topics : [];
  const name = eventName(topics[0]);
  $("details-title").textContent = name ? `Event ${name}` : "Event";
  const blockRec = store.block(rec.blockHash, rec.epoch);
  const tx = store.txOfLog(rec);
  const signature = eventSignature(topics[0]);
  dl.append(
    ...field("Status", rec.removed
      ? el("span", { class: "tag removed-tag" }, "removed (its block was orphaned by a reorg)")
      : el("span", { class: "tag ok-tag" }, "in a canonical block")),
    ...(signature ? field("Event", el("code", {}, signature)) : []),
    ...field("Contract", el("code", { class: "hex" }, d.address)),
    ...field(topics.length === 1 ? "Topic" : "Topics", topics.length
      ? el("ol", { class: "topics" }, ...topics.map((t) => el("li", {}, el("code", { class: "hex" }, t))))
      : el("span", { class: "muted" }, "none (an anonymous event)")),
    ...field("Data", typeof d.data === "string" && d.data.length > 2
      ? el("code", { class: "hex data" }, d.data.length > 2050 ? `${d.data.slice(0, 2050)}…` : d.data)
      : el("span", { class: "muted" }, "none"),
    typeof d.data === "string" && d.data.length > 2 ? el("span", { class: "muted" }, ` (${formatInt((d.data.length - 2) / 2)} bytes)`) : ""),
    ...field("Transaction", tx ? jumpButton(d.tx_hash, tx.key) : el("code", { class: "hex" }, d.tx_hash),
      ` · index ${d.tx_index}`),
    ...field("Block", blockRec ? jumpButton(`#${rec.blockHeight}`, blockRec.key) : `#${rec.blockHeight}`,
      ` · log index ${d.log_index}`),
    ...field("Block hash", el("code", { class: "hex" }, rec.blockHash)),
    ...field("Received", clock(rec.receivedAt)),
  );
  return d;
}

function onSelect(event) {
  const button = event.target.closest("button[data-key]");
  if (!button) return;
  const rec = recordFor(button.dataset.key);
  if (rec) showDetails(rec);
}
blocksList.addEventListener("click", onSelect);
txBody.addEventListener("click", onSelect);
logBody.addEventListener("click", onSelect);
$("details-body").addEventListener("click", onSelect);
details.addEventListener("click", (event) => {
  if (event.target === details) details.close(); // a click on the backdrop
});
details.addEventListener("close", () => { details.current = null; });

// ---------------------------------------------------------------- clocks

function tick() {
  const now = Date.now() / 1000;
  for (const span of blocksList.querySelectorAll(".age[data-ts]")) {
    const text = formatAge(now - Number(span.dataset.ts));
    if (span.textContent !== text) span.textContent = text;
  }
  renderStats();
  renderConnection();
}
setInterval(tick, 1000);
setInterval(() => { if (stream.state === "reconnecting") renderConnection(); }, 250);

$("stream-url").textContent = stream.url;
$("tx-limit").textContent = String(MAX_TX_ROWS);
$("log-limit").textContent = String(MAX_LOG_ROWS);
stream.start();
