"""
The blocks a benchmark run publishes: real recorded blocks (explorerd/data/*.blocks.jsonl) and
their real logs (explorerd/data/<network>.logs.jsonl), laid out as a synthetic chain so every
block of a run has its own height and hash.

  raw_blocks(names, count)  -> [{"block": JSON-RPC block, "logs": its eth_getLogs answer or None}, ...]
                               (what explorerd's hub is handed, as Entry.fromNode(block, logs=logs))
  iter_raw_blocks(...)      -> the same, one at a time (for long chains that should not all be held)
  relabel(block, logs, ...) -> one recorded block and its logs at a new height, with a new hash
  wire_events(raw)          -> [{"block": newBlock data, "txs": [newTx data, ...]}, ...]
                               (explorerd's own encoding, for the peer servers)

A block's logs are rewritten with it (blockHash, blockNumber, and transactionHash where its
transactions got new hashes), so explorerd accepts them as the block's own.  Logs are None
(unknown, as with receipts off) for a recorded block whose logs nobody recorded.
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


def load_logs(network):
    """A network's recorded logs (eth_getLogs elements) by block hash, in log order; {} if none."""
    path = os.path.join(DATA, network + ".logs.jsonl")
    by_block = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    log = json.loads(line)
                    by_block.setdefault(log["blockHash"], []).append(log)
    return by_block


def recorded(names, min_txs=0):
    """
    C{[(block, logs), ...]}: the named recordings' blocks that have at least C{min_txs}
    transactions, each with its recorded logs (C{[]} for a block without transactions, C{None}
    when its logs were not recorded).
    """
    source = []
    for name in names:
        logs = load_logs(name.split("_")[0])
        for block in load(name):
            if len(block["transactions"]) >= min_txs:
                source.append((block, logs.get(block["hash"], None if block["transactions"] else [])))
    if not source:
        raise SystemExit(f"no block in {names} has at least {min_txs} transactions")
    return source


def _hash(text):
    return "0x" + hashlib.sha256(text.encode()).hexdigest()


def relabel(original, logs, height, parent, rnd, max_txs=None):
    """
    C{{"block", "logs"}}: C{original} (a JSON-RPC block) at C{height} with a new hash and
    C{parent} as its parent; from the second round through the recordings (C{rnd} > 0) its
    transactions get new hashes too.  Its logs follow: those of transactions left out (past
    C{max_txs}) are dropped, the others point at the new block and transaction hashes.
    """
    block_hash = _hash(f"bench-{height}-{original['hash']}")
    block = dict(original, number=hex(height), hash=block_hash, parentHash=parent)
    txs = original["transactions"] if max_txs is None else original["transactions"][:max_txs]
    new_hash = {tx["hash"]: tx["hash"] if rnd == 0 else _hash(f"bench-tx-{rnd}-{tx['hash']}") for tx in txs}
    block["transactions"] = [
        dict(tx, blockNumber=hex(height), blockHash=block_hash, transactionIndex=hex(j), hash=new_hash[tx["hash"]])
        for j, tx in enumerate(txs)
    ]
    if logs is not None:
        logs = [dict(log, blockHash=block_hash, blockNumber=hex(height), transactionHash=new_hash[log["transactionHash"]])
                for log in logs if log["transactionHash"] in new_hash]
    return {"block": block, "logs": logs}


def iter_raw_blocks(names, count, min_txs=0, max_txs=None, source=None):
    """
    C{count} blocks with their logs, cycling through the named recordings' blocks that have at
    least C{min_txs} transactions (and, if given, at most C{max_txs} of them, the first
    C{max_txs} kept), or through C{source} (C{[(block, logs), ...]}) if given.
    """
    source = source if source is not None else recorded(names, min_txs)
    parent = _hash("bench-genesis")
    for i in range(count):
        original, logs = source[i % len(source)]
        item = relabel(original, logs, BASE_HEIGHT + i, parent, i // len(source), max_txs)
        parent = item["block"]["hash"]
        yield item


def raw_blocks(names, count, min_txs=0, max_txs=None):
    """L{iter_raw_blocks} as a list."""
    return list(iter_raw_blocks(names, count, min_txs, max_txs))


def wire_events(raw):
    """The newBlock/newTx data explorerd publishes for C{raw} (log counts included), for the peers to publish."""
    import sys

    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from explorerd.history import Entry

    events = []
    for item in raw:
        entry = Entry.fromNode(item["block"], logs=item["logs"])
        events.append({"block": entry.data, "txs": entry.txs_data})
    return events
