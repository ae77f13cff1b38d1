"""
The WAMP broker at /v1/wamp: AutobahnJS (node) and autobahn-python clients
against the live-tail, raw WAMP frames for the protocol errors, and the
hub's admission, connection cap, slow-client policy and ping sweep applied
to WAMP sessions.

Each test checks one step; the set-up that brings a daemon or an edge to
that step is shared (fixtures, and the L{EdgeStory} steps), so a failure
names the step that broke.
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
from tests.metricvalues import sample
from tests.observers import recorder
from tests.test_fanout import constrain
from tests.wamp.harness import node_client, python_client, python_leave, raw_join, raw_wamp

HELLO, WELCOME, ABORT, GOODBYE, ERROR = 1, 2, 3, 6, 8
PUBLISH, SUBSCRIBE, SUBSCRIBED, EVENT, CALL, RESULT, REGISTER = 16, 32, 33, 36, 48, 50, 64
TOPICS = ("explorer.block", "explorer.tx", "explorer.reorg", "explorer.log")


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


def metric(daemon, name, **labels):
    """A sample of the daemon's /metrics, by name and labels."""
    return sample(daemon.service.metrics.registry, name, **labels)


# ---------------------------------------------------------------------------
# AutobahnJS.

@pytest_twisted.async_yield_fixture
async def js_client():
    """C{await js_client(url, ...)} → an AutobahnJS client in node; every one is stopped at the end."""
    started = []

    async def start(url, **kwargs):
        js = await node_client(url, **kwargs)
        started.append(js)
        return js

    yield start
    for js in started:
        await js.stop()


@pytest.fixture(params=["json", "msgpack", "cbor"])
def serializer(request):
    return request.param


class TailedJS:
    """A daemon tailing the embedded node, an AutobahnJS client of it, and what its hub published."""

    def __init__(self, daemon, js, seen):
        self.daemon = daemon
        self.js = js
        self.seen = seen

    async def subscribeAll(self):
        for topic in TOPICS:
            assert (await self.js.command("subscribe", topic=topic))["ok"], topic


@pytest_twisted.async_yield_fixture
async def tailed_js(start_daemon, js_client, serializer):
    daemon = await start_daemon(with_tail=True)
    await daemon.service.tail.whenIdle()
    seen = recorder(daemon.hub)
    js = await js_client(wamp_url(daemon), serializer=serializer)
    yield TailedJS(daemon, js, seen)
    await js.stop()
    await eventually(lambda: daemon.hub.connectionCount == 0, what="the node client gone")


@pytest_twisted.ensureDeferred
async def test_autobahnjs_joins_the_realm_as_anonymous(tailed_js, serializer):
    joined = await tailed_js.js.joined()
    assert joined["protocol"] == f"wamp.2.{serializer}"
    assert joined["details"]["realm"] == "explorer" and joined["details"]["authrole"] == "anonymous"


@pytest_twisted.ensureDeferred
async def test_autobahnjs_gets_the_live_tail_in_order(tailed_js):
    js, seen, daemon = tailed_js.js, tailed_js.seen, tailed_js.daemon
    await js.joined()
    await tailed_js.subscribeAll()
    await mine(daemon, 3)
    assert len(seen) > 3
    await js.until(lambda: len(js.events) >= len(seen), what=f"{len(seen)} events")
    assert [(e["topic"], e["args"][0]) for e in js.events] == seen
    assert sum(1 for topic, _ in seen if topic == "explorer.tx") > 100  # real mainnet blocks


@pytest_twisted.ensureDeferred
async def test_autobahnjs_calls_explorer_head(tailed_js):
    js, daemon = tailed_js.js, tailed_js.daemon
    await js.joined()
    await mine(daemon, 3)
    head = await js.command("call", procedure="explorer.head")
    assert head["ok"] and head["result"] == daemon.hub.history.newest.data


@pytest_twisted.ensureDeferred
async def test_autobahnjs_calls_explorer_blocks_since(tailed_js):
    js, daemon = tailed_js.js, tailed_js.daemon
    await js.joined()
    await mine(daemon, 3)
    newest = daemon.hub.history.newest
    since = await js.command("call", procedure="explorer.blocks_since", args=[newest.height - 1,
                             daemon.hub.history.after(newest.height - 2)[0].hash])
    assert since["result"] == {"reorg": None, "blocks": [{"block": newest.data, "txs": newest.txs_data,
                                                          "logs": newest.logs}],
                               "more": False}


@pytest_twisted.ensureDeferred
async def test_autobahnjs_may_not_publish_or_register(tailed_js):
    js, daemon = tailed_js.js, tailed_js.daemon
    await js.joined()
    refused = await js.command("publish", topic="explorer.block", args=[{"height": 1}],
                               options={"acknowledge": True})
    assert not refused["ok"] and refused["error"] == "wamp.error.not_authorized"
    registered = await js.command("register", procedure="explorer.head")
    assert not registered["ok"] and registered["error"] == "wamp.error.not_authorized"
    assert metric(daemon, "explorer_wamp_errors_total", error="publish_refused") == 1


