"""
Push from the node (explorerd/nodepush.py): the live-tail fetches a block the
moment the node announces it, and push can only make blocks come sooner:
whatever the notifications say, or fail to say, every block is published
exactly once, in order, and polling carries on when push is gone.

Calls go to a real anvil over HTTP; notifications come from anvil's own
WebSocket (same port), or from L{FakePushNode}, a WebSocket node whose
notifications the test writes (dropped, duplicated, delayed, about blocks
that a reorg removes, or none), that refuses subscriptions, dies, or goes
half-open.  The tail's and push's clocks are C{Clock}s: a block published
without advancing the tail's clock came by push, not by the poll tick.
"""

import json
import random
import re

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from prometheus_client import CollectorRegistry
from twisted.internet import endpoints
from twisted.internet.task import Clock

from explorerd.nodepush import NodePush
from tests.conftest import eventually
from tests.serving import TrackingFactory
from tests.test_livetail import Env, RecordingHub, blocks_of, sample

pytestmark = pytest.mark.needs_node  # anvil from tests/node


def _reactor():
    from twisted.internet import reactor

    return reactor


class _FakeNodeProtocol(WebSocketServerProtocol):
    def onOpen(self):
        self.factory.node.open.append(self)

    def onClose(self, wasClean, code, reason):
        if self in self.factory.node.open:
            self.factory.node.open.remove(self)
        self.factory.node.subscribed.pop(self, None)

    def onMessage(self, payload, isBinary):
        node = self.factory.node
        call = json.loads(payload)
        node.calls.append(call)
        if node.answer == "silent":
            return
        if call.get("method") != "eth_subscribe":
            self._send({"jsonrpc": "2.0", "id": call.get("id"),
                        "error": {"code": -32601, "message": "the method does not exist"}})
        elif node.answer == "subscribe":
            node.count += 1
            sid = hex(0x1000 + node.count)
            node.subscribed[self] = sid
            self._send({"jsonrpc": "2.0", "id": call["id"], "result": sid})
        elif node.answer == "refuse":
            self._send({"jsonrpc": "2.0", "id": call["id"],
                        "error": {"code": -32000, "message": "subscriptions are disabled"}})
        elif node.answer == "no newHeads":
            self._send({"jsonrpc": "2.0", "id": call["id"],
                        "error": {"code": -32602, "message": "invalid subscription type newHeads"}})

    def _send(self, message):
        self.sendMessage(json.dumps(message).encode())


class FakePushNode:
    """A node's WebSocket whose C{newHeads} notifications the test writes."""

    def __init__(self, reactor, answer="subscribe"):
        self.reactor = reactor
        self.answer = answer
        self.open = []
        self.subscribed = {}
        self.calls = []
        self.count = 0
        factory = WebSocketServerFactory()
        factory.protocol = _FakeNodeProtocol
        factory.node = self
        self.tracking = TrackingFactory(factory)
        self.port = None

    async def start(self, pem=None):
        """Listen on 127.0.0.1; with C{pem} (certificate and key file), over TLS (C{wss://})."""
        if pem is not None:
            # TLS right under the WebSocket protocol (Autobahn reads the TLS channel from its transport).
            from twisted.internet.ssl import PrivateCertificate
            from twisted.protocols.tls import TLSMemoryBIOFactory

            with open(pem, "rb") as f:
                options = PrivateCertificate.loadPEM(f.read()).options()
            self.tracking = TrackingFactory(TLSMemoryBIOFactory(options, False, self.tracking.wrappedFactory))
        endpoint = endpoints.serverFromString(self.reactor, "tcp:0:interface=127.0.0.1")
        self.port = await endpoint.listen(self.tracking)
        self.url = f"{'ws' if pem is None else 'wss'}://127.0.0.1:{self.port.getHost().port}"
        return self

    def notify(self, header=None):
        """Announce a head: C{header} as given (its content is never used), to every subscription."""
        header = {"number": "0xdead", "hash": "0x" + "ee" * 32} if header is None else header
        for protocol, sid in list(self.subscribed.items()):
            protocol._send({"jsonrpc": "2.0", "method": "eth_subscription",
                            "params": {"subscription": sid, "result": header}})

    def kill(self):
        """The node goes away mid-run: connections reset, no close handshake."""
        self.tracking.abortAll()

    def halfOpen(self):
        """The node stops reading and writing but keeps the connections open."""
        for protocol in list(self.tracking.protocols):
            protocol.transport.pauseProducing()
        self.subscribed.clear()

    async def stop(self):
        self.tracking.abortAll()
        await self.tracking.whenIdle()
        await self.port.stopListening()


