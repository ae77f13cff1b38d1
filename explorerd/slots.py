"""
Connection slots: the one cap that raw, WAMP and plain HTTP connections share.

A connection holds a slot from the moment it is accepted.  Until its first
HTTP request is complete it is I{pending} (dropped if the request does not
arrive within the handshake timeout: the idle timer alone is reset by every
byte, so a slowloris would never be); a refused one I{lingers} until it has
read its answer; a WebSocket holds its slot until the connection is gone,
and one we are closing is aborted if the peer does not finish the close
handshake in time.  Per-IP counts cover pending and open connections alike.
"""

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer
from twisted.logger import Logger

_CLOSED = WebSocketProtocol.STATE_CLOSED


class ConnectionSlots:
    log = Logger()

    def __init__(self, clock, config, metrics):
        self.clock = clock
        self.config = config
        self.metrics = metrics
        self.stopping = False
        self._protocols = {}  # WebSocket protocol -> its IP (None: not counted per IP)
        self._pending = {}  # HTTP channel -> (deadline, IP or None)
        self._lingering = {}  # refused HTTP channel -> deadline
        self._closing = {}  # protocol we sent a close frame -> deadline
        self._per_ip = {}
        self._drained = None

    @property
    def count(self):
        """Connections holding a slot: WebSockets, and HTTP requests still arriving."""
        return len(self._protocols) + len(self._pending)

    @property
    def headroom(self):
        """
        Connections over the cap that HTTP requests may hold, so /healthz
        and /metrics still answer when the WebSockets fill it (the
        WebSocket handshake itself checks the cap).
        """
        return max(16, self.config.max_connections // 10)

    @property
    def protocols(self):
        """The WebSocket protocols holding a slot."""
        return tuple(self._protocols)

    def _countIP(self, ip, delta):
        n = self._per_ip.get(ip, 0) + delta
        if n > 0:
            self._per_ip[ip] = n
        else:
            self._per_ip.pop(ip, None)

    def ipFull(self, ip):
        cap = self.config.max_connections_per_ip
        return bool(cap) and self._per_ip.get(ip, 0) >= cap

    def full(self):
        """No slot for another WebSocket (or we are stopping)."""
        return self.stopping or self.count >= self.config.max_connections

    # HTTP connections, from accept to their first complete request.

    def admitPending(self, channel, ip):
        """
        A TCP connection was accepted: hold a slot for it until its request
        is complete.  Returns C{None} (admitted), C{(status, reason)} (to be
        refused once its request head is read, within the handshake
        timeout), or C{"drop"} when even the refusals are too many.
        """
        config = self.config
        refusal = None
        if self.stopping or self.count >= config.max_connections + self.headroom:
            self.metrics.connections_refused.labels("capacity").inc()
            refusal = (503, "Service Unavailable")
        track_ip = not config.trusted_proxies
        if refusal is None and track_ip and self.ipFull(ip):
            self.metrics.connections_refused.labels("ip_capacity").inc()
            refusal = (429, "Too Many Requests")
        if refusal is not None:
            if len(self._lingering) >= max(100, config.max_connections // 10):
                return "drop"
            self._lingering[channel] = self.clock.seconds() + config.handshake_timeout
            return refusal
        self._pending[channel] = (self.clock.seconds() + config.handshake_timeout, ip if track_ip else None)
        if track_ip:
            self._countIP(ip, 1)
        return None

    def unpend(self, channel):
        """The connection's request arrived (or it went away): it no longer holds a pending slot."""
        held = self._pending.pop(channel, None)
        if held is not None and held[1] is not None:
            self._countIP(held[1], -1)

    def unlinger(self, channel):
        """A refused connection got its answer, or went away."""
        self._lingering.pop(channel, None)

    # WebSockets.

    def reserve(self, protocol, ip=None):
        """
        Take a slot for a WebSocket C{protocol} from C{ip}; False when the
        cap (or the per-IP cap) is reached or we are stopping.
        """
        if self.full() or (ip is not None and self.ipFull(ip)):
            return False
        self._protocols[protocol] = ip
        if ip is not None:
            self._countIP(ip, 1)
        return True

    def closing(self, protocol):
        """We sent C{protocol} a close frame: abort it if the handshake is not done within the shutdown timeout."""
        if protocol in self._protocols:
            self._closing[protocol] = self.clock.seconds() + self.config.shutdown_timeout

    def isClosing(self, protocol):
        return protocol in self._closing

    def release(self, protocol):
        """Give back the slot once the connection is gone."""
        if protocol in self._protocols:
            ip = self._protocols.pop(protocol)
            if ip is not None:
                self._countIP(ip, -1)
        self._closing.pop(protocol, None)
        if self._drained is not None and not self._protocols:
            d, self._drained = self._drained, None
            d.callback(None)

    # The hub's sweep, and shutdown.

    def sweep(self, now):
        """Abort what overstayed: refused answers unread, requests unfinished, closes unanswered."""
        for channel, deadline in tuple(self._lingering.items()):
            if now >= deadline:
                self._lingering.pop(channel, None)
                if channel.transport is not None:
                    channel.transport.abortConnection()
        for channel, (deadline, _) in tuple(self._pending.items()):
            if now >= deadline:
                self.unpend(channel)
                self.metrics.errors.labels("handshake_timeout").inc()
                if channel.transport is not None:
                    channel.transport.abortConnection()
        for protocol, deadline in tuple(self._closing.items()):
            if now >= deadline:
                self._closing.pop(protocol, None)
                if protocol.state != _CLOSED:
                    protocol.dropConnection(abort=True)

    def abortUnfinished(self):
        """Stopping: HTTP requests still arriving, and refusals, are dropped at once."""
        for channel in tuple(self._pending) + tuple(self._lingering):
            self.unpend(channel)
            self.unlinger(channel)
            if channel.transport is not None:
                channel.transport.abortConnection()

    def whenDrained(self, timeout):
        """
        Fires once every WebSocket is gone, or after C{timeout} seconds,
        when the rest are aborted.
        """
        if not self._protocols:
            return defer.succeed(None)
        self._drained = defer.Deferred()
        timer = self.clock.callLater(timeout, self._abortAll)

        def done(result):
            if timer.active():
                timer.cancel()
            return result

        return self._drained.addBoth(done)

    def _abortAll(self):
        remaining = tuple(self._protocols)
        self.log.warn("shutdown: {n} connections did not close in time; aborting them", n=len(remaining))
        for protocol in remaining:
            if protocol.state != _CLOSED:
                protocol.dropConnection(abort=True)
            self.release(protocol)
