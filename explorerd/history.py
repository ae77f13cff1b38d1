"""
The hub's memory of recent blocks, so a client that reconnects can resume.

The last C{size} canonical blocks are kept as the frames that were sent
(one for the block, one joined run for its transactions), so a replay is
writes of bytes we already have.  Blocks a reorg removed are remembered too
(height and parent only), so a client that still holds one can be told
exactly which of its blocks are gone.
"""

from collections import OrderedDict, deque


class Entry:
    __slots__ = ("height", "hash", "parent_hash", "block_frame", "txs_frame", "tx_count", "data", "txs_data")

    def __init__(self, data, block_frame, txs_frame, txs_data):
        self.height = data["height"]
        self.hash = data["hash"]
        self.parent_hash = data["parent_hash"]
        self.data = data
        self.block_frame = block_frame
        self.txs_frame = txs_frame
        self.tx_count = len(txs_data)
        self.txs_data = txs_data

    def ref(self):
        return {"height": self.height, "hash": self.hash}


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
        """A block was published; it extends the chain (reorgs roll back first)."""
        if entry.hash in self._by_hash:
            return
        if self._chain and entry.height != self._chain[-1].height + 1:
            # Not contiguous (the tail re-anchored after a long outage): start over.
            self._forget_all()
        self._chain.append(entry)
        self._by_hash[entry.hash] = entry
        self._orphans.pop(entry.hash, None)
        while len(self._chain) > self.size:
            old = self._chain.popleft()
            del self._by_hash[old.hash]

    def rollback(self, height):
        """A reorg: every block above C{height} is no longer canonical."""
        while self._chain and self._chain[-1].height > height:
            gone = self._chain.pop()
            del self._by_hash[gone.hash]
            self._orphans[gone.hash] = (gone.height, gone.parent_hash)
        while len(self._orphans) > self.size:
            self._orphans.popitem(last=False)

    def _forget_all(self):
        for entry in self._chain:
            self._orphans.pop(entry.hash, None)
        self._chain.clear()
        self._by_hash.clear()

    def canonical(self, block_hash):
        return self._by_hash.get(block_hash)

    def after(self, height):
        """Canonical entries above C{height}, oldest first."""
        return [e for e in self._chain if e.height > height]

    def resume(self, height, block_hash):
        """
        Where a client that holds C{(height, block_hash)} stands:
        C{("ok", ancestor_height, removed)} where C{removed} lists the
        client's blocks that are no longer canonical (newest last) and the
        client should be sent everything above C{ancestor_height}; or
        C{("unavailable", None, None)} when we cannot tell.
        """
        entry = self._by_hash.get(block_hash)
        if entry is not None:
            return "ok", entry.height, []
        oldest = self.oldest
        if oldest is not None and block_hash == oldest.parent_hash:
            return "ok", oldest.height - 1, []
        removed = []
        cursor_hash, cursor_height = block_hash, height
        while cursor_hash in self._orphans:
            orphan_height, parent = self._orphans[cursor_hash]
            if orphan_height != cursor_height:
                break
            removed.append({"height": orphan_height, "hash": cursor_hash})
            ancestor = self._by_hash.get(parent)
            if ancestor is not None:
                removed.reverse()
                return "ok", ancestor.height, removed
            cursor_hash, cursor_height = parent, orphan_height - 1
        return "unavailable", None, None
