"""
The replay node as tests serve it: on a real loopback port, behind faults a
test can inject, with a way to wait until its connections are gone.  This
lives with the tests because only they need it: the node serves blocks, the
test decides how the wire misbehaves.
"""

import json

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.web import resource, server

from explorerd.replay.resource import QuietSite
from tests.serving import TrackingFactory

FAULT_KINDS = ("http-500", "rpc-error", "disconnect", "delay")


class Faults(resource.Resource):
    """
    The node's resource, except for the next requests a test spoils:
    C{http-500}, C{rpc-error} (-32000 for every call), C{disconnect} (the
    TCP connection aborted) or C{delay} (the answer as of arrival, written
    C{delay} seconds later on C{clock}).
    """

    isLeaf = True

    def __init__(self, inner, clock):
        super().__init__()
        self._inner = inner
        self._clock = clock
        self._faults = []
        self._parked = {}  # DelayedCall -> (request, answer)
        self._waiters = []

    def inject(self, kind, count=1, delay=0.0):
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}")
        self._faults.extend([(kind, float(delay))] * count)

    def nextRequest(self):
        """
        Fires with the HTTP method once the next request is handled (or, under
        C{delay}, parked).  It fires inside the handling: give the reactor a
        turn before counting on the answer having been written.
        """
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    @property
    def delayedRequests(self):
        return len(self._parked)

    def flush(self):
        """Write every parked answer now."""
        for call, (request, answer) in list(self._parked.items()):
            if call.active():
                call.cancel()
            del self._parked[call]
            _write(request, answer)

    def render(self, request):
        try:
            return self._render(request)
        finally:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(request.method)

    def _render(self, request):
        kind, delay = self._faults.pop(0) if self._faults else (None, 0.0)
        if kind == "http-500":
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain")
            return b"injected fault\n"
        if kind == "disconnect":
            request.channel.transport.abortConnection()
            return server.NOT_DONE_YET
        if kind == "rpc-error":
            request.setHeader(b"content-type", b"application/json")
            return _failEveryCall(request.content.read())
        answer = self._inner.render(request)
        if kind != "delay":
            return answer
        call = self._clock.callLater(delay, self._release, request)
        self._parked[call] = (request, answer)

        def gone(_):
            if call.active():
                call.cancel()
            self._parked.pop(call, None)

        request.notifyFinish().addErrback(gone)
        return server.NOT_DONE_YET

    def _release(self, request):
        for call, (parked, answer) in list(self._parked.items()):
            if parked is request:
                del self._parked[call]
                _write(parked, answer)


def _failEveryCall(body):
    try:
        payload = json.loads(body)
    except ValueError:
        payload = {}
    calls = payload if isinstance(payload, list) else [payload]
    errors = [{"jsonrpc": "2.0", "id": c.get("id"), "error": {"code": -32000, "message": "injected fault"}}
              for c in calls if isinstance(c, dict) and "id" in c]
    return json.dumps(errors if isinstance(payload, list) else errors[0] if errors else []).encode()


def _write(request, answer):
    if request.finished or request._disconnected:
        return
    request.write(answer)
    request.finish()


class ServedNode:
    """
    A replay node listening on a loopback port behind L{Faults}; C{url} is
    its address once L{listen} has fired.  Faults are delayed on C{clock}
    (the node's clock by default).
    """

    def __init__(self, node, clock=None):
        self.node = node
        self.faults = Faults(node.resource, node.clock if clock is None else clock)
        self.url = None
        self._port = None
        self._factory = None

    async def listen(self, reactor, description="tcp:0:interface=127.0.0.1"):
        self._factory = TrackingFactory(QuietSite(self.faults, reactor=reactor))
        self._port = await serverFromString(reactor, description).listen(self._factory)
        self.url = f"http://127.0.0.1:{self._port.getHost().port}/"
        return self

    def whenIdle(self):
        return self._factory.whenIdle() if self._factory is not None else defer.succeed(None)

    async def close(self, reactor):
        """
        Go away as a node does: answer what is parked, close the port, drop
        the connections clients kept open.
        """
        self.faults.flush()
        if self._port is not None:
            await self._port.stopListening()
        for protocol in list(self._factory.protocols if self._factory is not None else ()):
            protocol.transport.abortConnection()
        await self.whenIdle().addTimeout(5, reactor)


def served_block(node, height, full=True):
    """The canonical block at C{height} exactly as the node serves it, or C{None}."""
    block_hash = node.chain.hashAt(height)
    return json.loads(node.chain.blockJSON(block_hash, full)) if block_hash else None
