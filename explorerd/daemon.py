"""
The daemon's service tree: hub first, then the WAMP broker, the source (the
live-tail, or an edge's router subscription), the router publisher, and the
listener last.

C{MultiService} stops children in reverse order, so on SIGTERM the listener
stops accepting first, the sources stop, the broker says GOODBYE to its
sessions and the hub then says goodbye (1001) to every client.
"""

import time

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet import tcp
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.logger import Logger
from zope.interface import implementer

from explorerd.admission import Admission, RefusingAtAccept
from explorerd.filelimit import ensureFiles
from explorerd.hub import Hub
from explorerd.jsonrpc import JSONRPCClient
from explorerd.livetail import LiveTail
from explorerd.metrics import Metrics
from explorerd.rpc import RpcFactory, RpcService
from explorerd.tailstate import TailState
from explorerd.stream import StreamFactory
from explorerd.transport import sized_server
from explorerd.wamp import Broker, WampFactory
from explorerd.web import Site, build_root, default_web_root


@implementer(IStreamServerEndpoint)
class ListeningEndpoint:
    """
    Wraps the endpoint of a C{strports.service} (which raises a bind failure
    at start-up, so twistd exits with it): keeps the port for L{Daemon.address},
    says where it listens, and gives a TCP port our transport class.
    """

    log = Logger()

    def __init__(self, endpoint, label, transport=None, admission=None):
        self.endpoint = endpoint
        self.label = label
        self.transport = transport
        self.admission = admission
        self.port = None

    def listen(self, factory):
        def listening(port):
            self.port = port
            if self.transport is not None and isinstance(port, tcp.Port):
                port.transport = self.transport
            if self.admission is not None and isinstance(port.factory, TLSMemoryBIOFactory):
                # Refused addresses are closed before the (expensive) TLS handshake.
                port.factory = RefusingAtAccept(port.factory, self.admission)
            address = port.getHost()
            self.log.info("{label} listening on http://{host}:{port}/", label=self.label,
                          host=address.host, port=address.port)
            return port

        return self.endpoint.listen(factory).addCallback(listening)


def listening(reactor, description, factory, label, transport=None, admission=None):
    """A service listening on C{description}, its endpoint a L{ListeningEndpoint}."""
    service = strports.service(description, factory, reactor=reactor)
    service.endpoint = ListeningEndpoint(service.endpoint, label, transport, admission)
    return service


