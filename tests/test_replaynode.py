"""
The replay node over a real loopback HTTP port, driven by a task.Clock.

Why these tests: the live-tail trusts this node to look like a real one on
the wire and to replay the recorded reorgs faithfully; a poller written here
(the simplest correct one) must observe exactly what C{expected_reorgs}
promises, and what C{expected_reorgs} promises must follow from the
recordings themselves.
"""

import collections
import json
import os
import re
import subprocess
import sys

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock, deferLater
from twisted.web.client import Agent, HTTPConnectionPool

from explorerd.replay import DEFAULT_RECORDINGS, Chain, ReplayNode, expected_reorgs, load_recording
from tests.replayfaults import ServedNode

HASH = re.compile(r"0x[0-9a-f]{64}\Z")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RpcFailure(Exception):
    def __init__(self, error):
        super().__init__(error)
        self.error = error
        self.code = error["code"]


class Rpc:
    """A minimal JSON-RPC client over treq (what the live-tail does, minus policy)."""

    def __init__(self, http, url, served=None):
        self.http = http
        self.url = url
        self.served = served
        self.next_id = 0

    async def post(self, body, method="POST"):
        resp = await self.http.request(
            method, self.url, data=body, headers={b"Content-Type": [b"application/json"]}, timeout=10
        )
        return resp, await resp.content()

    async def call(self, method, *params):
        self.next_id += 1
        payload = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": list(params)}
        resp, body = await self.post(json.dumps(payload).encode())
        assert resp.code == 200
        msg = json.loads(body)
        assert msg["jsonrpc"] == "2.0" and msg["id"] == self.next_id
        if "error" in msg:
            raise RpcFailure(msg["error"])
        return msg["result"]

    async def failure(self, method, *params):
        """The error a call gets (it must get one)."""
        with pytest.raises(RpcFailure) as e:
            await self.call(method, *params)
        return e.value.error

    async def batch(self, calls):
        reqs = []
        for method, params in calls:
            self.next_id += 1
            reqs.append({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        _, body = await self.post(json.dumps(reqs).encode())
        by_id = {m["id"]: m for m in json.loads(body)}
        return [by_id[r["id"]]["result"] for r in reqs]


class Poller:
    """Follows ``latest`` and reports reorgs the way a correct live-tail would."""

    def __init__(self, rpc):
        self.rpc = rpc
        self.chain = {}  # height -> hash, as this poller believes
        self.head = None
        self.heads = []
        self.reorgs = []
        self.polls = 0

    async def poll(self):
        step = self.polls
        self.polls += 1
        b = await self.rpc.call("eth_getBlockByNumber", "latest", False)
        if self.head is not None and b["hash"] == self.head["hash"]:
            return
        height = int(b["number"], 16)
        self.heads.append((height, b["hash"]))
        if self.head is None or b["parentHash"] == self.head["hash"]:
            self.chain[height] = b["hash"]
            self.head = b
            return
        added, cur, ancestor = [b], b, None
        while True:
            ph, pheight = cur["parentHash"], int(cur["number"], 16) - 1
            if self.chain.get(pheight) == ph:
                ancestor = (pheight, ph)
                break
            parent = await self.rpc.call("eth_getBlockByHash", ph, False)
            if parent is None:
                break
            added.append(parent)
            cur = parent
        low = int(added[-1]["number"], 16)
        removed = tuple(self.chain.pop(k) for k in sorted(self.chain) if k >= low)
        for a in added:
            self.chain[int(a["number"], 16)] = a["hash"]
        self.reorgs.append((step, len(removed), ancestor, removed, tuple(a["hash"] for a in reversed(added))))
        self.head = b


def as_observed(reorgs):
    return [
        (r.step, r.depth, tuple(r.ancestor) if r.ancestor else None, r.removed, r.added) for r in reorgs
    ]


def head_sequence(name):
    """Every head the chain takes replaying a recording once, as the chain builder says."""
    recording = load_recording(name)
    chain = Chain([recording], recording.chain_id, mode="recording", loop=False)
    heads = []
    while (head := chain.advance(0)) is not None:
        heads.append(head)
    return heads


@pytest_twisted.async_yield_fixture
async def serve():
    """Start nodes on real loopback ports; tear down client, server and timers."""
    from twisted.internet import reactor

    calls_before = set(reactor.getDelayedCalls())
    selectables_before = set(reactor.getReaders()) | set(reactor.getWriters())
    pool = HTTPConnectionPool(reactor, persistent=True)
    http = HTTPClient(Agent(reactor, pool=pool))
    started = []

    async def start(node, run=True):
        if run:
            node.start()
        served = await ServedNode(node).listen(reactor)
        started.append(served)
        return Rpc(http, served.url, served)

    yield start

    await pool.closeCachedConnections()
    for served in started:
        served.node.stop()
        await served.close(reactor)
        if isinstance(served.node.clock, Clock):
            assert served.node.clock.getDelayedCalls() == []
    leaked_calls = [c for c in reactor.getDelayedCalls() if c not in calls_before and c.active()]
    assert not leaked_calls, leaked_calls
    leaked = (set(reactor.getReaders()) | set(reactor.getWriters())) - selectables_before
    assert not leaked, leaked


# ------------------------------------------------------------------ JSON-RPC surface


@pytest_twisted.ensureDeferred
async def test_methods_answer_like_a_node(serve):
    clock = Clock()
    node = ReplayNode(clock, block_time=2.0, start_height=100)
    rpc = await serve(node)
    for _ in range(5):
        node.mine()
    assert node.head.height == 105

    resp, body = await rpc.post(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}).encode())
    assert resp.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert json.loads(body) == {"jsonrpc": "2.0", "id": 1, "result": "0x539"}
    assert await rpc.call("eth_blockNumber") == "0x69"
    assert await rpc.call("net_version") == "1337"
    assert (await rpc.call("web3_clientVersion")).startswith("explorerd-replay/")

    full = await rpc.call("eth_getBlockByNumber", "latest", True)
    assert full["number"] == "0x69" and full["hash"] == node.head.hash
    assert full["transactions"] and all(isinstance(t, dict) for t in full["transactions"])
    light = await rpc.call("eth_getBlockByNumber", "0x69", False)
    assert light["transactions"] == [t["hash"] for t in full["transactions"]]
    assert {k: v for k, v in light.items() if k != "transactions"} == {
        k: v for k, v in full.items() if k != "transactions"
    }
    for tag in ("pending", "safe", "finalized"):
        assert (await rpc.call("eth_getBlockByNumber", tag, False))["hash"] == node.head.hash
    earliest = await rpc.call("eth_getBlockByNumber", "earliest", False)
    assert earliest["number"] == "0x64"
    by_hash = await rpc.call("eth_getBlockByHash", full["hash"].upper().replace("0X", "0x"), True)
    assert by_hash == full

    # fields other than the rewritten header stay real
    template = load_recording(DEFAULT_RECORDINGS[0]).blocks[0]
    assert list(earliest) == list(template)
    for k in ("miner", "stateRoot", "transactionsRoot", "gasUsed", "size", "logsBloom"):
        assert earliest[k] == template[k]
    assert earliest["transactions"] == [t["hash"] for t in template["transactions"]]

    assert await rpc.call("eth_getBlockByNumber", "0x63", True) is None
    assert await rpc.call("eth_getBlockByNumber", hex(10**6), False) is None
    assert await rpc.call("eth_getBlockByHash", "0x" + "ab" * 32, True) is None


