"""Fan-out to many real clients, slow clients, liveness and churn."""

import gc
import json
import socket
import weakref

import pytest_twisted
from twisted.internet import defer

from explorerd.history import Entry
from tests.chaindata import mainnet_run
from tests.clients import connect, connect_many, drain, in_thread
from tests.conftest import eventually
from tests.metricvalues import sample


def expected_messages(blocks, channels):
    out = []
    for block in blocks:
        if "newBlocks" in channels:
            out.append(("newBlock", block["hash"]))
        if "newTxs" in channels:
            out.extend(("newTx", tx["hash"]) for tx in block["transactions"])
    return out


def summary(messages):
    return [(m["type"], m["data"]["hash"]) for m in messages]


def broadcast(hub, blocks):
    for block in blocks:
        hub.publish(Entry.fromNode(block))


def websockets_subscriber(url, channels):
    from websockets.sync.client import connect as ws_connect

    ws = ws_connect(url, compression=None, open_timeout=5)
    ws.send(json.dumps({"action": "subscribe", "channels": channels}))
    assert json.loads(ws.recv(timeout=5))["type"] == "subscribed"
    return ws


def websockets_collect(ws, n):
    """Read exactly n messages, then make sure nothing else is waiting."""
    got = [json.loads(ws.recv(timeout=10)) for _ in range(n)]
    ws.send(json.dumps({"action": "ping"}))
    assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}
    ws.close()
    return got


@pytest_twisted.ensureDeferred
async def test_100_concurrent_clients_each_get_exactly_their_channels(start_daemon):
    daemon = await start_daemon(max_connections=200)
    plans = [["newBlocks"]] * 34 + [["newTxs"]] * 33 + [["newBlocks", "newTxs"]] * 28
    clients = await connect_many(daemon.url, len(plans))
    answers = await defer.gatherResults([
        defer.ensureDeferred(c.request({"action": "subscribe", "channels": p}))
        for c, p in zip(clients, plans)])
    assert all(a["type"] == "subscribed" for a in answers)
    # Five more from an independent client library, in threads.
    independent = await defer.gatherResults([
        defer.ensureDeferred(in_thread(websockets_subscriber, daemon.url, ["newBlocks", "newTxs"]))
        for _ in range(5)])
    assert daemon.hub.clientCount == 100

    blocks = mainnet_run()[:3]
    broadcast(daemon.hub, blocks)

    received = await defer.gatherResults([defer.ensureDeferred(drain(c)) for c in clients])
    for plan, got in zip(plans, received):
        assert summary(got) == expected_messages(blocks, plan)
    both = expected_messages(blocks, ["newBlocks", "newTxs"])
    independent_got = await defer.gatherResults([
        defer.ensureDeferred(in_thread(websockets_collect, ws, len(both))) for ws in independent])
    for got in independent_got:
        assert summary(got) == both
    await defer.gatherResults([defer.ensureDeferred(c.close()) for c in clients])
    await eventually(lambda: daemon.hub.connectionCount == 0, what="all clients gone")


def constrain(client, hub):
    """
    Make a client's path narrow, as a slow mobile link would be: small
    kernel buffers on both ends, so that a client that stops reading fills
    them after kilobytes instead of the megabytes loopback would take.
    Returns the hub's view of that client.
    """
    client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    local = client.transport.getHost().port
    for c in hub._clients.values():
        if c.transport.getPeer().port == local:
            c.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            return c
    raise AssertionError("client not found in the hub")


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_closed_and_nobody_else_waits(start_daemon):
    daemon = await start_daemon(max_connections=200, send_queue=8)
    hub = daemon.hub
    others = await connect_many(daemon.url, 50)
    for c in others:
        await c.request({"action": "subscribe", "channels": ["newBlocks", "newTxs"]})
    slow = await connect(daemon.url)
    await slow.request({"action": "subscribe", "channels": ["newBlocks", "newTxs"]})
    constrain(slow, hub)
    slow.transport.pauseProducing()  # stop reading: its receive window fills and stays full

    blocks = mainnet_run()[:6]
    sent = []
    rounds = 0
    while hub.clientCount == 51:
        rounds += 1
        assert rounds < 100, "the slow client was never closed"
        block = blocks[rounds % len(blocks)]
        broadcast(hub, [block])
        sent.append(block)
        # Every other client has the whole block before the next one is sent.
        received = await defer.gatherResults([defer.ensureDeferred(drain(c)) for c in others])
        for got in received:
            assert summary(got) == expected_messages([block], ["newBlocks", "newTxs"])
    assert hub.clientCount == 50
    assert sample(hub.metrics.registry, "explorer_websocket_errors_total", type="slow_client") == 1
    assert hub._queued_total == 0

    # When it reads again it finds, after what was already on its way, a close saying why.
    slow.transport.resumeProducing()
    code, reason = await slow.closed
    assert code == 1008
    assert reason.startswith("too slow")
    for c in others:
        await c.close()