@pytest_twisted.ensureDeferred
async def test_an_unacknowledged_publish_is_dropped_silently_and_the_session_goes_on(tailed_js):
    js, daemon = tailed_js.js, tailed_js.daemon
    await js.joined()
    await tailed_js.subscribeAll()
    # Not even its publisher's own subscription sees it.
    before = len(js.events)
    assert (await js.command("publish", topic="explorer.block", args=[{"height": 1}]))["ok"]
    assert (await js.command("call", procedure="explorer.head"))["ok"]
    assert len(js.events) == before
    assert metric(daemon, "explorer_wamp_errors_total", error="publish_refused") == 1


@pytest_twisted.ensureDeferred
async def test_an_autobahnjs_client_that_goes_leaves_no_session(tailed_js):
    js, daemon = tailed_js.js, tailed_js.daemon
    await js.joined()
    await js.stop()
    await eventually(lambda: daemon.hub.connectionCount == 0, what="the node client gone")
    assert daemon.service.broker.sessionCount == 0


@pytest.mark.needs_node  # AutobahnJS from tests/node
@pytest_twisted.ensureDeferred
async def test_autobahnjs_in_the_wrong_realm_is_refused(start_daemon, js_client):
    daemon = await start_daemon(wamp_realm="com.example.chain")
    js = await js_client(wamp_url(daemon), realm="explorer")
    await js.until(lambda: any(l["type"] == "closed" for l in js.lines), what="the refusal")
    closed = next(l for l in js.lines if l["type"] == "closed")
    assert closed["details"]["reason"] == "wamp.error.no_such_realm"


@pytest_twisted.ensureDeferred
async def test_autobahnjs_prefix_subscription_in_a_realm_of_its_own(start_daemon, js_client):
    daemon = await start_daemon(wamp_realm="com.example.chain")
    js = await js_client(wamp_url(daemon), realm="com.example.chain")
    await js.joined()
    assert (await js.command("subscribe", topic="explorer.", options={"match": "prefix"}))["ok"]
    block = mainnet_run()[3]  # 5 transactions? whatever it has
    broadcast(daemon.hub, [block])
    n = 1 + len(block["transactions"])
    await js.until(lambda: len(js.events) >= n)
    assert js.events[0]["topic"] == "explorer.block" and js.events[0]["args"][0]["hash"] == block["hash"]
    assert [e["args"][0]["hash"] for e in js.events[1:]] == [tx["hash"] for tx in block["transactions"]]
    assert {e["topic"] for e in js.events[1:]} == {"explorer.tx"}


@pytest_twisted.ensureDeferred
async def test_autobahnjs_subscribing_to_no_topic_is_an_error(start_daemon, js_client):
    daemon = await start_daemon(wamp_realm="com.example.chain")
    js = await js_client(wamp_url(daemon), realm="com.example.chain")
    await js.joined()
    missing = await js.command("subscribe", topic="explorer.blocks")
    assert missing["error"] == "explorer.error.no_such_topic"


# ---------------------------------------------------------------------------
# autobahn-python.

def reorged(block, new_hash):
    other = copy.deepcopy(block)
    other["hash"] = new_hash
    for tx in other["transactions"]:
        tx["blockHash"] = new_hash
    return other


class PythonSession:
    """
    An autobahn-python session with a prefix and a wildcard subscription to
    C{explorer.}, after three mainnet blocks went out to it.
    """

    def __init__(self, daemon, session, blocks, sub, got, wild):
        self.daemon = daemon
        self.hub = daemon.hub
        self.session = session
        self.blocks = blocks
        self.sub = sub  # the prefix subscription, which records into got
        self.got = got
        self.wild = wild
        self.want = []
        for b in blocks:
            self.want.append(("explorer.block", b["hash"]))
            self.want.extend(("explorer.tx", tx["hash"]) for tx in b["transactions"])

    def reorgTheLastBlock(self):
        """The last block is orphaned and replaced; returns (the orphan's entry, the replacement)."""
        hub, blocks = self.hub, self.blocks
        gone = hub.history.newest
        hub.publishReorg(1, {"height": gone.height - 1, "hash": blocks[1]["hash"]}, [gone.ref()])
        replacement = reorged(blocks[2], "0x" + "ab" * 32)
        broadcast(hub, [replacement])
        return gone, replacement


@pytest_twisted.async_yield_fixture
async def py_session(start_daemon):
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
    state = PythonSession(daemon, session, blocks, sub, got, wild)
    await eventually(lambda: len(got) == len(state.want) and len(wild) == len(state.want), what="every event")
    yield state
    await python_leave(session)


@pytest_twisted.ensureDeferred
async def test_prefix_and_wildcard_subscriptions_get_every_event_in_order(py_session):
    assert py_session.got == py_session.want and py_session.wild == py_session.want


