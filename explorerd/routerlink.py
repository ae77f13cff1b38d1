"""
One WAMP session on a router (Crossbar.io) that comes back by itself.

L{RouterLink} connects to C{--wamp-router}, joins its realm (ticket
authentication when C{--wamp-router-ticket} is set, else anonymous), lets its
owner set the session up (C{onJoin}), and when the connection goes,
reconnects with exponential backoff and jitter: 0.25 s doubling up to
C{--wamp-router-retry}, plus up to 0.25 s drawn from the C{rng} it is given.
The backoff resets only once a session has joined B{and} been set up, so a
router that refuses us (bad ticket, no such realm, a registration it does
not allow) is retried as slowly as one that is down.  Stopping says GOODBYE
and waits for the router's answer and the close, at most
C{WEBSOCKET_SHUTDOWN_TIMEOUT}; then the connection is aborted.

Why not autobahn's C{autobahn.twisted.component.Component}, which also
retries with backoff and jitter and does ticket authentication: as of
autobahn 26.11 its jitter comes from the global C{random} module (the
documented callable C{retry_delay_jitter} kills its retry loop); it never
resets its backoff unless given a C{main}, and then resets it at the join,
before C{main} has set anything up, so a refused setup reconnects in a loop
without any delay; its C{stop()} waits for the router's GOODBYE with no
bound, and a timeout on it closes nothing; and a C{stop()} while a session
is joining lets it join.  tests/test_routerlink.py shows each of these
against a router on 127.0.0.1.
"""

import random

from autobahn.twisted.wamp import ApplicationSession
from autobahn.twisted.websocket import WampWebSocketClientFactory, WampWebSocketClientProtocol
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import ComponentConfig
from autobahn.websocket.util import parse_url
from prometheus_client import Counter, Gauge
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.logger import Logger

log = Logger()

# Reconnection backoff: 0.25 s, doubling, up to the configured maximum, plus
# up to 0.25 s of jitter.
_INITIAL_DELAY = 0.25


class _LinkProtocol(WampWebSocketClientProtocol):
    """Tells the link when the connection goes, whether or not a session was ever opened."""

    def onClose(self, wasClean, code, reason):
        super().onClose(wasClean, code, reason)
        self.factory.link._closed(self, reason)


class _LinkSession(ApplicationSession):
    def __init__(self, link):
        super().__init__(ComponentConfig(realm=link.realm))
        self._link = link

    def onConnect(self):
        link = self._link
        if link.ticket:
            self.join(link.realm, authmethods=["ticket"], authid=link.authid)
        else:
            self.join(link.realm, authmethods=["anonymous"])

    def onChallenge(self, challenge):
        if challenge.method == "ticket" and self._link.ticket:
            return self._link.ticket
        raise ApplicationError("explorer.error.cannot_authenticate",
                               f"explorerd has no answer to a {challenge.method!r} challenge")

    def onJoin(self, details):
        return self._link._joined(self, details)

    def onLeave(self, details):
        self._link._left(self, details)
        self.disconnect()


class LinkMetrics:
    def __init__(self, registry):
        r = self.registry = registry
        self.connected = Gauge(
            "explorer_wamp_router_connected", "1 while the WAMP router session is joined.", registry=r)
        self.joins = Counter(
            "explorer_wamp_router_joins_total", "WAMP router sessions joined.", registry=r)
        self.failures = Counter(
            "explorer_wamp_router_failures_total",
            "Router connections that ended before or after joining, by stage.", ["stage"], registry=r)


