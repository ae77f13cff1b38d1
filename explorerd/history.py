"""
Published blocks as frames, and the hub's memory of recent ones so a client
that reconnects can resume.

An L{Entry} holds a block's frames, built once and shared by every client:
the C{newBlock} frame, and its transactions in each shape a client can ask
for (one C{newTx} per transaction or one C{newTxs} batch; full or hashes
only), each made the first time someone needs it.

L{History} keeps the last C{size} canonical entries, so a replay is writes
of bytes we already have, and remembers blocks a reorg removed (height and
parent only), so a client that still holds one can be told exactly which
of its blocks are gone.

The chain it holds is linked: every block's C{parent_hash} is the hash of
the block before it.  The live-tail and the edge check links before they
publish; L{History.add} checks again and refuses a block that would break
the chain (L{BrokenChain}) before any client is sent it.
"""

from collections import OrderedDict, deque

from explorerd.events import (
    InvalidBlock,
    batch_data,
    encode,
    frame,
    logs_data,
    node_block,
    node_extras,
    node_header,
    tx_hash_data,
    wire_block,
)

# How a client takes a block's transactions: one message each or a batch per
# block; full, hashes only, or full with the call data.
PLAIN, HASHES, BATCH, BATCH_HASHES = "plain", "hashes", "batch", "batch_hashes"
PLAIN_INPUT, BATCH_INPUT = "plain_input", "batch_input"
_PER_TX = (PLAIN, HASHES, PLAIN_INPUT)


class BrokenChain(InvalidBlock):
    """
    A block at the next height whose parent is not the newest block held:
    a reorg that was not announced.  Raised by L{History.add} before the hub
    writes the block to anyone (an L{InvalidBlock}, so publishers that
    discard invalid blocks discard this one too).
    """


