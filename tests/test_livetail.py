"""
The live-tail, three ways:

1. against a real anvil (``--no-mining``; blocks, transactions and reorgs
   made with evm_mine, anvil_mine, eth_sendTransaction and anvil_reorg),
   feeding a real daemon's hub, watched by a real WebSocket client;
2. the same through L{tests.faultproxy.FaultProxy}, which drops, delays,
   truncates and garbles answers at random (seeded): after the run the
   client's chain, reorgs applied, must be anvil's canonical chain;
3. against a scripted fake node (a small twisted.web JSON-RPC server) for
   the corner cases: null blocks, lagging backends, flip-flops, deep reorgs,
   restarts, health, invalid blocks, backoff and shutdown.

Polls are driven by calling C{tail.poll()} (or by advancing the tail's
Clock); waits are Deferreds, never sleeps.  C{no_leaks} fails a test that
leaves a timer or a socket behind.
"""

import hashlib
import json
import os
import random
from collections import Counter

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from explorerd import events
from explorerd.history import History
from explorerd.interfaces import IBlockSink
from explorerd.jsonrpc import JSONRPCClient
from explorerd.livetail import LiveTail, redact
from explorerd.tailstate import Position, TailState
from tests.anvil import DEV_ACCOUNTS, Anvil
from tests.clients import connect
from tests.conftest import eventually
from tests.faultproxy import FAULTS, FaultProxy, _QuietSite
from tests.serving import TrackingFactory

T0 = 1_700_000_000  # timestamp of the fake node's genesis
ZERO = "0x" + "00" * 32


def _reactor():
    from twisted.internet import reactor

    return reactor


# Fixtures --------------------------------------------------------------------


