"""
The daemon's service tree: hub first, listener last.

C{MultiService} stops children in reverse order, so on SIGTERM the listener
stops accepting first and the hub then says goodbye (1001) to every client.
"""

import time
from errno import EWOULDBLOCK

from twisted.application.service import MultiService, Service
from twisted.internet import main, tcp
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from explorerd.admission import Admission
from explorerd.hub import Hub
from explorerd.metrics import Metrics
from explorerd.stream import StreamFactory
from explorerd.web import Site, build_root, default_web_root


class SizedServer(tcp.Server):
    """
    A TCP connection with the configured buffer sizes.  Twisted uses one
    attribute, C{bufferSize}, both as the size of a socket read and as the
    unsent-bytes mark at which it pauses a producer; explorerd sets them
    apart: C{WEBSOCKET_READ_BUFFER_SIZE} and C{WEBSOCKET_WRITE_BUFFER_SIZE}.
    """

    readSize = 65536

    def doRead(self):
        try:
            data = self.socket.recv(self.readSize)
        except OSError as se:
            if se.args[0] == EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        return self._dataReceived(data)


def sized_server(read_size, write_size):
    return type("SizedServer", (SizedServer,), {"readSize": read_size, "bufferSize": write_size})


class Listener(Service):
    """
    Listens on a Twisted endpoint string.  Binding happens in
    C{privilegedStartService} and a failure is raised there, so twistd
    exits with the error instead of running on without a port.
    """

    log = Logger()

    def __init__(self, reactor, description, factory, transport=None):
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.transport = transport
        self.port = None

    def privilegedStartService(self):
        super().privilegedStartService()
        if self.port is not None:
            return
        outcome = []
        try:
            endpoint = serverFromString(self.reactor, self.description)
        except (ValueError, TypeError, KeyError) as e:
            raise SystemExit(f"explorerd: invalid listen address {self.description!r}: {e}") from None
        endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise SystemExit(f"explorerd: endpoint {self.description!r} did not start listening at once")
        if isinstance(outcome[0], Failure):
            raise SystemExit(f"explorerd: cannot listen on {self.description!r}: {outcome[0].value}")
        self.port = outcome[0]
        if self.transport is not None and isinstance(self.port, tcp.Port):
            self.port.transport = self.transport
        address = self.port.getHost()
        host = getattr(address, "host", "?")
        self.log.info("listening on {description}: http://{host}:{port}/ "
                      "(WebSocket /v1/stream, metrics /metrics, health /healthz)",
                      description=self.description, host=host, port=getattr(address, "port", "?"))

    def startService(self):
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()


class Daemon(MultiService):
    """Everything one explorerd process runs, built from a L{Config}."""

    def __init__(self, config, reactor, clock=None, web_root=None):
        super().__init__()
        clock = reactor if clock is None else clock
        self.config = config
        self.started_at = time.time()
        self.metrics = Metrics()
        self.hub = Hub(clock, config, self.metrics)
        self.hub.setServiceParent(self)
        self.admission = Admission(self.hub, config, self.metrics, clock)
        self.streamFactory = StreamFactory(self.hub, self.admission, self.metrics, config)
        root = build_root(self.streamFactory, self.metrics, self.health,
                          default_web_root() if web_root is None else web_root)
        self.site = Site(root, config)
        self.listener = Listener(reactor, config.listen, self.site,
                                 sized_server(config.read_buffer_size, config.write_buffer_size))
        self.listener.setServiceParent(self)

    def health(self):
        return {
            "status": "ok",
            "connections": self.hub.connectionCount,
            "clients": self.hub.clientCount,
            "uptime_seconds": round(time.time() - self.started_at, 3),
        }
