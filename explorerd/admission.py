"""
Who may open a WebSocket: the origin check, the per-IP rate limit and the
connection cap, shared by the raw stream and WAMP so both answer alike.

Refusals happen in the opening handshake, before any protocol state exists,
as plain HTTP errors a browser or a curl user can read: 403, 429, 503.
"""

import ipaddress
import re
from collections import OrderedDict

from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from zope.interface import implementer


RATE_LIMITED = "too many new connections from your address; try again in a minute"


class TokenBucket:
    """
    C{rate} tokens a second, held up to C{burst}: the one budget behind the
    per-IP rate limit and the per-connection message budget.
    """

    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens, stamp):
        self.tokens = tokens
        self.stamp = stamp

    def level(self, now, rate, burst):
        """The tokens there are at C{now}."""
        return min(burst, self.tokens + (now - self.stamp) * rate)

    def take(self, now, rate, burst, cost=1.0):
        """Take C{cost} tokens if there are that many (True); else take none (False)."""
        tokens = self.level(now, rate, burst)
        self.stamp = now
        if tokens < cost:
            self.tokens = tokens
            return False
        self.tokens = tokens - cost
        return True


class RateLimiter:
    """
    A L{TokenBucket} per client IP: C{per_minute} new connections a minute,
    in bursts of up to C{per_minute}.

    Memory stays bounded however many IPs connect: buckets that have
    refilled are forgotten (they are the same as no bucket), and at most
    C{max_ips} are kept, the least recently seen dropped first.
    """

    def __init__(self, clock, per_minute, max_ips=100_000):
        self._clock = clock
        self._burst = float(per_minute)
        self._rate = per_minute / 60.0
        self._max_ips = max_ips
        self._buckets = OrderedDict()

    def __len__(self):
        return len(self._buckets)

    def allow(self, ip):
        if self._burst <= 0:
            return True
        now = self._clock.seconds()
        bucket = self._buckets.pop(ip, None)
        if bucket is None:
            bucket = TokenBucket(self._burst, now)
        allowed = bucket.take(now, self._rate, self._burst)
        self._buckets[ip] = bucket
        self._forget(now)
        return allowed

    def refund(self, ip):
        """Give back a token C{allow(ip)} took (see L{Admission.refusedAtAccept})."""
        bucket = self._buckets.get(ip)
        if self._burst <= 0 or bucket is None:
            return
        now = self._clock.seconds()
        bucket.tokens = min(self._burst, bucket.level(now, self._rate, self._burst) + 1.0)
        bucket.stamp = now

    def exhausted(self, ip):
        """Whether C{allow(ip)} would refuse now; changes nothing."""
        bucket = self._buckets.get(ip)
        if self._burst <= 0 or bucket is None:
            return False
        return bucket.level(self._clock.seconds(), self._rate, self._burst) < 1.0

    def _forget(self, now):
        buckets = self._buckets
        while len(buckets) > self._max_ips:
            buckets.popitem(last=False)
        # The oldest buckets are the likeliest to be full again; drop a few per call.
        for _ in range(2):
            if not buckets:
                break
            ip, bucket = next(iter(buckets.items()))
            if bucket.level(now, self._rate, self._burst) < self._burst:
                break
            del buckets[ip]


def _origin_pattern(origin):
    if origin == "*":
        return None
    return re.compile("^" + re.escape(origin).replace(r"\*", "[^/]*") + "$")


class OriginPolicy:
    """
    C{API_CORS_ORIGINS}: C{*}, or a list of C{scheme://host[:port]} with
    C{*} wildcards.  Clients that send no Origin (not browsers) pass: the
    check protects browser users from other sites' pages, nothing else.
    """

    def __init__(self, origins):
        self.allowAll = "*" in origins
        self._patterns = [_origin_pattern(o) for o in origins if o != "*"]

    def allows(self, origin, host=None):
        """
        Whether a page from C{origin} may connect.  A page the daemon served
        itself (the dashboard: Origin's host and port are the request's Host)
        always may.
        """
        if self.allowAll or origin is None:
            return True
        origin = origin.strip().rstrip("/").lower()
        if host and origin.split("://", 1)[-1] == host.strip().lower():
            return True
        return any(p.match(origin) for p in self._patterns)


