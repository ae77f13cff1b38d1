"""Test servers that know their open connections, so a test can wait for them to close."""

from twisted.internet import defer
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory


class _Wrapper(ProtocolWrapper):
    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.connectionGone()


class TrackingFactory(WrappingFactory):
    """
    Wraps a server factory: counts the connections it accepted, and fires
    L{whenIdle} once none is open, after the server's own C{connectionLost}
    (whose timers are cancelled by then), so no test leaves one behind.
    """

    noisy = False
    protocol = _Wrapper

    def __init__(self, wrapped):
        super().__init__(wrapped)
        self.accepted = 0
        self._idle = []

    def registerProtocol(self, p):
        self.accepted += 1
        super().registerProtocol(p)

    def connectionGone(self):
        if not self.protocols:
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    def whenIdle(self):
        if not self.protocols:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d

    def abortAll(self):
        for p in list(self.protocols):
            p.transport.abortConnection()
