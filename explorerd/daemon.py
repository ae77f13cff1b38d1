"""
The daemon's service tree: hub first, then the WAMP broker, the source (the
live-tail, or an edge's router subscription), the router publisher, and the
listener last.

C{MultiService} stops children in reverse order, so on SIGTERM the listener
stops accepting first, the sources stop, the broker says GOODBYE to its
sessions and the hub then says goodbye (1001) to every client.
"""

import time

from twisted.application.service import MultiService, Service
from twisted.internet import tcp
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from explorerd.admission import Admission
from explorerd.hub import Hub
from explorerd.jsonrpc import JSONRPCClient
from explorerd.livetail import LiveTail
from explorerd.metrics import Metrics
from explorerd.tailstate import TailState
from explorerd.transport import sized_server
from explorerd.stream import StreamFactory
from explorerd.wamp import Broker, WampFactory
from explorerd.web import Site, build_root, default_web_root


class Listener(Service):
    """
    Listens on a Twisted endpoint string.  Binding happens in
    C{privilegedStartService} and a failure is raised there, so twistd
    exits with the error instead of running on without a port.
    """

    log = Logger()

    def __init__(self, reactor, description, factory, transport=None, label="explorerd"):
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.transport = transport
        self.label = label
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
        self.log.info("{label} listening on {description}: http://{host}:{port}/",
                      label=self.label, description=self.description, host=host,
                      port=getattr(address, "port", "?"))

    def startService(self):
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()


class EmbeddedNode(Service):
    """
    With no node configured: a replay node of real recorded blocks on its
    own loopback port, polled over HTTP by the live-tail exactly as a real
    node would be.
    """

    log = Logger()

    def __init__(self, reactor, clock, block_time, rpc):
        from explorerd.replay import ReplayNode

        self.node = ReplayNode(clock, block_time=block_time)
        self.rpc = rpc
        self.listener = Listener(reactor, "tcp:0:interface=127.0.0.1", self.node.http_factory(reactor),
                                 label="embedded replay node")

    def privilegedStartService(self):
        super().privilegedStartService()
        self.listener.privilegedStartService()
        address = self.listener.port.getHost()
        self.rpc.url = f"http://{address.host}:{address.port}/"
        self.log.info("no --rpc-url given: tailing the embedded replay node at {url}, real recorded "
                      "mainnet, Polygon and Rinkeby blocks, one every {block_time}s",
                      url=self.rpc.url, block_time=self.node.block_time)

    def startService(self):
        if self.listener.port is None:
            self.privilegedStartService()
        super().startService()
        self.node.start()
        self.listener.startService()

    def stopService(self):
        super().stopService()
        self.node.stop()
        return self.listener.stopService()


class Daemon(MultiService):
    """Everything one explorerd process runs, built from a L{Config}."""

    def __init__(self, config, reactor, clock=None, web_root=None, tail=True):
        super().__init__()
        clock = reactor if clock is None else clock
        self.config = config
        self.started_at = time.time()
        self.metrics = Metrics()
        self.hub = Hub(clock, config, self.metrics)
        self.hub.setServiceParent(self)
        self.broker = Broker(self.hub, config.wamp_realm, self.metrics.registry)
        self.broker.setServiceParent(self)
        self.embedded = self.tail = self.edge = self.publisher = None
        self.rpc = JSONRPCClient(reactor, config.rpc_url or "http://127.0.0.1:1/", timeout=config.rpc_timeout)
        if config.source == "wamp":
            if tail:
                from explorerd.wampclient import EdgeSource

                self.edge = EdgeSource(reactor, self.hub, config, self.metrics.registry)
                self.edge.setServiceParent(self)
        elif tail:
            if not config.rpc_url:
                self.embedded = EmbeddedNode(reactor, clock, config.replay_block_time, self.rpc)
                self.embedded.setServiceParent(self)
            state = None
            if config.state_dir and config.rpc_url:
                state = TailState.inDirectory(config.state_dir, _state_name(config.rpc_url))
            self.tail = LiveTail(clock, self.rpc, self.hub, poll_interval=config.poll_interval,
                                 max_reorg_depth=config.max_reorg_depth, max_catchup=config.max_catchup,
                                 max_lag=config.max_lag, batch_size=config.rpc_batch_size,
                                 max_backoff=config.rpc_retry,
                                 state=state, registry=self.metrics.registry,
                                 remember=config.history_blocks)
            self.tail.setServiceParent(self)
            self.hub.holdResumes(self.tail.whenRestored())
        if config.wamp_router and config.source == "node":
            from explorerd.wampclient import RouterPublisher

            self.publisher = RouterPublisher(reactor, self.hub, config, self.metrics.registry)
            self.publisher.setServiceParent(self)
        self.admission = Admission(self.hub, config, self.metrics, clock)
        self.streamFactory = StreamFactory(self.hub, self.admission, self.metrics, config)
        self.wampFactory = WampFactory(self.broker, self.admission, self.metrics, config)
        root = build_root(self.streamFactory, self.metrics, self.health,
                          default_web_root() if web_root is None else web_root,
                          wamp_factory=self.wampFactory)
        self.site = Site(root, config, self.hub, self.admission)
        self.listener = Listener(reactor, config.listen, self.site,
                                 sized_server(config.read_buffer_size, config.write_buffer_size))
        self.listener.setServiceParent(self)

    def stopService(self):
        """Children stop in reverse (listener, tail, node, hub); then the node connections close."""
        d = super().stopService()
        d.addBoth(lambda result: self.rpc.close().addBoth(lambda _: result))
        return d

    def health(self):
        status = {
            "status": "ok",
            "connections": self.hub.connectionCount,
            "clients": self.hub.clientCount,
            "wamp_sessions": self.broker.sessionCount,
            "uptime_seconds": round(time.time() - self.started_at, 3),
        }
        if self.tail is not None:
            status["tail"] = self.tail.health()
            status["status"] = status["tail"]["status"]
        if self.edge is not None:
            status["edge"] = self.edge.health()
            status["status"] = status["edge"]["status"]
        if self.publisher is not None:
            status["router"] = self.publisher.health()
        return status


def _state_name(url):
    """One state file per node, so pointing explorerd at another chain never resumes the wrong one."""
    import hashlib

    return "livetail-" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:16] + ".json"
