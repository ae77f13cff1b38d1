"""
Resuming with C{since}: a real daemon, real WebSocket clients, real blocks.

The blocks are real recorded mainnet blocks (about 160 transactions each),
laid end to end on continuous heights by the replay node
(L{explorerd.replay.ReplayNode} in endless mode, whose C{reorg(depth)}
makes a new branch); the tests hand them to the hub the way the live-tail
does, so that every seam (replay, then live) is under the test's control.
The last tests run the real live-tail against the replay node on a real
port, across a restart of the daemon.

What a client sends and gets::

    > {"action":"subscribe","channels":[...],"since":{"height":H,"hash":"0x.."}}
    < {"type":"subscribed","channels":[...],"replayed":n}
    < {"type":"reorg",...}         only if some of the client's blocks are gone
    < n blocks (with their transactions), then live, with no gap and no duplicate
or, when the history cannot tell where the client stands:
    < {"type":"error","error":{"code":"history_unavailable","oldest_height":...}}
    < {"type":"subscribed","channels":[...],"replayed":0}, then live
"""

import functools
import json
import re
import socket

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from explorerd.history import Entry
from explorerd.replay import ReplayNode
from tests.clients import connect, drain
from tests.conftest import eventually
from tests.replayfaults import ServedNode, served_block
from tests.metricvalues import sample

MAINNET = ("mainnet_11880804-11880810", "mainnet_15478281-15478287")
BOTH = ["newBlocks", "newTxs"]


def _reactor():
    from twisted.internet import reactor

    return reactor


class Chain:
    """
    Real blocks on continuous heights from 1, and a hub to publish them to
    as the live-tail does (the block, then its transactions, in one call
    when the hub can).
    """

    def __init__(self, hub, n):
        self.hub = hub
        self.node = ReplayNode(Clock(), MAINNET)  # endless: no orphans in these recordings
        self._blocks = {}
        self.grow(n)

    def grow(self, n):
        for _ in range(n):
            self.node.mine()

    @property
    def head(self):
        return self.node.head.height

    def block(self, height):
        block = self._blocks.get(height)
        if block is None:
            block = self._blocks[height] = served_block(self.node, height)
        return block

    def blocks(self, lo, hi):
        return [self.block(h) for h in range(lo, hi + 1)]

    def publish(self, lo, hi=None):
        for block in self.blocks(lo, lo if hi is None else hi):
            publish(self.hub, block)

    def reorg(self, depth):
        """Replace the last C{depth} blocks; returns what was removed, as a reorg names it."""
        head = self.head
        removed = [ref(self.block(h)) for h in range(head - depth + 1, head + 1)]
        self.node.reorg(depth)
        self._blocks.clear()
        ancestor = ref(self.block(head - depth))
        self.hub.publishReorg(depth, ancestor, removed)
        return ancestor, removed


def publish(hub, block):
    hub.publish(Entry.fromNode(block))


def ref(block):
    return {"height": int(block["number"], 16), "hash": block["hash"]}


def expected(blocks, channels=BOTH):
    out = []
    for block in blocks:
        if "newBlocks" in channels:
            out.append(("newBlock", block["hash"]))
        if "newTxs" in channels:
            out.extend(("newTx", tx["hash"]) for tx in block["transactions"])
    return out


def summary(messages):
    return [(m["type"], m["data"]["hash"]) for m in messages]


async def resume(url, since, channels=BOTH):
    client = await connect(url)
    client.send_json({"action": "subscribe", "channels": channels, "since": since})
    return client


async def subscribed(client, channels=BOTH, replayed=None):
    answer = await client.next()
    assert answer["type"] == "subscribed" and answer["channels"] == sorted(channels)
    if replayed is not None:
        assert answer["replayed"] == replayed
    return answer


# From inside the history ---------------------------------------------------------


