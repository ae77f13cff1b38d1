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
from tests.metricvalues import sample
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


def metric(daemon, name, **labels):
    return sample(daemon.service.metrics.registry, name, **labels)


# tail → router → AutobahnJS ------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def js_via_router(start_daemon, crossbar):
    """A tail publishing to a router, and an AutobahnJS client (msgpack) of the router, joined."""
    router = await crossbar()
    tail = await tail_publishing_to(start_daemon, router)
    js = await node_client(router.url, realm="explorer", serializer="msgpack")
    try:
        yield tail, js
    finally:
        await js.stop()


@pytest_twisted.ensureDeferred
async def test_autobahnjs_joins_the_router_as_anonymous(js_via_router):
    _, js = js_via_router
    joined = await js.joined()
    assert joined["details"]["authrole"] == "anonymous"


@pytest_twisted.ensureDeferred
async def test_the_tails_events_reach_autobahnjs_through_the_router(js_via_router):
    tail, js = js_via_router
    await js.joined()
    seen = recorder(tail.hub)
    # The tail may have published its first block before the recorder was attached.
    published_before = metric(tail, "explorer_wamp_router_published_total", topic="explorer.tx")
    for topic in ("explorer.block", "explorer.tx", "explorer.reorg", "explorer.log"):
        assert (await js.command("subscribe", topic=topic))["ok"]
    await mine(tail, 3)
    await js.until(lambda: len(js.events) >= len(seen), timeout=15, what=f"{len(seen)} events via crossbar")
    assert [(e["topic"], e["args"][0]) for e in js.events] == seen
    assert metric(tail, "explorer_wamp_router_published_total", topic="explorer.tx") == (
        published_before + sum(t == "explorer.tx" for t, _ in seen))


@pytest_twisted.ensureDeferred
async def test_the_tail_answers_explorer_head_through_the_router(js_via_router):
    tail, js = js_via_router
    await js.joined()
    await mine(tail, 3)
    head = await js.command("call", procedure="explorer.head")
    assert head["result"] == tail.hub.history.newest.data


@pytest_twisted.ensureDeferred
async def test_the_anonymous_role_may_not_publish_or_register(js_via_router):
    _, js = js_via_router
    await js.joined()
    refused = await js.command("publish", topic="explorer.block", args=[{}], options={"acknowledge": True})
    assert refused["error"] == "wamp.error.not_authorized"
    refused = await js.command("register", procedure="explorer.fake_head")
    assert refused["error"] == "wamp.error.not_authorized"


@pytest_twisted.ensureDeferred
async def test_a_tail_with_the_wrong_ticket_is_refused_retries_and_is_never_held_up(start_daemon, crossbar):
    router = await crossbar()
    other = await start_daemon(with_tail=True, wamp_router=router.url, wamp_router_ticket="wrong",
                               wamp_router_retry=0.5)
    link = other.service.publisher.link
    await eventually(lambda: link._attempt >= 3, timeout=15, what="three refused attempts")
    assert link.session is None and metric(other, "explorer_wamp_router_joins_total") == 0
    assert "ended the session: wamp.error.not_authorized" in link._complaint
    await other.service.tail.whenIdle()
    await mine(other, 2)
    assert metric(other, "explorer_wamp_router_dropped_total", topic="explorer.block") >= 2


# tail → router → edge, across a restart of the router --------------------------------


