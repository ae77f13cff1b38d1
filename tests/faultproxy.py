"""
A misbehaving reverse proxy for JSON-RPC tests.

L{FaultProxy} is a real twisted.web server on 127.0.0.1 that forwards each
POST to one upstream node (anvil) and, chosen per request by a seeded RNG,
answers it badly instead:

  - C{drop}: close the connection without an answer (abort, no FIN dance);
  - C{error}: an HTTP 500/502/503/504 with an HTML body, as a proxy would;
  - C{delay}: forward, then hold the answer for C{delay} seconds (set it
    past the client's timeout: the client gives up and closes first);
  - C{truncate}: forward, then send only the first part of the JSON body
    (a complete HTTP response whose body is not valid JSON);
  - C{cut}: forward, announce the full Content-Length, send half, abort;
  - C{garbage}: a 200 whose body is not JSON-RPC at all;
  - C{slow}: forward, then trickle the answer out in C{slow_pieces} parts
    spread over C{delay} seconds (a slow body: the headers come at once);
  - otherwise: pass the upstream answer through unchanged.

C{lag}, if above 0, makes every C{eth_blockNumber} that passes answer
that many blocks below the node's head, as a load-balanced provider does
when it asks a backend that is behind: the head goes backwards.

C{rates} maps fault names to probabilities; set it to C{{}} to make the
proxy honest.  C{methods}, if given, names the JSON-RPC methods whose
requests may be spoiled (a batch calling any of them); the others pass.
C{counts} tells what happened.  No timers outlive their
request: a held answer's timer is cancelled when the client goes away, and
L{FaultProxy.stop} waits for the open connections to close (close the
client first) and for upstream requests in flight.
"""

import json
import random
from collections import Counter

from twisted.internet import defer
from twisted.web import server
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool, PotentialDataLoss, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from zope.interface import implementer

from tests.serving import TrackingFactory

FAULTS = ("drop", "error", "delay", "truncate", "cut", "garbage")
#: Besides FAULTS (which the tests spoil "every kind" with): a slow body.
KNOWN = FAULTS + ("slow",)

_GARBAGE = (
    b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    b'{"jsonrpc": "2.0", "id": ',
    b"\x00\xff\xfe not json",
    b'{"jsonrpc":"2.0","result":"0x1"}',  # no id: not the answer we asked for
)


@implementer(IBodyProducer)
class _Body:
    """A request body written in one go (no cooperator, hence no timers)."""

    def __init__(self, data):
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class _Collect(Protocol):
    """Read a whole response body (treq/readBody warn about our transport)."""

    def __init__(self):
        self.chunks = []
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.chunks.append(data)

    def connectionLost(self, reason):
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def _read(response):
    collector = _Collect()
    response.deliverBody(collector)
    return collector.done.addCallback(lambda data: (response.code, data))


class _QuietSite(server.Site):
    """No access log: hundreds of requests per test."""

    def log(self, request):
        pass


class _ProxyResource(Resource):
    isLeaf = True

    def __init__(self, proxy):
        super().__init__()
        self.proxy = proxy

    def render_POST(self, request):
        return self.proxy._handle(request)