@pytest.mark.parametrize("seam", ["none", "just-before", "right-after"])
@pytest_twisted.ensureDeferred
async def test_resume_inside_the_history_gets_exactly_the_missed_blocks_then_live(start_daemon, seam):
    daemon = await start_daemon()
    chain = Chain(daemon.hub, 12)
    chain.publish(1, 9)
    hub = daemon.hub
    if seam == "right-after":
        # A block published in the same reactor turn as the replay, right
        # after it: it must come once, live, after the replayed ones.
        original = hub.replay

        def replay_then_publish(*args, **kwargs):
            n = original(*args, **kwargs)
            hub.replay = original
            chain.publish(10)
            return n

        hub.replay = replay_then_publish
    client = await resume(daemon.url, ref(chain.block(5)))
    if seam == "just-before":
        chain.publish(10)  # before the server reads the subscribe: it is replayed
    await subscribed(client, replayed=5 if seam == "just-before" else 4)
    if seam == "none":
        chain.publish(10)
    chain.publish(11, 12)
    assert summary(await drain(client)) == expected(chain.blocks(6, 12))
    await client.close()


@pytest_twisted.ensureDeferred
async def test_resume_from_the_newest_block_replays_nothing(start_daemon):
    daemon = await start_daemon()
    chain = Chain(daemon.hub, 5)
    chain.publish(1, 4)
    client = await resume(daemon.url, ref(chain.block(4)))
    await subscribed(client, replayed=0)
    chain.publish(5)
    assert summary(await drain(client)) == expected(chain.blocks(5, 5))
    await client.close()


@pytest.mark.parametrize("channels", [["newBlocks"], ["newTxs"]])
@pytest_twisted.ensureDeferred
async def test_resume_with_one_channel_replays_only_that_channel(start_daemon, channels):
    daemon = await start_daemon()
    chain = Chain(daemon.hub, 8)
    chain.publish(1, 6)
    client = await resume(daemon.url, ref(chain.block(3)), channels)
    await subscribed(client, channels, replayed=3)
    chain.publish(7, 8)
    assert summary(await drain(client)) == expected(chain.blocks(4, 8), channels)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_an_uppercase_hash_resumes_like_a_lowercase_one(start_daemon):
    daemon = await start_daemon()
    chain = Chain(daemon.hub, 4)
    chain.publish(1, 4)
    since = ref(chain.block(2))
    client = await resume(daemon.url, {"height": since["height"], "hash": "0x" + since["hash"][2:].upper()})
    await subscribed(client, replayed=2)
    assert summary(await drain(client)) == expected(chain.blocks(3, 4))
    await client.close()


# Across a reorg --------------------------------------------------------------------


@pytest.mark.parametrize("held", [0, 1, 2], ids=["held-the-tip", "held-one-below", "held-two-below"])
@pytest.mark.parametrize("channels", [BOTH, ["newTxs"]], ids=["both", "newTxs-only"])
@pytest_twisted.ensureDeferred
async def test_resume_across_a_reorg_names_the_clients_removed_blocks_then_the_new_branch(
        start_daemon, held, channels):
    daemon = await start_daemon()
    chain = Chain(daemon.hub, 10)
    chain.publish(1, 10)
    since = ref(chain.block(10 - held))
    ancestor, removed = chain.reorg(3)  # 8-10 replaced
    chain.grow(1)
    chain.publish(8, 11)
    client = await resume(daemon.url, since, channels)
    await subscribed(client, channels, replayed=4)
    reorg = await client.next()
    gone = removed[:len(removed) - held]
    assert reorg == {"type": "reorg", "data": {"depth": len(gone), "common_ancestor": ancestor,
                                               "removed": gone}}
    chain.grow(1)
    chain.publish(12)
    assert summary(await drain(client)) == expected(chain.blocks(8, 12), channels)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_resume_from_a_block_below_the_reorg_gets_only_the_new_branch(start_daemon):
    daemon = await start_daemon()
    chain = Chain(daemon.hub, 10)
    chain.publish(1, 10)
    since = ref(chain.block(6))
    chain.reorg(3)
    chain.publish(8, 10)
    client = await resume(daemon.url, since)
    await subscribed(client, replayed=4)
    assert summary(await drain(client)) == expected(chain.blocks(7, 10))
    await client.close()


