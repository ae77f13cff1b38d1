"""Hostile and malformed input: fuzzed messages, broken frames; bystanders keep being served."""

import json
import socket

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorerd.history import Entry
from tests.chaindata import mainnet_run
from tests.clients import connect, drain, in_thread
from tests.conftest import eventually
from tests.metricvalues import sample

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)
channel_names = st.sampled_from(["newBlocks", "newTxs"]) | st.text(max_size=12)
addresses = st.sampled_from(["0x" + "ab" * 20, "0xAB" + "cd" * 19, "0x12", "nope"]) | st.text(max_size=44)
structured = st.fixed_dictionaries(
    {"action": st.sampled_from(["subscribe", "unsubscribe", "ping"]) | st.text(max_size=12) | json_values},
    optional={
        "channels": st.lists(channel_names | json_values, max_size=6) | json_values,
        "since": json_values | st.fixed_dictionaries({"height": json_values | st.integers(),
                                                      "hash": st.text(max_size=70)}),
        "batch": json_values,
        "hashes_only": json_values,
        "filter": json_values | st.fixed_dictionaries({"addresses": st.lists(addresses, max_size=4) | json_values}),
    },
)
messages = st.one_of(
    structured.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=300),
)
REPLIES = {"subscribed", "unsubscribed", "pong", "error", "newBlock", "newTx", "newTxs", "reorg"}


