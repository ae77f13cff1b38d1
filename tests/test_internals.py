"""
The Twisted and Autobahn internals explorerd relies on, each checked for
what explorerd assumes of it, so that an upgrade that changes one fails
here, by name, instead of somewhere deep in a fan-out.

setup.py keeps both libraries below their next major version; raise the
bound only with these tests passing.  Each docstring says which explorerd
code leans on the hook.

Twisted:
  - C{tcp.Port.transport}, the class a port builds connections with
    (daemon.Listener sets it to transport.SizedServer), TLS included;
  - C{FileDescriptor.dataBuffer}, C{offset} (what is still to send: from
    C{offset} on), C{_tempDataLen}, C{bufferSize}, C{_maybePauseProducer},
    C{startWriting}, C{producer}, C{connected}, C{disconnecting},
    C{_writeDisconnected}, and
    C{tcp.Connection.socket} and C{_dataReceived} (transport.SizedServer's
    write-through and reads; the hub's producers);
  - C{HTTPChannel._path}, C{allHeadersReceived}, C{allContentReceived} and
    C{site} (web.Channel's admission);
  - C{HTTPChannel.requestDone} as what parses the next pipelined request,
    the pipelined data buffered unparsed until then (reading paused past
    16 KiB, but not while the transport is full), C{requests}, and the
    channel as its transport's producer (web.Channel's turns).
Autobahn:
  - C{PreparedMessage(...).payloadHybi} (events.frame, wamp.frame);
  - C{WebSocketProtocol.CONFIG_ATTRS} and how connections copy it
    (connection.configured_protocol);
  - C{WebSocketProtocol.data}, the receive buffer (connection.HubConnection);
  - C{STATE_OPEN}/C{STATE_CLOSING}/C{STATE_CLOSED}, C{sendCloseFrame},
    C{onCloseFrame}, C{dropConnection}, C{onPong} for pongs to pings Autobahn
    did not send (hub, connection);
  - C{WampWebSocketServerProtocol._serializer}, a serializer's
    C{_serializer}, C{SERIALIZER_ID} and C{BINARY}, C{Message.serialize}'s
    cache and batched framing (wamp);
  - C{ApplicationSession._transport} (wampclient).
"""

import socket
import struct

import pytest
import pytest_twisted
from autobahn.twisted.wamp import ApplicationSession
from autobahn.twisted.websocket import (
    WampWebSocketServerFactory,
    WampWebSocketServerProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.wamp import message, serializer
from autobahn.wamp.types import ComponentConfig
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import main, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web import http, resource, server, static
from zope.interface import implementer

from tests.conftest import eventually


def _reactor():
    from twisted.internet import reactor

    return reactor


# ---------------------------------------------------------------------------
# Twisted: TCP connections.

@implementer(IHalfCloseableProtocol)
class Peer(Protocol):
    """Either end of a loopback connection; keeps what it reads, stays open after the other's FIN."""

    def __init__(self):
        self.received = b""
        self.lost = Deferred()
        self.made = Deferred()
        self.ended = False

    def connectionMade(self):
        self.made.callback(self)

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        self.ended = True

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.lost.callback(None)


class Pair:
    def __init__(self, port, server, client):
        self.port, self.server, self.client = port, server, client


@pytest_twisted.async_yield_fixture
async def listen(no_leaks):
    """C{await listen(description, transport=None)} → a connected L{Pair}; all of it closed afterwards."""
    reactor = _reactor()
    pairs = []

    async def connect(description="tcp:0:interface=127.0.0.1", transport=None):
        servers = []

        def build():
            peer = Peer()
            servers.append(peer)
            return peer

        port = await serverFromString(reactor, description).listen(Factory.forProtocol(build))
        if transport is not None:
            port.transport = transport
        client = await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(Peer))
        await eventually(lambda: servers, what="the server side of the connection")
        pair = Pair(port, servers[0], client)
        pairs.append(pair)
        await pair.server.made
        return pair

    yield connect
    for pair in pairs:
        pair.client.transport.abortConnection()
        await pair.client.lost
        await pair.server.lost
        await pair.port.stopListening()


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_a_port_makes_its_connections_with_its_transport_class(listen, tmp_path):
    """
    daemon.Listener replaces C{port.transport} with transport.sized_server(...)
    so that every accepted connection is a SizedServer; under TLS the TLS
    layer sits on that class and the protocol's transport is a
    C{TLSMemoryBIOProtocol} (connection.HubConnection._overBudget tells TLS
    from plain TCP by that class).
    """
    from tests.tls import self_signed_pem

    class Sized(tcp.Server):
        pass

    plain = await listen()
    assert isinstance(plain.port, tcp.Port) and plain.port.transport is tcp.Server
    pair = await listen(transport=Sized)
    assert type(pair.server.transport) is Sized

    pem = tmp_path / "server.pem"
    pem.write_bytes(self_signed_pem())
    tls = await listen(f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}", transport=Sized)
    assert isinstance(tls.port, tcp.Port)
    assert isinstance(tls.server.transport, TLSMemoryBIOProtocol)
    assert type(tls.server.transport.transport) is Sized


