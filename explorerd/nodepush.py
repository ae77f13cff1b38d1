"""
Push from the node: a WebSocket subscription to its C{newHeads} that makes
the live-tail poll the moment a block exists, instead of at its next tick.

A notification is only a trigger (C{onHead()}, the tail's
L{LiveTail.pollSoon}): its content is never published nor trusted, so the
tail's gap-free, reorg-aware walk stays the one path by which blocks reach
clients, and polling goes on as the safety net.  Push can make blocks come
sooner; it cannot lose, repeat or reorder one.  Dropped, duplicated, delayed
notifications, or one for a block a reorg then removes, cost at most a
poll.

The subscription comes back by itself: a connection that fails or closes,
or a node that refuses C{eth_subscribe}, is retried with exponential backoff
(0.25 s doubling up to C{max_delay}) plus up to 0.25 s of jitter from the
C{rng} given; the backoff starts over once the node confirms a subscription.
A subscription that looks connected but is dead is dropped and renewed: the
node not answering our WebSocket pings (Autobahn's auto-ping, on txaio's
loop), or no notification for C{silence} seconds (a few block times).

The wire protocol (geth's, anvil's)::

    -> {"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}
    <- {"jsonrpc":"2.0","id":1,"result":"0x<subscription id>"}
    <- {"jsonrpc":"2.0","method":"eth_subscription",
        "params":{"subscription":"0x<id>","result":{<header>}}}
"""

import json
import random

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from explorerd.livetail import redact
from explorerd.routerlink import _endpoint

__all__ = ["NodePush", "PushMetrics"]

# Reconnection backoff: 0.25 s, doubling, up to max_delay, plus up to 0.25 s of jitter.
_INITIAL_DELAY = 0.25

_SUBSCRIBE_ID = 1


class PushMetrics:
    """C{explorer_tail_push_*}, in the registry we are given."""

    def __init__(self, registry=None):
        r = CollectorRegistry() if registry is None else registry
        self.registry = r
        self.active = Gauge("explorer_tail_push_active",
                            "1 while the node's newHeads subscription is confirmed (blocks are "
                            "fetched the moment the node announces them); 0: polling only.",
                            registry=r)
        self.notifications = Counter("explorer_tail_push_notifications_total",
                                     "newHeads notifications received from the node (each one "
                                     "makes the tail poll now).", registry=r)
        self.reconnects = Counter("explorer_tail_push_reconnects_total",
                                  "Attempts to connect to the node's WebSocket again after a "
                                  "failure, a close, a refused subscription or a silent one.",
                                  registry=r)


def _announced(header):
    """The height a C{newHeads} notification announces, or C{None}: a hint, never trusted more."""
    number = header.get("number") if isinstance(header, dict) else None
    if isinstance(number, str) and number.startswith("0x") and 2 < len(number) <= 18:
        try:
            return int(number, 16)
        except ValueError:
            return None
    return None


class _PushProtocol(WebSocketClientProtocol):
    """One connection: subscribe on open, hand notifications of our subscription to the push."""

    _explorer_subscription = None
    _explorer_dropped = False

    def onOpen(self):
        self.sendMessage(json.dumps({"jsonrpc": "2.0", "id": _SUBSCRIBE_ID, "method": "eth_subscribe",
                                     "params": ["newHeads"]}).encode())

    def onMessage(self, payload, isBinary):
        try:
            message = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            self.factory.push._garbled(self, payload)
            return
        if not isinstance(message, dict):
            self.factory.push._garbled(self, payload)
            return
        if message.get("id") == _SUBSCRIBE_ID and "method" not in message:
            self.factory.push._answered(self, message)
            return
        params = message.get("params")
        if (message.get("method") == "eth_subscription" and isinstance(params, dict)
                and self._explorer_subscription is not None
                and params.get("subscription") == self._explorer_subscription):
            self.factory.push._notified(self, _announced(params.get("result")))

    def onClose(self, wasClean, code, reason):
        self.factory.push._closed(self, code, reason)