@pytest_twisted.ensureDeferred
async def test_batch(serve):
    node = ReplayNode(Clock())
    rpc = await serve(node)
    reqs = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"},
        {"jsonrpc": "2.0", "id": "two", "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_bogus"},
        {"jsonrpc": "2.0", "method": "eth_blockNumber"},  # notification: no answer
        {"jsonrpc": "2.0", "id": 4, "method": "eth_getBlockByNumber", "params": ["latest", False]},
        42,
    ]
    resp, body = await rpc.post(json.dumps(reqs).encode())
    out = json.loads(body)
    assert [m["id"] for m in out] == [1, "two", 3, 4, None]
    assert out[0]["result"] == "0x1" and out[1]["result"] == "0x539"
    assert out[2]["error"]["code"] == -32601
    assert out[3]["result"]["hash"] == node.head.hash
    assert out[4]["error"]["code"] == -32600

    _, body = await rpc.post(b"[]")
    assert json.loads(body)["error"]["code"] == -32600


@pytest_twisted.ensureDeferred
async def test_errors(serve):
    node = ReplayNode(Clock())
    rpc = await serve(node)

    resp, body = await rpc.post(b'{"jsonrpc": "2.0", "id": 7, "method": ')
    assert resp.code == 200
    assert json.loads(body) == {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}

    with pytest.raises(RpcFailure) as e:
        await rpc.call("eth_sendRawTransaction", "0x00")
    assert e.value.code == -32601

    bad = [
        ("eth_getBlockByNumber", ["banana", True]),
        ("eth_getBlockByNumber", [12, True]),
        ("eth_getBlockByNumber", ["latest", "true"]),
        ("eth_getBlockByNumber", []),
        ("eth_getBlockByNumber", ["latest", True, 1]),
        ("eth_getBlockByHash", ["0x1234", False]),
        ("eth_blockNumber", [1]),
    ]
    for method, params in bad:
        with pytest.raises(RpcFailure) as e:
            await rpc.call(method, *params)
        assert e.value.code == -32602, (method, params)
    _, body = await rpc.post(b'{"jsonrpc":"2.0","id":9,"method":"eth_chainId","params":{"a":1}}')
    assert json.loads(body)["error"]["code"] == -32602
    _, body = await rpc.post(b'{"jsonrpc":"2.0","id":9}')
    assert json.loads(body) == {"jsonrpc": "2.0", "id": 9, "error": {"code": -32600, "message": "invalid request"}}

    for method in ("GET", "PUT"):
        resp, _ = await rpc.post(b"", method=method)
        assert resp.code == 405