# When the history cannot serve it -----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_resume_older_than_the_history_gets_history_unavailable_then_live(start_daemon):
    daemon = await start_daemon(history_blocks=4)
    chain = Chain(daemon.hub, 11)
    chain.publish(1, 10)  # the history holds 7-10
    client = await resume(daemon.url, ref(chain.block(5)))
    error = await client.next()
    assert error["type"] == "error" and error["error"]["code"] == "history_unavailable"
    assert error["error"]["oldest_height"] == 7
    await subscribed(client, replayed=0)
    chain.publish(11)
    assert summary(await drain(client)) == expected(chain.blocks(11, 11))
    await client.close()


@pytest_twisted.ensureDeferred
async def test_resume_from_the_parent_of_the_oldest_block_gets_the_whole_history(start_daemon):
    daemon = await start_daemon(history_blocks=4)
    chain = Chain(daemon.hub, 11)
    chain.publish(1, 11)
    # The history holds 8-11: the parent of its oldest block is a place to resume from.
    client = await resume(daemon.url, ref(chain.block(7)))
    await subscribed(client, replayed=4)
    assert summary(await drain(client)) == expected(chain.blocks(8, 11))
    await client.close()


@pytest.mark.parametrize("history", ["empty", "full"])
@pytest_twisted.ensureDeferred
async def test_resume_from_an_unknown_hash_gets_history_unavailable_then_live(start_daemon, history):
    daemon = await start_daemon()
    chain = Chain(daemon.hub, 4)
    if history == "full":
        chain.publish(1, 3)
    client = await resume(daemon.url, {"height": 2, "hash": "0x" + "ab" * 32})
    error = await client.next()
    assert error["type"] == "error" and error["error"]["code"] == "history_unavailable"
    assert error["error"]["oldest_height"] == (1 if history == "full" else None)
    await subscribed(client, replayed=0)
    chain.publish(4)
    assert summary(await drain(client)) == expected(chain.blocks(4, 4))
    await client.close()


@pytest.mark.parametrize("off_by", [-2, 1])
@pytest_twisted.ensureDeferred
async def test_a_since_whose_height_contradicts_its_hash_gets_history_unavailable_naming_both(
        start_daemon, off_by):
    daemon = await start_daemon()
    chain = Chain(daemon.hub, 7)
    chain.publish(1, 6)
    held = ref(chain.block(4))
    client = await resume(daemon.url, {"height": 4 + off_by, "hash": held["hash"]})
    error = await client.next()
    assert error["type"] == "error" and error["error"]["code"] == "history_unavailable"
    assert f"that hash is block 4 here, not {4 + off_by}" in error["error"]["message"]
    assert error["error"]["oldest_height"] == 1
    await subscribed(client, replayed=0)
    chain.publish(7)
    assert summary(await drain(client)) == expected(chain.blocks(7, 7))
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_block_that_does_not_link_to_the_newest_reaches_nobody(start_daemon):
    from explorerd.history import BrokenChain, Entry

    daemon = await start_daemon()
    chain = Chain(daemon.hub, 4)
    chain.publish(1, 3)
    client = await resume(daemon.url, ref(chain.block(3)))
    await subscribed(client, replayed=0)
    stranger = dict(chain.block(4), parentHash="0x" + "cd" * 32)
    with pytest.raises(BrokenChain, match="roll back"):
        daemon.hub.publish(Entry.fromNode(stranger))
    assert await drain(client) == []
    assert daemon.hub.history.newest.height == 3
    chain.publish(4)
    assert summary(await drain(client)) == expected(chain.blocks(4, 4))
    await client.close()


H = "0x" + "ab" * 32