class Daemon(MultiService):
    """Everything one explorerd process runs, built from a L{Config}."""

    log = Logger()

    def __init__(self, config, reactor, clock=None, web_root=None, tail=True):
        super().__init__()
        clock = reactor if clock is None else clock
        self.config = config
        self.started_at = time.time()
        self.metrics = Metrics()
        self.hub = Hub(clock, config, self.metrics, reactor=reactor)
        self.hub.setServiceParent(self)
        self.broker = Broker(self.hub, config.wamp_realm, self.metrics.registry)
        self.broker.setServiceParent(self)
        self.embedded = self.tail = self.push = self.edge = self.publisher = None
        # Without --rpc-url the node is the embedded one, whose address is known once it listens.
        if config.rpc_url.startswith(("ws://", "wss://")):
            from explorerd.wsjsonrpc import WebSocketJSONRPCClient

            self.rpc = WebSocketJSONRPCClient(reactor, config.rpc_url, timeout=config.rpc_timeout)
        else:
            self.rpc = JSONRPCClient(reactor, config.rpc_url or None, timeout=config.rpc_timeout)
        if config.source == "wamp":
            if tail:
                from explorerd.wampclient import EdgeSource

                self.edge = EdgeSource(reactor, self.hub, config, self.metrics.registry)
                self.edge.setServiceParent(self)
        elif tail:
            if not config.rpc_url:
                from explorerd.replay import ReplayNode

                self.embedded = ReplayNode(clock, block_time=config.replay_block_time).asService(
                    reactor, onBound=self._tailEmbedded)
                self.embedded.setServiceParent(self)
            state = None
            if config.state_dir and config.rpc_url:
                state = TailState.inDirectory(config.state_dir, _state_name(config.rpc_url))
            self.tail = LiveTail(clock, self.rpc, self.hub, poll_interval=config.poll_interval,
                                 max_reorg_depth=config.max_reorg_depth, max_catchup=config.max_catchup,
                                 max_lag=config.max_lag, batch_size=config.rpc_batch_size,
                                 max_backoff=config.rpc_retry, receipts=config.receipts,
                                 adaptive=config.adaptive_polling,
                                 sync=None if state is None else _inThread(reactor),
                                 reactor=reactor,
                                 state=state, registry=self.metrics.registry,
                                 remember=config.history_blocks)
            self.tail.setServiceParent(self)
            self.hub.holdResumes(self.tail.whenRestored())
            push_url = config.rpc_ws_url or (config.rpc_url if self.rpc.url and
                                             self.rpc.url.startswith(("ws://", "wss://")) else "")
            if push_url or not config.rpc_url:
                from explorerd.nodepush import NodePush

                # The embedded node's URL comes once it listens (L{_tailEmbedded}).
                self.push = NodePush(reactor, push_url or None, self.tail.pollSoon,
                                     clock=clock, max_delay=config.rpc_retry,
                                     silence=config.rpc_ws_silence, registry=self.metrics.registry,
                                     onActive=self._pushActive)
                self.push.setServiceParent(self)
        if config.wamp_router and config.source == "node":
            from explorerd.wampclient import RouterPublisher

            self.publisher = RouterPublisher(reactor, self.hub, config, self.metrics.registry)
            self.publisher.setServiceParent(self)
        self.admission = Admission(self.hub.slots, config, self.metrics, clock)
        self.streamFactory = StreamFactory(self.hub, self.admission, self.metrics, config)
        self.wampFactory = WampFactory(self.broker, self.admission, self.metrics, config)
        # An edge reads blocks from its router; /v1/rpc forwards to its --rpc-url, if it has one.
        upstream = None if config.source == "wamp" and not config.rpc_url else self.rpc
        self.rpcService = RpcService(self.hub, config, self.metrics.registry, upstream)
        self.rpcFactory = RpcFactory(self.rpcService, self.admission, self.metrics, config)
        # The side doors' timers run on the reactor: they pace real clients, not the hub's clock.
        root = build_root(self.streamFactory, self.metrics, self.health, reactor,
                          default_web_root() if web_root is None else web_root,
                          wamp_factory=self.wampFactory, rpc_factory=self.rpcFactory)
        self.site = Site(root, config, self.hub.slots, self.admission, reactor)
        self.listener = listening(reactor, config.listen, self.site, "explorerd",
                                  sized_server(config.read_buffer_size, config.write_buffer_size,
                                               config.unsent_limit),
                                  self.admission)
        self.listener.setServiceParent(self)

    @property
    def address(self):
        """Where clients connect (an C{IAddress}), once listening."""
        return self.listener.endpoint.port.getHost()

    def _tailEmbedded(self, url):
        self.rpc.connectTo(url)
        if self.push is not None:
            self.push.connectTo("ws" + url[len("http"):])
        self.log.info("no --rpc-url given: tailing the embedded replay node at {url}, real recorded "
                      "mainnet, Polygon and Rinkeby blocks, one every {block_time}s",
                      url=url, block_time=self.config.replay_block_time)

    def _pushActive(self, active):
        """Adaptive polling is for a node that does not push: off while it does."""
        self.tail.adaptive = self.config.adaptive_polling and not active

    def startService(self):
        """Make room for C{max_connections} open files first (L{ensureFiles}), or say why there is none."""
        warning = ensureFiles(self.config.max_connections)
        if warning is not None:
            self.log.warn("{warning}", warning=warning)
        super().startService()

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
            status["tail"]["push"] = self.push.health() if self.push is not None else None
            status["status"] = status["tail"]["status"]
        if self.edge is not None:
            status["edge"] = self.edge.health()
            status["status"] = status["edge"]["status"]
        if self.publisher is not None:
            status["router"] = self.publisher.health()
        return status


def _inThread(reactor):
    """Runs a blocking function in the reactor's thread pool (the state file's fsyncs)."""
    from twisted.internet import threads

    return lambda f: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f)


def _state_name(url):
    """One state file per node, so pointing explorerd at another chain never resumes the wrong one."""
    import hashlib

    return "livetail-" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:16] + ".json"