# ------------------------------------------------------------------ endless mode


@pytest_twisted.ensureDeferred
async def test_endless_chain_is_consistent(serve):
    clock = Clock()
    clock.advance(1_700_000_000)
    node = ReplayNode(clock, block_time=2.0, start_height=1000)
    rpc = await serve(node)
    clock.pump([2.0] * 360)  # one head event per tick: about two passes over the script
    head = node.head
    assert head.height > 1000 + 300
    assert node.chain.events >= 360

    heights = list(range(1000, head.height + 1))
    blocks = []
    for i in range(0, len(heights), 40):
        blocks += await rpc.batch([("eth_getBlockByNumber", [hex(h), True]) for h in heights[i:i + 40]])
    assert blocks[-1]["hash"] == head.hash
    seen_tx = set()
    prev = None
    for h, b in zip(heights, blocks):
        assert int(b["number"], 16) == h
        assert HASH.match(b["hash"]) and HASH.match(b["parentHash"])
        if prev is not None:
            assert b["parentHash"] == prev["hash"]
            assert int(b["timestamp"], 16) >= int(prev["timestamp"], 16)
        for i, tx in enumerate(b["transactions"]):
            assert (tx["blockHash"], tx["blockNumber"], tx["transactionIndex"]) == (b["hash"], b["number"], hex(i))
            assert HASH.match(tx["hash"])
            assert tx["hash"] not in seen_tx  # fresh tx hashes per pass: no repeats on the chain
            seen_tx.add(tx["hash"])
        prev = b
    assert int(blocks[-1]["timestamp"], 16) == int(clock.seconds())
    assert len(seen_tx) > 4000

    # every recorded reorg was replayed, each with a known ancestor, depth 1 or 2
    assert len(node.reorgs) >= 6
    assert all(r.ancestor is not None and r.depth in (1, 2) and r.cause == "script" for r in node.reorgs)


@pytest_twisted.ensureDeferred
async def test_endless_serves_recorded_orphan_then_canonical(serve):
    node = ReplayNode(Clock(), block_time=2.0)
    rpc = await serve(node)
    poller = Poller(rpc)
    await poller.poll()
    for _ in range(80):  # mainnet run (7) then the Polygon run with its orphan at +19
        node.mine()
        await poller.poll()
    assert poller.reorgs == as_observed(node.reorgs)
    step, depth, ancestor, removed, added = poller.reorgs[0]
    assert depth == 1 and len(added) == 1
    # the orphan was the head for one event, then its canonical sibling replaced it
    orphan_height = ancestor[0] + 1
    assert poller.heads[step - 1] == (orphan_height, removed[0])
    assert poller.heads[step] == (orphan_height, added[0])
    orphan = await rpc.call("eth_getBlockByHash", removed[0], True)
    canonical = await rpc.call("eth_getBlockByNumber", hex(orphan_height), True)
    assert canonical["hash"] == added[0] != orphan["hash"]
    assert orphan["parentHash"] == canonical["parentHash"] == ancestor[1]
    recorded = load_recording("polygon_13522175-13522230")
    assert [t["hash"] for t in orphan["transactions"]] == [t["hash"] for t in recorded.orphans[0]["transactions"]]
    assert orphan["miner"] == recorded.orphans[0]["miner"]


@pytest_twisted.ensureDeferred
async def test_manual_reorg_and_mine(serve):
    node = ReplayNode(Clock(), block_time=2.0)
    rpc = await serve(node)
    poller = Poller(rpc)
    await poller.poll()
    for _ in range(5):
        node.mine()
        await poller.poll()
    h = node.head.height
    old = [(await rpc.call("eth_getBlockByNumber", hex(x), False))["hash"] for x in range(h - 3, h + 1)]
    new_head = node.reorg(3)
    await poller.poll()
    assert new_head.height == h and new_head.hash != old[-1]
    new = [(await rpc.call("eth_getBlockByNumber", hex(x), False)) for x in range(h - 3, h + 1)]
    assert new[0]["hash"] == old[0]
    assert [b["hash"] for b in new[1:]] != old[1:]
    assert all(b["parentHash"] == a["hash"] for a, b in zip(new, new[1:]))
    assert (await rpc.call("eth_getBlockByHash", old[-1], False))["number"] == hex(h)
    r = node.reorgs[-1]
    assert (r.depth, r.ancestor.height, r.removed, r.cause) == (3, h - 3, tuple(old[1:]), "manual")
    assert poller.reorgs[-1] == as_observed([r])[0]

    after = node.mine()
    latest = await rpc.call("eth_getBlockByNumber", "latest", False)
    assert after.height == h + 1 and latest["parentHash"] == new_head.hash

    with pytest.raises(ValueError):
        node.reorg(0)
    with pytest.raises(RuntimeError):
        ReplayNode.recording(Clock(), "rinkeby_4947153-4947173").reorg(1)


