"""
L{explorerd.routerlink.RouterLink} against a small WAMP router on 127.0.0.1
(tests/wamp/router.py), its backoff and shutdown on a Clock.  Through a
real Crossbar.io it runs in tests/test_crossbar.py.

The first tests run autobahn's own C{Component} against the same router
and show what it does where explorerd needs something else; they are why
RouterLink keeps its own reconnection loop.  If one of them starts failing
after an autobahn upgrade, Component may now do what we need: look again.
"""

import random

import pytest
import pytest_twisted
import txaio
from autobahn.twisted.component import Component
from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.task import Clock

from explorerd.config import Config
from explorerd.routerlink import RouterLink
from tests.conftest import eventually
from tests.crossbar.router import free_port
from tests.metricvalues import sample
from tests.wamp.router import LocalRouter


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest_twisted.async_yield_fixture
async def router(no_leaks):
    started = []

    async def start(**settings):
        r = LocalRouter(**settings)
        await r.listen()
        started.append(r)
        return r

    yield start
    for r in started:
        await r.stop()


async def pumping(clock, predicate, what, timeout=5.0):
    """Let the reactor run, and C{clock} run what is due without moving it, until C{predicate()}."""

    def check():
        clock.advance(0)
        return predicate()

    await eventually(check, timeout=timeout, what=what)


@pytest.fixture
def sleeps(monkeypatch):
    """The delays Component waits between attempts (it sleeps through txaio)."""
    delays = []
    sleep = txaio.sleep

    def recording(delay):
        delays.append(delay)
        return sleep(delay)

    monkeypatch.setattr(txaio, "sleep", recording)
    return delays


# Quiet WebSocket options for Component: no handshake timers on the txaio clock.
QUIET = {"openHandshakeTimeout": 0, "closeHandshakeTimeout": 0, "serverConnectionDropTimeout": 0}


def component(url, main=None, **transport):
    transport = {"url": url, "options": dict(QUIET), "initial_retry_delay": 0.25, "max_retry_delay": 10,
                 "retry_delay_growth": 2, "retry_delay_jitter": 0} | transport
    return Component(main=main, transports=[transport], realm="explorer")


# ---------------------------------------------------------------------------
# What autobahn's Component does not do.

@pytest_twisted.ensureDeferred
async def test_component_cannot_draw_its_jitter_from_a_given_random(no_leaks, txaio_clock, sleeps, monkeypatch):
    url = f"ws://127.0.0.1:{free_port()}/ws"  # nobody listens
    # Its docstring: retry_delay_jitter is "a 0-argument callable ... (default
    # random.random)".  Given one, the retry loop dies at its first delay.
    c = component(url, retry_delay_jitter=random.Random(7).random)
    done = c.start(_reactor())
    txaio_clock.advance(0)  # the first attempt
    await eventually(lambda: txaio_clock.getDelayedCalls(), what="the attempt to fail")
    with pytest.raises(TypeError):
        txaio_clock.advance(0)  # the retry loop computes the next delay
    txaio_clock.advance(3600)
    assert sleeps == [0] and not txaio_clock.getDelayedCalls() and not done.called, \
        "no retry is ever scheduled again, and nothing says so"
    c.stop()

    # Given a number, it draws from the random module's global generator: the
    # only way to choose its jitter is to replace that for the whole process.
    drawn = []
    sleeps.clear()
    monkeypatch.setattr(random, "normalvariate", lambda mu, sigma: drawn.append((mu, sigma)) or 0.3)
    c = component(url, retry_delay_jitter=0.1)
    c.start(_reactor())
    txaio_clock.advance(0)
    await pumping(txaio_clock, lambda: len(sleeps) == 2, what="the second delay")
    assert drawn == [(0.5, pytest.approx(0.05))] and sleeps == [0, 0.3]
    await c.stop()