@pytest_twisted.ensureDeferred
async def test_blocks_since_the_first_block_gives_the_two_after_it(py_session):
    hub, blocks, session = py_session.hub, py_session.blocks, py_session.session
    first = hub.history.after(0)[0]
    result = await session.call("explorer.blocks_since", first.height, first.hash)
    assert result["reorg"] is None
    assert [b["block"]["hash"] for b in result["blocks"]] == [b["hash"] for b in blocks[1:]]
    assert [len(b["txs"]) for b in result["blocks"]] == [len(b["transactions"]) for b in blocks[1:]]
    assert result["blocks"][0]["txs"][0] == hub.history.canonical(blocks[1]["hash"]).txs_data[0]
    assert result["more"] is False


@pytest_twisted.ensureDeferred
async def test_blocks_since_by_keyword_with_an_uppercase_hash(py_session):
    hub, session = py_session.hub, py_session.session
    first = hub.history.after(0)[0]
    result = await session.call("explorer.blocks_since", first.height, first.hash)
    by_name = await session.call("explorer.blocks_since", height=first.height, hash=first.hash.upper().replace("0X", "0x"))
    assert by_name == result


@pytest_twisted.ensureDeferred
async def test_blocks_since_pages_with_a_limit(py_session):
    hub, session = py_session.hub, py_session.session
    first = hub.history.after(0)[0]
    result = await session.call("explorer.blocks_since", first.height, first.hash)
    page = await session.call("explorer.blocks_since", first.height, first.hash, limit=1)
    assert page["blocks"] == result["blocks"][:1] and page["more"] is True


@pytest_twisted.ensureDeferred
async def test_blocks_since_an_orphan_names_the_reorg_then_the_new_branch(py_session):
    blocks, session = py_session.blocks, py_session.session
    gone, replacement = py_session.reorgTheLastBlock()
    result = await session.call("explorer.blocks_since", gone.height, gone.hash)
    assert result["reorg"] == {"depth": 1, "common_ancestor": {"height": gone.height - 1, "hash": blocks[1]["hash"]},
                               "removed": [{"height": gone.height, "hash": gone.hash}]}
    assert [b["block"]["hash"] for b in result["blocks"]] == [replacement["hash"]]


@pytest_twisted.ensureDeferred
async def test_a_reorg_reaches_subscribers_before_the_new_branch(py_session):
    got, session, hub = py_session.got, py_session.session, py_session.hub
    _, replacement = py_session.reorgTheLastBlock()
    await eventually(lambda: ("explorer.reorg", None) in got, what="the reorg event")
    await eventually(lambda: len(got) == len(py_session.want) + 2 + len(replacement["transactions"]),
                     what="the new branch's events")
    assert got[-1 - len(replacement["transactions"]) - 1:] == [("explorer.reorg", None), ("explorer.block", replacement["hash"])] \
        + [("explorer.tx", tx["hash"]) for tx in replacement["transactions"]]
    assert await session.call("explorer.head") == hub.history.newest.data


@pytest_twisted.ensureDeferred
async def test_blocks_since_an_unknown_block_is_history_unavailable(py_session):
    blocks, session = py_session.blocks, py_session.session
    with pytest.raises(ApplicationError) as e:
        await session.call("explorer.blocks_since", 5, "0x" + "cd" * 32)
    assert e.value.error == "explorer.error.history_unavailable"
    assert e.value.kwargs == {"oldest_height": blocks[0]["number"] if isinstance(blocks[0]["number"], int)
                              else int(blocks[0]["number"], 16)}


@pytest.mark.parametrize("args", [
    [1], ["1", "0x" + "00" * 32], [1, "0x12"], [-1, "0x" + "00" * 32], [True, "0x" + "zz" * 32],
    [1, "0x" + "00" * 32, 0], [1, "0x" + "00" * 32, 33], [1, "0x" + "00" * 32, 1, 2]],
    ids=["no-hash", "height-a-string", "short-hash", "negative-height", "bool-height", "limit-0", "limit-33",
         "too-many"])
@pytest_twisted.ensureDeferred
async def test_blocks_since_with_invalid_arguments_is_invalid_argument(py_session, args):
    with pytest.raises(ApplicationError) as e:
        await py_session.session.call("explorer.blocks_since", *args)
    assert e.value.error == "wamp.error.invalid_argument"


@pytest_twisted.ensureDeferred
async def test_an_unknown_procedure_and_a_register_are_refused(py_session):
    session = py_session.session
    with pytest.raises(ApplicationError) as e:
        await session.call("explorer.nothing")
    assert e.value.error == "wamp.error.no_such_procedure"
    with pytest.raises(ApplicationError) as e:
        await session.register(lambda: None, "explorer.mine")
    assert e.value.error == "wamp.error.not_authorized"


@pytest_twisted.ensureDeferred
async def test_an_unsubscribed_subscription_gets_nothing_more(py_session):
    hub, got, wild = py_session.hub, py_session.got, py_session.wild
    await py_session.sub.unsubscribe()
    before = len(got)
    after = mainnet_run()[3]  # the next block
    broadcast(hub, [after])
    await eventually(lambda: len(wild) > len(py_session.want) + 2, what="events for the other subscription")
    assert len(got) == before


@pytest_twisted.ensureDeferred
async def test_a_python_session_that_leaves_leaves_nothing_in_the_broker(py_session):
    hub = py_session.hub
    await python_leave(py_session.session)
    await eventually(lambda: hub.connectionCount == 0, what="the session gone")
    broker = py_session.daemon.service.broker
    assert broker.sessionCount == 0 and broker._subscriptions == {} and broker._held == 0