@pytest.mark.parametrize("since", [
    "0x" + "ab" * 32, 7, [], True, {}, {"height": 5}, {"hash": H},
    {"height": -1, "hash": H}, {"height": True, "hash": H}, {"height": 5.0, "hash": H},
    {"height": "5", "hash": H}, {"height": None, "hash": H}, {"height": 5, "hash": H[:-1]},
    {"height": 5, "hash": H + "a"}, {"height": 5, "hash": "ab" * 33}, {"height": 5, "hash": "0x" + "g" * 64},
    {"height": 5, "hash": 7}, {"height": 5, "hash": None},
    pytest.param({"height": 5, "hash": "0x-" + "a" * 63}, id="sign"),
    pytest.param({"height": 5, "hash": "0x " + "a" * 63}, id="space"),
    pytest.param({"height": 5, "hash": "0x00" + "_0" * 31}, id="underscores"),
])
@pytest_twisted.ensureDeferred
async def test_an_invalid_since_is_an_invalid_message_and_subscribes_nothing(start_daemon, since):
    daemon = await start_daemon()
    chain = Chain(daemon.hub, 2)
    chain.publish(1)
    client = await resume(daemon.url, since)
    error = await client.next()
    assert error["type"] == "error" and error["error"]["code"] == "invalid_message"
    assert "since" in error["error"]["message"]
    chain.publish(2)
    assert await drain(client) == []  # not subscribed
    await client.close()


@pytest_twisted.ensureDeferred
async def test_since_null_is_a_plain_subscribe(start_daemon):
    daemon = await start_daemon()
    chain = Chain(daemon.hub, 2)
    chain.publish(1)
    client = await resume(daemon.url, None)
    assert await client.next() == {"type": "subscribed", "channels": BOTH}
    chain.publish(2)
    assert summary(await drain(client)) == expected(chain.blocks(2, 2))
    await client.close()


# A slow client -------------------------------------------------------------------


async def small_socket_client(port):
    """An Autobahn client on a socket whose receive buffer was set to 64 KiB before it connected."""
    from autobahn.twisted.websocket import WebSocketClientFactory
    from twisted.internet.defer import Deferred, DeferredQueue

    from tests.clients import RecordingClient

    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/v1/stream")
    # Autobahn validates UTF-8 byte by byte in Python without wsaccel: 14 MB would take seconds.
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=0, closeHandshakeTimeout=0,
                               utf8validateIncoming=False)

    class RawClient(RecordingClient):
        """Keeps the raw payloads; decoded at the end (40,000 messages)."""

        def onMessage(self, payload, isBinary):
            self.received.append(payload)

    def build():
        p = RawClient()
        p.factory = factory
        p.received, p.inbox, p.pings, p.closed = [], DeferredQueue(), 0, Deferred()
        return p

    factory.protocol = build
    factory.opened = Deferred()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect(("127.0.0.1", port))  # loopback: at once
        sock.setblocking(False)
        _reactor().adoptStreamConnection(sock.fileno(), socket.AF_INET, factory)
    finally:
        sock.close()  # the reactor holds its own duplicate
    return await factory.opened


@pytest_twisted.ensureDeferred
async def test_replaying_the_full_history_to_a_slow_small_socket_client_does_not_disconnect_it(start_daemon):
    daemon = await start_daemon()  # history 256, write deadline 10s, send queue 256, 1 KiB write buffer
    assert daemon.service.config.history_blocks == 256
    chain = Chain(daemon.hub, 258)
    chain.publish(1, 257)
    messages = 1 + len(expected(chain.blocks(2, 258)))
    client = await small_socket_client(daemon.port)
    received = [0]
    goal = [0]
    original = client.dataReceived

    def counting(data):
        received[0] += len(data)
        original(data)
        if received[0] >= goal[0]:
            # Stop reading at once, however fast this machine reads: at most one
            # read (64 KiB) past the second's budget.
            client.transport.pauseProducing()

    client.dataReceived = counting
    client.transport.pauseProducing()
    client.send_json({"action": "subscribe", "channels": BOTH, "since": ref(chain.block(1))})
    rate = 512 * 1024  # bytes read per second of the hub's clock, no faster
    while not client.closed.called and len(client.received) < messages:
        goal[0] = received[0] + rate
        client.transport.resumeProducing()
        await eventually(lambda: received[0] >= goal[0] or len(client.received) >= messages
                         or client.closed.called, timeout=10.0, what="the client to read on")
        client.transport.pauseProducing()
        daemon.clock.advance(1.0)
        if daemon.clock.seconds() == 3:
            chain.publish(258)  # a live block while the replay is still going out
    goal[0] = float("inf")
    client.transport.resumeProducing()
    assert not client.closed.called, (f"closed after {daemon.clock.seconds()}s of reading: "
                                      f"{client.close_code} {client.close_reason}")
    got = [json.loads(m) for m in client.received]
    assert got[0]["type"] == "subscribed" and got[0]["replayed"] == 256
    assert summary(got[1:]) == expected(chain.blocks(2, 258))
    assert daemon.clock.seconds() > 20  # it was slow: 14 MB at 512 KiB/s
    await client.close()


