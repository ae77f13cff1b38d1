"""
The hub: every client, what it subscribed to, and the fan-out of events.

An event is encoded once and framed once, then the same bytes object is
written to (or queued for) every subscriber, so a client costs a write, not
a JSON encode.  Each client is a streaming push producer on its transport:
while the transport holds more than C{write_buffer_size} unsent bytes it
pauses the client, and the hub queues references to the shared frames
instead of writing.  A client whose queue overflows, or that stays paused
past the write deadline, is closed as too slow; nobody else waits for it.

One C{LoopingCall}, on the clock we are given, pings every client each ping
interval, drops the ones that went silent and enforces the write deadline.
There are no per-client timers.
"""

import itertools
import time
from collections import deque

from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from explorerd import events
from explorerd.history import Entry, History

CHANNELS = ("newBlocks", "newTxs")

# Close codes (RFC 6455 section 7.4.1).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008

# An unmasked, empty PING frame: the same two bytes for every client.
_PING_FRAME = b"\x89\x00"
_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED


def frame(payload):
    """Frame a UTF-8 text payload once, as a server (unmasked, uncompressed)."""
    return PreparedMessage(payload, False, False, True).payloadHybi


@implementer(IPushProducer)
class Client:
    """
    One subscriber as the hub sees it, registered as a streaming producer
    on its transport so that Twisted tells us when it cannot keep up.
    """

    __slots__ = ("id", "hub", "protocol", "transport", "peer", "kind", "channels",
                 "paused", "paused_since", "queue", "queued", "last_seen", "__weakref__")

    def __init__(self, hub, client_id, protocol, peer, kind):
        self.id = client_id
        self.hub = hub
        self.protocol = protocol
        self.transport = protocol.transport
        self.peer = peer
        self.kind = kind
        self.channels = set()
        self.paused = False
        self.paused_since = None
        self.queue = deque()
        self.queued = 0
        self.last_seen = hub.clock.seconds()

    def __repr__(self):
        return f"<Client {self.id} {self.peer} {self.kind}>"

    # IPushProducer, called by the transport.

    def pauseProducing(self):
        if self.hub is not None and not self.paused:
            self.paused = True
            self.paused_since = self.hub.clock.seconds()
            self.hub._paused[self] = None

    def resumeProducing(self):
        if self.hub is not None and self.paused:
            self.paused = False
            self.paused_since = None
            self.hub._paused.pop(self, None)
            self.hub._flush(self)

    def stopProducing(self):
        if self.hub is not None:
            self.hub.detach(self, "connection lost")


