"""
HTTP on the side doors (/metrics, /healthz, static files) under a scrape flood: pipelined requests
take turns with everyone else, /metrics and /healthz are computed at most once an interval and
never answered from before the request, the access log costs little, and WebSocket clients do
not notice.
"""

import json
import os
import subprocess
import sys

import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.static import Data

from explorerd.accesslog import AccessLog
from explorerd.coalesce import Coalesced
from explorerd.config import Config
from explorerd.history import Entry
from explorerd.web import Site
from tests.chaindata import mainnet_run
from tests.clients import in_thread

FLOOD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scrapeflood.py")


@pytest_twisted.ensureDeferred
async def test_a_scrape_flood_does_not_hold_up_blocks(start_daemon):
    # 50 keep-alive scrapers, each with 500 GETs of /metrics and /healthz in flight, sending another
    # as each answer comes; a subscriber beside them, in the same (other) process.  Before the
    # side doors took turns, every pipelined request of every scraper was answered (and logged) in
    # each reactor pass: blocks waited seconds for the pass to end.
    daemon = await start_daemon()
    blocks = mainnet_run()[:3]
    root = os.path.dirname(os.path.dirname(FLOOD))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    flood = subprocess.Popen([sys.executable, FLOOD, str(daemon.port), "--scrapers", "50", "--pipeline", "500",
                              "--blocks", str(len(blocks)), "--answers", "3", "--seconds", "30"],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        lines = []

        async def line():
            text = await in_thread(flood.stdout.readline)
            assert text, f"the flood ended early after {lines}"
            lines.append(json.loads(text))
            return lines[-1]

        assert await line() == {"flooding": True}
        for block in blocks:
            daemon.hub.publish(Entry.fromNode(block))
            got = await line()
            assert got["block"] == int(block["number"], 16)
            assert got["after"] < 1.0, f"block {got['block']} reached the subscriber {got['after']} s late"
        scrapers = (await line())["scrapers"]
    finally:
        flood.kill()
        flood.wait()
        flood.stdout.close()
    assert len(scrapers) == 50
    assert [s["problem"] for s in scrapers] == [None] * 50
    assert min(s["answers"] for s in scrapers) >= 3, scrapers


# ---------------------------------------------------------------------------
# Taking turns, on a Clock: one pipelined request per connection per reactor turn.

def turn(clock):
    """One reactor turn: the calls due now run; those they schedule wait for the next turn."""
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


def site_on(clock, **overrides):
    root = Resource()
    root.putChild(b"a", Data(b"A" * 10, "text/plain"))
    root.putChild(b"b", Data(b"B" * 10, "text/plain"))
    config = Config.defaults(**overrides)

    class Slots:
        def admitPending(self, channel, peer):
            return None

        def unpend(self, channel):
            pass

    site = Site(root, config, Slots(), reactor=clock)
    site.accessLog.per_second = 0  # (the log is tested below)
    return site


def connect(site, port=40000):
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def answers(transport):
    return [body[-10:] for body in transport.value().split(b"HTTP/1.1 ")[1:]]


def get(path):
    return b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path


def test_pipelined_requests_are_answered_one_a_turn_in_order():
    clock = Clock()
    site = site_on(clock)
    one, t1 = connect(site)
    two, t2 = connect(site, 40001)
    one.dataReceived(get(b"/a") + get(b"/b") + get(b"/a"))
    two.dataReceived(get(b"/b") + get(b"/b"))
    assert answers(t1) == [b"A" * 10] and answers(t2) == [b"B" * 10]
    turn(clock)
    assert answers(t1) == [b"A" * 10, b"B" * 10] and answers(t2) == [b"B" * 10] * 2
    turn(clock)
    assert answers(t1) == [b"A" * 10, b"B" * 10, b"A" * 10]
    turn(clock)
    assert answers(t1) == [b"A" * 10, b"B" * 10, b"A" * 10] and answers(t2) == [b"B" * 10] * 2
    # A request that comes alone is answered at once, as ever.
    one.dataReceived(get(b"/b"))
    assert answers(t1)[-1] == b"B" * 10 and len(answers(t1)) == 4
    for channel in (one, two):
        channel.connectionLost(None)


def test_a_client_that_does_not_read_its_answers_gets_no_more_is_not_read_and_is_dropped_when_idle():
    clock = Clock()
    site = site_on(clock, handshake_timeout=5)
    channel, transport = connect(site)
    channel.dataReceived(get(b"/a"))
    turn(clock)
    channel.dataReceived(get(b"/a") + get(b"/b"))  # /a is answered at once, /b waits for a turn
    assert len(answers(transport)) == 2
    channel.pauseProducing()  # what the transport does once its buffer is full: the client is not reading
    assert transport.producerState == "paused", "still reading a client that does not read"
    for _ in range(3):
        turn(clock)
    assert len(answers(transport)) == 2, "answered a client that does not read"
    channel.resumeProducing()  # it read: the rest comes, a turn at a time, and it is read again
    turn(clock)
    assert answers(transport)[-1] == b"B" * 10 and len(answers(transport)) == 3
    assert transport.producerState == "producing"
    channel.dataReceived(get(b"/a") + get(b"/b"))  # waits behind the last: its turn is next
    channel.pauseProducing()
    turn(clock)
    assert len(answers(transport)) == 3 and transport.producerState == "paused"
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.2)  # idle for the timeout with answers unread: dropped
    assert transport.disconnecting
    channel.connectionLost(None)


