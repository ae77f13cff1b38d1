"""
Scale-out through a real Crossbar.io router (PyPI crossbar, installed by
tests/crossbar/install.sh into its own virtualenv the first time, ~2 min):

  tail → router → AutobahnJS subscriber
  tail → router → edge explorerd → raw /v1/stream client, with the router
  stopped and restarted mid-stream.

Deselect with -m "not crossbar"; they never skip themselves.
"""

import pytest
import pytest_twisted

from tests.clients import connect
from tests.observers import recorder
from tests.conftest import eventually
from tests.crossbar.router import Crossbar, free_port, install, prepare_cbdir
from tests.wamp.harness import node_client, python_client, python_leave

pytestmark = [pytest.mark.crossbar, pytest.mark.needs_node]  # and AutobahnJS from tests/node

TICKET = "tail-secret"


@pytest.fixture(scope="session")
def crossbar_executable():
    return install()


@pytest_twisted.async_yield_fixture
async def crossbar(crossbar_executable, tmp_path, no_leaks):
    """C{await crossbar()} → a running router from the repo's config; all are stopped at the end."""
    started = []
    cbdir = prepare_cbdir(tmp_path)
    port = free_port()

    async def start():
        router = Crossbar(crossbar_executable, cbdir, port, TICKET).start()
        started.append(router)
        try:
            await router.ready.addTimeout(60, _reactor())
        except Exception:
            await router.stop()
            raise
        return router

    yield start
    for router in started:
        await router.stop()


def _reactor():
    from twisted.internet import reactor

    return reactor


async def tail_publishing_to(start_daemon, router, **overrides):
    daemon = await start_daemon(with_tail=True, wamp_router=router.url, wamp_router_ticket=TICKET,
                                wamp_router_retry=0.5, **overrides)
    await daemon.service.tail.whenIdle()
    await eventually(lambda: daemon.service.publisher.link.session is not None, timeout=15,
                     what="the tail to join the router")
    return daemon


async def mine(daemon, n):
    tail, node = daemon.service.tail, daemon.service.embedded.node
    for _ in range(n):
        node.mine()
        assert await tail.poll(), "the tail's poll failed"


@pytest_twisted.ensureDeferred
async def test_tail_to_crossbar_to_autobahnjs_and_a_wrong_ticket(start_daemon, crossbar):
    router = await crossbar()
    tail = await tail_publishing_to(start_daemon, router)
    seen = recorder(tail.hub)
    metrics = tail.service.publisher.metrics
    # The tail may have published its first block before the recorder was attached.
    published_before = metrics.published.labels("explorer.tx")._value.get()
    js = await node_client(router.url, realm="explorer", serializer="msgpack")
    try:
        joined = await js.joined()
        assert joined["details"]["authrole"] == "anonymous"
        for topic in ("explorer.block", "explorer.tx", "explorer.reorg"):
            assert (await js.command("subscribe", topic=topic))["ok"]
        await mine(tail, 3)
        await js.until(lambda: len(js.events) >= len(seen), timeout=15, what=f"{len(seen)} events via crossbar")
        assert [(e["topic"], e["args"][0]) for e in js.events] == seen
        # The tail answers explorer.head through the router too.
        head = await js.command("call", procedure="explorer.head")
        assert head["result"] == tail.hub.history.newest.data
        # The anonymous role may subscribe and call, not publish or register.
        refused = await js.command("publish", topic="explorer.block", args=[{}], options={"acknowledge": True})
        assert refused["error"] == "wamp.error.not_authorized"
        refused = await js.command("register", procedure="explorer.fake_head")
        assert refused["error"] == "wamp.error.not_authorized"
    finally:
        await js.stop()
    assert metrics.published.labels("explorer.tx")._value.get() == (
        published_before + sum(t == "explorer.tx" for t, _ in seen))

    # A tail with the wrong ticket is refused, retries with backoff, and is never held up.
    other = await start_daemon(with_tail=True, wamp_router=router.url, wamp_router_ticket="wrong",
                               wamp_router_retry=0.5)
    link = other.service.publisher.link
    await eventually(lambda: link._attempt >= 3, timeout=15, what="three refused attempts")
    assert link.session is None and link.metrics.joins._value.get() == 0
    assert "ended the session: wamp.error.not_authorized" in link._complaint
    await other.service.tail.whenIdle()
    await mine(other, 2)
    assert other.service.publisher.metrics.dropped.labels("explorer.block")._value.get() >= 2


@pytest_twisted.ensureDeferred
async def test_tail_to_crossbar_to_edge_survives_a_router_restart(start_daemon, crossbar, monkeypatch):
    # One block per explorer.blocks_since answer, so the edge's catch-up pages.
    monkeypatch.setattr("explorerd.wamp.MAX_BLOCKS_SINCE", 1)
    router = await crossbar()
    tail = await tail_publishing_to(start_daemon, router)
    edge = await start_daemon(with_tail=True, source="wamp", wamp_router=router.url, wamp_router_retry=0.5)
    await eventually(lambda: edge.service.edge.link.session is not None, timeout=15,
                     what="the edge to join the router")
    raw = await connect(edge.url)
    assert (await raw.request({"action": "subscribe", "channels": ["newBlocks", "newTxs"]}))["type"] == "subscribed"
    # And a WAMP client of the edge's own broker.
    session = await python_client(f"ws://127.0.0.1:{edge.port}/v1/wamp")
    wamp_blocks = []
    await session.subscribe(lambda data: wamp_blocks.append(data["hash"]), "explorer.block")

    got = []

    async def receive(n_blocks):
        while sum(m["type"] == "newBlock" for m in got) < n_blocks:
            got.append(await raw.next(timeout=15))

    await mine(tail, 2)
    await receive(2)

    # The router goes away; the tail goes on without waiting for it.
    dropped = tail.service.publisher.metrics.dropped.labels("explorer.block")._value.get()
    await router.stop()
    await eventually(lambda: tail.service.publisher.link.session is None
                     and edge.service.edge.link.session is None, timeout=10, what="both links to notice")
    await mine(tail, 2)
    assert tail.service.publisher.metrics.dropped.labels("explorer.block")._value.get() == dropped + 2
    assert edge.hub.history.newest.hash != tail.hub.history.newest.hash

    # It comes back on the same port; both rejoin and the edge catches up from the tail's history.
    router = await crossbar()
    await eventually(lambda: tail.service.publisher.link.session is not None
                     and edge.service.edge.link.session is not None, timeout=20, what="both links back")
    await mine(tail, 2)
    await receive(6)

    published = tail.hub.history.after(0)
    first = next(i for i, e in enumerate(published) if e.hash == got[0]["data"]["hash"])
    want = []
    for e in published[first:first + 6]:
        want.append(("newBlock", e.hash))
        want.extend(("newTx", tx["hash"]) for tx in e.txs_data)
    # Everything after the sixth block's transactions is still to come; take exactly what we want.
    while len(got) < len(want):
        got.append(await raw.next(timeout=15))
    assert [(m["type"], m["data"]["hash"]) for m in got[:len(want)]] == want, "gap-free, in order, once each"
    assert [m["data"] for m in got if m["type"] == "newBlock"] == [e.data for e in published[first:first + 6]]
    await eventually(lambda: wamp_blocks == [e.hash for e in published[first:first + 6]], timeout=10,
                     what="the edge's WAMP client to have the same six blocks")
    edge_metrics = edge.service.edge.metrics
    assert edge_metrics.resyncs.labels("ok")._value.get() >= 2, "two pages of one block each"
    await python_leave(session)
    await raw.close()
