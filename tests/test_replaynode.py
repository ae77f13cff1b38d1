"""The replay node over a real loopback HTTP port, driven by a task.Clock.

Why these tests: the live-tail trusts this node to look like a real one on the
wire and to replay the recorded reorgs faithfully; a poller written here (the
simplest correct one) must observe exactly what ``expected_reorgs`` promises.
"""

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

from explorerd import replaynode
from explorerd.replaynode import ReplayNode, expected_reorgs, head_sequence, load_recording

HASH = re.compile(r"0x[0-9a-f]{64}\Z")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RpcFailure(Exception):
    def __init__(self, error):
        super().__init__(error)
        self.code = error["code"]


class Rpc:
    """A minimal JSON-RPC client over treq (what the live-tail does, minus policy)."""

    def __init__(self, http, url):
        self.http = http
        self.url = url
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
        port = await node.listen(reactor, "tcp:0:interface=127.0.0.1")
        started.append((node, port))
        return Rpc(http, f"http://127.0.0.1:{port.getHost().port}/")

    yield start

    await pool.closeCachedConnections()
    for node, port in started:
        node.stop()
        await node.when_idle().addTimeout(5, reactor)
        await port.stopListening()
        if isinstance(node._clock, Clock):
            assert node._clock.getDelayedCalls() == []
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
    assert (await rpc.call("web3_clientVersion")).startswith("explorerd-replaynode/")

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
    template = load_recording(replaynode.DEFAULT_RECORDINGS[0]).blocks[0]
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
    assert node.events >= 360

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


def test_expected_reorgs_match_the_recorded_table():
    """The reorg table of the data README, as a live-tail must report it."""
    (p,) = expected_reorgs("polygon_13522175-13522230")
    assert (p.depth, p.ancestor.height, p.removed, p.added) == (
        1, 13522193,
        ("0x6f01a5163724e4bfbbcac469a9a2aafd16bc1a50f15c346b1ab1347561fb7c4d",),
        ("0xe5a6598d287904b84988b7ae0bc6566b79abebf46e2abc90a5579827fa0af3ce",),
    )
    flip, flop = expected_reorgs("polygon_13522239-13522298")
    assert (flip.depth, flip.ancestor, flip.removed) == (
        1, None, ("0xc73a1047034dd7b03cd01950e4bff4621b79321e8120b623744cf8cfc93f3efd",))
    assert (flop.depth, flop.ancestor, flop.new_head.height) == (2, None, 13522240)
    assert flop.removed == ("0x2d878239f4b2dff2bb9776a87d5dcbcf8a99bd6a1f8e2897abd20e86da899f35",
                            "0x8add914454ed7ee33c9a533a545555c376f37f3fdffb56f9daf0e848a2ff268a")
    r = expected_reorgs("rinkeby_4941854-4941873") + expected_reorgs("rinkeby_4947153-4947173")
    assert [(x.depth, x.ancestor.height, x.removed[0][:10], x.added[0][:10]) for x in r] == [
        (1, 4941862, "0x9f201190", "0xfba53dbd"),
        (1, 4941867, "0xd51ecada", "0xa2ffcc25"),
        (1, 4947160, "0x94128430", "0x9e7044a4"),
    ]
    assert expected_reorgs("mainnet_11880804-11880810") == []
    # the module docstring documents the same values
    for x in expected_reorgs("polygon_13522175-13522230") + r:
        assert x.ancestor.hash in replaynode.__doc__ and x.removed[0] in replaynode.__doc__


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


# ------------------------------------------------------------------ faults


@pytest_twisted.ensureDeferred
async def test_fault_injection(serve):
    from twisted.internet import reactor

    clock = Clock()
    node = ReplayNode(clock)
    rpc = await serve(node)

    node.inject_fault("http-500")
    resp, _ = await rpc.post(b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}')
    assert resp.code == 500
    node.inject_fault("rpc-error")
    with pytest.raises(RpcFailure) as e:
        await rpc.call("eth_blockNumber")
    assert e.value.code == -32000
    node.inject_fault("disconnect")
    with pytest.raises(Exception):
        await rpc.call("eth_blockNumber")

    node.inject_fault("delay", delay=30)
    arrived = node.next_request()
    d = ensureDeferred(rpc.call("eth_blockNumber"))
    assert await arrived == b"POST"
    await deferLater(reactor, 0)  # let the handler return NOT_DONE_YET
    assert node.delayed_requests == 1 and not d.called
    clock.advance(29)
    assert not d.called
    clock.advance(1)
    assert await d == "0x1"  # the answer as of when the request arrived
    assert await rpc.call("eth_blockNumber") == hex(node.head.height)


# ------------------------------------------------------------------ CLI and import hygiene


def test_cli_help_and_expected_reorgs():
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-m", "explorerd.replaynode", "--help"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--listen", "--block-time", "--recording", "--loop", "--no-loop"):
        assert flag in out.stdout
    out = subprocess.run(
        [sys.executable, "-c",
         "import sys, explorerd.replaynode as r; r.main(['--recording', 'polygon_13522175-13522230',"
         " '--expected-reorgs']); print('twisted.internet.reactor' in sys.modules)"],
        env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text, reactor_imported = out.stdout.rsplit("\n", 2)[0], out.stdout.split()[-1]
    assert reactor_imported == "False"
    (reorg,) = json.loads(text)
    assert reorg["depth"] == 1 and reorg["ancestor"][0] == 13522193