# ---------------------------------------------------------------------------
# Protocol errors, with raw frames.

async def expect_abort(client, reason, code):
    message = await client.next()
    assert message[0] == ABORT and message[2] == reason, message
    closed_code, _ = await client.closed
    assert closed_code == code
    return message


async def message_before_hello(url):
    c = await raw_wamp(url)
    c.send_json([SUBSCRIBE, 1, {}, "explorer.block"])
    abort = await expect_abort(c, "wamp.error.protocol_violation", 1002)
    assert "before HELLO" in abort[1]["message"]


async def second_hello(url):
    c, _ = await raw_join(url)
    c.send_json([HELLO, "explorer", {"roles": {"subscriber": {}}}])
    await expect_abort(c, "wamp.error.protocol_violation", 1002)


def bad_frame(payload, isBinary=False):
    async def send(url):
        c, _ = await raw_join(url)
        c.sendMessage(payload, isBinary=isBinary)
        await expect_abort(c, "wamp.error.protocol_violation", 1002)

    return send


# Each ends its session with ABORT wamp.error.protocol_violation and close code 1002.
VIOLATIONS = {
    "message-before-hello": message_before_hello,
    "second-hello": second_hello,
    "garbage": bad_frame(b"this is not json"),
    "unknown-type": bad_frame(b"[999, 1, 2]"),
    "a-routers-message": bad_frame(b'[36, 1, 2, {}, ["x"]]'),
    "malformed": bad_frame(b"[32, 1]"),
    "not-a-list": bad_frame(b'{"not": "a list"}'),
    "empty-list": bad_frame(b"[]"),
    "unknown-match": bad_frame(b'[32, 1, {"match": "fuzzy"}, "explorer.block"]'),
    "binary-frame": bad_frame(b"[1, 2]", isBinary=True),
}


async def another_realm(url):
    c = await raw_wamp(url)
    c.send_json([HELLO, "elsewhere", {"roles": {"subscriber": {}}}])
    abort = await expect_abort(c, "wamp.error.no_such_realm", 1000)
    assert "explorer" in abort[1]["message"]


async def no_anonymous_authentication(url):
    c = await raw_wamp(url)
    c.send_json([HELLO, "explorer", {"roles": {"subscriber": {}}, "authmethods": ["ticket"], "authid": "x"}])
    await expect_abort(c, "wamp.error.no_auth_method", 1000)


async def invalid_utf8(url):
    """Invalid UTF-8 in a text frame is the WebSocket's business: 1007."""
    c, _ = await raw_join(url)
    c.sendMessage(b"\xff\xfe", isBinary=False)
    code, _ = await c.closed
    assert code == 1007


@pytest.mark.parametrize("violation", VIOLATIONS.values(), ids=VIOLATIONS.keys())
@pytest_twisted.ensureDeferred
async def test_a_protocol_violation_aborts_the_session(start_daemon, violation):
    daemon = await start_daemon()
    await violation(wamp_url(daemon))
    assert metric(daemon, "explorer_wamp_errors_total", error="wamp.error.protocol_violation") == 1


@pytest_twisted.ensureDeferred
async def test_welcome_offers_pattern_based_subscriptions_and_a_dealer(start_daemon):
    daemon = await start_daemon()
    c, welcome = await raw_join(wamp_url(daemon))
    assert welcome[2]["roles"]["broker"]["features"]["pattern_based_subscription"] is True
    assert "dealer" in welcome[2]["roles"]
    await c.close()


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_in_a_text_frame_is_closed_1007(start_daemon):
    daemon = await start_daemon()
    await invalid_utf8(wamp_url(daemon))


@pytest_twisted.ensureDeferred
async def test_another_realm_is_aborted_naming_ours(start_daemon):
    daemon = await start_daemon()
    await another_realm(wamp_url(daemon))
    assert metric(daemon, "explorer_wamp_errors_total", error="wamp.error.no_such_realm") == 1


@pytest_twisted.ensureDeferred
async def test_a_hello_without_anonymous_authentication_is_aborted(start_daemon):
    daemon = await start_daemon()
    await no_anonymous_authentication(wamp_url(daemon))


@pytest.mark.parametrize("request_, answer", [
    ([34, 7, 12345], [ERROR, 34, 7, {}, "wamp.error.no_such_subscription", ["no subscription 12345"]]),
    ([66, 9, 1], [ERROR, 66, 9, {}, "wamp.error.no_such_registration"]),
    ([PUBLISH, 10, {"acknowledge": True}, "explorer.block", [{}]], [ERROR, PUBLISH, 10, {}, "wamp.error.not_authorized"]),
    ([REGISTER, 11, {}, "explorer.head"], [ERROR, REGISTER, 11, {}, "wamp.error.not_authorized"]),
    ([CALL, 12, {}, "explorer.head", []], [RESULT, 12, {}, [None]]),
], ids=["unsubscribe-unknown", "unregister-unknown", "publish", "register", "call"])
@pytest_twisted.ensureDeferred
async def test_an_error_that_keeps_the_session(start_daemon, request_, answer):
    daemon = await start_daemon()
    c, _ = await raw_join(wamp_url(daemon))
    c.send_json(request_)
    assert (await c.next())[:len(answer)] == answer
    c.send_json([CALL, 99, {}, "explorer.head", []])
    assert await c.next() == [RESULT, 99, {}, [None]]
    await c.close()