# Through the live-tail, across a restart of the daemon ----------------------------


@pytest_twisted.async_yield_fixture
async def replay_node():
    """
    A replay node (endless, mainnet only) on a real loopback port; the test
    mines, and fault delays run on the node's clock.
    """
    served = await ServedNode(ReplayNode(Clock(), MAINNET)).listen(_reactor())
    yield served
    await served.close(_reactor())


async def tailing(start_daemon, served, state_dir, **config):
    daemon = await start_daemon(with_tail=True, rpc_url=served.url, state_dir=str(state_dir),
                                max_reorg_depth=8, **config)
    return daemon, daemon.service.tail


async def stop(daemon):
    await daemon.service.stopService()


async def streamed_then_stopped(start_daemon, node, tmp_path):
    """
    A daemon tails the node from block 1 and streams blocks 2-7 to a
    client, then stops; returns the client and what it got.
    """
    node.node.mine()
    first, tail = await tailing(start_daemon, node, tmp_path)
    await tail.whenIdle()  # block 1 published
    client = await connect(first.url)
    assert (await client.request({"action": "subscribe", "channels": BOTH}))["type"] == "subscribed"
    for _ in range(6):
        node.node.mine()
        assert await tail.poll()
    got = await drain(client)
    await stop(first)
    return client, got


async def restarted_after_a_reorg(start_daemon, node, tmp_path):
    """
    L{streamed_then_stopped}, then, while the daemon is down, a reorg
    replaces blocks 6-7 and block 8 is mined; a second daemon starts on the
    same state directory.  Returns the client's last block, the removed
    blocks, the second daemon, its tail and what C{whenRestored} fired with.
    """
    client, _ = await streamed_then_stopped(start_daemon, node, tmp_path)
    await client.closed
    last = ref(served_block(node.node, 7))
    removed = [ref(served_block(node.node, h)) for h in (6, 7)]
    node.node.reorg(2)  # while the daemon is down
    node.node.mine()
    second, tail = await tailing(start_daemon, node, tmp_path)
    restored = await tail.whenRestored()
    return last, removed, second, tail, restored


@pytest_twisted.ensureDeferred
async def test_a_stopping_daemon_says_1001_to_the_client_it_streamed_to(start_daemon, replay_node, tmp_path):
    node = replay_node
    client, got = await streamed_then_stopped(start_daemon, node, tmp_path)
    assert summary(got) == expected([served_block(node.node, h) for h in range(2, 8)])
    assert (await client.closed)[0] == 1001


@pytest_twisted.ensureDeferred
async def test_a_restarted_daemon_restores_the_history_its_clients_saw(start_daemon, replay_node, tmp_path):
    _, _, _, _, restored = await restarted_after_a_reorg(start_daemon, replay_node, tmp_path)
    assert restored == 7  # 1-7, as clients saw them, orphans included


async def resumed_after_the_restart(start_daemon, node, tmp_path):
    """L{restarted_after_a_reorg}, then the client resumes from its last block: what it gets."""
    last, removed, second, tail, _ = await restarted_after_a_reorg(start_daemon, node, tmp_path)
    await tail.whenIdle()
    client = await resume(second.url, last)
    answer = await client.next()
    first = await client.next()
    rest = await drain(client)
    return client, tail, removed, answer, first, rest


@pytest_twisted.ensureDeferred
async def test_after_a_restart_a_client_resumes_across_a_reorg_that_happened_while_down(
        start_daemon, replay_node, tmp_path):
    node = replay_node
    client, _, removed, answer, first, rest = await resumed_after_the_restart(start_daemon, node, tmp_path)
    assert answer == {"type": "subscribed", "channels": BOTH, "replayed": 3}
    assert first == {"type": "reorg", "data": {
        "depth": 2, "common_ancestor": ref(served_block(node.node, 5)), "removed": removed}}
    assert summary(rest) == expected([served_block(node.node, h) for h in range(6, 9)])
    await client.close()


