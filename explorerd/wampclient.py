"""
explorerd as a client of a WAMP router (Crossbar.io), for scale-out.

Tail → router → edges::

    explorerd --rpc-url ... --wamp-router ws://router:8088/ws     (the tail; publishes)
    explorerd --source wamp --wamp-router ws://router:8088/ws      (an edge; as many as needed)

L{RouterLink} keeps one WAMP session on the router and reconnects with
exponential backoff and jitter (0.25 s doubling up to C{--wamp-router-retry});
the backoff resets only once a session has joined, so a router that refuses
us (bad ticket, no such realm) is retried as slowly as one that is down.  Ticket
authentication when C{--wamp-router-ticket} is set, else anonymous.

L{RouterPublisher} (on the tail) observes the hub and publishes every block,
transaction and reorg to C{explorer.block}, C{explorer.tx} and
C{explorer.reorg}, and registers C{explorer.head} and
C{explorer.blocks_since} on the router, answered from the tail's history.
It never holds the tail back: a publish is a write to the router
connection.  While the router is unreachable, or more than 4 MiB wait unsent
to it (it is not reading), events are B{dropped}, a whole block or a whole
block's transactions at a time, and counted
(C{explorer_wamp_router_dropped_total}); nothing else is buffered.  The
gap is closed by the edges, which catch up through C{explorer.blocks_since}
when they rejoin or see a block that does not follow theirs.

L{EdgeSource} (C{--source wamp}) subscribes to C{explorer.} (prefix, one
subscription, so the three topics arrive in the publisher's order) and feeds
the hub of this process with whole blocks (a block with all its
transactions), so the edge's raw and WAMP clients, history, resume and
limits work as on the tail.  Blocks are checked to follow the edge's newest
block; when one does not (events lost while the router or the tail was away,
or the edge joined mid-block), the edge calls C{explorer.blocks_since} with
its newest block and applies the answer (a reorg, then the missing blocks)
before going on; events arriving meanwhile wait in order.  If the tail is
not there to answer, the next block that does not follow ours asks again;
if the gap is older than the tail's history, the edge goes on from the next
live block and its clients see a gap in heights (as after a long outage of
the tail itself).
"""

import collections
from functools import partial

from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import RegisterOptions, SubscribeOptions
from prometheus_client import Counter
from twisted.application.service import Service
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from explorerd import events
from explorerd.collector import heldOff
from explorerd.history import Entry
from explorerd.interfaces import IBlockSink, IPublicationObserver
from explorerd.routerlink import RouterLink
from explorerd.wamp import BLOCK, HISTORY_UNAVAILABLE, LOG, PROCEDURES, REORG, TX, Procedures, publications, retractions

log = Logger()

# Unsent bytes to the router beyond which the publisher drops events.
_SEND_BUFFER = 4 << 20


# ---------------------------------------------------------------------------
# The tail's side: publish what the hub publishes.

@implementer(IPushProducer)
class _Flow:
    """Whether the router connection's send buffer is full (Twisted pauses us)."""

    paused = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.paused = True


class _OnTheRouter(Service):
    """A service whose work is done over a L{RouterLink} session (C{self.link})."""

    _session = None

    def health(self):
        return self.link.health()

    def startService(self):
        super().startService()
        self.link.startService()

    def stopService(self):
        super().stopService()
        self._session = None
        return self.link.stopService()


class PublisherMetrics:
    def __init__(self, registry):
        r = registry
        self.published = Counter(
            "explorer_wamp_router_published_total", "Events published to the WAMP router, by topic.",
            ["topic"], registry=r)
        self.dropped = Counter(
            "explorer_wamp_router_dropped_total",
            "Events not published to the WAMP router because it was unreachable or not reading, by topic.",
            ["topic"], registry=r)


@implementer(IPublicationObserver)
class RouterPublisher(_OnTheRouter):
    """Publishes everything the hub publishes to the router; registers the history procedures there."""

    name = "wamp-router"

    def __init__(self, reactor, hub, config, registry, clock=None):
        self.hub = hub
        self.procedures = Procedures(hub.history)
        self.metrics = PublisherMetrics(registry)
        self.link = RouterLink(reactor, config, self._joined, self._left, registry, clock=clock)
        self._session = None
        self._flow = _Flow()
        hub.addObserver(self)

    async def _joined(self, session):
        for procedure in PROCEDURES:
            await session.register(partial(self._answer, procedure), procedure,
                                   options=RegisterOptions(force_reregister=True))
        self._flow = _Flow()
        transport = session._transport.transport
        # Twisted pauses a producer at 64 KiB unsent, less than one busy
        # block's transactions: allow a few blocks in flight, drop past that.
        transport.bufferSize = _SEND_BUFFER
        transport.registerProducer(self._flow, True)
        self._session = session

    def _left(self):
        self._session = None

    def _answer(self, procedure, *args, **kwargs):
        return self.procedures.call(procedure, args, kwargs)

    def published(self, entry):
        for topic, items in publications(entry):
            self._publish(topic, items)

    def reorganized(self, reorg, removed):
        for topic, items in retractions(reorg, removed):
            self._publish(topic, items)

    def _publish(self, topic, items):
        session = self._session
        if session is None or self._flow.paused or not session.is_attached():
            self.metrics.dropped.labels(topic).inc(len(items))
            return
        publish = session.publish
        done = 0
        try:
            for item in items:
                publish(topic, item)
                done += 1
        except Exception as e:
            log.warn("publishing to the WAMP router failed: {error}", error=repr(e))
        self.metrics.published.labels(topic).inc(done)
        if done < len(items):
            self.metrics.dropped.labels(topic).inc(len(items) - done)