@implementer(IPushProducer)
class ProducerRecord:
    def __init__(self):
        self.events = []

    def pauseProducing(self):
        self.events.append("pause")

    def resumeProducing(self):
        self.events.append("resume")

    def stopProducing(self):
        self.events.append("stop")


@pytest_twisted.ensureDeferred
async def test_write_buffers_in_dataBuffer_and_tempDataLen_and_pauses_past_bufferSize(listen):
    """
    transport.SizedServer.write sends at once only when C{offset ==
    len(dataBuffer)} and C{_tempDataLen} is 0, which must mean nothing of
    ours is waiting; Twisted's own C{write} only buffers (into
    C{_tempDataLen}) until the socket is writable, pauses a streaming
    producer once more than C{bufferSize} bytes wait, and resumes it when
    they are sent (the hub's clients are such producers: hub.Hub.attach,
    found again through C{transport.producer}).
    """
    pair = await listen()
    transport = pair.server.transport
    assert type(transport) is tcp.Server
    assert transport.offset == len(transport.dataBuffer) == 0 and transport._tempDataLen == 0
    assert transport.bufferSize == 65536  # also Twisted's read size: SizedServer sets the two apart

    producer = ProducerRecord()
    transport.bufferSize = 1024
    transport.registerProducer(producer, True)
    assert transport.producer is producer
    transport.write(b"x" * 1000)
    assert transport._tempDataLen == 1000 and producer.events == []  # buffered, not sent
    transport.write(b"y" * 1000)
    assert transport._tempDataLen == 2000 and producer.events == ["pause"]

    await eventually(lambda: len(pair.client.received) == 2000, what="the client to read it all")
    assert pair.client.received == b"x" * 1000 + b"y" * 1000
    await eventually(lambda: producer.events == ["pause", "resume"], what="the producer resumed")
    assert transport.offset == len(transport.dataBuffer) and transport._tempDataLen == 0
    transport.unregisterProducer()
    assert transport.producer is None


@pytest_twisted.ensureDeferred
async def test_what_waits_is_dataBuffer_from_offset_on(listen):
    """
    When the kernel takes part of a payload, transport.SizedServer.write
    leaves the payload itself in C{dataBuffer} with C{offset} at what was
    sent (no copy of the rest per paused client), then calls
    C{_maybePauseProducer} and C{startWriting}: Twisted must send from
    C{offset} on once the socket is writable, count C{len(dataBuffer)}
    against C{bufferSize}, and resume the producer when all is out.
    """
    pair = await listen()
    transport = pair.server.transport
    producer = ProducerRecord()
    transport.bufferSize = 1024
    transport.registerProducer(producer, True)
    payload = bytes(range(256)) * 64
    transport.dataBuffer, transport.offset = payload, 5000
    transport._maybePauseProducer()
    assert producer.events == ["pause"]
    transport.startWriting()
    await eventually(lambda: len(pair.client.received) == len(payload) - 5000, what="the rest of the payload")
    assert pair.client.received == payload[5000:]
    await eventually(lambda: producer.events == ["pause", "resume"], what="the producer resumed")
    assert transport.offset == len(transport.dataBuffer) and transport._tempDataLen == 0
    transport.unregisterProducer()


