"""
What a well-behaved client of /v1/stream checks about what it is sent (the Python twin of
``Chain`` in clients.mjs): heights contiguous, each block's parent_hash the hash of the block
before, reorgs that remove exactly the blocks held above their common ancestor, and every
block's transactions complete (``tx_count``) before the next block.
"""


class Chain:
    def __init__(self, mode="blocks", keep=100_000):
        assert mode in ("blocks", "batch", "hashes", "pertx")
        self.mode = mode
        self.keep = keep
        self.blocks = []  # [height, hash, parent, tx_count, txs_seen]
        self.anchor = None  # (height, hash) the next block must extend when blocks is empty
        self.violations = []
        self.seen = []  # (height, hash) of every block received, in order
        self.reorgs = []

    def bad(self, what):
        self.violations.append(what)

    def tip(self):
        if self.blocks:
            return self.blocks[-1][0], self.blocks[-1][1]
        return self.anchor

    def _tip_complete(self, why):
        if self.blocks and self.mode != "blocks":
            b = self.blocks[-1]
            if b[4] != b[3]:
                self.bad(f"block {b[0]} had {b[4]}/{b[3]} txs before {why}")

    def on_message(self, m):
        kind, d = m.get("type"), m.get("data")
        if kind == "newBlock":
            self._tip_complete(f"block {d['height']}")
            tip = self.tip()
            if tip is not None:
                if d["height"] != tip[0] + 1:
                    self.bad(f"height {d['height']} after {tip[0]}")
                elif d["parent_hash"] != tip[1]:
                    self.bad(f"block {d['height']} does not extend {tip[1][:10]}")
            self.blocks.append([d["height"], d["hash"], d["parent_hash"], d["tx_count"], 0])
            self.seen.append((d["height"], d["hash"]))
            del self.blocks[:-self.keep]
        elif kind == "newTx":
            b = self.blocks[-1] if self.blocks else None
            if b is None or d["block_hash"] != b[1]:
                return self.bad(f"newTx of {d['block_height']} not after its block")
            if d["tx_index"] != b[4]:
                self.bad(f"block {b[0]}: tx_index {d['tx_index']}, expected {b[4]}")
            b[4] += 1
        elif kind == "newTxs":
            b = self.blocks[-1] if self.blocks else None
            items = d.get("txs") or d.get("hashes") or []
            if b is None or d["block_hash"] != b[1]:
                return self.bad(f"newTxs of {d['block_height']} not after its block")
            if b[4]:
                self.bad(f"block {b[0]}: a second newTxs")
            if len(items) != b[3]:
                self.bad(f"block {b[0]}: {len(items)} txs, tx_count {b[3]}")
            b[4] = len(items)
        elif kind == "reorg":
            self.reorgs.append(d)
            self._tip_complete("a reorg")
            ca = d["common_ancestor"]
            removed = {r["height"]: r["hash"] for r in d["removed"]}
            for h, block_hash, *_ in self.blocks:
                if h == ca["height"] and block_hash != ca["hash"]:
                    self.bad(f"reorg ancestor {ca['height']} is not the block held")
                if h > ca["height"] and removed.get(h) != block_hash:
                    self.bad(f"reorg to {ca['height']}: held {h} {block_hash[:10]} not in removed")
            while self.blocks and self.blocks[-1][0] > ca["height"]:
                self.blocks.pop()
            if not self.blocks or self.blocks[-1][0] != ca["height"]:
                self.blocks = []
                self.anchor = (ca["height"], ca["hash"])
        elif kind == "error" and d is None:
            self.bad(f"error {m.get('error')}")

    def canonical(self):
        """The chain as the client holds it now: {height: hash}."""
        return {b[0]: b[1] for b in self.blocks}