@pytest_twisted.ensureDeferred
async def test_reorg_to_a_shorter_branch_lowers_the_head(serve):
    node = ReplayNode(Clock(), block_time=2.0)
    rpc = await serve(node)
    poller = Poller(rpc)
    await poller.poll()
    for _ in range(40):  # past the first recording, so the script's orphans come after the reorg
        node.mine()
    await poller.poll()
    h = node.head.height
    old = [(await rpc.call("eth_getBlockByNumber", hex(x), False))["hash"] for x in range(h - 4, h + 1)]
    new_head = node.reorg(4, 2)
    await poller.poll()
    assert new_head.height == h - 2
    assert await rpc.call("eth_blockNumber") == hex(h - 2)
    assert await rpc.call("eth_getBlockByNumber", hex(h - 1), False) is None
    new = [(await rpc.call("eth_getBlockByNumber", hex(x), False)) for x in range(h - 4, h - 1)]
    assert new[0]["hash"] == old[0] and new[1]["parentHash"] == old[0]
    assert {b["hash"] for b in new[1:]}.isdisjoint(old)
    r = node.reorgs[-1]
    assert (r.depth, r.ancestor.height, r.removed, len(r.added)) == (4, h - 4, tuple(old[1:]), 2)
    assert poller.reorgs[-1][1:] == as_observed([r])[0][1:]  # [0] is the step: the poller saw fewer
    # production goes on from the lower head, each block on the one before (orphans included)
    for _ in range(60):
        head = node.mine()
        block = await rpc.call("eth_getBlockByHash", head.hash, False)
        parent = await rpc.call("eth_getBlockByHash", block["parentHash"], False)
        assert parent is not None and int(parent["number"], 16) == head.height - 1
    with pytest.raises(ValueError):
        node.reorg(2, 3)


@pytest_twisted.ensureDeferred
async def test_clock_drives_production(serve):
    clock = Clock()
    node = ReplayNode(clock, block_time=2.0, prefill=3)
    rpc = await serve(node)
    assert await rpc.call("eth_blockNumber") == "0x4"
    earliest = await rpc.call("eth_getBlockByNumber", "earliest", False)
    assert earliest["number"] == "0x1"
    clock.advance(1.9)
    assert await rpc.call("eth_blockNumber") == "0x4"
    clock.advance(0.1)
    assert await rpc.call("eth_blockNumber") == "0x5"
    node.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert await rpc.call("eth_blockNumber") == "0x5"
    node.start()  # resumes without a new first block
    clock.advance(2)
    assert await rpc.call("eth_blockNumber") == "0x6"


# ------------------------------------------------------------------ recording mode

RECORDINGS = [
    "polygon_13522175-13522230",
    "polygon_13522239-13522298",
    "rinkeby_4941854-4941873",
    "rinkeby_4947153-4947173",
]


@pytest.mark.parametrize("name", RECORDINGS)
@pytest_twisted.ensureDeferred
async def test_recording_mode_reproduces_recorded_reorgs(serve, name):
    clock = Clock()
    recording = load_recording(name)
    node = ReplayNode.recording(clock, name, block_time=2.0)
    assert node.chain_id == {"polygon": 137, "rinkeby": 4}[recording.network]
    rpc = await serve(node)
    poller = Poller(rpc)
    await poller.poll()
    while node.running:
        clock.advance(2.0)
        await poller.poll()
    assert node.finished and node.head.hash == recording.blocks[-1]["hash"]
    clock.advance(60)
    assert node.mine() is None
    assert node.head.hash == recording.blocks[-1]["hash"]

    assert poller.heads == [tuple(h) for h in head_sequence(name)]
    assert poller.reorgs == as_observed(expected_reorgs(name))
    assert len(poller.reorgs) == {"polygon_13522175-13522230": 1, "polygon_13522239-13522298": 2,
                                  "rinkeby_4941854-4941873": 2, "rinkeby_4947153-4947173": 1}[name]
    # original blocks, byte-for-byte values, canonical by number and orphans by hash
    served = await rpc.batch([("eth_getBlockByNumber", [b["number"], True]) for b in recording.blocks])
    assert served == list(recording.blocks)
    for o in recording.orphans:
        assert await rpc.call("eth_getBlockByHash", o["hash"], True) == o
    assert await rpc.call("eth_chainId") == hex(node.chain_id)


