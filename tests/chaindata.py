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
