"""A JSON-RPC "replay node": real recorded Ethereum blocks served over HTTP.

Why: the daemon's live-tail must be exercised against something that behaves
like a node on the wire (HTTP POST, JSON-RPC 2.0, hex quantities, heads that
move and sometimes reorg) without a network, an anvil binary or wall-clock
waits.  The blocks are real (``explorerd/data/*.blocks.jsonl``, see the README
there for provenance); only what has to change to make an endless chain is
rewritten.

Wire protocol (POST, any path, ``Content-Type: application/json``)::

    eth_blockNumber                      -> "0x.."  (head height)
    eth_getBlockByNumber [tag|hex, bool] -> block | null
        tag: latest | pending | safe | finalized (all = head) | earliest
        (the lowest block still held); bool false -> tx hashes only
    eth_getBlockByHash   [hash, bool]    -> block | null (orphans stay retrievable)
    eth_chainId -> "0x..", net_version -> "<decimal>", web3_clientVersion,
    eth_syncing -> false, net_listening -> true
    batch (JSON array) -> array; unknown method -32601; bad params -32602;
    malformed request -32600; invalid JSON -32700 with id null; non-POST -> 405.

Modes
-----
``mode="endless"`` (default, what the daemon embeds): the chosen recordings
(default :data:`DEFAULT_RECORDINGS`) are replayed back to back, forever, one
*head event* per ``block_time`` seconds of the clock passed in.  Because the
recordings are finite and not linked to each other, every block is rewritten
onto a synthetic continuous height range starting at ``start_height``:

* ``number`` = synthetic height, ``parentHash`` = hash of the previous block
  of the chain being built, ``timestamp`` = production time from the clock
  (``max(int(clock.seconds()), parent timestamp)``, so non-decreasing);
* ``hash`` = ``"0x" + sha256(f"{chain_id}-{height}-{round}-{original hash}")``
  (``round`` counts passes over the script; manual reorg blocks append
  ``-reorg{n}``);
* every tx gets ``blockHash``/``blockNumber`` of its block and
  ``transactionIndex`` = its position (one real Polygon Bor state-sync tx in
  13522240 carries the orphan's blockHash and index 0x1f: only recording mode
  serves that quirk verbatim);
* tx hashes are the real ones in round 0 and ``"0x" + sha256(
  f"{chain_id}-tx-{round}-{original tx hash}")`` from round 1 on, so they never
  repeat along the canonical chain (an orphan and its canonical sibling share
  txs, and so share tx hashes, exactly as on the real network);
* every other field (miner, gas, roots, logsBloom, tx bodies...) stays real,
  so field sets differ between blocks (pre/post London, Polygon, Rinkeby).

Head sequence (one event per tick).  For a recorded orphan seen *first* by the
recording poller (Polygon 13522194, 13522240, all three Rinkeby ones)::

    ..., main h-1, ORPHAN h (parent main h-1), main h (parent main h-1), main h+1, ...

i.e. the height stays at h for one tick and the head hash changes: a depth-1
reorg at the same height, ancestor = main h-1.  For Polygon 13522239 (canonical
seen first) and 13522240 the head flip-flops between branches::

    main 39, ORPHAN 39' , ORPHAN 40' (parent 39'), main 40 (parent main 39), main 41

(depth 1 at 39, then depth 2 at 40).  In endless mode an orphan whose recorded
parent is outside the recording (39') is re-parented on main h-1, so its fork
point is known; in recording mode it is served verbatim (ancestor unknown).

``mode="recording"``: one recording with its ORIGINAL heights, hashes,
timestamps and bytes-for-bytes field values, same head sequence as above, one
event per ``block_time``; production stops after the last block unless
``loop=True``, in which case further rounds continue the chain above the
recording's last height with synthetic hashes (as in endless mode).

Expected reorgs in recording mode (what a correct live-tail must report;
:func:`expected_reorgs` computes them from the data; heights in ascending
order, ``removed`` = hashes that leave the canonical chain)::

    polygon_13522175-13522230:
      step 20: depth 1 at 13522194, ancestor 13522193 0x9392c1692ad3fedd4fcdc4088475da4b855c6c8fc4015cddc5170306b0a863bb
               removed 0x6f01a5163724e4bfbbcac469a9a2aafd16bc1a50f15c346b1ab1347561fb7c4d
               added   0xe5a6598d287904b84988b7ae0bc6566b79abebf46e2abc90a5579827fa0af3ce
    polygon_13522239-13522298:
      step 1:  depth 1 at 13522239, ancestor UNKNOWN (fork below the recording)
               removed 0xc73a1047034dd7b03cd01950e4bff4621b79321e8120b623744cf8cfc93f3efd
               added   0x2d878239f4b2dff2bb9776a87d5dcbcf8a99bd6a1f8e2897abd20e86da899f35
      step 3:  depth 2 at 13522240, ancestor UNKNOWN
               removed 0x2d878239f4b2dff2bb9776a87d5dcbcf8a99bd6a1f8e2897abd20e86da899f35,
                       0x8add914454ed7ee33c9a533a545555c376f37f3fdffb56f9daf0e848a2ff268a
               added   0xc73a1047034dd7b03cd01950e4bff4621b79321e8120b623744cf8cfc93f3efd,
                       0x29373daeae5bff3b48cf051f78ada7fb2260c8d1d5e0f7f93546089012d1f452
    rinkeby_4941854-4941873:
      step 10: depth 1 at 4941863, ancestor 4941862 0x9f19696f14f5675bbf8c5fdecf039cb1bb460bc43a96a6fb9307d7120cd18b72
               removed 0x9f201190b93e71f5094ddd0c9c02161838933f0ae0f02907b64a1c772ae3925d
               added   0xfba53dbd2d21bf53fda22aca342c490c59cf274536fcb9241f9ed6da0e5a9077
      step 16: depth 1 at 4941868, ancestor 4941867 0x6c88984d56928bc981bf989dc80b94e1d65abb668ee210fa80187697479ed014
               removed 0xd51ecada8a69e59eae8a2f018685538548168110c29bc36fb5e2a12b79ddc6c7
               added   0xa2ffcc25bb92175964db323779ed410cd8157cc01634c032fdbb21d7465f03ff
    rinkeby_4947153-4947173:
      step 9:  depth 1 at 4947161, ancestor 4947160 0x594615058a1921c197b8cd5d1132cd02f270a8e60ec86c63ece52275b7d0c10f
               removed 0x94128430121dba8fae05949a86453da5a0726b461899feb375c6c222f6dba999
               added   0x9e7044a454e39915e20d9d8340ee20f53e6675184926701dea97e8624fa97b9c
    mainnet_*: no reorgs.

("step" = 0-based index of the head event that causes the reorg; "depth" =
number of blocks known to the node that leave the canonical chain.  When the
fork point lies below the recording, as for the Polygon side branch whose
parent 0xe2f92f28... was never recorded, ``eth_getBlockByHash`` of the unknown
parent returns null and the ancestor is reported as None.)

Other behaviour worth knowing:

* ``eth_blockNumber`` does not move on an orphan->canonical tick (same height);
  poll the head hash too.
* Orphans stay retrievable by hash; by number only the canonical chain answers.
* Only the last ``max_blocks`` blocks are kept (default 100,000); older ones
  answer null and ``earliest`` moves up, like a pruned node.
* Test hooks: :meth:`ReplayNode.mine`, :meth:`ReplayNode.reorg`,
  :meth:`ReplayNode.inject_fault` (``http-500``, ``rpc-error``, ``disconnect``,
  ``delay`` on the node's clock), :meth:`ReplayNode.next_request`,
  :meth:`ReplayNode.when_idle`, :attr:`ReplayNode.reorgs` (ground truth of every
  reorg applied, same shape as :func:`expected_reorgs`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from twisted.application import service, strports
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web import resource, server

__all__ = [
    "DATA_DIR",
    "DEFAULT_RECORDINGS",
    "Head",
    "Recording",
    "Reorg",
    "ReplayNode",
    "expected_reorgs",
    "head_sequence",
    "load_recording",
    "main",
    "packaged_recordings",
]

DATA_DIR = Path(__file__).resolve().parent / "data"

#: Order of the default endless chain: volume first, then reorgs early on.
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

#: Which of (orphan, canonical sibling) the recording poller saw first, from the
#: reorg table of the data README.  Orphans not listed are served first.
SEEN_FIRST = {
    "0x6f01a5163724e4bfbbcac469a9a2aafd16bc1a50f15c346b1ab1347561fb7c4d": "orphan",
    "0x2d878239f4b2dff2bb9776a87d5dcbcf8a99bd6a1f8e2897abd20e86da899f35": "canonical",
    "0x8add914454ed7ee33c9a533a545555c376f37f3fdffb56f9daf0e848a2ff268a": "orphan",
    "0x9f201190b93e71f5094ddd0c9c02161838933f0ae0f02907b64a1c772ae3925d": "orphan",
    "0xd51ecada8a69e59eae8a2f018685538548168110c29bc36fb5e2a12b79ddc6c7": "orphan",
    "0x94128430121dba8fae05949a86453da5a0726b461899feb375c6c222f6dba999": "orphan",
}

DEFAULT_CHAIN_ID = 1337
CLIENT_VERSION = "explorerd-replaynode/0.1.0"

_HEX_QTY = re.compile(r"0x[0-9a-fA-F]{1,64}\Z")
_HEX_HASH = re.compile(r"0x[0-9a-fA-F]{64}\Z")
_JSON_SEPARATORS = (",", ":")


def _sha(text: str) -> str:
    """A deterministic 32-byte lowercase hex hash (not keccak: nothing verifies it)."""
    return "0x" + hashlib.sha256(text.encode("ascii")).hexdigest()


# --------------------------------------------------------------------------
# Recordings


@lru_cache(maxsize=None)
def _read_jsonl(path: str) -> tuple[dict, ...]:
    """Parse a JSON-lines file once per process (the data is a few MB)."""
    with open(path, "rb") as f:
        return tuple(json.loads(line) for line in f if line.strip())


class _Step(NamedTuple):
    block: dict
    orphan: bool


@dataclass(frozen=True, eq=False)  # identity-hashed: loaded once, cached
class Recording:
    """One contiguous recorded run plus the orphans recorded at its heights."""

    name: str
    network: str
    chain_id: int | None
    blocks: tuple[dict, ...]
    orphans: tuple[dict, ...]

    @property
    def first(self) -> int:
        return int(self.blocks[0]["number"], 16)

    @property
    def last(self) -> int:
        return int(self.blocks[-1]["number"], 16)

    def steps(self) -> list[_Step]:
        """The head events of one pass, orphans placed as the poller saw them."""
        by_height: dict[int, list[dict]] = {}
        for o in self.orphans:
            by_height.setdefault(int(o["number"], 16), []).append(o)
        out = []
        for b in self.blocks:
            siblings = by_height.get(int(b["number"], 16), [])
            before = [o for o in siblings if SEEN_FIRST.get(o["hash"], "orphan") == "orphan"]
            after = [o for o in siblings if o not in before]
            out.extend(_Step(o, True) for o in before)
            out.append(_Step(b, False))
            out.extend(_Step(o, True) for o in after)
        return out


def packaged_recordings() -> list[str]:
    """Names of the contiguous runs shipped in explorerd/data."""
    return sorted(
        p.name[: -len(".blocks.jsonl")]
        for p in DATA_DIR.glob("*_*.blocks.jsonl")
        if "samples" not in p.name
    )


def _resolve(source: str | os.PathLike) -> Path:
    p = Path(source)
    if p.suffix == ".jsonl" or p.exists():
        return p.resolve()
    return (DATA_DIR / f"{source}.blocks.jsonl").resolve()


def load_recording(
    source: "str | os.PathLike | Recording", orphans: str | os.PathLike | None = None
) -> Recording:
    """Load (once) a run by packaged name or path; its orphans come from
    ``<network>.reorged.blocks.jsonl`` next to it unless ``orphans`` is given."""
    if isinstance(source, Recording):
        return source
    path = _resolve(source)
    opath = Path(orphans).resolve() if orphans is not None else None
    return _load_recording(str(path), str(opath) if opath else None)


@lru_cache(maxsize=None)
def _load_recording(path: str, orphans_path: str | None) -> Recording:
    p = Path(path)
    if not p.exists():
        raise ValueError(
            f"recording {p.name!r} not found (packaged: {', '.join(packaged_recordings())})"
        )
    name = p.name[: -len(".blocks.jsonl")] if p.name.endswith(".blocks.jsonl") else p.stem
    network = name.split("_", 1)[0]
    blocks = _read_jsonl(path)
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
    orphans = tuple(
        o for o in (_read_jsonl(orphans_path) if orphans_path else ())
        if lo <= int(o["number"], 16) <= hi
    )
    return Recording(name, network, NETWORK_CHAIN_IDS.get(network), blocks, orphans)


# --------------------------------------------------------------------------
# Chain model


class Head(NamedTuple):
    height: int
    hash: str


@dataclass(frozen=True)
class Reorg:
    """A head change that did not extend the previous head, as the node applied it."""

    step: int  # 0-based index of the head event that caused it
    old_head: Head
    new_head: Head
    depth: int  # number of blocks that left the canonical chain
    ancestor: Head | None  # common ancestor; None when it lies outside known blocks
    removed: tuple[str, ...]  # hashes, ascending height
    added: tuple[str, ...]  # hashes, ascending height
    cause: str  # "script" (recorded reorg) or "manual" (reorg())

    def as_dict(self) -> dict:
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


class _Rec:
    """What the node keeps per block: the real template plus the rewritten header."""

    __slots__ = ("height", "hash", "parent", "timestamp", "template", "round", "verbatim", "orphan")

    def __init__(self, height, hash, parent, timestamp, template, round, verbatim, orphan):
        self.height = height
        self.hash = hash
        self.parent = parent
        self.timestamp = timestamp
        self.template = template
        self.round = round
        self.verbatim = verbatim
        self.orphan = orphan


class _Raw(bytes):
    """Already-encoded JSON, spliced into the response without re-encoding."""


class RpcError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(code, message)
        self.code = code
        self.message = message


FAULT_KINDS = ("http-500", "rpc-error", "disconnect", "delay")


class ReplayNode:
    """An Ethereum-like node whose chain is a replay of real recorded blocks.

    ``clock`` (IReactorTime) drives block production only; HTTP runs on the
    reactor given to :meth:`listen`.  Nothing touches the global reactor.
    """

    log = Logger()

    def __init__(
        self,
        clock,
        blocks_source: Any = None,
        block_time: float = 2.0,
        chain_id: int | None = None,
        *,
        mode: str = "endless",
        loop: bool | None = None,
        start_height: int = 1,
        prefill: int = 0,
        max_blocks: int = 100_000,
        client_version: str = CLIENT_VERSION,
    ):
        if mode not in ("endless", "recording"):
            raise ValueError(f"mode must be 'endless' or 'recording', not {mode!r}")
        if not block_time > 0:
            raise ValueError(f"block_time must be > 0, not {block_time!r}")
        if blocks_source is None:
            blocks_source = DEFAULT_RECORDINGS
        if isinstance(blocks_source, (str, os.PathLike, Recording)):
            blocks_source = [blocks_source]
        self.recordings = [load_recording(s) for s in blocks_source]
        if not self.recordings:
            raise ValueError("blocks_source is empty")
        if mode == "recording" and len(self.recordings) != 1:
            raise ValueError("recording mode replays exactly one recording")
        self.mode = mode
        self.loop = (mode == "endless") if loop is None else bool(loop)
        if chain_id is None:
            chain_id = (self.recordings[0].chain_id if mode == "recording" else None) or DEFAULT_CHAIN_ID
        self.chain_id = int(chain_id)
        self.block_time = float(block_time)
        self.client_version = client_version
        self._clock = clock
        self._start_height = int(start_height)
        self._prefill = int(prefill)
        self._max_blocks = int(max_blocks)
        self._scripts = [r.steps() for r in self.recordings]

        # chain state
        self._by_hash: dict[str, _Rec] = {}
        self._canonical: dict[int, str] = {}
        self._low = 0  # canonical heights are contiguous in [_low, head.height]
        self._head: _Rec | None = None
        self._tip: _Rec | None = None  # last non-orphan block (the branch the script extends)
        self.reorgs: list[Reorg] = []
        self.events = 0  # head events applied
        self._manual_reorgs = 0

        # script cursor
        self._round = 0
        self._rec_i = 0
        self._step_i = 0
        self._offset = 0  # synthetic height - recorded height in the current pass
        self._orphan_map: dict[str, str] = {}  # recorded orphan hash -> hash served this pass
        self.finished = False

        self._loop_call: task.LoopingCall | None = None
        self._encoded: OrderedDict[tuple[str, bool], bytes] = OrderedDict()
        self._faults: list[tuple[str, float]] = []
        self._delayed: dict[Any, Any] = {}  # DelayedCall -> request
        self.requests = 0
        self._request_waiters: list[defer.Deferred] = []
        self.resource = _RpcResource(self)
        self.factory: _TrackingFactory | None = None

    # ---------------------------------------------------------------- public

    @classmethod
    def recording(cls, clock, source, block_time: float = 2.0, loop: bool = False, **kw) -> "ReplayNode":
        """Shorthand for recording mode."""
        return cls(clock, source, block_time, mode="recording", loop=loop, **kw)

    @property
    def head(self) -> Head | None:
        h = self._head
        return Head(h.height, h.hash) if h is not None else None

    @property
    def delayed_requests(self) -> int:
        """Requests parked by a ``delay`` fault."""
        return len(self._delayed)

    @property
    def running(self) -> bool:
        return self._loop_call is not None and self._loop_call.running

    def start(self) -> None:
        """Begin producing; the first start also produces the first head at once."""
        if self.running:
            return
        if self._head is None:
            now = self._clock.seconds()
            for i in range(self._prefill):
                self._mine(at=now - (self._prefill - i) * self.block_time)
            self._mine()
            self.log.info(
                "replay node started: mode={mode} chain_id={chain_id} recordings={names} "
                "block_time={block_time} head={height}",
                mode=self.mode, chain_id=self.chain_id, block_time=self.block_time,
                names=[r.name for r in self.recordings],
                height=self._head.height if self._head else None,
            )
        if self.finished:
            return
        lc = task.LoopingCall(self._tick)
        lc.clock = self._clock
        self._loop_call = lc
        lc.start(self.block_time, now=False).addErrback(
            lambda f: self.log.failure("block production stopped", f)
        )

    def stop(self) -> None:
        """Stop producing and answer any delayed (fault-injected) responses now."""
        if self._loop_call is not None and self._loop_call.running:
            self._loop_call.stop()
        self._loop_call = None
        for call, (request, payload) in list(self._delayed.items()):
            if call.active():
                call.cancel()
            self._delayed.pop(call, None)
            self._write(request, payload)

    def mine(self) -> Head | None:
        """Apply the next head event now (ignoring the clock); None at the end."""
        return self._mine()

    def reorg(self, depth: int) -> Head:
        """Replace the last ``depth`` canonical blocks with new ones (same txs,
        new hashes, same heights), like ``anvil_reorg``; endless mode only."""
        if self.mode != "endless":
            raise RuntimeError("reorg() rewrites hashes: only in endless mode")
        head = self._head
        if head is None or depth < 1:
            raise ValueError("reorg needs a head and depth >= 1")
        base_height = head.height - depth
        base_hash = self._canonical.get(base_height)
        if base_hash is None or base_hash not in self._by_hash:
            raise ValueError(f"reorg depth {depth} reaches below the known chain")
        self._manual_reorgs += 1
        n = self._manual_reorgs
        olds = [self._by_hash[self._canonical[h]] for h in range(base_height + 1, head.height + 1)]
        parent = self._by_hash[base_hash]
        now = int(self._clock.seconds())
        new = None
        for old in olds:
            new = _Rec(
                old.height,
                _sha(f"{self.chain_id}-{old.height}-{old.round}-{old.template['hash']}-reorg{n}"),
                parent.hash,
                max(now, parent.timestamp),
                old.template,
                old.round,
                False,
                False,
            )
            self._by_hash[new.hash] = new
            parent = new
        self._tip = new
        self._set_head(new, cause="manual")
        return self.head

    def inject_fault(self, kind: str, count: int = 1, delay: float = 0.0) -> None:
        """Make the next ``count`` HTTP requests fail: ``http-500``, ``rpc-error``
        (-32000 for every call), ``disconnect`` (abort the TCP connection) or
        ``delay`` (answer after ``delay`` seconds of the node's clock)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}")
        self._faults.extend([(kind, float(delay))] * count)

    def next_request(self) -> defer.Deferred:
        """Fires (with the HTTP method) once the next request has been handled or,
        under a ``delay`` fault, parked: lets tests act while a request is in flight.
        It fires synchronously inside the request handling: give the reactor one
        turn before depending on the response having been written."""
        d = defer.Deferred()
        self._request_waiters.append(d)
        return d

    def block(self, height: int, full: bool = True) -> dict | None:
        """The canonical block at ``height`` as served (decoded), for tests."""
        h = self._canonical.get(height)
        return json.loads(self._encode_block(self._by_hash[h], full)) if h else None

    def block_by_hash(self, block_hash: str, full: bool = True) -> dict | None:
        rec = self._by_hash.get(block_hash.lower())
        return json.loads(self._encode_block(rec, full)) if rec else None

    # ---------------------------------------------------------------- HTTP

    def site(self, reactor) -> server.Site:
        site = _QuietSite(self.resource, reactor=reactor)
        return site

    def listen(self, reactor, endpoint: str = "tcp:8545:interface=127.0.0.1") -> defer.Deferred:
        """Listen on a Twisted endpoint string; Deferred fires with the IListeningPort."""
        return endpoints.serverFromString(reactor, endpoint).listen(self._factory(reactor))

    def as_service(self, reactor, endpoint: str = "tcp:8545:interface=127.0.0.1") -> service.MultiService:
        """An IService: node first, listener second (so stopping closes the port first)."""
        ms = service.MultiService()
        _NodeService(self).setServiceParent(ms)
        strports.service(endpoint, self._factory(reactor), reactor=reactor).setServiceParent(ms)
        return ms

    @property
    def connection_count(self) -> int:
        return len(self.factory.protocols) if self.factory is not None else 0

    def when_idle(self) -> defer.Deferred:
        """Fires once no HTTP connection is open (for clean test teardown)."""
        if self.factory is None:
            return defer.succeed(None)
        return self.factory.when_idle()

    def http_factory(self, reactor) -> "_TrackingFactory":
        """The HTTP server factory to listen with (one per node)."""
        return self._factory(reactor)

    def _factory(self, reactor) -> "_TrackingFactory":
        if self.factory is None:
            self.factory = _TrackingFactory(self.site(reactor))
        return self.factory

    # ---------------------------------------------------------------- production

    def _tick(self) -> None:
        try:
            if self._mine() is None and self._loop_call is not None and self._loop_call.running:
                self._loop_call.stop()
        except Exception:
            self.log.failure("replay node failed to produce a block")

    def _next_step(self) -> tuple[_Step, Recording] | None:
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
                    self.log.info("replay node reached the end of its recordings at {height}",
                                  height=self._head.height if self._head else None)
                    return None
        rec = self.recordings[self._rec_i]
        if self._step_i == 0:
            nxt = self._tip.height + 1 if self._tip is not None else self._start_height
            self._offset = nxt - rec.first
            self._orphan_map = {}
        step = self._scripts[self._rec_i][self._step_i]
        self._step_i += 1
        return step, rec

    def _mine(self, at: float | None = None) -> Head | None:
        nxt = self._next_step()
        if nxt is None:
            return None
        step, recording = nxt
        b = step.block
        if self.mode == "recording" and self._round == 0:
            rec = _Rec(int(b["number"], 16), b["hash"], b["parentHash"], int(b["timestamp"], 16),
                       b, 0, True, step.orphan)
        else:
            rnd = self._round
            if step.orphan:
                height = int(b["number"], 16) + self._offset
                parent = self._orphan_map.get(b["parentHash"]) or self._main_hash_at(height - 1)
            else:
                height = self._tip.height + 1 if self._tip is not None else self._start_height
                self._offset = height - int(b["number"], 16)
                parent = self._tip.hash if self._tip is not None else _sha(f"{self.chain_id}-{height - 1}-pre")
            prec = self._by_hash.get(parent)
            now = int(self._clock.seconds() if at is None else at)
            rec = _Rec(height, _sha(f"{self.chain_id}-{height}-{rnd}-{b['hash']}"), parent,
                       max(now, prec.timestamp if prec else 0), b, rnd, False, step.orphan)
            if step.orphan:
                self._orphan_map[b["hash"]] = rec.hash
        self._by_hash[rec.hash] = rec
        if not step.orphan:
            self._tip = rec
        self._set_head(rec, cause="script")
        return self.head

    def _main_hash_at(self, height: int) -> str | None:
        r = self._tip
        while r is not None and r.height > height:
            r = self._by_hash.get(r.parent)
        return r.hash if r is not None and r.height == height else None

    def _set_head(self, rec: _Rec, cause: str) -> None:
        old = self._head
        canon = self._canonical
        top = old.height if old is not None else rec.height
        for h in range(rec.height + 1, top + 1):
            canon.pop(h, None)
        canon[rec.height] = rec.hash
        low = rec.height
        p = self._by_hash.get(rec.parent)
        while p is not None and canon.get(p.height) != p.hash:
            canon[p.height] = p.hash
            low = p.height
            p = self._by_hash.get(p.parent)
        if old is None:
            self._low = low
        elif p is None:  # ancestry unknown below `low`: older entries belong to a dead branch
            for h in range(self._low, low):
                canon.pop(h, None)
            self._low = low
        self._head = rec
        step = self.events
        self.events += 1
        if old is not None and rec.parent != old.hash:
            r = self._diff(old, rec, step, cause)
            self.reorgs.append(r)
            self.log.info(
                "replay reorg depth={depth} at {height}: ancestor={ancestor} removed={removed}",
                depth=r.depth, height=rec.height, ancestor=r.ancestor, removed=list(r.removed),
                added=list(r.added), cause=cause,
            )
        else:
            self.log.debug("replay head {height} {hash}", height=rec.height, hash=rec.hash)
        self._prune()

    def _diff(self, old: _Rec, new: _Rec, step: int, cause: str) -> Reorg:
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

    def _prune(self) -> None:
        while len(self._by_hash) > self._max_blocks:
            oldest = next(iter(self._by_hash))
            rec = self._by_hash.pop(oldest)
            if self._canonical.get(rec.height) == rec.hash:
                del self._canonical[rec.height]
                self._low = max(self._low, rec.height + 1)

    # ---------------------------------------------------------------- encoding

    def _encode_block(self, rec: _Rec, full: bool) -> bytes:
        key = (rec.hash, full)
        data = self._encoded.get(key)
        if data is not None:
            self._encoded.move_to_end(key)
            return data
        t = rec.template
        if rec.verbatim:
            b = t if full else dict(t, transactions=[tx["hash"] for tx in t["transactions"]])
        else:
            b = dict(t)
            number = hex(rec.height)
            b["number"] = number
            b["hash"] = rec.hash
            b["parentHash"] = rec.parent
            b["timestamp"] = hex(rec.timestamp)
            txs = []
            for i, tx in enumerate(t["transactions"]):
                txh = tx["hash"] if rec.round == 0 else _sha(f"{self.chain_id}-tx-{rec.round}-{tx['hash']}")
                if full:
                    d = dict(tx)
                    d["blockHash"] = rec.hash
                    d["blockNumber"] = number
                    d["transactionIndex"] = hex(i)
                    d["hash"] = txh
                    txs.append(d)
                else:
                    txs.append(txh)
            b["transactions"] = txs
        data = json.dumps(b, separators=_JSON_SEPARATORS).encode()
        self._encoded[key] = data
        if len(self._encoded) > 64:
            self._encoded.popitem(last=False)
        return data

    # ---------------------------------------------------------------- JSON-RPC

    def handle(self, body: bytes, fail: bool = False) -> bytes | None:
        """Answer one HTTP body (single or batch); None when nothing is owed."""
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(None, -32700, "parse error")
        if isinstance(payload, list):
            if not payload:
                return _error(None, -32600, "empty batch")
            parts = [self._handle_one(r, fail) for r in payload]
            parts = [p for p in parts if p is not None]
            return b"[" + b",".join(parts) + b"]" if parts else None
        return self._handle_one(payload, fail)

    def _handle_one(self, req: Any, fail: bool) -> bytes | None:
        if not isinstance(req, dict):
            return _error(None, -32600, "invalid request")
        rid = req.get("id")
        if isinstance(rid, bool) or not (rid is None or isinstance(rid, (str, int, float))):
            return _error(None, -32600, "invalid request id")
        method = req.get("method")
        if req.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return _error(rid, -32600, "invalid request")
        notification = "id" not in req
        params = req.get("params")
        try:
            if params is None:
                params = []
            if not isinstance(params, list):
                raise RpcError(-32602, "params must be an array")
            handler = _METHODS.get(method)
            if handler is None:
                raise RpcError(-32601, f"the method {method} does not exist/is not available")
            if fail:
                raise RpcError(-32000, "injected fault")
            result = handler(self, params)
        except RpcError as e:
            return None if notification else _error(rid, e.code, e.message)
        if notification:
            return None
        body = result if isinstance(result, _Raw) else json.dumps(result, separators=_JSON_SEPARATORS).encode()
        return b'{"jsonrpc":"2.0","id":' + json.dumps(rid).encode() + b',"result":' + body + b"}"

    def _resolve_tag(self, tag: Any) -> int | None:
        if not isinstance(tag, str):
            raise RpcError(-32602, "invalid argument 0: block number must be a hex string or tag")
        if tag in ("latest", "pending", "safe", "finalized"):
            return self._head.height if self._head is not None else None
        if tag == "earliest":
            return self._low if self._head is not None else None
        if not _HEX_QTY.match(tag):
            raise RpcError(-32602, f"invalid argument 0: invalid block number {tag!r}")
        return int(tag, 16)

    def _rpc_block_number(self, params):
        _arity(params, 0)
        return hex(self._head.height) if self._head is not None else "0x0"

    def _rpc_get_block_by_number(self, params):
        _arity(params, 2, required=1)
        height = self._resolve_tag(params[0])
        full = _bool_param(params)
        h = self._canonical.get(height) if height is not None else None
        return _Raw(self._encode_block(self._by_hash[h], full)) if h else None

    def _rpc_get_block_by_hash(self, params):
        _arity(params, 2, required=1)
        if not isinstance(params[0], str) or not _HEX_HASH.match(params[0]):
            raise RpcError(-32602, "invalid argument 0: hex string of length 64 expected")
        full = _bool_param(params)
        rec = self._by_hash.get(params[0].lower())
        return _Raw(self._encode_block(rec, full)) if rec else None

    def _rpc_chain_id(self, params):
        _arity(params, 0)
        return hex(self.chain_id)

    def _rpc_net_version(self, params):
        _arity(params, 0)
        return str(self.chain_id)

    def _rpc_client_version(self, params):
        _arity(params, 0)
        return self.client_version

    def _rpc_syncing(self, params):
        _arity(params, 0)
        return False

    def _rpc_listening(self, params):
        _arity(params, 0)
        return True

    # ---------------------------------------------------------------- rendering

    def _render(self, request) -> bytes | int:
        self.requests += 1
        try:
            return self._render_request(request)
        finally:
            waiters, self._request_waiters = self._request_waiters, []
            for d in waiters:
                d.callback(request.method)

    def _render_request(self, request) -> bytes | int:
        kind, delay = self._faults.pop(0) if self._faults else (None, 0.0)
        if kind == "http-500":
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain")
            return b"injected fault\n"
        if kind == "disconnect":
            request.channel.transport.abortConnection()
            return server.NOT_DONE_YET
        request.setHeader(b"content-type", b"application/json")
        payload = self.handle(request.content.read(), fail=(kind == "rpc-error")) or b""
        if kind == "delay":
            call = self._clock.callLater(delay, self._finish_delayed, request)
            self._delayed[call] = (request, payload)

            def gone(_):
                if call.active():
                    call.cancel()
                self._delayed.pop(call, None)

            request.notifyFinish().addErrback(gone)
            return server.NOT_DONE_YET
        return payload

    def _finish_delayed(self, request) -> None:
        for call, (req, payload) in list(self._delayed.items()):
            if req is request:
                self._delayed.pop(call)
                self._write(req, payload)

    @staticmethod
    def _write(request, payload: bytes) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.write(payload)
        request.finish()


_METHODS = {
    "eth_blockNumber": ReplayNode._rpc_block_number,
    "eth_getBlockByNumber": ReplayNode._rpc_get_block_by_number,
    "eth_getBlockByHash": ReplayNode._rpc_get_block_by_hash,
    "eth_chainId": ReplayNode._rpc_chain_id,
    "net_version": ReplayNode._rpc_net_version,
    "web3_clientVersion": ReplayNode._rpc_client_version,
    "eth_syncing": ReplayNode._rpc_syncing,
    "net_listening": ReplayNode._rpc_listening,
}


def _arity(params: list, most: int, required: int | None = None) -> None:
    need = most if required is None else required
    if len(params) > most:
        raise RpcError(-32602, f"too many arguments, want at most {most}")
    if len(params) < need:
        raise RpcError(-32602, f"missing value for required argument {len(params)}")


def _bool_param(params: list) -> bool:
    full = params[1] if len(params) > 1 else False
    if not isinstance(full, bool):
        raise RpcError(-32602, "invalid argument 1: fullTx must be a boolean")
    return full


def _error(rid, code: int, message: str) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}},
        separators=_JSON_SEPARATORS,
    ).encode()


