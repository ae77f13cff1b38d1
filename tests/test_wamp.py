"""
The WAMP broker at /v1/wamp: AutobahnJS (node) and autobahn-python clients
against the live-tail, raw WAMP frames for the protocol errors, and the
hub's admission, connection cap, slow-client policy and ping sweep applied
to WAMP sessions.
"""

import copy
import gc
import weakref

import pytest
import pytest_twisted
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.serializer import CBORSerializer, JsonSerializer, MsgPackSerializer
from autobahn.wamp.types import SubscribeOptions
from twisted.internet import defer

from explorerd.history import Entry
from explorerd.config import Config, ConfigError
from tests.chaindata import mainnet_run
from tests.clients import connect, handshake_status, in_thread
from tests.conftest import eventually
from tests.observers import recorder
from tests.test_fanout import constrain
from tests.wamp.harness import node_client, python_client, python_leave, raw_join, raw_wamp

HELLO, WELCOME, ABORT, GOODBYE, ERROR = 1, 2, 3, 6, 8
PUBLISH, SUBSCRIBE, SUBSCRIBED, EVENT, CALL, RESULT, REGISTER = 16, 32, 33, 36, 48, 50, 64


def wamp_url(daemon):
    return f"ws://127.0.0.1:{daemon.port}/v1/wamp"


def broadcast(hub, blocks):
    for block in blocks:
        hub.publish(Entry.fromNode(block))


async def mine(daemon, n):
    """n new blocks from the embedded replay node, each polled and published by the live-tail."""
    tail, node = daemon.service.tail, daemon.service.embedded.node
    for _ in range(n):
        node.mine()
        assert await tail.poll()


def value(counter, *labels):
    return (counter.labels(*labels) if labels else counter)._value.get()


# ---------------------------------------------------------------------------
# AutobahnJS.

@pytest.mark.needs_node  # AutobahnJS from tests/node
@pytest.mark.parametrize("serializer", ["json", "msgpack", "cbor"])
@pytest_twisted.ensureDeferred
async def test_autobahnjs_gets_the_live_tail_calls_head_and_may_not_publish(start_daemon, serializer):
    daemon = await start_daemon(with_tail=True)
    await daemon.service.tail.whenIdle()
    seen = recorder(daemon.hub)
    js = await node_client(wamp_url(daemon), serializer=serializer)
    try:
        joined = await js.joined()
        assert joined["protocol"] == f"wamp.2.{serializer}"
        assert joined["details"]["realm"] == "explorer" and joined["details"]["authrole"] == "anonymous"
        for topic in ("explorer.block", "explorer.tx", "explorer.reorg", "explorer.log"):
            assert (await js.command("subscribe", topic=topic))["ok"]

        await mine(daemon, 3)
        assert len(seen) > 3
        await js.until(lambda: len(js.events) >= len(seen), what=f"{len(seen)} events")
        assert [(e["topic"], e["args"][0]) for e in js.events] == seen
        assert sum(1 for topic, _ in seen if topic == "explorer.tx") > 100  # real mainnet blocks

        head = await js.command("call", procedure="explorer.head")
        assert head["ok"] and head["result"] == daemon.hub.history.newest.data

        newest = daemon.hub.history.newest
        since = await js.command("call", procedure="explorer.blocks_since", args=[newest.height - 1,
                                 daemon.hub.history.after(newest.height - 2)[0].hash])
        assert since["result"] == {"reorg": None, "blocks": [{"block": newest.data, "txs": newest.txs_data,
                                                              "logs": newest.logs}],
                                   "more": False}

        refused = await js.command("publish", topic="explorer.block", args=[{"height": 1}],
                                   options={"acknowledge": True})
        assert not refused["ok"] and refused["error"] == "wamp.error.not_authorized"
        registered = await js.command("register", procedure="explorer.head")
        assert not registered["ok"] and registered["error"] == "wamp.error.not_authorized"
        # A publish without acknowledgement is dropped silently: not even its publisher's
        # own subscription sees it, and the session goes on.
        before = len(js.events)
        assert (await js.command("publish", topic="explorer.block", args=[{"height": 1}]))["ok"]
        assert (await js.command("call", procedure="explorer.head"))["ok"]
        assert len(js.events) == before
        assert value(daemon.service.broker.metrics.errors, "publish_refused") == 2
    finally:
        await js.stop()
    await eventually(lambda: daemon.hub.connectionCount == 0, what="the node client gone")
    assert daemon.service.broker.sessionCount == 0