@pytest.mark.parametrize("name", RECORDINGS + ["mainnet_11880804-11880810", "mainnet_15478281-15478287"])
def test_expected_reorgs_follow_from_the_recordings(name):
    """
    What the chain builder promises, checked against the recorded data
    alone: a reorg wherever the next head does not build on the last one,
    every recorded orphan leaving the chain and its canonical sibling
    joining it, at the fork point the recorded parents show.
    """
    recording = load_recording(name)
    blocks = {b["hash"]: b for b in recording.blocks + recording.orphans}
    canonical = {int(b["number"], 16): b["hash"] for b in recording.blocks}
    reorgs = expected_reorgs(name)

    heads = [step.block for step in recording.steps()]
    assert [r.step for r in reorgs] == [
        i for i, (a, b) in enumerate(zip(heads, heads[1:]), start=1) if b["parentHash"] != a["hash"]]
    removed = {h for r in reorgs for h in r.removed}
    added = {h for r in reorgs for h in r.added}
    assert {o["hash"] for o in recording.orphans} <= removed
    assert {canonical[int(o["number"], 16)] for o in recording.orphans} <= added
    for r in reorgs:
        assert (r.old_head.hash, r.new_head.hash) == (heads[r.step - 1]["hash"], heads[r.step]["hash"])
        first = r.new_head.height - len(r.added) + 1
        assert [int(blocks[h]["number"], 16) for h in r.added] == list(range(first, r.new_head.height + 1))
        assert [int(blocks[h]["number"], 16) for h in r.removed] == list(range(first, r.old_head.height + 1))
        assert r.depth == len(r.removed) and r.cause == "script"
        fork = blocks[r.added[0]]["parentHash"]
        if fork == blocks[r.removed[0]]["parentHash"] and fork in blocks:
            assert r.ancestor == (first - 1, fork)
        else:  # the branches part below the recording
            assert r.ancestor is None
    if not recording.orphans:
        assert reorgs == []


@pytest_twisted.ensureDeferred
async def test_recording_loop_continues_above_the_recording(serve):
    node = ReplayNode.recording(Clock(), "rinkeby_4947153-4947173", loop=True)
    rpc = await serve(node)
    rec = load_recording("rinkeby_4947153-4947173")
    for _ in range(len(head_sequence(rec)) + 1):  # start() applied the first event
        node.mine()
    latest = await rpc.call("eth_getBlockByNumber", "latest", True)
    assert int(latest["number"], 16) == rec.last + 2
    parent = await rpc.call("eth_getBlockByHash", latest["parentHash"], False)
    grand = await rpc.call("eth_getBlockByHash", parent["parentHash"], False)
    assert grand["hash"] == rec.blocks[-1]["hash"]  # the loop extends the original chain
    assert all(t["blockHash"] == latest["hash"] for t in latest["transactions"])


# ------------------------------------------------------------------ logs


def packaged_logs(network):
    """The packaged logs file, read apart from the node: the recorded logs by recorded block hash."""
    out = {}
    with open(os.path.join(REPO, "explorerd", "data", f"{network}.logs.jsonl"), encoding="utf-8") as f:
        for line in f:
            log = json.loads(line)
            out.setdefault(log["blockHash"], []).append(log)
    return out


def recorded_block_of(served, recording):
    """The recorded block a served one copies: header roots are never rewritten."""
    key = (served["stateRoot"], served["receiptsRoot"], served["transactionsRoot"])
    (block,) = [b for b in recording.blocks + recording.orphans
                if (b["stateRoot"], b["receiptsRoot"], b["transactionsRoot"]) == key]
    return block


def as_served_in(log, block):
    """A recorded log as a node serving C{block} must give it: inside that block, of its transaction."""
    tx = block["transactions"][int(log["transactionIndex"], 16)]
    return dict(log, blockHash=block["hash"], blockNumber=block["number"], transactionHash=tx["hash"])


@pytest_twisted.ensureDeferred
async def test_logs_by_block_hash_are_the_recorded_ones_in_the_served_blocks(serve):
    """Every block of two passes, orphans included: the recorded logs, inside the block as served."""
    name = "rinkeby_4947153-4947173"  # every block's logs recorded, its orphan's too
    recording, recorded = load_recording(name), packaged_logs("rinkeby")
    node = ReplayNode(Clock(), name)
    rpc = await serve(node)
    while len(node.reorgs) < 2:  # the whole recording, then its orphan again in the second pass
        node.mine()
    node.mine()
    orphans = [h for r in node.reorgs for h in r.removed]
    served = [await rpc.call("eth_getBlockByNumber", hex(h), True) for h in range(1, node.head.height + 1)]
    served += [await rpc.call("eth_getBlockByHash", h, True) for h in orphans]
    real_tx_hashes = {tx["hash"] for b in recording.blocks + recording.orphans for tx in b["transactions"]}
    passes = collections.Counter()
    for block in served:
        original = recorded_block_of(block, recording)
        logs = await rpc.call("eth_getLogs", {"blockHash": block["hash"]})
        assert logs == [as_served_in(log, block) for log in recorded[original["hash"]]]
        assert logs and all(log["removed"] is False for log in logs)
        first_pass = block["hash"] == orphans[0] or int(block["number"], 16) <= len(recording.blocks)
        tx_hashes = {log["transactionHash"] for log in logs}
        assert tx_hashes <= real_tx_hashes if first_pass else not tx_hashes & real_tx_hashes
        passes[first_pass] += 1
    assert passes[True] == len(recording.blocks) + 1 and passes[False] > 1


