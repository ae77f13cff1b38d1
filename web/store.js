// What the dashboard knows: recent blocks (orphaned ones included), the
// latest transactions and logs, reorgs and gaps.  No DOM here; app.js renders it.
//
// Identity.  A block is known by its hash, a transaction by its block and its
// own hash (after a reorg the same transaction is often mined again in the
// replacement block: a new row, not a duplicate).  A block we hold and that
// is canonical, sent again, is a duplicate and dropped (a replay overlapping
// what we hold).  A block we hold as *orphaned*, sent again, is canonical
// again (a chain that flip-flops between branches): it gets a new record, the
// orphaned one stays as it was.  So records have their own keys, and the
// index by hash points at the newest record of each block.
//
// Everything is scoped by an *epoch*: when the server cannot resume our
// stream (history_unavailable) it can no longer be related to what we hold,
// so a gap marker starts a new epoch and we stop comparing with the old one.
//
// Logs.  A log is known by its block's hash and its log index.  A log that
// stops being canonical (its block orphaned by a reorg, or the server sends
// it again with "removed": true) stays, marked removed, as orphaned blocks
// and their transactions do; the same log sent again later (its block
// canonical again) is a new record.

export class Store {
  constructor({ maxBlocks = 1000, maxTxs = 100, maxLogs = 100, maxTxKeys = 50000, windowSeconds = 60 } = {}) {
    this.maxBlocks = maxBlocks;
    this.maxTxs = maxTxs;
    this.maxLogs = maxLogs;
    this.maxTxKeys = maxTxKeys;
    this.windowSeconds = windowSeconds;
    this.epoch = 0;
    this.seq = 0;
    this.timeline = []; // oldest first: {kind: "block", ...record} | {kind: "gap", ...}
    this.blocks = new Map(); // record key -> block record (what the DOM refers to)
    this.byHash = new Map(); // `${epoch}:${hash}` -> the newest record of that block
    this.txs = []; // oldest first, at most maxTxs
    this.txByKey = new Map(); // key -> tx record, for the rows we keep
    this.txKeys = new Set(); // every tx key seen lately (dedupe), bounded
    this.logs = []; // oldest first, at most maxLogs
    this.logByKey = new Map(); // record key -> log record, for the rows we keep
    this.logById = new Map(); // `${epoch}:${block hash}:${log index}` -> the newest record we keep
    this.logsSeen = new Map(); // that id -> "live" | "removed", for every log seen lately (dedupe), bounded
    this.reorgs = [];
    this.gaps = [];
    this.duplicates = { blocks: 0, txs: 0, logs: 0 };
    this.maxGas = 0;
    this.latest = null; // the newest canonical block record
    this.anchor = null; // {height, hash}: the common ancestor of the last reorg, if nothing newer
  }

  /** The newest record of a block, by hash (in this epoch unless told). */
  block(hash, epoch = this.epoch) {
    return this.byHash.get(`${epoch}:${hash}`) || null;
  }

  /**
   * A newBlock message's data; returns the new record, or null for a
   * duplicate.  If it replaces canonical blocks we hold at its height or
   * above, they are orphaned by a reorg nobody announced to us (we resumed
   * from below them, e.g. from the parent of a block whose transactions the
   * drop cut off): `rec.inferredReorg` is then {event, changed}, as reorg().
   */
  addBlock(data, nowMs, { replayed = false } = {}) {
    const held = this.block(data.hash);
    if (held && !held.orphaned) {
      this.duplicates.blocks += 1;
      return null;
    }
    const stale = [];
    for (let i = this.timeline.length - 1; i >= 0; i--) {
      const r = this.timeline[i];
      if (r.kind !== "block" || r.epoch !== this.epoch) break;
      if (r.orphaned) continue;
      if (r.height < data.height) break; // chain order: everything older is lower
      stale.push(r);
    }
    const inferredReorg = stale.length ? this.reorg({
      depth: stale.length,
      common_ancestor: { height: data.height - 1, hash: data.parent_hash },
      removed: stale.map((r) => ({ height: r.height, hash: r.hash })).reverse(),
      inferred: true,
    }, nowMs) : null;
    const seq = ++this.seq;
    const rec = {
      kind: "block",
      key: `b${seq}`,
      seq,
      epoch: this.epoch,
      height: data.height,
      hash: data.hash,
      data,
      receivedAt: nowMs,
      lag: nowMs / 1000 - data.timestamp,
      replayed,
      orphaned: false,
      orphanedBy: null,
      canonicalAgain: Boolean(held),
      inferredReorg,
      txsSeen: 0,
      txKeys: new Set(),
    };
    this.timeline.push(rec);
    this.blocks.set(rec.key, rec);
    this.byHash.set(`${rec.epoch}:${rec.hash}`, rec);
    if (typeof data.gas_used === "number" && data.gas_used > this.maxGas) this.maxGas = data.gas_used;
    this.latest = rec;
    this.anchor = null;
    this._trimTimeline();
    return rec;
  }