@pytest.mark.needs_node  # AutobahnJS from tests/node
@pytest_twisted.ensureDeferred
async def test_autobahnjs_prefix_subscription_and_wrong_realm(start_daemon):
    daemon = await start_daemon(wamp_realm="com.example.chain")
    js = await node_client(wamp_url(daemon), realm="explorer")
    closed = None
    try:
        await js.until(lambda: any(l["type"] == "closed" for l in js.lines), what="the refusal")
        closed = next(l for l in js.lines if l["type"] == "closed")
    finally:
        await js.stop()
    assert closed["details"]["reason"] == "wamp.error.no_such_realm"

    js = await node_client(wamp_url(daemon), realm="com.example.chain")
    try:
        await js.joined()
        assert (await js.command("subscribe", topic="explorer.", options={"match": "prefix"}))["ok"]
        missing = await js.command("subscribe", topic="explorer.blocks")
        assert missing["error"] == "explorer.error.no_such_topic"
        block = mainnet_run()[3]  # 5 transactions? whatever it has
        broadcast(daemon.hub, [block])
        n = 1 + len(block["transactions"])
        await js.until(lambda: len(js.events) >= n)
        assert js.events[0]["topic"] == "explorer.block" and js.events[0]["args"][0]["hash"] == block["hash"]
        assert [e["args"][0]["hash"] for e in js.events[1:]] == [tx["hash"] for tx in block["transactions"]]
        assert {e["topic"] for e in js.events[1:]} == {"explorer.tx"}
    finally:
        await js.stop()


# ---------------------------------------------------------------------------
# autobahn-python.

def reorged(block, new_hash):
    other = copy.deepcopy(block)
    other["hash"] = new_hash
    for tx in other["transactions"]:
        tx["blockHash"] = new_hash
    return other


@pytest_twisted.ensureDeferred
async def test_autobahn_python_prefix_wildcard_blocks_since_and_errors(start_daemon):
    daemon = await start_daemon()
    hub = daemon.hub
    blocks = mainnet_run()[:3]
    session = await python_client(wamp_url(daemon))
    got, wild = [], []
    sub = await session.subscribe(lambda data, details=None: got.append((details.topic, data.get("hash"))),
                                  "explorer.", options=SubscribeOptions(match="prefix", details=True))
    await session.subscribe(lambda data, details=None: wild.append((details.topic, data.get("hash"))),
                            "explorer.", options=SubscribeOptions(match="wildcard", details=True))
    broadcast(hub, blocks)
    want = []
    for b in blocks:
        want.append(("explorer.block", b["hash"]))
        want.extend(("explorer.tx", tx["hash"]) for tx in b["transactions"])
    await eventually(lambda: len(got) == len(want) and len(wild) == len(want), what="every event")
    assert got == want and wild == want

    # Resume from the first block: the two after it, with their transactions.
    first = hub.history.after(0)[0]
    result = await session.call("explorer.blocks_since", first.height, first.hash)
    assert result["reorg"] is None
    assert [b["block"]["hash"] for b in result["blocks"]] == [b["hash"] for b in blocks[1:]]
    assert [len(b["txs"]) for b in result["blocks"]] == [len(b["transactions"]) for b in blocks[1:]]
    assert result["blocks"][0]["txs"][0] == hub.history.canonical(blocks[1]["hash"]).txs_data[0]
    assert result["more"] is False
    by_name = await session.call("explorer.blocks_since", height=first.height, hash=first.hash.upper().replace("0X", "0x"))
    assert by_name == result
    page = await session.call("explorer.blocks_since", first.height, first.hash, limit=1)
    assert page["blocks"] == result["blocks"][:1] and page["more"] is True

    # The last block is orphaned: a client that holds it learns which of its blocks are gone.
    gone = hub.history.newest
    hub.publishReorg(1, {"height": gone.height - 1, "hash": blocks[1]["hash"]}, [gone.ref()])
    replacement = reorged(blocks[2], "0x" + "ab" * 32)
    broadcast(hub, [replacement])
    result = await session.call("explorer.blocks_since", gone.height, gone.hash)
    assert result["reorg"] == {"depth": 1, "common_ancestor": {"height": gone.height - 1, "hash": blocks[1]["hash"]},
                               "removed": [{"height": gone.height, "hash": gone.hash}]}
    assert [b["block"]["hash"] for b in result["blocks"]] == [replacement["hash"]]
    await eventually(lambda: ("explorer.reorg", None) in got, what="the reorg event")
    assert got[-1 - len(replacement["transactions"]) - 1:] == [("explorer.reorg", None), ("explorer.block", replacement["hash"])] \
        + [("explorer.tx", tx["hash"]) for tx in replacement["transactions"]]
    assert await session.call("explorer.head") == hub.history.newest.data

    with pytest.raises(ApplicationError) as e:
        await session.call("explorer.blocks_since", 5, "0x" + "cd" * 32)
    assert e.value.error == "explorer.error.history_unavailable"
    assert e.value.kwargs == {"oldest_height": blocks[0]["number"] if isinstance(blocks[0]["number"], int)
                              else int(blocks[0]["number"], 16)}
    for args in ([1], ["1", "0x" + "00" * 32], [1, "0x12"], [-1, "0x" + "00" * 32], [True, "0x" + "zz" * 32],
                 [1, "0x" + "00" * 32, 0], [1, "0x" + "00" * 32, 33], [1, "0x" + "00" * 32, 1, 2]):
        with pytest.raises(ApplicationError) as e:
            await session.call("explorer.blocks_since", *args)
        assert e.value.error == "wamp.error.invalid_argument"
    with pytest.raises(ApplicationError) as e:
        await session.call("explorer.nothing")
    assert e.value.error == "wamp.error.no_such_procedure"
    with pytest.raises(ApplicationError) as e:
        await session.register(lambda: None, "explorer.mine")
    assert e.value.error == "wamp.error.not_authorized"

    await sub.unsubscribe()
    before = len(got)
    after = dict(mainnet_run()[3], parentHash=replacement["hash"])  # on the new branch
    broadcast(hub, [after])
    await eventually(lambda: len(wild) > len(want) + 2, what="events for the other subscription")
    assert len(got) == before
    await python_leave(session)
    await eventually(lambda: hub.connectionCount == 0, what="the session gone")
    broker = daemon.service.broker
    assert broker.sessionCount == 0 and broker._subscriptions == {} and broker._held == 0