@pytest_twisted.ensureDeferred
async def test_after_a_restart_a_client_resumes_from_a_block_a_reorg_removed_before_it(
        start_daemon, replay_node, tmp_path):
    # Found by the fault soak: a client that left holding a block which a reorg then removed (it
    # never saw the reorg) came back after a restart and got history_unavailable, because the
    # restarted daemon's history knew the canonical blocks only, not the orphans.
    node = replay_node
    node.node.mine()
    first, tail = await tailing(start_daemon, node, tmp_path)
    await tail.whenIdle()
    client = await connect(first.url)
    assert (await client.request({"action": "subscribe", "channels": BOTH}))["type"] == "subscribed"
    for _ in range(6):
        node.node.mine()
        assert await tail.poll()
    await drain(client)
    await client.close()
    last = ref(served_block(node.node, 7))
    removed = [ref(served_block(node.node, h)) for h in (6, 7)]
    node.node.reorg(2)
    node.node.mine()
    assert await tail.poll()  # the reorg, and 6-8 of the new branch: nobody is told
    await stop(first)
    second, tail = await tailing(start_daemon, node, tmp_path)
    await tail.whenRestored()
    await tail.whenIdle()
    client = await resume(second.url, last)
    assert await client.next() == {"type": "subscribed", "channels": BOTH, "replayed": 3}
    assert await client.next() == {"type": "reorg", "data": {
        "depth": 2, "common_ancestor": ref(served_block(node.node, 5)), "removed": removed}}
    assert summary(await drain(client)) == expected([served_block(node.node, h) for h in range(6, 9)])
    await client.close()


@pytest_twisted.ensureDeferred
async def test_after_resuming_across_a_restart_live_blocks_follow(start_daemon, replay_node, tmp_path):
    node = replay_node
    client, tail, _, _, _, _ = await resumed_after_the_restart(start_daemon, node, tmp_path)
    node.node.mine()
    assert await tail.poll()
    assert summary(await drain(client)) == expected([served_block(node.node, 9)])
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_resume_while_the_history_is_being_restored_waits_for_it(start_daemon, replay_node, tmp_path):
    node = replay_node.node
    block = functools.partial(served_block, node)
    node.mine()
    first, tail = await tailing(start_daemon, replay_node, tmp_path)
    await tail.whenIdle()
    for _ in range(4):
        node.mine()
        assert await tail.poll()
    last = ref(block(5))
    await stop(first)
    node.mine()
    replay_node.faults.inject("delay", count=1, delay=1.0)  # the restarted tail's first request waits
    second, tail = await tailing(start_daemon, replay_node, tmp_path)
    restored = tail.whenRestored()
    await eventually(lambda: replay_node.faults.delayedRequests, what="the tail to ask the node")
    client = await resume(second.url, last)
    registry = second.service.metrics.registry
    await eventually(lambda: registry.get_sample_value("explorer_websocket_messages_received_total"),
                     what="the server to read the subscribe")
    node.clock.advance(1.0)  # the node answers; the tail restores, then publishes 6
    assert await restored == 5
    await tail.whenIdle()
    first_answer = await client.next()
    assert first_answer["type"] == "subscribed", first_answer
    assert summary(await drain(client)) == expected([block(6)])
    await client.close()


# What a replay costs -----------------------------------------------------------
#
# A replay counts against the connection's message budget as one message per
# 64 KiB it sends (the subscribe included), at most a whole burst.  These
# tests use a burst of 10 (at the default 20 a second) and a history of 32
# real mainnet blocks, about 1.8 MiB with their transactions: a full replay
# would cost ~29 uncapped, so it costs the whole burst.

BUDGET = dict(message_burst=10, history_blocks=32)


def oldest_parent(hub):
    """The resume point that replays the whole history."""
    oldest = hub.history.oldest
    return {"height": oldest.height - 1, "hash": oldest.parent_hash}


