"""
What every explorerd WebSocket connection does as a hub client, raw or WAMP.

Mixed into an Autobahn server protocol whose factory has C{hub} and
C{metrics}: pongs to the hub's pings are its sign of life for the sweep, and
the connection leaves the hub before either side's close frame goes out, so
no data frame ever follows a close frame; the slot is given back when the
connection is gone.
"""

from types import FunctionType


class HubConnection:
    _explorer_client = None
    _explorer_ip = None

    def onPong(self, payload):
        client = self._explorer_client
        if client is not None and client.hub is not None:
            client.hub.pong(client, payload)

    def onCloseFrame(self, code, reasonRaw):
        self._leaveHub(f"client closed the connection (code {code})")
        return super().onCloseFrame(code, reasonRaw)

    def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False):
        if not isReply and code == 1009:
            self.factory.metrics.errors.labels("message_too_big").inc()
        self._leaveHub(f"closing with code {code}")
        return super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)

    def onClose(self, wasClean, code, reason):
        self._leaveHub(f"connection closed ({'clean' if wasClean else 'not clean'}, code {code}: {reason})")
        self.factory.hub.release(self)

    def _leaveHub(self, reason):
        client = self._explorer_client
        if client is not None and client.hub is not None:
            client.hub.detach(client, reason)


def configured_protocol(factory):
    """
    A subclass of C{factory.protocol} that carries the factory's protocol
    options as class attributes, for C{factory.protocol} to become.

    Autobahn copies some 30 options from the factory onto every connection
    and pretty-prints them for a debug line that is formatted whether or
    not anyone logs it: ~370 µs and ~2 KiB per connection, a quarter of a
    handshake's CPU, spent again on every refused one.  With the options on
    the class and nothing listed to copy, a connection reads them from the
    class (and can still override one for itself).
    """
    base = factory.protocol
    options = {}
    for name in base.CONFIG_ATTRS:
        value = getattr(factory, name)
        # A plain function as a class attribute would become a method.
        options[name] = staticmethod(value) if isinstance(value, FunctionType) else value
    return type(base.__name__, (base,), {"CONFIG_ATTRS": (), "__module__": base.__module__, **options})