@pytest_twisted.ensureDeferred
async def test_the_flags_and_hooks_of_a_tcp_connection(listen):
    """
    transport.SizedServer writes straight to C{self.socket} only while
    C{connected} and neither C{disconnecting} nor C{_writeDisconnected}
    (after a half-close, which the hub uses on flooders, Twisted drops
    writes); its C{doRead} reads C{self.socket} itself and hands the bytes
    to C{_dataReceived}, whose answer (C{CONNECTION_DONE} for end of file)
    it returns to the reactor.
    """
    pair = await listen()
    transport = pair.server.transport
    assert isinstance(transport.socket, socket.socket)
    assert transport.connected and not transport.disconnecting and not transport._writeDisconnected

    assert transport._dataReceived(b"hello") is None
    assert pair.server.received == b"hello"
    assert transport._dataReceived(b"") is main.CONNECTION_DONE
    assert main.CONNECTION_LOST is not None

    transport.loseWriteConnection()
    await eventually(lambda: pair.client.ended, what="the client to see our FIN")
    assert transport._writeDisconnected
    assert transport.connected and not transport.disconnecting
    transport.write(b"too late")
    assert transport._tempDataLen == 0 and transport.offset == len(transport.dataBuffer)


# ---------------------------------------------------------------------------
# Twisted: HTTP.

def test_http_channel_path_and_request_hooks():
    """
    web.Channel reads C{self._path} (the request target, query included) in
    C{allContentReceived} to refuse an early WebSocket upgrade, counts a
    request as arrived in C{allHeadersReceived}, and reaches its site's
    admission through C{self.site}.
    """
    seen = []

    class Recording(http.HTTPChannel):
        def allHeadersReceived(self):
            seen.append(("headers", self._path))
            super().allHeadersReceived()

        def allContentReceived(self):
            seen.append(("content", self._path))
            super().allContentReceived()

    clock = Clock()
    site = server.Site(resource.Resource(), reactor=clock)
    site.protocol = Recording
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert channel.site is site
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"POST /v1/stream?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\na")
    assert seen == [("headers", b"/v1/stream?x=1")]
    channel.dataReceived(b"bc")
    assert seen == [("headers", b"/v1/stream?x=1"), ("content", b"/v1/stream?x=1")]
    assert transport.value().startswith(b"HTTP/1.1 404 ")
    channel.connectionLost(main.CONNECTION_DONE)


def test_http_channel_parses_the_next_pipelined_request_in_requestDone():
    """
    web.Channel gives each pipelined request a reactor turn of its own by
    calling C{HTTPChannel.requestDone} a turn later than twisted.web does,
    and not while the client leaves its answers unread.  It relies on
    requestDone being what parses the next pipelined request, in that same
    call; on pipelined data being kept unparsed until then, with reading
    paused past 16 KiB of it (the bound on what a connection holds); on
    C{requests} holding the request until then; and on the channel being
    its transport's streaming producer, paused when the client does not
    read.  If twisted.web ever parses pipelined requests some other way,
    the flood of tests/test_sidedoors.py holds up blocks again.
    """
    done = []

    class Holding(http.HTTPChannel):
        def requestDone(self, request):
            done.append(request)

    clock = Clock()
    root = resource.Resource()
    root.putChild(b"a", static.Data(b"answer", "text/plain"))
    site = server.Site(root, reactor=clock)
    site.protocol = Holding
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    assert transport.producer is channel and transport.streaming
    get = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
    channel.dataReceived(get * 3)
    assert transport.value().count(b"HTTP/1.1 200") == 1 and len(done) == 1
    assert channel.requests == done
    assert transport.producerState == "producing"
    channel.dataReceived(get * 600)  # past 16 KiB waiting: no more is read
    assert transport.producerState == "paused"
    assert transport.value().count(b"HTTP/1.1 200") == 1
    http.HTTPChannel.requestDone(channel, done[0])
    assert transport.value().count(b"HTTP/1.1 200") == 2 and len(done) == 2  # parsed and answered in that call
    assert channel.requests == done[1:]
    channel.connectionLost(main.CONNECTION_DONE)