  _trimTimeline() {
    while (this.timeline.length > this.maxBlocks) {
      const old = this.timeline.shift();
      if (old.kind !== "block") continue;
      this.blocks.delete(old.key);
      const index = `${old.epoch}:${old.hash}`;
      if (this.byHash.get(index) === old) this.byHash.delete(index);
    }
  }

  /** A newTx message's data; returns the new record, or null for a duplicate. */
  addTx(data, nowMs) {
    const block = this.block(data.block_hash);
    let key;
    if (block) {
      // Per block record: a block that is canonical again gets its rows again.
      key = `${block.key}:${data.hash}`;
      if (block.txKeys.has(key)) {
        this.duplicates.txs += 1;
        return null;
      }
      block.txKeys.add(key);
      block.txsSeen += 1;
    } else {
      // Its block is not held (a server bug, or trimmed): dedupe by hashes.
      key = `${this.epoch}:${data.block_hash}:${data.hash}`;
      if (this.txKeys.has(key)) {
        this.duplicates.txs += 1;
        return null;
      }
      this.txKeys.add(key);
      if (this.txKeys.size > this.maxTxKeys) this.txKeys.delete(this.txKeys.values().next().value);
    }
    const tx = {
      key,
      seq: ++this.seq,
      epoch: this.epoch,
      data,
      blockKey: block ? block.key : null,
      receivedAt: nowMs,
      orphaned: block ? block.orphaned : false,
    };
    this.txs.push(tx);
    this.txByKey.set(key, tx);
    while (this.txs.length > this.maxTxs) this.txByKey.delete(this.txs.shift().key);
    return tx;
  }

  /**
   * A logs message's data.  Returns {added, changed}: the new log records
   * (a log we hold and that is still canonical is a duplicate, dropped) and,
   * for "removed": true, the records now marked removed.
   */
  addLogs(data, nowMs) {
    const added = [];
    const changed = [];
    const logs = Array.isArray(data.logs) ? data.logs : [];
    const block = this.block(data.block_hash);
    for (const log of logs) {
      if (!log || typeof log !== "object") continue;
      const id = `${this.epoch}:${data.block_hash}:${log.log_index}`;
      if (data.removed) {
        this._logSeen(id, "removed");
        const rec = this.logById.get(id);
        if (rec && !rec.removed) {
          rec.removed = true;
          changed.push(rec);
        }
        continue;
      }
      if (this.logsSeen.get(id) === "live") {
        this.duplicates.logs += 1;
        continue;
      }
      const orphaned = Boolean(block && block.orphaned);
      this._logSeen(id, orphaned ? "removed" : "live");
      const seq = ++this.seq;
      const rec = {
        kind: "log",
        key: `l${seq}`,
        seq,
        id,
        epoch: this.epoch,
        blockHeight: data.block_height,
        blockHash: data.block_hash,
        blockKey: block ? block.key : null,
        data: log,
        receivedAt: nowMs,
        removed: orphaned,
      };
      this.logs.push(rec);
      this.logByKey.set(rec.key, rec);
      this.logById.set(id, rec);
      added.push(rec);
    }
    while (this.logs.length > this.maxLogs) {
      const old = this.logs.shift();
      this.logByKey.delete(old.key);
      if (this.logById.get(old.id) === old) this.logById.delete(old.id);
    }
    return { added, changed };
  }

  _logSeen(id, state) {
    this.logsSeen.delete(id); // re-inserted: the newest stay when the oldest go
    this.logsSeen.set(id, state);
    if (this.logsSeen.size > this.maxTxKeys) this.logsSeen.delete(this.logsSeen.keys().next().value);
  }

  /** The transaction record a log came from, while we keep it, or null. */
  txOfLog(rec) {
    const block = this.block(rec.blockHash, rec.epoch);
    const key = block ? `${block.key}:${rec.data.tx_hash}` : `${rec.epoch}:${rec.blockHash}:${rec.data.tx_hash}`;
    return this.txByKey.get(key) || null;
  }