class PushEnv(Env):
    def __init__(self, reactor):
        super().__init__(reactor)
        self.pushes = []
        self.fakes = []

    def push(self, url, tail, clock=None, **kw):
        kw.setdefault("rng", random.Random(2))
        kw.setdefault("registry", tail.metrics.registry)
        kw.setdefault("ping_interval", 0)
        push = NodePush(self.reactor, url, tail.pollSoon, clock=Clock() if clock is None else clock, **kw)
        self.pushes.append(push)
        return push

    async def fake(self, pem=None, **kw):
        node = await FakePushNode(self.reactor, **kw).start(pem)
        self.fakes.append(node)
        return node

    async def close(self):
        for push in self.pushes:
            await push.stopService()
        for node in self.fakes:
            await node.stop()
        await super().close()


@pytest_twisted.async_yield_fixture
async def penv(no_leaks):
    e = PushEnv(_reactor())
    yield e
    await e.close()


def ws_of(anvil):
    return "ws" + anvil.url[len("http"):]


async def setup(penv, ws=None, **kw):
    """anvil for the calls, a started tail that has published the genesis block, push from C{ws}."""
    anvil = await penv.anvil()
    hub = RecordingHub()
    tail = penv.tail(penv.rpc(anvil.url), hub, poll_interval=1.0)
    tail.startService()
    await eventually(lambda: blocks_of(hub.events), what="the first poll")
    push = penv.push(ws_of(anvil) if ws is None else ws, tail, **kw)
    push.startService()
    return anvil, hub, tail, push


async def canonical(anvil_rpc, lo, hi):
    blocks = [await anvil_rpc.getBlockByNumber(h, False) for h in range(lo, hi + 1)]
    return [(int(b["number"], 16), b["hash"]) for b in blocks]


# Against anvil's own WebSocket -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_block_the_node_announces_is_published_before_the_next_poll_tick(penv):
    anvil, hub, tail, push = await setup(penv)
    await eventually(lambda: push.active, what="the subscription")
    ctl = penv.rpc(anvil.url)
    for _ in range(3):
        await ctl.call("evm_mine")
    # The tail's clock never moved: only the node's announcements made it poll.
    await eventually(lambda: len(blocks_of(hub.events)) == 4, what="three blocks by push")
    await tail.whenIdle()
    assert blocks_of(hub.events) == await canonical(ctl, 0, 3)
    assert sample(tail, "explorer_tail_push_active") == 1
    assert sample(tail, "explorer_tail_push_notifications_total") >= 3
    assert push.health()["state"] == "subscribed"


@pytest_twisted.ensureDeferred
async def test_an_anvil_reorg_announced_by_push_is_reported_once_then_the_new_branch(penv):
    anvil, hub, tail, push = await setup(penv)
    await eventually(lambda: push.active, what="the subscription")
    ctl = penv.rpc(anvil.url)
    for _ in range(3):
        await ctl.call("evm_mine")
    await eventually(lambda: len(blocks_of(hub.events)) == 4, what="three blocks by push")
    await tail.whenIdle()
    hub.take()
    await ctl.call("anvil_reorg", [2, []])
    await ctl.call("evm_mine")
    await eventually(lambda: any(e[0] == "block" and e[1] == 4 for e in hub.events),
                     what="the new branch by push")
    await tail.whenIdle()
    reorgs = [e for e in hub.events if e[0] == "reorg"]
    assert len(reorgs) == 1 and reorgs[0][1] == 2
    assert blocks_of(hub.events) == await canonical(ctl, 2, 4)


# What the notifications say does not matter ------------------------------------