def test_a_client_that_stops_reading_in_the_middle_of_an_answer_is_dropped_when_idle():
    # twisted.web stops the idle timer while a request is handled: a client that stopped
    # reading a file was kept forever, and all it sent meanwhile was read and kept.
    from twisted.web.server import NOT_DONE_YET

    clock = Clock()
    site = site_on(clock, handshake_timeout=5)

    class Slow(Resource):
        isLeaf = True

        def render_GET(self, request):
            request.write(b"part")
            return NOT_DONE_YET

    site.resource.putChild(b"slow", Slow())
    channel, transport = connect(site)
    channel.dataReceived(get(b"/slow"))
    clock.advance(60)
    assert not transport.disconnecting  # a slow answer is no idle client
    channel.pauseProducing()
    channel.dataReceived(get(b"/a") * 10)
    assert transport.producerState == "paused"
    clock.advance(4)
    channel.resumeProducing()  # it read some
    clock.advance(60)
    assert not transport.disconnecting
    channel.pauseProducing()
    clock.advance(5.1)
    assert transport.disconnecting
    channel.connectionLost(None)


def test_a_connection_lost_between_turns_leaves_nothing_behind():
    clock = Clock()
    site = site_on(clock)
    channel, transport = connect(site)
    channel.dataReceived(get(b"/a") + get(b"/b"))
    channel.connectionLost(None)
    turn(clock)
    assert answers(transport) == [b"A" * 10]
    assert channel.requests == []


# ---------------------------------------------------------------------------
# Answers computed at most once an interval, never from before the request.

class FakeRequest:
    method = b"GET"

    def __init__(self):
        from twisted.internet.defer import Deferred

        self.code = None
        self.headers = {}
        self.written = []
        self.finished = False
        self.finishes = []
        self._lost = Deferred()

    def setResponseCode(self, code):
        self.code = code

    def setHeader(self, name, value):
        self.headers[name] = value

    def write(self, data):
        self.written.append(data)

    def finish(self):
        self.finished = True

    def notifyFinish(self):
        return self._lost

    def lose(self):
        self._lost.errback(ConnectionError("gone"))


