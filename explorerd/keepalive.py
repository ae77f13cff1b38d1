"""
Whether each client is still there and still reading.

A client is alive while it answers our pings: each round's ping carries a
new payload, and only a pong with one of those payloads counts.  The ping
goes behind whatever is queued for the client, so its pong says the client
has read everything sent before it; a client that keeps talking but stopped
reading on a slow stream (its receive window and the kernel's unsent limit,
L{explorerd.transport.limitUnsent}, take minutes of C{newBlocks} before
Twisted pauses us) is dropped after the pong timeout.  A client whose
transport stays paused past the write deadline is closed as too slow: one
that stops reading a busy stream, within seconds.

A client that takes a block's transactions or logs is also sent a ping
right behind them, one per block (a I{read probe}, L{probeFrame}): its pong
says the client has read that block.  On loopback and fast links the
kernel's receive buffer autotunes to megabytes, tens of blocks that a
client has not read yet and that the server cannot see; the probe is how
the hub tells a client that keeps up from one that is blocks behind
(L{Keepalive.unread}).

There are no per-client timers: the hub's one sweep calls L{Keepalive.sweep}.
"""

import itertools
import struct
from collections import OrderedDict

# An unmasked PING frame with an 8-byte payload (the round's number): the same
# bytes for every client in a round.
_PING_HEADER = b"\x89\x08"
# A read probe: an unmasked PING with a 9-byte payload, b"B" and the block's height.
_PROBE_HEADER = b"\x89\x09B"
_PROBE = struct.Struct("!Q")


def probeFrame(height):
    """The read probe that follows block C{height}'s frames: the same bytes for every client."""
    return _PROBE_HEADER + _PROBE.pack(height)

CLOSE_POLICY = 1008


class Keepalive:
    def __init__(self, hub, config, metrics):
        self.hub = hub
        self.config = config
        self.metrics = metrics
        self._next_ping = None
        self._pings = OrderedDict()  # payload of each recent ping round -> when it was sent
        self._rounds = itertools.count(1)
        self.probed = {}  # clients with a read probe not answered yet (an ordered set)

    def start(self, now):
        self._next_ping = now + self.config.ping_interval

    def pong(self, client, payload):
        """
        The client answered a ping: if it was one of ours, it has read
        everything we sent before that ping, so it is alive as of then.
        Unsolicited pongs, and pings or messages from the client, say
        nothing about whether it reads, and do not count.
        """
        payload = bytes(payload)
        if len(payload) == 9 and payload[:1] == b"B":
            self._probeAnswered(client, _PROBE.unpack_from(payload, 1)[0])
            return
        sent = self._pings.get(payload)
        if sent is not None and sent > client.last_seen:
            client.last_seen = sent

    # Read probes.

    def probeSent(self, client, height, now):
        """C{client} was written block C{height}'s read probe at C{now}."""
        if client.probe_height is None:
            client.probe_height, client.probe_at = height, now
            self.probed[client] = None
        client.probe_last = (height, now)

    def _probeAnswered(self, client, height):
        """
        Pongs come in the order of the pings: one for block C{height} says
        every probe up to it was read.  The oldest still unanswered is then
        the newest sent (a client may answer only the latest of several
        pings), or none.
        """
        if client.probe_height is None or height < client.probe_height:
            return  # a probe from before a replay (see L{replayed}), or not ours
        if client.probe_at > client.last_seen:
            client.last_seen = client.probe_at
        client.probe_free = False
        last_height, last_at = client.probe_last
        if height >= last_height:
            client.probe_height = client.probe_at = None
            self.probed.pop(client, None)
        else:
            client.probe_height, client.probe_at = last_height, last_at

    def replayed(self, client):
        """
        C{client} was sent a replay (it resumed with C{since}): how long it
        takes to read it says nothing about keeping up with the chain, so it
        is not judged by its probes until it answers one sent after it.
        """
        self.forget(client)
        client.probe_free = True

    def forget(self, client):
        client.probe_height = client.probe_at = None
        self.probed.pop(client, None)

    def unread(self, now, older_than):
        """
        The clients that have not answered a read probe written C{older_than}
        seconds ago or more (and are not catching up from a replay): the
        blocks before it are still unread, somewhere between us and them.
        """
        return [client for client in self.probed
                if now - client.probe_at >= older_than and not client.probe_free and client.hub is not None]

    def stalled(self, client, now):
        """
        Whether C{client}'s transport has been paused for longer than the
        write deadline, or a broadcast has waited in its queue that long: a
        client that reads, but slower than the chain goes, is resumed and
        paused again and again and would otherwise fall further behind
        for as long as its send queue lasts.
        """
        deadline = self.config.write_deadline
        if client.paused and now - client.paused_since > deadline:
            return True
        return client.waiting_since is not None and now - client.waiting_since > deadline

    def closeStalled(self, client, now):
        deadline = self.config.write_deadline
        if client.paused and now - client.paused_since > deadline:
            reason = f"too slow: not reading for {now - client.paused_since:.1f}s (write deadline {deadline:g}s)"
        else:
            reason = f"too slow: {now - client.waiting_since:.1f}s behind (write deadline {deadline:g}s)"
        self.hub.close(client, CLOSE_POLICY, reason, "slow_client")

    def sweep(self, now, clients, paused):
        """Close stalled writers, drop clients that stopped answering, and ping the rest when due."""
        for client in tuple(paused):
            if client.hub is not None and self.stalled(client, now):
                self.closeStalled(client, now)
        ping = None
        if self._next_ping is None or now >= self._next_ping:
            self._next_ping = now + self.config.ping_interval
            ping = self._newPing(now)
        timeout = self.config.pong_timeout
        dead = []
        for client in clients:
            if client.hub is None:
                continue  # closed above as too slow (or gone since the hub listed it)
            if now - client.last_seen > timeout:
                dead.append(client)
            elif ping is not None:
                self.hub.sendControl(client, ping)
        for client in dead:
            protocol = client.protocol
            behind = now - client.last_seen
            self.metrics.errors.labels("ping_timeout").inc()
            self.hub.detach(client, f"no pong to our pings for {behind:.1f}s: gone, or not reading")
            protocol.dropConnection(abort=True)

    def _newPing(self, now):
        """This round's ping frame; remembers its payload for as long as a pong to it can matter."""
        payload = struct.pack("!Q", next(self._rounds))
        self._pings[payload] = now
        horizon = now - self.config.pong_timeout - self.config.ping_interval
        while len(self._pings) > 1:
            oldest = next(iter(self._pings.values()))
            if oldest >= horizon:
                break
            self._pings.popitem(last=False)
        return _PING_HEADER + payload