class Entry:
    """
    One published block: its wire-shape data, transactions and logs, and
    their frames, each made the first time a client needs it and shared by
    every client after.  Built by the block's source (L{fromNode},
    L{fromWire}), which checks it whole first; the hub and every observer
    only read it.

    @ivar logs: the block's logs in the wire shape, or C{None} when they are
        not known (receipts off).
    @ivar header: the block's header as the node gave it (geth's C{newHeads}
        fields, values untouched), or C{None} (an edge's blocks).
    @ivar extras: the rest of the node's block but its transactions
        (C{uncles}, C{size}, ...), or C{None}: with the header and the
        transaction hashes, the block as C{eth_getBlockByHash(h, false)}
        answers it.
    """

    __slots__ = ("height", "hash", "parent_hash", "data", "txs_data", "tx_count", "logs", "inputs", "header",
                 "extras", "block_frame", "_txs", "_tx_frames", "_groups", "_logs")

    def __init__(self, data, txs_data, logs=None, inputs=None, header=None, extras=None):
        if logs is not None:
            data = dict(data, log_count=len(logs))
        elif "log_count" not in data:
            data = dict(data, log_count=None)
        self.height = data["height"]
        self.hash = data["hash"]
        self.parent_hash = data["parent_hash"]
        self.data = data
        self.txs_data = txs_data
        self.tx_count = len(txs_data)
        self.logs = logs
        self.inputs = inputs
        self.header = header
        self.extras = extras
        self.block_frame = frame(encode({"type": "newBlock", "data": data}))
        self._txs = {}
        self._tx_frames = {}
        self._groups = {}
        self._logs = {}

    @classmethod
    def fromNode(cls, block, receipts=None, logs=None):
        """
        A block as the node gives it (full transactions), with its receipts
        or only its logs, or neither; L{InvalidBlock} if anything is missing
        or is not the block's own.
        """
        return cls(*node_block(block, receipts, logs), header=node_header(block), extras=node_extras(block))

    @classmethod
    def fromWire(cls, data, txs_data, logs=None):
        """A block as explorerd publishes it (an edge's input); L{InvalidBlock} if it is not."""
        return cls(*wire_block(data, txs_data, logs))

    def ref(self):
        return {"height": self.height, "hash": self.hash}

    def _txShape(self, mode):
        if mode in (HASHES, BATCH_HASHES):
            return [tx_hash_data(tx) for tx in self.txs_data]
        if mode in (PLAIN_INPUT, BATCH_INPUT):
            inputs = self.inputs
            return [dict(tx, input=None if inputs is None else inputs[i]) for i, tx in enumerate(self.txs_data)]
        return self.txs_data

    def tx_frames(self, mode):
        """One C{newTx} frame per transaction, in block order, as a client in C{mode} takes them."""
        shape = HASHES if mode in (HASHES, BATCH_HASHES) else PLAIN_INPUT if mode in (PLAIN_INPUT, BATCH_INPUT) else PLAIN
        frames = self._tx_frames.get(shape)
        if frames is None:
            frames = [frame(encode({"type": "newTx", "data": tx})) for tx in self._txShape(shape)]
            self._tx_frames[shape] = frames
        return frames

    def _batch(self, txs, mode):
        body = batch_data(self.data, txs, hashes_only=mode == BATCH_HASHES)
        return frame(encode({"type": "newTxs", "data": body}))

    def txs(self, mode):
        """C{(payload, messages)}: this block's transactions as a client in C{mode} takes them."""
        cached = self._txs.get(mode)
        if cached is None:
            if not self.tx_count:
                cached = (b"", 0)
            elif mode in _PER_TX:
                cached = (b"".join(self.tx_frames(mode)), self.tx_count)
            else:
                cached = (self._batch(self._txShape(mode), mode), 1)
            self._txs[mode] = cached
        return cached

    def size(self, blocks, mode, logs=False):
        """
        Bytes of this block's frames for a client that takes C{blocks}, its
        transactions in C{mode} (None: none) and, with C{logs}, all its
        logs, before any filter.
        """
        size = len(self.block_frame) if blocks else 0
        if mode is not None:
            size += len(self.txs(mode)[0])
        if logs:
            size += len(self.logFrame(None))
        return size

    def matching(self, indexes, mode):
        """C{(payload, messages)}: only the transactions at C{indexes}, for an address filter."""
        if not indexes:
            return b"", 0
        if mode in _PER_TX:
            frames = self.tx_frames(mode)
            return b"".join(frames[i] for i in indexes), len(indexes)
        shaped = self._txShape(mode)
        return self._batch([shaped[i] for i in indexes], mode), 1

    def payload(self, blocks, mode):
        """
        C{(payload, messages)} for a whole group of clients: the block frame
        if they take blocks, then the transactions in their mode, as one
        bytes object shared by the group.
        """
        key = (blocks, mode)
        cached = self._groups.get(key)
        if cached is None:
            txs, n = self.txs(mode) if mode is not None else (b"", 0)
            if blocks:
                cached = (self.block_frame + txs, 1 + n) if n else (self.block_frame, 1)
            else:
                cached = (txs, n)
            self._groups[key] = cached
        return cached

    def logFrame(self, indexes, removed=False):
        """
        The C{logs} message of this block's logs at C{indexes} (C{None}: all
        of them), or C{b""} when there are none.  Each log is encoded once;
        a message for a filter is those bytes joined, so a thousand clients
        with a thousand filters cost joins, not encodes.  Only the messages
        of all the logs are kept: one per filter would stay in the history
        with the block (~265 KiB a mainnet block for 1,000 filters).
        """
        logs = self.logs
        if not logs or (indexes is not None and not indexes):
            return b""
        if indexes is None:
            cached = self._logs.get(removed)
            if cached is not None:
                return cached
        encoded = self._logs.get("json")
        if encoded is None:
            encoded = self._logs["json"] = [encode(log) for log in logs]
        head = encode({"type": "logs", "data": logs_data(self.data, [], removed)})[:-3]  # ...,"logs":[
        body = b",".join(encoded) if indexes is None else b",".join(encoded[i] for i in indexes)
        payload = frame(head + body + b"]}}")
        if indexes is None:
            self._logs[removed] = payload
        return payload