@pytest_twisted.ensureDeferred
async def test_after_goodbye_the_transport_may_carry_a_new_session(start_daemon):
    daemon = await start_daemon()
    c, _ = await raw_join(wamp_url(daemon))
    c.send_json([GOODBYE, {}, "wamp.close.close_realm"])
    assert await c.next() == [GOODBYE, {}, "wamp.close.goodbye_and_out"]
    c.send_json([HELLO, "explorer", {"roles": {"caller": {}}}])
    assert (await c.next())[0] == WELCOME
    await c.close()


@pytest_twisted.ensureDeferred
async def test_protocol_errors_end_only_their_own_session(start_daemon):
    daemon = await start_daemon()
    url = wamp_url(daemon)
    bystander = await python_client(url)
    got = []
    await bystander.subscribe(lambda data: got.append(data["hash"]), "explorer.block")
    for violation in VIOLATIONS.values():
        await violation(url)
    await invalid_utf8(url)
    await another_realm(url)
    await no_anonymous_authentication(url)
    # The bystander saw none of it and still gets what is published.
    block = mainnet_run()[0]
    broadcast(daemon.hub, [block])
    await eventually(lambda: got == [block["hash"]], what="the bystander's event")
    assert metric(daemon, "explorer_wamp_errors_total", error="wamp.error.protocol_violation") == 10
    assert metric(daemon, "explorer_wamp_errors_total", error="wamp.error.no_such_realm") == 1
    await python_leave(bystander)
    await eventually(lambda: daemon.hub.connectionCount == 0, what="every connection gone")
    assert daemon.service.broker.sessionCount == 0


# ---------------------------------------------------------------------------
# One encoding per wire format, the hub's policies.

FORMATS = [[JsonSerializer()]] * 3 + [[MsgPackSerializer()]] * 2 + [[CBORSerializer()]] \
    + [[JsonSerializer(batched=True)]] * 2


class Formats:
    """Sessions in every wire format and a raw JSON one, after one block went out to them."""

    def __init__(self, daemon, sessions, received, raw, payloads, block):
        self.daemon = daemon
        self.sessions = sessions
        self.received = received
        self.raw = raw
        self.payloads = payloads  # (event kind, serializer id) → ids of the payloads delivered
        self.block = block
        self.n = len(block["transactions"])
        self.want = [("block", block["hash"])] + [("tx", tx["hash"]) for tx in block["transactions"]]


@pytest_twisted.async_yield_fixture
async def formats(start_daemon, monkeypatch):
    daemon = await start_daemon()
    hub = daemon.hub
    url = wamp_url(daemon)
    sessions = [await python_client(url, serializers=f) for f in FORMATS]
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

    monkeypatch.setattr(hub, "deliver", spy)
    block = mainnet_run()[0]
    broadcast(hub, [block])
    state = Formats(daemon, sessions, received, raw, payloads, block)
    await eventually(lambda: all(len(got) == len(state.want) for got in received), what="every session's events")
    yield state
    monkeypatch.undo()
    for s in sessions:
        await python_leave(s)
    await raw.close()


@pytest_twisted.ensureDeferred
async def test_a_session_in_every_wire_format_gets_the_block_then_its_transactions(formats):
    assert all(got == formats.want for got in formats.received)


@pytest_twisted.ensureDeferred
async def test_each_transaction_is_a_publication_of_its_own(formats):
    n, raw = formats.n, formats.raw
    txs = [await raw.next() for _ in range(n)]
    assert [m[0] for m in txs] == [EVENT] * n and [m[4][0]["hash"] for m in txs] == [w[1] for w in formats.want[1:]]
    assert len({m[2] for m in txs}) == n, "one publication id per transaction"


@pytest_twisted.ensureDeferred
async def test_one_payload_per_event_and_wire_format_is_shared_by_every_subscriber(formats):
    assert all(len(ids) == 1 for ids in formats.payloads.values()), formats.payloads


@pytest_twisted.ensureDeferred
async def test_each_event_is_encoded_once_per_wire_format(formats):
    daemon, n = formats.daemon, formats.n
    for ser in ("json", "msgpack", "cbor", "json.batched"):
        assert metric(daemon, "explorer_wamp_encodings_total", serializer=ser) == 1 + n
    assert metric(daemon, "explorer_wamp_encodings_total", serializer="msgpack.batched") == 0
    assert metric(daemon, "explorer_wamp_events_total", topic="explorer.tx") == n * (len(formats.sessions) + 1)