@pytest_twisted.ensureDeferred
async def test_dropped_duplicated_delayed_and_stale_notifications_give_every_block_exactly_once(penv):
    fake = await penv.fake()
    anvil, hub, tail, push = await setup(penv, ws=fake.url)
    await eventually(lambda: push.active, what="the subscription")
    ctl = penv.rpc(anvil.url)
    # Duplicated: one block, three announcements (of a block that does not exist).
    await ctl.call("evm_mine")
    for _ in range(3):
        fake.notify()
    await eventually(lambda: len(blocks_of(hub.events)) == 2, what="block 1")
    # Delayed: two blocks, then one announcement.
    await ctl.call("evm_mine")
    await ctl.call("evm_mine")
    fake.notify()
    await eventually(lambda: len(blocks_of(hub.events)) == 4, what="blocks 2 and 3")
    # About a block a reorg then removes: announce block 3, replace it.
    await tail.whenIdle()
    removed = (await canonical(ctl, 3, 3))[0][1]
    await ctl.call("anvil_reorg", [1, []])
    fake.notify({"number": "0x3", "hash": removed})
    await eventually(lambda: any(e[0] == "reorg" for e in hub.events), what="the reorg")
    # Dropped: a block nobody announces comes with the next poll tick.
    await tail.whenIdle()
    await ctl.call("evm_mine")
    tail.clock.advance(1.0)
    await eventually(lambda: blocks_of(hub.events)[-1][0] == 4, what="block 4 by polling")
    await tail.whenIdle()
    published = blocks_of(hub.events)
    reorgs = [e for e in hub.events if e[0] == "reorg"]
    assert [r[1] for r in reorgs] == [1]
    # Every height once, then the new block 3 after the reorg, then 4: the node's chain.
    assert published[:4] == await canonical(ctl, 0, 2) + [(3, removed)]
    assert published[4:] == await canonical(ctl, 3, 4)


@pytest_twisted.ensureDeferred
async def test_announcements_during_a_poll_make_exactly_one_more_poll(penv):
    anvil, hub, tail, push = await setup(penv)
    ctl = penv.rpc(anvil.url)
    polls = sample(tail, "explorer_tail_polls_total", outcome="ok")
    await ctl.call("evm_mine")
    tail.pollSoon()
    assert tail._poll is not None
    for _ in range(5):
        tail.pollSoon()  # while that poll runs
    await eventually(lambda: sample(tail, "explorer_tail_polls_total", outcome="ok") == polls + 2,
                     what="two polls")
    await tail.whenIdle()
    assert sample(tail, "explorer_tail_polls_total", outcome="ok") == polls + 2
    assert blocks_of(hub.events)[-1][0] == 1


# The height a notification announces: a hint, never trusted ---------------------


WITH_RECEIPTS = "batch[eth_getBlockByNumber,eth_getBlockReceipts]"


def calls(tail, method):
    return sample(tail, "explorer_tail_rpc_calls_total", method=method)


@pytest_twisted.ensureDeferred
async def test_a_notification_of_the_next_block_fetches_it_and_its_receipts_in_one_round_trip(penv):
    fake = await penv.fake()
    anvil, hub, tail, push = await setup(penv, ws=fake.url)
    await eventually(lambda: push.active, what="the subscription")
    ctl = penv.rpc(anvil.url)
    asked, fetched = calls(tail, "eth_blockNumber"), calls(tail, WITH_RECEIPTS)
    for height in (1, 2):
        await ctl.call("evm_mine")
        fake.notify({"number": hex(height), "hash": "0x" + "ee" * 32})
        await eventually(lambda: len(blocks_of(hub.events)) == height + 1, what=f"block {height}")
        await tail.whenIdle()
    assert blocks_of(hub.events) == await canonical(ctl, 0, 2)
    # Not a call more than one round trip per block: no eth_blockNumber first.
    assert calls(tail, "eth_blockNumber") == asked
    assert calls(tail, WITH_RECEIPTS) == fetched + 2
    # Beside it, the header alone, which the node serves at once: handed to the hub ahead of the block.
    assert calls(tail, "eth_getBlockByNumber[header]") == 2
    # (When it comes before the block: these blocks are empty, so the block may win the race.)
    assert set(hub.announced) <= set(blocks_of(hub.events)[1:])
    # Each block's way through, timed by stage.
    for stage in ("fetch", "check", "publish"):
        assert sample(tail, "explorer_tail_block_stage_seconds_count", stage=stage) == 3
    assert sample(tail, "explorer_tail_polls_started_total", by="push") == 2