@pytest_twisted.ensureDeferred
async def test_an_orphans_logs_are_served_by_its_hash_after_the_reorg(serve):
    name = "polygon_13522175-13522230"  # its orphan 13522194 met first, then its sibling
    recording, recorded = load_recording(name), packaged_logs("polygon")
    node = ReplayNode(Clock(), name)
    rpc = await serve(node)
    while not node.reorgs:
        node.mine()
    (orphan,), (sibling,) = node.reorgs[0].removed, node.reorgs[0].added
    height = node.head.height
    orphan_block = await rpc.call("eth_getBlockByHash", orphan, True)
    sibling_block = await rpc.call("eth_getBlockByNumber", hex(height), True)
    assert sibling_block["hash"] == sibling and orphan_block["number"] == hex(height)
    orphan_logs = await rpc.call("eth_getLogs", {"blockHash": orphan})
    assert orphan_logs == [as_served_in(log, orphan_block) for log in recorded[recording.orphans[0]["hash"]]]
    sibling_logs = await rpc.call("eth_getLogs", {"blockHash": sibling})
    original_sibling = recorded_block_of(sibling_block, recording)
    assert sibling_logs == [as_served_in(log, sibling_block) for log in recorded[original_sibling["hash"]]]
    assert orphan_logs and sibling_logs and orphan_logs != sibling_logs
    # by number, only the canonical chain
    assert await rpc.call("eth_getLogs", {"fromBlock": hex(height), "toBlock": hex(height)}) == sibling_logs


@pytest_twisted.ensureDeferred
async def test_recording_mode_serves_the_recorded_logs_verbatim(serve):
    name = "polygon_13522239-13522298"
    recording, recorded = load_recording(name), packaged_logs("polygon")
    node = ReplayNode.recording(Clock(), name)
    rpc = await serve(node)
    while node.mine() is not None:
        pass
    for block in recording.blocks[:5] + recording.blocks[-2:]:
        assert await rpc.call("eth_getLogs", {"blockHash": block["hash"]}) == recorded[block["hash"]]
    side, side_child = recording.orphans  # 13522239' and 13522240': the branch the head flip-flopped to
    assert await rpc.call("eth_getLogs", {"blockHash": side["hash"]}) == recorded[side["hash"]]
    assert side_child["hash"] not in recorded and side_child["transactions"]
    error = await rpc.failure("eth_getLogs", {"blockHash": side_child["hash"]})  # never recorded
    assert error == {"code": 4444, "message": "pruned history unavailable"}


@pytest_twisted.ensureDeferred
async def test_logs_nobody_recorded_are_not_made_up(serve):
    node = ReplayNode(Clock(), ["mainnet_11880804-11880810", "rinkeby_4941854-4941873"])
    rpc = await serve(node)
    for _ in range(9):
        node.mine()
    # mainnet 11880804-11880809 recorded; 11880810 has no transactions, so no logs
    assert len(await rpc.call("eth_getLogs", {"fromBlock": "0x1", "toBlock": "0x7"})) == 1831
    assert (await rpc.call("eth_getBlockByNumber", "0x7", False))["transactions"] == []
    assert await rpc.call("eth_getLogs", {"fromBlock": "0x7", "toBlock": "0x7"}) == []
    # rinkeby 4941854-4941873: no logs recorded
    eighth = await rpc.call("eth_getBlockByNumber", "0x8", False)
    assert eighth["transactions"]
    for criteria in ({"blockHash": eighth["hash"]}, {"fromBlock": "0x1", "toBlock": "latest"}, {}):
        assert (await rpc.failure("eth_getLogs", criteria))["code"] == 4444


def geth_matches(log, addresses, topics):
    """The reference: geth's filterLogs, written out plainly."""
    if addresses and log["address"].lower() not in [a.lower() for a in addresses]:
        return False
    if len(topics) > len(log["topics"]):
        return False
    for wanted, topic in zip(topics, log["topics"]):
        if wanted is None or wanted == [] or (isinstance(wanted, list) and None in wanted):
            continue
        if topic.lower() not in [w.lower() for w in ([wanted] if isinstance(wanted, str) else wanted)]:
            return False
    return True