class FaultProxy:
    """
    C{await FaultProxy(reactor, upstream_url, seed=1, rates={...}).start()}
    → the proxy, listening at C{.url}.
    """

    def __init__(self, reactor, upstream, *, seed=0, rates=None, delay=1.0, methods=None, slow_pieces=20):
        self.reactor = reactor
        self.upstream = upstream.encode("ascii") if isinstance(upstream, str) else upstream
        self.rng = random.Random(seed)
        self.rates = dict(rates or {})
        unknown = set(self.rates) - set(KNOWN)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {KNOWN}")
        self.delay = delay
        self.slow_pieces = slow_pieces
        self.lag = 0
        self.methods = None if methods is None else frozenset(methods)
        self.counts = Counter()
        self.url = None
        self.port = None
        self._timers = set()
        self._upstream_calls = set()
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._agent = Agent(reactor, pool=self._pool)
        self.factory = TrackingFactory(_QuietSite(_ProxyResource(self), timeout=None))

    async def start(self):
        self.port = self.reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        return self

    async def stop(self):
        """Stop listening, wait for clients to go, cancel held answers, close upstream."""
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()
        for timer in list(self._timers):
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self.factory.abortAll()
        await self.factory.whenIdle()
        if self._upstream_calls:
            await defer.DeferredList(list(self._upstream_calls), consumeErrors=True)
        await self._pool.closeCachedConnections()

    # One request ---------------------------------------------------------

    def choose(self):
        """The fault for the next request, or C{"pass"}."""
        r = self.rng.random()
        for fault in KNOWN:
            rate = self.rates.get(fault, 0.0)
            if r < rate:
                return fault
            r -= rate
        return "pass"

    def _spoilable(self, body):
        if self.methods is None:
            return True
        try:
            calls = json.loads(body)
        except ValueError:
            return True
        calls = calls if isinstance(calls, list) else [calls]
        return any(isinstance(c, dict) and c.get("method") in self.methods for c in calls)

    def _handle(self, request):
        body = request.content.read()
        fault = self.choose() if self._spoilable(body) else "pass"
        self.counts[fault] += 1
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        if fault == "drop":
            request.channel.transport.abortConnection()
            return server.NOT_DONE_YET
        if fault == "error":
            request.setResponseCode(self.rng.choice((500, 502, 503, 504)))
            request.setHeader(b"Content-Type", b"text/html")
            return b"<html><body>upstream unavailable</body></html>"
        if fault == "garbage":
            request.setHeader(b"Content-Type", b"application/json")
            return self.rng.choice(_GARBAGE)
        d = self._forward(body)

        def answer(result):
            code, data = result
            if gone:
                return
            if self.lag > 0:
                data = _lagged(body, data, self.lag)
            if fault == "delay":
                timer = self.reactor.callLater(self.delay, send, code, data)
                self._timers.add(timer)
                request.notifyFinish().addBoth(lambda _: timer.active() and timer.cancel())
                return
            if fault == "slow":
                request.setResponseCode(code)
                request.setHeader(b"Content-Type", b"application/json")
                request.setHeader(b"Content-Length", str(len(data)).encode())
                n = max(1, min(self.slow_pieces, len(data)))
                bounds = [len(data) * i // n for i in range(n + 1)]
                request.notifyFinish().addBoth(lambda _: [t.cancel() for t in pending if t.active()])
                trickle(data, bounds, 0, self.delay / n)
                return
            if fault == "truncate":
                data = data[: max(1, len(data) // 3)]
            if fault == "cut":
                request.setHeader(b"Content-Length", str(len(data)).encode())
                request.setHeader(b"Content-Type", b"application/json")
                request.write(data[: len(data) // 2])
                request.channel.transport.abortConnection()
                return
            send(code, data)

        pending = []  # a slow answer's next piece

        def trickle(data, bounds, i, interval):
            self._timers.difference_update([t for t in self._timers if not t.active()])
            if gone:
                return
            request.write(data[bounds[i]:bounds[i + 1]])
            if i + 2 == len(bounds):
                request.finish()
                return
            timer = self.reactor.callLater(interval, trickle, data, bounds, i + 1, interval)
            self._timers.add(timer)
            pending.append(timer)

        def send(code, data):
            if gone:
                return
            self._timers.difference_update([t for t in self._timers if not t.active()])
            request.setResponseCode(code)
            request.setHeader(b"Content-Type", b"application/json")
            request.write(data)
            request.finish()

        def upstreamFailed(f):
            if not gone:
                request.setResponseCode(502)
                request.write(f"upstream failed: {f.getErrorMessage()}".encode())
                request.finish()

        d.addCallbacks(answer, upstreamFailed)
        return server.NOT_DONE_YET

    def _forward(self, body):
        d = self._agent.request(
            b"POST", self.upstream,
            Headers({b"Content-Type": [b"application/json"]}), _Body(body))
        d.addCallback(_read)
        self._upstream_calls.add(d)

        def done(result):
            self._upstream_calls.discard(d)
            return result

        return d.addBoth(done)


def _lagged(body, data, lag):
    """The answer with every C{eth_blockNumber} result C{lag} blocks lower."""
    try:
        calls, answers = json.loads(body), json.loads(data)
    except ValueError:
        return data
    batch = isinstance(calls, list)
    calls, listed = (calls if batch else [calls]), (answers if isinstance(answers, list) else [answers])
    ids = {c.get("id") for c in calls if isinstance(c, dict) and c.get("method") == "eth_blockNumber"}
    if not ids:
        return data
    for a in listed:
        if isinstance(a, dict) and a.get("id") in ids and isinstance(a.get("result"), str):
            a["result"] = hex(max(0, int(a["result"], 16) - lag))
    return json.dumps(answers).encode()