@pytest_twisted.ensureDeferred
async def test_a_notification_of_a_block_the_node_does_not_serve_yet_is_looked_at_again_shortly(penv):
    """As with a provider whose HTTP backends lag its WebSocket: the block comes well before the tick."""
    fake = await penv.fake()
    anvil, hub, tail, push = await setup(penv, ws=fake.url)
    await eventually(lambda: push.active, what="the subscription")
    ctl = penv.rpc(anvil.url)
    fake.notify({"number": "0x1"})
    await eventually(lambda: tail._hint_retry is not None, what="the first look, in vain")
    await tail.whenIdle()
    assert len(blocks_of(hub.events)) == 1
    await ctl.call("evm_mine")
    tail.clock.advance(0.05)
    await eventually(lambda: len(blocks_of(hub.events)) == 2, what="block 1, 50 ms later")
    await tail.whenIdle()
    assert blocks_of(hub.events) == await canonical(ctl, 0, 1)
    assert tail.clock.seconds() < tail.poll_interval


@pytest_twisted.ensureDeferred
async def test_a_notification_that_lies_costs_a_few_looks_and_nothing_else(penv):
    fake = await penv.fake()
    anvil, hub, tail, push = await setup(penv, ws=fake.url)
    await eventually(lambda: push.active, what="the subscription")
    before = calls(tail, WITH_RECEIPTS)
    fake.notify({"number": "0x1"})  # there is no block 1, and there will be none for a while
    for delay in (0.05, 0.1, 0.2):
        await eventually(lambda: tail._hint_retry is not None, what="a look again")
        await tail.whenIdle()
        tail.clock.advance(delay)
    await tail.whenIdle()
    assert tail._hint_retry is None and calls(tail, WITH_RECEIPTS) == before + 4
    # A height far ahead is not taken for the head: the node is asked, nothing is skipped.
    asked = calls(tail, "eth_blockNumber")
    fake.notify({"number": "0xffffffff"})
    await eventually(lambda: calls(tail, "eth_blockNumber") == asked + 1, what="the head asked for")
    await tail.whenIdle()
    assert sample(tail, "explorer_tail_blocks_skipped_total") == 0
    assert blocks_of(hub.events) == await canonical(penv.rpc(anvil.url), 0, 0)
    assert sample(tail, "explorer_tail_polls_total", outcome="failed") == 0


# When push is gone, polling goes on ---------------------------------------------


@pytest.mark.parametrize("answer", ["refuse", "no newHeads"])
@pytest_twisted.ensureDeferred
async def test_a_node_that_refuses_the_subscription_leaves_polling_and_health_says_so(penv, answer):
    fake = await penv.fake(answer=answer)
    anvil, hub, tail, push = await setup(penv, ws=fake.url)
    await eventually(lambda: push.health()["last_error"], what="the refusal")
    health = push.health()
    assert not health["active"] and "refused eth_subscribe newHeads" in health["last_error"]
    assert sample(tail, "explorer_tail_push_active") == 0
    await eventually(lambda: push.health()["state"] == "waiting to reconnect", what="the backoff")
    ctl = penv.rpc(anvil.url)
    await ctl.call("evm_mine")
    tail.clock.advance(1.0)
    await eventually(lambda: len(blocks_of(hub.events)) == 2, what="block 1 by polling")
    # It asks again later, with backoff.
    push._clock.advance(1.0)
    await eventually(lambda: len(fake.calls) == 2, what="a second attempt")
    assert sample(tail, "explorer_tail_push_reconnects_total") == 1