class RouterRestart:
    """
    A tail and an edge on one router, a raw /v1/stream client and a WAMP
    client of the edge; the steps stop the router and start it again.
    """

    @classmethod
    async def start(cls, start_daemon, crossbar):
        self = cls()
        self.crossbar = crossbar
        self.router = router = await crossbar()
        self.tail = await tail_publishing_to(start_daemon, router)
        self.edge = edge = await start_daemon(with_tail=True, source="wamp", wamp_router=router.url,
                                              wamp_router_retry=0.5)
        await eventually(lambda: edge.service.edge.link.session is not None, timeout=15,
                         what="the edge to join the router")
        self.raw = raw = await connect(edge.url)
        assert (await raw.request({"action": "subscribe", "channels": ["newBlocks", "newTxs"]}))["type"] \
            == "subscribed"
        # And a WAMP client of the edge's own broker.
        self.session = await python_client(f"ws://127.0.0.1:{edge.port}/v1/wamp")
        self.wamp_blocks = []
        await self.session.subscribe(lambda data: self.wamp_blocks.append(data["hash"]), "explorer.block")
        self.got = []
        return self

    async def receive(self, n_blocks):
        while sum(m["type"] == "newBlock" for m in self.got) < n_blocks:
            self.got.append(await self.raw.next(timeout=15))

    def expected(self, n_blocks):
        """The tail's first C{n_blocks} blocks from the edge client's first one, as the client should get them."""
        published = self.tail.hub.history.after(0)
        first = next(i for i, e in enumerate(published) if e.hash == self.got[0]["data"]["hash"])
        entries = published[first:first + n_blocks]
        want = []
        for e in entries:
            want.append(("newBlock", e.hash))
            want.extend(("newTx", tx["hash"]) for tx in e.txs_data)
        return entries, want

    async def flowing(self):
        await mine(self.tail, 2)
        await self.receive(2)

    async def routerAway(self):
        """The router goes away; returns the tail's dropped blocks before it."""
        tail, edge = self.tail, self.edge
        dropped = metric(tail, "explorer_wamp_router_dropped_total", topic="explorer.block")
        await self.router.stop()
        await eventually(lambda: tail.service.publisher.link.session is None
                         and edge.service.edge.link.session is None, timeout=10, what="both links to notice")
        await mine(tail, 2)
        return dropped

    async def routerBack(self):
        """It comes back on the same port; both rejoin; two more blocks."""
        tail, edge = self.tail, self.edge
        self.router = await self.crossbar()
        await eventually(lambda: tail.service.publisher.link.session is not None
                         and edge.service.edge.link.session is not None, timeout=20, what="both links back")
        await mine(tail, 2)
        await self.receive(6)

    async def close(self):
        await python_leave(self.session)
        await self.raw.close()


@pytest_twisted.async_yield_fixture
async def router_restart(start_daemon, crossbar, monkeypatch):
    # One block per explorer.blocks_since answer, so the edge's catch-up pages.
    monkeypatch.setattr("explorerd.wamp.MAX_BLOCKS_SINCE", 1)
    story = await RouterRestart.start(start_daemon, crossbar)
    yield story
    await story.close()


@pytest_twisted.ensureDeferred
async def test_the_edge_streams_the_tails_blocks_through_the_router(router_restart):
    story = router_restart
    await story.flowing()
    _, want = story.expected(2)
    while len(story.got) < len(want):
        story.got.append(await story.raw.next(timeout=15))
    assert [(m["type"], m["data"]["hash"]) for m in story.got[:len(want)]] == want


@pytest_twisted.ensureDeferred
async def test_while_the_router_is_away_the_tail_drops_its_events_and_goes_on(router_restart):
    story = router_restart
    await story.flowing()
    dropped = await story.routerAway()
    assert metric(story.tail, "explorer_wamp_router_dropped_total", topic="explorer.block") == dropped + 2
    assert story.edge.hub.history.newest.hash != story.tail.hub.history.newest.hash


@pytest_twisted.ensureDeferred
async def test_when_the_router_returns_the_edge_catches_up_from_the_tail_without_gap(router_restart):
    story = router_restart
    await story.flowing()
    await story.routerAway()
    await story.routerBack()
    entries, want = story.expected(6)
    # Everything after the sixth block's transactions is still to come; take exactly what we want.
    got = story.got
    while len(got) < len(want):
        got.append(await story.raw.next(timeout=15))
    assert [(m["type"], m["data"]["hash"]) for m in got[:len(want)]] == want, "gap-free, in order, once each"
    assert [m["data"] for m in got if m["type"] == "newBlock"] == [e.data for e in entries]
    await eventually(lambda: story.wamp_blocks == [e.hash for e in entries], timeout=10,
                     what="the edge's WAMP client to have the same six blocks")
    assert metric(story.edge, "explorer_wamp_edge_resyncs_total", outcome="ok") >= 2, "two pages of one block each"