def test_http_channel_reads_on_while_a_request_is_handled_and_its_answers_are_unread():
    """
    While a request is handled and the transport is full (the client does
    not read), twisted.web neither pauses reading nor runs the idle timer:
    whatever the client sends is read and kept, without end.  web.Channel
    pauses its transport then, and starts the idle timer.  If this fails,
    twisted.web does one or both itself: web.Channel's may go.
    """
    from twisted.internet import interfaces

    done = []

    class Holding(http.HTTPChannel):
        def requestDone(self, request):
            done.append(request)

    clock = Clock()
    root = resource.Resource()
    root.putChild(b"a", static.Data(b"answer", "text/plain"))
    site = server.Site(root, reactor=clock, timeout=5)
    site.protocol = Holding
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    assert interfaces.IPushProducer(transport, None) is transport
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(done) == 1  # answered; twisted.web's next request would come in requestDone
    channel.pauseProducing()
    channel.dataReceived(b"x" * 10_000)
    assert transport.producerState == "producing"
    clock.advance(60)
    assert not transport.disconnecting
    channel.connectionLost(main.CONNECTION_DONE)


# ---------------------------------------------------------------------------
# Autobahn: framing and the WebSocket protocol.

@pytest.mark.parametrize("size, header", [(5, b"\x81\x05"), (126, b"\x81\x7e\x00\x7e"),
                                          (70000, b"\x81\x7f" + struct.pack("!Q", 70000))])
def test_a_prepared_message_payloadHybi_is_the_whole_frame(size, header):
    """
    events.frame and wamp.frame take C{PreparedMessage(payload, isBinary,
    False, True).payloadHybi} as the bytes of one unmasked, uncompressed
    WebSocket message, and the hub writes them to every client as they are.
    """
    payload = b"p" * size
    assert PreparedMessage(payload, False, False, True).payloadHybi == header + payload
    binary = PreparedMessage(payload, True, False, True).payloadHybi
    assert binary == bytes([0x82]) + header[1:] + payload


HANDSHAKE = (b"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


def client_frame(opcode, payload, mask=b"\x0f\x1e\x2d\x3c"):
    """A masked frame, as a client sends it."""
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", n)
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_factory(protocol, factory_class=WebSocketServerFactory, **options):
    factory = factory_class("ws://127.0.0.1:8080/v1/stream")
    factory.protocol = protocol
    factory.setProtocolOptions(failByDrop=False, autoPingInterval=0, openHandshakeTimeout=0,
                               closeHandshakeTimeout=0, **options)
    return factory


class Transport(StringTransport):
    """Like a TCP transport: records an abort, and unregistering no producer is fine."""

    aborted = False

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()

    def unregisterProducer(self):
        self.producer = None


def open_connection(factory, extra_headers=b""):
    """A server protocol past its opening handshake, on a StringTransport."""
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(transport)
    proto.dataReceived(HANDSHAKE + extra_headers + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 101 "), transport.value()
    assert proto.state == WebSocketProtocol.STATE_OPEN
    transport.clear()
    return proto, transport


class Recording(WebSocketServerProtocol):
    def __init__(self):
        super().__init__()
        self.messages, self.pongs, self.close_frames, self.closes_sent = [], [], [], []

    def onMessage(self, payload, isBinary):
        self.messages.append(payload)
        if payload == b"stop":
            self.data = b""

    def onPong(self, payload):
        self.pongs.append(payload)

    def onCloseFrame(self, code, reasonRaw):
        self.close_frames.append((code, reasonRaw))
        return super().onCloseFrame(code, reasonRaw)

    def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False):
        self.closes_sent.append((code, isReply))
        return super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)


