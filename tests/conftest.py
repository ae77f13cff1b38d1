"""
Shared fixtures: a real daemon on a loopback port (its hub on a Clock),
txaio's timers on a Clock, and a check that no test leaks a timer, a port
or a connection.

Never import twisted.internet.reactor at module level here: pytest-twisted
installs the reactor in pytest_configure.
"""

import pytest
import pytest_twisted
import txaio
from twisted.internet.task import Clock, deferLater

txaio.use_twisted()


# Stories told to a real process: the tests of a class marked C{incremental}
# are the steps of one story, in order, sharing the process through a
# class-scoped fixture.  Once a step fails, the later ones (of the same
# parameters) are reported as xfailed, naming the step that failed, and not run.
# A step needs the steps before it: select the whole class, not one step.

_failed_steps = {}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "incremental: the tests of this class are the steps of one story, in order")


def _story_key(item):
    params = tuple(sorted(item.callspec.params.items(), key=str)) if hasattr(item, "callspec") else ()
    return item.cls, repr(params)


def pytest_runtest_makereport(item, call):
    if "incremental" in item.keywords and call.excinfo is not None and call.when in ("setup", "call"):
        if not call.excinfo.errisinstance(pytest.xfail.Exception):
            _failed_steps.setdefault(_story_key(item), item.originalname or item.name)


def pytest_runtest_setup(item):
    if "incremental" in item.keywords:
        failed = _failed_steps.get(_story_key(item))
        if failed is not None:
            pytest.xfail(f"an earlier step of this story failed: {failed}")


def _reactor():
    from twisted.internet import reactor

    return reactor


async def eventually(predicate, timeout=5.0, what="condition"):
    """
    Let the reactor run until C{predicate()} holds: for state the server
    changes on its own (a count dropping to zero), never as a sleep.
    """
    reactor = _reactor()
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await deferLater(reactor, 0.005, lambda: None)


@pytest.fixture
def txaio_clock():
    """Autobahn's own timers (handshake and close timeouts) run on this Clock."""
    clock = Clock()
    original = txaio.config.loop
    txaio.config.loop = clock
    try:
        yield clock
    finally:
        txaio.config.loop = original


@pytest_twisted.async_yield_fixture
async def no_leaks(txaio_clock):
    """Fail a test that leaves a timer, a listening port or a connection behind."""
    reactor = _reactor()
    calls = set(reactor.getDelayedCalls())
    selectables = set(reactor.getReaders()) | set(reactor.getWriters())
    yield

    def leftovers():
        new_calls = [c for c in reactor.getDelayedCalls() if c not in calls and c.active()]
        new_selectables = (set(reactor.getReaders()) | set(reactor.getWriters())) - selectables
        return new_calls, new_selectables

    try:
        await eventually(lambda: leftovers() == ([], set()), timeout=5.0, what="a clean reactor")
    except AssertionError:
        new_calls, new_selectables = leftovers()
        pytest.fail(f"test leaked timers {new_calls!r} or selectables {new_selectables!r}")


class RunningDaemon:
    """A daemon listening on 127.0.0.1, as a test drives it."""

    def __init__(self, service, clock):
        self.service = service
        self.clock = clock
        self.hub = service.hub
        self.port = service.address.port
        self.url = f"ws://127.0.0.1:{self.port}/v1/stream"
        self.http = f"http://127.0.0.1:{self.port}"


@pytest_twisted.async_yield_fixture
async def start_daemon(no_leaks, txaio_clock):
    """
    C{await start_daemon(**config_overrides)} → a L{RunningDaemon}; the
    hub is driven by the test unless C{with_tail=True} (then the live-tail
    polls C{rpc_url}, or the embedded replay node without one).  Every
    daemon is stopped at the end: clients get their 1001, and any that do
    not answer are aborted by advancing the hub's clock past the timeout.
    """
    from explorerd.config import Config
    from explorerd.daemon import Daemon

    reactor = _reactor()
    started = []

    async def start(with_tail=False, clock=None, **overrides):
        overrides.setdefault("listen", "tcp:0:interface=127.0.0.1")
        overrides.setdefault("rate_limit", 0)
        overrides.setdefault("state_dir", "")
        config = Config.defaults(**overrides)
        clock = Clock() if clock is None else clock
        service = Daemon(config, reactor, clock=clock, web_root="", tail=with_tail)
        service.startService()
        running = RunningDaemon(service, clock)
        started.append(running)
        return running

    yield start

    for running in started:
        d = running.service.stopService()
        done = []
        d.addBoth(done.append)
        try:
            await eventually(lambda: done, timeout=2.0, what="clients to answer the 1001 close")
        except AssertionError:
            running.clock.advance(running.service.config.shutdown_timeout + 1)
        await eventually(lambda: done, timeout=2.0, what="the daemon to stop")
        # Let close handshakes that the server finished reach the clients.
        txaio_clock.advance(60)
