"""
A replay node: the chain of L{explorerd.replay.chain} produced on a clock
and served over HTTP, so a live-tail can be run against real recorded blocks
without a network, a node binary or wall-clock waits.
"""

import os

from twisted.application import service, strports
from twisted.internet import task
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from explorerd.replay.chain import DEFAULT_CHAIN_ID, Chain
from explorerd.replay.recordings import DEFAULT_RECORDINGS, Recording, load_recording
from explorerd.replay.resource import QuietSite, RPCResource
from explorerd.replay.websocket import HeadsFactory, NodeResource


class ReplayNode:
    """
    A node whose chain replays recorded blocks, one head event per
    C{block_time} seconds of C{clock}.

    C{clock} drives block production only; HTTP runs on the reactor given
    to L{asService}.  Nothing here touches the global reactor.
    """

    log = Logger()

    def __init__(self, clock, recordings=None, block_time=2.0, chain_id=None, *, mode="endless", loop=None,
                 start_height=1, prefill=0, max_blocks=100_000):
        if not block_time > 0:
            raise ValueError(f"block_time must be > 0, not {block_time!r}")
        if recordings is None:
            recordings = DEFAULT_RECORDINGS
        if isinstance(recordings, (str, os.PathLike, Recording)):
            recordings = [recordings]
        recordings = [load_recording(r) for r in recordings]
        if chain_id is None:
            chain_id = (recordings[0].chain_id if mode == "recording" and recordings else None) or DEFAULT_CHAIN_ID
        self.chain = Chain(recordings, chain_id, mode, loop, start_height, max_blocks)
        self.clock = clock
        self.block_time = float(block_time)
        self.resource = RPCResource(self.chain)
        #: The WebSocket side (same port): calls, and C{newHeads} announced as heads come.
        self.heads = HeadsFactory(self.resource, self.chain)
        self._prefill = int(prefill)
        self._production = None

    @classmethod
    def recording(cls, clock, source, block_time=2.0, loop=False, **kwargs):
        """One recording with its original heights, hashes and values."""
        return cls(clock, source, block_time, mode="recording", loop=loop, **kwargs)

    @property
    def chain_id(self):
        return self.chain.chain_id

    @property
    def head(self):
        return self.chain.head

    @property
    def reorgs(self):
        return self.chain.reorgs

    @property
    def finished(self):
        """All recordings replayed and no C{loop}: no more heads will come."""
        return self.chain.finished

    @property
    def running(self):
        return self._production is not None and self._production.running

    def start(self):
        """Produce a head every C{block_time}; the first start makes the first head (and C{prefill}) at once."""
        if self.running:
            return
        if self.chain.head is None:
            now = self.clock.seconds()
            for i in range(self._prefill):
                self._advance(now - (self._prefill - i) * self.block_time)
            self._advance(now)
            self.log.info("replay node started: {mode}, chain id {chain_id}, {names}, a block every "
                          "{block_time}s, head {height}", mode=self.chain.mode, chain_id=self.chain_id,
                          names=[r.name for r in self.chain.recordings], block_time=self.block_time,
                          height=self.head.height if self.head else None)
        if self.chain.finished:
            return
        self._production = task.LoopingCall(self._tick)
        self._production.clock = self.clock
        self._production.start(self.block_time, now=False).addErrback(
            lambda f: self.log.failure("block production stopped", f))

    def stop(self):
        if self.running:
            self._production.stop()
        self._production = None

    def mine(self):
        """Apply the next head event now, whatever the clock says; C{None} once finished."""
        return self._advance(self.clock.seconds())

    def reorg(self, depth, length=None):
        """
        Replace the last C{depth} blocks by C{length} (default C{depth}) new
        ones from the same height up (endless mode only): shorter, the head goes down.
        """
        head = self.chain.reorg(depth, self.clock.seconds(), length)
        self._logReorg()
        self.heads.announce(head)
        return head

    def httpFactory(self, reactor):
        """The HTTP server factory to listen with: JSON-RPC over HTTP, and over WebSocket on upgrade."""
        return QuietSite(NodeResource(self.resource, self.heads), reactor=reactor)

    def asService(self, reactor, description="tcp:0:interface=127.0.0.1", onBound=None):
        """
        The node as a service: it produces blocks while running and listens on
        C{description}; its C{url} is known once C{privilegedStartService} has
        run, and is then given to C{onBound(url)} if that is given.
        """
        return ReplayService(self, reactor, description, onBound)

    def _tick(self):
        try:
            if self.mine() is None:
                self.log.info("replay node reached the end of its recordings at {height}",
                              height=self.head.height if self.head else None)
                self.stop()
        except Exception:
            self.log.failure("replay node failed to produce a block")

    def _advance(self, now):
        reorgs = len(self.chain.reorgs)
        head = self.chain.advance(now)
        if len(self.chain.reorgs) > reorgs:
            self._logReorg()
        elif head is not None:
            self.log.debug("replay head {height} {hash}", height=head.height, hash=head.hash)
        self.heads.announce(head)
        return head

    def _logReorg(self):
        r = self.chain.reorgs[-1]
        self.log.info("replay reorg, depth {depth} at {height}: ancestor {ancestor}, removed {removed}",
                      depth=r.depth, height=r.new_head.height, ancestor=r.ancestor, removed=list(r.removed),
                      added=list(r.added), cause=r.cause)


class ReplayService(service.MultiService):
    """
    A replay node producing and listening.  Stopping closes the port first,
    then production (C{MultiService} stops children in reverse).

    @ivar url: C{http://host:port/} once the port is bound, else C{None}
        (C{ws://host:port/} is its WebSocket JSON-RPC).
    """

    log = Logger()

    def __init__(self, node, reactor, description, onBound=None):
        super().__init__()
        self.node = node
        self.description = description
        self.url = None
        self._onBound = onBound
        _Production(node).setServiceParent(self)
        listener = strports.service(description, node.httpFactory(reactor), reactor=reactor)
        listener.endpoint = _Bound(listener.endpoint, self._bound)
        listener.setServiceParent(self)

    def stopService(self):
        """Stop listening and producing, then drop the WebSocket connections left."""
        d = super().stopService()
        d.addBoth(lambda result: (self.node.heads.dropAll(), result)[1])
        return d

    def _bound(self, port):
        address = port.getHost()
        host = f"[{address.host}]" if ":" in address.host else address.host
        self.url = f"http://{host}:{address.port}/"
        self.log.info("replay node listening on {description}: {url}", description=self.description, url=self.url)
        if self._onBound is not None:
            self._onBound(self.url)


class _Production(service.Service):
    def __init__(self, node):
        self.node = node

    def startService(self):
        super().startService()
        self.node.start()

    def stopService(self):
        self.node.stop()
        return super().stopService()


@implementer(IStreamServerEndpoint)
class _Bound:
    """An endpoint that reports the port it bound, so the service can name its URL."""

    def __init__(self, endpoint, bound):
        self._endpoint = endpoint
        self._bound = bound

    def listen(self, factory):
        def report(port):
            self._bound(port)
            return port

        return self._endpoint.listen(factory).addCallback(report)


__all__ = ["ReplayNode", "ReplayService"]
