"""
Idle squatters and subscription abuse, as their clients and everyone else
see them: the subscribe deadline (connections that hold no subscription
are closed, and the connection cap recovers), the caps on subscriptions,
and subscribe filters charged to the message budget by their size.
"""

import pytest_twisted
from twisted.internet import defer

from explorerd.history import Entry
from tests.chaindata import mainnet_logs, mainnet_run
from tests.clients import connect, drain, handshake_status, in_thread
from tests.conftest import eventually
from tests.metricvalues import sample
from tests.wamp.harness import raw_join

ERROR, SUBSCRIBE, SUBSCRIBED, UNSUBSCRIBE, UNSUBSCRIBED, CALL, RESULT = 8, 32, 33, 34, 35, 48, 50
IDLE = (1008, "no subscription within 30s")


def wamp_url(daemon):
    return f"ws://127.0.0.1:{daemon.port}/v1/wamp"


def rpc_url(daemon):
    return f"ws://127.0.0.1:{daemon.port}/v1/rpc"


def metric(daemon, name, **labels):
    return sample(daemon.hub.metrics.registry, name, **labels)


async def ask(client, method, params=(), request_id=1):
    """One JSON-RPC request over WebSocket; its answer."""
    client.send_json({"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)})
    while True:
        message = await client.next()
        if isinstance(message, dict) and message.get("id") == request_id:
            return message


async def wamp_request(client, message):
    client.send_json(message)
    return await client.next()


def address(n):
    return "0x%040x" % n


# ---------------------------------------------------------------------------
# The subscribe deadline.

@pytest_twisted.ensureDeferred
async def test_a_stream_client_that_never_subscribes_is_closed_at_the_deadline_pings_or_not(start_daemon):
    daemon = await start_daemon(ping_interval=10, pong_timeout=600)
    hub = daemon.hub
    squatter = await connect(daemon.url)
    client = next(iter(hub._clients.values()))
    for t in (10, 20):
        daemon.clock.advance(10)
        await eventually(lambda: client.last_seen == t, what="its pong to our ping")  # alive, and reading
        squatter.sendPing(b"still here")
        assert await squatter.request({"action": "ping"}) == {"type": "pong"}
    daemon.clock.advance(9)
    assert hub.clientCount == 1, "29 s without a subscription is not yet 30"
    daemon.clock.advance(1)
    assert await squatter.closed == IDLE
    assert metric(daemon, "explorer_websocket_errors_total", type="subscribe_timeout") == 1
    await eventually(lambda: hub.connectionCount == 0, what="its slot to be released")


@pytest_twisted.ensureDeferred
async def test_a_subscriber_is_never_closed_and_one_that_gives_up_its_channels_gets_the_deadline_again(
        start_daemon):
    daemon = await start_daemon()
    subscriber = await connect(daemon.url)
    await subscriber.request({"action": "subscribe", "channels": ["newBlocks"]})
    quitter = await connect(daemon.url)
    await quitter.request({"action": "subscribe", "channels": ["newBlocks", "newTxs"]})
    daemon.clock.advance(20)
    assert (await quitter.request({"action": "unsubscribe", "channels": ["newTxs"]}))["channels"] == ["newBlocks"]
    daemon.clock.advance(5)
    assert (await quitter.request({"action": "unsubscribe", "channels": ["newBlocks"]}))["channels"] == []
    daemon.clock.advance(29)  # 54 s
    assert daemon.hub.clientCount == 2, "29 s since it gave up its last channel"
    daemon.clock.advance(1)
    assert await quitter.closed == IDLE
    daemon.hub.publish(Entry.fromNode(mainnet_run()[0]))
    assert [m["type"] for m in await drain(subscriber)] == ["newBlock"]
    await subscriber.close()


@pytest_twisted.ensureDeferred
async def test_wamp_sessions_that_hold_nothing_and_call_nothing_are_closed(start_daemon):
    daemon = await start_daemon()
    url = wamp_url(daemon)
    joined, _ = await raw_join(url)  # HELLO, then nothing
    caller, _ = await raw_join(url)
    quitter, _ = await raw_join(url)
    subscriber, _ = await raw_join(url)
    for session in (quitter, subscriber):
        subscribed = await wamp_request(session, [SUBSCRIBE, 1, {}, "explorer.block"])
        assert subscribed[0] == SUBSCRIBED
    daemon.clock.advance(20)
    assert await wamp_request(caller, [CALL, 1, {}, "explorer.head", []]) == [RESULT, 1, {}, [None]]
    assert await wamp_request(quitter, [UNSUBSCRIBE, 2, subscribed[2]]) == [UNSUBSCRIBED, 2]
    daemon.clock.advance(10)
    assert await joined.closed == IDLE
    assert daemon.service.broker.sessionCount == 3
    daemon.clock.advance(20)  # 30 s after the call and the unsubscribe
    assert await caller.closed == IDLE
    assert await quitter.closed == IDLE
    assert daemon.service.broker.sessionCount == 1
    assert await wamp_request(subscriber, [CALL, 3, {}, "explorer.head", []]) == [RESULT, 3, {}, [None]]
    await subscriber.close()


@pytest_twisted.ensureDeferred
async def test_rpc_keepalives_do_not_hold_a_connection_but_requests_and_subscriptions_do(start_daemon):
    daemon = await start_daemon(pong_timeout=600)
    url = rpc_url(daemon)
    keepalive = await connect(url)  # viem's keepAlive asks net_version
    poller = await connect(url)
    subscriber = await connect(url)
    assert "result" in await ask(subscriber, "eth_subscribe", ["newHeads"])
    for t in (10, 20):
        daemon.clock.advance(10)
        for method in ("net_version", "eth_chainId", "web3_clientVersion"):
            await ask(keepalive, method)
    block = mainnet_run()[0]
    daemon.hub.publish(Entry.fromNode(block))
    assert (await ask(poller, "eth_blockNumber"))["result"] == block["number"]
    daemon.clock.advance(10)
    assert await keepalive.closed == IDLE
    daemon.clock.advance(20)
    assert await poller.closed == IDLE, "30 s after its last request"
    daemon.clock.advance(60)
    assert (await ask(subscriber, "web3_clientVersion"))["result"].startswith("explorerd/")
    assert metric(daemon, "explorer_websocket_errors_total", type="subscribe_timeout") == 2
    await subscriber.close()


@pytest_twisted.ensureDeferred
async def test_a_subscribe_timeout_of_0_turns_the_deadline_off(start_daemon):
    daemon = await start_daemon(subscribe_timeout=0, ping_interval=10, pong_timeout=600)
    idle = await connect(daemon.url)
    for _ in range(4):
        daemon.clock.advance(40)
    assert await idle.request({"action": "ping"}) == {"type": "pong"}
    await idle.close()


@pytest_twisted.ensureDeferred
async def test_squatters_filling_the_cap_are_closed_and_the_cap_recovers(start_daemon):
    """
    20 connections (the cap): one subscriber and 19 that never subscribe on
    the three endpoints, answering our pings and sending their own.  A new
    client is refused, until the deadline frees the squatters' slots.
    """
    daemon = await start_daemon(max_connections=20, ping_interval=10, pong_timeout=600)
    hub = daemon.hub
    subscriber = await connect(daemon.url)
    await subscriber.request({"action": "subscribe", "channels": ["newBlocks"]})
    streams = [await connect(daemon.url) for _ in range(7)]
    wamps = [(await raw_join(wamp_url(daemon)))[0] for _ in range(6)]
    rpcs = [await connect(rpc_url(daemon)) for _ in range(6)]
    squatters = streams + wamps + rpcs
    assert hub.connectionCount == 20
    assert await in_thread(handshake_status, daemon.url) == 503
    for _ in range(2):
        daemon.clock.advance(10)
        for s in streams:
            s.sendPing(b"ping")
            assert await s.request({"action": "ping"}) == {"type": "pong"}
        for r in rpcs:
            await ask(r, "net_version")
    assert await in_thread(handshake_status, daemon.url) == 503
    daemon.clock.advance(10)
    closes = await defer.gatherResults([s.closed for s in squatters])
    assert closes == [IDLE] * 19
    await eventually(lambda: hub.connectionCount == 1, what="the squatters' slots to be released")
    assert metric(daemon, "explorer_websocket_errors_total", type="subscribe_timeout") == 19

    newcomer = await connect(daemon.url)
    await newcomer.request({"action": "subscribe", "channels": ["newBlocks"]})
    daemon.hub.publish(Entry.fromNode(mainnet_run()[0]))
    for client in (subscriber, newcomer):
        assert [m["type"] for m in await drain(client)] == ["newBlock"]
    assert not subscriber.closed.called
    for client in (subscriber, newcomer):
        await client.close()


# ---------------------------------------------------------------------------
# Caps on subscriptions.

MANY = [("exact", t) for t in ("explorer.block", "explorer.tx", "explorer.reorg", "explorer.log")] + [
    ("prefix", "explorer."), ("prefix", "explorer.b"), ("wildcard", "explorer."), ("wildcard", ".tx")]


@pytest_twisted.ensureDeferred
async def test_a_wamp_session_holds_at_most_8_subscriptions_and_stays(start_daemon):
    daemon = await start_daemon()
    session, _ = await raw_join(wamp_url(daemon))
    ids = []
    for i, (match, uri) in enumerate(MANY):
        answer = await wamp_request(session, [SUBSCRIBE, i, {"match": match}, uri])
        assert answer[:2] == [SUBSCRIBED, i]
        ids.append(answer[2])
    answer = await wamp_request(session, [SUBSCRIBE, 100, {"match": "prefix"}, "explorer.t"])
    assert answer[:5] == [ERROR, SUBSCRIBE, 100, {}, "explorer.error.too_many_subscriptions"]
    assert "holds 8 subscriptions" in answer[5][0] and "EXPLORERD_WAMP_MAX_SUBSCRIPTIONS" in answer[5][0]
    # One it holds is not another: same id.  The session goes on.
    assert await wamp_request(session, [SUBSCRIBE, 101, {}, "explorer.tx"]) == [SUBSCRIBED, 101, ids[1]]
    assert await wamp_request(session, [CALL, 102, {}, "explorer.head", []]) == [RESULT, 102, {}, [None]]
    assert await wamp_request(session, [UNSUBSCRIBE, 103, ids[0]]) == [UNSUBSCRIBED, 103]
    assert (await wamp_request(session, [SUBSCRIBE, 104, {"match": "prefix"}, "explorer.t"]))[0] == SUBSCRIBED
    assert metric(daemon, "explorer_wamp_subscriptions") == 8
    assert metric(daemon, "explorer_wamp_errors_total", error="explorer.error.too_many_subscriptions") == 1
    await session.close()


@pytest_twisted.ensureDeferred
async def test_a_storm_of_wamp_patterns_stores_nothing_past_the_cap(start_daemon):
    daemon = await start_daemon(wamp_max_subscriptions=2, message_rate=0)
    session, _ = await raw_join(wamp_url(daemon))
    for i in range(500):
        match = ("prefix", "wildcard")[i % 2]
        session.send_json([SUBSCRIBE, i, {"match": match}, f"explorer.x{i}" if i % 4 < 2 else "explorer."[:i % 9]])
    answers = [await session.next() for _ in range(500)]
    assert len({a[2] for a in answers if a[0] == SUBSCRIBED}) == 2
    assert {a[4] for a in answers if a[0] == ERROR} <= {"explorer.error.no_such_topic",
                                                        "explorer.error.too_many_subscriptions"}
    assert metric(daemon, "explorer_wamp_subscriptions") <= 2
    assert len(daemon.service.broker._subscriptions) <= 2
    await session.close()


# ---------------------------------------------------------------------------
# Filters charged by their size.

WETH = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"
TRANSFER = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"

@pytest_twisted.ensureDeferred
async def test_a_stream_client_resubscribing_big_filters_in_a_loop_is_closed_by_the_budget(start_daemon):
    daemon = await start_daemon()  # 20 messages a second, bursts of 60
    addresses = [address(n) for n in range(1000)]
    subscribe = {"action": "subscribe", "channels": ["newTxs", "logs"], "filter": {"addresses": addresses},
                 "logs": {"address": addresses}}
    client = await connect(daemon.url)
    answer = await client.request(subscribe)
    assert answer["type"] == "subscribed" and answer["filter"] == {"addresses": 1000}
    # Half a second later (sent at once it would not even be parsed: 16
    # messages' worth to parse, 10 left), the budget pays the parse, not the filter.
    daemon.clock.advance(0.5)
    client.send_json(subscribe)
    code, reason = await client.closed
    assert code == 1008
    assert reason.startswith("too many messages: a filter of 2000 addresses and topics counts as 50")
    assert metric(daemon, "explorer_websocket_errors_total", type="message_budget") == 1

    # One such subscribe every 2.5 s goes on for ever.
    steady = await connect(daemon.url)
    for _ in range(5):
        assert (await steady.request(subscribe))["type"] == "subscribed"
        daemon.clock.advance(2.5)
    await steady.close()


@pytest_twisted.ensureDeferred
async def test_a_big_filter_and_its_replay_cost_at_most_a_burst_together(start_daemon):
    daemon = await start_daemon()
    logs = mainnet_logs()
    blocks = [Entry.fromNode(b, logs=logs.get(b["hash"], [])) for b in mainnet_run()]
    for entry in blocks:
        daemon.hub.publish(entry)
    # 2,000 entries: 50 messages; every transaction of six blocks: more than 10 x 64 KiB.
    flt = {"address": [WETH] + [address(n) for n in range(999)], "topics": [[TRANSFER] + ["0x%064x" % n
                                                                                          for n in range(999)]]}
    assert daemon.hub.history.replay_size(blocks[0].height, False, "plain", True) > 10 * 64 * 1024
    client = await connect(daemon.url)
    answer = await client.request({"action": "subscribe", "channels": ["newTxs", "logs"], "logs": flt,
                                   "since": {"height": blocks[0].height, "hash": blocks[0].hash}})
    assert answer["type"] == "subscribed" and answer["replayed"] == 6
    got = [await client.next() for _ in range(sum(e.tx_count for e in blocks[1:]))]
    assert all(m["type"] in ("newTx", "logs") for m in got)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_changing_channels_keeps_a_clients_filters_and_only_a_new_filter_is_indexed_again(
        start_daemon, monkeypatch):
    daemon = await start_daemon(message_rate=0)
    hub = daemon.hub
    block = mainnet_run()[2]
    logs = mainnet_logs()[block["hash"]]
    tx = block["transactions"][0]
    first, second = tx["from"].lower(), block["transactions"][1]["from"].lower()
    emitter = logs[0]["address"].lower()
    client = await connect(daemon.url)
    await client.request({"action": "subscribe", "channels": ["newTxs", "logs"], "hashes_only": True,
                          "filter": {"addresses": [first] + [address(n) for n in range(999)]},
                          "logs": {"address": [emitter] + [address(n) for n in range(999)]}})
    indexed = []
    for name in ("_indexLogs", "_groupTxs"):
        original = getattr(hub, name)
        monkeypatch.setattr(hub, name, lambda c, original=original, name=name: indexed.append(name) or original(c))
    for action in ("subscribe", "unsubscribe") * 3:
        await client.request({"action": action, "channels": ["newBlocks"]})
    assert indexed == [], "neither filter was indexed again"
    hub.publish(Entry.fromNode(block, logs=logs))
    got = await drain(client)
    want_txs = [t["hash"].lower() for t in block["transactions"] if first in (t["from"].lower(), (t["to"] or "").lower())]
    assert [m["data"]["hash"] for m in got if m["type"] == "newTx"] == want_txs
    [got_logs] = [m["data"]["logs"] for m in got if m["type"] == "logs"]
    assert {lg["address"] for lg in got_logs} == {emitter}

    # A new filter replaces the old one in the index.
    await client.request({"action": "subscribe", "channels": ["newTxs"], "hashes_only": True,
                          "filter": {"addresses": [second]}})
    assert indexed == ["_groupTxs"]
    assert set(hub._by_address) == {second}
    assert emitter in hub._logs_by_address and len(hub._logs_by_address) == 1000
    await client.close()
    assert hub._by_address == {} and hub._logs_by_address == {}


@pytest_twisted.ensureDeferred
async def test_a_topic_position_holds_at_most_1000_alternatives(start_daemon):
    daemon = await start_daemon(message_rate=0)
    topics = ["0x%064x" % n for n in range(1001)]
    client = await connect(daemon.url)
    answer = await client.request({"action": "subscribe", "channels": ["logs"], "logs": {"topics": [topics]}})
    assert answer["error"]["code"] == "invalid_message"
    assert "at most 1000 alternatives, not 1001" in answer["error"]["message"]
    answer = await client.request({"action": "subscribe", "channels": ["logs"], "logs": {"topics": [topics[:1000]]}})
    assert answer == {"type": "subscribed", "channels": ["logs"], "logs": {"topics": 1}}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_rpc_logs_filters_are_charged_as_on_the_stream(start_daemon):
    daemon = await start_daemon()
    client = await connect(rpc_url(daemon))
    flt = {"address": [address(n) for n in range(1000)]}
    for i in range(2):  # 25 messages each: a fresh connection's burst pays for two
        assert "result" in await ask(client, "eth_subscribe", ["logs", flt], i)
    client.send_json({"jsonrpc": "2.0", "id": 3, "method": "eth_subscribe", "params": ["logs", flt]})
    code, reason = await client.closed
    assert code == 1008 and reason.startswith("too many messages: a filter of 1000 addresses and topics counts as 25")


@pytest_twisted.ensureDeferred
async def test_calls_to_the_node_wait_at_most_a_batch_per_connection(start_daemon):
    from tests.test_rpc import HeldNode

    node = await HeldNode().start()
    try:
        daemon = await start_daemon(rpc_url=node.url, rpc_pin_latest=False, message_rate=0)
        client = await connect(rpc_url(daemon))
        for i in range(117):  # 16 at the node, 100 waiting, and one more
            client.send_json({"jsonrpc": "2.0", "id": i, "method": "eth_getCode", "params": [address(i), "0x1"]})
        refused = await client.next()
        assert refused["id"] == 116 and refused["error"]["code"] == -32005
        assert refused["error"]["message"].startswith("too many calls to the node from this connection: 16 in "
                                                      "flight and 100 waiting")
        other = await connect(rpc_url(daemon))  # another connection's calls are not refused
        other.send_json({"jsonrpc": "2.0", "id": "other", "method": "eth_getCode", "params": [address(1), "0x1"]})
        while len(client.received) < 117 or not other.received:
            node.release()
            await eventually(lambda: node.held or (len(client.received) == 117 and other.received),
                             what="the next calls to reach the node")
        assert sorted(a["id"] for a in client.received[1:]) == list(range(116))
        assert other.received == [{"jsonrpc": "2.0", "id": "other", "result": address(1)}]
        await client.close()
        await other.close()
    finally:
        await node.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_logs_filters_of_one_rpc_connection_hold_at_most_6000_entries(start_daemon):
    daemon = await start_daemon(message_rate=0)
    client = await connect(rpc_url(daemon))
    big = {"address": [address(n) for n in range(1000)], "topics": [["0x%064x" % n for n in range(1000)]] * 4}
    assert "result" in await ask(client, "eth_subscribe", ["logs", big], 1)  # 5,000 entries
    small = {"address": [address(n) for n in range(1000)]}
    answer = await ask(client, "eth_subscribe", ["logs", small], 2)
    assert "result" in answer
    answer = await ask(client, "eth_subscribe", ["logs", {"address": address(1)}], 3)
    assert answer["error"]["code"] == -32005 and "6001 addresses and topics, at most 6000" in answer["error"]["message"]
    assert (await ask(client, "eth_unsubscribe", [(await ask(client, "eth_subscribe", ["newHeads"], 4))["result"]],
                      5))["result"] is True
    await client.close()

