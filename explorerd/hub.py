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
interval, drops the ones that stopped answering and enforces the write
deadline.  There are no per-client timers.

A client is alive while it answers our pings: each round's ping carries a
new payload, and only a pong with one of those payloads counts.  The ping
goes behind whatever is queued for the client, so its pong says the client
has read everything sent before it; a client that keeps talking but stopped
reading (its kernel buffers can hold megabytes before Twisted pauses us) is
dropped after the pong timeout, not when the buffers fill.
"""

import functools
import gc
import itertools
import struct
import time
from collections import OrderedDict, deque

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from explorerd import events
from explorerd.events import frame
from explorerd.history import BATCH, BATCH_HASHES, HASHES, PLAIN, Entry, History

CHANNELS = ("newBlocks", "newTxs")


def _collectAfter(publish):
    """
    Run C{publish} with the garbage collector held off until it returns.

    A full collection walks every object of every connection: ~200 ms at
    10,000 clients.  When one started inside a fan-out (the allocations of
    converting and encoding a block can trigger it) that block reached
    everyone 200 ms late; measured at 10,000 clients: one publish of 302 ms,
    205 ms of it a collection.  Held off, the collection runs right after
    the block is out, in the same reactor turn.
    """

    @functools.wraps(publish)
    def publishing(*args, **kwargs):
        if not gc.isenabled():
            return publish(*args, **kwargs)
        gc.disable()
        try:
            return publish(*args, **kwargs)
        finally:
            gc.enable()

    return publishing

# Close codes (RFC 6455 section 7.4.1).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008

# An unmasked PING frame with an 8-byte payload (the round's number): the same
# bytes for every client in a round.
_PING_HEADER = b"\x89\x08"
_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED


class TxOptions:
    """
    How a client takes C{newTxs}: one message per transaction or one batch
    per block, full or hashes only, all or only those touching C{addresses}.
    """

    __slots__ = ("batch", "hashes_only", "addresses")

    def __init__(self, batch=False, hashes_only=False, addresses=None):
        self.batch = batch
        self.hashes_only = hashes_only
        self.addresses = frozenset(addresses) if addresses else None

    @property
    def mode(self):
        if self.batch:
            return BATCH_HASHES if self.hashes_only else BATCH
        return HASHES if self.hashes_only else PLAIN


DEFAULT_TX_OPTIONS = TxOptions()


@implementer(IPushProducer)
class Client:
    """
    One subscriber as the hub sees it, registered as a streaming producer
    on its transport so that Twisted tells us when it cannot keep up.
    """

    __slots__ = ("id", "hub", "protocol", "transport", "peer", "kind", "channels", "tx_options",
                 "group", "paused", "paused_since", "queue", "queued", "backlog", "last_seen",
                 "__weakref__")

    def __init__(self, hub, client_id, protocol, peer, kind):
        self.id = client_id
        self.hub = hub
        self.protocol = protocol
        self.transport = protocol.transport
        self.peer = peer
        self.kind = kind
        self.channels = set()
        self.tx_options = DEFAULT_TX_OPTIONS
        self.group = None
        self.paused = False
        self.paused_since = None
        self.queue = deque()
        self.queued = 0
        self.backlog = 0  # replayed blocks in the queue: not counted against send_queue
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
        # Clients that take the same bytes for every block, by (blocks?, tx mode);
        # address-filtered clients get their own bytes, found through _by_address.
        self._groups = {}
        self._filtered = {}
        self._by_address = {}
        self._paused = {}
        self._protocols = {}
        self._pending = {}
        self._lingering = {}
        self._per_ip = {}
        self._closing = {}
        self._queued_total = 0
        self._next_ping = None
        self._pings = OrderedDict()  # payload of each recent ping round -> when it was sent
        self._ping_rounds = itertools.count(1)
        self._sweep = LoopingCall(self._sweepOnce)
        self._sweep.clock = clock
        self._sweep_running = None
        self._drained = None
        self._stopping = False
        self.history = History(getattr(config, "history_blocks", 256))
        self._prepared = None
        self._observers = []
        self._held = None  # resumes waiting for the history to be restored, or None

    def holdResumes(self, restored, timeout=30.0):
        """
        Until the Deferred C{restored} fires (at most C{timeout} seconds),
        resumes (subscribe with C{since}) wait: the live-tail is giving the
        history back after a restart (L{LiveTail.whenRestored}).
        """
        if restored.called:
            return
        held = self._held = []

        def release(result=None):
            if timer.active():
                timer.cancel()
            if self._held is held:
                self._held = None
                for resume in held:
                    resume()
            return result

        timer = self.clock.callLater(timeout, release)
        restored.addBoth(release)

    def whenResumable(self, resume):
        """Call C{resume()} now, or once the history is restored."""
        if self._held is None:
            resume()
        else:
            self._held.append(resume)

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
        """Connections holding a slot: WebSockets, and HTTP requests still arriving."""
        return len(self._protocols) + len(self._pending)

    @property
    def clientCount(self):
        return len(self._clients)

    def _countIP(self, ip, delta):
        n = self._per_ip.get(ip, 0) + delta
        if n > 0:
            self._per_ip[ip] = n
        else:
            self._per_ip.pop(ip, None)

    def ipFull(self, ip):
        cap = getattr(self.config, "max_connections_per_ip", 0)
        return bool(cap) and self._per_ip.get(ip, 0) >= cap

    def admitPending(self, channel, ip):
        """
        A TCP connection was accepted: hold a slot for it until its request
        is complete.  Returns C{None} (admitted), C{(status, reason)} (to be
        refused once its request head is read, within the handshake
        timeout), or C{"drop"} when even the refusals are too many.
        """
        refusal = None
        # Headroom over the cap, so /healthz and /metrics still answer when the
        # WebSockets fill it; the WebSocket handshake itself checks the cap.
        headroom = max(16, self.config.max_connections // 10)
        if self._stopping or self.connectionCount >= self.config.max_connections + headroom:
            self.metrics.connections_refused.labels("capacity").inc()
            refusal = (503, "Service Unavailable")
        track_ip = not getattr(self.config, "trusted_proxies", 0)
        if refusal is None and track_ip and self.ipFull(ip):
            self.metrics.connections_refused.labels("ip_capacity").inc()
            refusal = (429, "Too Many Requests")
        if refusal is not None:
            if len(self._lingering) >= max(100, self.config.max_connections // 10):
                return "drop"
            self._lingering[channel] = self.clock.seconds() + self.config.handshake_timeout
            return refusal
        self._pending[channel] = (self.clock.seconds() + self.config.handshake_timeout,
                                  ip if track_ip else None)
        if track_ip:
            self._countIP(ip, 1)
        return None

    def unlinger(self, channel):
        """A refused connection got its answer, or went away."""
        self._lingering.pop(channel, None)

    def unpend(self, channel):
        """The connection's request arrived (or it went away): it no longer holds a pending slot."""
        held = self._pending.pop(channel, None)
        if held is not None and held[1] is not None:
            self._countIP(held[1], -1)

    def full(self):
        """No slot for another WebSocket (or we are stopping)."""
        return self._stopping or self.connectionCount >= self.config.max_connections

    def reserve(self, protocol, ip=None):
        """
        Take a connection slot for a WebSocket C{protocol} from C{ip}; False
        when the cap (or the per-IP cap) is reached or we are stopping.
        """
        if self.full():
            return False
        if ip is not None and self.ipFull(ip):
            return False
        self._protocols[protocol] = ip
        if ip is not None:
            self._countIP(ip, 1)
        return True

    def release(self, protocol):
        """Give back the slot once the connection is gone."""
        if protocol in self._protocols:
            ip = self._protocols.pop(protocol)
            if ip is not None:
                self._countIP(ip, -1)
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
        self.metrics.connections_by_protocol.labels(kind).inc()
        self.metrics.connections_accepted.inc()
        return client

    def detach(self, client, reason):
        """Forget a client and free its queue; safe to call more than once."""
        if client.hub is None:
            return
        self._clients.pop(client.id, None)
        for channel in client.channels:
            self._subscribers[channel].pop(client, None)
        self._ungroup(client)
        self._paused.pop(client, None)
        self._queued_total -= client.queued
        self.metrics.queued_messages.set(self._queued_total)
        client.queue.clear()
        client.queued = 0
        client.backlog = 0
        transport = client.transport
        if transport is not None and getattr(transport, "producer", None) is client:
            transport.unregisterProducer()
        client.hub = client.protocol = client.transport = None
        self.metrics.connections.set(len(self._clients))
        self.metrics.connections_by_protocol.labels(client.kind).dec()
        self.log.info("client {client} from {peer} detached: {reason}",
                      client=client.id, peer=client.peer, reason=reason)

    def pong(self, client, payload):
        """
        The client answered a ping: if it was one of ours, it has read
        everything we sent before that ping, so it is alive as of then.
        Unsolicited pongs, and pings or messages from the client, say
        nothing about whether it reads, and do not count.
        """
        sent = self._pings.get(bytes(payload))
        if sent is not None and sent > client.last_seen:
            client.last_seen = sent

    def subscribe(self, client, channels, tx_options=None):
        """
        Add channels; C{tx_options} (a L{TxOptions}) sets how C{newTxs} is
        delivered when C{newTxs} is among them.  Returns the channels after.
        """
        self._ungroup(client)
        for channel in channels:
            if channel not in client.channels:
                client.channels.add(channel)
                self._subscribers[channel][client] = None
        if "newTxs" in channels:
            client.tx_options = tx_options or DEFAULT_TX_OPTIONS
        self._regroup(client)
        return sorted(client.channels)

    def unsubscribe(self, client, channels):
        self._ungroup(client)
        for channel in channels:
            if channel in client.channels:
                client.channels.discard(channel)
                self._subscribers[channel].pop(client, None)
        if "newTxs" not in client.channels:
            client.tx_options = DEFAULT_TX_OPTIONS
        self._regroup(client)
        return sorted(client.channels)

    @staticmethod
    def _profile(client):
        blocks = "newBlocks" in client.channels
        mode = client.tx_options.mode if "newTxs" in client.channels else None
        return blocks, mode

    def _regroup(self, client):
        blocks, mode = self._profile(client)
        if not blocks and mode is None:
            return
        addresses = client.tx_options.addresses if mode is not None else None
        if addresses:
            client.group = self._filtered
            self._filtered[client] = None
            for address in addresses:
                self._by_address.setdefault(address, {})[client] = None
        else:
            client.group = self._groups.setdefault((blocks, mode), {})
            client.group[client] = None

    def _ungroup(self, client):
        group, client.group = client.group, None
        if group is None:
            return
        group.pop(client, None)
        if group is self._filtered:
            for address in client.tx_options.addresses or ():
                subscribers = self._by_address.get(address)
                if subscribers is not None:
                    subscribers.pop(client, None)
                    if not subscribers:
                        del self._by_address[address]

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
        return Entry(data, txs_data)

    @_collectAfter
    def publishBlock(self, block):
        """
        Publish a block (JSON-RPC shape, full transactions) and its
        transactions.  Two passes: every client's C{newBlock} first, then
        every client's transactions (one write per client per pass), so
        no client's block waits behind other clients' transaction payloads;
        measured at 1,000 clients with ~190-tx blocks this cut first-frame
        p99 from 235 to 63 ms and left whole-block latency as it was.  The
        whole block is validated first and reaches nobody if it lacks a
        field we publish (L{events.InvalidBlock}).
        """
        return self._publishBoth(self.prepare(block))

    @_collectAfter
    def publishData(self, block_data, txs_data):
        """The same for a block already in wire shape (an edge fed by a WAMP router)."""
        return self._publishBoth(Entry(block_data, txs_data))

    def _publishBoth(self, entry):
        recipients = self.publishEntry(entry, blocks=True, txs=False)
        if entry.tx_count:
            self.publishEntry(entry, blocks=False, txs=True, remember=False)
        return recipients

    def publishEntry(self, entry, blocks=True, txs=True, remember=True):
        start = time.perf_counter()
        if remember:
            self.history.add(entry)
        recipients = 0
        for (takes_blocks, mode), group in self._groups.items():
            if not group:
                continue
            wants_blocks = takes_blocks and blocks
            wants_mode = mode if txs else None
            if not wants_blocks and wants_mode is None:
                continue
            payload, count = entry.payload(wants_blocks, wants_mode)
            if not count:
                continue
            recipients += self.fanout(group, payload, self._counts(wants_blocks, wants_mode, entry))
        if self._filtered and (txs or blocks):
            recipients += self._fanoutFiltered(entry, blocks, txs)
        kind = "block" if blocks else "transactions"
        self.metrics.broadcast_latency.labels(kind).observe(time.perf_counter() - start)
        if self._observers:
            if blocks:
                self._notify("block", entry.data)
            if txs and entry.tx_count:
                self._notify("transactions", (entry.data, entry.txs_data))
        if blocks:
            self.log.info("block {height} {hash} ({txs} txs) to {clients} clients",
                          height=entry.height, hash=entry.hash, txs=entry.tx_count, clients=recipients)
        return recipients

    @staticmethod
    def _counts(blocks, mode, entry):
        counts = []
        if blocks:
            counts.append(("newBlock", 1))
        if mode in (PLAIN, HASHES) and entry.tx_count:
            counts.append(("newTx", entry.tx_count))
        elif mode is not None and entry.tx_count:
            counts.append(("newTxs", 1))
        return tuple(counts)

    def _fanoutFiltered(self, entry, blocks, txs):
        """Address filters: O(transactions + matches), not O(clients x transactions)."""
        matches = {}
        if txs:
            by_address = self._by_address
            for i, tx in enumerate(entry.txs_data):
                for address in (tx["from_addr"], tx["to_addr"]):
                    subscribers = by_address.get(address)
                    if subscribers:
                        for client in subscribers:
                            found = matches.setdefault(client, [])
                            if not found or found[-1] != i:
                                found.append(i)
        recipients = 0
        for client in tuple(self._filtered):
            wants_blocks = blocks and "newBlocks" in client.channels
            indexes = matches.get(client)
            if not wants_blocks and not indexes:
                continue
            mode = client.tx_options.mode
            payload, n = entry.matching(indexes, mode)
            counts = []
            if wants_blocks:
                payload = entry.block_frame + payload
                counts.append(("newBlock", 1))
            if n:
                counts.append(("newTx" if mode in (PLAIN, HASHES) else "newTxs", n))
            if self._deliver(client, payload, tuple(counts)):
                for kind, k in counts:
                    self.metrics.messages_sent.labels(kind).inc(k)
            recipients += 1
        return recipients

    @_collectAfter
    def broadcastBlock(self, block):
        """
        Publish only a block's C{newBlock} (and remember it for resuming
        clients); L{broadcastTransactions} sends its transactions.  The live
        tail uses L{publishBlock}, which does both in one write per client.
        """
        entry = self.prepare(block)
        self._prepared = (block, entry)
        return self.publishEntry(entry, blocks=True, txs=False)

    @_collectAfter
    def broadcastTransactions(self, block, txs):
        """Publish a block's transactions (after L{broadcastBlock} of it, whose frames it reuses)."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] is block and txs is block.get("transactions"):
            entry = prepared[1]
        else:
            entry = Entry(events.block_data(block), [events.tx_data(block, tx, i) for i, tx in enumerate(txs)])
        if not entry.tx_count:
            return 0
        return self.publishEntry(entry, blocks=False, txs=True, remember=False)

    def remember(self, block):
        """Add a block to the history without sending it: what clients saw before a restart."""
        self.history.add(self.prepare(block))

    @_collectAfter
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
        self.history.rollback(data["common_ancestor"]["height"], data["removed"],
                              data["common_ancestor"]["hash"])
        recipients = dict(self._subscribers["newBlocks"])
        recipients.update(self._subscribers["newTxs"])
        self.log.info("reorg of depth {depth} back to {height} {hash}",
                      depth=depth, height=data["common_ancestor"]["height"],
                      hash=data["common_ancestor"]["hash"])
        sent = self.fanout(recipients, payload, (("reorg", 1),))
        self.metrics.broadcast_latency.labels("reorg").observe(time.perf_counter() - start)
        if self._observers:
            self._notify("reorg", data)
        return sent

    def replay(self, client, since, announce=None):
        """
        Catch a resuming client up from C{since} (C{{"height", "hash"}}, the
        last block it holds): a C{reorg} for its blocks that are gone, then
        every newer block as its subscription takes it, written in this same
        reactor turn so nothing live can slip in between.  Returns the
        number of blocks replayed, or C{None} when the history cannot serve it.
        """
        status, ancestor, removed = self.history.resume(since["height"], since["hash"])
        if status != "ok":
            return None
        entries = self.history.after(ancestor["height"])
        if announce is not None:
            announce(len(entries))
        items = []
        if removed:
            items.append((frame(events.encode({"type": "reorg", "data": {
                "depth": len(removed), "common_ancestor": ancestor, "removed": removed,
            }})), (("reorg", 1),)))
        blocks, mode = self._profile(client)
        addresses = client.tx_options.addresses
        for e in entries:
            counts = {}
            if addresses and mode is not None:
                indexes = [i for i, tx in enumerate(e.txs_data)
                           if tx["from_addr"] in addresses or tx["to_addr"] in addresses]
                txs, n = e.matching(indexes, mode)
                if blocks:
                    txs = e.block_frame + txs
                    counts["newBlock"] = counts.get("newBlock", 0) + 1
            else:
                txs, n = e.payload(blocks, mode)
                if blocks:
                    counts["newBlock"] = counts.get("newBlock", 0) + 1
                    n -= 1
            if n:
                kind = "newTx" if mode in (PLAIN, HASHES) else "newTxs"
                counts[kind] = counts.get(kind, 0) + n
            if txs:
                items.append((txs, tuple(counts.items())))
        # Through the queue, one block per write: the transport pauses us
        # after each and resumes us once it drained, so the write deadline
        # measures progress, and a long replay is not "too slow" by itself.
        for payload, counts in items:
            self._enqueue(client, payload, counts, replayed=True)
        if not client.paused:
            self._flush(client)
        return len(entries)

    def fanout(self, subscribers, payload, counts):
        """
        Write (or queue) one shared payload to every client in C{subscribers}
        (any iterable of L{Client}s), under the slow-client policy; C{counts}
        is C{((message type, how many), ...)} for the metrics.
        """
        written = 0
        # A snapshot: delivering may close a slow client, which edits the dict.
        for client in tuple(subscribers):
            if self._deliver(client, payload, counts):
                written += 1
        if written:
            for kind, n in counts:
                self.metrics.messages_sent.labels(kind).inc(written * n)
        for kind, n in counts:
            self.metrics.broadcast_recipients.labels(kind).inc(len(subscribers))
        return len(subscribers)

    def deliver(self, client, payload, count, kind):
        """
        Send C{payload} (framed bytes, or a list of them, holding C{count}
        messages of type C{kind}) to one client through its queue, under the
        slow-client policy; True if written now.
        """
        return self._send(client, payload, ((kind, count),))

    def _send(self, client, payload, counts):
        """L{deliver} for a payload of several message types: C{counts} is C{((type, n), ...)}."""
        if client.hub is None:
            return False
        written = self._deliver(client, payload, counts)
        if written:
            for kind, n in counts:
                self.metrics.messages_sent.labels(kind).inc(n)
        return written

    def _deliver(self, client, payload, counts):
        """Write now, or queue while the transport is paused; True if written."""
        if client.paused or client.queue:
            config = self.config
            if len(client.queue) - client.backlog >= config.send_queue:
                self.close(client, CLOSE_POLICY,
                           f"too slow: {len(client.queue) - client.backlog} messages waiting to be sent",
                           "slow_client")
                return False
            if client.paused and self.clock.seconds() - client.paused_since > config.write_deadline:
                self._closeStalled(client)
                return False
            self._enqueue(client, payload, counts)
            return False
        if payload.__class__ is list:
            client.transport.writeSequence(payload)
        else:
            client.transport.write(payload)
        return True

    def _enqueue(self, client, payload, counts, replayed=False):
        """Queue C{payload}; C{replayed} entries (replays, pings) do not count against the send queue."""
        count = sum(n for _, n in counts)
        client.queue.append((payload, counts, replayed))
        client.backlog += replayed
        client.queued += count
        self._queued_total += count
        self.metrics.queued_messages.set(self._queued_total)

    def _flush(self, client):
        """The transport drained: write what waited, until it pauses us again."""
        sent = {}
        while client.queue and not client.paused and client.hub is not None:
            payload, counts, replayed = client.queue.popleft()
            client.backlog -= replayed
            for kind, n in counts:
                client.queued -= n
                self._queued_total -= n
                sent[kind] = sent.get(kind, 0) + n
            if payload.__class__ is list:
                client.transport.writeSequence(payload)
            else:
                client.transport.write(payload)
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
        return max(0.01, min(c.ping_interval, c.write_deadline / 4, c.pong_timeout / 4,
                             c.handshake_timeout / 4))

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
        for channel, deadline in tuple(self._lingering.items()):
            if now >= deadline:
                self._lingering.pop(channel, None)
                if channel.transport is not None:
                    channel.transport.abortConnection()
        for channel, (deadline, ip) in tuple(self._pending.items()):
            if now >= deadline:
                self.unpend(channel)
                self.metrics.errors.labels("handshake_timeout").inc()
                transport = channel.transport
                if transport is not None:
                    transport.abortConnection()
        for protocol, deadline in tuple(self._closing.items()):
            if now >= deadline:
                self._closing.pop(protocol, None)
                if protocol.state != _CLOSED:
                    protocol.dropConnection(abort=True)
        ping = None
        if self._next_ping is None or now >= self._next_ping:
            self._next_ping = now + config.ping_interval
            ping = self._newPing(now)
        dead = []
        for client in self._clients.values():
            if now - client.last_seen > config.pong_timeout:
                dead.append(client)
            elif ping is not None:
                if client.paused or client.queue:
                    # Behind what waits, so its pong proves the client read that too.
                    self._enqueue(client, ping, (), replayed=True)
                else:
                    client.transport.write(ping)
        for client in dead:
            protocol = client.protocol
            behind = now - client.last_seen
            self.metrics.errors.labels("ping_timeout").inc()
            self.detach(client, f"no pong to our pings for {behind:.1f}s: gone, or not reading")
            protocol.dropConnection(abort=True)

    def _newPing(self, now):
        """This round's ping frame; remembers its payload for as long as a pong to it can matter."""
        payload = struct.pack("!Q", next(self._ping_rounds))
        self._pings[payload] = now
        horizon = now - self.config.pong_timeout - self.config.ping_interval
        while len(self._pings) > 1:
            oldest = next(iter(self._pings.values()))
            if oldest >= horizon:
                break
            self._pings.popitem(last=False)
        return _PING_HEADER + payload

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
        for channel in tuple(self._pending) + tuple(self._lingering):
            self.unpend(channel)
            self.unlinger(channel)
            if channel.transport is not None:
                channel.transport.abortConnection()
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