  /**
   * A reorg message's data.  Every block we hold above the common ancestor
   * (in this epoch) is no longer canonical: the ones the server lists and,
   * defensively, any other.  They stay, marked orphaned.  Returns the
   * records that changed.
   */
  reorg(data, nowMs) {
    const ancestor = data.common_ancestor || {};
    const removed = new Set((data.removed || []).map((r) => r.hash));
    const changed = [];
    for (const rec of this.timeline) {
      if (rec.kind !== "block" || rec.epoch !== this.epoch || rec.orphaned) continue;
      if (removed.has(rec.hash) || (typeof ancestor.height === "number" && rec.height > ancestor.height)) {
        rec.orphaned = true;
        rec.orphanedBy = data;
        changed.push(rec);
      }
    }
    const keys = new Set(changed.map((r) => r.key));
    for (const tx of this.txs) if (keys.has(tx.blockKey)) tx.orphaned = true;
    // Their logs too (the server retracts them with "removed": true as well).
    const hashes = new Set(changed.map((r) => r.hash));
    const changedLogs = [];
    for (const log of this.logs) {
      if (log.removed || log.epoch !== this.epoch) continue;
      if (keys.has(log.blockKey) || hashes.has(log.blockHash) || removed.has(log.blockHash)) {
        log.removed = true;
        this._logSeen(log.id, "removed");
        changedLogs.push(log);
      }
    }
    const event = { ...data, at: nowMs, epoch: this.epoch, orphanedHere: changed.length };
    this.reorgs.push(event);
    if (this.reorgs.length > 100) this.reorgs.shift();
    this.latest = this._newestCanonical();
    if (typeof ancestor.height === "number" && typeof ancestor.hash === "string") {
      this.anchor = { height: ancestor.height, hash: ancestor.hash };
    }
    return { event, changed, changedLogs };
  }

  /**
   * The server could not resume after our last block: what follows is not
   * connected to what we hold.  Starts a new epoch; returns the gap marker.
   */
  gap(info, nowMs) {
    const last = this.resumePoint();
    const marker = {
      kind: "gap",
      key: `gap:${this.epoch}`,
      seq: ++this.seq,
      epoch: this.epoch,
      after: last,
      oldestHeight: info.oldest_height ?? null,
      message: info.message || "",
      at: nowMs,
    };
    this.epoch += 1;
    this.timeline.push(marker);
    this.gaps.push(marker);
    this.anchor = null;
    this._trimTimeline();
    return marker;
  }

  _newestCanonical() {
    for (let i = this.timeline.length - 1; i >= 0; i--) {
      const rec = this.timeline[i];
      if (rec.kind !== "block") return null;
      if (rec.epoch === this.epoch && !rec.orphaned) return rec;
    }
    return null;
  }

  /**
   * Where to resume: the newest canonical block we hold with all of its
   * transactions (a connection can drop between a block and the rest of its
   * transactions; resuming from its parent gets them replayed, and the
   * duplicates are dropped), or the last reorg's common ancestor.
   */
  resumePoint({ needTxs = true } = {}) {
    for (let i = this.timeline.length - 1; i >= 0; i--) {
      const rec = this.timeline[i];
      if (rec.kind !== "block" || rec.epoch !== this.epoch) break;
      if (rec.orphaned) continue;
      if (!needTxs || rec.txsSeen >= rec.data.tx_count) return { height: rec.height, hash: rec.hash };
    }
    return this.anchor ? { ...this.anchor } : null;
  }

  /** Canonical blocks, newest last, at most n (for the chart). */
  recentCanonical(n) {
    const out = [];
    for (let i = this.timeline.length - 1; i >= 0 && out.length < n; i--) {
      const rec = this.timeline[i];
      if (rec.kind === "block" && !rec.orphaned) out.push(rec);
    }
    return out.reverse();
  }

  /**
   * Throughput over the last windowSeconds of chain time (block timestamps,
   * canonical blocks): blocks and transactions per minute, or nulls while we
   * have seen less than a few seconds of chain.
   */
  throughput(nowSec) {
    const from = nowSec - this.windowSeconds;
    let blocks = 0;
    let txs = 0;
    let oldest = Infinity;
    for (let i = this.timeline.length - 1; i >= 0; i--) {
      const rec = this.timeline[i];
      if (rec.kind !== "block" || rec.orphaned) continue;
      const ts = rec.data.timestamp;
      if (ts < oldest) oldest = ts;
      if (ts > from && ts <= nowSec + 5) {
        blocks += 1;
        txs += rec.data.tx_count;
      }
    }
    // Scale up while the window is not yet covered by what we hold.
    const covered = Math.min(this.windowSeconds, nowSec - Math.max(oldest, from));
    if (!(covered >= 2)) return { blocksPerMin: null, txsPerMin: null, window: covered };
    const scale = 60 / Math.max(covered, 1);
    return { blocksPerMin: blocks * scale, txsPerMin: txs * scale, window: covered };
  }
}
