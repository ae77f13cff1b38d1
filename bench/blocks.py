"""
The blocks a benchmark run publishes: real recorded blocks (explorerd/data/*.blocks.jsonl),
laid out as a synthetic chain so every block of a run has its own height and hash.

  raw_blocks(names, count)  -> JSON-RPC blocks (what explorerd's hub is handed)
  wire_events(raw)          -> [{"block": newBlock data, "txs": [newTx data, ...]}, ...]
                               (explorerd's own encoding, for the peer servers)
"""

import hashlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DATA = os.path.join(REPO, "explorerd", "data")
BASE_HEIGHT = 20_000_000


def load(name):
    path = os.path.join(DATA, name if name.endswith(".jsonl") else name + ".blocks.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _hash(text):
    return "0x" + hashlib.sha256(text.encode()).hexdigest()


def raw_blocks(names, count, min_txs=0, max_txs=None):
    """
    C{count} JSON-RPC blocks (full transactions) cycling through the named recordings'
    blocks that have at least C{min_txs} transactions (and, if given, at most C{max_txs}
    of them, the first C{max_txs} kept).
    """
    source = []
    for name in names:
        for block in load(name):
            if len(block["transactions"]) >= min_txs:
                source.append(block)
    if not source:
        raise SystemExit(f"no block in {names} has at least {min_txs} transactions")
    out, parent = [], _hash("bench-genesis")
    for i in range(count):
        original = source[i % len(source)]
        rnd = i // len(source)
        height = BASE_HEIGHT + i
        block_hash = _hash(f"bench-{height}-{original['hash']}")
        block = dict(original, number=hex(height), hash=block_hash, parentHash=parent)
        txs = original["transactions"] if max_txs is None else original["transactions"][:max_txs]
        block["transactions"] = [
            dict(tx, blockNumber=hex(height), blockHash=block_hash, transactionIndex=hex(j),
                 hash=tx["hash"] if rnd == 0 else _hash(f"bench-tx-{rnd}-{tx['hash']}"))
            for j, tx in enumerate(txs)
        ]
        out.append(block)
        parent = block_hash
    return out


def wire_events(raw):
    """The newBlock/newTx data explorerd publishes for C{raw}, for the peers to publish."""
    import sys

    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from explorerd import events

    return [{"block": events.block_data(b),
             "txs": [events.tx_data(b, tx, i) for i, tx in enumerate(b["transactions"])]}
            for b in raw]
