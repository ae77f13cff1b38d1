"""
Real WebSocket clients for the tests: Autobahn's (in the reactor) and the
independent C{websockets} library (its blocking client, run in a thread).
"""

import json

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredQueue


class RecordingClient(WebSocketClientProtocol):
    """Keeps every message it receives, decoded, in order."""

    answer_pings = True

    def onConnect(self, response):
        self.response = response

    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        message = json.loads(payload)
        self.received.append(message)
        self.inbox.put(message)

    def onPing(self, payload):
        self.pings += 1
        self.last_ping = payload
        if self.answer_pings:
            super().onPing(payload)

    def onClose(self, wasClean, code, reason):
        self.close_code = self.remoteCloseCode
        self.close_reason = self.remoteCloseReason
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionRefusedByServer(reason))
        self.closed.callback((self.remoteCloseCode, self.remoteCloseReason))

    def send_json(self, message):
        self.sendMessage(json.dumps(message).encode("utf-8"))

    async def next(self, timeout=5.0):
        """The next message, failing the test if none comes in C{timeout} seconds."""
        from twisted.internet import reactor

        d = self.inbox.get()
        d.addTimeout(timeout, reactor)
        return await d

    async def request(self, message, timeout=5.0):
        self.send_json(message)
        return await self.next(timeout)

    async def close(self):
        if self.state == self.STATE_OPEN:
            self.sendClose(1000)
        await self.closed


class ConnectionRefusedByServer(Exception):
    pass


async def connect(url, headers=None, origin=None, answer_pings=True):
    """Open an Autobahn WebSocket client; returns the protocol once open."""
    factory = WebSocketClientFactory(url, headers=headers or {}, origin=origin)
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=0, closeHandshakeTimeout=0)

    def build():
        p = RecordingClient()
        p.factory = factory
        p.received = []
        p.inbox = DeferredQueue()
        p.pings = 0
        p.closed = Deferred()
        p.answer_pings = answer_pings
        return p

    factory.protocol = build
    factory.opened = Deferred()
    connectWS(factory)
    return await factory.opened


async def connect_many(url, n):
    return list(await defer.gatherResults([defer.ensureDeferred(connect(url)) for _ in range(n)]))


async def drain(client, timeout=10.0):
    """
    Everything the server sent this client so far: a ping action's pong
    comes after every message written before it.
    """
    got = []
    client.send_json({"action": "ping"})
    while True:
        message = await client.next(timeout)
        if message == {"type": "pong"}:
            return got
        got.append(message)


async def in_thread(f, *args, **kwargs):
    """Run a blocking client (the C{websockets} library) off the reactor thread."""
    from twisted.internet.threads import deferToThread

    return await deferToThread(f, *args, **kwargs)


def handshake_status(url, headers=None, origin=None):
    """The HTTP status a C{websockets} client gets for its upgrade: 101, or the refusal."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect as ws_connect

    try:
        with ws_connect(url, additional_headers=headers, origin=origin, open_timeout=5,
                        compression=None) as ws:
            ws.close()
            return 101
    except InvalidStatus as e:
        return e.response.status_code
