"""
WAMP clients for the tests: AutobahnJS in node (tests/wamp/client.js), an
autobahn-python session, and a raw WebSocket client that speaks WAMP as
plain JSON arrays (for protocol errors).

Never import twisted.internet.reactor at module level here.
"""

import json
import os
import shutil

from autobahn.twisted.wamp import ApplicationSession
from autobahn.twisted.websocket import (
    WampWebSocketClientFactory,
    WebSocketClientFactory,
    connectWS,
)
from autobahn.wamp.types import ComponentConfig
from twisted.internet import defer, protocol
from twisted.internet.defer import Deferred, DeferredQueue

from tests.clients import RecordingClient

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_JS = os.path.join(HERE, "client.js")
NODE_MODULES = os.path.join(os.path.dirname(HERE), "node", "node_modules")


def _reactor():
    from twisted.internet import reactor

    return reactor


async def within(d, timeout, what):
    """Await C{d}, failing the test (not hanging it) after C{timeout} seconds."""
    reactor = _reactor()
    d.addTimeout(timeout, reactor)
    try:
        return await d
    except defer.TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


# ---------------------------------------------------------------------------
# AutobahnJS in node.

def node_binary():
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        raise RuntimeError("node is not installed; the README's tox run installs tests/node")
    if not os.path.isdir(os.path.join(NODE_MODULES, "autobahn")):
        raise RuntimeError("npm package autobahn missing: npm ci --prefix tests/node")
    return node


class NodeClient(protocol.ProcessProtocol):
    """
    One AutobahnJS client process.  Lines it prints are parsed into
    C{events} (topic events), C{replies} by command id, and C{lines}.
    """

    def __init__(self):
        self.lines = []
        self.events = []
        self.replies = {}
        self.stderr = []
        self._buffer = b""
        self._waiters = []
        self._ids = 0
        self.ended = Deferred()
        self.exit = None

    # ProcessProtocol

    def outReceived(self, data):
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n")
        for raw in complete:
            if not raw.strip():
                continue
            line = json.loads(raw)
            self.lines.append(line)
            if line["type"] == "event":
                self.events.append(line)
            elif line["type"] == "reply":
                self.replies[line["id"]] = line
            self._wake()

    def errReceived(self, data):
        self.stderr.append(data.decode("utf-8", "replace"))

    def processEnded(self, reason):
        self.exit = reason.value
        self.ended.callback(None)
        self._wake()

    def _wake(self):
        waiters, self._waiters = self._waiters, []
        for predicate, d in waiters:
            if predicate() or self.exit is not None:
                d.callback(None)
            else:
                self._waiters.append((predicate, d))

    async def until(self, predicate, timeout=10.0, what="node client"):
        if not predicate():
            if self.exit is not None:
                raise AssertionError(f"node client exited before {what}: {self.lines} {''.join(self.stderr)}")
            d = Deferred()
            self._waiters.append((predicate, d))
            await within(d, timeout, what)
            if not predicate():
                raise AssertionError(f"node client exited before {what}: {self.lines} {''.join(self.stderr)}")

    async def joined(self, timeout=10.0):
        await self.until(lambda: any(l["type"] in ("joined", "closed") for l in self.lines), timeout, "joined")
        line = next(l for l in self.lines if l["type"] in ("joined", "closed"))
        assert line["type"] == "joined", f"did not join: {line} {''.join(self.stderr)}"
        return line

    async def command(self, op, timeout=10.0, **fields):
        self._ids += 1
        cid = self._ids
        self.transport.write(json.dumps({"id": cid, "op": op, **fields}).encode() + b"\n")
        await self.until(lambda: cid in self.replies, timeout, f"the reply to {op}")
        return self.replies[cid]

    async def stop(self):
        if self.exit is None:
            self.transport.closeStdin()
            try:
                await within(self.ended, 5, "node to exit")
            except AssertionError:
                self.transport.signalProcess("KILL")
                await self.ended


async def node_client(url, realm="explorer", serializer="json"):
    proto = NodeClient()
    node = node_binary()
    _reactor().spawnProcess(proto, node, [node, CLIENT_JS, url, realm, serializer], env=dict(os.environ))
    return proto


# ---------------------------------------------------------------------------
# autobahn-python.

class RecordingSession(ApplicationSession):
    """Joins, then keeps what it receives."""

    def onJoin(self, details):
        self.details = details
        self.factory_.joined.callback(self)

    def onLeave(self, details):
        self.left = details
        if not self.factory_.joined.called:
            self.factory_.joined.errback(RuntimeError(f"session left: {details.reason} {details.message}"))
        self.disconnect()

    def onDisconnect(self):
        if not self.factory_.joined.called:
            self.factory_.joined.errback(RuntimeError("disconnected before joining"))
        if not self.factory_.gone.called:
            self.factory_.gone.callback(self)


async def python_client(url, realm="explorer", serializers=None):
    """An autobahn-python session joined to C{realm}; C{session.factory_.gone} fires when it is gone."""
    holder = {}

    def make():
        session = RecordingSession(ComponentConfig(realm=realm))
        session.factory_ = factory
        session.left = None
        holder["session"] = session
        return session

    factory = WampWebSocketClientFactory(make, url=url, serializers=serializers)
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=0, closeHandshakeTimeout=0)
    factory.joined = Deferred()
    factory.gone = Deferred()
    connectWS(factory)
    return await within(factory.joined, 10, "the autobahn-python session to join")


async def python_leave(session):
    if session.is_attached():
        session.leave()
    await within(session.factory_.gone, 5, "the session to go")
    # the protocol closes the TCP connection itself after the close handshake
    proto = session._transport
    if proto is not None and proto.transport is not None:
        proto.transport.loseConnection()


# ---------------------------------------------------------------------------
# Raw WAMP over a plain WebSocket client.

async def raw_wamp(url, subprotocol="wamp.2.json"):
    """A plain WebSocket client that negotiated C{subprotocol}; JSON messages are decoded."""
    factory = WebSocketClientFactory(url, protocols=[subprotocol] if subprotocol else None)
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=0, closeHandshakeTimeout=0)

    def build():
        p = RecordingClient()
        p.factory = factory
        p.received = []
        p.inbox = DeferredQueue()
        p.pings = 0
        p.closed = Deferred()
        p.answer_pings = True
        return p

    factory.protocol = build
    factory.opened = Deferred()
    connectWS(factory)
    return await within(factory.opened, 10, "the raw WAMP client to connect")


async def raw_join(url, realm="explorer"):
    client = await raw_wamp(url)
    client.send_json([1, realm, {"roles": {"subscriber": {}, "caller": {}}}])
    welcome = await client.next()
    assert welcome[0] == 2, welcome
    return client, welcome
