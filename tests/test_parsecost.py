"""
Messages charged by what parsing them costs, before they are parsed: on
/v1/stream, /v1/rpc (WebSocket and HTTP POST) and /v1/wamp a message that is
cheap to send but costly to parse (a mebibyte of C{[[],[],...]}) is refused
unparsed, and a bystander keeps getting its blocks; the largest message a
client needs still goes through.
"""

import json

import msgpack
import pytest_twisted

from explorerd import parsecost
from explorerd.history import Entry
from tests.chaindata import mainnet_run
from tests.clients import connect, drain
from tests.metricvalues import sample
from tests.test_rpc import post, rpc_url
from tests.wamp.harness import raw_join, raw_wamp

SUBSCRIBE, SUBSCRIBED = 32, 33
# ~850 KB of valid JSON that costs ~65 ms to json.loads here.
NESTED = b"[" + b"[]," * 283_000 + b"[]]"
REFUSED = "message too big to parse: {}; at most 491520 bytes and 7680 values"


def metric(daemon, name, **labels):
    return sample(daemon.hub.metrics.registry, name, **labels)


def ints(values):
    """A JSON list of C{values} small numbers: cheap to send, ~14 ns a byte to parse."""
    return b"[" + b",".join([b"1"] * values) + b"]"


async def bystander(daemon):
    client = await connect(daemon.url)
    await client.request({"action": "subscribe", "channels": ["newBlocks"]})
    return client


async def still_served(daemon, client, n=0):
    daemon.hub.publish(Entry.fromNode(mainnet_run()[n]))
    assert [m["type"] for m in await drain(client)] == ["newBlock"]


def test_a_message_counts_by_its_bytes_and_its_values():
    assert parsecost.cost(b'{"action":"ping"}', parsecost.json_values, 60) == (1, "17 bytes, 1 values")
    assert parsecost.cost(NESTED, parsecost.json_values, 60)[0] == 104  # by its size alone
    assert parsecost.cost(NESTED[:40_000] + b"]", parsecost.json_values, 60)[0] == 209  # by its values: a [ and a , each
    assert parsecost.cost(b"\x90" * 1000, parsecost.byte_values, 60)[0] == 8
    assert parsecost.cost(b" " * 100_000, parsecost.no_values, 60)[0] == 13


@pytest_twisted.ensureDeferred
async def test_the_largest_subscribe_a_client_needs_goes_through_on_a_fresh_connection(start_daemon):
    # 6,000 addresses and topics, pretty-printed: ~410 KB, some 52 messages to parse.
    daemon = await start_daemon()
    addresses = ["0x%040x" % n for n in range(1000)]
    topics = [["0x%064x" % (1000 * p + n) for n in range(1000)] for p in range(4)]
    subscribe = json.dumps({"action": "subscribe", "channels": ["newTxs", "logs"],
                            "filter": {"addresses": addresses},
                            "logs": {"address": addresses, "topics": topics}}, indent=2).encode()
    assert parsecost.cost(subscribe, parsecost.json_values, 60)[0] > 40
    client = await connect(daemon.url)
    client.sendMessage(subscribe)
    answer = await client.next()
    assert answer["type"] == "subscribed" and answer["filter"] == {"addresses": 1000}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_message_costly_to_parse_is_closed_unparsed_and_a_bystander_keeps_its_blocks(
        start_daemon):
    daemon = await start_daemon()
    watcher = await bystander(daemon)
    attacker = await connect(daemon.url)
    attacker.sendMessage(NESTED)
    code, reason = await attacker.closed
    assert (code, reason) == (1009, REFUSED.format(f"{len(NESTED)} bytes"))
    assert attacker.received == [], "no error frame: it was never parsed"

    small = await connect(daemon.url)  # 40 KB, but 13,334 lists
    small.sendMessage(NESTED[:40_000] + b"]")
    code, reason = await small.closed
    assert (code, reason) == (1009, REFUSED.format("40001 bytes, 26667 values"))
    assert metric(daemon, "explorer_websocket_errors_total", type="message_too_big") == 2
    await still_served(daemon, watcher)
    await watcher.close()


