"""
JSON-RPC calls over a node's WebSocket (C{--rpc-url ws://...}), for nodes and
providers that serve only that.

L{WebSocketJSONRPCClient} is a L{JSONRPCClient} whose requests go over one
WebSocket connection instead of HTTP: the same calls, the same checks of the
answers, the same errors.  Answers are matched to requests by id (a batch's
by any of its ids); the connection is opened at the first call and again at
the first call after it is lost, so a node that goes away fails the calls in
flight (L{RPCUnavailable}) and the live-tail's backoff paces the
reconnections.  Notifications (C{eth_subscription}) on this connection are
ignored: push has a connection of its own (L{explorerd.nodepush}).
"""

import json
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from explorerd.jsonrpc import JSONRPCClient, RPCTimeout, RPCUnavailable
from explorerd.routerlink import _endpoint

__all__ = ["WebSocketJSONRPCClient"]


class _CallsProtocol(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.client._opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.client._answer(payload)

    def onClose(self, wasClean, code, reason):
        self.factory.client._lost(self, reason or (f"close code {code}" if code else "connection lost"))


class WebSocketJSONRPCClient(JSONRPCClient):
    """
    A L{JSONRPCClient} over a C{ws://} or C{wss://} URL.

    @param ping_interval: seconds between WebSocket pings on the connection
        (an answer must come within as long again, or it is dropped); 0 for none.
    """

    log = Logger()

    def __init__(self, reactor, url, *, timeout=10.0, maxResponseSize=64 * 1024 * 1024,
                 ping_interval=10.0, **kwargs):
        super().__init__(reactor, None, timeout=timeout, maxResponseSize=maxResponseSize, **kwargs)
        self._ping_interval = float(ping_interval)
        self._protocol = None
        self._opening = None  # waiters for the connection being opened
        self._waiting = {}  # request id -> (Deferred, all ids of its request, method)
        self._connecting = None
        self._gone = []
        if url is not None:
            self.connectTo(url)

    def connectTo(self, url):
        if self.url is not None:
            raise RuntimeError(f"{self!r} already has a node URL")
        if isinstance(url, bytes):
            url = url.decode("ascii")
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"JSON-RPC WebSocket url must be ws(s)://host[:port][/path], got {url!r}")
        factory = WebSocketClientFactory(url=url, reactor=self._reactor)
        factory.protocol = _CallsProtocol
        factory.client = self
        options = dict(openHandshakeTimeout=self.timeout, closeHandshakeTimeout=2,
                       perMessageCompressionOffers=[], maxMessagePayloadSize=self._maxResponseSize,
                       maxFramePayloadSize=self._maxResponseSize)
        if self._ping_interval > 0:
            options.update(autoPingInterval=self._ping_interval, autoPingTimeout=self._ping_interval)
        factory.setProtocolOptions(**options)
        self._factory = factory
        self._endpoint = _endpoint(self._reactor, url)
        self.url = url

    def close(self):
        """Fail the calls in flight, refuse new ones, and drop the connection; fires once it is closed."""
        self._closed = True
        for d, _, _ in list(self._waiting.values()):
            d.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._gone.append(d)
        protocol.transport.abortConnection()
        return d

    # Plumbing ------------------------------------------------------------

    def _post(self, method, payload, timeout):
        if self._closed:
            return defer.fail(RPCUnavailable(method, "client closed"))
        if self.url is None:
            return defer.fail(RPCUnavailable(method, "the node's URL is not known yet"))
        timeout = self.timeout if timeout is None else timeout
        ids = [payload["id"]] if isinstance(payload, dict) else [p["id"] for p in payload]
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")

        def forget(_):
            for i in ids:
                self._waiting.pop(i, None)

        answer = defer.Deferred(forget)
        for i in ids:
            self._waiting[i] = (answer, ids, method)

        def send(protocol):
            if not answer.called:
                protocol.sendMessage(body)

        def unavailable(failure):
            if not answer.called:
                forget(None)
                answer.errback(RPCUnavailable(method, failure.getErrorMessage()))

        self._connection(method).addCallbacks(send, unavailable)

        timedOut = []

        def onTimeout():
            timedOut.append(True)
            answer.cancel()

        timer = self._reactor.callLater(timeout, onTimeout)

        def settle(result):
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                if timedOut:
                    raise RPCTimeout(method, timeout)
                raise RPCUnavailable(method, "client closed")
            return result

        return answer.addBoth(settle)

    def _connection(self, method):
        """A Deferred firing with the open connection, opening it if need be."""
        if self._protocol is not None and self._protocol.state == self._protocol.STATE_OPEN:
            return defer.succeed(self._protocol)
        waiter = defer.Deferred()
        if self._opening is None:
            self._opening = [waiter]

            def failed(failure):
                self._connecting = None
                waiters, self._opening = self._opening or [], None
                for w in waiters:
                    w.errback(failure)

            d = self._connecting = self._endpoint.connect(self._factory)
            d.addCallbacks(self._connected, failed)
        else:
            self._opening.append(waiter)
        return waiter

    def _connected(self, protocol):
        self._connecting = None
        self._protocol = protocol
        if self._closed and protocol.transport is not None:
            protocol.transport.abortConnection()

    def _opened(self, protocol):
        waiters, self._opening = self._opening or [], None
        for w in waiters:
            w.callback(protocol)

    def _lost(self, protocol, why):
        if protocol is not self._protocol:
            # An older connection, replaced already: what waits is the new one's.
            return
        self._protocol = None
        waiters, self._opening = self._opening or [], None
        for w in waiters:
            w.errback(RPCUnavailable("connect", f"the node's WebSocket closed: {why}"))
        for answer, ids, method in list(self._waiting.values()):
            if not answer.called:
                for i in ids:
                    self._waiting.pop(i, None)
                answer.errback(RPCUnavailable(method, f"the node's WebSocket closed: {why}"))
        gone, self._gone = self._gone, []
        for d in gone:
            d.callback(None)

    def _answer(self, payload):
        try:
            message = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            self.log.debug("ignoring a message from {url} that is not JSON: {payload!r:.80}",
                           url=self.url, payload=payload)
            return
        items = message if isinstance(message, list) else [message]
        for item in items:
            rid = item.get("id") if isinstance(item, dict) else None
            if isinstance(rid, bool) or not isinstance(rid, int):
                continue
            waiting = self._waiting.get(rid)
            if waiting is not None:
                answer, ids, _ = waiting
                for i in ids:
                    self._waiting.pop(i, None)
                answer.callback(message)
                return