class Env:
    """Makes nodes, clients and tails for one test; tears them down in order."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.tails = []
        self.rpcs = []
        self.nodes = []
        self.proxies = []
        self.anvils = []

    async def anvil(self):
        node = await Anvil(self.reactor, no_mining=True).start()
        self.anvils.append(node)
        return node

    async def proxy(self, upstream, **kw):
        proxy = await FaultProxy(self.reactor, upstream, **kw).start()
        self.proxies.append(proxy)
        return proxy

    async def fake_node(self):
        node = FakeNode(self.reactor)
        await node.up()
        self.nodes.append(node)
        return node

    def rpc(self, url, timeout=5.0):
        client = JSONRPCClient(self.reactor, url, timeout=timeout)
        self.rpcs.append(client)
        return client

    def tail(self, rpc, hub, clock=None, **kw):
        kw.setdefault("registry", CollectorRegistry())
        kw.setdefault("rng", random.Random(1))
        tail = LiveTail(Clock() if clock is None else clock, rpc, hub, **kw)
        self.tails.append(tail)
        return tail

    async def close(self):
        for tail in self.tails:
            await tail.stopService()
        for rpc in self.rpcs:
            await rpc.close()
        for proxy in self.proxies:
            await proxy.stop()
        for node in self.nodes:
            await node.stop()
        for node in self.anvils:
            await node.stop()


@pytest_twisted.async_yield_fixture
async def env(no_leaks):
    e = Env(_reactor())
    yield e
    await e.close()


@pytest.fixture
def logged():
    """Every log event emitted during the test."""
    seen = []
    observer = seen.append
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def messages_at(logged, level):
    return [formatEvent(e) for e in logged if e.get("log_level") == level]


def sample(tail, name, **labels):
    return tail.metrics.registry.get_sample_value(name, labels) or 0


# A scripted fake node --------------------------------------------------------


def _hash(*parts):
    return "0x" + hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def make_block(height, parent, branch="a", ntx=1):
    block_hash = _hash("block", branch, height, parent)
    txs = [
        {
            "hash": _hash("tx", block_hash, i),
            "from": "0x" + "11" * 20,
            "to": "0x" + "22" * 20,
            "value": hex(10**18 * height + i),
            "nonce": hex(height),
            "gas": hex(21000),
            "gasPrice": hex(10**9),
            "input": "0x",
            "transactionIndex": hex(i),
            "blockHash": block_hash,
            "blockNumber": hex(height),
        }
        for i in range(ntx)
    ]
    return {
        "number": hex(height),
        "hash": block_hash,
        "parentHash": parent,
        "timestamp": hex(T0 + 12 * height),
        "miner": "0x" + "33" * 20,
        "gasUsed": hex(21000 * ntx),
        "gasLimit": hex(30_000_000),
        "transactions": txs,
    }


def make_receipts(block):
    """The receipts of a fake block: every transaction succeeded; the i-th logged i % 3 events."""
    receipts, log_index = [], 0
    for i, tx in enumerate(block["transactions"]):
        logs = []
        for _ in range(i % 3):  # 0, 1, 2, 0, ... logs
            logs.append({
                "address": "0x" + "44" * 20,
                "topics": [_hash("topic", tx["hash"], log_index)],
                "data": "0x" + f"{log_index:064x}",
                "blockHash": block["hash"],
                "blockNumber": block["number"],
                "transactionHash": tx["hash"],
                "transactionIndex": hex(i),
                "logIndex": hex(log_index),
                "removed": False,
            })
            log_index += 1
        receipts.append({
            "transactionHash": tx["hash"],
            "transactionIndex": hex(i),
            "blockHash": block["hash"],
            "blockNumber": block["number"],
            "from": tx["from"],
            "to": tx["to"],
            "status": "0x1",
            "gasUsed": hex(21000 + i),
            "cumulativeGasUsed": hex(21000 * (i + 1)),
            "effectiveGasPrice": hex(2 * 10**9),
            "contractAddress": None,
            "logs": logs,
        })
    return receipts


# The methods whose requests C{FakeNode.receipt_faults} applies to (C{faults} to the others).
RECEIPT_METHODS = frozenset({"eth_getBlockReceipts", "eth_getLogs"})


class FakeNode(Resource):
    """
    A JSON-RPC node whose chain and misbehaviour the test scripts:
    C{blocks} (index = height), C{head} (reported head; None = the last
    block), C{missing} (heights answered with null), C{served} (height →
    block served instead of the canonical one) and C{faults} (what to do to
    the next requests: "500", "garbage", "rpc_error", "drop", "hang").
    C{eth_getBlockByHash} answers every block ever made, orphans included,
    unless its hash is in C{forgotten}; with C{by_hash=False} it is an
    unknown method, as on some providers.

    C{eth_getBlockReceipts(hash or number)} and C{eth_getLogs({"blockHash":
    hash})} (or C{{"fromBlock": n, "toBlock": n}}) answer from
    L{make_receipts} for every block it serves (null and -32000 for a block
    it does not know), unless: C{refuse} maps the method
    to an error code to answer instead (-32601: a node without it);
    C{pruned} holds block hashes whose logs get 4444 "pruned history
    unavailable"; C{tamper} is a list of functions (or None: leave it),
    each applied to the next answer of either (for someone else's
    receipts); C{spoil} maps a height to such a function for every answer
    about the block there; C{receipt_faults} is C{faults} for the requests that call
    either (and C{faults} skips those requests).
    """

    isLeaf = True

    def __init__(self, reactor):
        super().__init__()
        self.reactor = reactor
        self.blocks = [make_block(0, ZERO, ntx=0)]
        self.head = None
        self.known = {self.blocks[0]["hash"]: self.blocks[0]}
        self.missing = set()
        self.served = {}
        self.faults = []
        self.known = {}  # every block ever made, by hash
        self.forgotten = set()
        self.by_hash = True
        self.refuse = {}  # method -> JSON-RPC error code
        self.pruned = set()  # block hashes whose logs are "pruned"
        self.tamper = []  # functions applied to the next receipts/logs answers
        self.spoil = {}  # height -> function applied to every receipts/logs answer for that block
        self.receipt_faults = []
        self.methods = Counter()  # answered calls, by method
        self.requests = 0  # HTTP requests, answered or not
        self.hanging = []
        self.port = None
        self.portNumber = 0
        self.factory = TrackingFactory(_QuietSite(self, timeout=None))

    # The chain.

    def grow(self, n, branch="a", ntx=1):
        for _ in range(n):
            parent = self.blocks[-1]
            block = make_block(len(self.blocks), parent["hash"], branch, ntx)
            self.blocks.append(block)
            self.known[block["hash"]] = block

    def fork(self, height, branch, ntx=1):
        """Replace every block from C{height} up with blocks of C{branch}."""
        top = len(self.blocks)
        del self.blocks[height:]
        self.grow(top - height, branch, ntx)

    def hash(self, height):
        return self.blocks[height]["hash"]

    def served_by_hash(self, block_hash):
        """A block this node has served or made (canonical, orphan or a scripted stand-in), or None."""
        if block_hash in self.forgotten:
            return None
        block = self.known.get(block_hash)
        if block is None:
            block = next((b for b in self.served.values() if isinstance(b, dict) and b.get("hash") == block_hash),
                         None)
        return block

    def served_by_id(self, block_id):
        """What C{eth_getBlockByNumber} serves at a height (a hex number), or a block by its hash."""
        if len(block_id) == 66:
            return self.served_by_hash(block_id)
        n = int(block_id, 16)
        if n > self.reported or n in self.missing or n >= len(self.blocks):
            return None
        block = self.served.get(n, self.blocks[n])
        return block if isinstance(block, dict) else None

    @property
    def reported(self):
        return len(self.blocks) - 1 if self.head is None else self.head

    # Serving.

    async def up(self):
        self.port = self.reactor.listenTCP(self.portNumber, self.factory, interface="127.0.0.1")
        self.portNumber = self.port.getHost().port
        self.url = f"http://127.0.0.1:{self.portNumber}"

    async def down(self):
        """Refuse connections (and cut the open ones) until up() again."""
        port, self.port = self.port, None
        await port.stopListening()
        self.factory.abortAll()
        await self.factory.whenIdle()

    async def stop(self):
        if self.port is not None:
            await self.down()

    def render_POST(self, request):
        self.requests += 1
        body = json.loads(request.content.read())
        methods = {item.get("method") for item in (body if isinstance(body, list) else [body])}
        faults = self.receipt_faults if methods & RECEIPT_METHODS else self.faults
        if faults:
            fault = faults.pop(0)
            if fault == "ok":
                fault = None
            elif fault == "500":
                request.setResponseCode(500)
                return b"internal error"
            if fault == "garbage":
                return b"<html>not json"
            if fault == "drop":
                request.channel.transport.abortConnection()
                return NOT_DONE_YET
            if fault == "hang":
                self.hanging.append(request)
                return NOT_DONE_YET
            if fault == "rpc_error":
                # A batch gets one error object for the whole of it.
                return json.dumps({"jsonrpc": "2.0", "id": body["id"] if isinstance(body, dict) else None,
                                   "error": {"code": -32000, "message": "header not found"}}).encode()
            if fault is not None:
                raise AssertionError(f"unknown fault {fault}")
        if isinstance(body, list):
            answer = [self._answer(item) for item in body]
        else:
            answer = self._answer(body)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(answer).encode()

    def _answer(self, req):
        method, params = req["method"], req["params"]
        self.methods[method] += 1
        head = self.reported
        if method == "eth_blockNumber":
            result = hex(head)
        elif method == "eth_getBlockByNumber":
            tag, full = params
            n = head if tag == "latest" else int(tag, 16)
            if n > head or n in self.missing or n >= len(self.blocks):
                result = None
            else:
                result = json.loads(json.dumps(self.served.get(n, self.blocks[n])))
                if not full and isinstance(result.get("transactions"), list):
                    result["transactions"] = [
                        tx["hash"] if isinstance(tx, dict) else tx for tx in result["transactions"]]
        elif method == "eth_getBlockByHash" and self.by_hash:
            block_hash, full = params
            assert full is True
            block = self.known.get(block_hash)
            result = None if block is None or block_hash in self.forgotten else block
        elif method in self.refuse:
            return {"jsonrpc": "2.0", "id": req["id"],
                    "error": {"code": self.refuse[method], "message": f"{method} refused for the test"}}
        elif method == "eth_getBlockReceipts":
            (block_id,) = params
            block = self.served_by_id(block_id)
            try:
                result = None if block is None else make_receipts(block)
            except (KeyError, TypeError):  # a broken stand-in: the node's receipts are the real block's
                result = make_receipts(self.blocks[int(block_id, 16)])
            if self.tamper and (tamper := self.tamper.pop(0)) is not None:
                result = tamper(result)
            if block is not None and (spoil := self.spoil.get(int(block["number"], 16))) is not None:
                result = spoil(result)
        elif method == "eth_getLogs":
            (criteria,) = params
            if "blockHash" in criteria:
                block = self.served_by_hash(criteria["blockHash"])
            else:
                assert criteria["fromBlock"] == criteria["toBlock"], criteria
                block = self.served_by_id(criteria["fromBlock"])
            if block is None:
                return {"jsonrpc": "2.0", "id": req["id"], "error": {"code": -32000, "message": "unknown block"}}
            if block["hash"] in self.pruned:
                return {"jsonrpc": "2.0", "id": req["id"],
                        "error": {"code": 4444, "message": "pruned history unavailable"}}
            try:
                receipts = make_receipts(block)
            except (KeyError, TypeError):  # as for eth_getBlockReceipts
                receipts = make_receipts(self.blocks[int(block["number"], 16)])
            result = [log for receipt in receipts for log in receipt["logs"]]
            if self.tamper and (tamper := self.tamper.pop(0)) is not None:
                result = tamper(result)
            if block is not None and (spoil := self.spoil.get(int(block["number"], 16))) is not None:
                result = spoil(result)
        else:
            return {"jsonrpc": "2.0", "id": req["id"],
                    "error": {"code": -32601, "message": f"no method {method}"}}
        return {"jsonrpc": "2.0", "id": req["id"], "result": result}


@implementer(IBlockSink)
class RecordingHub:
    """An L{IBlockSink} that records what the tail handed it, and can refuse a height as the hub would."""

    def __init__(self):
        self.events = []
        self.refuse = set()
        self.remembered = []
        self.announced = []  # heads handed ahead of their blocks
        self.history = History(256)

    def publish(self, entry):
        if entry.height in self.refuse:
            raise events.InvalidBlock(f"refusing block {entry.height} for the test")
        self.events.append(("block", entry.height, entry.hash))
        self.events.append(("txs", entry.hash, [tx["hash"] for tx in entry.txs_data]))
        return 1

    def publishReorg(self, depth, ancestor, removed):
        self.events.append(("reorg", depth, dict(ancestor), [dict(r) for r in removed]))
        return 1

    def remember(self, entry):
        self.remembered.append((entry.height, entry.hash))

    def announce(self, header):
        self.announced.append((int(header["number"], 16), header["hash"]))

    def take(self):
        taken, self.events = self.events, []
        return taken


# The fields of the original wire format (receipt-era fields are tested in test_receipts.py).
THIN_BLOCK = ("height", "hash", "parent_hash", "tx_count", "timestamp", "miner", "gas_used")
THIN_TX = ("hash", "from_addr", "to_addr", "value_wei", "block_height", "block_hash", "tx_index")


def project(data, fields):
    return {k: data[k] for k in fields}


def blocks_of(recorded):
    return [(e[1], e[2]) for e in recorded if e[0] == "block"]


def chain_of(node, lo, hi):
    return [(h, node.hash(h)) for h in range(lo, hi + 1)]


def removed_of(node_blocks, lo, hi):
    return [{"height": h, "hash": node_blocks[h]["hash"]} for h in range(lo, hi + 1)]


def assert_block_with_txs(recorded, node):
    """Each block is followed by its transactions, all from the node's canonical chain."""
    for i, e in enumerate(recorded):
        if e[0] == "block":
            block = node.blocks[e[1]]
            assert e[2] == block["hash"]
            assert recorded[i + 1] == ("txs", block["hash"], [tx["hash"] for tx in block["transactions"]])


async def fake_setup(env, **kw):
    node = await env.fake_node()
    hub = RecordingHub()
    tail = env.tail(env.rpc(node.url), hub, **kw)
    return node, hub, tail


# Against anvil, with a real daemon and WebSocket client -----------------------


async def subscribed(url):
    client = await connect(url)
    answer = await client.request({"action": "subscribe", "channels": ["newBlocks", "newTxs"]})
    assert answer == {"type": "subscribed", "channels": ["newBlocks", "newTxs"]}
    return client