@pytest_twisted.ensureDeferred
async def test_a_node_killed_mid_run_leaves_polling_and_push_comes_back(penv):
    fake = await penv.fake()
    anvil, hub, tail, push = await setup(penv, ws=fake.url)
    await eventually(lambda: push.active, what="the subscription")
    fake.kill()
    await eventually(lambda: not push.active, what="push to notice")
    assert sample(tail, "explorer_tail_push_active") == 0
    ctl = penv.rpc(anvil.url)
    await ctl.call("evm_mine")
    tail.clock.advance(1.0)
    await eventually(lambda: len(blocks_of(hub.events)) == 2, what="block 1 by polling")
    push._clock.advance(0.5)
    await eventually(lambda: push.active, what="push to come back")
    assert sample(tail, "explorer_tail_push_reconnects_total") == 1
    await ctl.call("evm_mine")
    fake.notify()
    await eventually(lambda: len(blocks_of(hub.events)) == 3, what="block 2 by push")


@pytest_twisted.ensureDeferred
async def test_a_half_open_node_is_dropped_after_the_silence_and_push_reconnects(penv):
    fake = await penv.fake()
    anvil, hub, tail, push = await setup(penv, ws=fake.url, silence=30.0)
    await eventually(lambda: push.active, what="the subscription")
    fake.halfOpen()
    ctl = penv.rpc(anvil.url)
    await ctl.call("evm_mine")
    tail.clock.advance(1.0)
    await eventually(lambda: len(blocks_of(hub.events)) == 2, what="block 1 by polling")
    assert push.active  # it looks connected
    push._clock.advance(30.0)
    await eventually(lambda: not push.active, what="the silent subscription to be dropped")
    assert "no new head announced for 30s" in push.health()["last_error"]
    push._clock.advance(0.5)
    await eventually(lambda: push.active, what="push to come back")


@pytest_twisted.ensureDeferred
async def test_a_half_open_node_that_does_not_answer_pings_is_dropped(penv, txaio_clock):
    fake = await penv.fake()
    anvil, hub, tail, push = await setup(penv, ws=fake.url, ping_interval=10.0)
    await eventually(lambda: push.active, what="the subscription")
    fake.halfOpen()
    txaio_clock.advance(10.0)  # our ping
    txaio_clock.advance(10.0)  # no pong
    await eventually(lambda: not push.active, what="the connection to be dropped")
    push._clock.advance(0.5)
    await eventually(lambda: push.active, what="push to come back")


@pytest_twisted.ensureDeferred
async def test_push_over_wss_checks_the_node_certificate_against_the_trusted_cas(
        penv, tmp_path, monkeypatch):
    from tests.tls import self_signed_pem

    pem = tmp_path / "node.pem"
    pem.write_bytes(self_signed_pem())
    fake = await penv.fake(pem=str(pem))
    # Not trusted: the handshake fails, push keeps retrying, polling goes on.
    anvil, hub, tail, push = await setup(penv, ws=fake.url)
    await eventually(lambda: push.health()["state"] == "waiting to reconnect", what="the refused handshake")
    assert not push.active and fake.calls == []
    # The operator's CA bundle (OpenSSL's SSL_CERT_FILE) trusts it.
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))
    trusted = penv.push(fake.url, tail, registry=CollectorRegistry())
    trusted.startService()
    await eventually(lambda: trusted.active, what="the subscription over wss")
    await penv.rpc(anvil.url).call("evm_mine")
    fake.notify()
    await eventually(lambda: len(blocks_of(hub.events)) == 2, what="block 1 by push over wss")


# In the daemon ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_daemon_pushes_with_rpc_ws_url_and_healthz_says_so(start_daemon, penv):
    anvil = await penv.anvil()
    daemon = await start_daemon(with_tail=True, rpc_url=anvil.url, rpc_ws_url=ws_of(anvil))
    service = daemon.service
    await eventually(lambda: service.push.active, what="the subscription")
    await eventually(lambda: service.tail.published is not None, what="the first poll")
    await penv.rpc(anvil.url).call("evm_mine")
    await eventually(lambda: service.tail.published["height"] == 1, what="block 1 by push")
    push = service.health()["tail"]["push"]
    assert push["active"] and push["state"] == "subscribed" and push["url"] == ws_of(anvil)
    assert push["notifications"] >= 1


