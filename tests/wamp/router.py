"""
A small WAMP router for the tests of clients of a router (explorerd's
L{explorerd.routerlink.RouterLink}, autobahn's C{Component}): one realm,
anonymous or ticket sessions, registrations and publications acknowledged
(nothing is routed), and switches to misbehave the ways a real router can:
hold a HELLO unanswered, refuse registrations, never answer GOODBYE, stop
reading.  Crossbar (tests/crossbar) is the real thing; this one is fast and
does what a test tells it.

Never import twisted.internet.reactor at module level here.
"""

import itertools

from autobahn.twisted.websocket import WampWebSocketServerFactory, WampWebSocketServerProtocol
from autobahn.wamp import message
from autobahn.wamp.role import RoleBrokerFeatures, RoleDealerFeatures


def _reactor():
    from twisted.internet import reactor

    return reactor


class RouterSession:
    """The router's side of one connection (an autobahn C{ITransportHandler})."""

    _session_id = None
    _authid = None

    def __init__(self, router):
        self.router = router
        self._transport = None
        self._hello = None

    def onOpen(self, transport):
        self._transport = transport
        self.router.connections.append(transport)

    def onClose(self, wasClean):
        router = self.router
        if self._transport in router.connections:
            router.connections.remove(self._transport)
        if self in router.held:
            router.held.remove(self)

    def onMessage(self, msg):
        router = self.router
        if isinstance(msg, message.Hello):
            router.hellos.append(msg)
            self._hello = msg
            if router.holdHellos:
                router.held.append(self)
            else:
                self.answerHello()
        elif isinstance(msg, message.Authenticate):
            if msg.signature == router.ticket:
                self._welcome(self._hello.authid, "explorerd", "ticket")
            else:
                self._abort("wamp.error.not_authorized", "wrong ticket")
        elif isinstance(msg, message.Register):
            router.registrations.append(msg.procedure)
            if router.refuseRegistrations:
                self._transport.send(message.Error(message.Register.MESSAGE_TYPE, msg.request,
                                                   "wamp.error.not_authorized"))
            else:
                self._transport.send(message.Registered(msg.request, next(router.ids)))
        elif isinstance(msg, message.Publish):
            router.publications.append((msg.topic, msg.args))
            if msg.acknowledge:
                self._transport.send(message.Published(msg.request, next(router.ids)))
        elif isinstance(msg, message.Goodbye):
            router.goodbyes.append(msg.reason)
            self._session_id = None
            if router.answerGoodbyes:
                self._transport.send(message.Goodbye("wamp.close.goodbye_and_out"))

    def answerHello(self):
        hello, router = self._hello, self.router
        if hello.realm != router.realm:
            return self._abort("wamp.error.no_such_realm", f"no realm {hello.realm!r} here")
        methods = hello.authmethods or ["anonymous"]
        if router.ticket and "ticket" in methods:
            self._transport.send(message.Challenge("ticket"))
        elif "anonymous" in methods:
            self._welcome(f"anonymous-{len(router.hellos)}", "anonymous", "anonymous")
        else:
            self._abort("wamp.error.no_auth_method", "no method in common")

    def _welcome(self, authid, authrole, authmethod):
        router = self.router
        self._session_id = next(router.ids)
        self._authid = authid
        router.joins.append((authid, authrole))
        roles = {"broker": RoleBrokerFeatures(), "dealer": RoleDealerFeatures()}
        self._transport.send(message.Welcome(self._session_id, roles, realm=router.realm, authid=authid,
                                             authrole=authrole, authmethod=authmethod))
        if router.stopReadingAfterJoin:
            self._transport.transport.pauseProducing()

    def _abort(self, reason, text):
        self._transport.send(message.Abort(reason, message=text))
        self._transport.sendClose(1000)


class _RouterProtocol(WampWebSocketServerProtocol):
    pass


class LocalRouter:
    """
    C{await LocalRouter(realm).listen()}; C{url} to connect to; the lists
    record what clients did; C{await stop()} closes everything.
    """

    def __init__(self, realm="explorer", ticket=None):
        self.realm = realm
        self.ticket = ticket
        self.holdHellos = False
        self.refuseRegistrations = False
        self.answerGoodbyes = True
        self.stopReadingAfterJoin = False
        self.ids = itertools.count(1)
        self.connections = []
        self.hellos = []
        self.held = []
        self.joins = []
        self.registrations = []
        self.publications = []
        self.goodbyes = []
        self.port = None
        self.url = None

    async def listen(self):
        from autobahn.wamp.serializer import JsonSerializer, MsgPackSerializer
        from twisted.internet.endpoints import TCP4ServerEndpoint

        factory = WampWebSocketServerFactory(lambda: RouterSession(self),
                                             serializers=[MsgPackSerializer(), JsonSerializer()])
        factory.protocol = _RouterProtocol
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        self.port = await TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1").listen(factory)
        self.url = f"ws://127.0.0.1:{self.port.getHost().port}/ws"
        return self

    def releaseHellos(self):
        held, self.held = self.held, []
        for session in held:
            session.answerHello()

    def dropAll(self):
        """Drop every connection without a word (a router that crashed)."""
        for protocol in list(self.connections):
            protocol.transport.abortConnection()

    async def stop(self):
        self.dropAll()
        port, self.port = self.port, None
        if port is not None:
            await port.stopListening()