@pytest_twisted.ensureDeferred
async def test_component_without_main_never_resets_its_backoff(router, txaio_clock, sleeps):
    r = await router()
    joined = []
    c = component(r.url)
    c.on_join(lambda session, details: joined.append(session))
    c.start(_reactor())
    for n in range(1, 5):
        await pumping(txaio_clock, lambda: len(joined) == n and r.connections, what=f"join {n}")
        txaio_clock.advance(3600)  # an hour up
        r.dropAll()  # then the router restarts
        await pumping(txaio_clock, lambda: len(sleeps) == n + 1, what="the next delay")
        txaio_clock.advance(sleeps[-1])
    await pumping(txaio_clock, lambda: len(joined) == 5, what="join 5")
    # Each outage waits longer than the last, however long the session before it lasted.
    assert sleeps == [0, 0.5, 1.0, 2.0, 4.0]
    c.stop()


@pytest_twisted.ensureDeferred
async def test_component_with_main_resets_before_main_so_a_refused_setup_spins(router, txaio_clock, sleeps):
    # The way to have it reset is a main() (which must then never return):
    # it resets at the join, before main has set anything up.
    r = await router()
    r.refuseRegistrations = True

    async def main(reactor, session):
        await session.register(lambda: None, "explorer.head")
        await defer.Deferred()  # keep the session

    c = component(r.url, main=main)
    c.start(_reactor())
    await pumping(txaio_clock, lambda: len(r.registrations) >= 5, what="five attempts")
    assert txaio_clock.seconds() == 0 and set(sleeps) == {0}, "reconnecting without any delay, forever"
    c.stop()
    await r.stop()


@pytest_twisted.ensureDeferred
async def test_component_stop_waits_for_a_silent_router_forever(router, txaio_clock):
    r = await router()
    r.answerGoodbyes = False  # a router that is stuck, or not reading
    joined = []
    c = component(r.url)
    c.on_join(lambda session, details: joined.append(session))
    done = c.start(_reactor())
    await pumping(txaio_clock, lambda: joined, what="the join")
    stopped = c.stop()  # fires when the WebSocket has closed
    await pumping(txaio_clock, lambda: r.goodbyes, what="the GOODBYE")
    txaio_clock.advance(3600)
    assert len(r.connections) == 1 and not stopped.called and not done.called, \
        "an hour later, still connected and still stopping: stop() takes no timeout"
    # A timeout of our own on that Deferred gives up waiting, and closes nothing.
    stopped.addTimeout(5, txaio_clock)
    txaio_clock.advance(5)
    with pytest.raises(defer.TimeoutError):
        await stopped
    txaio_clock.advance(3600)
    assert len(r.connections) == 1 and not done.called
    await r.stop()


@pytest_twisted.ensureDeferred
async def test_component_stopped_while_joining_joins_anyway(router, txaio_clock):
    r = await router()
    r.holdHellos = True
    joined = []
    c = component(r.url)
    c.on_join(lambda session, details: joined.append(session))
    c.start(_reactor())
    await pumping(txaio_clock, lambda: r.held, what="the HELLO")
    stopped = c.stop()
    assert stopped.called
    r.releaseHellos()
    await pumping(txaio_clock, lambda: joined, what="the join")
    assert len(r.connections) == 1 and joined[0].is_attached(), "stopped, and joined"
    await r.stop()


# ---------------------------------------------------------------------------
# RouterLink.

class Owner:
    """What the user of a RouterLink sees: its onJoin and onLeave calls, in order."""

    def __init__(self, setup=None):
        self.events = []
        self.setup = setup

    def onJoin(self, session):
        self.events.append("join")
        if self.setup is not None:
            return self.setup(session)

    def onLeave(self):
        self.events.append("leave")


def make_link(url, owner, clock, rng=None, **settings):
    settings.setdefault("wamp_router_retry", 10)
    config = Config.defaults(wamp_router=url, **settings)
    return RouterLink(_reactor(), config, owner.onJoin, owner.onLeave, CollectorRegistry(),
                      clock=clock, rng=random.Random(0) if rng is None else rng)


