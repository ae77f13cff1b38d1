"""
The HTTP resource tree: C{/v1/stream} (WebSocket), C{/v1/wamp} (WAMP), C{/v1/rpc}
(Ethereum JSON-RPC over WebSocket), C{/metrics},
C{/healthz} and the dashboard in C{web/} at C{/}, all on one port.
"""

import json
import os
import sys
from collections import OrderedDict

from autobahn.twisted.resource import WebSocketResource
from twisted.internet import interfaces
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web import http, server
from twisted.web.resource import Resource
from twisted.web.static import Data, File

from explorerd import parsecost
from explorerd.accesslog import AccessLog
from explorerd.admission import TokenBucket, client_ip
from explorerd.coalesce import Coalesced
from explorerd.metrics import MetricsResource

WEBSOCKET_PATHS = (b"/v1/stream", b"/v1/wamp", b"/v1/rpc")


class UpgradeResource(WebSocketResource):
    """
    A WebSocket resource that also stops twisted.web's idle timer for the
    connection it hands over: the WebSocket has its own liveness checks and
    the channel's timer would otherwise fire long after the upgrade.
    """

    def render(self, request):
        request.channel.setTimeout(None)
        return super().render(request)


class RpcResource(UpgradeResource):
    """
    C{/v1/rpc}: a WebSocket upgrade, or a C{POST} of a JSON-RPC request or
    batch answered in the response (everything but subscriptions), so an
    HTTP provider works too.  A POST passes the same origin check as a
    WebSocket (with CORS headers for the origins allowed) and each request
    in it counts against a message budget per client address, the
    WebSocket connection's budget (C{message_rate}, C{message_burst}), the
    body at least what parsing it costs (L{parsecost}), charged before it
    is parsed; a body that costs more than a burst is refused with 413.
    """

    def __init__(self, factory, max_body, max_ips=100_000):
        super().__init__(factory)
        self._max_body = max_body
        self._budgets = OrderedDict()  # ip → TokenBucket, least recently used first
        self._max_ips = max_ips

    def render(self, request):
        if request.method == b"OPTIONS":
            return self._preflight(request)
        if request.method != b"POST":
            return super().render(request)
        if not self._cors(request):
            return self._refuse(request, 403, -32600, "this origin may not use /v1/rpc")
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        body = request.content.read(self._max_body + 1)
        if len(body) > self._max_body:
            return self._refuse(request, 413, -32600, f"invalid request: larger than {self._max_body} bytes")
        factory = self._factory
        service = factory.service
        factory.metrics.messages_received.inc()
        ip = self._clientIp(request)
        # Paid for by what parsing it costs before it is parsed, as a
        # WebSocket message is; a batch's requests beyond that after.
        burst = factory.messageBurst
        cost, what = parsecost.cost(body, parsecost.json_values, burst) if factory.messageRate else (1, "")
        if cost > burst:
            factory.metrics.errors.labels("message_too_big").inc()
            return self._refuse(request, 413, -32600, f"invalid request: too big to parse ({what}); at most "
                                f"{int(burst) * parsecost.BYTES_PER_MESSAGE} bytes and "
                                f"{int(burst) * parsecost.VALUES_PER_MESSAGE} values")
        if not self._withinBudget(ip, cost):
            return self._overBudget(request)
        message, error = service.parse(body)
        if error is not None:
            return _json(error)
        if isinstance(message, list) and len(message) > cost and not self._withinBudget(ip, len(message) - cost):
            return self._overBudget(request)
        from explorerd.rpc import Session, encodeAnswer

        session = Session()
        answer = service.answer(message, session)
        if answer is None:
            request.setResponseCode(204)
            return b""

        def gone(failure):
            session.closed = True  # calls of the batch still waiting are not sent

        request.notifyFinish().addErrback(gone)

        def respond(result):
            if not session.closed:
                request.write(encodeAnswer(result))
                request.finish()

        answer.addCallback(respond)
        return server.NOT_DONE_YET

    def _cors(self, request):
        """Whether the request's origin may use us; sets the CORS answer headers if so."""
        origin = request.getHeader(b"origin")
        if origin is None:
            return True
        origin = origin.decode("latin-1")
        host = request.getHeader(b"host")
        if not self._factory.admission.origins.allows(origin, host.decode("latin-1") if host else None):
            return False
        request.setHeader(b"Access-Control-Allow-Origin", origin.encode("latin-1"))
        request.setHeader(b"Vary", b"Origin")
        return True

    def _preflight(self, request):
        if not self._cors(request):
            request.setResponseCode(403)
            return b""
        request.setResponseCode(204)
        request.setHeader(b"Access-Control-Allow-Methods", b"POST, OPTIONS")
        request.setHeader(b"Access-Control-Allow-Headers", b"Content-Type")
        request.setHeader(b"Access-Control-Max-Age", b"600")
        return b""

    def _clientIp(self, request):
        """
        The client's address: behind C{trusted_proxies} proxies, the one
        their C{X-Forwarded-For} names (as Autobahn takes it for WebSockets);
        else the peer's.
        """
        trusted = self._factory.trustXForwardedFor
        forwarded = request.getHeader(b"x-forwarded-for") if trusted else None
        if forwarded:
            addresses = [a.strip() for a in forwarded.decode("latin-1").split(",")]
            return client_ip(addresses[-trusted:][0])
        return request.getClientAddress().host

    def _overBudget(self, request):
        factory = self._factory
        factory.metrics.errors.labels("message_budget").inc()
        return self._refuse(request, 429, -32005, "too many requests: the budget is "
                            f"{factory.messageRate:g} a second, bursts of {factory.messageBurst:g}")

    def _withinBudget(self, ip, cost):
        factory = self._factory
        rate, burst = factory.messageRate, factory.messageBurst
        if not rate:
            return True
        now = factory.hub.clock.seconds()
        bucket = self._budgets.pop(ip, None) or TokenBucket(burst, now)
        allowed = bucket.take(now, rate, burst, cost)
        self._budgets[ip] = bucket
        while len(self._budgets) > self._max_ips:
            self._budgets.popitem(last=False)
        return allowed

    @staticmethod
    def _refuse(request, status, code, text):
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return _json({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": text}})


def _json(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class HealthResource(Resource):
    """
    C{/healthz}: 200 with a small JSON status, 503 when not C{ok}/C{degraded};
    computed at most once per C{interval} seconds however many ask (a load
    balancer's probe waits at most that long).
    """

    isLeaf = True
    HEADERS = ((b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store"))

    def __init__(self, status, clock, interval=0.25):
        super().__init__()
        self._status = status
        self.answers = Coalesced(clock, self._render, interval)

    def _render(self):
        status = self._status()
        code = 200 if status.get("status") in ("ok", "degraded") else 503
        return code, self.HEADERS, json.dumps(status, separators=(",", ":")).encode("utf-8")

    def render_GET(self, request):
        return self.answers.render(request)

    render_HEAD = render_GET


class Channel(http.HTTPChannel):
    """
    An HTTP connection that holds a connection slot from the moment it is
    accepted: until its first request is complete, body included, it is
    "pending", counted in the connection cap and the per-IP limit, and
    dropped by the hub's sweep if the request does not arrive within the
    handshake timeout from connecting (slowloris: the idle timer alone is
    reset by every byte, of the head or of the body).  On a TLS listener
    the connection paid a token of its address's rate limit as it was
    accepted (its handshake costs as much as an upgrade); its first whole
    request gives it back, so only connections that never send one count.

    Pipelined requests take turns with everyone else: twisted.web parses
    the next one as the last is done, in the same call, so a connection
    that sent a thousand GETs had them all answered in one reactor pass
    while every WebSocket client waited.  Here the next is parsed in a
    later turn, one a turn per connection, and not before the client has
    read enough of the answers.  While it leaves them unread (the transport
    is full and pauses us) it is not read either, and the idle timer runs,
    even in the middle of an answer, so a client that stops reading is
    dropped once it expires.  What waits unparsed is twisted.web's buffer,
    which stops reading from the socket past 16 KiB: a connection holds one
    answer and at most some 80 KiB of requests (16 KiB and a read), however
    many it sends.
    """

    _explorer_pending = False
    _explorer_refusal = None
    _explorer_ip = None  # the peer's address, when it is the client's (no trusted proxies)
    _explorer_done = None  # the request done whose successors wait for their turn
    _explorer_queued = False  # in the site's turns
    _explorer_unread = False  # the transport is full: the client is not reading our answers
    _explorer_requested = False  # a whole request has arrived

    def connectionMade(self):
        super().connectionMade()
        peer = getattr(self.transport.getPeer(), "host", "")
        if self.site.admission is not None and not self.site.trusted_proxies:
            self._explorer_ip = peer
        verdict = self.site.slots.admitPending(self, peer)
        if verdict is None:
            self._explorer_pending = True
        elif verdict == "drop":
            self.transport.abortConnection()
        else:
            # Refused; answer once its request head is in, as HTTP clients
            # expect (answering before reading makes some of them fail oddly).
            self._explorer_refusal = verdict

    def allContentReceived(self):
        # The whole request, body included, had to arrive within the
        # handshake timeout: a body that trickles in a byte at a time resets
        # the idle timer on every byte, and only this deadline ends it.
        if not self._explorer_requested and self._explorer_ip is not None and \
                isinstance(self.transport, TLSMemoryBIOProtocol):
            # Accepted on a TLS listener, this connection paid a token of its
            # address's rate limit for its handshake (Admission.refusedAtAccept):
            # a whole request arrived, so it gets it back (an upgrade pays its own).
            self.site.admission.limiter.refund(self._explorer_ip)
        self._explorer_requested = True
        refusal = self._explorer_refusal
        if refusal is None:
            self._explorerDone()
        if refusal is None and self._explorer_ip is not None:
            if self._path.split(b"?", 1)[0] in WEBSOCKET_PATHS:
                refusal = self.site.admission.refuseEarly(self._explorer_ip)
        if not refusal:
            return super().allContentReceived()
        self.site.slots.unlinger(self)
        code, reason, *message = refusal
        body = (message[0] + "\n").encode("utf-8") if message else b""
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (code, reason.encode("ascii"), len(body), body))
        self.transport.loseConnection()
        self._explorer_refusal = ()

    def lineLengthExceeded(self, line):
        # A request line or header longer than MAX_LENGTH: twisted.web would drop the
        # connection without a word; say what was wrong (its other limits answer 400).
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
        self.transport.loseConnection()

    def dataReceived(self, data):
        if self._explorer_refusal == ():
            return  # answered and closing: nothing more to parse
        super().dataReceived(data)

    def timeoutConnection(self):
        # Idle for the handshake timeout before its request was in: the same
        # slowloris the hub's sweep drops, counted the same way.
        if self._explorer_pending:
            self.site.slots.metrics.errors.labels("handshake_timeout").inc()
            self._explorerDone()  # counted once: the sweep no longer sees it
        super().timeoutConnection()

    def requestDone(self, request):
        self._explorer_done = request
        self._explorerQueue()

    def _explorerQueue(self):
        if self._explorer_unread:
            return  # resumeProducing queues it
        if not self._explorer_queued:
            self._explorer_queued = True
            self.site.turns.add(self)

    def takeTurn(self):
        """The next pipelined request's turn (L{Turns})."""
        if not self._explorer_queued:
            return  # lost meanwhile
        self._explorer_queued = False
        if self._explorer_unread:
            return  # resumeProducing queues it again
        request, self._explorer_done = self._explorer_done, None
        super().requestDone(request)

    def pauseProducing(self):
        # The client does not read its answers.  twisted.web goes on reading it while a request
        # is handled, and buffers all it sends, without end; and it stops the idle timer then,
        # so a client that stopped reading a file was kept forever.  Stop reading it, and count
        # it idle from now (not once the connection is a WebSocket's: it has no transport then).
        self._explorer_unread = True
        super().pauseProducing()
        if self.transport is not None:
            network = interfaces.IPushProducer(self.transport, None)
            if network is not None:
                network.pauseProducing()  # resumed by twisted.web once the request is done
            self.setTimeout(self.site.timeOut)

    def resumeProducing(self):
        self._explorer_unread = False
        super().resumeProducing()
        if self._explorer_done is not None:
            self._explorerQueue()
        elif self.requests and self.transport is not None:
            self.setTimeout(None)  # reading again, in the middle of an answer: as twisted.web has it

    def connectionLost(self, reason):
        self._explorerDone()
        if self._explorer_refusal is not None:
            self.site.slots.unlinger(self)
        self._explorer_queued = False
        if self._explorer_done is not None:
            self.requests.remove(self._explorer_done)  # answered: not a request lost
            self._explorer_done = None
        super().connectionLost(reason)

    def _explorerDone(self):
        if self._explorer_pending:
            self._explorer_pending = False
            self.site.slots.unpend(self)


class Turns:
    """
    The connections whose next pipelined request waits for the next reactor
    turn: one call a turn for all of them rather than one each.
    """

    def __init__(self, clock):
        self._clock = clock
        self._queued = []
        self._call = None

    def add(self, channel):
        self._queued.append(channel)
        if self._call is None:
            self._call = self._clock.callLater(0, self._turn)

    def _turn(self):
        # Those queued during this turn (as their request is answered at once) wait for the next.
        self._call = None
        queued, self._queued = self._queued, []
        for channel in queued:
            channel.takeTurn()


class Site(server.Site):
    protocol = Channel

    def __init__(self, resource, config, slots, admission=None, reactor=None):
        super().__init__(resource, timeout=config.handshake_timeout, reactor=reactor)
        self.slots = slots
        self.admission = admission
        self.trusted_proxies = config.trusted_proxies
        self.displayTracebacks = False
        self.accessLog = AccessLog(self.reactor, super().log)
        self.turns = Turns(self.reactor)

    def log(self, request):
        self.accessLog.record(request)

    def stopFactory(self):
        self.accessLog.stop()
        super().stopFactory()


class Static(File):
    """The dashboard's files, revalidated on every load so an upgrade never mixes old and new modules."""

    def render_GET(self, request):
        request.setHeader(b"Cache-Control", b"no-cache")
        return super().render_GET(request)


def default_web_root():
    """The dashboard: the repo's C{web/} when run from a checkout, else the installed copy."""
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web")
    installed = os.path.join(sys.prefix, "share", "explorerd", "web")
    for candidate in (here, installed):
        if os.path.isfile(os.path.join(candidate, "index.html")):
            return candidate
    return None


def build_root(stream_factory, metrics, health, clock, web_root=None, wamp_factory=None, rpc_factory=None):
    if web_root and os.path.isdir(web_root):
        root = Static(web_root)
    else:
        root = Resource()
        root.putChild(b"", Data(
            b"<!doctype html><title>explorerd</title><p>explorerd is running. "
            b"WebSocket: <code>/v1/stream</code>, WAMP: <code>/v1/wamp</code>, "
            b"Ethereum JSON-RPC: <code>/v1/rpc</code>, "
            b"metrics: <code>/metrics</code>.</p>",
            "text/html; charset=utf-8"))
    v1 = Resource()
    v1.putChild(WEBSOCKET_PATHS[0].rsplit(b"/", 1)[1], UpgradeResource(stream_factory))
    if wamp_factory is not None:
        v1.putChild(WEBSOCKET_PATHS[1].rsplit(b"/", 1)[1], UpgradeResource(wamp_factory))
    if rpc_factory is not None:
        v1.putChild(WEBSOCKET_PATHS[2].rsplit(b"/", 1)[1], RpcResource(rpc_factory, rpc_factory.maxMessagePayloadSize))
    root.putChild(b"v1", v1)
    root.putChild(b"metrics", MetricsResource(metrics, clock))
    root.putChild(b"healthz", HealthResource(health, clock))
    return root
