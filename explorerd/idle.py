"""
The subscribe deadline: a connection that holds no subscription, and has
asked for nothing but pings, for C{subscribe_timeout} seconds is closed
with 1008.  Without it, connections that never subscribe (10 addresses x
100 connections) fill the connection cap and lock everyone else out for
as long as they answer our pings.

A client is here while it holds no subscription: from the moment it
connects, and again from the moment it gives up its last one.  A request
(a WAMP call, a JSON-RPC method; see L{Hub.madeRequest}) starts its
deadline again; pings, its own or ours, do not.  The dict is kept in the
order of the clients' deadlines (a restarted one moves to the end), so the
hub's one sweep looks only at the clients whose deadline has passed and
at the first whose deadline has not: no per-client timers, and no walk
over every client.
"""

from explorerd.keepalive import CLOSE_POLICY

REASON = "subscribe_timeout"  # explorer_websocket_errors_total{type}


class SubscribeDeadline:
    def __init__(self, hub, config):
        self.hub = hub
        self.timeout = config.subscribe_timeout
        self._idle = {}  # client -> since when it has held nothing, oldest first

    def __len__(self):
        return len(self._idle)

    def idle(self, client, now):
        """C{client} connected, or gave up its last subscription: its deadline starts now."""
        if self.timeout and client not in self._idle:
            self._idle[client] = now

    def holding(self, client):
        """C{client} holds a subscription: no deadline while it does."""
        self._idle.pop(client, None)

    def used(self, client, now):
        """C{client} made a request: if it holds no subscription, its deadline starts again."""
        if self._idle.pop(client, None) is not None:
            self._idle[client] = now

    def forget(self, client):
        self._idle.pop(client, None)

    def sweep(self, now):
        """Close (1008) every client whose deadline has passed."""
        if not self.timeout:
            return
        expired = []
        for client, since in self._idle.items():
            if now - since < self.timeout:
                break
            expired.append(client)
        reason = f"no subscription within {self.timeout:g}s"
        for client in expired:
            self.hub.close(client, CLOSE_POLICY, reason, REASON)