@pytest_twisted.ensureDeferred
async def test_the_daemon_polls_adaptively_only_while_the_node_does_not_push(start_daemon, penv):
    anvil = await penv.anvil()
    fake = await penv.fake()
    daemon = await start_daemon(with_tail=True, rpc_url=anvil.url, rpc_ws_url=fake.url)
    service = daemon.service
    assert service.tail.adaptive
    await eventually(lambda: service.push.active, what="the subscription")
    assert not service.tail.adaptive
    fake.kill()
    await eventually(lambda: not service.push.active, what="push to be lost")
    assert service.tail.adaptive


# Settings --------------------------------------------------------------------------


@pytest.mark.parametrize("environ, message", [
    ({"EXPLORERD_RPC_URL": "ftp://127.0.0.1:8545"}, "expected an http(s):// or ws(s):// URL"),
    ({"EXPLORERD_RPC_URL": "http://127.0.0.1:8545", "EXPLORERD_RPC_WS_URL": "http://127.0.0.1:8546"},
     "expected a ws:// or wss:// URL"),
    ({"EXPLORERD_RPC_WS_URL": "ws://127.0.0.1:8546"}, "needs the node's HTTP JSON-RPC too"),
    ({"EXPLORERD_RPC_URL": "http://127.0.0.1:8545", "EXPLORERD_RPC_WS_URL": "ws://127.0.0.1:99999"},
     "EXPLORERD_RPC_WS_URL"),
])
def test_push_settings_that_cannot_work_stop_start_up_with_a_message_naming_them(environ, message):
    from explorerd.config import Config, ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        Config.load(environ, {})


def test_push_settings_are_read():
    from explorerd.config import Config

    config = Config.load({"EXPLORERD_RPC_URL": "http://127.0.0.1:8545"},
                         {"rpc-ws-url": "wss://node.example/ws/KEY", "rpc-ws-silence": "36s"})
    assert (config.rpc_ws_url, config.rpc_ws_silence) == ("wss://node.example/ws/KEY", 36.0)


# The embedded replay node pushes ----------------------------------------------------


@pytest_twisted.async_yield_fixture
async def replay(penv):
    from explorerd.replay import ReplayNode

    clock = Clock()
    node = ReplayNode(clock, block_time=2.0, prefill=3)
    service = node.asService(_reactor())
    service.startService()
    yield node, service
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_replay_node_speaks_json_rpc_and_new_heads_over_websocket(replay):
    from tests.clients import connect

    node, service = replay
    client = await connect("ws" + service.url[len("http"):])
    try:
        answer = await client.request({"jsonrpc": "2.0", "id": 7, "method": "eth_blockNumber"})
        assert answer == {"jsonrpc": "2.0", "id": 7, "result": hex(node.head.height)}
        refused = await client.request({"jsonrpc": "2.0", "id": 8, "method": "eth_subscribe",
                                        "params": ["newPendingTransactions"]})
        assert refused["error"]["code"] == -32602
        sid = (await client.request({"jsonrpc": "2.0", "id": 9, "method": "eth_subscribe",
                                     "params": ["newHeads"]}))["result"]
        head = node.mine()
        note = await client.next()
        assert note["method"] == "eth_subscription" and note["params"]["subscription"] == sid
        assert note["params"]["result"]["hash"] == head.hash
        assert note["params"]["result"]["number"] == hex(head.height)
        new = node.reorg(2)
        note = await client.next()
        assert note["params"]["result"]["hash"] == new.hash
        assert (await client.request({"jsonrpc": "2.0", "id": 10, "method": "eth_unsubscribe",
                                      "params": [sid]}))["result"] is True
        node.mine()
        answer = await client.request({"jsonrpc": "2.0", "id": 11, "method": "eth_chainId"})
        assert answer["id"] == 11  # no notification came before it
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_tail_pushed_by_the_replay_node_publishes_each_block_and_reorg_once_without_a_tick(
        penv, replay):
    node, service = replay
    hub = RecordingHub()
    tail = penv.tail(penv.rpc(service.url), hub, poll_interval=1.0)
    tail.startService()
    await eventually(lambda: blocks_of(hub.events), what="the first poll")
    push = penv.push("ws" + service.url[len("http"):], tail)
    push.startService()
    await eventually(lambda: push.active, what="the subscription")
    await tail.whenIdle()
    first = tail.published["height"]
    for _ in range(3):
        node.mine()
        await eventually(lambda: tail.published["height"] == node.head.height, what="the block by push")
    node.reorg(2)
    await eventually(lambda: any(e[0] == "reorg" for e in hub.events), what="the reorg by push")
    await eventually(lambda: tail.published["hash"] == node.head.hash, what="the new branch")
    await tail.whenIdle()
    heights = [h for h, _ in blocks_of(hub.events)]
    assert heights == list(range(first, first + 4)) + [first + 2, first + 3]
    assert blocks_of(hub.events)[-2:] == [(h, node.chain.hashAt(h)) for h in (first + 2, first + 3)]