@pytest_twisted.ensureDeferred
async def test_a_client_paused_past_the_write_deadline_is_closed(start_daemon):
    daemon = await start_daemon(write_deadline=10, send_queue=1000)
    hub = daemon.hub
    healthy = await connect(daemon.url)
    await healthy.request({"action": "subscribe", "channels": ["newTxs"]})
    stuck = await connect(daemon.url)
    await stuck.request({"action": "subscribe", "channels": ["newTxs"]})
    stuck_client = constrain(stuck, hub)
    stuck.transport.pauseProducing()
    block = mainnet_run()[0]
    while not stuck_client.paused:
        broadcast(hub, [block])
        await drain(healthy)
    daemon.clock.advance(5)
    assert hub.clientCount == 2, "paused, but not yet past the deadline"
    daemon.clock.advance(6)
    assert hub.clientCount == 1
    assert sample(hub.metrics.registry, "explorer_websocket_errors_total", type="slow_client") == 1
    stuck.transport.resumeProducing()
    code, reason = await stuck.closed
    assert code == 1008 and "not reading" in reason
    await healthy.close()


def hub_client_of(client, hub):
    """The hub's view of one of our clients, found by its port."""
    local = client.transport.getHost().port
    for c in hub._clients.values():
        if c.transport.getPeer().port == local:
            return c
    raise AssertionError("client not found in the hub")


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_is_closed_as_too_slow_within_seconds(start_daemon):
    # Nothing is narrowed on the server's side: on loopback the kernel would
    # take some 4 MiB (~35 of these blocks) for a client that stopped
    # reading before its transport paused, and the pong timeout would get
    # there first.  Each block's transactions are followed by a read probe
    # (a ping): when the next block comes a block time later (a chain, not
    # a catch-up) and the probe of a block sent more than half a second ago
    # is still unanswered, that block is unread and the client is closed.
    daemon = await start_daemon(write_deadline=10, ping_interval=30, pong_timeout=60)
    hub, clock = daemon.hub, daemon.clock
    reader = await connect(daemon.url)
    await reader.request({"action": "subscribe", "channels": ["newBlocks", "newTxs"]})
    reader_client = hub_client_of(reader, hub)
    stuck = await connect(daemon.url)
    stuck.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    await stuck.request({"action": "subscribe", "channels": ["newBlocks", "newTxs"]})
    stuck_client = hub_client_of(stuck, hub)
    stuck.transport.pauseProducing()  # it never reads again

    blocks = mainnet_run()[:6]
    n = 0
    while stuck_client.hub is not None:
        assert n < 30, "not closed as too slow in 30 blocks"
        block = blocks[n % len(blocks)]
        n += 1
        broadcast(hub, [block])
        # The reader gets each whole block, one a second, as a chain would
        # send them, and answers its probe.
        assert summary(await drain(reader)) == expected_messages([block], ["newBlocks", "newTxs"])
        await eventually(lambda: reader_client.probe_at is None, what="the reader's pong to the block's probe")
        clock.advance(1)
    # Block 0's probe, sent at 0, is unanswered when block 2 comes at 2 s
    # (the one before it came a block time after block 0 too: a chain).
    assert n == 3, f"closed at block {n}"
    assert sample(hub.metrics.registry, "explorer_websocket_errors_total", type="slow_client") == 1
    assert sample(hub.metrics.registry, "explorer_websocket_errors_total", type="ping_timeout") == 0

    # When it reads again it finds what had reached it, then a close saying why.
    stuck.transport.resumeProducing()
    code, reason = await stuck.closed
    first = int(blocks[0]["number"], 16)
    assert code == 1008 and reason.startswith(f"too slow: block {first} not read 2.0s after it was sent"), reason
    assert stuck.received and all(m["type"] in ("subscribed", "newBlock", "newTx") for m in stuck.received)
    assert hub.clientCount == 1
    assert await reader.request({"action": "ping"}) == {"type": "pong"}
    await reader.close()