async def drain(client):
    """Everything the server sent before it answered this ping, in order."""
    client.send_json({"action": "ping"})
    out = []
    while True:
        message = await client.next()
        if message == {"type": "pong"}:
            return out
        out.append(message)


class ClientView:
    """A client's chain after applying the stream, checked message by message."""

    def __init__(self):
        self.chain = []  # [(height, hash)]
        self.txs = {}  # block hash -> [newTx data]
        self.tx_counts = {}
        self.reorgs = []

    def apply(self, messages):
        for m in messages:
            kind, d = m["type"], m["data"]
            if kind == "newBlock":
                if self.chain:
                    top_height, top_hash = self.chain[-1]
                    assert d["height"] == top_height + 1, f"gap or double: {d} after {self.chain[-1]}"
                    assert d["parent_hash"] == top_hash, f"unannounced reorg at {d}"
                self.chain.append((d["height"], d["hash"]))
                self.txs[d["hash"]] = []
                self.tx_counts[d["hash"]] = d["tx_count"]
            elif kind == "newTx":
                assert (d["block_height"], d["block_hash"]) == self.chain[-1]
                self.txs[d["block_hash"]].append(d)
            elif kind == "reorg":
                removed = [(r["height"], r["hash"]) for r in d["removed"]]
                assert d["depth"] == len(removed) > 0
                assert removed == self.chain[-len(removed):], "removed is not what the client had"
                del self.chain[-len(removed):]
                ancestor = (d["common_ancestor"]["height"], d["common_ancestor"]["hash"])
                if self.chain:
                    assert ancestor == self.chain[-1]
                else:
                    assert ancestor[0] == removed[0][0] - 1
                self.reorgs.append(d)
            else:
                raise AssertionError(f"unexpected message {m}")

    def check_txs(self):
        for block_hash, count in self.tx_counts.items():
            assert len(self.txs[block_hash]) == count


async def send_tx(ctl, value, frm=0, to=1):
    return await ctl.call("eth_sendTransaction", [
        {"from": DEV_ACCOUNTS[frm], "to": DEV_ACCOUNTS[to], "value": hex(value)}])


async def mine(ctl, n=1):
    if n == 1:
        await ctl.call("evm_mine")
    else:
        await ctl.call("anvil_mine", [hex(n)])


async def canonical(ctl, lo, hi):
    blocks = await ctl.getBlocksByNumber(list(range(lo, hi + 1)), True)
    return {int(b["number"], 16): b for b in blocks}


async def assert_view_is_canonical(view, ctl):
    head = await ctl.blockNumber()
    lo = view.chain[0][0]
    blocks = await canonical(ctl, lo, head)
    assert view.chain == [(h, blocks[h]["hash"]) for h in range(lo, head + 1)]
    for h, block in blocks.items():
        assert [t["hash"] for t in view.txs[block["hash"]]] == [t["hash"] for t in block["transactions"]]
    view.check_txs()


async def anvil_setup(start_daemon, env, **kw):
    node = await env.anvil()
    daemon = await start_daemon()
    client = await subscribed(daemon.url)
    ctl = env.rpc(node.url)
    tail = env.tail(env.rpc(node.url), daemon.hub, **kw)
    return ctl, client, tail


class Streamed:
    """What a client of a tail on anvil got: the first poll (blocks 1-2), then blocks 3-5."""

    def __init__(self, ctl, client, tail, first, messages, sent):
        self.ctl = ctl
        self.client = client
        self.tail = tail
        self.first = first
        self.messages = messages
        self.sent = sent  # transaction hash → (from, to, value)


@pytest_twisted.async_yield_fixture
async def streamed(start_daemon, env):
    ctl, client, tail = await anvil_setup(start_daemon, env)
    await mine(ctl, 2)
    assert await tail.poll()
    first = await drain(client)
    sent = {}
    for frm, to, value in [(0, 1, 1), (1, 0, 12345), (0, 1, 10**21 + 7)]:  # the last > 2**53
        sent[await send_tx(ctl, value, frm, to)] = (DEV_ACCOUNTS[frm], DEV_ACCOUNTS[to], value)
    await mine(ctl)  # 3: three transactions
    await mine(ctl)  # 4: none
    sent[await send_tx(ctl, 42)] = (DEV_ACCOUNTS[0], DEV_ACCOUNTS[1], 42)
    await mine(ctl)  # 5: one
    assert await tail.poll()
    messages = await drain(client)
    yield Streamed(ctl, client, tail, first, messages, sent)
    await client.close()


@pytest.mark.needs_node  # anvil from tests/node
@pytest_twisted.ensureDeferred
async def test_without_a_saved_position_the_tail_starts_with_the_heads_block(streamed):
    assert [(m["type"], m["data"]["height"]) for m in streamed.first] == [("newBlock", 2)]


@pytest.mark.needs_node  # anvil from tests/node
@pytest_twisted.ensureDeferred
async def test_blocks_and_transactions_arrive_in_order(streamed):
    assert [(m["type"], m["data"].get("height", m["data"].get("block_height"))) for m in streamed.messages] == [
        ("newBlock", 3), ("newTx", 3), ("newTx", 3), ("newTx", 3),
        ("newBlock", 4), ("newBlock", 5), ("newTx", 5)]


@pytest.mark.needs_node  # anvil from tests/node
@pytest_twisted.ensureDeferred
async def test_blocks_and_transactions_arrive_with_their_fields(streamed):
    sent = dict(streamed.sent)
    blocks = await canonical(streamed.ctl, 2, 5)
    for m in streamed.messages:
        d = m["data"]
        if m["type"] == "newBlock":
            b = blocks[d["height"]]
            assert project(d, THIN_BLOCK) == {
                "height": d["height"], "hash": b["hash"], "parent_hash": b["parentHash"],
                "tx_count": len(b["transactions"]), "timestamp": int(b["timestamp"], 16),
                "miner": b["miner"].lower(), "gas_used": int(b["gasUsed"], 16)}
        else:
            b = blocks[d["block_height"]]
            frm, to, value = sent.pop(d["hash"])
            position = [t["hash"] for t in b["transactions"]].index(d["hash"])
            assert project(d, THIN_TX) == {"hash": d["hash"], "from_addr": frm, "to_addr": to, "value_wei": str(value),
                         "block_height": d["block_height"], "block_hash": b["hash"],
                         "tx_index": position}
    assert sent == {}


@pytest.mark.needs_node  # anvil from tests/node
@pytest_twisted.ensureDeferred
async def test_what_the_client_holds_is_the_canonical_chain_and_is_counted(streamed):
    tail = streamed.tail
    view = ClientView()
    view.apply(streamed.first + streamed.messages)
    await assert_view_is_canonical(view, streamed.ctl)
    assert sample(tail, "explorer_tail_blocks_published_total") == 4
    assert sample(tail, "explorer_tail_transactions_published_total") == 4
    assert tail.health()["status"] == "ok"


@pytest.mark.parametrize("depth, then_mine", [(1, 0), (3, 2), (10, 0)],
                         ids=["depth1-same-height", "depth3-then-2-blocks", "depth10-same-height"])
@pytest.mark.needs_node  # anvil from tests/node
@pytest_twisted.ensureDeferred
async def test_anvil_reorg_gives_one_reorg_message_then_the_new_branch(start_daemon, env, depth, then_mine):
    ctl, client, tail = await anvil_setup(start_daemon, env)
    await mine(ctl)
    assert await tail.poll()
    for i in range(12):
        if i % 3 == 0:
            await send_tx(ctl, 1000 + i)
        await mine(ctl)
    assert await tail.poll()
    view = ClientView()
    view.apply(await drain(client))
    before = list(view.chain)
    head = before[-1][0]
    assert head == 13 == await ctl.blockNumber()

    # One transaction in the first replacement block, one in the last.
    await ctl.call("anvil_reorg", [depth, [
        [{"from": DEV_ACCOUNTS[1], "to": DEV_ACCOUNTS[0], "value": hex(777)}, 0],
        [{"from": DEV_ACCOUNTS[0], "to": DEV_ACCOUNTS[1], "value": hex(888)}, depth - 1]]])
    if then_mine:
        await mine(ctl, then_mine)
    else:
        assert await ctl.blockNumber() == head  # same height: only the hash check can see it
    assert await tail.poll()
    messages = await drain(client)

    assert [m["type"] for m in messages].count("reorg") == 1
    assert messages[0] == {"type": "reorg", "data": {
        "depth": depth,
        "common_ancestor": {"height": head - depth, "hash": before[-depth - 1][1]},
        "removed": [{"height": h, "hash": x} for h, x in before[-depth:]]}}
    new_heights = [m["data"]["height"] for m in messages if m["type"] == "newBlock"]
    assert new_heights == list(range(head - depth + 1, head + then_mine + 1))
    values = {(m["data"]["block_height"], m["data"]["value_wei"]) for m in messages if m["type"] == "newTx"}
    assert values == {(head - depth + 1, "777"), (head, "888")}
    view.apply(messages)
    await assert_view_is_canonical(view, ctl)
    assert sample(tail, "explorer_tail_reorgs_total") == 1
    assert sample(tail, "explorer_tail_reorg_depth_sum") == depth
    await client.close()


