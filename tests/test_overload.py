"""
Overload: when the server cannot send a block's transactions to every
client before the next block, the clients it did not reach are closed
(1013, where to resume) and everyone else stays on time; a client that
reads, but slower than the chain, is closed as too slow once a broadcast
has waited the write deadline for it.
"""


import pytest_twisted

from explorerd.history import Entry
from explorerd.owed import SHED_AFTER
from tests.chaindata import mainnet_run
from tests.clients import connect, connect_many, drain
from tests.conftest import eventually
from tests.test_fanout import hub_client_of
from tests.metricvalues import sample

BOTH = ["newBlocks", "newTxs"]


def expected(blocks):
    out = []
    for block in blocks:
        out.append(("newBlock", block["hash"]))
        out.extend(("newTx", tx["hash"]) for tx in block["transactions"])
    return out


def summary(messages):
    return [(m["type"], m["data"]["hash"]) for m in messages if m["type"] in ("newBlock", "newTx")]


@pytest_twisted.ensureDeferred
async def test_clients_a_block_did_not_reach_before_the_next_are_closed_and_the_rest_stay_whole(start_daemon):
    daemon = await start_daemon(max_connections=100)
    hub = daemon.hub
    # One slice writes 16 clients, then the reactor gets a turn: blocks b and c
    # come in the same turn, so b reaches only the first 16 before c comes.
    hub._owed.slice_seconds = 0
    clients = await connect_many(daemon.url, 40)
    for c in clients:  # subscribed one after another: the order the passes take them in
        await c.request({"action": "subscribe", "channels": BOTH})
    a, b, c_ = mainnet_run()[:3]
    hub.publish(Entry.fromNode(a))
    for client in clients:
        assert summary(await drain(client)) == expected([a])

    hub.publish(Entry.fromNode(b))
    # b's rest has been going for longer than a block's may (the machine is
    # that slow) when c comes: its first slice reached only 16 clients.
    hub._owed._started -= SHED_AFTER
    hub.publish(Entry.fromNode(c_))
    reached, shed = clients[:16], clients[16:]
    for client in reached:
        assert summary(await drain(client)) == expected([b, c_])
    for client in shed:
        code, reason = await client.closed
        assert code == 1013
        assert reason == f"overloaded; resume with since {int(a['number'], 16)} {a['hash']}"
        # It was sent b's newBlock (everyone's comes first), nothing after.
        assert summary(client.received[-1:]) == [("newBlock", b["hash"])]
    assert hub.clientCount == 16
    assert sample(hub.metrics.registry, "explorer_websocket_errors_total", type="overloaded") == 24

    # One of them resumes where the close said: b and c, whole, once.
    again = await connect(daemon.url)
    answer = await again.request({"action": "subscribe", "channels": BOTH,
                                  "since": {"height": int(a["number"], 16), "hash": a["hash"]}})
    assert answer["type"] == "subscribed" and answer["replayed"] == 2
    assert summary(await drain(again)) == expected([b, c_])
    for client in reached + [again]:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_blocks_that_come_together_reach_everyone_whole(start_daemon):
    # A catch-up (after a node outage, a batch of the live-tail) publishes
    # blocks back to back: not overload; every client gets every block.
    daemon = await start_daemon(max_connections=100)
    hub = daemon.hub
    hub._owed.slice_seconds = 0
    clients = await connect_many(daemon.url, 40)
    for c in clients:
        await c.request({"action": "subscribe", "channels": BOTH})
    blocks = mainnet_run()[:4]
    for block in blocks:
        hub.publish(Entry.fromNode(block))
    for client in clients:
        assert summary(await drain(client)) == expected(blocks)
    assert sample(hub.metrics.registry, "explorer_websocket_errors_total", type="overloaded") in (None, 0)
    for client in clients:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_reply_to_a_client_a_block_still_owes_comes_after_that_block(start_daemon):
    daemon = await start_daemon()
    hub = daemon.hub
    hub._owed.slice_seconds = 0
    clients = await connect_many(daemon.url, 20)
    for c in clients:
        await c.request({"action": "subscribe", "channels": BOTH})
    block = mainnet_run()[0]
    hub.publish(Entry.fromNode(block))
    last = hub_client_of(clients[-1], hub)
    assert last.owed, "the last client's transactions wait for a later turn"
    hub.sendTo(last, {"type": "pong"})  # e.g. the answer to its ping, in this same turn
    got = []
    while True:
        message = await clients[-1].next()
        if message == {"type": "pong"}:
            break
        got.append(message)
    assert summary(got) == expected([block])
    await eventually(lambda: not len(hub._owed), what="every client paid")
    for c in clients:
        await c.close()