def well_formed(reply):
    assert isinstance(reply, dict) and reply.get("type") in REPLIES, reply
    if reply["type"] == "error":
        error = reply["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
        assert len(json.dumps(reply)) < 2000, "errors never echo large input back"
    if reply["type"] in ("subscribed", "unsubscribed"):
        assert set(reply["channels"]) <= {"newBlocks", "newTxs"}


@pytest_twisted.ensureDeferred
async def test_fuzzed_messages_get_answers_and_never_cost_the_connection(start_daemon):
    """
    Hypothesis drives an independent client (websockets, in a thread) with
    random messages while the reactor serves it and an Autobahn bystander.
    """
    from twisted.internet import reactor

    daemon = await start_daemon()
    daemon.service.streamFactory.messageRate = 0  # the fuzzer sends hundreds a second; no budget here
    bystander = await connect(daemon.url)
    await bystander.request({"action": "subscribe", "channels": ["newBlocks"]})
    block = mainnet_run()[6]
    published = []

    def fuzz():
        from websockets.sync.client import connect as ws_connect

        with ws_connect(daemon.url, compression=None, max_size=None, open_timeout=10) as ws:
            ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle pauses
            @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
            @given(messages)
            def one(text):
                ws.send(text)
                ws.send('{"action":"ping"}')
                while True:
                    reply = json.loads(ws.recv(timeout=10))
                    if reply == {"type": "pong"}:
                        break
                    well_formed(reply)
                if len(published) < 6:
                    height = 1000 + len(published)
                    published.append(height)
                    reactor.callFromThread(daemon.hub.publish, Entry.fromNode(dict(block, number=hex(height))))

            one()

    await in_thread(fuzz)
    assert sample(daemon.hub.metrics.registry, "explorer_websocket_errors_total", type="invalid_message") > 0
    got = await drain(bystander)
    assert [m["data"]["height"] for m in got] == published
    await bystander.close()


@pytest_twisted.ensureDeferred
async def test_fragmented_messages_are_reassembled(start_daemon):
    daemon = await start_daemon()
    client = await connect(daemon.url)
    client.sendMessage(json.dumps({"action": "subscribe", "channels": ["newTxs"]}).encode(), fragmentSize=3)
    assert await client.next() == {"type": "subscribed", "channels": ["newTxs"]}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_ping_with_a_payload_is_answered_with_it(start_daemon):
    daemon = await start_daemon()
    client = await connect(daemon.url)
    pongs = []
    client.onPong = pongs.append
    client.sendPing(b"are you there")
    assert await client.request({"action": "ping"}) == {"type": "pong"}
    assert pongs == [b"are you there"]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_closes_with_1007_and_others_stay(start_daemon):
    daemon = await start_daemon()
    bystander = await connect(daemon.url)
    client = await connect(daemon.url)
    client.sendFrame(opcode=1, payload=b'{"action": "\xff\xfe"}')
    code, _ = await client.closed
    assert code == 1007
    assert sample(daemon.hub.metrics.registry, "explorer_websocket_errors_total", type="invalid_utf8") == 1
    assert await bystander.request({"action": "ping"}) == {"type": "pong"}
    await bystander.close()


@pytest_twisted.ensureDeferred
async def test_oversized_control_frame_is_a_protocol_error(start_daemon):
    daemon = await start_daemon()
    client = await connect(daemon.url)
    client.sendFrame(opcode=9, payload=b"x" * 126)
    code, _ = await client.closed
    assert code == 1002
    assert daemon.hub.clientCount == 0
    assert sample(daemon.hub.metrics.registry, "explorer_websocket_errors_total", type="protocol_error") == 1


@pytest_twisted.ensureDeferred
async def test_unmasked_client_frames_are_refused(start_daemon):
    daemon = await start_daemon()
    client = await connect(daemon.url)
    # Autobahn masks client frames itself; hand-craft an unmasked one on the socket.
    client.transport.write(b"\x81\x11" + b'{"action":"ping"}')
    code, _ = await client.closed
    assert code == 1002


@pytest_twisted.ensureDeferred
async def test_a_flood_of_requests_ends_that_client_only(start_daemon):
    daemon = await start_daemon()
    daemon.service.streamFactory.messageRate = 10
    daemon.service.streamFactory.messageBurst = 30
    bystander = await connect(daemon.url)
    await bystander.request({"action": "subscribe", "channels": ["newBlocks"]})
    flooder = await connect(daemon.url)
    for i in range(30):  # the burst is allowed
        flooder.send_json({"action": "subscribe" if i % 2 else "unsubscribe", "channels": ["newTxs"]})
    for _ in range(30):
        await flooder.next()
    daemon.clock.advance(1.0)  # ten more
    for _ in range(11):
        flooder.send_json({"action": "ping"})
    code, reason = await flooder.closed
    assert code == 1008 and reason.startswith("too many messages")
    assert [m["type"] for m in flooder.received[30:]] == ["pong"] * 10
    assert sample(daemon.hub.metrics.registry, "explorer_websocket_errors_total", type="message_budget") == 1
    daemon.hub.publish(Entry.fromNode(mainnet_run()[0]))
    assert [m["type"] for m in await drain(bystander)] == ["newBlock"]
    await bystander.close()


@pytest_twisted.ensureDeferred
async def test_a_closed_flooder_is_not_read_any_more(start_daemon):
    # Thousands of requests sent before the 1008 could reach the flooder: the
    # server does not parse them (seconds of CPU); it stops reading, and drops
    # the connection at the close timeout if the flooder does not close.
    from twisted.internet import reactor

    daemon = await start_daemon(shutdown_timeout=5)
    bystander = await connect(daemon.url)
    await bystander.request({"action": "subscribe", "channels": ["newBlocks"]})
    flooder = await connect(daemon.url)
    server_side = next(p for p in daemon.hub.slots.protocols if p.transport.getPeer().port
                       == flooder.transport.getHost().port)
    for _ in range(5000):
        flooder.send_json({"action": "ping"})
    await eventually(lambda: server_side.state != server_side.STATE_OPEN, what="the 1008 close")
    assert server_side.transport not in reactor.getReaders(), "still reading from the flooder"
    # the burst, then the one over it
    assert sample(daemon.hub.metrics.registry, "explorer_websocket_messages_received_total") <= 62
    daemon.clock.advance(6)
    code, reason = await flooder.closed
    assert code == 1008 and reason.startswith("too many messages")
    daemon.hub.publish(Entry.fromNode(mainnet_run()[0]))
    assert [m["type"] for m in await drain(bystander)] == ["newBlock"]
    await bystander.close()