@pytest_twisted.ensureDeferred
async def test_each_connection_holds_at_most_the_unsent_limit_in_the_kernel(start_daemon):
    daemon = await start_daemon(unsent_limit=65536)
    client = await connect(daemon.url)
    await client.request({"action": "subscribe", "channels": ["newBlocks"]})
    server_socket = hub_client_of(client, daemon.hub).transport.getHandle()
    assert server_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == 65536
    await client.close()

    off = await start_daemon(unsent_limit=0)  # left to the kernel
    client = await connect(off.url)
    await client.request({"action": "subscribe", "channels": ["newBlocks"]})
    server_socket = hub_client_of(client, off.hub).transport.getHandle()
    assert server_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == 0
    await client.close()


@pytest_twisted.ensureDeferred
async def test_one_sweep_pings_everyone_and_drops_the_silent(start_daemon):
    daemon = await start_daemon(ping_interval=30, pong_timeout=60)
    lively = await connect(daemon.url)
    silent = await connect(daemon.url, answer_pings=False)
    for client in (lively, silent):  # subscribers: one that holds nothing is closed at 30 s
        await client.request({"action": "subscribe", "channels": ["newBlocks"]})
    for t in (1, 2):
        daemon.clock.advance(30)
        await eventually(lambda: lively.pings == t and silent.pings == t, what=f"ping round {t}")
        # the lively client's pong arrives before the next round
        await drain(lively)
    assert daemon.hub.clientCount == 2, "60 s of silence is not yet more than 60 s"
    daemon.clock.advance(30)
    assert daemon.hub.clientCount == 1
    assert sample(daemon.hub.metrics.registry, "explorer_websocket_errors_total", type="ping_timeout") == 1
    await silent.closed
    assert await lively.request({"action": "ping"}) == {"type": "pong"}
    await lively.close()


@pytest_twisted.ensureDeferred
async def test_a_client_that_talks_but_stopped_reading_is_dropped_by_the_pong_timeout(start_daemon):
    # Its kernel buffers (megabytes on loopback) never fill at one block a
    # minute, so neither the queue limit nor the write deadline would catch it:
    # its own pings, messages and unsolicited pongs must not keep it alive.
    daemon = await start_daemon(ping_interval=30, pong_timeout=60)
    hub = daemon.hub
    lively = await connect(daemon.url)
    await lively.request({"action": "subscribe", "channels": ["newBlocks"]})
    stalled = await connect(daemon.url)
    await stalled.request({"action": "subscribe", "channels": ["newBlocks"]})
    stalled.transport.pauseProducing()
    block = mainnet_run()[0]
    for t in (1, 2, 3):
        stalled.sendPing(b"still here")
        stalled.sendPong(b"\0" * 8)
        stalled.send_json({"action": "ping"})
        daemon.clock.advance(30)
        hub.publish(Entry.fromNode(block))
        await drain(lively)
        if t < 3:
            assert hub.clientCount == 2, f"round {t}: not yet past the pong timeout"
    assert hub.clientCount == 1
    assert sample(hub.metrics.registry, "explorer_websocket_errors_total", type="ping_timeout") == 1
    stalled.transport.resumeProducing()
    await stalled.closed
    await lively.close()


@pytest_twisted.ensureDeferred
async def test_a_stalled_reader_past_both_deadlines_is_closed_once_and_the_sweep_goes_on(start_daemon):
    # Found by the fault soak: a reader paused past the write deadline that is also past the pong
    # timeout in the same sweep was closed as too slow, then dropped again as gone; its
    # connection was already detached, the sweep failed (a logged traceback), and the clients
    # after it in that sweep were neither dropped nor pinged.
    from twisted.logger import globalLogPublisher

    failures = []

    def observe(event):
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        daemon = await start_daemon(ping_interval=30, pong_timeout=60, write_deadline=10, send_queue=100000)
        hub = daemon.hub
        stalled = await connect(daemon.url)
        await stalled.request({"action": "subscribe", "channels": ["newTxs"]})
        silent = await connect(daemon.url)
        await silent.request({"action": "subscribe", "channels": ["newBlocks"]})
        stalled_client = constrain(stalled, hub)
        stalled.transport.pauseProducing()
        silent.transport.pauseProducing()
        block = mainnet_run()[0]
        while not stalled_client.paused:
            broadcast(hub, [block])
        daemon.clock.advance(61)  # one sweep: past the write deadline and the pong timeout at once
        assert failures == []
        assert hub.clientCount == 0
        registry = hub.metrics.registry
        assert sample(registry, "explorer_websocket_errors_total", type="slow_client") == 1
        assert sample(registry, "explorer_websocket_errors_total", type="ping_timeout") == 1
    finally:
        globalLogPublisher.removeObserver(observe)
    for client in (stalled, silent):
        client.transport.resumeProducing()
        daemon.clock.advance(10)  # past the close timeout of the one closed as too slow
        await client.closed