def answers(client):
    return [m for m in client.received if m["type"] == "subscribed"]


@pytest_twisted.ensureDeferred
async def test_a_full_replay_on_a_fresh_connection_goes_through_though_it_costs_more_than_the_burst(
        start_daemon):
    daemon = await start_daemon(**BUDGET)
    chain = Chain(daemon.hub, 34)
    chain.publish(1, 33)  # the history holds 2-33
    assert daemon.hub.history.replay_size(1, True, "plain") > 10 * 64 * 1024
    client = await resume(daemon.url, ref(chain.block(1)))
    await subscribed(client, replayed=32)
    daemon.clock.advance(1.0)  # the drain's ping must be paid for
    chain.publish(34)
    assert summary(await drain(client)) == expected(chain.blocks(2, 34))
    await client.close()


@pytest.mark.parametrize("pause", [0.0, 0.05, 0.25], ids=["at-once", "one-token-later", "five-tokens-later"])
@pytest_twisted.ensureDeferred
async def test_a_loop_of_replays_is_closed_1008_naming_the_budget_and_a_bystander_gets_every_block(
        start_daemon, pause):
    daemon = await start_daemon(**BUDGET)
    hub = daemon.hub
    chain = Chain(hub, 60)
    chain.publish(1, 32)
    bystander = await connect(daemon.url)
    assert (await bystander.request({"action": "subscribe", "channels": BOTH}))["type"] == "subscribed"
    flooder = await connect(daemon.url)
    height = 32
    while not flooder.closed.called and height < 60:
        asked = len(answers(flooder))
        flooder.send_json({"action": "subscribe", "channels": BOTH, "since": oldest_parent(hub)})
        await eventually(lambda: len(answers(flooder)) > asked or flooder.closed.called,
                         what="a replay or the close")
        height += 1
        chain.publish(height)
        daemon.clock.advance(pause)
    code, reason = await flooder.closed
    assert code == 1008 and reason.startswith("too many messages: ")
    assert "the budget is 20 a second, bursts of 10" in reason
    if pause:  # the subscribe was paid for, its replay could not be
        assert re.match(r"too many messages: a replay of \d+\.\d MiB counts as 10;", reason)
    assert len(answers(flooder)) == 1  # one full replay, not one per message
    assert sample(hub.metrics.registry, "explorer_websocket_errors_total", type="message_budget") == 1
    assert summary(await drain(bystander)) == expected(chain.blocks(33, height))
    await bystander.close()


@pytest_twisted.ensureDeferred
async def test_small_replays_cost_one_message_each(start_daemon):
    daemon = await start_daemon(**BUDGET)
    chain = Chain(daemon.hub, 33)
    chain.publish(1, 32)
    client = await connect(daemon.url)
    # One block alone (~1 KiB) costs one message, the subscribe's own; so
    # does a whole history of blocks alone (~30 KiB).
    one_block = expected(chain.blocks(32, 32), ["newBlocks"])
    assert daemon.hub.history.replay_size(31, True, None) < 64 * 1024
    assert daemon.hub.history.replay_size(0, True, None) < 64 * 1024
    for _ in range(3):
        client.send_json({"action": "subscribe", "channels": ["newBlocks"], "since": ref(chain.block(31))})
        await subscribed(client, ["newBlocks"], replayed=1)
        assert summary([await client.next() for _ in one_block]) == one_block
    for _ in range(3):
        client.send_json({"action": "unsubscribe", "channels": ["newTxs"]})
        await client.next()
        client.send_json({"action": "subscribe", "channels": ["newBlocks"], "since": oldest_parent(daemon.hub)})
        await subscribed(client, ["newBlocks"], replayed=32)
        assert len([await client.next() for _ in range(32)]) == 32
    # Nine messages so far, in no time at all: the tenth fits the burst, the eleventh not.
    assert await client.request({"action": "ping"}) == {"type": "pong"}
    client.send_json({"action": "ping"})
    code, reason = await client.closed
    assert code == 1008 and reason == "too many messages: the budget is 20 a second, bursts of 10"