# ---------------------------------------------------------------------------
# Protocol errors, with raw frames.

async def expect_abort(client, reason, code):
    message = await client.next()
    assert message[0] == ABORT and message[2] == reason, message
    closed_code, _ = await client.closed
    assert closed_code == code
    return message


@pytest_twisted.ensureDeferred
async def test_protocol_errors_end_only_that_session(start_daemon):
    daemon = await start_daemon()
    url = wamp_url(daemon)
    bystander = await python_client(url)
    got = []
    await bystander.subscribe(lambda data: got.append(data["hash"]), "explorer.block")

    # A message before HELLO.
    c = await raw_wamp(url)
    c.send_json([SUBSCRIBE, 1, {}, "explorer.block"])
    abort = await expect_abort(c, "wamp.error.protocol_violation", 1002)
    assert "before HELLO" in abort[1]["message"]

    # A second HELLO.
    c, welcome = await raw_join(url)
    assert welcome[2]["roles"]["broker"]["features"]["pattern_based_subscription"] is True
    assert "dealer" in welcome[2]["roles"]
    c.send_json([HELLO, "explorer", {"roles": {"subscriber": {}}}])
    await expect_abort(c, "wamp.error.protocol_violation", 1002)

    # Garbage, an unknown message type, a router's message, a malformed one, a binary frame.
    for bad in (b"this is not json", b"[999, 1, 2]", b'[36, 1, 2, {}, ["x"]]', b"[32, 1]",
                b'{"not": "a list"}', b"[]", b'[32, 1, {"match": "fuzzy"}, "explorer.block"]'):
        c, _ = await raw_join(url)
        c.sendMessage(bad)
        await expect_abort(c, "wamp.error.protocol_violation", 1002)
    c, _ = await raw_join(url)
    c.sendMessage(b"[1, 2]", isBinary=True)
    await expect_abort(c, "wamp.error.protocol_violation", 1002)
    # Invalid UTF-8 in a text frame is the WebSocket's business: 1007.
    c, _ = await raw_join(url)
    c.sendMessage(b"\xff\xfe", isBinary=False)
    code, _ = await c.closed
    assert code == 1007

    # Another realm, or no anonymous authentication on offer.
    c = await raw_wamp(url)
    c.send_json([HELLO, "elsewhere", {"roles": {"subscriber": {}}}])
    abort = await expect_abort(c, "wamp.error.no_such_realm", 1000)
    assert "explorer" in abort[1]["message"]
    c = await raw_wamp(url)
    c.send_json([HELLO, "explorer", {"roles": {"subscriber": {}}, "authmethods": ["ticket"], "authid": "x"}])
    await expect_abort(c, "wamp.error.no_auth_method", 1000)

    # Errors that keep the session.
    c, _ = await raw_join(url)
    c.send_json([34, 7, 12345])
    assert await c.next() == [ERROR, 34, 7, {}, "wamp.error.no_such_subscription", ["no subscription 12345"]]
    c.send_json([66, 9, 1])
    assert (await c.next())[4] == "wamp.error.no_such_registration"
    c.send_json([PUBLISH, 10, {"acknowledge": True}, "explorer.block", [{}]])
    assert (await c.next())[:5] == [ERROR, PUBLISH, 10, {}, "wamp.error.not_authorized"]
    c.send_json([REGISTER, 11, {}, "explorer.head"])
    assert (await c.next())[:5] == [ERROR, REGISTER, 11, {}, "wamp.error.not_authorized"]
    c.send_json([CALL, 12, {}, "explorer.head", []])
    assert await c.next() == [RESULT, 12, {}, [None]]
    c.send_json([GOODBYE, {}, "wamp.close.close_realm"])
    assert await c.next() == [GOODBYE, {}, "wamp.close.goodbye_and_out"]
    # After GOODBYE the transport may carry a new session.
    c.send_json([HELLO, "explorer", {"roles": {"caller": {}}}])
    assert (await c.next())[0] == WELCOME
    await c.close()

    # The bystander saw none of it and still gets what is published.
    block = mainnet_run()[0]
    broadcast(daemon.hub, [block])
    await eventually(lambda: got == [block["hash"]], what="the bystander's event")
    errors = daemon.service.broker.metrics.errors
    assert value(errors, "wamp.error.protocol_violation") == 10
    assert value(errors, "wamp.error.no_such_realm") == 1
    await python_leave(bystander)
    await eventually(lambda: daemon.hub.connectionCount == 0, what="every connection gone")
    assert daemon.service.broker.sessionCount == 0


