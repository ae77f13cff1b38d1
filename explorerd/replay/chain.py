"""
The chain a replay node serves: recorded blocks laid onto heights of its own.

Recorded runs are finite and unrelated to each other, so an endless chain
re-numbers, re-hashes and re-links every block and keeps every other value
as recorded.  Recorded orphans are replayed where the recording poller met
them, so the chain reorgs as the real networks did; L{Chain.reorgs} is the
ground truth a correct live-tail must report.  C{docs/replay.md} tells how
the chain is built.
"""

import hashlib
import json
from collections import OrderedDict, namedtuple
from functools import lru_cache

from explorerd.replay.recordings import load_recording

#: The chainId of an endless chain (anvil's and Hardhat's local id).
DEFAULT_CHAIN_ID = 1337


def _sha(text):
    """A deterministic 32-byte hash (not keccak: nothing can verify it anyway)."""
    return "0x" + hashlib.sha256(text.encode("ascii")).hexdigest()


Head = namedtuple("Head", "height hash")
Head.__doc__ = "A block as a head: its height and hash."


class Reorg(namedtuple("Reorg", "step old_head new_head depth ancestor removed added cause")):
    """
    A head change that did not extend the previous head.

    @ivar step: 0-based index of the head event that caused it.
    @ivar depth: how many blocks left the canonical chain.
    @ivar ancestor: the common ancestor, or C{None} when the fork lies below
        every block the chain knows.
    @ivar removed: hashes that left the canonical chain, ascending height.
    @ivar added: hashes that joined it, ascending height.
    @ivar cause: C{"script"} (a recorded reorg) or C{"manual"} (L{Chain.reorg}).
    """

    __slots__ = ()

    def asDict(self):
        return {
            "step": self.step,
            "old_head": list(self.old_head),
            "new_head": list(self.new_head),
            "depth": self.depth,
            "ancestor": list(self.ancestor) if self.ancestor else None,
            "removed": list(self.removed),
            "added": list(self.added),
            "cause": self.cause,
        }


class _Block:
    """A served block: the recorded one it copies, and the header it is given."""

    __slots__ = ("height", "hash", "parent", "timestamp", "template", "logs", "round", "verbatim")

    def __init__(self, height, hash, parent, timestamp, template, logs, round, verbatim):
        self.height = height
        self.hash = hash
        self.parent = parent
        self.timestamp = timestamp
        self.template = template
        self.logs = logs  # the recorded logs, or None: never recorded
        self.round = round  # passes over the recordings before this one
        self.verbatim = verbatim  # served exactly as recorded