# ---------------------------------------------------------------------------
# The edge's side: feed the hub from the router.

class EdgeMetrics:
    def __init__(self, registry):
        r = registry
        self.blocks = Counter(
            "explorer_wamp_edge_blocks_total", "Blocks this edge published from the router.", registry=r)
        self.reorgs = Counter(
            "explorer_wamp_edge_reorgs_total", "Reorgs this edge published from the router.", registry=r)
        self.resyncs = Counter(
            "explorer_wamp_edge_resyncs_total",
            "Catch-ups through explorer.blocks_since, by outcome.", ["outcome"], registry=r)
        self.discarded = Counter(
            "explorer_wamp_edge_discarded_total",
            "Router events an edge could not use, by reason.", ["reason"], registry=r)


class EdgeSource(_OnTheRouter):
    """C{--source wamp}: the router's events, as whole blocks, into the hub."""

    name = "edge"
    BACKLOG = 100_000

    def __init__(self, reactor, hub, config, registry, clock=None):
        self.hub = IBlockSink(hub)
        self.metrics = EdgeMetrics(registry)
        self.link = RouterLink(reactor, config, self._joined, self._left, registry, clock=clock)
        self._session = None
        self._pending = None  # [block_data, [tx_data, ...]] waiting for its transactions
        self._syncing = False
        self._backlog = collections.deque()
        self._gap_ok = False
        self._more = False
        self._tail_missing = False

    def health(self):
        status = super().health()
        status["status"] = "ok" if status["connected"] else "degraded"
        newest = self.hub.history.newest
        status["height"] = None if newest is None else newest.height
        return status

    async def _joined(self, session):
        await session.subscribe(self._onEvent, "explorer.", options=SubscribeOptions(match="prefix", details=True))
        self._session = session
        self._pending = None
        # Catch up on what the router carried while we were away.
        self._resync("joined the router")

    def _left(self):
        self._session = None
        self._pending = None

    def _onEvent(self, data, details=None):
        topic = details.topic if details is not None else None
        # A live event: if the tail was missing a moment ago, it may be back.
        self._tail_missing = False
        if self._syncing:
            if len(self._backlog) >= self.BACKLOG:
                self.metrics.discarded.labels("backlog_full").inc()
                return
            self._backlog.append((topic, data))
            return
        self._apply(topic, data)

    def _apply(self, topic, data):
        if not isinstance(data, dict):
            self.metrics.discarded.labels("invalid").inc()
            return
        if topic == BLOCK:
            if self._pending is not None:
                self.metrics.discarded.labels("incomplete_block").inc()
            self._pending = [data, [], None]
            self._completeIfWhole()
        elif topic == TX:
            pending = self._pending
            if pending is None or data.get("block_hash") != pending[0].get("hash"):
                # We joined in the middle of a block; its block event is the
                # resync's business.
                self.metrics.discarded.labels("orphan_tx").inc()
                return
            pending[1].append(data)
            self._completeIfWhole()
        elif topic == LOG:
            if data.get("removed"):
                return  # our own hub retracts them when the reorg comes
            pending = self._pending
            if pending is None or data.get("block_hash") != pending[0].get("hash"):
                self.metrics.discarded.labels("orphan_logs").inc()
                return
            pending[2] = data.get("logs")
            self._completeIfWhole()
        elif topic == REORG:
            self._pending = None
            self._reorg(data)
        else:
            self.metrics.discarded.labels("unknown_topic").inc()

    def _completeIfWhole(self):
        """A block is whole once its transactions and, if it has any, its logs are in."""
        block, txs, logs = self._pending
        if len(txs) < (block.get("tx_count") or 0):
            return
        if block.get("log_count") and logs is None:
            return
        self._complete()

    def _complete(self):
        block, txs, logs = self._pending
        self._pending = None
        history = self.hub.history
        if history.canonical(block.get("hash")) is not None:
            return  # we have it (a resync brought it first)
        newest = history.newest
        if newest is None or block.get("parent_hash") == newest.hash or self._gap_ok:
            if newest is not None and block.get("parent_hash") != newest.hash:
                log.warn("edge: block {height} {hash} does not follow our newest {newest}; "
                         "the tail could not fill the gap, going on from here",
                         height=block.get("height"), hash=block.get("hash"), newest=newest.height)
                # The history must not link across the gap (it would refuse the block).
                history.forget()
            self._publish(block, txs, logs)
            return
        if self._tail_missing:
            # The catch-up just failed and this block waited for it: drop it;
            # the next live block that does not follow asks again.
            self.metrics.discarded.labels("unlinked").inc()
            return
        # Something went missing: catch up from the tail's history, then go
        # on with this block (and whatever arrives meanwhile).
        if logs is not None:
            self._backlog.appendleft((LOG, {"block_hash": block.get("hash"), "removed": False, "logs": logs}))
        self._backlog.extendleft([(TX, tx) for tx in reversed(txs)])
        self._backlog.appendleft((BLOCK, block))
        self._resync(f"block {block.get('height')} does not follow our newest block {newest.height}")

    def _publish(self, block, txs, logs):
        if logs is None and block.get("log_count") == 0:
            logs = []  # no logs: the tail publishes no explorer.log event for the block
        try:
            with heldOff():
                self.hub.publish(Entry.fromWire(block, txs, logs))
        except events.InvalidBlock as e:
            self.metrics.discarded.labels("invalid").inc()
            log.warn("edge: discarded an invalid block from the router: {error}", error=str(e))
            return False
        self._gap_ok = False
        self.metrics.blocks.inc()
        return True

    def _reorg(self, data):
        try:
            ancestor = data["common_ancestor"]
            height, block_hash = ancestor["height"], ancestor["hash"]
        except (KeyError, TypeError):
            self.metrics.discarded.labels("invalid").inc()
            return
        history = self.hub.history
        newest = history.newest
        if newest is None or newest.height <= height:
            return  # nothing we published is affected
        ours = history.canonical(block_hash)
        if ours is None or ours.height != height:
            self._resync(f"a reorg back to {height} {block_hash}, a block we do not hold")
            return
        self._rollback(ours)

    def _rollback(self, ancestor):
        removed = [e.ref() for e in self.hub.history.after(ancestor.height)]
        if removed:
            self.hub.publishReorg(len(removed), ancestor.ref(), removed)
            self.metrics.reorgs.inc()

    def _resync(self, why):
        """Ask the tail (through the router) for everything after our newest block."""
        if self._syncing:
            return  # the backlog is applied when the catch-up in flight is done
        newest = self.hub.history.newest
        session = self._session
        if newest is None or session is None:
            # Nothing to catch up from, or nobody to ask: go on from here.
            self._gap_ok = newest is not None
            self._drain()
            return
        self._syncing = True
        log.info("edge: catching up after block {height} ({why})", height=newest.height, why=why)
        d = session.call("explorer.blocks_since", newest.height, newest.hash)
        d.addCallbacks(self._caughtUp, self._notCaughtUp, callbackArgs=(newest,))
        d.addErrback(lambda f: log.failure("edge: applying a catch-up failed", f))
        d.addBoth(self._synced)

    def _caughtUp(self, result, newest):
        reorg, blocks = result.get("reorg"), result.get("blocks") or []
        if reorg:
            ancestor = self.hub.history.canonical(reorg["common_ancestor"]["hash"])
            if ancestor is not None:
                self._rollback(ancestor)
        published = 0
        for item in blocks:
            block, txs = item["block"], item["txs"]
            if self.hub.history.canonical(block["hash"]) is None and self._publish(block, txs, item.get("logs")):
                published += 1
        self.metrics.resyncs.labels("ok").inc()
        self._more = bool(result.get("more"))
        log.info("edge: caught up with {n} blocks from the tail's history{more}", n=published,
                 more=", asking for more" if self._more else "")

    def _notCaughtUp(self, failure):
        error = failure.value.error if failure.check(ApplicationError) else repr(failure.value)
        if error == HISTORY_UNAVAILABLE:
            # The tail's history does not reach back to us: a gap it is.
            self.metrics.resyncs.labels("unavailable").inc()
            log.warn("edge: the gap is older than the tail's history ({error}); going on from the "
                     "next block", error=error)
            self._gap_ok = True
        else:
            # The tail is not there (yet): its next block, which will not
            # follow ours either, tries again.
            self.metrics.resyncs.labels("failed").inc()
            self._tail_missing = True
            log.warn("edge: could not catch up ({error}); trying again with the next block", error=error)

    def _synced(self, _):
        self._syncing = False
        if self._more:
            self._more = False
            self._resync("the tail has more")
        else:
            self._drain()

    def _drain(self):
        while self._backlog and not self._syncing:
            topic, data = self._backlog.popleft()
            self._apply(topic, data)