@pytest_twisted.ensureDeferred
async def test_a_slow_reader_that_keeps_reading_is_not_dropped_by_the_pong_timeout(start_daemon):
    # While it is paused its pings wait behind its queue; each pong it sends
    # once it has read that far keeps it alive, however long it stays behind
    # in between (the write deadline, not the pong timeout, bounds stalls).
    daemon = await start_daemon(ping_interval=30, pong_timeout=60, write_deadline=1000, send_queue=100000)
    hub = daemon.hub
    slow = await connect(daemon.url)
    await slow.request({"action": "subscribe", "channels": ["newTxs"]})
    slow_client = constrain(slow, hub)
    slow.transport.pauseProducing()
    block = mainnet_run()[0]
    while not slow_client.paused:
        broadcast(hub, [block])
    for _ in range(5):
        daemon.clock.advance(30)
        broadcast(hub, [block])
        assert slow_client.paused and slow_client.hub is hub
        # It reads everything, pongs, and stops again.
        slow.transport.resumeProducing()
        await eventually(lambda: not slow_client.queue and not slow_client.paused, what="caught up", timeout=30.0)
        pinged_at = hub.clock.seconds()
        await eventually(lambda: slow_client.last_seen == pinged_at, what="its pong")
        slow.transport.pauseProducing()
        while not slow_client.paused:
            broadcast(hub, [block])
    assert sample(hub.metrics.registry, "explorer_websocket_errors_total", type="ping_timeout") == 0
    slow.transport.resumeProducing()
    await drain(slow, timeout=30)
    await slow.close()


@pytest_twisted.ensureDeferred
async def test_no_garbage_collection_runs_while_a_block_goes_out(start_daemon):
    # A full collection at 10,000 clients takes ~200 ms: inside a fan-out it
    # would delay that block for everyone.  It runs once the block is out.
    daemon = await start_daemon()
    hub = daemon.hub
    clients = await connect_many(daemon.url, 3)
    for c in clients:
        await c.request({"action": "subscribe", "channels": ["newBlocks", "newTxs"]})
    collections = []
    writes = []

    def watch(phase, info):
        if phase == "start":
            collections.append(len(writes))

    for client in hub._clients.values():
        original = client.transport.write
        client.transport.write = lambda data, original=original: (writes.append(gc.isenabled()), original(data))
    threshold = gc.get_threshold()
    gc.callbacks.append(watch)
    try:
        gc.set_threshold(1)  # collect at every chance
        hub.publish(Entry.fromNode(mainnet_run()[0]))
        assert writes and not any(writes), "the collector was on during the fan-out"
        during = [n for n in collections if 0 < n < len(writes)]
        assert during == [], "a collection ran between writes"
        gc.collect(0)
        assert collections[-1] == len(writes)
        assert gc.isenabled()
    finally:
        gc.callbacks.remove(watch)
        gc.set_threshold(*threshold)
    for c in clients:
        got = await drain(c)
        assert got[0]["type"] == "newBlock" and len(got) == 1 + len(mainnet_run()[0]["transactions"])
        await c.close()


@pytest_twisted.ensureDeferred
async def test_connect_disconnect_churn_leaves_nothing_behind(start_daemon):
    daemon = await start_daemon(max_connections=100)
    hub = daemon.hub
    block = mainnet_run()[1]
    refs = []
    for round_ in range(6):
        clients = await connect_many(daemon.url, 40)
        for c in clients[::2]:
            c.send_json({"action": "subscribe", "channels": ["newBlocks", "newTxs"]})
        if round_ == 0:
            await drain(clients[0])
            refs = [weakref.ref(c) for c in hub._clients.values()]
            refs += [weakref.ref(p) for p in hub.slots.protocols]
        broadcast(hub, [block])
        # half close cleanly, half just drop the TCP connection
        for i, c in enumerate(clients):
            if i % 2:
                c.transport.abortConnection()
            else:
                c.sendClose(1000)
        await eventually(lambda: hub.connectionCount == 0, what="every connection released")
    assert hub.clientCount == 0
    assert all(not subs for subs in hub._subscribers.values())
    assert hub._paused == {} and hub.slots.count == 0 and hub._queued_total == 0
    assert sample(hub.metrics.registry, "explorer_websocket_connections") == 0
    del clients, c
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert alive == [], f"{len(alive)} clients or protocols still referenced"