@pytest_twisted.ensureDeferred
async def test_messages_that_cost_more_to_parse_take_more_of_the_budget(start_daemon):
    daemon = await start_daemon()  # 20 a second, bursts of 60
    watcher = await bystander(daemon)
    client = await connect(daemon.url)
    costly = ints(3840)  # 3,840 values: 30 messages
    for _ in range(2):
        client.sendMessage(costly)
        assert (await client.next())["error"]["code"] == "invalid_message"  # parsed and answered
    client.sendMessage(costly)
    code, reason = await client.closed
    assert code == 1008
    assert reason == ("too many messages: a message of 7681 bytes, 3840 values counts as 30; "
                      "the budget is 20 a second, bursts of 60")
    await still_served(daemon, watcher)

    steady = await connect(daemon.url)  # one such message every 1.5 s goes on for ever
    for _ in range(5):
        steady.sendMessage(costly)
        assert (await steady.next())["error"]["code"] == "invalid_message"
        daemon.clock.advance(1.5)
    await steady.close()
    await watcher.close()


@pytest_twisted.ensureDeferred
async def test_rpc_messages_costly_to_parse_are_refused_unparsed_over_websocket_and_http(start_daemon):
    daemon = await start_daemon()
    watcher = await bystander(daemon)
    for binary in (False, True):  # web3.py sends its JSON in binary frames
        attacker = await connect(rpc_url(daemon))
        attacker.sendMessage(NESTED, isBinary=binary)
        code, reason = await attacker.closed
        assert (code, reason) == (1009, REFUSED.format(f"{len(NESTED)} bytes"))

    status, answer = await post(daemon, NESTED)
    assert status == 413 and answer["error"]["code"] == -32600
    assert answer["error"]["message"] == (f"invalid request: too big to parse ({len(NESTED)} bytes); "
                                          "at most 491520 bytes and 7680 values")
    # Charged to the address's budget before it is parsed: two of 30, then 429.
    costly = ints(3840)
    for _ in range(2):
        status, answer = await post(daemon, costly)
        assert status == 200 and answer["error"]["code"] == -32600  # parsed: a batch of numbers
    status, answer = await post(daemon, costly)
    assert status == 429 and answer["error"]["code"] == -32005
    await still_served(daemon, watcher)
    await watcher.close()


@pytest_twisted.ensureDeferred
async def test_wamp_messages_costly_to_parse_are_refused_unparsed_in_every_format(start_daemon):
    daemon = await start_daemon()
    url = f"ws://127.0.0.1:{daemon.port}/v1/wamp"
    watcher = await bystander(daemon)
    session, _ = await raw_join(url)
    session.sendMessage(b"[32," + NESTED[1:])  # Python's pure-Python JSON scanner: ~0.2 s
    code, reason = await session.closed
    assert (code, reason) == (1009, REFUSED.format(f"{len(NESTED) + 3} bytes"))

    # MessagePack and CBOR: each byte may be a value (0x90 is an empty array).
    for subprotocol, empties in (("wamp.2.msgpack", msgpack.packb([[]] * 10_000)),
                                 ("wamp.2.cbor", b"\x99\x27\x10" + b"\x80" * 10_000)):
        attacker = await raw_wamp(url, subprotocol)
        attacker.sendMessage(empties, isBinary=True)
        code, reason = await attacker.closed
        assert (code, reason) == (1009, REFUSED.format(f"{len(empties)} bytes, {len(empties)} values"))

    # A session of its own goes on.
    other, _ = await raw_join(url)
    other.send_json([SUBSCRIBE, 1, {}, "explorer.block"])
    assert (await other.next())[0] == SUBSCRIBED
    await other.close()
    await still_served(daemon, watcher)
    await watcher.close()