class Hub(Service):
    """
    Owns all clients and their subscriptions; broadcasts events to them.

    @ivar clock: an L{IReactorTime} for the sweep and for timestamps.
    """

    name = "hub"
    log = Logger()

    def __init__(self, clock, config, metrics):
        self.clock = clock
        self.config = config
        self.metrics = metrics
        self._ids = itertools.count(1)
        self._clients = {}
        self._subscribers = {channel: {} for channel in CHANNELS}
        self._paused = {}
        self._protocols = set()
        self._closing = {}
        self._queued_total = 0
        self._next_ping = None
        self._sweep = LoopingCall(self._sweepOnce)
        self._sweep.clock = clock
        self._sweep_running = None
        self._drained = None
        self._stopping = False
        self.history = History(getattr(config, "history_blocks", 256))
        self._prepared = None
        self._observers = []

    def addObserver(self, observer):
        """
        C{observer(kind, data)} is called with every event as it is published,
        after the raw clients have been written to: C{("block", block_data)},
        C{("transactions", (block_data, [tx_data, ...]))}, C{("reorg",
        reorg_data)}, the same dicts the raw protocol sends as C{data}.  This
        is how other wire formats (WAMP) get the stream.  An observer that
        raises is logged and does not stop the others.
        """
        self._observers.append(observer)

    def _notify(self, kind, data):
        for observer in self._observers:
            try:
                observer(kind, data)
            except Exception:
                self.log.failure("observer {observer} failed on {kind}", observer=observer, kind=kind)

    # Connection slots: raw and WAMP connections share one cap.

    @property
    def connectionCount(self):
        """Connections holding a slot: open ones and handshakes in progress."""
        return len(self._protocols)

    @property
    def clientCount(self):
        return len(self._clients)

    def reserve(self, protocol):
        """Take a connection slot for C{protocol}; False when the cap is reached or we are stopping."""
        if self._stopping or len(self._protocols) >= self.config.max_connections:
            return False
        self._protocols.add(protocol)
        return True

    def release(self, protocol):
        """Give back the slot once the connection is gone."""
        self._protocols.discard(protocol)
        self._closing.pop(protocol, None)
        if self._drained is not None and not self._protocols:
            d, self._drained = self._drained, None
            d.callback(None)

    # Clients.

    def attach(self, protocol, peer, kind="websocket"):
        """A handshake finished: make a client and register it as the transport's producer."""
        client = Client(self, next(self._ids), protocol, peer, kind)
        transport = protocol.transport
        # twisted.web's HTTPChannel registered itself as the producer before
        # the upgrade; it has nothing more to say on this connection.
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(client, True)
        self._clients[client.id] = client
        self.metrics.connections.set(len(self._clients))
        self.metrics.connections_accepted.inc()
        return client

    def detach(self, client, reason):
        """Forget a client and free its queue; safe to call more than once."""
        if client.hub is None:
            return
        self._clients.pop(client.id, None)
        for channel in client.channels:
            self._subscribers[channel].pop(client, None)
        self._paused.pop(client, None)
        self._queued_total -= client.queued
        self.metrics.queued_messages.set(self._queued_total)
        client.queue.clear()
        client.queued = 0
        transport = client.transport
        if transport is not None and getattr(transport, "producer", None) is client:
            transport.unregisterProducer()
        client.hub = client.protocol = client.transport = None
        self.metrics.connections.set(len(self._clients))
        self.log.info("client {client} from {peer} detached: {reason}",
                      client=client.id, peer=client.peer, reason=reason)

    def touch(self, client):
        """The client said something (a message or a pong): it is alive."""
        client.last_seen = self.clock.seconds()

    def subscribe(self, client, channels):
        for channel in channels:
            if channel not in client.channels:
                client.channels.add(channel)
                self._subscribers[channel][client] = None
        return sorted(client.channels)

    def unsubscribe(self, client, channels):
        for channel in channels:
            if channel in client.channels:
                client.channels.discard(channel)
                self._subscribers[channel].pop(client, None)
        return sorted(client.channels)

    def subscriberCount(self, channel):
        return len(self._subscribers[channel])

    def sendTo(self, client, message):
        """
        One message to one client (a reply), behind whatever it has queued,
        so that replies and broadcasts reach it in the order they happened.
        """
        if client.hub is None:
            return
        self.deliver(client, frame(events.encode(message)), 1, message["type"])

    def close(self, client, code, reason, error=None):
        """
        Detach the client and start a close handshake with C{code}.  If the
        peer does not finish it within the shutdown timeout, the sweep (or
        the shutdown) aborts the connection.
        """
        protocol = client.protocol
        if error is not None:
            self.metrics.errors.labels(error).inc()
        self.detach(client, reason)
        if protocol is not None:
            self.closeProtocol(protocol, code, reason)

    def closeProtocol(self, protocol, code, reason):
        if protocol.state == _OPEN:
            protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)
        if protocol.state != _CLOSED and protocol in self._protocols:
            self._closing[protocol] = self.clock.seconds() + self.config.shutdown_timeout

    # Broadcasts.

    def prepare(self, block):
        """
        Validate a whole block, its transactions included, and frame it:
        an L{Entry} ready to publish.  Raises L{events.InvalidBlock} before
        anything is written to anyone.
        """
        data = events.block_data(block)
        txs_data = [events.tx_data(block, tx, i) for i, tx in enumerate(block["transactions"])]
        block_frame = frame(events.encode({"type": "newBlock", "data": data}))
        txs_frame = b"".join(frame(events.encode({"type": "newTx", "data": tx})) for tx in txs_data)
        return Entry(data, block_frame, txs_frame, txs_data)

    def broadcastBlock(self, block):
        """
        Publish a block (JSON-RPC shape, full transactions) to C{newBlocks}
        subscribers and remember it for clients that resume.

        Returns at once: a client that cannot take it now gets it queued.
        The block and all its transactions are validated first; a block
        lacking a field we publish raises L{events.InvalidBlock} and reaches
        nobody.
        """
        start = time.perf_counter()
        entry = self.prepare(block)
        self._prepared = (block, entry)
        self.history.add(entry)
        sent = self._fanout(self._subscribers["newBlocks"], entry.block_frame, 1, "newBlock", start)
        if self._observers:
            self._notify("block", entry.data)
        self.log.info("block {height} {hash} ({txs} txs) to {clients} clients",
                      height=entry.height, hash=entry.hash, txs=entry.tx_count, clients=sent)
        return sent

    def broadcastTransactions(self, block, txs):
        """
        Publish a block's transactions to C{newTxs} subscribers, one C{newTx}
        message each, framed once and written in one go per client.  After
        L{broadcastBlock} of the same block this reuses its frames.
        """
        start = time.perf_counter()
        prepared = self._prepared
        if prepared is not None and prepared[0] is block and txs is block.get("transactions"):
            entry = prepared[1]
            block_data, txs_data, payload = entry.data, entry.txs_data, entry.txs_frame
        else:
            block_data = events.block_data(block)
            txs_data = [events.tx_data(block, tx, i) for i, tx in enumerate(txs)]
            payload = b"".join(frame(events.encode({"type": "newTx", "data": tx})) for tx in txs_data)
        self._prepared = None
        if not txs_data:
            return 0
        sent = self._fanout(self._subscribers["newTxs"], payload, len(txs_data), "newTx", start)
        if self._observers:
            self._notify("transactions", (block_data, txs_data))
        return sent

    def remember(self, block):
        """Add a block to the history without sending it: what clients saw before a restart."""
        self.history.add(self.prepare(block))

    def broadcastReorg(self, depth, common_ancestor, removed):
        """
        Tell C{newBlocks} and C{newTxs} subscribers (each once) that the
        blocks in C{removed} (C{[{"height", "hash"}, ...]}, as published) are
        no longer canonical, back to C{common_ancestor} (C{{"height", "hash"}}).
        The replacement blocks follow as ordinary broadcasts.
        """
        start = time.perf_counter()
        data = {
            "depth": depth,
            "common_ancestor": {"height": common_ancestor["height"], "hash": common_ancestor["hash"]},
            "removed": [{"height": r["height"], "hash": r["hash"]} for r in removed],
        }
        payload = frame(events.encode({"type": "reorg", "data": data}))
        self.history.rollback(data["common_ancestor"]["height"])
        recipients = dict(self._subscribers["newBlocks"])
        recipients.update(self._subscribers["newTxs"])
        self.log.info("reorg of depth {depth} back to {height} {hash}",
                      depth=depth, height=data["common_ancestor"]["height"],
                      hash=data["common_ancestor"]["hash"])
        sent = self._fanout(recipients, payload, 1, "reorg", start)
        if self._observers:
            self._notify("reorg", data)
        return sent

    def replay(self, client, since, announce=None):
        """
        Catch a resuming client up from C{since} (C{{"height", "hash"}}, the
        last block it holds): a C{reorg} for its blocks that are gone, then
        every newer block of its channels, written in this same reactor turn
        so nothing live can slip in between.  Returns the number of blocks
        replayed, or C{None} when the history cannot serve it.
        """
        status, ancestor, removed = self.history.resume(since["height"], since["hash"])
        if status != "ok":
            return None
        entries = self.history.after(ancestor)
        if announce is not None:
            announce(len(entries))
        if removed:
            self.deliver(client, frame(events.encode({"type": "reorg", "data": {
                "depth": len(removed),
                "common_ancestor": {"height": ancestor, "hash": self._hashAt(ancestor)},
                "removed": removed,
            }})), 1, "reorg")
        blocks = "newBlocks" in client.channels
        txs = "newTxs" in client.channels
        frames, count = [], 0
        for e in entries:
            if blocks:
                frames.append(e.block_frame)
                count += 1
            if txs and e.tx_count:
                frames.append(e.txs_frame)
                count += e.tx_count
        if frames:
            self.deliver(client, frames, count, "replay")
        return len(entries)

    def _hashAt(self, height):
        for e in self.history.after(height - 1):
            return e.hash
        return None

    def _fanout(self, subscribers, payload, count, kind, start):
        written = 0
        recipients = len(subscribers)
        # A snapshot: delivering may close a slow client, which edits the dict.
        for client in tuple(subscribers):
            if self._deliver(client, payload, count, kind):
                written += 1
        if written:
            self.metrics.messages_sent.labels(kind).inc(written * count)
        self.metrics.broadcast_recipients.labels(kind).inc(recipients)
        self.metrics.broadcast_latency.labels(kind).observe(time.perf_counter() - start)
        return recipients

    def deliver(self, client, payload, count, kind):
        """
        Send C{payload} (framed bytes, or a list of them, holding C{count}
        messages) to one client through its queue; True if written now.
        """
        if client.hub is None:
            return False
        written = self._deliver(client, payload, count, kind)
        if written:
            self.metrics.messages_sent.labels(kind).inc(count)
        return written

    def _deliver(self, client, payload, count, kind):
        """Write now, or queue while the transport is paused; True if written."""
        if client.paused or client.queue:
            config = self.config
            if len(client.queue) >= config.send_queue:
                self.close(client, CLOSE_POLICY,
                           f"too slow: {len(client.queue)} messages waiting to be sent",
                           "slow_client")
                return False
            if client.paused and self.clock.seconds() - client.paused_since > config.write_deadline:
                self._closeStalled(client)
                return False
            client.queue.append((payload, count, kind))
            client.queued += count
            self._queued_total += count
            self.metrics.queued_messages.set(self._queued_total)
            return False
        if payload.__class__ is list:
            client.transport.writeSequence(payload)
        else:
            client.transport.write(payload)
        return True

    def _flush(self, client):
        """The transport drained: write what waited, until it pauses us again."""
        sent = {}
        while client.queue and not client.paused and client.hub is not None:
            payload, count, kind = client.queue.popleft()
            client.queued -= count
            self._queued_total -= count
            if payload.__class__ is list:
                client.transport.writeSequence(payload)
            else:
                client.transport.write(payload)
            sent[kind] = sent.get(kind, 0) + count
        for kind, n in sent.items():
            self.metrics.messages_sent.labels(kind).inc(n)
        self.metrics.queued_messages.set(self._queued_total)

    def _closeStalled(self, client):
        waited = self.clock.seconds() - client.paused_since
        self.close(client, CLOSE_POLICY,
                   f"too slow: not reading for {waited:.1f}s (write deadline {self.config.write_deadline:g}s)",
                   "slow_client")

    # The sweep: pings, dead peers, stalled writers, unfinished closes.

    def _sweepInterval(self):
        c = self.config
        return max(0.01, min(c.ping_interval, c.write_deadline / 4, c.pong_timeout / 4))

    def _sweepOnce(self):
        try:
            self._sweepBody()
        except Exception:
            # A LoopingCall stops for good after one exception.
            self.log.failure("hub sweep failed; it will run again next tick")

    def _sweepBody(self):
        now = self.clock.seconds()
        config = self.config
        for client in tuple(self._paused):
            if client.hub is not None and now - client.paused_since > config.write_deadline:
                self._closeStalled(client)
        for protocol, deadline in tuple(self._closing.items()):
            if now >= deadline:
                self._closing.pop(protocol, None)
                if protocol.state != _CLOSED:
                    protocol.dropConnection(abort=True)
        ping = self._next_ping is None or now >= self._next_ping
        if ping:
            self._next_ping = now + config.ping_interval
        dead = []
        for client in self._clients.values():
            if now - client.last_seen > config.pong_timeout:
                dead.append(client)
            elif ping and not client.paused:
                client.transport.write(_PING_FRAME)
        for client in dead:
            protocol = client.protocol
            silent = now - client.last_seen
            self.metrics.errors.labels("ping_timeout").inc()
            self.detach(client, f"no pong or message for {silent:.1f}s")
            protocol.dropConnection(abort=True)

    def startService(self):
        super().startService()
        self._stopping = False
        self._next_ping = self.clock.seconds() + self.config.ping_interval
        self._sweep_running = self._sweep.start(self._sweepInterval(), now=False)

    def stopService(self):
        """
        Say goodbye: close every connection with 1001 and wait (bounded by
        the shutdown timeout) for the close handshakes, then abort the rest.
        """
        super().stopService()
        self._stopping = True
        if self._sweep.running:
            self._sweep.stop()
        clients = tuple(self._clients.values())
        for client in clients:
            self.close(client, CLOSE_GOING_AWAY, "server shutting down")
        for protocol in tuple(self._protocols):
            if protocol.state == _OPEN:
                self.closeProtocol(protocol, CLOSE_GOING_AWAY, "server shutting down")
            elif protocol.state != _CLOSED and protocol not in self._closing:
                protocol.dropConnection(abort=True)
        self.log.info("shutting down: closing {n} connections", n=len(self._protocols))
        if not self._protocols:
            return defer.succeed(None)
        self._drained = defer.Deferred()
        timer = self.clock.callLater(self.config.shutdown_timeout, self._abortAll)

        def done(result):
            if timer.active():
                timer.cancel()
            return result

        return self._drained.addBoth(done)

    def _abortAll(self):
        remaining = tuple(self._protocols)
        self.log.warn("shutdown: {n} connections did not close in time; aborting them", n=len(remaining))
        for protocol in remaining:
            if protocol.state != _CLOSED:
                protocol.dropConnection(abort=True)
            self.release(protocol)