class History:
    """Recent canonical blocks by hash and in order, plus recently orphaned ones."""

    def __init__(self, size):
        self.size = size
        self._chain = deque()
        self._by_hash = {}
        self._orphans = OrderedDict()

    def __len__(self):
        return len(self._chain)

    @property
    def oldest(self):
        return self._chain[0] if self._chain else None

    @property
    def newest(self):
        return self._chain[-1] if self._chain else None

    def add(self, entry):
        """
        A block was published; it extends the chain (reorgs roll back
        first).  A block at the next height must be the child of the newest
        one: otherwise L{BrokenChain} is raised and nothing changes, since a
        client resuming across it would get a chain that does not link.
        """
        if entry.hash in self._by_hash:
            return
        newest = self.newest
        if newest is not None and entry.height == newest.height + 1 and entry.parent_hash != newest.hash:
            raise BrokenChain(f"block {entry.height} {entry.hash} has parent {entry.parent_hash}, but the "
                              f"newest block is {newest.height} {newest.hash}: roll back (a reorg) first")
        if newest is not None and entry.height != newest.height + 1:
            # Not contiguous (the tail re-anchored after a long outage): start over.
            self._forget_all()
        self._chain.append(entry)
        self._by_hash[entry.hash] = entry
        self._orphans.pop(entry.hash, None)
        while len(self._chain) > self.size:
            old = self._chain.popleft()
            del self._by_hash[old.hash]

    def rollback(self, height, removed=(), ancestor_hash=None):
        """
        A reorg: every block above C{height} is no longer canonical.
        C{removed} (C{[{"height", "hash"}, ...]}, ascending, above the
        ancestor C{ancestor_hash}) names the orphans as the reorg reported
        them, so that those we do not hold (not restored after a restart)
        are known too.
        """
        while self._chain and self._chain[-1].height > height:
            gone = self._chain.pop()
            del self._by_hash[gone.hash]
            self._orphans[gone.hash] = (gone.height, gone.parent_hash, gone)
        parent = ancestor_hash
        for r in removed:
            if parent is not None and r["hash"] not in self._orphans and r["hash"] not in self._by_hash:
                self._orphans[r["hash"]] = (r["height"], parent, None)
            parent = r["hash"]
        while len(self._orphans) > self.size:
            self._orphans.popitem(last=False)

    def rememberOrphans(self, orphans):
        """
        Blocks a reorg removed before a restart (C{(height, hash, parent)}
        each, oldest first), so that a client still holding one resumes as
        it would have before the restart: told of the reorg, then the new
        branch.  Their entries are not known (no logs to retract).
        """
        for height, block_hash, parent in orphans:
            if parent is not None and block_hash not in self._by_hash and block_hash not in self._orphans:
                self._orphans[block_hash] = (height, parent, None)
        while len(self._orphans) > self.size:
            self._orphans.popitem(last=False)

    def forget(self):
        """
        Start over from the next block added: a known gap (an edge whose
        router lost blocks its tail no longer holds).  Resumes from before
        it get C{history_unavailable}, as they must.
        """
        self._forget_all()

    def _forget_all(self):
        for entry in self._chain:
            self._orphans.pop(entry.hash, None)
        self._chain.clear()
        self._by_hash.clear()

    def canonical(self, block_hash):
        return self._by_hash.get(block_hash)

    def orphan(self, block_hash):
        """The entry of a block a reorg removed, while it is remembered (for its logs), or C{None}."""
        orphan = self._orphans.get(block_hash)
        return None if orphan is None else orphan[2]

    def at(self, height):
        """The canonical entry at C{height}, or C{None} (the chain held is contiguous)."""
        chain = self._chain
        if not chain or not chain[0].height <= height <= chain[-1].height:
            return None
        return chain[height - chain[0].height]

    def after(self, height):
        """Canonical entries above C{height}, oldest first."""
        return [e for e in self._chain if e.height > height]

    def replay_size(self, height, blocks, mode, logs=False):
        """
        Bytes a replay of everything above C{height} writes to a client that
        takes C{blocks}, transactions in C{mode} and (C{logs}) every log,
        before any filter (the replay reads everything to filter it): what
        a resume costs, known before any of it is sent.
        """
        return sum(e.size(blocks, mode, logs) for e in self._chain if e.height > height)

    def resume(self, height, block_hash):
        """
        Where a client that holds C{(height, block_hash)} stands:
        C{("ok", ancestor, removed)} where C{ancestor} is C{{"height",
        "hash"}} of the newest block the client holds that is still
        canonical, C{removed} lists the client's blocks that are not (oldest
        first), and the client should be sent everything above the
        ancestor; C{("mismatch", known, None)} when we know C{block_hash}
        but at another height (C{known} is C{{"height", "hash"}} as we know
        it): the client contradicts itself, and replaying on a guess could
        double or skip blocks; or C{("unavailable", None, None)} when we
        cannot tell.
        """
        entry = self._by_hash.get(block_hash)
        if entry is not None:
            if entry.height != height:
                return "mismatch", entry.ref(), None
            return "ok", entry.ref(), []
        oldest = self.oldest
        if oldest is not None and block_hash == oldest.parent_hash:
            known = {"height": oldest.height - 1, "hash": block_hash}
            if known["height"] != height:
                return "mismatch", known, None
            return "ok", known, []
        orphan = self._orphans.get(block_hash)
        if orphan is not None and orphan[0] != height:
            return "mismatch", {"height": orphan[0], "hash": block_hash}, None
        removed = []
        cursor_hash, cursor_height = block_hash, height
        while cursor_hash in self._orphans:
            orphan_height, parent, _ = self._orphans[cursor_hash]
            if orphan_height != cursor_height:
                break
            removed.append({"height": orphan_height, "hash": cursor_hash})
            ancestor = self._by_hash.get(parent)
            if ancestor is not None or (oldest is not None and parent == oldest.parent_hash):
                removed.reverse()
                return "ok", {"height": orphan_height - 1, "hash": parent}, removed
            cursor_hash, cursor_height = parent, orphan_height - 1
        return "unavailable", None, None