class Chain:
    """
    Blocks produced one head event at a time from recordings.

    In C{"endless"} mode the recordings are laid end to end from
    C{start_height}, forever if C{loop}.  In C{"recording"} mode one
    recording is served with its original heights, hashes and values; with
    C{loop}, later passes continue above it as in endless mode.  Only the
    last C{max_blocks} blocks are kept, like a pruned node.
    """

    def __init__(self, recordings, chain_id, mode="endless", loop=None, start_height=1, max_blocks=100_000):
        if mode not in ("endless", "recording"):
            raise ValueError(f"mode must be 'endless' or 'recording', not {mode!r}")
        if not recordings:
            raise ValueError("no recordings to replay")
        if mode == "recording" and len(recordings) != 1:
            raise ValueError("recording mode replays exactly one recording")
        self.recordings = list(recordings)
        self.chain_id = int(chain_id)
        self.mode = mode
        self.loop = (mode == "endless") if loop is None else bool(loop)
        self.reorgs = []
        self.events = 0
        self.finished = False
        self._start_height = int(start_height)
        self._max_blocks = int(max_blocks)
        self._scripts = [r.steps() for r in self.recordings]
        self._by_hash = {}
        self._canonical = {}
        self._low = 0  # canonical heights are contiguous in [_low, head]
        self._head = None
        self._tip = None  # the last canonical-to-be block: what the script extends
        self._manual_reorgs = 0
        self._round = 0
        self._rec_i = 0
        self._step_i = 0
        self._offset = 0  # served height - recorded height, in this pass
        self._orphan_map = {}  # recorded orphan hash -> its hash in this pass
        self._encoded = OrderedDict()

    @property
    def head(self):
        h = self._head
        return Head(h.height, h.hash) if h is not None else None

    @property
    def low(self):
        """The lowest canonical height still held (C{earliest})."""
        return self._low

    def hashAt(self, height):
        """The canonical block's hash at C{height}, or C{None}."""
        return self._canonical.get(height)

    def knows(self, block_hash):
        return block_hash in self._by_hash

    def advance(self, now):
        """Apply the next head event, stamped C{now} (seconds); C{None} once finished."""
        nxt = self._nextStep()
        if nxt is None:
            return None
        step, recording = nxt
        b = step.block
        logs = recording.logs.get(b["hash"])
        if self.mode == "recording" and self._round == 0:
            block = _Block(int(b["number"], 16), b["hash"], b["parentHash"], int(b["timestamp"], 16),
                           b, logs, 0, True)
        else:
            if step.orphan:
                height = int(b["number"], 16) + self._offset
                parent = self._orphan_map.get(b["parentHash"]) or self._mainHashAt(height - 1)
            else:
                height = self._tip.height + 1 if self._tip is not None else self._start_height
                self._offset = height - int(b["number"], 16)
                parent = self._tip.hash if self._tip is not None else _sha(f"{self.chain_id}-{height - 1}-pre")
            above = self._by_hash.get(parent)
            block = _Block(height, _sha(f"{self.chain_id}-{height}-{self._round}-{b['hash']}"), parent,
                           max(int(now), above.timestamp if above else 0), b, logs, self._round, False)
            if step.orphan:
                self._orphan_map[b["hash"]] = block.hash
        self._by_hash[block.hash] = block
        if not step.orphan:
            self._tip = block
        self._setHead(block, "script")
        return self.head

    def reorg(self, depth, now, length=None):
        """
        Replace the last C{depth} canonical blocks with C{length} (default
        C{depth}) new ones (same transactions, new hashes, the same heights
        from the ancestor up), like C{anvil_reorg}.  A shorter branch makes
        the head's height go down, as when a node switches to a fork that
        is behind in height but heavier.  Only an endless chain may: a
        recording's hashes are real.
        """
        if self.mode != "endless":
            raise RuntimeError("reorg() makes up hashes: only an endless chain may")
        head = self._head
        length = depth if length is None else length
        if head is None or depth < 1 or not 1 <= length <= depth:
            raise ValueError("reorg needs a head, depth >= 1 and 1 <= length <= depth")
        base_height = head.height - depth
        base_hash = self._canonical.get(base_height)
        if base_hash is None or base_hash not in self._by_hash:
            raise ValueError(f"reorg depth {depth} reaches below the known chain")
        self._manual_reorgs += 1
        n = self._manual_reorgs
        parent = self._by_hash[base_hash]
        new = None
        for height in range(base_height + 1, base_height + length + 1):
            old = self._by_hash[self._canonical[height]]
            new = _Block(height, _sha(f"{self.chain_id}-{height}-{old.round}-{old.template['hash']}-reorg{n}"),
                         parent.hash, max(int(now), parent.timestamp), old.template, old.logs, old.round, False)
            self._by_hash[new.hash] = new
            parent = new
        self._tip = new
        self._offset -= depth - length  # the script's next blocks (orphans too) come down with the tip
        self._setHead(new, "manual")
        return self.head

    def blockJSON(self, block_hash, full):
        """The block as served (C{eth_getBlockByHash(hash, full)}), encoded; C{None} if unknown."""
        block = self._by_hash.get(block_hash)
        if block is None:
            return None
        key = (block_hash, full)
        data = self._encoded.get(key)
        if data is not None:
            self._encoded.move_to_end(key)
            return data
        data = json.dumps(self._served(block, full), separators=(",", ":")).encode()
        self._encoded[key] = data
        if len(self._encoded) > 64:
            self._encoded.popitem(last=False)
        return data

    def logsOf(self, block_hash, match=None):
        """
        The block's logs as served, those C{match(recorded log)} accepts; C{None}
        if they were never recorded.  The block must be known (L{knows}).
        """
        block = self._by_hash[block_hash]
        if block.logs is None:
            return None
        logs = [log for log in block.logs if match is None or match(log)]
        if block.verbatim:
            return logs
        number = hex(block.height)
        return [dict(log, blockHash=block.hash, blockNumber=number,
                     transactionHash=self._txHash(block, log["transactionHash"]))
                for log in logs]

    def _served(self, block, full):
        t = block.template
        if block.verbatim:
            return t if full else dict(t, transactions=[tx["hash"] for tx in t["transactions"]])
        b = dict(t)
        number = hex(block.height)
        b["number"] = number
        b["hash"] = block.hash
        b["parentHash"] = block.parent
        b["timestamp"] = hex(block.timestamp)
        txs = []
        for i, tx in enumerate(t["transactions"]):
            txh = self._txHash(block, tx["hash"])
            if full:
                txs.append(dict(tx, blockHash=block.hash, blockNumber=number, transactionIndex=hex(i), hash=txh))
            else:
                txs.append(txh)
        b["transactions"] = txs
        return b

    def _txHash(self, block, recorded):
        """Real in the first pass; fresh in later ones, so no hash repeats along the chain."""
        return recorded if block.round == 0 else _sha(f"{self.chain_id}-tx-{block.round}-{recorded}")

    def _nextStep(self):
        if self.finished:
            return None
        if self._step_i >= len(self._scripts[self._rec_i]):
            self._step_i = 0
            self._rec_i += 1
            if self._rec_i >= len(self.recordings):
                self._rec_i = 0
                self._round += 1
                if not self.loop:
                    self.finished = True
                    return None
        recording = self.recordings[self._rec_i]
        if self._step_i == 0:
            self._offset = (self._tip.height + 1 if self._tip is not None else self._start_height) - recording.first
            self._orphan_map = {}
        step = self._scripts[self._rec_i][self._step_i]
        self._step_i += 1
        return step, recording

    def _mainHashAt(self, height):
        b = self._tip
        while b is not None and b.height > height:
            b = self._by_hash.get(b.parent)
        return b.hash if b is not None and b.height == height else None

    def _setHead(self, block, cause):
        old = self._head
        canon = self._canonical
        top = old.height if old is not None else block.height
        for h in range(block.height + 1, top + 1):
            canon.pop(h, None)
        canon[block.height] = block.hash
        low = block.height
        p = self._by_hash.get(block.parent)
        while p is not None and canon.get(p.height) != p.hash:
            canon[p.height] = p.hash
            low = p.height
            p = self._by_hash.get(p.parent)
        if old is None:
            self._low = low
        elif p is None:  # ancestry unknown below `low`: older heights belong to a dead branch
            for h in range(self._low, low):
                canon.pop(h, None)
            self._low = low
        self._head = block
        step = self.events
        self.events += 1
        if old is not None and block.parent != old.hash:
            self.reorgs.append(self._diff(old, block, step, cause))
        self._prune()

    def _diff(self, old, new, step, cause):
        a, b = old, new
        removed, added = [], []
        while a is not None and b is not None and a.hash != b.hash:
            ah, bh = a.height, b.height
            if ah >= bh:
                removed.append(a.hash)
                a = self._by_hash.get(a.parent)
            if bh >= ah:
                added.append(b.hash)
                b = self._by_hash.get(b.parent)
        ancestor = Head(a.height, a.hash) if a is not None and b is not None else None
        return Reorg(step, Head(old.height, old.hash), Head(new.height, new.hash), len(removed),
                     ancestor, tuple(reversed(removed)), tuple(reversed(added)), cause)

    def _prune(self):
        while len(self._by_hash) > self._max_blocks:
            oldest = next(iter(self._by_hash))
            block = self._by_hash.pop(oldest)
            if self._canonical.get(block.height) == block.hash:
                del self._canonical[block.height]
                self._low = max(self._low, block.height + 1)


def expected_reorgs(recording):
    """The reorgs a correct live-tail reports replaying C{recording} in recording mode."""
    return list(_replayed(load_recording(recording)))


@lru_cache(maxsize=None)
def _replayed(recording):
    chain = Chain([recording], recording.chain_id or DEFAULT_CHAIN_ID, mode="recording", loop=False)
    while chain.advance(0) is not None:
        pass
    return tuple(chain.reorgs)


__all__ = ["Chain", "DEFAULT_CHAIN_ID", "Head", "Reorg", "expected_reorgs"]