# ---------------------------------------------------------------------------
# One encoding per wire format, the hub's policies.

@pytest_twisted.ensureDeferred
async def test_each_event_is_encoded_once_per_wire_format(start_daemon):
    daemon = await start_daemon()
    hub, broker = daemon.hub, daemon.service.broker
    url = wamp_url(daemon)
    formats = [[JsonSerializer()]] * 3 + [[MsgPackSerializer()]] * 2 + [[CBORSerializer()]] \
        + [[JsonSerializer(batched=True)]] * 2
    sessions = [await python_client(url, serializers=f) for f in formats]
    received = [[] for _ in sessions]
    for s, got in zip(sessions, received):
        await s.subscribe(lambda data, got=got: got.append(("block", data["hash"])), "explorer.block")
        await s.subscribe(lambda data, got=got: got.append(("tx", data["hash"])), "explorer.tx")
    raw, _ = await raw_join(url)
    raw.send_json([SUBSCRIBE, 1, {}, "explorer.tx"])
    assert (await raw.next())[0] == SUBSCRIBED

    payloads = {}
    deliver = hub.deliver

    def spy(client, payload, count, kind):
        if kind in ("wamp_block", "wamp_tx"):
            payloads.setdefault((kind, client.protocol._serializer.SERIALIZER_ID), set()).add(id(payload))
        return deliver(client, payload, count, kind)

    hub.deliver = spy
    block = mainnet_run()[0]
    n = len(block["transactions"])
    broadcast(hub, [block])
    want = [("block", block["hash"])] + [("tx", tx["hash"]) for tx in block["transactions"]]
    await eventually(lambda: all(len(got) == len(want) for got in received), what="every session's events")
    assert all(got == want for got in received)
    txs = [await raw.next() for _ in range(n)]
    assert [m[0] for m in txs] == [EVENT] * n and [m[4][0]["hash"] for m in txs] == [w[1] for w in want[1:]]
    assert len({m[2] for m in txs}) == n, "one publication id per transaction"

    # One payload object per (event kind, wire format), shared by every subscriber.
    assert all(len(ids) == 1 for ids in payloads.values()), payloads
    encodings = broker.metrics.encodings
    for ser in ("json", "msgpack", "cbor", "json.batched"):
        assert value(encodings, ser) == 1 + n
    assert value(encodings, "msgpack.batched") == 0
    assert value(broker.metrics.events, "explorer.tx") == n * (len(sessions) + 1)
    hub.deliver = deliver
    for s in sessions:
        await python_leave(s)
    await raw.close()