@pytest.mark.needs_node  # anvil from tests/node
@pytest_twisted.ensureDeferred
async def test_head_jump_of_50_blocks_arrives_complete_and_in_order(start_daemon, env):
    ctl, client, tail = await anvil_setup(start_daemon, env, batch_size=16)
    await mine(ctl)
    assert await tail.poll()
    view = ClientView()
    view.apply(await drain(client))
    await send_tx(ctl, 5)
    await send_tx(ctl, 6, 1, 0)
    await mine(ctl, 50)
    assert await tail.poll()
    messages = await drain(client)
    assert [m["data"]["height"] for m in messages if m["type"] == "newBlock"] == list(range(2, 52))
    view.apply(messages)
    await assert_view_is_canonical(view, ctl)
    assert len(view.txs[view.chain[1][1]]) == 2
    assert tail.health()["lag_blocks"] == 0
    # 16 blocks and their receipts per round trip, and nothing else: no call by hash.
    assert sample(tail, "explorer_tail_rpc_calls_total",
                  method="batch[eth_getBlockByNumber,eth_getBlockReceipts]") == 4 + 1
    assert sample(tail, "explorer_tail_rpc_calls_total", method="eth_getBlockReceipts") == 0
    assert sample(tail, "explorer_tail_rpc_calls_total", method="batch[eth_getBlockReceipts]") == 0
    await client.close()


# Through a faulty proxy -------------------------------------------------------

RATES = {"drop": 0.06, "error": 0.06, "delay": 0.02, "truncate": 0.04, "cut": 0.04, "garbage": 0.04}


@pytest.mark.needs_node  # anvil from tests/node
@pytest_twisted.ensureDeferred
async def test_faulty_node_still_converges_to_the_canonical_chain(start_daemon, env):
    node = await env.anvil()
    daemon = await start_daemon()
    client = await subscribed(daemon.url)
    ctl = env.rpc(node.url)
    proxy = await env.proxy(node.url, seed=20240601, rates=RATES, delay=0.5)
    tail = env.tail(env.rpc(proxy.url, timeout=0.25), daemon.hub, batch_size=7,
                    max_reorg_depth=16, poll_interval=0.1, max_backoff=1.0)
    rng = random.Random(99)
    await mine(ctl, 3)
    for _ in range(50):
        if await tail.poll():
            break
    else:
        pytest.fail("no poll got through the proxy")

    reorgs = 0
    for _step in range(60):
        head = await ctl.blockNumber()
        if rng.random() < 0.25 and head > 8:
            depth = rng.randint(1, 5)
            txs = [[{"from": DEV_ACCOUNTS[1], "to": DEV_ACCOUNTS[0], "value": hex(rng.randint(1, 10**6))},
                    rng.randrange(depth)] for _ in range(rng.randint(0, 2))]
            await ctl.call("anvil_reorg", [depth, txs])
            reorgs += 1
            if rng.random() < 0.5:
                await mine(ctl, rng.randint(1, 2))
        else:
            for _ in range(rng.randint(0, 2)):
                await send_tx(ctl, rng.randint(1, 10**20))
            await mine(ctl, rng.randint(1, 3))
        for _ in range(rng.randint(0, 3)):
            await tail.poll()

    proxy.rates = {}  # honest again: a good poll catches up in one go
    for _ in range(5):  # (a loaded machine may still time out at 0.25 s)
        if await tail.poll():
            break
    head = await ctl.getBlockByNumber("latest", False)
    assert tail.published == {"height": int(head["number"], 16), "hash": head["hash"]}
    view = ClientView()
    view.apply(await drain(client))
    await assert_view_is_canonical(view, ctl)
    assert view.chain[-1][0] >= 60
    # Reorgs that happened between two good polls are seen as one, or not at all.
    assert reorgs >= 8 and len(view.reorgs) >= 1
    assert all(proxy.counts[f] > 0 for f in FAULTS), proxy.counts
    errors = sum(s.value for m in tail.metrics.registry.collect()
                 if m.name == "explorer_tail_rpc_errors" for s in m.samples
                 if s.name.endswith("_total"))
    assert errors >= 10
    assert sample(tail, "explorer_tail_reorgs_total") == len(view.reorgs)
    assert tail.health()["status"] == "ok"
    await client.close()


# Against a scripted node -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_without_state_starts_at_the_head_then_follows(env):
    node, hub, tail = await fake_setup(env)
    node.grow(5)
    assert await tail.poll()
    recorded = hub.take()
    assert blocks_of(recorded) == chain_of(node, 5, 5)
    assert_block_with_txs(recorded, node)
    node.grow(3)
    assert await tail.poll()
    recorded = hub.take()
    assert blocks_of(recorded) == chain_of(node, 6, 8)
    assert_block_with_txs(recorded, node)
    assert tail.published == {"height": 8, "hash": node.hash(8)}
    health = tail.health()
    assert health["status"] == "ok" and health["head"] == 8 and health["lag_blocks"] == 0


@pytest_twisted.ensureDeferred
async def test_null_block_is_retried_next_poll_not_skipped(env):
    node, hub, tail = await fake_setup(env)
    node.grow(5)
    assert await tail.poll()
    hub.take()
    node.grow(3)
    node.missing = {7}  # the node reports 8 but has no 7 yet
    fetched = node.methods["eth_getBlockByNumber"]
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 6, 6)
    assert node.methods["eth_getBlockByNumber"] - fetched == 3  # one batch 6-8; the poll stops at 7
    assert await tail.poll()
    assert hub.take() == []
    node.missing.clear()
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 7, 8)


@pytest_twisted.ensureDeferred
async def test_head_going_back_with_the_same_hashes_publishes_nothing_twice(env):
    node, hub, tail = await fake_setup(env)
    node.grow(3)
    assert await tail.poll()
    node.grow(7)
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 3, 10)
    for lagging in (8, 9, 5, 10):  # a load balancer answering from lagging backends
        node.head = lagging
        assert await tail.poll()
        assert hub.take() == []
    node.head = 3  # below everything we remember: nothing to compare, wait
    assert await tail.poll()
    assert hub.take() == []
    node.head = None
    node.grow(1)
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 11, 11)
    assert sample(tail, "explorer_tail_reorgs_total") == 0
    assert tail.health()["status"] == "ok"


@pytest_twisted.ensureDeferred
async def test_flip_flop_between_branches_is_reported_each_time(env):
    node, hub, tail = await fake_setup(env)
    node.grow(3)
    assert await tail.poll()
    node.grow(7)
    assert await tail.poll()
    hub.take()
    branch_a = list(node.blocks)
    node.fork(8, "b")
    branch_b = list(node.blocks)
    expected_reorgs = 0
    for old, new in [(branch_a, branch_b), (branch_b, branch_a), (branch_a, branch_b)]:
        node.blocks = list(new)
        assert await tail.poll()
        recorded = hub.take()
        expected_reorgs += 1
        assert recorded[0] == ("reorg", 3, {"height": 7, "hash": new[7]["hash"]}, removed_of(old, 8, 10))
        assert blocks_of(recorded) == [(h, new[h]["hash"]) for h in range(8, 11)]
        assert_block_with_txs(recorded[1:], node)
    assert sample(tail, "explorer_tail_reorgs_total") == expected_reorgs


