"""
Prometheus metrics, in a registry of our own, served by a resource of our own.

C{prometheus_client.twisted} imports the global reactor at import time,
which breaks C{twistd --reactor}; a registry per daemon also lets tests run
many daemons in one process.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource

from explorerd.coalesce import Coalesced

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                   0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every metric the daemon exports; one instance per daemon."""

    def __init__(self, registry=None):
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.connections = Gauge(
            "explorer_websocket_connections",
            "WebSocket connections open now (handshake done).", registry=r)
        self.connections_by_protocol = Gauge(
            "explorer_websocket_connections_by_protocol",
            "WebSocket connections open now, by protocol (websocket = /v1/stream, wamp = /v1/wamp).",
            ["protocol"], registry=r)
        self.connections_accepted = Counter(
            "explorer_websocket_connections_accepted_total",
            "WebSocket connections that completed the opening handshake.", registry=r)
        self.connections_refused = Counter(
            "explorer_websocket_connections_refused_total",
            "WebSocket handshakes refused, by reason.", ["reason"], registry=r)
        self.refused_at_accept = Counter(
            "explorer_connections_refused_at_accept_total",
            "TLS connections closed as accepted, before any TLS work (also counted by reason above).",
            registry=r)
        self.messages_sent = Counter(
            "explorer_websocket_messages_sent_total",
            "Messages written to client transports, by message type.", ["type"], registry=r)
        self.messages_received = Counter(
            "explorer_websocket_messages_received_total",
            "Messages received from clients.", registry=r)
        self.errors = Counter(
            "explorer_websocket_errors_total",
            "Client errors and disconnects for cause, by type.", ["type"], registry=r)
        self.broadcast_latency = Histogram(
            "explorer_websocket_broadcast_latency_seconds",
            "From an event handed to the hub to the last client write done.",
            ["type"], buckets=LATENCY_BUCKETS, registry=r)
        self.broadcast_recipients = Counter(
            "explorer_websocket_broadcast_recipients_total",
            "Clients an event was written or queued for, by event type.", ["type"], registry=r)
        self.queued_messages = Gauge(
            "explorer_websocket_queued_messages",
            "Messages waiting in the queues of paused (slow) clients.", registry=r)

    def render(self):
        return generate_latest(self.registry)


class MetricsResource(Resource):
    """
    C{/metrics} in the Prometheus text format, rendered at most once per
    C{interval} seconds however many scrape it (a render of every metric
    costs about a millisecond; Prometheus scrapes every 15 s or so).
    """

    isLeaf = True
    HEADERS = ((b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii")), (b"Cache-Control", b"no-store"))

    def __init__(self, metrics, clock, interval=1.0):
        super().__init__()
        self._metrics = metrics
        self.answers = Coalesced(clock, self._render, interval)

    def _render(self):
        return 200, self.HEADERS, self._metrics.render()

    def render_GET(self, request):
        return self.answers.render(request)

    render_HEAD = render_GET