@pytest_twisted.ensureDeferred
async def test_origin_rate_limit_and_one_connection_cap_for_raw_and_wamp(start_daemon):
    daemon = await start_daemon(max_connections=2, rate_limit=5, cors_origins="https://ok.example")
    url = wamp_url(daemon)
    assert await in_thread(handshake_status, url, origin="https://evil.example") == 403
    raw = await connect(daemon.url)
    session = await python_client(url)
    assert daemon.hub.connectionCount == 2
    # The cap counts both kinds: neither gets in.
    assert await in_thread(handshake_status, url) == 503
    assert await in_thread(handshake_status, daemon.url) == 503
    await python_leave(session)
    await eventually(lambda: daemon.hub.connectionCount == 1, what="the WAMP slot back")
    # Admitted, but no WAMP subprotocol offered: 400, and the slot is given back.
    assert await in_thread(handshake_status, url) == 400
    await eventually(lambda: daemon.hub.connectionCount == 1, what="the refused slot back")
    # Five new connections a minute from one address, whatever the path (refusals for
    # capacity happen when the connection is accepted and take no token).
    for _ in range(2):  # tokens 4 and 5 of 5: raw, session and the first 400 took three
        assert await in_thread(handshake_status, url) == 400
        await eventually(lambda: daemon.hub.connectionCount == 1, what="the refused slot back")
    assert await in_thread(handshake_status, url) == 429
    await raw.close()
    refused = daemon.service.metrics.connections_refused
    assert value(refused, "origin") == 1 and value(refused, "capacity") == 2 and value(refused, "rate_limit") == 1


@pytest_twisted.ensureDeferred
async def test_a_wamp_client_that_stops_reading_is_closed_and_nobody_else_waits(start_daemon):
    daemon = await start_daemon(send_queue=8)
    hub = daemon.hub
    url = wamp_url(daemon)
    healthy = await python_client(url)
    got = []
    await healthy.subscribe(lambda data: got.append(data["hash"]), "explorer.tx")
    slow, _ = await raw_join(url)
    slow.send_json([SUBSCRIBE, 1, {}, "explorer.tx"])
    assert (await slow.next())[0] == SUBSCRIBED
    constrain(slow, hub)
    slow.transport.pauseProducing()
    blocks = mainnet_run()[:6]
    rounds = sent = 0
    while hub.clientCount == 2:
        rounds += 1
        assert rounds < 100, "the slow WAMP client was never closed"
        block = blocks[rounds % len(blocks)]
        broadcast(hub, [block])
        sent += len(block["transactions"])
        await eventually(lambda: len(got) == sent, what="the healthy session's events")
    assert value(hub.metrics.errors, "slow_client") == 1
    assert daemon.service.broker.sessionCount == 1
    slow.transport.resumeProducing()
    code, reason = await slow.closed
    assert code == 1008 and reason.startswith("too slow")
    await python_leave(healthy)


@pytest_twisted.ensureDeferred
async def test_a_wamp_flood_is_closed_by_the_message_budget(start_daemon):
    daemon = await start_daemon()
    url = wamp_url(daemon)
    bystander, _ = await raw_join(url)
    flooder, _ = await raw_join(url)
    for i in range(200):
        flooder.send_json([CALL, i + 1, {}, "explorer.head", []])
    code, reason = await flooder.closed
    assert code == 1008 and reason.startswith("too many messages")
    assert len(flooder.received) < 70, "answered past its budget"
    assert daemon.hub.metrics.errors.labels("message_budget")._value.get() == 1
    bystander.send_json([CALL, 1, {}, "explorer.head", []])
    assert await bystander.next() == [RESULT, 1, {}, [None]]
    await bystander.close()


