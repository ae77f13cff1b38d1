"""
The recorded reorgs, end to end: the replay node in recording mode (real
Polygon and Rinkeby blocks with their real orphans, original heights and
hashes) on a real loopback port, tailed by the daemon's own live-tail into
its hub, watched by a real WebSocket client.

Every head event is made by C{node.mine()} and followed by one poll of the
tail; the client's stream is read after each (a ping's pong comes after
everything before it).  The reorg messages must be what
L{explorerd.replay.expected_reorgs} says the node did: same step, depth,
removed hashes (with their heights) and common ancestor.

Polygon 13522239-13522298 starts on a fork whose point lies below the
recording (the side branch 13522239'/13522240' has a parent the recording
never saw), so the node cannot name the common ancestor and neither can the
tail.  What the tail does then, asserted below: C{removed} and C{depth} are
exact (every block it published that left the chain); C{common_ancestor} is
C{{"height": lowest removed - 1, "hash": parentHash of the new branch's
first block}}, the block the new branch builds on, which is all a client
needs to re-anchor; the new branch is published from the lowest removed
height, so the client's chain stays contiguous; and the tail logs an error
saying the fork point is unknown.
"""

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from explorerd.replay import ReplayNode, expected_reorgs, load_recording
from tests.replayfaults import ServedNode
from tests.clients import connect
from tests.conftest import eventually

RECORDINGS = [
    "polygon_13522175-13522230",  # one orphan, seen before its sibling
    "polygon_13522239-13522298",  # a flip-flop between branches forked below the recording
    "rinkeby_4941854-4941873",  # two single-block reorgs
    "rinkeby_4947153-4947173",
    "mainnet_11880804-11880810",  # none
]


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def errors():
    seen = []

    def observer(event):
        if event.get("log_level") == LogLevel.error:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


@pytest_twisted.async_yield_fixture
async def served():
    """C{await served(name)} → a recording-mode replay node on a real port, with no head yet."""
    started = []

    async def serve(name):
        served = await ServedNode(ReplayNode.recording(Clock(), name)).listen(_reactor())
        started.append(served)
        return served

    yield serve
    for served in started:
        await served.close(_reactor())


def sent(daemon):
    """Messages the server has written to its clients (here: the one client), by its own count."""
    return sum(s.value for m in daemon.service.metrics.registry.collect()
               if m.name == "explorer_websocket_messages_sent" for s in m.samples
               if s.name.endswith("_total"))


async def arrived(daemon, client):
    """
    The messages the client got since the last call, once it has all the
    server wrote.  (Not a ping per step: the server limits how many
    messages a client may send.)
    """
    total = int(sent(daemon))
    await eventually(lambda: len(client.received) >= total, what="the client to read what was sent")
    assert len(client.received) == total
    new, client.seen = client.received[getattr(client, "seen", 0):], total
    return new


class View:
    """The client's chain, built from its stream and checked message by message."""

    def __init__(self):
        self.chain = []  # [(height, hash)]
        self.txs = {}

    def apply(self, m):
        kind, d = m["type"], m["data"]
        if kind == "newBlock":
            if self.chain:
                assert (d["height"], d["parent_hash"]) == (self.chain[-1][0] + 1, self.chain[-1][1]), \
                    f"gap, duplicate or unannounced reorg: {d} after {self.chain[-1]}"
            self.chain.append((d["height"], d["hash"]))
            self.txs[d["hash"]] = []
        elif kind == "newTx":
            assert (d["block_height"], d["block_hash"]) == self.chain[-1]
            self.txs[d["block_hash"]].append(d["hash"])
        elif kind == "reorg":
            removed = [(r["height"], r["hash"]) for r in d["removed"]]
            assert d["depth"] == len(removed) > 0 and removed == self.chain[-len(removed):]
            del self.chain[-len(removed):]
            ancestor = (d["common_ancestor"]["height"], d["common_ancestor"]["hash"])
            assert ancestor[0] == removed[0][0] - 1
            if self.chain:
                assert ancestor == self.chain[-1]
        else:
            raise AssertionError(f"unexpected message {m}")


