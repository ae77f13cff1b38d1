"""
The HTTP resource tree: C{/v1/stream} (WebSocket), C{/v1/wamp} (WAMP), C{/metrics},
C{/healthz} and the dashboard in C{web/} at C{/}, all on one port.
"""

import json
import os
import sys

from autobahn.twisted.resource import WebSocketResource
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.static import Data, File

from explorerd.metrics import MetricsResource


class UpgradeResource(WebSocketResource):
    """
    A WebSocket resource that also stops twisted.web's idle timer for the
    connection it hands over: the WebSocket has its own liveness checks and
    the channel's timer would otherwise fire long after the upgrade.
    """

    def render(self, request):
        request.channel.setTimeout(None)
        return super().render(request)


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


class Site(server.Site):
    def __init__(self, resource, config):
        super().__init__(resource, timeout=config.handshake_timeout)
        self.displayTracebacks = False


def default_web_root():
    """The dashboard: the repo's C{web/} when run from a checkout, else the installed copy."""
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web")
    installed = os.path.join(sys.prefix, "share", "explorerd", "web")
    for candidate in (here, installed):
        if os.path.isfile(os.path.join(candidate, "index.html")):
            return candidate
    return None


def build_root(stream_factory, metrics, health, web_root=None, wamp_factory=None):
    if web_root and os.path.isdir(web_root):
        root = File(web_root)
    else:
        root = Resource()
        root.putChild(b"", Data(
            b"<!doctype html><title>explorerd</title><p>explorerd is running. "
            b"WebSocket: <code>/v1/stream</code>, WAMP: <code>/v1/wamp</code>, "
            b"metrics: <code>/metrics</code>.</p>",
            "text/html; charset=utf-8"))
    v1 = Resource()
    v1.putChild(b"stream", UpgradeResource(stream_factory))
    if wamp_factory is not None:
        v1.putChild(b"wamp", UpgradeResource(wamp_factory))
    root.putChild(b"v1", v1)
    root.putChild(b"metrics", MetricsResource(metrics))
    root.putChild(b"healthz", HealthResource(health))
    return root