@pytest_twisted.ensureDeferred
async def test_the_sweep_pings_wamp_clients_and_drops_the_silent(start_daemon):
    daemon = await start_daemon(ping_interval=30, pong_timeout=60)
    url = wamp_url(daemon)
    lively, _ = await raw_join(url)
    silent = await raw_wamp(url)
    silent.answer_pings = False
    silent.send_json([HELLO, "explorer", {"roles": {"subscriber": {}}}])
    assert (await silent.next())[0] == WELCOME
    assert daemon.service.broker.sessionCount == 2
    for t in (1, 2, 3):
        daemon.clock.advance(30)
        if t < 3:
            await eventually(lambda: lively.pings == t and silent.pings == t, what=f"ping round {t}")
    await silent.closed
    assert daemon.hub.clientCount == 1 and daemon.service.broker.sessionCount == 1
    lively.send_json([CALL, 1, {}, "explorer.head", []])
    assert await lively.next() == [RESULT, 1, {}, [None]]
    await lively.close()


@pytest_twisted.ensureDeferred
async def test_shutdown_says_goodbye_then_1001(start_daemon):
    daemon = await start_daemon()
    url = wamp_url(daemon)
    session = await python_client(url)
    raw, _ = await raw_join(url)
    stopping = daemon.service.stopService()
    assert await raw.next() == [GOODBYE, {"message": "server shutting down"}, "wamp.close.system_shutdown"]
    code, reason = await raw.closed
    assert (code, reason) == (1001, "server shutting down")
    await session.factory_.gone
    assert session.left.reason == "wamp.close.system_shutdown"
    await stopping


@pytest_twisted.ensureDeferred
async def test_wamp_churn_leaves_nothing_behind(start_daemon):
    daemon = await start_daemon(max_connections=100)
    hub, broker = daemon.hub, daemon.service.broker
    url = wamp_url(daemon)
    block = mainnet_run()[1]
    refs = []
    for round_ in range(4):
        clients = await defer.gatherResults([defer.ensureDeferred(raw_join(url)) for _ in range(20)])
        clients = [c for c, _ in clients]
        for i, c in enumerate(clients):
            c.send_json([SUBSCRIBE, 1, {"match": "prefix"} if i % 3 else {}, "explorer." if i % 3 else "explorer.tx"])
        for c in clients:
            assert (await c.next())[0] == SUBSCRIBED
        if round_ == 0:
            refs = [weakref.ref(s) for s in broker._sessions.values()]
            refs += [weakref.ref(p) for p in hub.slots.protocols]
        broadcast(hub, [block])
        for i, c in enumerate(clients):
            if i % 2:
                c.transport.abortConnection()
            else:
                c.sendClose(1000)
        await eventually(lambda: hub.connectionCount == 0, what="every connection released")
    assert broker.sessionCount == 0 and broker._subscriptions == {} and broker._by_id == {}
    assert all(subs == [] for subs in broker._by_topic.values())
    assert value(broker.metrics.sessions) == 0 and value(broker.metrics.subscriptions) == 0
    del clients, c
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert alive == [], f"{len(alive)} sessions or protocols still referenced"


@pytest_twisted.ensureDeferred
async def test_metrics_and_healthz_count_wamp(start_daemon):
    import treq

    daemon = await start_daemon()
    session = await python_client(wamp_url(daemon))
    await session.subscribe(lambda data: None, "explorer.block")
    await session.call("explorer.head")
    from twisted.internet import reactor
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        text = await treq.text_content(await treq.get(daemon.http + "/metrics", pool=pool, timeout=5))
        health = await treq.json_content(await treq.get(daemon.http + "/healthz", pool=pool, timeout=5))
    finally:
        await pool.closeCachedConnections()
    assert "explorer_wamp_sessions 1.0" in text
    assert "explorer_wamp_subscriptions 1.0" in text
    assert 'explorer_wamp_calls_total{outcome="ok",procedure="explorer.head"} 1.0' in text
    assert 'explorer_websocket_messages_sent_total{type="wamp_welcome"} 1.0' in text
    assert health["wamp_sessions"] == 1 and health["clients"] == 1
    await python_leave(session)


# ---------------------------------------------------------------------------
# Settings.

def test_wamp_settings():
    c = Config.load({}, {})
    assert (c.wamp_realm, c.source, c.wamp_router) == ("explorer", "node", "")
    c = Config.load({"EXPLORERD_WAMP_REALM": "com.example", "EXPLORERD_WAMP_ROUTER_TICKET": "s3cret"},
                    {"wamp-router": "ws://127.0.0.1:8088/ws", "source": "wamp"})
    assert (c.wamp_realm, c.wamp_router, c.source) == ("com.example", "ws://127.0.0.1:8088/ws", "wamp")
    assert "s3cret" not in repr(c)
    for env, options, text in [
        ({"EXPLORERD_SOURCE": "wamp"}, {}, "EXPLORERD_WAMP_ROUTER"),
        ({}, {"wamp-router": "http://x"}, "invalid --wamp-router='http://x'"),
        ({}, {"wamp-realm": "bad realm"}, "invalid --wamp-realm"),
        ({}, {"source": "carrier-pigeon"}, "invalid --source"),
        ({"EXPLORERD_RPC_URL": "http://127.0.0.1:8545"}, {"source": "wamp", "wamp-router": "ws://h:1/ws"},
         "EXPLORERD_RPC_URL"),
    ]:
        with pytest.raises(ConfigError) as e:
            Config.load(env, options)
        assert text in str(e.value)