@pytest_twisted.ensureDeferred
async def test_a_wamp_handshake_from_a_foreign_origin_is_refused(start_daemon):
    daemon = await start_daemon(cors_origins="https://ok.example")
    assert await in_thread(handshake_status, wamp_url(daemon), origin="https://evil.example") == 403
    assert metric(daemon, "explorer_websocket_connections_refused_total", reason="origin") == 1


@pytest_twisted.ensureDeferred
async def test_one_connection_cap_counts_raw_and_wamp(start_daemon):
    daemon = await start_daemon(max_connections=2)
    url = wamp_url(daemon)
    raw = await connect(daemon.url)
    session = await python_client(url)
    assert daemon.hub.connectionCount == 2
    # The cap counts both kinds: neither gets in.
    assert await in_thread(handshake_status, url) == 503
    assert await in_thread(handshake_status, daemon.url) == 503
    assert metric(daemon, "explorer_websocket_connections_refused_total", reason="capacity") == 2
    await python_leave(session)
    await eventually(lambda: daemon.hub.connectionCount == 1, what="the WAMP slot back")
    await raw.close()


@pytest_twisted.ensureDeferred
async def test_no_wamp_subprotocol_is_400_and_gives_the_slot_back(start_daemon):
    daemon = await start_daemon(max_connections=2)
    raw = await connect(daemon.url)
    # Admitted, but no WAMP subprotocol offered: 400, and the slot is given back.
    assert await in_thread(handshake_status, wamp_url(daemon)) == 400
    await eventually(lambda: daemon.hub.connectionCount == 1, what="the refused slot back")
    await raw.close()


@pytest_twisted.ensureDeferred
async def test_the_rate_limit_counts_raw_and_wamp_connections_alike(start_daemon):
    daemon = await start_daemon(max_connections=2, rate_limit=5)
    url = wamp_url(daemon)
    raw = await connect(daemon.url)
    session = await python_client(url)
    # Five new connections a minute from one address, whatever the path (refusals for
    # capacity happen when the connection is accepted and take no token).
    assert await in_thread(handshake_status, url) == 503
    await python_leave(session)
    await eventually(lambda: daemon.hub.connectionCount == 1, what="the WAMP slot back")
    for _ in range(3):  # tokens 3, 4 and 5 of 5: raw and session took two
        assert await in_thread(handshake_status, url) == 400
        await eventually(lambda: daemon.hub.connectionCount == 1, what="the refused slot back")
    assert await in_thread(handshake_status, url) == 429
    await raw.close()
    assert metric(daemon, "explorer_websocket_connections_refused_total", reason="rate_limit") == 1

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
    assert metric(daemon, "explorer_websocket_errors_total", type="slow_client") == 1
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
    assert metric(daemon, "explorer_websocket_errors_total", type="message_budget") == 1
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
    for client in (lively, silent):  # subscribers: a session that holds nothing is closed at 30 s
        client.send_json([SUBSCRIBE, 1, {}, "explorer.block"])
        assert (await client.next())[0] == SUBSCRIBED
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
    assert metric(daemon, "explorer_wamp_sessions") == 0 and metric(daemon, "explorer_wamp_subscriptions") == 0
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
    ]:
        with pytest.raises(ConfigError) as e:
            Config.load(env, options)
        assert text in str(e.value)
    # An edge with a node: /v1/rpc forwards calls to it (blocks still come from the router).
    c = Config.load({"EXPLORERD_RPC_URL": "http://127.0.0.1:8545"}, {"source": "wamp", "wamp-router": "ws://h:1/ws"})
    assert (c.source, c.rpc_url) == ("wamp", "http://127.0.0.1:8545")




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


class EdgeStory:
    """
    A tail's hub, an edge fed what the router would carry from it, and the
    steps of a story told to the edge.  A test takes the steps before the
    one it checks, then checks that one.
    """

    def __init__(self):
        self.tail, self.hub, self.edge, self.session = make_hubs()
        self.out = recorder(self.hub)  # what the edge's own clients get

    def edgeMetric(self, name, **labels):
        return sample(self.hub.metrics.registry, name, **labels)


class GapStory(EdgeStory):
    """Six blocks, of which the router loses one, then half of another, then repeats one."""

    def __init__(self):
        super().__init__()
        self.blocks = chain(6)
        self.events = []

    def inOrder(self):
        self.events += [wire(self.tail, b) for b in self.blocks[:2]]
        feed(self.edge, self.events[0] + self.events[1])

    def lostBlock(self):
        """Block 2 is lost on the way: block 3 does not follow it."""
        self.events += [wire(self.tail, b) for b in self.blocks[2:4]]
        feed(self.edge, self.events[3])

    def joinedMidBlock(self):
        """The edge sees only the transactions of block 4, not the block."""
        self.events.append(wire(self.tail, self.blocks[4]))
        feed(self.edge, self.events[4][1:])

    def nextBlock(self):
        self.events.append(wire(self.tail, self.blocks[5]))
        feed(self.edge, self.events[5])

    def duplicate(self):
        feed(self.edge, self.events[5])


def test_the_edge_republishes_what_follows_in_order():
    story = GapStory()
    story.inOrder()
    assert hashes(story.hub) == hashes(story.tail)
    assert story.out == story.events[0] + story.events[1] and story.session.calls == []