class _RpcResource(resource.Resource):
    """POST-only leaf: every path is the RPC endpoint, other methods get 405."""

    isLeaf = True

    def __init__(self, node: ReplayNode):
        super().__init__()
        self._node = node

    def render(self, request):
        if request.method != b"POST":
            request.setResponseCode(405)
            request.setHeader(b"allow", b"POST")
            request.setHeader(b"content-type", b"text/plain")
            return b"JSON-RPC: use POST\n"
        return self._node._render(request)


class _QuietSite(server.Site):
    """No per-request access log: a benchmark would drown the log."""

    noisy = False

    def log(self, request) -> None:
        pass


class _TrackingFactory(WrappingFactory):
    """Counts open HTTP connections so tests can wait for the server side to close."""

    noisy = False

    def __init__(self, wrapped):
        super().__init__(wrapped)
        self._idle: list[defer.Deferred] = []

    def unregisterProtocol(self, p) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    def when_idle(self) -> defer.Deferred:
        if not self.protocols:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d


class _NodeService(service.Service):
    def __init__(self, node: ReplayNode):
        self.node = node

    def startService(self) -> None:
        super().startService()
        self.node.start()

    def stopService(self):
        self.node.stop()
        return super().stopService()


# --------------------------------------------------------------------------
# Expected behaviour of recordings


