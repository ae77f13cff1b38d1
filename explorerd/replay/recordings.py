"""
The recorded runs a replay node serves, read from C{explorerd/data/}.

A run is a contiguous, C{parentHash}-linked stretch of one network's
canonical chain.  The orphans recorded on that network come from
C{<network>.reorged.blocks.jsonl} next to it; where they were recorded, the
blocks' logs come from C{<network>.logs.jsonl}.  C{data/README.md} says where
each file comes from.
"""

import json
from collections import namedtuple
from functools import lru_cache
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

#: The endless chain's order: many transactions first, then reorgs early on.
DEFAULT_RECORDINGS = (
    "mainnet_11880804-11880810",
    "polygon_13522175-13522230",
    "rinkeby_4941854-4941873",
    "mainnet_15478281-15478287",
    "polygon_13522239-13522298",
    "rinkeby_4947153-4947173",
)

#: chainId per network name (the prefix of a recording's file name).
NETWORK_CHAIN_IDS = {
    "mainnet": 1,
    "goerli": 5,
    "sepolia": 11155111,
    "rinkeby": 4,
    "polygon": 137,
    "gnosis": 100,
    "optimism": 10,
    "optimism-goerli": 420,
    "arbitrum-sepolia": 421614,
}

#: Orphans the recording poller met only after their canonical sibling (the
#: "seen first" column of the data README); it met every other orphan first.
CANONICAL_SEEN_FIRST = frozenset({
    "0x2d878239f4b2dff2bb9776a87d5dcbcf8a99bd6a1f8e2897abd20e86da899f35",  # polygon 13522239
})


Step = namedtuple("Step", "block orphan")
Step.__doc__ = "One head event of a recording: a recorded block, and whether it was orphaned."


class Recording:
    """
    One recorded run, with the orphans recorded at its heights and the logs
    recorded for its blocks.

    @ivar logs: recorded logs by block hash, as C{eth_getLogs} gave them; a
        block without transactions has none.  A block missing here had its
        logs never recorded: nothing may be made up for it.
    """

    def __init__(self, name, network, chain_id, blocks, orphans, logs):
        self.name = name
        self.network = network
        self.chain_id = chain_id
        self.blocks = blocks
        self.orphans = orphans
        self.logs = logs

    def __repr__(self):
        return f"<Recording {self.name}>"

    @property
    def first(self):
        return int(self.blocks[0]["number"], 16)

    @property
    def last(self):
        return int(self.blocks[-1]["number"], 16)

    def steps(self):
        """The head events of one pass, each orphan where the recording poller met it."""
        by_height = {}
        for o in self.orphans:
            by_height.setdefault(int(o["number"], 16), []).append(o)
        out = []
        for b in self.blocks:
            siblings = by_height.get(int(b["number"], 16), [])
            before = [o for o in siblings if o["hash"] not in CANONICAL_SEEN_FIRST]
            after = [o for o in siblings if o["hash"] in CANONICAL_SEEN_FIRST]
            out.extend(Step(o, True) for o in before)
            out.append(Step(b, False))
            out.extend(Step(o, True) for o in after)
        return out


def packaged_recordings():
    """Names of the runs shipped in C{explorerd/data}."""
    return sorted(p.name[: -len(".blocks.jsonl")] for p in DATA_DIR.glob("*_*.blocks.jsonl"))


def load_recording(source, orphans=None):
    """
    A run by packaged name (C{"polygon_13522175-13522230"}) or path, read
    once per process.  Its orphans come from C{orphans} if given, else from
    C{<network>.reorged.blocks.jsonl} next to it.
    """
    if isinstance(source, Recording):
        return source
    path = Path(source)
    if path.suffix != ".jsonl" and not path.exists():
        path = DATA_DIR / f"{source}.blocks.jsonl"
    return _load(str(path.resolve()), str(Path(orphans).resolve()) if orphans is not None else None)


@lru_cache(maxsize=None)
def _load(path, orphans_path):
    p = Path(path)
    if not p.exists():
        raise ValueError(f"recording {p.name!r} not found (packaged: {', '.join(packaged_recordings())})")
    name = p.name[: -len(".blocks.jsonl")] if p.name.endswith(".blocks.jsonl") else p.stem
    network = name.split("_", 1)[0]
    blocks = _readLines(path)
    if not blocks:
        raise ValueError(f"recording {name}: no blocks")
    for i, (a, b) in enumerate(zip(blocks, blocks[1:]), start=2):
        if int(b["number"], 16) != int(a["number"], 16) + 1 or b["parentHash"] != a["hash"]:
            raise ValueError(f"recording {name}: line {i} does not extend line {i - 1}")
    for i, b in enumerate(blocks, start=1):
        if any(not isinstance(tx, dict) for tx in b["transactions"]):
            raise ValueError(f"recording {name}: line {i} lacks full transaction objects")
    if orphans_path is None:
        candidate = p.parent / f"{network}.reorged.blocks.jsonl"
        orphans_path = str(candidate) if candidate.exists() else None
    lo, hi = int(blocks[0]["number"], 16), int(blocks[-1]["number"], 16)
    orphans = tuple(o for o in (_readLines(orphans_path) if orphans_path else ())
                    if lo <= int(o["number"], 16) <= hi)
    logs = _logsOf(blocks + orphans, p.parent / f"{network}.logs.jsonl")
    return Recording(name, network, NETWORK_CHAIN_IDS.get(network), blocks, orphans, logs)


def _logsOf(blocks, logs_path):
    """
    The recorded logs of C{blocks}, by block hash.  A logs file holds
    whole-block queries; a block with transactions and no line there may have
    had no logs or may never have been queried.  We cannot tell which, so it
    stays out (in the packaged runs every such block's C{logsBloom} is set:
    never queried).
    """
    recorded = {}
    if logs_path.exists():
        for log in _readLines(str(logs_path)):
            recorded.setdefault(log["blockHash"], []).append(log)
    out = {}
    for b in blocks:
        if b["hash"] in recorded:
            out[b["hash"]] = tuple(recorded[b["hash"]])
        elif not b["transactions"]:
            out[b["hash"]] = ()
    return out


@lru_cache(maxsize=None)
def _readLines(path):
    """A JSON-lines file, parsed once per process (the data is a few MB)."""
    with open(path, "rb") as f:
        return tuple(json.loads(line) for line in f if line.strip())


__all__ = ["DATA_DIR", "DEFAULT_RECORDINGS", "NETWORK_CHAIN_IDS", "Recording", "Step",
           "load_recording", "packaged_recordings"]
