"""Real recorded blocks (JSON-RPC shape, full transactions) for the tests."""

import json
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_PLACES = (
    os.path.join(_HERE, "..", "explorerd", "data"),
    os.path.join(_HERE, "..", "..", "shared", "data", "ethereum"),
)


def load_blocks(name):
    """The blocks of a recording, e.g. C{"mainnet_11880804-11880810"}, in file order."""
    for place in _PLACES:
        path = os.path.join(place, name + ".blocks.jsonl")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
    raise FileNotFoundError(f"no recording {name!r} in {_PLACES}")


def mainnet_run():
    """Seven consecutive mainnet blocks, ~200 transactions each, one contract creation."""
    return load_blocks("mainnet_11880804-11880810")


def load_logs(name):
    """The recorded logs of a chain (e.g. C{"mainnet"}), by block hash, in log order."""
    for place in _PLACES:
        path = os.path.join(place, name + ".logs.jsonl")
        if os.path.exists(path):
            by_block = {}
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        log = json.loads(line)
                        by_block.setdefault(log["blockHash"], []).append(log)
            return by_block
    raise FileNotFoundError(f"no logs {name!r} in {_PLACES}")


def mainnet_logs():
    """The real logs of L{mainnet_run}'s blocks (eth_getLogs shape), by block hash."""
    return load_logs("mainnet")