# ---------------------------------------------------------------------------
# The router publisher and the edge, without a router (see test_crossbar.py for one).

def wire(hub, block):
    """What the tail publishes for a block: (topic, data) events, through its own hub."""
    seen = recorder(hub) if not hasattr(hub, "_wire") else hub._wire
    hub._wire = seen
    start = len(seen)
    broadcast(hub, [block])
    return seen[start:]


class FakeSession:
    """A joined router session for the edge: calls are answered by the tail's procedures."""

    def __init__(self, procedures):
        self.procedures = procedures
        self.calls = []
        self.fail_with = None

    def call(self, procedure, *args, **kwargs):
        self.calls.append((procedure, args))
        if self.fail_with is not None:
            return defer.fail(ApplicationError(self.fail_with, "no"))
        try:
            return defer.succeed(self.procedures.call(procedure, args, kwargs))
        except ApplicationError as e:
            return defer.fail(e)


class Details:
    def __init__(self, topic):
        self.topic = topic


def chain(n):
    """n consecutive mainnet blocks, trimmed to three transactions each."""
    blocks = [copy.deepcopy(b) for b in mainnet_run()[:n]]
    for b in blocks:
        b["transactions"] = b["transactions"][:3]
    return blocks


def child(parent, tag, template=None):
    """A block on top of C{parent} (JSON-RPC shape), hash made of C{tag}."""
    block = copy.deepcopy(template or parent)
    number = int(parent["number"], 16) if isinstance(parent["number"], str) else parent["number"]
    block.update(number=hex(number + 1), parentHash=parent["hash"], hash="0x" + tag * 32)
    for tx in block["transactions"]:
        tx["blockHash"], tx["blockNumber"] = block["hash"], block["number"]
    return block


def make_hubs():
    from twisted.internet import reactor
    from twisted.internet.task import Clock

    from explorerd.hub import Hub
    from explorerd.metrics import Metrics
    from explorerd.wamp import Procedures
    from explorerd.wampclient import EdgeSource

    config = Config.defaults(source="wamp", wamp_router="ws://127.0.0.1:1/ws")
    tail = Hub(Clock(), config, Metrics())
    edge_hub = Hub(Clock(), config, Metrics())
    edge = EdgeSource(reactor, edge_hub, config, edge_hub.metrics.registry)
    session = FakeSession(Procedures(tail.history))
    edge._session = session
    return tail, edge_hub, edge, session


def feed(edge, events):
    for topic, data in events:
        edge._onEvent(data, Details(topic))


def hashes(hub):
    return [e.hash for e in hub.history.after(0)]


def test_the_edge_rebuilds_whole_blocks_and_fills_gaps_from_the_tail():
    tail, hub, edge, session = make_hubs()
    out = recorder(hub)
    blocks = chain(6)
    events = [wire(tail, b) for b in blocks[:2]]
    feed(edge, events[0] + events[1])
    assert hashes(hub) == hashes(tail) and out == events[0] + events[1] and session.calls == []
    # Block 2 is lost on the way: block 3 does not follow, the edge asks the tail, and all is in order.
    events += [wire(tail, b) for b in blocks[2:4]]
    feed(edge, events[3])
    assert session.calls == [("explorer.blocks_since", (tail.history.after(0)[1].height, blocks[1]["hash"]))]
    assert hashes(hub) == hashes(tail)
    assert out == [e for ev in events for e in ev]
    # Joined in the middle of a block: its stray transactions are dropped; the next block catches up.
    events.append(wire(tail, blocks[4]))
    feed(edge, events[4][1:])
    assert len(hub.history) == 4
    events.append(wire(tail, blocks[5]))
    feed(edge, events[5])
    assert hashes(hub) == hashes(tail)
    # A duplicate (the catch-up brought it first) is ignored.
    feed(edge, events[5])
    assert out == [e for ev in events for e in ev]
    assert edge.metrics.resyncs.labels("ok")._value.get() == 2
    assert edge.metrics.discarded.labels("orphan_tx")._value.get() == 3