class RouterLink(Service):
    """
    One WAMP session on the router that comes back by itself.

    C{onJoin(session)} runs after each join (it may return a Deferred; the
    link counts as up, and its backoff starts over, once it fires);
    C{onLeave()} after each loss of a session that was up.  C{session} is
    that session, or C{None}.

    @param clock: the C{IReactorTime} for the backoff and the shutdown
        timeout (the reactor unless given).
    @param rng: a C{random.Random} for the backoff jitter.
    """

    def __init__(self, reactor, config, onJoin, onLeave, registry, clock=None, rng=None):
        self.url = config.wamp_router
        self.realm = config.wamp_router_realm
        self.authid = config.wamp_router_authid
        self.ticket = config.wamp_router_ticket
        self.max_delay = config.wamp_router_retry
        self.shutdown_timeout = config.shutdown_timeout
        self.session = None
        self.metrics = LinkMetrics(registry)
        self._onJoin = onJoin
        self._onLeave = onLeave
        self._clock = reactor if clock is None else clock
        self._rng = random.Random() if rng is None else rng
        self._endpoint = _endpoint(reactor, self.url)
        self._attempt = 0
        self._retry = None
        self._connecting = None
        self._protocol = None
        self._attached = None
        self._gone = []
        self._deadline = None
        self._stopping = False
        self._complaint = None
        factory = WampWebSocketClientFactory(lambda: _LinkSession(self), url=self.url,
                                             serializers=_serializers())
        factory.protocol = _LinkProtocol
        factory.link = self
        factory.setProtocolOptions(
            autoPingInterval=10, autoPingTimeout=20,
            openHandshakeTimeout=10, closeHandshakeTimeout=2,
            perMessageCompressionOffers=[],
        )
        self.factory = factory

    def __repr__(self):
        return f"<RouterLink {self.url} realm {self.realm}>"

    def health(self):
        return {"url": self.url, "realm": self.realm, "connected": self.session is not None}

    def startService(self):
        super().startService()
        self._stopping = False
        log.info("joining WAMP router {url} realm {realm} as {who}", url=self.url, realm=self.realm,
                 who=f"{self.authid!r} (ticket)" if self.ticket else "anonymous")
        self._connect()

    def stopService(self):
        """
        Stop retrying; leave the session (GOODBYE) and close the connection.
        Fires once it is closed, or aborted C{shutdown_timeout} seconds on.
        """
        super().stopService()
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
        protocol = self._protocol
        if protocol is None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._gone.append(d)
        if self._deadline is None:
            self._deadline = self._clock.callLater(self.shutdown_timeout, self._abort, protocol)
            # The router's answer to our GOODBYE closes the WebSocket (L{_LinkSession.onLeave}).
            said = self._attached is not None and _goodbye(self._attached, "explorerd stopping")
            if not said and protocol.transport is not None:
                # Not joined yet, or the connection is going already.
                protocol.transport.loseConnection()
        return d

    def _abort(self, protocol):
        self._deadline = None
        log.warn("the WAMP router {url} did not close the session in {timeout}s; dropping the connection",
                 url=self.url, timeout=self.shutdown_timeout)
        if protocol.transport is not None:
            protocol.transport.abortConnection()

    # The reconnection loop.

    def _connect(self):
        self._retry = None
        d = self._connecting = self._endpoint.connect(self.factory)

        def connected(protocol):
            self._connecting = None
            self._protocol = protocol

        def failed(failure):
            self._connecting = None
            if self._stopping or failure.check(defer.CancelledError):
                return
            self.metrics.failures.labels("connecting").inc()
            self._complain(f"cannot reach the WAMP router {self.url}: {failure.getErrorMessage()}")
            self._again()

        d.addCallbacks(connected, failed)

    def _again(self):
        if self._stopping or self._retry is not None:
            return
        self._attempt += 1
        delay = min(_INITIAL_DELAY * 2 ** min(self._attempt - 1, 30), self.max_delay)
        delay += self._rng.random() * _INITIAL_DELAY
        self._retry = self._clock.callLater(delay, self._connect)

    def _complain(self, text):
        # Once per kind of trouble, not once per attempt.
        if text != self._complaint:
            self._complaint = text
            log.warn("{text}; retrying with backoff up to {max}s", text=text, max=self.max_delay)

    # Session events.

    def _joined(self, session, details):
        self._attached = session

        def up(_):
            if not session.is_attached() or self._stopping:
                return
            self.session = session
            self._attempt = 0
            self._complaint = None
            self.metrics.connected.set(1)
            self.metrics.joins.inc()
            log.info("joined WAMP router {url} realm {realm} as {authid} ({authrole})", url=self.url,
                     realm=details.realm, authid=details.authid, authrole=details.authrole)

        def failed(failure):
            text = f"setting up the WAMP router session failed: {failure.getErrorMessage()}"
            if text != self._complaint:
                # Once per kind of trouble, with its traceback.
                self._complaint = text
                log.failure("{text}; leaving to try again with backoff", failure, text=text)
            _goodbye(session, "explorerd could not set up its session")

        d = defer.maybeDeferred(self._onJoin, session)
        d.addCallbacks(up, failed)
        return d

    def _left(self, session, details):
        if not self._stopping and details.reason not in ("wamp.close.normal", "wamp.close.goodbye_and_out"):
            self._complain(f"the WAMP router {self.url} ended the session: {details.reason} "
                           f"{details.message or ''}".rstrip())
        self._lost(session._transport)

    def _closed(self, protocol, reason):
        self._lost(protocol)
        if protocol is self._protocol:
            self._protocol = None
            self._attached = None
            if self._deadline is not None:
                if self._deadline.active():
                    self._deadline.cancel()
                self._deadline = None
            gone, self._gone = self._gone, []
            for d in gone:
                d.callback(None)
            self._again()

    def _lost(self, protocol):
        session = self.session
        if session is not None and session._transport is protocol:
            self.session = None
            self.metrics.connected.set(0)
            if not self._stopping:
                self.metrics.failures.labels("joined").inc()
                log.warn("lost the WAMP router {url}; reconnecting with backoff", url=self.url)
            self._onLeave()


def _goodbye(session, why):
    """Leave C{session} (GOODBYE) if it is joined and its WebSocket open; whether it could."""
    transport = session._transport
    if not session.is_attached() or transport is None or transport.state != transport.STATE_OPEN:
        return False
    session.leave("wamp.close.normal", why)
    return True


def _serializers():
    from autobahn.wamp.serializer import JsonSerializer, MsgPackSerializer

    return [MsgPackSerializer(), JsonSerializer()]


def _endpoint(reactor, url):
    """A client endpoint for a C{ws://} or C{wss://} URL: IPv4, IPv6 or a name (both families), TLS for wss."""
    from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
    from twisted.internet.ssl import optionsForClientTLS

    secure, host, port, _, _, _ = parse_url(url)
    if isIPAddress(host):
        client = TCP4ClientEndpoint(reactor, host, port, timeout=10)
    elif isIPv6Address(host):
        client = TCP6ClientEndpoint(reactor, host, port, timeout=10)
    else:
        client = HostnameEndpoint(reactor, host, port, timeout=10)
    if secure:
        client = wrapClientTLS(optionsForClientTLS(host), client)
    return client