def test_config_attrs_are_what_a_connection_copies_from_its_factory(txaio_clock):
    """
    connection.configured_protocol reads every name in the protocol's
    C{CONFIG_ATTRS} from the factory, puts the values on a subclass, and
    empties C{CONFIG_ATTRS} there, so that a connection copies (and
    pretty-prints) nothing and reads its options from the class.
    """
    assert WebSocketServerProtocol.CONFIG_ATTRS
    for factory in (server_factory(WebSocketServerProtocol),
                    WampWebSocketServerFactory(None, "ws://127.0.0.1:8080/v1/wamp", serializers=wamp_serializers())):
        for name in WebSocketServerProtocol.CONFIG_ATTRS:
            getattr(factory, name)

    factory = server_factory(Recording, maxMessagePayloadSize=1 << 20)
    proto, _ = open_connection(factory)
    copied = [name for name in Recording.CONFIG_ATTRS if name in vars(proto)]
    assert "maxMessagePayloadSize" in copied and proto.maxMessagePayloadSize == 1 << 20

    options = {name: getattr(factory, name) for name in Recording.CONFIG_ATTRS}
    options.update(maxMessagePayloadSize=10, maxFramePayloadSize=10, CONFIG_ATTRS=())
    Configured = type("Configured", (Recording,), options)
    factory.protocol = Configured
    proto, transport = open_connection(factory)
    assert not [name for name in Recording.CONFIG_ATTRS if name in vars(proto)]
    proto.dataReceived(client_frame(1, b"x" * 20))
    assert proto.messages == [] and proto.closes_sent == [(1009, False)]
    assert transport.value()[:4] == b"\x88" + bytes([len(transport.value()) - 2]) + b"\x03\xf1"


def test_clearing_data_drops_the_rest_of_a_read(txaio_clock):
    """
    connection.HubConnection._overBudget sets C{self.data = b""} while
    handling a message: the frames that came in the same read, still in
    Autobahn's receive buffer, are then never parsed.
    """
    proto, _ = open_connection(server_factory(Recording))
    proto.dataReceived(client_frame(1, b"one") + client_frame(1, b"stop") + client_frame(1, b"never"))
    assert proto.messages == [b"one", b"stop"]
    proto.dataReceived(client_frame(1, b"later"))
    assert proto.messages == [b"one", b"stop", b"later"]


def test_pongs_to_pings_autobahn_did_not_send_reach_onPong(txaio_clock):
    """
    The hub writes its own ping frames (the same bytes to every client)
    past Autobahn; connection.HubConnection.onPong must still get the
    payload of each pong that answers one.
    """
    proto, _ = open_connection(server_factory(Recording))
    proto.dataReceived(client_frame(10, struct.pack("!Q", 7)))
    assert proto.pongs == [struct.pack("!Q", 7)]


def test_states_close_frames_and_drop(txaio_clock):
    """
    The hub closes with 1001 (shutdown) and 1008 (slow, over budget) through
    C{sendCloseFrame(code=..., reasonUtf8=..., isReply=False)}, as
    C{sendClose} refuses them; it checks C{state} against C{STATE_OPEN}
    before and C{STATE_CLOSED} after, and aborts a connection that does not
    finish closing with C{dropConnection(abort=True)}.  connection.HubConnection
    overrides C{sendCloseFrame} and C{onCloseFrame} to leave the hub first.
    """
    with pytest.raises(Exception, match="invalid close code 1001"):
        open_connection(server_factory(Recording))[0].sendClose(code=1001, reason="going away")

    proto, transport = open_connection(server_factory(Recording))
    proto.sendCloseFrame(code=1001, reasonUtf8=b"server shutting down", isReply=False)
    assert transport.value() == b"\x88\x16\x03\xe9server shutting down"
    assert proto.state == WebSocketProtocol.STATE_CLOSING != WebSocketProtocol.STATE_CLOSED
    proto.dropConnection(abort=True)
    assert transport.aborted and proto.state == WebSocketProtocol.STATE_CLOSED

    proto, transport = open_connection(server_factory(Recording))
    proto.dataReceived(client_frame(8, b"\x03\xe8bye"))
    assert proto.close_frames == [(1000, b"bye")]
    assert proto.closes_sent == [(1000, True)]