def test_the_edge_follows_reorgs_pages_and_accepts_a_gap_it_cannot_fill(monkeypatch):
    tail, hub, edge, session = make_hubs()
    out = recorder(hub)
    blocks = chain(4)
    for b in blocks:
        feed(edge, wire(tail, b))
    # A reorg on the tail replaces the last two blocks; the edge tells its clients the same.
    start = len(tail._wire)
    ancestor = tail.history.after(0)[1]
    tail.publishReorg(2, ancestor.ref(), [e.ref() for e in tail.history.after(ancestor.height)])
    r3 = child(blocks[1], "a1", template=blocks[2])
    r4 = child(r3, "a2", template=blocks[3])
    broadcast(tail, [r3, r4])
    feed(edge, tail._wire[start:])
    assert hashes(hub) == hashes(tail) == [b["hash"] for b in blocks[:2] + [r3, r4]]
    assert out == tail._wire
    assert edge.metrics.reorgs._value.get() == 1

    # Three blocks lost; the catch-up comes one block per answer.
    monkeypatch.setattr("explorerd.wamp.MAX_BLOCKS_SINCE", 1)
    b5 = child(r4, "b1")
    b6 = child(b5, "b2")
    b7 = child(b6, "b3")
    wire(tail, b5)
    wire(tail, b6)
    session.calls.clear()
    feed(edge, wire(tail, b7))
    assert len(session.calls) == 3, "one block per answer, then more"
    assert hashes(hub) == hashes(tail) and out == tail._wire

    # The tail cannot answer: the next block that does not follow asks again;
    # history_unavailable means a gap.
    session.fail_with = "wamp.error.no_such_procedure"
    lost = child(b7, "c0")
    b9 = child(lost, "c1")
    feed(edge, wire(tail, b9))
    assert hub.history.newest.hash == b7["hash"]
    b10 = child(b9, "c2")
    session.fail_with = "explorer.error.history_unavailable"
    feed(edge, wire(tail, b10))
    assert hub.history.newest.hash == b10["hash"], "a gap it is"
    assert edge.metrics.discarded.labels("unlinked")._value.get() == 1  # b9, while the tail was away
    assert edge.metrics.resyncs.labels("unavailable")._value.get() == 1
    assert edge.metrics.resyncs.labels("failed")._value.get() == 1

    # A reorg the edge missed, and the tail cannot say what it was: the next
    # block is at the next height but not b10's child.  A gap too: the edge's
    # history starts over from it (it must not link across).
    tail.publishReorg(1, tail.history.canonical(b9["hash"]).ref(), [tail.history.newest.ref()])
    d0 = child(b9, "d0")
    wire(tail, d0)
    d1 = child(d0, "d1")
    feed(edge, wire(tail, d1))
    assert hub.history.newest.hash == d1["hash"] and len(hub.history) == 1
    assert [data["hash"] for topic, data in out if topic == "explorer.block"][-1] == d1["hash"]
    assert edge.metrics.discarded.labels("invalid")._value.get() == 0
    assert edge.metrics.resyncs.labels("unavailable")._value.get() == 2


def test_the_publisher_drops_whole_batches_while_the_router_is_away():
    from twisted.internet import reactor
    from twisted.internet.task import Clock

    from explorerd.hub import Hub
    from explorerd.metrics import Metrics
    from explorerd.wampclient import RouterPublisher

    config = Config.defaults(wamp_router="ws://127.0.0.1:1/ws")
    hub = Hub(Clock(), config, Metrics())
    publisher = RouterPublisher(reactor, hub, config, hub.metrics.registry)
    published = []

    class Session:
        def is_attached(self):
            return True

        def publish(self, topic, data):
            published.append(topic)

    block = chain(1)[0]
    broadcast(hub, [block])  # not joined: dropped
    publisher._session = Session()
    broadcast(hub, [block | {"hash": "0x" + "d1" * 32}])
    publisher._flow.paused = True  # the router is not reading
    broadcast(hub, [block | {"hash": "0x" + "d2" * 32}])
    m = publisher.metrics
    assert published == ["explorer.block"] + ["explorer.tx"] * 3
    assert m.dropped.labels("explorer.block")._value.get() == 2 and m.dropped.labels("explorer.tx")._value.get() == 6