def retry_delay(clock):
    """The one pending reconnection, as seconds from now."""
    calls = clock.getDelayedCalls()
    assert len(calls) == 1, calls
    return calls[0].getTime() - clock.seconds()


async def next_retry(clock):
    await eventually(lambda: clock.getDelayedCalls(), what="the link to schedule its next attempt")
    return retry_delay(clock)


@pytest_twisted.ensureDeferred
async def test_link_backoff_doubles_up_to_the_maximum_with_jitter_from_its_rng(no_leaks):
    clock = Clock()
    owner = Owner()
    link = make_link(f"ws://127.0.0.1:{free_port()}/ws", owner, clock, rng=random.Random(42),
                     wamp_router_retry=2)
    twin = random.Random(42)
    link.startService()
    delays = []
    for _ in range(5):
        delays.append(await next_retry(clock))
        clock.advance(delays[-1])
    assert delays == pytest.approx([base + twin.random() * 0.25 for base in (0.25, 0.5, 1, 2, 2)])
    assert sample(link.metrics.registry, "explorer_wamp_router_failures_total", stage="connecting") == 5
    assert link.health() == {"url": link.url, "realm": "explorer", "connected": False}
    # Stopping while it waits to retry: done at once, and nothing is left scheduled.
    await next_retry(clock)
    d = link.stopService()
    assert d.called and not clock.getDelayedCalls()
    assert owner.events == []


@pytest_twisted.ensureDeferred
async def test_link_joins_and_after_each_loss_starts_its_backoff_over(router):
    r = await router()
    clock = Clock()
    owner = Owner()
    link = make_link(r.url, owner, clock, rng=random.Random(1))
    twin = random.Random(1)
    link.startService()
    for n in range(1, 4):
        await eventually(lambda: link.session is not None, what=f"join {n}")
        assert link.health()["connected"] is True and sample(link.metrics.registry, "explorer_wamp_router_connected") == 1
        r.dropAll()  # the router restarts
        await eventually(lambda: link.session is None, what="the link to notice")
        # Unlike Component without main: the first delay every time.
        assert await next_retry(clock) == pytest.approx(0.25 + twin.random() * 0.25)
        clock.advance(retry_delay(clock))
    await eventually(lambda: link.session is not None, what="join 4")
    assert owner.events == ["join", "leave"] * 3 + ["join"]
    assert [role for _, role in r.joins] == ["anonymous"] * 4
    assert link.metrics.joins._value.get() == 4 and link.metrics.failures.labels("joined")._value.get() == 3
    # Stopping says GOODBYE, and is done when the router has answered and the connection closed.
    await link.stopService()
    assert r.goodbyes == ["wamp.close.normal"] and not clock.getDelayedCalls()
    assert owner.events[-1] == "leave" and link.session is None
    assert link.metrics.failures.labels("joined")._value.get() == 3, "a stop is not a failure"


@pytest_twisted.ensureDeferred
async def test_link_a_refused_ticket_backs_off_like_a_router_that_is_down(router):
    r = await router(ticket="tail-secret")
    clock = Clock()
    refused = make_link(r.url, Owner(), clock, rng=random.Random(5), wamp_router_ticket="wrong")
    twin = random.Random(5)
    refused.startService()
    delays = []
    for _ in range(3):
        delays.append(await next_retry(clock))
        clock.advance(delays[-1])
    assert delays == pytest.approx([base + twin.random() * 0.25 for base in (0.25, 0.5, 1)])
    assert r.joins == [] and len(r.hellos) == 3 and refused.session is None
    assert "wamp.error.not_authorized" in refused._complaint
    await refused.stopService()

    owner = Owner()
    right = make_link(r.url, owner, Clock(), wamp_router_ticket="tail-secret")
    right.startService()
    await eventually(lambda: right.session is not None, what="the join with the right ticket")
    assert r.joins == [("explorerd", "explorerd")] and owner.events == ["join"]
    await right.stopService()


