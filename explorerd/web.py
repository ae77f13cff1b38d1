"""
The HTTP resource tree: C{/v1/stream} (WebSocket), C{/v1/wamp} (WAMP), C{/v1/rpc}
(Ethereum JSON-RPC over WebSocket), C{/metrics},
C{/healthz} and the dashboard in C{web/} at C{/}, all on one port.
"""

import json
import os
import sys

from autobahn.twisted.resource import WebSocketResource
from twisted.web import http, server
from twisted.web.resource import Resource
from twisted.web.static import Data, File

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
    HTTP provider works too.
    """

    def __init__(self, factory, max_body):
        super().__init__(factory)
        self._max_body = max_body

    def render(self, request):
        if request.method != b"POST":
            return super().render(request)
        from explorerd.rpc import Session

        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        body = request.content.read(self._max_body + 1)
        if len(body) > self._max_body:
            request.setResponseCode(413)
            return json.dumps({"jsonrpc": "2.0", "id": None, "error": {
                "code": -32600, "message": f"invalid request: larger than {self._max_body} bytes"}}).encode()
        service = self._factory.service
        self._factory.metrics.messages_received.inc()
        message, error = service.parse(body)
        if error is not None:
            return json.dumps(error, separators=(",", ":")).encode("utf-8")
        answer = service.answer(message, Session())
        if answer is None:
            request.setResponseCode(204)
            return b""
        gone = []
        request.notifyFinish().addErrback(gone.append)

        def respond(result):
            if not gone:
                request.write(json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
                request.finish()

        answer.addCallback(respond)
        return server.NOT_DONE_YET


class HealthResource(Resource):
    """C{/healthz}: 200 with a small JSON status, 503 when not C{ok}/C{degraded}."""

    isLeaf = True

    def __init__(self, status):
        super().__init__()
        self._status = status

    def render_GET(self, request):
        status = self._status()
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if status.get("status") not in ("ok", "degraded"):
            request.setResponseCode(503)
        return json.dumps(status, separators=(",", ":")).encode("utf-8")


class Channel(http.HTTPChannel):
    """
    An HTTP connection that holds a connection slot from the moment it is
    accepted: until its first request is complete it is "pending", counted
    in the connection cap and the per-IP limit, and dropped by the hub's
    sweep if the request does not arrive within the handshake timeout from
    connecting (slowloris: the idle timer alone is reset by every byte).
    """

    _explorer_pending = False
    _explorer_refusal = None
    _explorer_ip = None  # the peer's address, when it is the client's (no trusted proxies)

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

    def allHeadersReceived(self):
        if self._explorer_refusal is None:
            self._explorerDone()
        super().allHeadersReceived()

    def allContentReceived(self):
        refusal = self._explorer_refusal
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

    def connectionLost(self, reason):
        self._explorerDone()
        if self._explorer_refusal is not None:
            self.site.slots.unlinger(self)
        super().connectionLost(reason)

    def _explorerDone(self):
        if self._explorer_pending:
            self._explorer_pending = False
            self.site.slots.unpend(self)


class Site(server.Site):
    protocol = Channel

    def __init__(self, resource, config, slots, admission=None):
        super().__init__(resource, timeout=config.handshake_timeout)
        self.slots = slots
        self.admission = admission
        self.trusted_proxies = config.trusted_proxies
        self.displayTracebacks = False


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


def build_root(stream_factory, metrics, health, web_root=None, wamp_factory=None, rpc_factory=None):
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
    root.putChild(b"metrics", MetricsResource(metrics))
    root.putChild(b"healthz", HealthResource(health))
    return root
