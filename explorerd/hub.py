"""
The hub: every client, what it subscribed to, and the fan-out of blocks.

A block comes in as an L{Entry} (checked and framed once by its source) and
the same bytes objects are written to (or queued for) every subscriber, so a
client costs a write, not a JSON encode.  Each client is a streaming push
producer on its transport: once the kernel holds C{unsent_limit} bytes it
has not sent (L{explorerd.transport}) and the transport more than
C{write_buffer_size}, it pauses the client, and the hub queues references
to the shared frames instead of writing.  A client whose queue
overflows, or that stays paused past the write deadline, is closed as too
slow; nobody else waits for it.

One C{LoopingCall} on the clock we are given sweeps: the L{Keepalive}
(pings, pong timeout, write deadline), the L{SubscribeDeadline}
(connections that hold no subscription) and the L{ConnectionSlots}
(unfinished requests and closes).  There are no per-client timers.
"""

import itertools
import time
from collections import deque

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application.service import Service
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from explorerd import events
from explorerd.collector import collectAfter
from explorerd.events import frame
from explorerd.history import BATCH, BATCH_HASHES, BATCH_INPUT, HASHES, PLAIN, PLAIN_INPUT, History
from explorerd.idle import SubscribeDeadline
from explorerd.interfaces import IBlockSink, IHeadObserver, IPublicationObserver, IResumeHint
from explorerd.keepalive import CLOSE_POLICY, Keepalive, probeFrame
from explorerd.owed import SHED_AFTER, Owed
from explorerd.slots import ConnectionSlots
from explorerd.transport import readPending

CHANNELS = ("newBlocks", "newTxs", "logs")
_PER_TX_MODES = (PLAIN, HASHES, PLAIN_INPUT)

# Close codes (RFC 6455 section 7.4.1).
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED


class TxOptions:
    """
    How a client takes C{newTxs}: one message per transaction or one batch
    per block; full, hashes only, or full with the call data (C{input});
    all or only those touching C{addresses}.
    """

    __slots__ = ("batch", "hashes_only", "addresses", "input")

    def __init__(self, batch=False, hashes_only=False, addresses=None, input=False):
        self.batch = batch
        self.hashes_only = hashes_only
        self.addresses = frozenset(addresses) if addresses else None
        self.input = input

    @property
    def mode(self):
        if self.hashes_only:
            return BATCH_HASHES if self.batch else HASHES
        if self.input:
            return BATCH_INPUT if self.batch else PLAIN_INPUT
        return BATCH if self.batch else PLAIN


DEFAULT_TX_OPTIONS = TxOptions()


@implementer(IPushProducer)
class Client:
    """
    One subscriber as the hub sees it, registered as a streaming producer
    on its transport so that Twisted tells us when it cannot keep up.
    """

    __slots__ = ("id", "hub", "protocol", "transport", "peer", "kind", "channels", "tx_options",
                 "log_filter", "group", "log_index", "paused", "paused_since", "queue", "queued", "backlog",
                 "waiting_since", "replayed_at", "owed", "last_seen", "probe_height", "probe_at", "probe_last",
                 "probe_free", "__weakref__")

    def __init__(self, hub, client_id, protocol, peer, kind):
        self.id = client_id
        self.hub = hub
        self.protocol = protocol
        self.transport = protocol.transport
        self.peer = peer
        self.kind = kind
        self.channels = set()
        self.tx_options = DEFAULT_TX_OPTIONS
        self.log_filter = None
        self.group = None
        self.log_index = None  # where the hub finds it for logs: (index dict, key) or None
        self.paused = False
        self.paused_since = None
        self.queue = deque()
        self.queued = 0
        self.backlog = 0  # replayed blocks in the queue: not counted against send_queue
        self.waiting_since = None  # when the oldest broadcast still in the queue was queued
        self.replayed_at = None  # when the last replay ahead of queued broadcasts was sent
        self.owed = None  # what the newest block still owes it (L{Owed})
        self.last_seen = hub.clock.seconds()
        # Its oldest read probe not answered yet (L{Keepalive.probeSent}), the newest sent,
        # and whether it is catching up from a replay (not judged by its probes meanwhile).
        self.probe_height = self.probe_at = self.probe_last = None
        self.probe_free = False

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