def test_answers_are_computed_at_most_once_an_interval_and_never_before_the_request():
    clock = Clock()
    state = {"n": 0}

    def compute():
        state["n"] += 1
        return 200, ((b"Content-Type", b"text/plain"),), b"n=%d" % state["n"]

    answers = Coalesced(clock, compute, interval=1.0)
    first = FakeRequest()
    assert answers.render(first) == b"n=1"  # the first is answered at once
    assert first.code == 200 and first.headers[b"Content-Length"] == b"3"
    clock.advance(0.4)
    waiting = [FakeRequest() for _ in range(100)]
    from twisted.web.server import NOT_DONE_YET

    assert {answers.render(r) for r in waiting} == {NOT_DONE_YET}
    waiting[5].lose()  # gone before its answer
    clock.advance(0.59)
    assert not any(r.finished for r in waiting) and state["n"] == 1
    clock.advance(0.01)  # a second after the last computation: one more, for all of them
    assert state["n"] == 2
    assert [r.written for i, r in enumerate(waiting) if i != 5] == [[b"n=2"]] * 99
    assert not waiting[5].written
    clock.advance(5)  # quiet: the next is answered at once
    assert answers.render(FakeRequest()) == b"n=3"
    # Everyone who waited goes away: no timer stays behind.
    late = FakeRequest()
    answers.render(late)
    late.lose()
    assert clock.getDelayedCalls() == []


def test_a_failed_computation_answers_500_to_those_waiting():
    clock = Clock()
    calls = []

    def compute():
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("no")
        return 200, (), b"ok"

    answers = Coalesced(clock, compute, interval=1.0)
    answers.render(FakeRequest())
    waiting = FakeRequest()
    answers.render(waiting)
    clock.advance(1)
    assert waiting.code == 500 and waiting.finished


@pytest_twisted.ensureDeferred
async def test_metrics_and_healthz_are_answered_after_their_request(start_daemon):
    # A scraper that acts and then looks sees what it did, however recently someone else looked.
    import treq
    from twisted.internet import reactor
    from twisted.web.client import HTTPConnectionPool

    from tests.clients import connect as ws_connect

    daemon = await start_daemon()
    pool = HTTPConnectionPool(reactor, persistent=True)
    try:
        async def look(path):
            response = await treq.get(daemon.http + path, pool=pool, timeout=5)
            return response.code, response.headers, await treq.content(response)

        code, _, body = await look("/metrics")
        assert code == 200 and b"explorer_websocket_connections 0.0" in body
        health = json.loads((await look("/healthz"))[2])
        assert health["connections"] == 0
        client = await ws_connect(daemon.url)
        code, _, body = await look("/metrics")
        assert b"explorer_websocket_connections 1.0" in body
        assert json.loads((await look("/healthz"))[2])["connections"] == 1
        head = await treq.head(daemon.http + "/healthz", pool=pool, timeout=5)
        assert head.code == 200 and await treq.content(head) == b""
        await client.close()
    finally:
        await pool.closeCachedConnections()


# ---------------------------------------------------------------------------
# The access log.

class Logged:
    def __init__(self, path):
        self.path = path


def test_the_access_log_writes_a_line_a_request_up_to_its_rate_and_sums_up_the_rest():
    from twisted.logger import globalLogPublisher

    clock = Clock()
    lines = []
    log = AccessLog(clock, lambda request: lines.append(request.path), per_second=100, paths=3)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        for i in range(1000):
            log.record(Logged(b"/metrics" if i % 2 else b"/healthz"))
        for path in (b"/\x1b[31mred", b"/a", b"/b"):
            log.record(Logged(path))
        assert len(lines) == 100
        told = [e for e in events if e.get("log_namespace") == "explorerd.accesslog.AccessLog"]
        assert told == []
        clock.advance(1)  # the second is over: one line for the rest
        told = [e for e in events if e.get("log_namespace") == "explorerd.accesslog.AccessLog"]
        assert len(told) == 1 and told[0]["count"] == 903
        assert told[0]["paths"] == "/healthz 450, /metrics 450, (other paths) 2, /\\x1b[31mred 1"
        log.record(Logged(b"/healthz"))  # a new second: logged again
        assert len(lines) == 101
        assert clock.getDelayedCalls() == []
        for _ in range(200):
            log.record(Logged(b"/healthz"))
        log.stop()  # told at once; no timer left
        told = [e for e in events if e.get("log_namespace") == "explorerd.accesslog.AccessLog"]
        assert told[-1]["count"] == 101 and clock.getDelayedCalls() == []
    finally:
        globalLogPublisher.removeObserver(events.append)