@pytest.mark.parametrize("name", RECORDINGS)
@pytest_twisted.ensureDeferred
async def test_the_client_sees_the_recorded_reorgs(start_daemon, served, errors, name):
    recording = load_recording(name)
    served_node = await served(name)
    node = served_node.node
    daemon = await start_daemon(with_tail=True, rpc_url=served_node.url)
    tail = daemon.service.tail
    await tail.whenIdle()  # its first poll: the node has no head yet, nothing to publish
    assert tail.published is None
    client = await connect(daemon.url)
    answer = await client.request({"action": "subscribe", "channels": ["newBlocks", "newTxs"]})
    assert answer["type"] == "subscribed"
    assert await arrived(daemon, client) == [answer]

    view, reorgs, step = View(), [], 0
    while node.mine() is not None:
        assert await tail.poll()
        for m in await arrived(daemon, client):
            view.apply(m)
            if m["type"] == "reorg":
                reorgs.append((step, m["data"]))
        step += 1

    expected = expected_reorgs(recording)
    assert [s for s, _ in reorgs] == [r.step for r in expected]
    blocks = {b["hash"]: b for b in recording.blocks + recording.orphans}
    for (_, got), want in zip(reorgs, expected):
        first = want.new_head.height - len(want.added) + 1
        assert got["depth"] == want.depth
        assert got["removed"] == [{"height": first + i, "hash": h} for i, h in enumerate(want.removed)]
        if want.ancestor is not None:
            assert got["common_ancestor"] == {"height": want.ancestor.height, "hash": want.ancestor.hash}
        else:
            # The fork point is below the recording: the block the new branch builds on.
            assert got["common_ancestor"] == {"height": first - 1,
                                              "hash": blocks[want.added[0]]["parentHash"]}
    unknown = sum(1 for r in expected if r.ancestor is None)
    assert len([e for e in errors if "fork point is unknown" in e]) == unknown
    assert len(errors) == unknown

    # The client ends on the recorded canonical chain, from the first head on,
    # every block with its transactions in order.
    assert view.chain == [(int(b["number"], 16), b["hash"]) for b in recording.blocks]
    for b in recording.blocks:
        assert view.txs[b["hash"]] == [tx["hash"] for tx in b["transactions"]]
    registry = tail.metrics.registry
    assert registry.get_sample_value("explorer_tail_reorgs_total") == len(expected)
    assert registry.get_sample_value("explorer_tail_reorg_depth_sum") == sum(r.depth for r in expected)
    await client.close()


def wire_logs(logs):
    return [{"address": log["address"].lower(), "topics": [t.lower() for t in log["topics"]],
             "data": log["data"].lower(), "tx_hash": log["transactionHash"].lower(),
             "tx_index": int(log["transactionIndex"], 16), "log_index": int(log["logIndex"], 16)}
            for log in logs]


@pytest.mark.parametrize("name", ["polygon_13522175-13522230", "polygon_13522239-13522298",
                                  "rinkeby_4947153-4947173"])
@pytest_twisted.ensureDeferred
async def test_the_logs_a_client_applies_are_the_canonical_chains_logs(start_daemon, served, errors, name):
    """
    Through the real reorgs, the logs a client holds (every one added, minus every one retracted)
    are exactly the recorded canonical chain's logs, in chain order, each once.
    """
    recording = load_recording(name)
    served_node = await served(name)
    node = served_node.node
    daemon = await start_daemon(with_tail=True, rpc_url=served_node.url)
    tail = daemon.service.tail
    await tail.whenIdle()
    client = await connect(daemon.url)
    assert (await client.request({"action": "subscribe", "channels": ["logs"]}))["type"] == "subscribed"
    await arrived(daemon, client)
    held, order, retracted = {}, [], 0
    while node.mine() is not None:
        assert await tail.poll()
        for m in await arrived(daemon, client):
            if m["type"] == "reorg":
                continue
            assert m["type"] == "logs"
            data = m["data"]
            if data["removed"]:
                assert held.pop(data["block_hash"]) == data["logs"], "retracted what it was not sent"
                order.remove(data["block_hash"])
                retracted += 1
            else:
                assert data["block_hash"] not in held, "a block's logs twice"
                held[data["block_hash"]] = data["logs"]
                order.append(data["block_hash"])
    assert tail.receipts_source == "logs"  # the replay node has no receipts: the fallback
    expected = [(b["hash"], wire_logs(recording.logs[b["hash"]])) for b in recording.blocks
                if recording.logs.get(b["hash"])]
    assert order == [h for h, _ in expected]
    assert [(h, held[h]) for h in order] == expected
    # Every block a reorg removed whose logs the client had was retracted (a flip-flop removes a
    # canonical block too, before it comes back).
    assert retracted == sum(1 for r in expected_reorgs(recording) for h in r.removed if recording.logs.get(h))
    assert retracted > 0
    await client.close()