def client_ip(peer):
    """
    The client's IP from Autobahn's C{peer} ("tcp4:1.2.3.4:5678", or the
    bare address it takes from a trusted X-Forwarded-For).
    """
    if peer.startswith(("tcp4:", "tcp6:")):
        return peer[5:].rsplit(":", 1)[0]
    candidate = peer.strip()
    if candidate.startswith("[") and "]" in candidate:
        candidate = candidate[1:candidate.index("]")]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        # host:port from a proxy, or something that is not an address at all
        head = candidate.rsplit(":", 1)[0] if candidate.count(":") == 1 else candidate
        return head[:64]


class Admission:
    """The handshake-time checks, in the order a user would expect them."""

    log = Logger()

    def __init__(self, slots, config, metrics, clock):
        self.slots = slots
        self.trusted_proxies = config.trusted_proxies
        self.metrics = metrics
        self.origins = OriginPolicy(config.cors_origins)
        self.limiter = RateLimiter(clock, config.rate_limit, config.rate_limit_ips)

    def admit(self, protocol, request):
        """
        Raise L{ConnectionDeny} (an HTTP error before the upgrade) or take a
        connection slot for C{protocol}; returns the client's IP.
        """
        ip = client_ip(request.peer)
        origin = request.headers.get("origin")
        if not self.origins.allows(origin, request.headers.get("host")):
            self._refuse("origin", ip, f"origin {origin[:200]!r} is not allowed", 403)
        if self.slots.full():
            # Before the rate limit: a refusal for capacity takes no token.
            self._refuse("capacity", ip, "server is at its connection limit; try again later", 503)
        if not self.limiter.allow(ip):
            self._refuse("rate_limit", ip, RATE_LIMITED, 429)
        if self.slots.ipFull(ip):
            self._refuse("ip_capacity", ip, "too many connections from your address", 429)
        if not self.slots.reserve(protocol, ip):
            self._refuse("capacity", ip, "server is at its connection limit; try again later", 503)
        return ip

    def refuseEarly(self, ip):
        """
        An upgrade request from C{ip} has arrived, before anything is built
        for it: C{(status, reason, message)} if the rate limit would refuse
        it anyway, else C{None}.  A refusal here costs the HTTP parse only;
        through the handshake it costs as much CPU as an accepted client,
        which is what a storm from one address would spend.
        """
        if ip is None or not self.limiter.exhausted(ip):
            return None
        self.metrics.connections_refused.labels("rate_limit").inc()
        return (429, "Too Many Requests", RATE_LIMITED)

    def refusedAtAccept(self, ip):
        """
        A connection from C{ip} was accepted on a TLS listener: the reason
        to close it at once (C{"capacity"}, C{"rate_limit"},
        C{"ip_capacity"}), before any TLS work, or C{None}.  A full
        handshake costs ~1.5 ms of server CPU, a close ~0.1 ms; such a client
        cannot be answered politely (that would take the handshake), but
        it would have been refused anyway.  The per-address checks apply
        only where the peer is the client (no trusted proxies).

        A connection let through takes a token of its address's rate limit
        at once, as an upgrade does: its handshake costs as much.  The
        HTTP channel gives it back when a whole request arrives
        (L{explorerd.web.Channel}), so an upgrade still counts once and a
        plain HTTPS request not at all, while a flood of bare handshakes
        (or of unfinished requests) is closed here past the burst.
        """
        slots = self.slots
        if slots.stopping or slots.count >= slots.config.max_connections + slots.headroom:
            reason = "capacity"
        elif self.trusted_proxies:
            return None
        elif not self.limiter.allow(ip):
            reason = "rate_limit"
        elif slots.ipFull(ip):
            reason = "ip_capacity"
        else:
            return None
        self.metrics.connections_refused.labels(reason).inc()
        self.metrics.refused_at_accept.inc()
        return reason

    def _refuse(self, reason, ip, message, code):
        self.metrics.connections_refused.labels(reason).inc()
        self.log.info("refused {ip}: HTTP {code} {message}", ip=ip, code=code, message=message)
        raise ConnectionDeny(code, message)


@implementer(IProtocolFactory)
class RefusingAtAccept:
    """
    A listening port's factory in front of TLS: a connection that
    L{Admission.refusedAtAccept} refuses gets no protocol, and Twisted
    closes its socket before the TLS layer ever sees it.
    """

    def __init__(self, factory, admission):
        self.factory = factory
        self.admission = admission

    def buildProtocol(self, addr):
        if self.admission.refusedAtAccept(addr.host) is not None:
            return None
        return self.factory.buildProtocol(addr)

    def doStart(self):
        self.factory.doStart()

    def doStop(self):
        self.factory.doStop()

    def logPrefix(self):
        return self.factory.logPrefix()