def test_a_block_that_does_not_follow_makes_the_edge_ask_the_tail():
    story = GapStory()
    story.inOrder()
    story.lostBlock()
    tail, blocks = story.tail, story.blocks
    assert story.session.calls == [("explorer.blocks_since", (tail.history.after(0)[1].height, blocks[1]["hash"]))]
    assert hashes(story.hub) == hashes(tail)
    assert story.out == [e for ev in story.events for e in ev]
    assert story.edgeMetric("explorer_wamp_edge_resyncs_total", outcome="ok") == 1


def test_stray_transactions_of_a_block_the_edge_joined_in_the_middle_of_are_dropped():
    story = GapStory()
    story.inOrder()
    story.lostBlock()
    story.joinedMidBlock()
    assert len(story.hub.history) == 4
    assert story.edgeMetric("explorer_wamp_edge_discarded_total", reason="orphan_tx") == 3


def test_the_block_after_a_half_seen_one_catches_up():
    story = GapStory()
    story.inOrder()
    story.lostBlock()
    story.joinedMidBlock()
    story.nextBlock()
    assert hashes(story.hub) == hashes(story.tail)
    assert story.out == [e for ev in story.events for e in ev]
    assert story.edgeMetric("explorer_wamp_edge_resyncs_total", outcome="ok") == 2


def test_a_duplicate_the_catch_up_brought_first_is_ignored():
    story = GapStory()
    story.inOrder()
    story.lostBlock()
    story.joinedMidBlock()
    story.nextBlock()
    story.duplicate()
    assert story.out == [e for ev in story.events for e in ev]
    assert story.edgeMetric("explorer_wamp_edge_resyncs_total", outcome="ok") == 2
    assert story.edgeMetric("explorer_wamp_edge_discarded_total", reason="orphan_tx") == 3