@pytest_twisted.ensureDeferred
async def test_link_a_refused_setup_backs_off_too(router):
    # Unlike Component with main: the backoff starts over only once onJoin succeeded.
    r = await router()
    r.refuseRegistrations = True
    clock = Clock()
    owner = Owner(lambda session: session.register(lambda: None, "explorer.head"))
    link = make_link(r.url, owner, clock, rng=random.Random(9))
    twin = random.Random(9)
    link.startService()
    delays = []
    for _ in range(3):
        delays.append(await next_retry(clock))
        assert len(r.registrations) == len(delays), "no attempt without the clock moving"
        clock.advance(delays[-1])
    assert delays == pytest.approx([base + twin.random() * 0.25 for base in (0.25, 0.5, 1)])
    assert r.goodbyes == ["wamp.close.normal"] * 3, "it left each time, politely"
    assert owner.events == ["join"] * 3 and link.session is None and link.metrics.joins._value.get() == 0
    await eventually(lambda: len(r.registrations) == 4, what="the fourth attempt")
    await link.stopService()


@pytest.mark.parametrize("stuck", ["answers no GOODBYE", "reads nothing"])
@pytest_twisted.ensureDeferred
async def test_link_stop_waits_for_the_router_at_most_the_shutdown_timeout(router, stuck):
    r = await router()
    if stuck == "answers no GOODBYE":
        r.answerGoodbyes = False
    else:
        r.stopReadingAfterJoin = True
    clock = Clock()
    owner = Owner()
    link = make_link(r.url, owner, clock, shutdown_timeout=3)
    link.startService()
    await eventually(lambda: link.session is not None, what="the join")
    client = link.session._transport
    d = link.stopService()
    if stuck == "answers no GOODBYE":
        await eventually(lambda: r.goodbyes, what="the GOODBYE to arrive")
    clock.advance(2.9)
    assert not d.called and client.transport.connected
    clock.advance(0.1)
    await eventually(lambda: d.called, what="the stop to finish")
    assert not client.transport.connected and owner.events == ["join", "leave"]
    if stuck == "answers no GOODBYE":
        await eventually(lambda: not r.connections, what="the router to see the connection go")
    assert not clock.getDelayedCalls(), "and no reconnection"


@pytest_twisted.ensureDeferred
async def test_link_stopped_while_joining_never_joins(router):
    r = await router()
    r.holdHellos = True
    clock = Clock()
    owner = Owner()
    link = make_link(r.url, owner, clock)
    link.startService()
    await eventually(lambda: r.held, what="the HELLO")
    await link.stopService()
    await eventually(lambda: not r.connections, what="the router to see the connection go")
    r.releaseHellos()
    assert r.joins == [] and owner.events == [] and link.session is None
    assert not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_link_stopped_while_its_owner_sets_the_session_up(router):
    r = await router()
    setting_up = defer.Deferred()
    owner = Owner(lambda session: setting_up)
    clock = Clock()
    link = make_link(r.url, owner, clock)
    link.startService()
    await eventually(lambda: owner.events == ["join"], what="the join")
    await link.stopService()
    assert r.goodbyes == ["wamp.close.normal"]
    setting_up.callback(None)
    assert link.session is None and link.metrics.joins._value.get() == 0
    assert owner.events == ["join"] and not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_link_stopped_while_its_websocket_is_closing(router):
    r = await router()
    clock = Clock()
    owner = Owner()
    link = make_link(r.url, owner, clock)
    link.startService()
    await eventually(lambda: link.session is not None, what="the join")
    link.session._transport.sendClose(1000)  # the close handshake has begun; the session is still joined
    await link.stopService()
    assert r.goodbyes == [] and owner.events == ["join", "leave"] and not clock.getDelayedCalls()