@pytest_twisted.ensureDeferred
async def test_log_ranges_with_address_and_topic_filters(serve):
    name = "rinkeby_4947153-4947173"
    node = ReplayNode(Clock(), name, start_height=10)
    rpc = await serve(node)
    for _ in range(30):
        node.mine()
    head = node.head.height
    every = []
    for h in range(10, head + 1):
        every += await rpc.call("eth_getLogs", {"blockHash": (await rpc.call("eth_getBlockByNumber", hex(h), False))["hash"]})
    assert await rpc.call("eth_getLogs", {"fromBlock": "earliest", "toBlock": "latest"}) == every
    assert await rpc.call("eth_getLogs", {"fromBlock": hex(10)}) == every
    assert await rpc.call("eth_getLogs", {}) == [log for log in every if log["blockNumber"] == hex(head)]
    middle = await rpc.call("eth_getLogs", {"fromBlock": hex(14), "toBlock": hex(20)})
    assert middle == [log for log in every if 14 <= int(log["blockNumber"], 16) <= 20] and middle

    addresses = [a for a, _ in collections.Counter(log["address"] for log in every).most_common(2)]
    # an event's signature fixes its topic count: take the commonest 3-topic and 2-topic events
    by_count = {}
    for signature, n in collections.Counter((log["topics"][0], len(log["topics"])) for log in every
                                            if log["topics"]).most_common():
        by_count.setdefault(signature[1], signature[0])
    t3, t2 = by_count[3], by_count[2]
    block_hash = every[len(every) // 2]["blockHash"]
    filters = {
        "one address": {"address": addresses[0]},
        "in capitals": {"address": addresses[0].upper().replace("0X", "0x")},
        "two addresses": {"address": addresses},
        "no addresses": {"address": []},
        "one topic": {"topics": [t3]},
        "alternatives": {"topics": [[t3, t2]]},
        "alternatives, 2 topics": {"topics": [[t3, t2], None]},
        "alternatives, 3 topics": {"topics": [[t3, t2], None, None]},
        "alternatives, 4 topics": {"topics": [[t3, t2], None, None, None]},
        "null among alternatives": {"topics": [[t3, None]]},
        "any first topic": {"topics": [None]},
        "any 3 topics": {"topics": [None, None, None]},
        "empty alternatives": {"topics": [[]]},
        "no topics": {"topics": []},
        "addresses and topics": {"address": addresses, "topics": [[t3, t2], None]},
    }
    count = {}
    for what, f in filters.items():
        address = f.get("address")
        want = [log for log in every
                if geth_matches(log, [address] if isinstance(address, str) else address, f.get("topics", []))]
        assert await rpc.call("eth_getLogs", dict(f, fromBlock=hex(10), toBlock="latest")) == want, what
        assert await rpc.call("eth_getLogs", dict(f, blockHash=block_hash)) == \
            [log for log in want if log["blockHash"] == block_hash], what
        count[what] = len(want)
    # trailing nulls count: a filter of k positions wants at least k topics
    assert count["alternatives"] == count["alternatives, 2 topics"] > count["alternatives, 3 topics"] \
        == count["one topic"] > count["alternatives, 4 topics"] == 0
    assert len(every) >= count["any first topic"] > count["any 3 topics"] > 0
    assert count["null among alternatives"] == count["any first topic"]
    assert count["no addresses"] == count["empty alternatives"] == count["no topics"] == len(every)
    assert count["one address"] == count["in capitals"] < count["two addresses"] < len(every)


@pytest_twisted.ensureDeferred
async def test_bad_log_filters_are_refused(serve, monkeypatch):
    node = ReplayNode(Clock(), "rinkeby_4947153-4947173")
    rpc = await serve(node)
    for _ in range(5):
        node.mine()
    head = node.head
    topic = "0x" + "ab" * 32
    bad = [
        [],
        [{}, {}],
        ["latest"],
        [None],
        [{"blockHash": head.hash, "fromBlock": "0x1"}],
        [{"blockHash": head.hash, "toBlock": "latest"}],
        [{"blockHash": "0x1234"}],
        [{"blockHash": 7}],
        [{"fromBlock": "banana"}],
        [{"fromBlock": 1}],
        [{"fromBlock": "pending"}],
        [{"toBlock": "pending"}],
        [{"fromBlock": "0x5", "toBlock": "0x2"}],
        [{"fromBlock": "0x1", "toBlock": hex(head.height + 1)}],
        [{"address": "0x1234"}],
        [{"address": 5}],
        [{"address": ["0x" + "00" * 20, 5]}],
        [{"address": {"a": 1}}],
        [{"topics": topic}],
        [{"topics": [topic] * 5}],
        [{"topics": ["0x12"]}],
        [{"topics": [5]}],
        [{"topics": [[topic, 5]]}],
        [{"topics": [{"a": topic}]}],
    ]
    for params in bad:
        error = await rpc.failure("eth_getLogs", *params)
        assert error["code"] == -32602 and error["message"], params
    assert await rpc.failure("eth_getLogs", {"blockHash": "0x" + "cd" * 32}) == {"code": -32000, "message": "unknown block"}

    from explorerd.replay import resource

    monkeypatch.setattr(resource, "MAX_LOGS", 10)
    assert await rpc.failure("eth_getLogs", {"fromBlock": "earliest"}) == {
        "code": -32005, "message": "query returned more than 10 results"}
    assert await rpc.call("eth_getLogs", {"fromBlock": "earliest", "topics": [topic]}) == []  # matches count


@pytest_twisted.ensureDeferred
async def test_block_receipts_are_not_served_since_none_were_recorded(serve):
    node = ReplayNode(Clock())
    rpc = await serve(node)
    node.mine()
    for block in ("latest", "0x1", node.head.hash, {"blockHash": node.head.hash}):
        error = await rpc.failure("eth_getBlockReceipts", block)
        assert error["code"] == -32601, block


# ------------------------------------------------------------------ faults


@pytest_twisted.ensureDeferred
async def test_fault_injection(serve):
    from twisted.internet import reactor

    clock = Clock()
    node = ReplayNode(clock)
    rpc = await serve(node)
    faults = rpc.served.faults

    faults.inject("http-500")
    resp, _ = await rpc.post(b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}')
    assert resp.code == 500
    faults.inject("rpc-error")
    with pytest.raises(RpcFailure) as e:
        await rpc.call("eth_blockNumber")
    assert e.value.code == -32000
    faults.inject("disconnect")
    with pytest.raises(Exception):
        await rpc.call("eth_blockNumber")

    faults.inject("delay", delay=30)
    arrived = faults.nextRequest()
    d = ensureDeferred(rpc.call("eth_blockNumber"))
    assert await arrived == b"POST"
    await deferLater(reactor, 0)  # let the handler return NOT_DONE_YET
    assert faults.delayedRequests == 1 and not d.called
    clock.advance(29)
    assert not d.called
    clock.advance(1)
    assert await d == "0x1"  # the answer as of when the request arrived
    assert await rpc.call("eth_blockNumber") == hex(node.head.height)


# ------------------------------------------------------------------ as a service


@pytest_twisted.ensureDeferred
async def test_as_a_service_it_names_its_url_once_bound_and_stops_whole(no_leaks):
    from twisted.internet import reactor
    from twisted.internet.error import ConnectionRefusedError

    clock = Clock()
    node = ReplayNode(clock, block_time=2.0)
    svc = node.asService(reactor)
    assert svc.url is None
    svc.privilegedStartService()
    assert re.match(r"http://127\.0\.0\.1:\d+/\Z", svc.url)
    assert node.head is None  # production begins with startService
    svc.startService()
    assert node.running

    pool = HTTPConnectionPool(reactor, persistent=True)
    rpc = Rpc(HTTPClient(Agent(reactor, pool=pool)), svc.url)
    assert await rpc.call("eth_blockNumber") == "0x1"
    clock.advance(2.0)
    assert await rpc.call("eth_blockNumber") == "0x2"
    await pool.closeCachedConnections()

    await svc.stopService()
    assert not node.running and clock.getDelayedCalls() == []
    with pytest.raises(ConnectionRefusedError):
        await rpc.call("eth_blockNumber")


@pytest_twisted.ensureDeferred
async def test_a_service_that_cannot_bind_says_so_at_once(no_leaks):
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    with pytest.raises(ValueError):
        ReplayNode(Clock()).asService(reactor, "tcp:banana")
    holder = ReplayNode(Clock()).asService(reactor)
    holder.privilegedStartService()
    try:
        port = holder.url.rsplit(":", 1)[1].rstrip("/")
        svc = ReplayNode(Clock()).asService(reactor, f"tcp:{port}:interface=127.0.0.1")
        with pytest.raises(CannotListenError):
            svc.privilegedStartService()
        assert svc.url is None
    finally:
        await holder.stopService()


# ------------------------------------------------------------------ CLI and import hygiene


def test_cli_help_and_expected_reorgs():
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-m", "explorerd.replay", "--help"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--listen", "--block-time", "--recording", "--loop", "--no-loop"):
        assert flag in out.stdout
    out = subprocess.run(
        [sys.executable, "-c",
         "import sys, explorerd.replay.__main__ as r; r.main(['--recording', 'polygon_13522175-13522230',"
         " '--expected-reorgs']); print('twisted.internet.reactor' in sys.modules)"],
        env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text, reactor_imported = out.stdout.rsplit("\n", 2)[0], out.stdout.split()[-1]
    assert reactor_imported == "False"
    (reorg,) = json.loads(text)
    assert reorg["depth"] == 1 and reorg["ancestor"][0] == 13522193