@pytest_twisted.ensureDeferred
async def test_reorg_seen_when_the_head_moves_and_when_it_does_not(env):
    node, hub, tail = await fake_setup(env)
    node.grow(4)
    assert await tail.poll()
    node.grow(6)
    assert await tail.poll()
    old = list(node.blocks)
    hub.take()
    # Same height: the hash check finds it.
    node.fork(10, "b")
    assert await tail.poll()
    assert hub.take()[:2] == [("reorg", 1, {"height": 9, "hash": old[9]["hash"]}, removed_of(old, 10, 10)),
                              ("block", 10, node.hash(10))]
    # Height moves on: the parentHash check finds it.
    old = list(node.blocks)
    node.fork(8, "c")
    node.grow(2, "c")
    assert await tail.poll()
    recorded = hub.take()
    assert recorded[0] == ("reorg", 3, {"height": 7, "hash": old[7]["hash"]}, removed_of(old, 8, 10))
    assert blocks_of(recorded) == chain_of(node, 8, 12)


@pytest_twisted.ensureDeferred
async def test_reorg_to_a_shorter_chain(env):
    node, hub, tail = await fake_setup(env)
    node.grow(3)
    assert await tail.poll()
    node.grow(7)
    assert await tail.poll()
    old = list(node.blocks)
    hub.take()
    node.fork(8, "b")
    del node.blocks[9:]  # the new branch is only at 8 so far
    assert await tail.poll()
    recorded = hub.take()
    assert recorded[0] == ("reorg", 3, {"height": 7, "hash": old[7]["hash"]}, removed_of(old, 8, 10))
    assert blocks_of(recorded) == chain_of(node, 8, 8)
    node.grow(3, "b")
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 9, 11)


class DeepReorgs:
    """A tail with max_reorg_depth 3 that published 2-10, and reorgs of growing depth."""

    @classmethod
    async def start(cls, env):
        self = cls()
        self.node, self.hub, self.tail = await fake_setup(env, max_reorg_depth=3)
        node, tail, hub = self.node, self.tail, self.hub
        node.grow(2)
        assert await tail.poll()
        node.grow(8)
        assert await tail.poll()
        hub.take()
        return self

    async def exactlyMaxReorgDepth(self):
        """Forks at 8: three blocks replaced.  Returns what the hub got and the old chain."""
        node, tail = self.node, self.tail
        old = list(node.blocks)
        node.fork(8, "b")
        assert await tail.poll()
        return self.hub.take(), old

    async def deeper(self):
        """
        We remember 7..10 (max_reorg_depth + 1 blocks), the fork is at 5; then
        block 11 on the new branch.  Returns what the hub got for each, and the old chain.
        """
        node, tail = self.node, self.tail
        old = list(node.blocks)
        node.fork(5, "c")
        assert await tail.poll()
        recorded = self.hub.take()
        node.grow(1, "c")
        assert await tail.poll()
        return recorded, self.hub.take(), old

    async def oneMoreThanMaxReorgDepth(self):
        """
        Forks at 8 (four blocks), with the ancestor's hash still known as the
        parent of the lowest block we remember.
        """
        node, tail = self.node, self.tail
        old = list(node.blocks)
        node.fork(8, "d")
        assert await tail.poll()
        return self.hub.take(), old


@pytest_twisted.ensureDeferred
async def test_a_reorg_of_exactly_max_reorg_depth_is_an_ordinary_one(env, logged):
    story = await DeepReorgs.start(env)
    recorded, old = await story.exactlyMaxReorgDepth()
    assert recorded[0] == ("reorg", 3, {"height": 7, "hash": old[7]["hash"]}, removed_of(old, 8, 10))
    assert not messages_at(logged, LogLevel.error)


@pytest_twisted.ensureDeferred
async def test_a_reorg_deeper_than_max_reorg_depth_replaces_what_we_remember_and_logs_an_error(env, logged):
    story = await DeepReorgs.start(env)
    await story.exactlyMaxReorgDepth()
    recorded, after, old = await story.deeper()
    node = story.node
    assert recorded[0] == ("reorg", 4, {"height": 6, "hash": node.hash(6)}, removed_of(old, 7, 10))
    assert blocks_of(recorded) == chain_of(node, 7, 10)
    assert_block_with_txs(recorded[1:], node)
    errors = messages_at(logged, LogLevel.error)
    assert len(errors) == 1 and "deeper than max_reorg_depth 3" in errors[0]
    assert blocks_of(after) == chain_of(node, 11, 11)
    assert story.tail.health()["status"] == "ok"


@pytest_twisted.ensureDeferred
async def test_one_more_than_max_reorg_depth_with_the_ancestor_known_is_exact(env, logged):
    story = await DeepReorgs.start(env)
    await story.exactlyMaxReorgDepth()
    await story.deeper()
    recorded, old = await story.oneMoreThanMaxReorgDepth()
    assert recorded[0] == ("reorg", 4, {"height": 7, "hash": old[7]["hash"]}, removed_of(old, 8, 11))
    assert blocks_of(recorded) == chain_of(story.node, 8, 11)
    assert len(messages_at(logged, LogLevel.error)) == 1  # the deeper one's, no other


@pytest_twisted.ensureDeferred
async def test_resume_from_saved_position(env, tmp_path):
    path = tmp_path / "state" / "livetail.json"
    node, hub, tail = await fake_setup(env, state=TailState(path))
    node.grow(5)
    assert await tail.poll()
    node.grow(2)
    assert await tail.poll()
    await tail.stopService()
    saved = json.loads(path.read_text())
    assert (saved["height"], saved["hash"]) == (7, node.hash(7))
    assert [p["height"] for p in saved["chain"]] == [5, 6, 7]
    assert os.listdir(path.parent) == ["livetail.json"]  # no temporary files left

    node.grow(3)
    hub2 = RecordingHub()
    tail2 = env.tail(env.rpc(node.url), hub2, state=TailState(path))
    assert tail2.published == {"height": 7, "hash": node.hash(7)}
    assert await tail2.poll()
    recorded = hub2.take()
    assert blocks_of(recorded) == chain_of(node, 8, 10)
    assert_block_with_txs(recorded, node)


@pytest_twisted.ensureDeferred
async def test_resume_from_a_position_that_is_no_longer_canonical(env, tmp_path):
    path = tmp_path / "livetail.json"
    node, hub, tail = await fake_setup(env, state=TailState(path))
    node.grow(3)
    assert await tail.poll()
    node.grow(4)
    assert await tail.poll()
    await tail.stopService()
    old = list(node.blocks)
    node.fork(6, "b")  # while we were down
    hub2 = RecordingHub()
    for head_moved in (False, True):
        if head_moved:
            node.grow(2, "b")
        tail2 = env.tail(env.rpc(node.url), hub2, state=TailState(path))
        assert await tail2.poll()
        recorded = hub2.take()
        if not head_moved:
            assert recorded[0] == ("reorg", 2, {"height": 5, "hash": old[5]["hash"]}, removed_of(old, 6, 7))
            assert blocks_of(recorded) == chain_of(node, 6, 7)
        else:
            assert blocks_of(recorded) == chain_of(node, 8, 9)
        await tail2.stopService()


@pytest_twisted.ensureDeferred
async def test_resume_too_far_behind_re_anchors_at_the_head_with_a_warning(env, tmp_path, logged):
    path = tmp_path / "livetail.json"
    node, hub, tail = await fake_setup(env, state=TailState(path))
    node.grow(7)
    assert await tail.poll()
    await tail.stopService()
    node.grow(30)
    hub2 = RecordingHub()
    tail2 = env.tail(env.rpc(node.url), hub2, state=TailState(path), max_catchup=10)
    assert await tail2.poll()
    assert blocks_of(hub2.take()) == chain_of(node, 37, 37)
    warnings = [m for m in messages_at(logged, LogLevel.warn) if "max_catchup 10" in m]
    assert len(warnings) == 1 and "skipping heights 8-36" in warnings[0]
    assert sample(tail2, "explorer_tail_blocks_skipped_total") == 29
    # Within max_catchup: every block.
    node.grow(10)
    assert await tail2.poll()
    assert blocks_of(hub2.take()) == chain_of(node, 38, 47)