class NodePush(Service):
    """
    The node's C{newHeads}, as triggers for C{onHead()}.

    @param reactor: connects (C{IReactorTCP}, TLS for C{wss://}).
    @param url: the node's C{ws://} or C{wss://} URL, or C{None} until
        L{connectTo} (the embedded node's port is known once it listens).
    @param onHead: called for each notification with the height it
        announces (C{None} if it names none we can read): a hint only.
    @param onActive: if given, called with C{True} when a subscription is
        confirmed and C{False} when it is lost (the tail's adaptive polling
        is for nodes that do not push).
    @param clock: the C{IReactorTime} for the backoff and the silence
        deadline (the reactor unless given).
    @param rng: a C{random.Random} for the backoff jitter.
    @param max_delay: the longest wait between attempts to reconnect.
    @param silence: seconds without a notification after which the
        subscription is taken for dead and renewed.
    @param ping_interval: seconds between our WebSocket pings (an answer
        must come within as long again); 0 for none.
    """

    name = "nodepush"
    log = Logger()

    def __init__(self, reactor, url, onHead, *, clock=None, rng=None, max_delay=30.0, silence=60.0,
                 ping_interval=10.0, registry=None, onActive=None):
        if max_delay <= 0:
            raise ValueError(f"max_delay must be > 0, got {max_delay!r}")
        if silence <= 0:
            raise ValueError(f"silence must be > 0, got {silence!r}")
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        self._rng = random.Random() if rng is None else rng
        self._onHead = onHead
        self._onActive = onActive
        self.max_delay = float(max_delay)
        self.silence = float(silence)
        self.ping_interval = float(ping_interval)
        self.metrics = PushMetrics(registry)
        self.url = None
        self.factory = None
        self._attempt = 0
        self._retry = None
        self._connecting = None
        self._protocol = None
        self._subscription = None
        self._deadline = None
        self._gone = []
        self._stopping = False
        self._last_error = None
        self._notifications = 0
        self._reconnects = 0
        if url:
            self._setURL(url)

    def __repr__(self):
        return f"<NodePush {self.node}>"

    @property
    def node(self):
        """The node's WebSocket URL without credentials, for logs and C{/healthz}."""
        return redact(self.url) if self.url else None

    @property
    def active(self):
        """Whether the node has confirmed our subscription and the connection is up."""
        return self._subscription is not None

    def connectTo(self, url):
        """Use C{url} from now on (the embedded node, once it listens); connects if running."""
        self._setURL(url)
        if self.running and self._protocol is None and self._connecting is None and self._retry is None:
            self._connect()

    def health(self):
        """Push's part of the tail's C{/healthz}."""
        if self.active:
            state = "subscribed"
        elif self._retry is not None:
            state = "waiting to reconnect"
        elif self._connecting is not None or self._protocol is not None:
            state = "connecting"
        else:
            state = "stopped" if self.running or self._stopping else "not started"
        return {"url": self.node, "active": self.active, "state": state,
                "last_error": self._last_error, "notifications": self._notifications,
                "reconnects": self._reconnects}

    # Service -------------------------------------------------------------

    def startService(self):
        super().startService()
        self._stopping = False
        if self.url is not None:
            self._connect()

    def stopService(self):
        """Stop reconnecting and drop the connection; fires once it is closed."""
        super().stopService()
        self._stopping = True
        self._cancel("_retry")
        self._cancel("_deadline")
        if self._connecting is not None:
            self._connecting.cancel()
        protocol = self._protocol
        self._unsubscribed()
        if protocol is None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._gone.append(d)
        if protocol.transport is not None:
            protocol.transport.abortConnection()
        return d

    # The connection ------------------------------------------------------

    def _setURL(self, url):
        self.url = url
        factory = WebSocketClientFactory(url=url, reactor=self._reactor)
        factory.protocol = _PushProtocol
        factory.push = self
        options = dict(openHandshakeTimeout=10, closeHandshakeTimeout=2, perMessageCompressionOffers=[])
        if self.ping_interval > 0:
            options.update(autoPingInterval=self.ping_interval, autoPingTimeout=self.ping_interval)
        factory.setProtocolOptions(**options)
        self.factory = factory
        self._endpoint = _endpoint(self._reactor, url)

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
            self._trouble(f"cannot connect: {failure.getErrorMessage()}")
            self._again()

        d.addCallbacks(connected, failed)

    def _again(self):
        if self._stopping or self._retry is not None or self.url is None:
            return
        self._attempt += 1
        delay = min(_INITIAL_DELAY * 2 ** min(self._attempt - 1, 30), self.max_delay)
        delay += self._rng.random() * _INITIAL_DELAY
        self._retry = self._clock.callLater(delay, self._reconnect)

    def _reconnect(self):
        self._reconnects += 1
        self.metrics.reconnects.inc()
        self._connect()

    def _trouble(self, text):
        """Log a kind of trouble once (not once per attempt); keep it for C{/healthz}."""
        if text != self._last_error:
            self.log.warn("push from {url}: {text}; polling goes on, retrying with backoff up to "
                          "{max}s", url=self.node, text=text, max=self.max_delay)
        self._last_error = text

    def _drop(self, protocol, why):
        """Give up on this connection (the reconnection follows its close)."""
        self._trouble(why)
        protocol._explorer_dropped = True
        if protocol.transport is not None:
            protocol.transport.abortConnection()

    def _cancel(self, name):
        call = getattr(self, name)
        if call is not None and call.active():
            call.cancel()
        setattr(self, name, None)

    # What the node says --------------------------------------------------

    def _answered(self, protocol, message):
        if protocol is not self._protocol:
            return
        result = message.get("result")
        if "error" in message or not isinstance(result, str) or not result:
            error = message.get("error")
            detail = (f"{error.get('code')} {error.get('message')}" if isinstance(error, dict)
                      else f"{message!r:.120}")
            self._drop(protocol, f"the node refused eth_subscribe newHeads: {detail}")
            return
        protocol._explorer_subscription = result
        self._subscription = result
        self._attempt = 0
        self.metrics.active.set(1)
        if self._onActive is not None:
            self._onActive(True)
        if self._last_error is not None:
            self.log.info("push from {url} is back: subscribed to newHeads", url=self.node)
        else:
            self.log.info("subscribed to newHeads at {url}: blocks are fetched the moment the node "
                          "announces them", url=self.node)
        self._last_error = None
        self._expectWithin()

    def _notified(self, protocol, height=None):
        if protocol is not self._protocol:
            return
        self._notifications += 1
        self.metrics.notifications.inc()
        self._expectWithin()
        self._onHead(height)

    def _garbled(self, protocol, payload):
        self.log.debug("push from {url}: ignoring a message that is not a JSON-RPC object: {payload!r:.80}",
                       url=self.node, payload=payload)

    def _expectWithin(self):
        self._cancel("_deadline")
        self._deadline = self._clock.callLater(self.silence, self._silent, self._protocol)

    def _silent(self, protocol):
        self._deadline = None
        if protocol is self._protocol:
            self._drop(protocol, f"no new head announced for {self.silence:g}s (a dead subscription?)")

    def _closed(self, protocol, code, reason):
        if protocol is not self._protocol:
            return
        self._protocol = None
        was_active = self.active
        self._unsubscribed()
        self._cancel("_deadline")
        gone, self._gone = self._gone, []
        for d in gone:
            d.callback(None)
        if self._stopping:
            return
        if was_active:
            self._attempt = 0
        if not protocol._explorer_dropped:
            self._trouble(f"the WebSocket closed ({code} {reason})" if code or reason
                          else "the WebSocket connection was lost")
        self._again()

    def _unsubscribed(self):
        was_active, self._subscription = self._subscription is not None, None
        self.metrics.active.set(0)
        if was_active and self._onActive is not None:
            self._onActive(False)