@pytest_twisted.ensureDeferred
async def test_the_daemon_with_its_embedded_node_pushes_by_default(start_daemon):
    daemon = await start_daemon(with_tail=True, poll_interval=10.0, replay_block_time=2.0)
    service = daemon.service
    await eventually(lambda: service.push is not None and service.push.active, what="the subscription")
    await eventually(lambda: service.tail.published is not None, what="the first poll")
    await service.tail.whenIdle()
    first = service.tail.published["height"]
    daemon.clock.advance(2.0)  # a block; the tail's next tick is 8 s away
    await eventually(lambda: service.tail.published["height"] == first + 1, what="the block by push")
    assert service.health()["tail"]["push"]["active"]


# Calls over the WebSocket too (--rpc-url ws://...) ----------------------------------


def ws_rpc(penv, url, **kw):
    from explorerd.wsjsonrpc import WebSocketJSONRPCClient

    client = WebSocketJSONRPCClient(penv.reactor, url, timeout=5.0, ping_interval=0, **kw)
    penv.rpcs.append(client)
    return client


@pytest_twisted.ensureDeferred
async def test_calls_over_the_websocket_answer_as_over_http(penv):
    from explorerd.jsonrpc import RPCError

    anvil = await penv.anvil()
    http = penv.rpc(anvil.url)
    ws = ws_rpc(penv, ws_of(anvil))
    await http.call("evm_mine")
    assert await ws.blockNumber() == 1
    assert await ws.getBlocksByNumber([0, 1], False) == await http.getBlocksByNumber([0, 1], False)
    block = await ws.getBlockByNumber(1)
    assert await ws.getBlockReceipts(block["hash"]) == []
    with pytest.raises(RPCError):
        await ws.call("no_such_method")
    answers = await ws.batch([("eth_blockNumber", []), ("no_such_method", [])], returnErrors=True)
    assert answers[0] == "0x1" and isinstance(answers[1], RPCError)


@pytest_twisted.ensureDeferred
async def test_calls_over_a_lost_websocket_fail_as_unavailable_and_the_next_call_reconnects(penv):
    from explorerd.jsonrpc import RPCUnavailable

    fake = await penv.fake(answer="silent")
    ws = ws_rpc(penv, fake.url)
    call = ws.blockNumber()
    await eventually(lambda: fake.calls, what="the call to reach the node")
    fake.kill()
    with pytest.raises(RPCUnavailable, match="WebSocket closed"):
        await call
    anvil = await penv.anvil()
    again = ws_rpc(penv, ws_of(anvil))
    assert await again.blockNumber() == 0
    again._protocol.transport.abortConnection()  # lost between calls
    await eventually(lambda: again._protocol is None, what="the loss to be seen")
    assert await again.blockNumber() == 0


@pytest_twisted.ensureDeferred
async def test_the_daemon_with_only_a_websocket_rpc_url_calls_and_is_pushed_over_it(start_daemon, penv):
    anvil = await penv.anvil()
    daemon = await start_daemon(with_tail=True, rpc_url=ws_of(anvil))
    service = daemon.service
    await eventually(lambda: service.push.active, what="the subscription")
    await eventually(lambda: service.tail.published is not None, what="the first poll")
    await penv.rpc(anvil.url).call("evm_mine")
    await eventually(lambda: service.tail.published["height"] == 1, what="block 1 by push")
    health = service.health()["tail"]
    assert health["node"] == ws_of(anvil) and health["push"]["url"] == ws_of(anvil)