class RememberingHub(RecordingHub):
    """Records what a restart gives back (C{remember}) in line with what it publishes."""

    def remember(self, entry):
        self.events.append(("remember", entry.height, entry.hash))


def remembered_of(recorded):
    return [(e[1], e[2]) for e in recorded if e[0] == "remember"]


async def restart_setup(env, path, node=None, **kw):
    """A tail that published blocks 2-12 of a fresh fake node, then stopped."""
    kw.setdefault("max_reorg_depth", 3)
    kw.setdefault("remember", 8)
    kw.setdefault("batch_size", 3)
    if node is None:
        node = await env.fake_node()
    tail = env.tail(env.rpc(node.url), RecordingHub(), state=TailState(path), **kw)
    node.grow(2)
    assert await tail.poll()
    node.grow(10)
    assert await tail.poll()
    await tail.stopService()
    return node, kw


@pytest_twisted.ensureDeferred
async def test_restart_gives_the_hub_back_its_history_by_hash_before_publishing(env, tmp_path, logged):
    path = tmp_path / "livetail.json"
    node, kw = await restart_setup(env, path)
    saved = json.loads(path.read_text())["chain"]
    assert [(p["height"], p["hash"]) for p in saved] == chain_of(node, 5, 12)  # remember=8

    node.grow(2)
    hub = RememberingHub()
    tail = env.tail(env.rpc(node.url), hub, state=TailState(path), **kw)
    restored = tail.whenRestored()
    assert not restored.called
    assert await tail.poll()
    recorded = hub.take()
    # Exactly the saved blocks, oldest first, before anything new is published.
    assert recorded[:8] == [("remember", h, x) for h, x in chain_of(node, 5, 12)]
    assert blocks_of(recorded) == chain_of(node, 13, 14)
    assert_block_with_txs(recorded[8:], node)
    assert restored.result == 8 and tail.whenRestored().result == 8
    assert sample(tail, "explorer_tail_rpc_calls_total", method="batch[eth_getBlockByHash]") == 3  # 3+3+2
    assert any("restored the history of 8 blocks (5-12)" in m for m in messages_at(logged, LogLevel.info))
    node.grow(1)
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 15, 15)  # restored once only
    assert node.methods["eth_getBlockByHash"] == 8


@pytest_twisted.ensureDeferred
async def test_restart_restores_blocks_orphaned_while_down_then_reports_the_reorg(env, tmp_path):
    path = tmp_path / "livetail.json"
    node, kw = await restart_setup(env, path)
    old = list(node.blocks)
    node.fork(10, "b")  # while we were down; the node still has the orphans by hash
    node.grow(1, "b")
    hub = RememberingHub()
    tail = env.tail(env.rpc(node.url), hub, state=TailState(path), **kw)
    when_restored = []
    tail.whenRestored().addCallback(lambda n: when_restored.append((n, list(hub.events))))
    assert await tail.poll()
    recorded = hub.take()
    # Released once the reorg was reported and the new branch published: resumes can be served.
    assert when_restored == [(8, recorded)]
    assert remembered_of(recorded) == [(h, old[h]["hash"]) for h in range(5, 13)]  # what clients saw
    reorg = recorded[8]
    assert reorg == ("reorg", 3, {"height": 9, "hash": old[9]["hash"]}, removed_of(old, 10, 12))
    assert blocks_of(recorded) == chain_of(node, 10, 13)


@pytest_twisted.ensureDeferred
async def test_restore_stops_at_a_block_the_node_forgot_and_skips_pruned_ones(env, tmp_path, logged):
    path = tmp_path / "livetail.json"
    node, kw = await restart_setup(env, path)
    old = list(node.blocks)
    node.fork(10, "b")
    # Pruned below, and the orphan at 11 forgotten (anvil forgets them all).
    node.forgotten = {old[5]["hash"], old[6]["hash"], old[11]["hash"]}
    hub = RememberingHub()
    tail = env.tail(env.rpc(node.url), hub, state=TailState(path), **kw)
    assert await tail.poll()
    recorded = hub.take()
    assert remembered_of(recorded) == [(h, old[h]["hash"]) for h in range(7, 11)]
    assert recorded[4] == ("reorg", 3, {"height": 9, "hash": old[9]["hash"]}, removed_of(old, 10, 12))
    assert blocks_of(recorded) == chain_of(node, 10, 12)
    warnings = messages_at(logged, LogLevel.warn)
    assert any("no longer has block 11" in m and "up to block 10 only" in m for m in warnings)
    assert any("none of blocks 5-6 any more" in m for m in warnings)
    assert await tail.whenRestored() == 4


@pytest_twisted.ensureDeferred
async def test_a_node_without_get_block_by_hash_restores_nothing_and_the_tail_goes_on(env, tmp_path, logged):
    path = tmp_path / "livetail.json"
    node, kw = await restart_setup(env, path)
    node.by_hash = False
    node.grow(1)
    hub = RememberingHub()
    tail = env.tail(env.rpc(node.url), hub, state=TailState(path), **kw)
    assert await tail.poll()
    recorded = hub.take()
    assert remembered_of(recorded) == []
    assert blocks_of(recorded) == chain_of(node, 13, 13)
    assert await tail.whenRestored() == 0
    assert any("cannot restore the history" in m and "rpc_error" in m for m in messages_at(logged, LogLevel.warn))


@pytest_twisted.ensureDeferred
async def test_restore_is_tried_again_after_the_node_was_unreachable(env, tmp_path):
    path = tmp_path / "livetail.json"
    node, kw = await restart_setup(env, path)
    node.grow(1)
    hub = RememberingHub()
    tail = env.tail(env.rpc(node.url), hub, state=TailState(path), **kw)
    restored = tail.whenRestored()
    node.faults = ["ok", "ok", "500"]  # the second batch of the restore fails
    assert not await tail.poll()
    assert remembered_of(hub.take()) == chain_of(node, 5, 7)
    assert not restored.called
    await node.down()
    assert not await tail.poll()
    assert hub.take() == [] and not restored.called
    await node.up()
    assert await tail.poll()
    recorded = hub.take()
    assert remembered_of(recorded) == chain_of(node, 8, 12)  # where it stopped
    assert blocks_of(recorded) == chain_of(node, 13, 13)
    assert restored.result == 8


@pytest_twisted.ensureDeferred
async def test_a_restore_that_keeps_failing_is_given_up_after_three_polls(env, tmp_path, logged):
    path = tmp_path / "livetail.json"
    node, kw = await restart_setup(env, path)
    node.grow(1)
    hub = RememberingHub()
    tail = env.tail(env.rpc(node.url), hub, state=TailState(path), **kw)
    node.faults = ["ok", "ok", "500"]  # the node answers, but not the second batch (8-10) ...
    assert not await tail.poll()
    assert remembered_of(hub.take()) == chain_of(node, 5, 7)
    node.faults = ["ok", "500"]  # ... nor on the second poll ...
    assert not await tail.poll()
    node.faults = ["ok", "500"]  # ... nor the third: we carry on without it
    assert await tail.poll()
    recorded = hub.take()
    assert remembered_of(recorded) == [] and blocks_of(recorded) == chain_of(node, 13, 13)
    assert await tail.whenRestored() == 3  # 5-7, from the first attempt
    assert any("giving up restoring the history after 3 failed attempts" in m
               for m in messages_at(logged, LogLevel.warn))


@pytest_twisted.ensureDeferred
async def test_no_restore_when_the_node_is_too_far_ahead(env, tmp_path):
    path = tmp_path / "livetail.json"
    node, kw = await restart_setup(env, path)
    node.grow(30)
    hub = RememberingHub()
    tail = env.tail(env.rpc(node.url), hub, state=TailState(path), max_catchup=10, **kw)
    assert await tail.poll()
    recorded = hub.take()
    assert remembered_of(recorded) == [] and blocks_of(recorded) == chain_of(node, 42, 42)
    assert node.methods["eth_getBlockByHash"] == 0
    assert await tail.whenRestored() == 0