# ---------------------------------------------------------------------------
# Autobahn: WAMP.

def wamp_serializers():
    names = ("JsonSerializer", "MsgPackSerializer", "CBORSerializer")
    return [getattr(serializer, name)(batched=batched) for batched in (False, True) for name in names]


def test_the_wamp_protocol_picks_its_serializer_in_onConnect(txaio_clock):
    """
    wamp.WampProtocol calls Autobahn's C{onConnect} to choose the first
    subprotocol offered that we speak (or refuse with 400), then reads
    C{self._serializer}: its C{SERIALIZER_ID} and the object serializer
    inside it, C{_serializer} with C{BINARY}.
    """
    serializers = wamp_serializers()
    factory = WampWebSocketServerFactory(None, "ws://127.0.0.1:8080/v1/wamp", serializers=serializers)

    def offer(*protocols):
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(proto, WampWebSocketServerProtocol)
        request = ConnectionRequest(peer="tcp:127.0.0.1:40000", headers={}, host="127.0.0.1", path="/v1/wamp",
                                    params={}, version=13, origin=None, protocols=list(protocols), extensions=[])
        return proto, proto.onConnect(request)

    proto, chosen = offer("wamp.2.bogus", "wamp.2.msgpack.batched", "wamp.2.json")
    assert chosen == ("wamp.2.msgpack.batched", {})
    assert proto._serializer.SERIALIZER_ID == "msgpack.batched"
    assert proto._serializer._serializer.BINARY is True
    for s in serializers:
        assert isinstance(s._serializer.BINARY, bool) and s.SERIALIZER_ID
    with pytest.raises(ConnectionDeny) as refused:
        offer("wamp.2.bogus")
    assert refused.value.code == 400


@pytest.mark.parametrize("wire", wamp_serializers(), ids=lambda s: s.SERIALIZER_ID)
def test_a_wamp_message_is_serialized_once_per_object_serializer(wire):
    """
    wamp.Broker._encode serializes each C{Event} with the object serializer
    inside each wire format (C{serializer._serializer}), relying on the
    message caching those bytes per serializer (one encoding for every
    subscriber), and for batched formats on the bytes of several such
    messages, joined, being one batch that C{unserialize} reads back.
    """
    objser = wire._serializer
    events = [message.Event(1, 100 + i, args=[{"height": i}]) for i in range(3)]
    first = events[0].serialize(objser)
    assert isinstance(first, bytes) and events[0].serialize(objser) is first
    if "batched" in wire.SERIALIZER_ID:
        payload = b"".join(e.serialize(objser) for e in events)
    else:
        payload = first
    back = wire.unserialize(payload, objser.BINARY)
    assert [m.args for m in back] == [e.args for e in events[:len(back)]]
    assert len(back) == (3 if "batched" in wire.SERIALIZER_ID else 1)


def test_an_application_session_keeps_its_transport_in_underscore_transport():
    """
    wampclient.RouterPublisher reaches the router connection's Twisted
    transport as C{session._transport.transport} (to raise its
    C{bufferSize} and register a producer), and wampclient.RouterLink
    matches a lost connection to its session by C{session._transport}.
    """
    sent = []

    class Transport:
        def send(self, msg):
            sent.append(msg)

        def isOpen(self):
            return True

    session = ApplicationSession(ComponentConfig(realm="explorer"))
    transport = Transport()
    session.onOpen(transport)
    assert session._transport is transport
    assert [type(m) for m in sent] == [message.Hello]
    session.onClose(False)
    assert session._transport is None