@lru_cache(maxsize=None)
def _simulate(recording: Recording) -> tuple[tuple[Head, ...], tuple[Reorg, ...]]:
    node = ReplayNode(task.Clock(), recording, mode="recording", loop=False)
    heads = []
    while (h := node.mine()) is not None:
        heads.append(h)
    return tuple(heads), tuple(node.reorgs)


def expected_reorgs(recording: "str | os.PathLike | Recording") -> list[Reorg]:
    """The reorgs a correct live-tail sees replaying ``recording`` in recording mode."""
    return list(_simulate(load_recording(recording))[1])


def head_sequence(recording: "str | os.PathLike | Recording") -> list[Head]:
    """Every head the node serves, in order, replaying ``recording`` once."""
    return list(_simulate(load_recording(recording))[0])


# --------------------------------------------------------------------------
# Command line


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m explorerd.replaynode",
        description="Serve real recorded Ethereum blocks as a JSON-RPC node.",
    )
    p.add_argument("--listen", default="tcp:8545:interface=127.0.0.1",
                   help="Twisted endpoint (default: %(default)s)")
    p.add_argument("--block-time", type=_positive_float, default=2.0,
                   help="seconds per head event (default: %(default)s)")
    p.add_argument("--recording", metavar="NAME_OR_FILE",
                   help="replay one recording with original heights/hashes "
                        f"(packaged: {', '.join(packaged_recordings())}); default: endless mode")
    p.add_argument("--orphans", metavar="FILE", help="orphaned blocks for --recording")
    p.add_argument("--loop", action=argparse.BooleanOptionalAction, default=None,
                   help="keep going after the last block (default: loop in endless mode only)")
    p.add_argument("--chain-id", type=int, default=None)
    p.add_argument("--start-height", type=int, default=1, help="first height in endless mode")
    p.add_argument("--prefill", type=int, default=0, help="blocks produced back-dated at start")
    p.add_argument("--expected-reorgs", action="store_true",
                   help="print the expected reorgs of --recording as JSON and exit")
    p.add_argument("--verbose", action="store_true", help="log every head")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.expected_reorgs:
        if not args.recording:
            _parser().error("--expected-reorgs needs --recording")
        rec = load_recording(args.recording, args.orphans)
        json.dump([r.as_dict() for r in expected_reorgs(rec)], sys.stdout, indent=1)
        sys.stdout.write("\n")
        return

    from twisted.internet import reactor
    from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                                globalLogBeginner, textFileLogObserver)

    level = LogLevel.debug if args.verbose else LogLevel.info
    globalLogBeginner.beginLoggingTo([
        FilteringLogObserver(textFileLogObserver(sys.stdout),
                             [LogLevelFilterPredicate(defaultLogLevel=level)])
    ])
    if args.recording:
        source = load_recording(args.recording, args.orphans)
        node = ReplayNode(reactor, source, args.block_time, args.chain_id, mode="recording",
                          loop=args.loop, prefill=args.prefill)
    else:
        node = ReplayNode(reactor, None, args.block_time, args.chain_id, loop=args.loop,
                          start_height=args.start_height, prefill=args.prefill)
    svc = node.as_service(reactor, args.listen)
    svc.startService()
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
