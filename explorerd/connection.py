"""
What every explorerd WebSocket connection does as a hub client, raw or WAMP.

Mixed into an Autobahn server protocol whose factory has C{hub} and
C{metrics}: pings and pongs count as signs of life for the hub's sweep, and
the connection leaves the hub before either side's close frame goes out, so
no data frame ever follows a close frame; the slot is given back when the
connection is gone.
"""


class HubConnection:
    _explorer_client = None
    _explorer_ip = None

    def onPong(self, payload):
        client = self._explorer_client
        if client is not None and client.hub is not None:
            client.hub.touch(client)

    def onPing(self, payload):
        self.onPong(payload)
        super().onPing(payload)

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