class ReorgStory(EdgeStory):
    """Four blocks, then a reorg, a paged catch-up, a tail that cannot answer, and a reorg the edge missed."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.monkeypatch = monkeypatch
        self.blocks = chain(4)
        for b in self.blocks:
            feed(self.edge, wire(self.tail, b))

    def reorg(self):
        """A reorg on the tail replaces the last two blocks."""
        tail, blocks = self.tail, self.blocks
        start = len(tail._wire)
        ancestor = tail.history.after(0)[1]
        tail.publishReorg(2, ancestor.ref(), [e.ref() for e in tail.history.after(ancestor.height)])
        self.r3 = r3 = child(blocks[1], "a1", template=blocks[2])
        self.r4 = r4 = child(r3, "a2", template=blocks[3])
        broadcast(tail, [r3, r4])
        feed(self.edge, tail._wire[start:])

    def threeBlocksLost(self):
        """Three blocks lost; the catch-up comes one block per answer."""
        tail = self.tail
        self.monkeypatch.setattr("explorerd.wamp.MAX_BLOCKS_SINCE", 1)
        b5 = child(self.r4, "b1")
        b6 = child(b5, "b2")
        self.b7 = b7 = child(b6, "b3")
        wire(tail, b5)
        wire(tail, b6)
        self.session.calls.clear()
        feed(self.edge, wire(tail, b7))

    def tailCannotAnswer(self):
        """A block is lost while the tail cannot answer: the next one, which does not follow, is discarded."""
        tail = self.tail
        self.session.fail_with = "wamp.error.no_such_procedure"
        lost = child(self.b7, "c0")
        self.b9 = b9 = child(lost, "c1")
        feed(self.edge, wire(tail, b9))

    def historyUnavailable(self):
        """The next block that does not follow asks again; history_unavailable means a gap."""
        tail = self.tail
        self.b10 = b10 = child(self.b9, "c2")
        self.session.fail_with = "explorer.error.history_unavailable"
        feed(self.edge, wire(tail, b10))

    def missedReorg(self):
        """
        A reorg the edge missed, and the tail cannot say what it was: the next
        block is at the next height but not b10's child.
        """
        tail, b9 = self.tail, self.b9
        tail.publishReorg(1, tail.history.canonical(b9["hash"]).ref(), [tail.history.newest.ref()])
        d0 = child(b9, "d0")
        wire(tail, d0)
        self.d1 = d1 = child(d0, "d1")
        feed(self.edge, wire(tail, d1))


def test_the_edge_follows_a_reorg_of_the_tail(monkeypatch):
    story = ReorgStory(monkeypatch)
    story.reorg()
    assert hashes(story.hub) == hashes(story.tail) == [b["hash"] for b in story.blocks[:2] + [story.r3, story.r4]]
    assert story.out == story.tail._wire
    assert story.edgeMetric("explorer_wamp_edge_reorgs_total") == 1


def test_the_edges_catch_up_pages_one_block_per_answer(monkeypatch):
    story = ReorgStory(monkeypatch)
    story.reorg()
    story.threeBlocksLost()
    assert len(story.session.calls) == 3, "one block per answer, then more"
    assert hashes(story.hub) == hashes(story.tail) and story.out == story.tail._wire


def test_a_block_that_does_not_follow_waits_while_the_tail_cannot_answer(monkeypatch):
    story = ReorgStory(monkeypatch)
    story.reorg()
    story.threeBlocksLost()
    story.tailCannotAnswer()
    assert story.hub.history.newest.hash == story.b7["hash"]
    assert story.edgeMetric("explorer_wamp_edge_discarded_total", reason="unlinked") == 1  # b9
    assert story.edgeMetric("explorer_wamp_edge_resyncs_total", outcome="failed") == 1


def test_history_unavailable_from_the_tail_is_a_gap(monkeypatch):
    story = ReorgStory(monkeypatch)
    story.reorg()
    story.threeBlocksLost()
    story.tailCannotAnswer()
    story.historyUnavailable()
    assert story.hub.history.newest.hash == story.b10["hash"], "a gap it is"
    assert story.edgeMetric("explorer_wamp_edge_discarded_total", reason="unlinked") == 1  # b9, while the tail was away
    assert story.edgeMetric("explorer_wamp_edge_resyncs_total", outcome="unavailable") == 1
    assert story.edgeMetric("explorer_wamp_edge_resyncs_total", outcome="failed") == 1


def test_after_a_reorg_it_missed_the_edge_starts_its_history_over(monkeypatch):
    # A gap too: the edge's history starts over from the new block (it must not link across).
    story = ReorgStory(monkeypatch)
    story.reorg()
    story.threeBlocksLost()
    story.tailCannotAnswer()
    story.historyUnavailable()
    story.missedReorg()
    hub, d1 = story.hub, story.d1
    assert hub.history.newest.hash == d1["hash"] and len(hub.history) == 1
    assert [data["hash"] for topic, data in story.out if topic == "explorer.block"][-1] == d1["hash"]
    assert story.edgeMetric("explorer_wamp_edge_discarded_total", reason="invalid") == 0
    assert story.edgeMetric("explorer_wamp_edge_resyncs_total", outcome="unavailable") == 2


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
    assert published == ["explorer.block"] + ["explorer.tx"] * 3
    registry = hub.metrics.registry
    assert sample(registry, "explorer_wamp_router_dropped_total", topic="explorer.block") == 2
    assert sample(registry, "explorer_wamp_router_dropped_total", topic="explorer.tx") == 6


@pytest_twisted.ensureDeferred
async def test_blocks_since_is_charged_by_the_bytes_it_sends_so_a_loop_of_them_is_closed(start_daemon):
    # One CALL used to buy up to 32 busy blocks (~2.5 MB): 440 MB in 30 s within the budget.
    daemon = await start_daemon(message_burst=10)
    hub = daemon.hub
    blocks = mainnet_run()[:6]
    broadcast(hub, blocks)
    url = wamp_url(daemon)
    bystander, _ = await raw_join(url)
    caller, _ = await raw_join(url)
    oldest = hub.history.oldest
    call = [CALL, 1, {}, "explorer.blocks_since", [oldest.height - 1, oldest.parent_hash]]
    caller.send_json(call)  # ~2 MiB: a fresh connection's full answer always goes through
    answer = await caller.next()
    assert answer[0] == RESULT and len(answer[3][0]["blocks"]) == 6
    daemon.clock.advance(0.1)  # two tokens: the next CALL is paid for, its answer is not
    caller.send_json([CALL, 2, *call[2:]])
    code, reason = await caller.closed
    assert code == 1008
    assert reason.startswith("too many messages: an answer to explorer.blocks_since of ")
    assert " MiB counts as 9; " in reason  # the burst less the HELLO's token
    assert "the budget is 20 a second, bursts of 10" in reason
    assert sum(1 for m in caller.received if m[0] == RESULT) == 1
    assert metric(daemon, "explorer_wamp_calls_total", procedure="explorer.blocks_since", outcome="over_budget") == 1
    bystander.send_json([CALL, 1, {}, "explorer.head", []])
    assert (await bystander.next())[0] == RESULT
    await bystander.close()


def test_the_edge_carries_logs_and_takes_a_block_without_any_as_whole():
    # A block whose logs are known and empty has no explorer.log event: the edge must not wait
    # for one, nor refuse the block as missing its logs (found flaky in the Crossbar test).
    from tests.chaindata import mainnet_logs

    tail, hub, edge, _ = make_hubs()
    seen = recorder(tail)
    logs = mainnet_logs()
    first, second = mainnet_run()[:2]
    empty = child(second, "e0")
    empty["transactions"] = []
    tail.publish(Entry.fromNode(first, logs=logs[first["hash"]]))
    tail.publish(Entry.fromNode(second, logs=logs[second["hash"]]))
    tail.publish(Entry.fromNode(empty, logs=[]))
    assert [t for t, _ in seen].count("explorer.log") == 2
    feed(edge, seen)
    assert hashes(hub) == hashes(tail)
    assert [e.logs for e in hub.history.after(0)] == [e.logs for e in tail.history.after(0)]
    assert hub.history.newest.data["log_count"] == 0
    assert hub.metrics.registry.get_sample_value("explorer_wamp_edge_discarded_total", {"reason": "invalid"}) is None