@implementer(IBlockSink)
class Hub(Service):
    """
    Owns all clients and their subscriptions; publishes blocks to them.

    @ivar clock: an L{IReactorTime} for the sweep and for timestamps.
    @param reactor: the L{IReactorTime} whose turns a block's transactions
        are written between (L{Owed}); the clock when not given.
    @ivar slots: the L{ConnectionSlots} every connection takes one of.
    @ivar history: the L{History} resuming clients are served from.
    """

    name = "hub"
    log = Logger()

    def __init__(self, clock, config, metrics, reactor=None):
        self.clock = clock
        self.config = config
        self.metrics = metrics
        self.slots = ConnectionSlots(clock, config, metrics)
        self.keepalive = Keepalive(self, config, metrics)
        self.deadline = SubscribeDeadline(self, config)
        self.history = History(config.history_blocks)
        self._ids = itertools.count(1)
        self._clients = {}
        self._subscribers = {channel: {} for channel in CHANNELS}
        # Clients that take the same bytes for every block, by (blocks?, tx mode);
        # address-filtered clients get their own bytes, found through _by_address.
        self._groups = {}
        self._filtered = {}
        self._by_address = {}
        # logs subscribers: every log (one shared frame), else found through
        # their filter's addresses, else its first topic, else scanned.
        self._logs_all = {}
        self._logs_by_address = {}
        self._logs_by_topic = {}
        self._logs_scan = {}
        self._paused = {}
        self._queued_total = 0
        self._owed = Owed(clock if reactor is None else reactor, self._payOwed, self._restDone)
        self._probe = None  # the newest block's read probe frame, and its height
        self._previous = None  # the hub's clock when the previous publish began
        self._steady = False  # whether the previous block came a block time after the one before
        self._spared = False  # whether the previous block spared late clients (L{_shedUnread})
        self._sweep = LoopingCall(self._sweepOnce)
        self._sweep.clock = clock
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
        Tell an L{IPublicationObserver} (other wire formats: WAMP, the router
        publisher) of every block and reorg, after the hub's own clients.
        """
        if not IPublicationObserver.providedBy(observer):
            raise TypeError(f"{observer!r} does not provide IPublicationObserver")
        self._observers.append(observer)

    def _notify(self, tell):
        for observer in self._observers:
            self._notify1(observer, tell)

    def _notify1(self, observer, tell):
        try:
            tell(observer)
        except Exception:
            # One observer's bug must not cost the others their events.
            self.log.failure("observer {observer} failed", observer=observer)

    @property
    def connectionCount(self):
        """Connections holding a slot: WebSockets, and HTTP requests still arriving."""
        return self.slots.count

    @property
    def clientCount(self):
        return len(self._clients)

    # Clients.

    def attach(self, protocol, peer, kind="websocket"):
        """A handshake finished: make a client and register it as the transport's producer."""
        client = Client(self, next(self._ids), protocol, peer, kind)
        transport = protocol.transport
        # twisted.web's HTTPChannel registered itself as the producer before
        # the upgrade; it has nothing more to say on this connection.
        transport.unregisterProducer()
        transport.registerProducer(client, True)
        self._clients[client.id] = client
        self.deadline.idle(client, self.clock.seconds())
        self.metrics.connections.set(len(self._clients))
        self.metrics.connections_by_protocol.labels(kind).inc()
        self.metrics.connections_accepted.inc()
        return client

    def detach(self, client, reason):
        """Forget a client and free its queue; safe to call more than once."""
        if client.hub is None:
            return
        self._clients.pop(client.id, None)
        self.deadline.forget(client)
        for channel in client.channels:
            self._subscribers[channel].pop(client, None)
        self._ungroup(client)
        self._paused.pop(client, None)
        self._owed.forget(client)
        self.keepalive.forget(client)
        self._queued_total -= client.queued
        self.metrics.queued_messages.set(self._queued_total)
        client.queue.clear()
        client.queued = 0
        client.backlog = 0
        client.waiting_since = None
        if client.transport is not None:
            client.transport.unregisterProducer()
        client.hub = client.protocol = client.transport = None
        self.metrics.connections.set(len(self._clients))
        self.metrics.connections_by_protocol.labels(client.kind).dec()
        self.log.info("client {client} from {peer} detached: {reason}",
                      client=client.id, peer=client.peer, reason=reason)

    def pong(self, client, payload):
        """The client answered a ping (see L{Keepalive.pong})."""
        self.keepalive.pong(client, payload)

    def holdsSubscriptions(self, client, held):
        """
        Whether C{client} holds a subscription now, as its protocol counts
        them (C{/v1/stream}'s are counted here): while it holds none it is
        closed once the subscribe deadline passes (L{SubscribeDeadline}).
        """
        if client.hub is None:
            return
        if held:
            self.deadline.holding(client)
        else:
            self.deadline.idle(client, self.clock.seconds())

    def madeRequest(self, client):
        """C{client} asked for something (not a ping): its subscribe deadline starts again."""
        if client.hub is not None:
            self.deadline.used(client, self.clock.seconds())

    def close(self, client, code, reason, error=None):
        """
        Detach the client and start a close handshake with C{code} (counted
        under C{error} when given); an unfinished close is aborted by the sweep.
        """
        protocol = client.protocol
        if error is not None:
            self.metrics.errors.labels(error).inc()
        if error == "slow_client":
            reason = self._slowReason(client, reason)
        self.detach(client, reason)
        if protocol is not None:
            protocol.beginClose(code, reason)

    @staticmethod
    def _slowReason(client, reason, limit=123):
        """
        A slow client's close reason, naming the last block it was sent
        when its protocol can tell (L{IResumeHint}); within the 123 bytes
        a close frame's reason has room for.
        """
        protocol = client.protocol
        if not IResumeHint.providedBy(protocol):
            return reason
        hint = protocol.resumeHint(client)
        if not hint:
            return reason
        for text in (f"{reason}; {hint}", f"too slow; {hint}"):
            if len(text.encode("utf-8")) <= limit:
                return text
        return reason

    # Subscriptions.

    def subscribe(self, client, channels, tx_options=None, log_filter=None):
        """
        Add channels; C{tx_options} (a L{TxOptions}) sets how C{newTxs} is
        delivered when C{newTxs} is among them, and C{log_filter} (a
        L{LogFilter}; C{None}: every log) which logs a C{logs} subscriber
        gets.  Returns the channels after.
        """
        before = self._shape(client)
        for channel in channels:
            if channel not in client.channels:
                client.channels.add(channel)
                self._subscribers[channel][client] = None
        if "newTxs" in channels:
            client.tx_options = tx_options or DEFAULT_TX_OPTIONS
        if "logs" in channels:
            client.log_filter = None if log_filter is None or log_filter.everything else log_filter
        self._reshape(client, before)
        self.holdsSubscriptions(client, bool(client.channels))
        return sorted(client.channels)

    def unsubscribe(self, client, channels):
        before = self._shape(client)
        for channel in channels:
            if channel in client.channels:
                client.channels.discard(channel)
                self._subscribers[channel].pop(client, None)
        if "newTxs" not in client.channels:
            client.tx_options = DEFAULT_TX_OPTIONS
        if "logs" not in client.channels:
            client.log_filter = None
        self._reshape(client, before)
        self.holdsSubscriptions(client, bool(client.channels))
        return sorted(client.channels)

    def subscriberCount(self, channel):
        return len(self._subscribers[channel])

    @staticmethod
    def _profile(client):
        blocks = "newBlocks" in client.channels
        mode = client.tx_options.mode if "newTxs" in client.channels else None
        return blocks, mode

    def _shape(self, client):
        """
        What the indexes file C{client} under: its (blocks?, tx mode,
        addresses) and its (logs?, logs filter).
        """
        blocks, mode = self._profile(client)
        addresses = client.tx_options.addresses if mode is not None else None
        return (blocks, mode, addresses), ("logs" in client.channels, client.log_filter)

    def _reshape(self, client, before):
        """
        File C{client} anew after a (un)subscription, changing only the
        indexes whose part of it changed: a client that holds big filters
        and subscribes to C{newBlocks} again and again would otherwise
        have them re-indexed each time (~0.5 ms for 2,000 addresses, what
        50 small messages cost), for the price of one message.
        """
        (tx_before, logs_before), (tx_after, logs_after) = before, self._shape(client)
        if logs_before[0] != logs_after[0] or logs_before[1] is not logs_after[1]:
            self._unindexLogs(client)
            if logs_after[0]:
                self._indexLogs(client)
        if tx_before == tx_after:
            return
        if tx_before[2] and tx_before[2] == tx_after[2]:
            return  # filtered before and after, by the same addresses: the same index entries
        self._ungroupTxs(client, tx_before[2])
        self._groupTxs(client)

    def _groupTxs(self, client):
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

    def _indexLogs(self, client):
        flt = client.log_filter
        if flt is None:
            index, keys = self._logs_all, None
        elif flt.addresses is not None:
            index, keys = self._logs_by_address, flt.addresses
        elif flt.first is not None:
            index, keys = self._logs_by_topic, flt.first
        else:
            index, keys = self._logs_scan, None
        if keys is None:
            index[client] = None
        else:
            for key in keys:
                index.setdefault(key, {})[client] = None
        client.log_index = (index, keys)

    def _unindexLogs(self, client):
        where, client.log_index = client.log_index, None
        if where is None:
            return
        index, keys = where
        if keys is None:
            index.pop(client, None)
            return
        for key in keys:
            subscribers = index.get(key)
            if subscribers is not None:
                subscribers.pop(client, None)
                if not subscribers:
                    del index[key]

    def _ungroup(self, client):
        self._unindexLogs(client)
        self._ungroupTxs(client, client.tx_options.addresses)

    def _ungroupTxs(self, client, addresses):
        """Take C{client} out of its transaction group (the filtered one: by C{addresses})."""
        group, client.group = client.group, None
        if group is None:
            return
        group.pop(client, None)
        if group is self._filtered:
            for address in addresses or ():
                subscribers = self._by_address.get(address)
                if subscribers is not None:
                    subscribers.pop(client, None)
                    if not subscribers:
                        del self._by_address[address]

    # Publishing (IBlockSink).

    @collectAfter
    def publish(self, entry):
        """
        Publish a checked block, its transactions and its logs, in passes:
        every client's C{newBlock} first, then every client's transactions,
        then every client's logs (one write per client per pass), so no
        client's block waits behind other clients' transaction payloads;
        measured at 1,000 clients with ~190-tx blocks this cut first-frame
        p99 from 235 to 63 ms and left whole-block latency as it was.  The
        transactions and logs are written in slices of the reactor's time
        (L{Owed}); clients the previous block had not reached yet are closed
        first.  The history refuses a block that does not link
        (L{BrokenChain}) before anyone is written to.
        """
        start, now = time.perf_counter(), self.clock.seconds()
        previous, self._previous = self._previous, now
        steady = previous is not None and now - previous >= SHED_AFTER
        # Clients are judged only on a chain that has settled: this block and
        # the one before it each came a block time after the one before.  A
        # catch-up's burst (after a node outage) is read at the reader's own
        # pace for a block time before anyone is judged on it.
        settled = steady and self._steady
        if settled and not self._spared:
            self._spared = self._shedUnread(now, max(1, self.clientCount // 2))
        else:
            self._spared = False
        self._steady = steady
        self.history.add(entry)
        if settled:
            self._shedBehind(now, previous)
        self._shedOverloaded(entry)
        recipients = self._pass(entry, blocks=True, txs=False)
        self.metrics.broadcast_latency.labels("block").observe(time.perf_counter() - start)
        self.log.info("block {height} {hash} ({txs} txs) to {clients} clients",
                      height=entry.height, hash=entry.hash, txs=entry.tx_count, clients=recipients)
        if self._observers:
            self._notify(lambda observer: observer.published(entry))
        logs = bool(entry.logs and self._subscribers["logs"])
        if entry.tx_count or logs:
            self._probe = (probeFrame(entry.height), entry.height)
            self._owed.begin(entry, start)
            if entry.tx_count:
                self._pass(entry, blocks=False, txs=True, owe=True)
            if logs:
                self._logsPass(entry, owe=True)
            self._owed.run()
        return recipients

    def _restDone(self, entry, seconds):
        """Every client was paid what C{entry} owed it: its transactions and logs took C{seconds}."""
        if entry.tx_count:
            self.metrics.broadcast_latency.labels("transactions").observe(seconds)
        if entry.logs:
            self.metrics.broadcast_latency.labels("logs").observe(seconds)

    def _payOwed(self, client, owed):
        """
        Write what a block owes C{client} (L{Owed}), followed by the block's
        read probe (L{probeFrame}), in one C{send()}; queued behind what
        waits for it instead when its transport is paused, and then without
        a probe (the rules for a queue judge it).
        """
        if client.paused or client.queue:
            for payload, counts in owed:
                if not self._send(client, payload, counts) and client.hub is None:
                    return
            return
        probe, height = self._probe
        client.transport.writeSequence([payload for payload, _ in owed] + [probe])
        self.keepalive.probeSent(client, height, self.clock.seconds())
        messages_sent = self.metrics.messages_sent
        for _, counts in owed:
            for kind, n in counts:
                messages_sent.labels(kind).inc(n)

    def _shedUnread(self, now, limit):
        """
        A block comes a block time after the previous one: a client that
        has not answered the read probe of a block written to it
        L{SHED_AFTER} or more ago has not read that block yet (it waits in
        the client's receive buffer, unseen), so it cannot keep up with
        this chain; it is closed as too slow rather than hear of the new
        block that late, while everyone else does on time.  Their pongs
        may be waiting in our own socket buffers because the reactor was
        busy (the verdict is about the client, not about us): each one is
        read first.
        """
        late = self.keepalive.unread(now, SHED_AFTER)
        if not late:
            return False
        for client in late:
            if client.hub is not None:
                readPending(client.transport)
        late = [client for client in late if client.hub is not None and client.probe_at is not None
                and not client.probe_free and now - client.probe_at >= SHED_AFTER]
        if not late:
            return False
        # At most C{limit} (half of the clients) a block: when many fall
        # behind together (the machine they read on, or the link they
        # share, is what is slow), closing the ones furthest behind first
        # lets the rest catch up, instead of closing everyone at once.
        # Those spared are judged again by the probes sent from now on, and
        # not at the next block: what they still have to read was sent
        # while the others were there, and so is what their machine still
        # reads for the clients just closed.
        late.sort(key=lambda client: client.probe_at)
        for client in late[:limit]:
            age = now - client.probe_at
            self.close(client, CLOSE_POLICY,
                       f"too slow: block {client.probe_height} not read {age:.1f}s after it was sent", "slow_client")
        for client in late[limit:]:
            self.keepalive.forget(client)
        closed = min(limit, len(late))
        self.log.info("closed {n} clients that had not read a block sent a block time ago ({left} more are late)",
                      n=closed, left=len(late) - closed)
        return closed < len(late)

    def _shedBehind(self, now, previous):
        """
        Blocks come a block time apart, and a client still has a broadcast
        waiting in its queue that was queued before the previous block
        (at C{previous}): the kernel holds C{WEBSOCKET_UNSENT_LIMIT} unsent
        for it and its transport more, so it has not taken in the blocks
        before this one in a block time and cannot keep up with this chain.
        It is closed as too slow, rather than hear of this block seconds
        late.  Not for what was queued since the previous block (written
        late because the server was busy paying that block to everyone:
        the client has not had a block time for it), nor in a catch-up
        (L{SHED_AFTER}), nor for a replay (it waits behind none:
        L{Client.waiting_since}).
        """
        for client in tuple(self._paused):
            since = client.waiting_since
            if client.hub is not None and since is not None and since <= previous:
                self.close(client, CLOSE_POLICY, f"too slow: {now - since:.1f}s behind the chain", "slow_client")

    def _shedOverloaded(self, entry):
        """
        A new block came before the previous one's transactions and logs
        reached every client.  If they have been going for L{SHED_AFTER}
        the server cannot serve them all at this rate: the ones not reached
        are closed (1013, try again later) with where to resume, so that
        everyone else gets this block on time.  Younger, they are finished
        first (blocks that come together, as after a node outage).
        """
        behind = self._owed.entry
        if behind is None:
            return
        if self._owed.age() < SHED_AFTER:
            self._owed.finish()  # blocks that come together: not overload
            return
        shed = self._owed.shed()
        if not shed:
            return
        # Within the 123 bytes a close reason has: the block before the one not sent.
        reason = f"overloaded; resume with since {behind.height - 1} {behind.parent_hash}"
        for client in shed:
            self.close(client, CLOSE_TRY_AGAIN_LATER, reason, "overloaded")
        self.log.warn("overloaded: block {height} had not reached {n} clients when block {next} came; "
                      "closed them (1013)", height=behind.height, n=len(shed), next=entry.height)

    def remember(self, entry):
        """Add a block to the history without sending it: what clients saw before a restart."""
        self.history.add(entry)

    def announce(self, header):
        """A new head ahead of its block, to the observers that want heads first (L{IHeadObserver})."""
        for observer in self._observers:
            if IHeadObserver.providedBy(observer):
                self._notify1(observer, lambda o: o.announced(header))

    @collectAfter
    def publishReorg(self, depth, ancestor, removed):
        """
        Tell C{newBlocks} and C{newTxs} subscribers (each once) that the
        blocks in C{removed} (C{[{"height", "hash"}, ...]}, as published) are
        no longer canonical, back to C{ancestor} (C{{"height", "hash"}}).
        The replacement blocks follow as ordinary publishes.
        """
        start = time.perf_counter()
        data = {
            "depth": depth,
            "common_ancestor": {"height": ancestor["height"], "hash": ancestor["hash"]},
            "removed": [{"height": r["height"], "hash": r["hash"]} for r in removed],
        }
        payload = frame(events.encode({"type": "reorg", "data": data}))
        # Newest first: the order their logs are retracted in.
        gone = [e for e in map(self.history.canonical, reversed([r["hash"] for r in data["removed"]]))
                if e is not None]
        self.history.rollback(ancestor["height"], data["removed"], ancestor["hash"])
        recipients = {}
        for channel in CHANNELS:
            recipients.update(self._subscribers[channel])
        self.log.info("reorg of depth {depth} back to {height} {hash}",
                      depth=depth, height=ancestor["height"], hash=ancestor["hash"])
        sent = self.fanout(recipients, payload, (("reorg", 1),))
        if self._subscribers["logs"]:
            for entry in gone:
                if entry.logs:
                    self._logsPass(entry, removed=True)
        self.metrics.broadcast_latency.labels("reorg").observe(time.perf_counter() - start)
        if self._observers:
            self._notify(lambda observer: observer.reorganized(data, gone))
        return sent

    def _pass(self, entry, blocks, txs, owe=False):
        """
        One pass over every subscriber: the block frames, or the transaction
        frames (C{owe}: recorded as owed, written by L{Owed}).
        """
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
            counts = self._counts(wants_blocks, wants_mode, entry)
            if owe:
                recipients += self._oweAll(group, payload, counts)
            else:
                recipients += self.fanout(group, payload, counts)
        if self._filtered:
            recipients += self._passFiltered(entry, blocks, txs, owe)
        return recipients

    def _oweAll(self, subscribers, payload, counts):
        owe = self._owed.owe
        for client in subscribers:
            owe(client, payload, counts)
        for kind, n in counts:
            self.metrics.broadcast_recipients.labels(kind).inc(len(subscribers))
        return len(subscribers)

    @staticmethod
    def _counts(blocks, mode, entry):
        counts = []
        if blocks:
            counts.append(("newBlock", 1))
        if mode in _PER_TX_MODES and entry.tx_count:
            counts.append(("newTx", entry.tx_count))
        elif mode is not None and entry.tx_count:
            counts.append(("newTxs", 1))
        return tuple(counts)

    def _passFiltered(self, entry, blocks, txs, owe=False):
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
                counts.append(("newTx" if mode in _PER_TX_MODES else "newTxs", n))
            if owe:
                self._owed.owe(client, payload, tuple(counts))
            else:
                self._send(client, payload, tuple(counts))
            recipients += 1
        return recipients

    def _logsPass(self, entry, removed=False, owe=False):
        """
        A block's logs to their subscribers: O(logs + matches) through the
        indexes, not O(clients x logs).  Clients whose logs are the same
        share one frame.  C{owe}: recorded as owed, written by L{Owed}.
        """
        counts = (("logs", 1),)
        send = self._owed.owe if owe else self._send
        if self._logs_all:
            if owe:
                self._oweAll(self._logs_all, entry.logFrame(None, removed), counts)
            else:
                self.fanout(self._logs_all, entry.logFrame(None, removed), counts)
        matches = {}
        by_address, by_topic, scan = self._logs_by_address, self._logs_by_topic, self._logs_scan
        for i, log in enumerate(entry.logs):
            candidates = [by_address.get(log["address"])]
            if log["topics"]:
                candidates.append(by_topic.get(log["topics"][0]))
            candidates.append(scan)
            for subscribers in candidates:
                if subscribers:
                    for client in subscribers:
                        if client.log_filter.matches(log):
                            matches.setdefault(client, []).append(i)
        shared = {}  # clients whose matches are the same share one frame
        for client, indexes in matches.items():
            key = tuple(indexes)
            payload = shared.get(key)
            if payload is None:
                payload = shared[key] = entry.logFrame(indexes, removed)
            send(client, payload, counts)

    def _logsFor(self, client, entry, removed=False):
        """C{(payload, counts)} of one block's logs for one client (replays)."""
        if "logs" not in client.channels or not entry.logs:
            return b"", ()
        flt = client.log_filter
        indexes = None if flt is None else [i for i, log in enumerate(entry.logs) if flt.matches(log)]
        payload = entry.logFrame(indexes, removed)
        return payload, ((("logs", 1),) if payload else ())

    # Replay.

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
        if client.owed is not None:
            self._owed.pay(client)
        entries = self.history.after(ancestor["height"])
        if announce is not None:
            announce(len(entries))
        items = []
        if removed:
            items.append((frame(events.encode({"type": "reorg", "data": {
                "depth": len(removed), "common_ancestor": ancestor, "removed": removed,
            }})), (("reorg", 1),)))
            for r in reversed(removed):
                orphan = self.history.orphan(r["hash"])
                if orphan is not None:
                    payload, counts = self._logsFor(client, orphan, removed=True)
                    if payload:
                        items.append((payload, counts))
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
                    counts["newBlock"] = 1
            else:
                txs, n = e.payload(blocks, mode)
                if blocks:
                    counts["newBlock"] = 1
                    n -= 1
            if n:
                counts["newTx" if mode in _PER_TX_MODES else "newTxs"] = n
            logs, log_counts = self._logsFor(client, e)
            counts.update(log_counts)
            if txs or logs:
                items.append((txs + logs, tuple(counts.items())))
        # Through the queue, one block per write: the transport pauses us
        # after each and resumes us once it drained, so the write deadline
        # measures progress, and a long replay is not "too slow" by itself.
        if items:
            self.keepalive.replayed(client)
        for payload, counts in items:
            self._enqueue(client, payload, counts, replayed=True)
        if not client.paused:
            self._flush(client)
        return len(entries)

    # Delivery.

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
        Send C{payload} (framed bytes holding C{count} messages of type
        C{kind}) to one client through its queue, under the slow-client
        policy; True if written now.
        """
        return self._send(client, payload, ((kind, count),))

    def deliverBacklog(self, client, items):
        """
        Catch a client up with C{items} (C{[(payload, counts), ...]}, built
        by another protocol from the history, e.g. C{eth_subscribe}'s
        C{since}) the way L{replay} does: through its queue, one item per
        write, not counted against the send queue.
        """
        if client.hub is None:
            return
        if client.owed is not None:
            self._owed.pay(client)
        if items:
            self.keepalive.replayed(client)
        for payload, counts in items:
            self._enqueue(client, payload, counts, replayed=True)
        if not client.paused:
            self._flush(client)

    def sendTo(self, client, message):
        """
        One message to one client (a reply), behind whatever it has queued,
        so that replies and broadcasts reach it in the order they happened.
        """
        if client.hub is not None:
            self.deliver(client, frame(events.encode(message)), 1, message["type"])

    def sendControl(self, client, payload):
        """A control frame (our ping) behind whatever is queued for C{client}; not a message."""
        if client.owed is not None:
            self._owed.pay(client)
            if client.hub is None:
                return
        if client.paused or client.queue:
            self._enqueue(client, payload, (), replayed=True)
        else:
            client.transport.write(payload)

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
        if client.owed is not None:
            self._owed.pay(client)  # what an earlier block owes it goes first
            if client.hub is None:
                return False
        if client.paused or client.queue:
            waiting = len(client.queue) - client.backlog
            if waiting >= self.config.send_queue:
                self.close(client, CLOSE_POLICY, f"too slow: {waiting} messages waiting to be sent",
                           "slow_client")
                return False
            now = self.clock.seconds()
            if self.keepalive.stalled(client, now):
                self.keepalive.closeStalled(client, now)
                return False
            self._enqueue(client, payload, counts)
            return False
        client.transport.write(payload)
        return True

    def _enqueue(self, client, payload, counts, replayed=False):
        """
        Queue C{payload}; C{replayed} entries (replays, pings) do not count
        against the send queue, nor start the write deadline's clock.
        """
        count = sum(n for _, n in counts)
        queued_at = None if replayed else self.clock.seconds()
        client.queue.append((payload, counts, replayed, queued_at))
        if len(client.queue) == 1:
            client.waiting_since = queued_at
        client.backlog += replayed
        client.queued += count
        self._queued_total += count
        self.metrics.queued_messages.set(self._queued_total)

    def _flush(self, client):
        """The transport drained: write what waited, until it pauses us again."""
        sent = {}
        replayed_some = False
        while client.queue and not client.paused and client.hub is not None:
            payload, counts, replayed, _ = client.queue.popleft()
            replayed_some |= bool(replayed and counts)  # a replay, not a ping
            client.backlog -= replayed
            for kind, n in counts:
                client.queued -= n
                self._queued_total -= n
                sent[kind] = sent.get(kind, 0) + n
            client.transport.write(payload)
        # The write deadline's clock for the oldest broadcast now waiting: it
        # runs from when it was queued, or from when the replay ahead of it
        # (which is not lag, and can take long on a slow link) was sent.
        if replayed_some:
            client.replayed_at = self.clock.seconds()
        head = client.queue[0][3] if client.queue else None
        if head is None:
            client.replayed_at = None if not client.queue else client.replayed_at
        elif client.replayed_at is not None:
            head = max(head, client.replayed_at)
        client.waiting_since = head
        for kind, n in sent.items():
            self.metrics.messages_sent.labels(kind).inc(n)
        self.metrics.queued_messages.set(self._queued_total)

    # The sweep.

    def _sweepInterval(self):
        c = self.config
        deadlines = [c.ping_interval, c.write_deadline / 4, c.pong_timeout / 4, c.handshake_timeout / 4]
        if c.subscribe_timeout:
            deadlines.append(c.subscribe_timeout / 4)
        return max(0.01, min(deadlines))

    def _sweepOnce(self):
        try:
            now = self.clock.seconds()
            self.slots.sweep(now)
            self.deadline.sweep(now)
            self.keepalive.sweep(now, tuple(self._clients.values()), self._paused)
        except Exception:
            # A LoopingCall stops for good after one exception.
            self.log.failure("hub sweep failed; it will run again next tick")

    def startService(self):
        super().startService()
        self.slots.stopping = False
        self.keepalive.start(self.clock.seconds())
        self._sweep.start(self._sweepInterval(), now=False)

    def stopService(self):
        """
        Say goodbye: close every connection with 1001 and wait (bounded by
        the shutdown timeout) for the close handshakes, then abort the rest.
        """
        super().stopService()
        self.slots.stopping = True
        if self._sweep.running:
            self._sweep.stop()
        self._owed.shed()  # everyone is closed with 1001 and resumes with since
        for client in tuple(self._clients.values()):
            self.close(client, CLOSE_GOING_AWAY, "server shutting down")
        self.slots.abortUnfinished()
        for protocol in self.slots.protocols:
            if protocol.state == _OPEN:
                protocol.beginClose(CLOSE_GOING_AWAY, "server shutting down")
            elif protocol.state != _CLOSED and not self.slots.isClosing(protocol):
                protocol.dropConnection(abort=True)
        self.log.info("shutting down: closing {n} connections", n=len(self.slots.protocols))
        return self.slots.whenDrained(self.config.shutdown_timeout)