@pytest_twisted.ensureDeferred
async def test_the_state_file_keeps_remember_blocks_and_forgets_them_after_a_deep_reorg(env, tmp_path):
    path = tmp_path / "livetail.json"
    node, hub, tail = await fake_setup(env, state=TailState(path), max_reorg_depth=3, remember=6)
    node.grow(2)
    assert await tail.poll()
    node.grow(3)
    assert await tail.poll()
    assert [p["height"] for p in json.loads(path.read_text())["chain"]] == [2, 3, 4, 5]
    node.grow(5)
    assert await tail.poll()
    assert [p["height"] for p in json.loads(path.read_text())["chain"]] == list(range(5, 11))
    node.fork(8, "b")  # depth 3: ordinary, what lies below stays
    assert await tail.poll()
    assert [(p["height"], p["hash"]) for p in json.loads(path.read_text())["chain"]] == chain_of(node, 5, 10)
    node.fork(5, "c")  # deeper than we can tell: below may be gone too
    assert await tail.poll()
    assert [(p["height"], p["hash"]) for p in json.loads(path.read_text())["chain"]] == chain_of(node, 7, 10)


class FileCheckingHub(RecordingHub):
    """Fails the test if a block reaches the hub before the state file names it."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def publish(self, entry):
        saved = {(p["height"], p["hash"]) for p in json.loads(self.path.read_text())["chain"]}
        assert (entry.height, entry.hash) in saved, "published before it was saved"
        return super().publish(entry)


# The hub's writes may reach a client at once (explorerd's transport writes
# through): what a client got must already be in the state file, so that a
# SIGKILL never makes a restart republish blocks a client has.

class SavedFirst:
    """A tail (batches of 3) saving to a state file, feeding a L{FileCheckingHub}."""

    @classmethod
    async def start(cls, env, tmp_path):
        self = cls()
        self.env = env
        self.path = path = tmp_path / "livetail.json"
        self.node = await env.fake_node()
        self.hub = FileCheckingHub(path)
        path.write_text(json.dumps({"version": 1, "chain": []}))
        self.tail = env.tail(env.rpc(self.node.url), self.hub, state=TailState(path), batch_size=3)
        return self

    def saved_height(self):
        return json.loads(self.path.read_text())["height"]

    async def follow(self):
        """Blocks 2-9, in batches."""
        node, tail = self.node, self.tail
        node.grow(2)
        assert await tail.poll()
        node.grow(7)
        assert await tail.poll()
        return self.hub.take()

    async def cutShortByAReorg(self):
        """
        A batch cut short by a reorg: 10 goes out (saved first), then the
        common-ancestor search hangs, and the tail is stopped.  Returns what
        the hub got, the height saved meanwhile and what the poll came to.
        """
        node, tail = self.node, self.tail
        node.grow(3)
        node.served[11] = make_block(11, _hash("elsewhere"), "x")
        node.faults = ["ok", "ok", "hang"]  # the common-ancestor search hangs
        polled = tail.poll()
        await eventually(lambda: node.hanging, what="the ancestor search to reach the node")
        recorded, saved = self.hub.take(), self.saved_height()
        await tail.stopService()
        return recorded, saved, await polled

    async def refused(self):
        """A new tail on the same file; the hub refuses block 12."""
        node, hub, env = self.node, self.hub, self.env
        node.served.clear()
        hub.refuse = {12}
        tail = env.tail(env.rpc(node.url), hub, state=TailState(self.path), batch_size=3)
        return await tail.poll(), hub.take()


@pytest_twisted.ensureDeferred
async def test_the_state_file_names_every_block_before_the_hub_gets_it(env, tmp_path):
    story = await SavedFirst.start(env, tmp_path)
    assert blocks_of(await story.follow()) == chain_of(story.node, 2, 9)


@pytest_twisted.ensureDeferred
async def test_a_batch_cut_short_by_a_reorg_saved_what_went_out(env, tmp_path):
    story = await SavedFirst.start(env, tmp_path)
    await story.follow()
    recorded, saved, polled = await story.cutShortByAReorg()
    assert blocks_of(recorded) == chain_of(story.node, 10, 10)
    assert saved == 10
    assert not polled


@pytest_twisted.ensureDeferred
async def test_a_block_the_hub_refuses_is_not_left_in_the_state_file(env, tmp_path):
    story = await SavedFirst.start(env, tmp_path)
    await story.follow()
    await story.cutShortByAReorg()
    polled, recorded = await story.refused()
    assert not polled
    assert blocks_of(recorded) == chain_of(story.node, 11, 11)
    assert story.saved_height() == 11


def test_node_urls_are_redacted_for_logs_and_health():
    assert redact("https://user:secret@mainnet.infura.io/v3/0123abcd") == "https://mainnet.infura.io/..."
    assert redact("https://eth.example.com/?key=abc") == "https://eth.example.com/..."
    assert redact("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    assert redact("http://127.0.0.1:8545/") == "http://127.0.0.1:8545"


def test_tail_state_round_trip_and_unusable_files(tmp_path, logged):
    path = tmp_path / "deep" / "dir" / "tail.json"
    state = TailState(path)
    assert state.load() == [] and state.last is None
    positions = [Position(10 + i, _hash(i), _hash(i - 1)) for i in range(3)]
    state.save(positions)
    assert TailState(path).load() == positions
    assert state.last == positions[-1]
    state.save(positions[1:])
    assert TailState(path).load() == positions[1:]
    assert sorted(os.listdir(path.parent)) == ["tail.json"]
    for bad in (b"{not json", b'{"version": 99}', b'{"version": 1, "chain": [{"height": 1}]}',
                json.dumps({"version": 1, "chain": [{"height": 1, "hash": _hash(1), "parent": None},
                                                    {"height": 3, "hash": _hash(3), "parent": None}]}).encode()):
        path.write_bytes(bad)
        assert TailState(path).load() == []
    assert len(messages_at(logged, LogLevel.error)) == 4


@pytest_twisted.ensureDeferred
async def test_health_degraded_while_the_node_is_unreachable_then_ok(env):
    node, hub, tail = await fake_setup(env)
    assert tail.health()["status"] == "degraded"  # nothing polled yet
    node.grow(3)
    assert await tail.poll()
    assert tail.health()["status"] == "ok" and tail.health()["last_error"] is None
    await node.down()
    assert not await tail.poll()
    health = tail.health()
    assert health["status"] == "degraded"
    assert health["last_error"].startswith("unavailable:")
    assert health["last_error_at"] is not None
    assert health["published"] == {"height": 3, "hash": node.hash(3)}
    assert health["node"] == node.url
    assert sample(tail, "explorer_tail_rpc_errors_total", method="eth_blockNumber", kind="unavailable") >= 1
    await node.up()
    node.grow(1)
    assert await tail.poll()
    health = tail.health()
    assert health["status"] == "ok" and health["reasons"] == []
    assert health["published"]["height"] == 4
    assert health["last_error"].startswith("unavailable:")  # kept, with its time, for the operator


@pytest_twisted.ensureDeferred
async def test_health_degraded_when_lagging(env):
    now = [T0 + 12 * 3 + 5.0]
    node, hub, tail = await fake_setup(env, max_lag=5, now=lambda: now[0])
    node.grow(3)
    assert await tail.poll()
    health = tail.health()
    assert health["status"] == "ok" and health["lag_seconds"] == 5.0
    node.grow(10)
    node.missing = {4}  # we cannot get past 3
    assert await tail.poll()
    health = tail.health()
    assert health["status"] == "degraded"
    assert health["lag_blocks"] == 10 and "10 blocks behind" in health["reasons"][0]
    assert sample(tail, "explorer_tail_blocks_behind") == 10
    node.missing.clear()
    now[0] = T0 + 12 * 13 + 2.5
    assert await tail.poll()
    health = tail.health()
    assert health["status"] == "ok" and health["lag_blocks"] == 0 and health["lag_seconds"] == 2.5
    assert sample(tail, "explorer_tail_lag_seconds") == 2.5
    assert sample(tail, "explorer_tail_head_height") == 13
    assert sample(tail, "explorer_tail_published_height") == 13


def _without_from(block):
    block["transactions"][1].pop("from")


def _wrong_number(block):
    block["number"] = hex(int(block["number"], 16) + 1)


def _no_hash(block):
    block["hash"] = None


def _short_hash(block):
    block["hash"] = "0x1234"


def _hashes_only(block):
    block["transactions"] = [tx["hash"] for tx in block["transactions"]]


@pytest.mark.parametrize("breakage", [_without_from, _wrong_number, _no_hash, _short_hash, _hashes_only, "hub"])
@pytest_twisted.ensureDeferred
async def test_an_invalid_block_is_never_published_and_is_retried(env, breakage):
    node, hub, tail = await fake_setup(env)
    node.grow(3)
    assert await tail.poll()
    hub.take()
    node.grow(3, ntx=2)
    if breakage == "hub":
        hub.refuse = {5}
    else:
        broken = json.loads(json.dumps(node.blocks[5]))
        breakage(broken)
        node.served[5] = broken
    for expected in (chain_of(node, 4, 4), []):
        assert not await tail.poll()
        recorded = hub.take()
        assert blocks_of(recorded) == expected  # 4 went out; 5 never, not even in part
        assert all(node.hash(5) not in e for e in recorded)
        health = tail.health()
        assert health["status"] == "degraded" and health["last_error"].startswith("invalid_block:")
        assert health["published"]["height"] == 4
    assert sample(tail, "explorer_tail_rpc_errors_total",
                  method="batch[eth_getBlockByNumber]", kind="invalid_block") == 2
    node.served.clear()
    hub.refuse = set()
    assert await tail.poll()
    recorded = hub.take()
    assert blocks_of(recorded) == chain_of(node, 5, 6)
    assert_block_with_txs(recorded, node)
    assert tail.health()["status"] == "ok"


@pytest_twisted.ensureDeferred
async def test_faults_are_counted_by_method_and_kind(env):
    node, hub, tail = await fake_setup(env)
    node.grow(2)
    node.faults = ["500", "garbage", "rpc_error", "drop"]
    for kind in ("http", "protocol", "rpc_error", "unavailable"):
        assert not await tail.poll()
        assert tail.health()["last_error"].startswith(kind + ":")
        assert sample(tail, "explorer_tail_rpc_errors_total", method="eth_blockNumber", kind=kind) == 1
    assert await tail.poll()
    assert sample(tail, "explorer_tail_rpc_calls_total", method="eth_blockNumber") == 5
    # The block and its receipts, by number, in one round trip.
    assert sample(tail, "explorer_tail_rpc_calls_total",
                  method="batch[eth_getBlockByNumber,eth_getBlockReceipts]") == 1
    assert sample(tail, "explorer_tail_rpc_latency_seconds_count", method="eth_blockNumber") == 5
    assert sample(tail, "explorer_tail_polls_total", outcome="failed") == 4
    assert sample(tail, "explorer_tail_polls_total", outcome="ok") == 1
    names = {m.name for m in tail.metrics.registry.collect()}
    assert {"explorer_tail_head_height", "explorer_tail_blocks_behind", "explorer_tail_lag_seconds",
            "explorer_tail_rpc_calls", "explorer_tail_rpc_errors", "explorer_tail_rpc_latency_seconds",
            "explorer_tail_reorgs", "explorer_tail_reorg_depth", "explorer_tail_blocks_published",
            "explorer_tail_transactions_published"} <= names


@pytest_twisted.ensureDeferred
async def test_the_loop_backs_off_exponentially_and_resets_on_success(env):
    clock = Clock()
    node, hub, tail = await fake_setup(env, clock=clock, poll_interval=1.0, max_backoff=8.0)
    node.grow(2)
    node.faults = ["500"] * 6
    tail.startService()  # polls at once
    await tail.whenIdle()
    attempts = [(clock.seconds(), tail.backoff)]
    seen = node.requests
    while clock.seconds() < 60:
        clock.advance(0.25)
        await tail.whenIdle()
        if node.requests != seen:
            seen = node.requests
            attempts.append((clock.seconds(), tail.backoff))
    failing = attempts[:6]
    for n, (_, backoff) in enumerate(failing, 1):
        base = min(8.0, 2 ** (n - 1))
        assert base / 2 <= backoff <= base
    assert len({backoff / min(8.0, 2 ** n) for n, (_, backoff) in enumerate(failing)}) > 1  # jitter
    for (t, backoff), (t_next, _) in zip(failing, attempts[1:7]):
        assert backoff <= t_next - t < backoff + 1.0  # the first tick after the backoff
    # Success resets the backoff: one poll per tick from then on.
    assert attempts[6][1] is None
    after = [t for t, _ in attempts[6:]]
    assert all(b - a == 1.0 for a, b in zip(after, after[1:]))
    assert tail.health()["status"] == "ok" and tail.health()["consecutive_failures"] == 0
    assert blocks_of(hub.take()) == chain_of(node, 2, 2)


@pytest_twisted.ensureDeferred
async def test_the_backoff_stops_growing_at_max_backoff(env):
    clock = Clock()
    node, hub, tail = await fake_setup(env, clock=clock, poll_interval=0.5, max_backoff=3.0)
    node.grow(1)
    node.faults = ["500"] * 10
    tail.startService()
    await tail.whenIdle()
    attempts = [clock.seconds()]
    backoffs = [tail.backoff]
    seen = node.requests
    while len(attempts) < 11:
        clock.advance(0.5)
        await tail.whenIdle()
        if node.requests != seen:
            seen = node.requests
            attempts.append(clock.seconds())
            backoffs.append(tail.backoff)
    # 0.5, 1, 2, then never more than 3 (jittered down to half of it).
    for n, backoff in enumerate(backoffs[:10], 1):
        cap = min(3.0, 0.5 * 2 ** (n - 1))
        assert cap / 2 <= backoff <= cap
    assert all(1.5 <= b <= 3.0 for b in backoffs[3:10])
    assert all(b - a < 3.0 + 0.5 for a, b in zip(attempts, attempts[1:]))  # the first tick after it
    assert tail.health()["retry_in"] is None and backoffs[10] is None  # the 11th poll got through


def test_max_backoff_must_be_positive():
    with pytest.raises(ValueError, match="max_backoff must be > 0"):
        LiveTail(Clock(), None, RecordingHub(), max_backoff=0, registry=CollectorRegistry())


def test_the_daemon_gives_the_tail_its_rpc_retry_setting():
    from twisted.internet import reactor

    from explorerd.config import Config
    from explorerd.daemon import Daemon

    config = Config.defaults(rpc_url="http://127.0.0.1:1/", state_dir="", rpc_retry=7.5,
                             listen="tcp:0:interface=127.0.0.1")
    daemon = Daemon(config, reactor, clock=Clock(), web_root="", tail=True)  # built, never started
    assert daemon.tail.max_backoff == 7.5


@pytest_twisted.ensureDeferred
async def test_stop_cancels_a_hung_poll_and_leaves_nothing_running(env):
    clock = Clock()
    node = await env.fake_node()
    rpc = env.rpc(node.url, timeout=30.0)
    tail = env.tail(rpc, RecordingHub(), clock=clock)
    node.faults = ["hang"]
    tail.startService()
    await eventually(lambda: node.hanging, what="the poll to reach the node")
    stopped = tail.stopService()
    stopped.addTimeout(2.0, _reactor())
    await stopped
    assert tail.health()["last_error"] is None  # a cancelled poll is not a node fault
    assert clock.getDelayedCalls() == []
    # The tail did not close the client: the daemon owns it.
    node.grow(1)
    assert await rpc.blockNumber() == 1


@pytest_twisted.ensureDeferred
async def test_no_garbage_collection_runs_between_checking_a_block_and_publishing_it(env, monkeypatch):
    # Checking a block builds its frames (the allocations that trigger a collection); a collection
    # there would delay the block for every client as one inside the fan-out would.
    import gc

    from explorerd import history

    node, hub, tail = await fake_setup(env)
    node.grow(3)
    seen = []
    checked = history.node_block

    def checking(*args):
        seen.append(("check", gc.isenabled()))
        return checked(*args)

    published = hub.publish

    def publishing(entry):
        seen.append(("publish", gc.isenabled()))
        return published(entry)

    monkeypatch.setattr(history, "node_block", checking)
    monkeypatch.setattr(hub, "publish", publishing)
    assert gc.isenabled()
    assert await tail.poll()
    assert seen and all(enabled is False for _, enabled in seen)
    assert {step for step, _ in seen} == {"check", "publish"}
    assert gc.isenabled()