@pytest_twisted.ensureDeferred
async def test_a_client_that_has_not_read_the_previous_block_when_the_next_comes_is_closed(start_daemon):
    # Each block's transactions are followed by a read probe (a ping whose
    # payload names the block); a client's pong to it says it has read the
    # block.  On a chain (blocks a block time apart), a client that has not
    # answered the probe of a block sent half a second ago or more when the
    # next block comes is closed as too slow, however big its receive buffer.
    # A pong that reached us but that the busy reactor has not read yet counts.
    daemon = await start_daemon()
    hub, clock = daemon.hub, daemon.clock
    prompt = await connect(daemon.url, answer_pings=False)
    stalled = await connect(daemon.url, answer_pings=False)
    clients = (prompt, stalled)
    for c in clients:
        await c.request({"action": "subscribe", "channels": BOTH})
    a, b, c_ = mainnet_run()[:3]

    def probe_of(block):
        return b"B" + int(block["number"], 16).to_bytes(8, "big")

    hub.publish(Entry.fromNode(a))
    for c in clients:
        assert summary(await drain(c)) == expected([a])
        await eventually(lambda c=c: getattr(c, "last_ping", None) == probe_of(a), what="block a's probe")
        c.sendPong(c.last_ping)
    await eventually(lambda: not hub.keepalive.probed, what="both pongs")

    clock.advance(1)
    hub.publish(Entry.fromNode(b))
    for c in clients:
        assert summary(await drain(c)) == expected([b])
        await eventually(lambda c=c: c.last_ping == probe_of(b), what="block b's probe")
    # The prompt one answers now, and its pong is in our socket's buffer, but
    # the reactor has no turn to read it before the next block comes.
    prompt.sendPong(prompt.last_ping)
    prompt.transport.doWrite()
    clock.advance(1)
    hub.publish(Entry.fromNode(c_))

    code, reason = await stalled.closed
    assert code == 1008
    assert reason.startswith(f"too slow: block {int(b['number'], 16)} not read 1.0s after it was sent"), reason
    assert summary(await drain(prompt)) == expected([c_])
    assert hub.clientCount == 1
    assert sample(hub.metrics.registry, "explorer_websocket_errors_total", type="slow_client") == 1
    await prompt.close()


class MeteredTransport:
    """
    A transport whose peer reads C{per_turn} bytes a turn: it holds what is
    unread and pauses its producer while that is more than C{limit}, as
    explorerd's does with the kernel's unsent bytes and its own buffer.
    """

    def __init__(self, per_turn, limit=65536):
        self.per_turn = per_turn
        self.limit = limit
        self.unread = 0
        self.written = 0
        self.pings = []  # (bytes written up to its end, payload) of pings not answered yet
        self.producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.unread += len(data)
        if data.startswith(b"\x89"):  # a ping: answered once what came before it is read
            self.pings.append((self.written + len(data), data[2:]))
        self.written += len(data)
        if self.unread > self.limit and self.producer is not None:
            self.producer.pauseProducing()

    def writeSequence(self, iovec):
        for data in iovec:
            self.write(data)

    def read(self):
        self.unread = max(0, self.unread - self.per_turn)
        read = self.written - self.unread
        while self.pings and self.pings[0][0] <= read:
            _, payload = self.pings.pop(0)
            client = self.producer  # the hub's client is its transport's producer
            if client is not None and client.hub is not None:
                client.hub.pong(client, payload)
        if self.unread <= self.limit and self.producer is not None:
            self.producer.resumeProducing()


class Peer:
    def __init__(self, transport):
        self.transport = transport
        self.closed = None

    def beginClose(self, code, reason):
        self.closed = (code, reason)


def test_a_client_that_reads_slower_than_blocks_come_is_closed_by_the_write_deadline():
    # Blocks come 0.25 s apart (faster than SHED_AFTER: the "behind the
    # chain" rule stays out of it); the client reads every time, so its
    # transport is resumed and paused again and again and never stays paused
    # for the write deadline; but it reads half a block a block, and what
    # waits for it gets older with every block.  Closed once a broadcast
    # waited the write deadline (10 s); a client that keeps up is never
    # queued for.
    from twisted.internet.task import Clock

    from explorerd.config import Config
    from explorerd.hub import Hub
    from explorerd.metrics import Metrics

    clock = Clock()
    hub = Hub(clock, Config.defaults(write_deadline=10, send_queue=1000), Metrics())
    blocks = mainnet_run()[:6]
    per_block = max(len(Entry.fromNode(b).payload(True, "plain")[0]) for b in blocks)
    slow, fast = Peer(MeteredTransport(per_block // 2)), Peer(MeteredTransport(10 * per_block))
    clients = [hub.attach(p, "127.0.0.1") for p in (slow, fast)]
    for client in clients:
        hub.subscribe(client, BOTH)
    n = 0
    while slow.closed is None:
        assert n < 200, "never closed"
        hub.publish(Entry.fromNode(blocks[n % len(blocks)]))
        n += 1
        clock.advance(0.25)
        for p in (slow, fast):
            p.transport.read()
        assert not clients[0].paused or clock.seconds() - clients[0].paused_since < 10
    code, reason = slow.closed
    assert code == 1008 and reason.startswith("too slow: 1") and reason.endswith("s behind (write deadline 10s)"), reason
    # Half a block a block: t/2 behind at t; a broadcast has waited 10 s in
    # its queue (behind what its transport holds) at ~25 s, block ~100.
    assert 80 <= n <= 120, n
    assert fast.closed is None and not clients[1].queue
    assert sample(hub.metrics.registry, "explorer_websocket_errors_total", type="slow_client") == 1


def test_a_client_still_behind_when_the_next_block_comes_is_closed_as_too_slow():
    # On a chain (blocks a block time apart, not a catch-up's burst) a client
    # whose queue still holds broadcasts when the next block comes (its
    # kernel and transport full ahead of them) is closed, instead of getting
    # that block seconds late.
    from twisted.internet.task import Clock

    from explorerd.config import Config
    from explorerd.hub import Hub
    from explorerd.metrics import Metrics

    clock = Clock()
    hub = Hub(clock, Config.defaults(), Metrics())
    blocks = mainnet_run()[:6]
    stuck, fast = Peer(MeteredTransport(0)), Peer(MeteredTransport(10 ** 7))
    clients = [hub.attach(p, "127.0.0.1") for p in (stuck, fast)]
    for client in clients:
        hub.subscribe(client, BOTH)
    published = 0
    for block in blocks:
        hub.publish(Entry.fromNode(block))
        published += 1
        clock.advance(1)  # a block time, as on a chain
        fast.transport.read()
        if stuck.closed:
            break
    # Block 0 filled its transport (paused); block 1 was queued at t=1; when
    # block 2 came at t=2, block 1 was still waiting, and block 0's read
    # probe had not been answered for 2 s: that is what it is told.
    assert published == 3
    assert stuck.closed == (1008, f"too slow: block {int(blocks[0]['number'], 16)} not read 2.0s after it was sent")
    assert fast.closed is None and not clients[1].paused
    assert sample(hub.metrics.registry, "explorer_websocket_errors_total", type="slow_client") == 1


def test_blocks_that_come_together_keep_a_client_that_fell_behind_in_them():
    # A catch-up's blocks come back to back: nobody is "behind the chain" for it.
    from twisted.internet.task import Clock

    from explorerd.config import Config
    from explorerd.hub import Hub
    from explorerd.metrics import Metrics

    clock = Clock()
    hub = Hub(clock, Config.defaults(), Metrics())
    stuck = Peer(MeteredTransport(0))
    client = hub.attach(stuck, "127.0.0.1")
    hub.subscribe(client, BOTH)
    for block in mainnet_run()[:6]:
        hub.publish(Entry.fromNode(block))
        clock.advance(0.01)
    assert stuck.closed is None and client.paused and len(client.queue) > 4


def test_the_first_block_after_a_catch_up_does_not_close_a_client_still_reading_it():
    # The soak's node stalled, then 17 blocks (some of 300 transactions) came
    # together; the next block came 0.8 s later, and 313 clients that were
    # reading the burst at their own pace were closed as "0.8s behind the
    # chain".  A client is judged only once blocks come a block time apart
    # again, and only on what it has had a block time for; one that reads
    # nothing is still closed then.
    from twisted.internet.task import Clock

    from explorerd.config import Config
    from explorerd.hub import Hub
    from explorerd.metrics import Metrics

    clock = Clock()
    hub = Hub(clock, Config.defaults(), Metrics())
    blocks = mainnet_run()
    reader, stuck = Peer(MeteredTransport(2 * 10 ** 5)), Peer(MeteredTransport(0))
    clients = [hub.attach(p, "127.0.0.1") for p in (reader, stuck)]
    for client in clients:
        hub.subscribe(client, BOTH)
    clock.advance(1)
    for block in blocks[:4]:  # the catch-up
        hub.publish(Entry.fromNode(block))
        clock.advance(0.01)
    closed_at = {}
    for n, block in enumerate(blocks[4:], start=4):
        for _ in range(1 if n == 4 else 20):
            reader.transport.read()
        if n == 4:
            assert clients[0].paused and clients[0].queue  # still reading the catch-up
        clock.advance(0.8 if n == 4 else 1)
        hub.publish(Entry.fromNode(block))
        for i, p in enumerate((reader, stuck)):
            if p.closed and i not in closed_at:
                closed_at[i] = n
    # Block 4 (0.8 s after the burst) judges nobody; block 5, a block time
    # after it, does: the stuck client has not read the first block of all.
    assert closed_at == {1: 5}, (closed_at, reader.closed)
    first = int(blocks[0]["number"], 16)
    assert stuck.closed == (1008, f"too slow: block {first} not read 1.8s after it was sent"), stuck.closed
    for _ in range(20):
        reader.transport.read()
    assert reader.closed is None and clients[0].hub is hub and not clients[0].queue


def test_when_many_are_late_at_once_at_most_half_are_closed_a_block_furthest_behind_first():
    # Clients that fall behind together (one machine reading for all of
    # them, a shared link) are not all closed at once: at most half of the
    # clients a block, the ones whose unanswered probe is oldest first; the
    # others are judged again by the probes sent after that, two blocks on.
    from twisted.internet.task import Clock

    from explorerd.config import Config
    from explorerd.hub import Hub
    from explorerd.metrics import Metrics

    clock = Clock()
    hub = Hub(clock, Config.defaults(), Metrics())
    blocks = mainnet_run()[:8]
    late = [Peer(MeteredTransport(0, limit=10 ** 9)) for _ in range(4)]  # read nothing, never paused
    reader = Peer(MeteredTransport(10 ** 7))
    clients = [hub.attach(p, "127.0.0.1") for p in late + [reader]]
    for client in clients:
        hub.subscribe(client, BOTH)
    closed_at = {}
    for n, block in enumerate(blocks):
        hub.publish(Entry.fromNode(block))
        for i, p in enumerate(late):
            if p.closed and i not in closed_at:
                closed_at[i] = n
        reader.transport.read()
        clock.advance(1)
    # Block 2: 5 clients, 4 late: 2 closed.  Block 3: none judged.  Block 4:
    # 3 clients, 2 late: 1 closed.  Block 6: the last one.
    assert closed_at == {0: 2, 1: 2, 2: 4, 3: 6}, closed_at
    first = int(blocks[0]["number"], 16)
    assert late[0].closed == (1008, f"too slow: block {first} not read 2.0s after it was sent")
    assert late[2].closed[1].startswith(f"too slow: block {first + 2} not read 2.0s")
    assert reader.closed is None and clients[-1].hub is hub
