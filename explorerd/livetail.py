"""
The live-tail: follow one Ethereum JSON-RPC node and hand its blocks to the
hub in chain order, never skipping or repeating one.

One C{LoopingCall} on the clock we are given runs L{LiveTail.poll}; polls
never overlap and never fail (a LoopingCall stops for good after one
exception): faults are counted, logged and retried with backoff and jitter.
A poll asks for the head, fetches the new blocks and then, by hash in one
more round trip, their receipts (or only their logs: C{receipts=}), checks
every block with them in full into the L{Entry} the hub publishes
(L{validate}), and follows parent hashes: a block
that does not extend the last one published is a reorg, walked back to the
common ancestor and announced (C{hub.publishReorg}) before the new branch.
The position is saved (L{TailState}) before a batch reaches any client, so
a restart republishes nothing a client has, and gives the hub back its
history (C{hub.remember}) before publishing anything new.

How the walk handles heads that stall or go back, null blocks, reorgs deeper
than we remember, re-anchoring, the restore after a restart, and nodes without
C{eth_getBlockReceipts} or with pruned logs: C{docs/livetail.md}.
"""

import random
import time
from collections import deque
from typing import NamedTuple
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from explorerd import events
from explorerd.collector import heldOff
from explorerd.history import Entry
from explorerd.interfaces import IBlockSink
from explorerd.jsonrpc import (
    RPCError,
    RPCFailure,
    RPCHTTPError,
    RPCProtocolError,
    RPCTimeout,
    RPCUnavailable,
)
from explorerd.tailstate import Position

__all__ = ["LiveTail", "TailMetrics", "TailFault", "BadBlock", "validate", "redact", "RECEIPTS_MODES"]

_GET = "eth_getBlockByNumber"
_GET_BATCH = "batch[eth_getBlockByNumber]"
_HEADER = "eth_getBlockByNumber[header]"
_BY_HASH = "eth_getBlockByHash"
_BY_HASH_BATCH = "batch[eth_getBlockByHash]"
_NUMBER = "eth_blockNumber"
_RECEIPTS = "eth_getBlockReceipts"
_RECEIPTS_BATCH = "batch[eth_getBlockReceipts]"
_LOGS = "eth_getLogs"
_LOGS_BATCH = "batch[eth_getLogs]"
# A block and what comes with it, fetched by number in one round trip.
_GET_WITH = {"block": "batch[eth_getBlockByNumber,eth_getBlockReceipts]",
             "logs": "batch[eth_getBlockByNumber,eth_getLogs]"}

#: What the tail fetches with each block: C{auto} its receipts, else its
#: logs, else nothing, as far as the node can; C{block} its receipts
#: (C{eth_getBlockReceipts}); C{logs} only its logs (C{eth_getLogs}); C{off}
#: neither (logs unknown).
RECEIPTS_MODES = ("auto", "block", "logs", "off")
# What the tail is fetching: receipts ("block"), logs, or nothing ("off").
_SOURCES = ("block", "logs", "off")

# JSON-RPC error codes by which a node says it has no such method: -32601
# (method not found); anvil and some providers say -32602 (invalid params).
_UNSUPPORTED = (-32601, -32602)
# "pruned history unavailable" (geth, the replay node): the node cannot give
# the logs of that block, now or later.
_PRUNED = 4444

#: A block's way through the tail, by stage (L{TailMetrics.block_stage}).
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REORG_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)

# Bounds a branch that flips on every request: report this many reorgs,
# then let the next poll carry on (never spin inside one poll).
_MAX_REORGS_PER_POLL = 8

# Adaptive polling: block intervals the block time is learned from (their
# median), and the fewest before it is used.
_BLOCK_TIME_SAMPLES = 16
_MIN_BLOCK_TIME_SAMPLES = 3
# The shortest wait between adaptive polls.
_MIN_ADAPTIVE_STEP = 0.05

# Polls in which restoring the history failed though the node answered
# eth_blockNumber, before we carry on without (the rest of) it.
_MAX_RESTORE_FAILURES = 3

# Checking a batch, the reactor gets a turn at least this often (s).
_CHECK_SLICE = 0.005

# After a notification for a block the node does not serve yet: look again after these delays (s).
_HINT_RETRIES = (0.05, 0.1, 0.2)


class TailFault(Exception):
    """The node answered, but not with something we can use; retried like a network fault."""

    kind = "inconsistent"

    def __init__(self, method, message):
        super().__init__(f"{method}: {message}")
        self.method = method


class BadBlock(TailFault):
    """A block (or header) that fails validation: never published, fetched again later."""

    kind = "invalid_block"

    def __init__(self, method, height, reason):
        super().__init__(method, f"block {height}: {reason}")
        self.height = height
        self.reason = reason


class _Extras(NamedTuple):
    """What came with one block besides itself: its receipts, or its logs, or neither."""

    receipts: list = None
    logs: list = None
    pruned: bool = False  # neither, because the node said its logs are pruned
    method: str = None  # the call that fetched them


_NO_EXTRAS = _Extras()


def _unsupported(answer):
    return isinstance(answer, RPCError) and answer.code in _UNSUPPORTED


def _theirs(block, answer, source):
    """
    Whether C{answer}, fetched by number beside C{block}, is that block's
    receipts (or logs): a list whose every item names its hash, or an empty
    list where nothing else can be (no transactions; for logs, an empty
    bloom filter).
    """
    if not isinstance(answer, list):
        return False
    block_hash = block.get("hash")
    if not answer:
        if source == "block":
            return not block.get("transactions")
        bloom = block.get("logsBloom")
        return isinstance(bloom, str) and not bloom.strip("0x")
    return all(isinstance(item, dict) and item.get("blockHash") == block_hash for item in answer)


def _hashesOf(blocks):
    """
    The hashes of the blocks up to the first that is missing or has no
    well-formed hash (there is nothing to publish from there on).
    """
    hashes = []
    for block in blocks:
        try:
            hashes.append(events.block_data(block)["hash"])
        except events.InvalidBlock:
            break
    return hashes


def _heights(heights):
    """C{"block 7"}, C{"blocks 7, 9"}: for logs."""
    return ("block " if len(heights) == 1 else "blocks ") + ", ".join(map(str, heights))


def redact(url):
    """
    C{scheme://host:port} of a node URL, for logs and C{/healthz}: providers
    put API keys in the path or the userinfo, which must not leak.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except (TypeError, ValueError):
        return "?"
    rest = "/..." if parts.path not in ("", "/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _kind(failure_value):
    """A short label for an error, for metrics and logs."""
    e = failure_value
    if isinstance(e, TailFault):
        return e.kind
    if isinstance(e, RPCTimeout):
        return "timeout"
    if isinstance(e, RPCUnavailable):
        return "unavailable"
    if isinstance(e, RPCHTTPError):
        return "http"
    if isinstance(e, RPCProtocolError):
        return "protocol"
    if isinstance(e, RPCError):
        return "rpc_error"
    if isinstance(e, events.InvalidBlock):
        return "invalid_block"
    return "internal"


def validate(block, height, method=_GET, full=True, receipts=None, logs=None):
    """
    Check a block from the node before anything is published: with C{full},
    the whole block, every transaction included, with its C{receipts} or
    its C{logs} if given (they must be the block's own), checked into the
    L{Entry} the hub publishes; else a header, checked into its C{newBlock}
    data (for hash comparisons).  Raises L{BadBlock}.
    """
    try:
        checked = Entry.fromNode(block, receipts, logs) if full else events.block_data(block)
    except events.InvalidBlock as e:
        raise BadBlock(method, height, str(e)) from None
    number = checked.height if full else checked["height"]
    if number != height:
        raise BadBlock(method, height, f"the node answered with block number {number}")
    return checked


class TailMetrics:
    """The tail's Prometheus metrics (C{explorer_tail_*}), in the registry we are given."""

    def __init__(self, registry=None):
        r = CollectorRegistry() if registry is None else registry
        self.registry = r
        self.head = Gauge("explorer_tail_head_height",
                          "Latest block height the node reported.", registry=r)
        self.published_height = Gauge("explorer_tail_published_height",
                                      "Height of the last block published to clients.", registry=r)
        self.blocks_behind = Gauge("explorer_tail_blocks_behind",
                                   "Node head minus the last published height.", registry=r)
        self.lag_seconds = Gauge("explorer_tail_lag_seconds",
                                 "Now minus the timestamp of the last published block.", registry=r)
        self.rpc_calls = Counter("explorer_tail_rpc_calls_total",
                                 "JSON-RPC requests made by the tail, by method.", ["method"], registry=r)
        self.rpc_errors = Counter("explorer_tail_rpc_errors_total",
                                  "Failed JSON-RPC requests and unusable answers, by method and kind.",
                                  ["method", "kind"], registry=r)
        self.rpc_latency = Histogram("explorer_tail_rpc_latency_seconds",
                                     "JSON-RPC request latency, by method.", ["method"],
                                     buckets=RPC_BUCKETS, registry=r)
        self.reorgs = Counter("explorer_tail_reorgs_total",
                              "Chain reorganisations announced to clients.", registry=r)
        self.reorg_depth = Histogram("explorer_tail_reorg_depth",
                                     "Blocks removed per announced reorganisation.",
                                     buckets=REORG_BUCKETS, registry=r)
        self.blocks_published = Counter("explorer_tail_blocks_published_total",
                                        "Blocks handed to the hub.", registry=r)
        self.transactions_published = Counter("explorer_tail_transactions_published_total",
                                              "Transactions handed to the hub.", registry=r)
        self.polls = Counter("explorer_tail_polls_total",
                             "Polls of the node, by outcome (ok, failed).", ["outcome"], registry=r)
        self.skipped = Counter("explorer_tail_blocks_skipped_total",
                               "Heights never published because the tail re-anchored at the head "
                               "(more than max_catchup blocks behind).", registry=r)
        self.receipts_mode = Gauge("explorer_tail_receipts_mode",
                                   "1 for what the tail fetches with each block: its receipts "
                                   "(block), only its logs (logs), or nothing (off).", ["mode"],
                                   registry=r)
        self.receipts_fallbacks = Counter("explorer_tail_receipts_fallbacks_total",
                                          "Times receipts=auto fell back because the node does not "
                                          "have a method, by the mode it fell back to.", ["mode"],
                                          registry=r)
        self.block_stage = Histogram(
            "explorer_tail_block_stage_seconds",
            "Each published block's way through explorerd, by stage: fetch (from what made the "
            "tail look -- the node's newHeads notification, or the poll's start -- to the block "
            "and its receipts decoded), check (validation and building its frames), publish "
            "(every client's write handed to its connection); announce (push: from the "
            "notification to the block's header handed to newHeads subscribers ahead of it).",
            ["stage"],
            buckets=STAGE_BUCKETS, registry=r)
        self.triggers = Counter("explorer_tail_polls_started_total",
                                "Polls started, by what started them: push (a newHeads "
                                "notification), tick (the poll interval) or due (adaptive "
                                "polling: the next block is due).", ["by"], registry=r)
        self.logs_unavailable = Counter("explorer_tail_logs_unavailable_total",
                                        "Blocks published or restored with their logs unknown "
                                        "because the node said they are pruned.", registry=r)


class LiveTail(Service):
    """
    Polls the node and publishes its blocks, transactions and reorgs to the hub.

    @param clock: an L{IReactorTime} for the polling loop and the backoff.
    @param rpc: an L{explorerd.jsonrpc.JSONRPCClient} (not closed by us).
    @param hub: the L{IBlockSink} blocks are handed to (the hub).
    @param state: a L{TailState} to resume from and save to, or C{None}.
    @param remember: how many of the last published blocks the state file
        keeps, and a restart restores into the hub's history (at least
        C{max_reorg_depth + 1}, the default).
    @param max_lag: blocks behind the node's head before L{health} says
        C{degraded}.
    @param max_lag_seconds: optionally, also C{degraded} when the last
        published block is older than this (a node that stopped syncing).
    @param now: wall-clock time, compared with block timestamps.
    @param max_backoff: the longest wait, in seconds, between polls while
        the node fails (C{EXPLORERD_RPC_RETRY}); a retry comes at the first
        tick after it.
    @param rng: a C{random.Random} for the backoff jitter.
    @param adaptive: besides the fixed tick, poll when the next block is
        due, from the block time learned from the timestamps of the last
        blocks published, and every quarter C{poll_interval} while it is
        late (up to half a block time): for nodes that cannot push.
    @param sync: runs a blocking function off the reactor thread and
        returns a Deferred of it (C{deferToThreadPool}): the state file is
        then written (not fsynced) before each batch reaches clients, which
        is all a killed process needs, and fsynced in a thread after (for a
        machine crash); C{None}: written and fsynced before, on the reactor.
    @param reactor: the reactor, given a turn every few ms while a long
        catch-up batch is checked (~2.5 ms per 200-transaction block: 50 of
        them would hold it for over 100 ms); C{None}: never (a test's Clock).
    @param receipts: what to fetch with each block, by its hash (one of
        L{RECEIPTS_MODES}): C{"auto"}, its receipts (C{eth_getBlockReceipts})
        and, if the node does not have that method, its logs
        (C{eth_getLogs}), and if not that either, nothing, deciding once for
        the run; C{"block"}, its receipts, C{"logs"}, its logs, or the
        poll fails; C{"off"}, nothing (the logs are unknown).
    """

    name = "livetail"
    log = Logger()

    def __init__(self, clock, rpc, hub, *, poll_interval=1.0, max_reorg_depth=64,
                 max_catchup=1000, state=None, max_lag=10, max_lag_seconds=None,
                 batch_size=50, max_backoff=30.0, registry=None, now=time.time, rng=None,
                 remember=None, receipts="auto", adaptive=False, sync=None, reactor=None):
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval!r}")
        if max_reorg_depth < 1:
            raise ValueError(f"max_reorg_depth must be >= 1, got {max_reorg_depth!r}")
        if max_catchup < 1:
            raise ValueError(f"max_catchup must be >= 1, got {max_catchup!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if max_backoff <= 0:
            raise ValueError(f"max_backoff must be > 0, got {max_backoff!r}")
        if remember is not None and remember < 1:
            raise ValueError(f"remember must be >= 1, got {remember!r}")
        if receipts not in RECEIPTS_MODES:
            raise ValueError(f"receipts must be one of {', '.join(RECEIPTS_MODES)}, got {receipts!r}")
        self.clock = clock
        self.rpc = rpc
        self.hub = IBlockSink(hub)
        self.poll_interval = float(poll_interval)
        self.max_reorg_depth = int(max_reorg_depth)
        self.max_catchup = int(max_catchup)
        self.max_lag = max_lag
        self.max_lag_seconds = max_lag_seconds
        self.batch_size = int(batch_size)
        self.max_backoff = float(max_backoff)
        self.state = state
        self.receipts = receipts
        self.metrics = TailMetrics(registry)
        # What we fetch with each block; receipts="auto" falls back, once.
        self._source = "block" if receipts == "auto" else receipts
        self._setSourceGauge()
        self._now = now
        self._rng = random.Random() if rng is None else rng

        # The last blocks we published, oldest first; the ancestor of a
        # reorg of depth max_reorg_depth is still in here.
        self._chain = deque(maxlen=self.max_reorg_depth + 1)
        # The published blocks just below those (contiguous with them),
        # kept only for the state file: up to `remember` blocks in all.
        keep = self._chain.maxlen if remember is None else max(int(remember), self._chain.maxlen)
        self.remember = keep
        self._older = deque(maxlen=keep - self._chain.maxlen)
        # Blocks reorgs removed after we published them: saved with the
        # positions, so that after a restart a client still holding one can
        # resume (the hub's history is told of them again).
        self._orphaned = deque(maxlen=keep)
        # Whether blocks have left _chain at the bottom since we anchored
        # (if not, a fork below it is below the first block we published).
        self._trimmed = False
        # With an empty chain: the height to publish first (None: the head).
        self._start_at = None
        self._published_ts = None
        self.adaptive = adaptive
        # (height, timestamp) of the last blocks published: the block time.
        self._timestamps = deque(maxlen=_BLOCK_TIME_SAMPLES + 1)
        self._soon = None  # the adaptive poll planned
        self._sync = sync
        self._reactor = reactor
        self._syncing = None  # the fsync running in a thread, if any
        self._unsynced = False  # written since the last fsync began
        self._dirty = False
        # Saved blocks still to be handed to the hub's history, or None.
        self._restore = None
        self._restore_at = 0  # index in _restore of the next block to fetch
        self._restore_skipped = []  # the oldest ones, which the node did not have
        self._restored = 0  # blocks handed to hub.remember
        self._restore_failures = 0  # attempts that failed though the node answered
        self._restored_without_logs = 0  # of _restored: logs pruned by the node
        self._restore_waiters = None  # whenRestored() Deferreds; None once released
        if state is not None:
            # Read at construction so that an unreadable state file stops
            # start-up (twistd reports it) rather than a poll later.
            positions = [Position(*p) for p in state.load()]
            n = self._chain.maxlen
            self._chain.extend(positions[-n:])
            self._older.extend(positions[:-n])
            self._trimmed = len(positions) >= n
            self._orphaned.extend(Position(*p) for p in state.orphans)
            if positions:
                self._restore = list(self._older) + list(self._chain)
                self._restore_waiters = []

        self._head = None
        self._last_poll_ok = None
        self._last_error = None
        self._last_error_at = None
        self._failures = 0
        self.backoff = None
        self._retry_at = None
        self._doing = None

        self._poll = None
        self._waiters = []
        self._again = False
        # What the next poll was asked for: when (perf_counter), and the
        # height a notification announced (a hint, see pollSoon).
        self._triggered = None
        self._hint = None
        self._hint_retry = None  # a poll again for a hinted block the node did not have yet
        self._hint_tries = {}  # {height: retries so far}
        self._trigger = None  # when the batch being fetched was asked for
        self._hinted = None  # the height this poll fetches on a notification's word
        self._stopping = False
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._loop_done = None
        self.metrics.lag_seconds.set_function(self._lagSeconds)

    def __repr__(self):
        return f"<LiveTail {self.node}>"

    # Service -------------------------------------------------------------

    def startService(self):
        super().startService()
        self._stopping = False
        tip = self.published
        self.log.info("live-tail polling {url} every {interval}s, {where}",
                      url=self.node, interval=self.poll_interval,
                      where=(f"resuming after block {tip['height']} {tip['hash']}" if tip
                             else "starting at the node's head"))
        self._loop_done = self._loop.start(self.poll_interval, now=True)
        self._loop_done.addErrback(lambda f: self.log.failure("live-tail loop died", f))

    def stopService(self):
        """
        Stop polling: cancel the poll in flight (its RPC calls with it) and
        fire once nothing of ours is running; save the position last.
        """
        super().stopService()
        self._stopping = True
        self._cancelSoon()
        if self._hint_retry is not None and self._hint_retry.active():
            self._hint_retry.cancel()
        self._hint_retry = None
        waits = []
        if self._loop.running:
            self._loop.stop()
            waits.append(self._loop_done)
        if self._poll is not None:
            waiter = defer.Deferred()
            self._waiters.append(waiter)
            waits.append(waiter)
            self._poll.cancel()
        if self._syncing is not None:
            waiter = defer.Deferred()
            self._syncing.addBoth(lambda _: waiter.callback(None))
            waits.append(waiter)

        def stopped(_):
            self._saveState()
            if self._unsynced:
                self._unsynced = False
                try:
                    self.state.sync()
                except OSError as e:
                    self.log.error("could not fsync the tail position to {path}: {error}",
                                   path=self.state.path, error=str(e))
            self._restoreOver()
            self._releaseRestored()
            self.log.info("live-tail stopped at {published}", published=self.published)

        return defer.gatherResults(waits, consumeErrors=True).addBoth(stopped)

    # Public --------------------------------------------------------------

    @property
    def published(self):
        """C{{"height", "hash"}} of the last block published (or resumed from), or C{None}."""
        if not self._chain:
            return None
        tip = self._chain[-1]
        return {"height": tip.height, "hash": tip.hash}

    @property
    def head(self):
        """The node's head height as last reported, or C{None}."""
        return self._head

    @property
    def receipts_source(self):
        """
        What the tail fetches with each block now: C{"block"} (receipts),
        C{"logs"} or C{"off"}; with C{receipts="auto"}, where it fell back to.
        """
        return self._source

    def poll(self, _by="tick"):
        """
        Poll the node once now, whatever the backoff says.

        Returns a Deferred that fires with C{True} if the poll went well and
        C{False} if it failed (the failure is logged, counted and kept for
        L{health}); it never errbacks.  If a poll is running, fires when
        that one finishes: polls never overlap.
        """
        waiter = defer.Deferred()
        self._waiters.append(waiter)
        if self._poll is None:
            self._cancelSoon()  # this poll's end plans the next
            self.metrics.triggers.labels(_by).inc()
            trigger, self._triggered = self._triggered or time.perf_counter(), None
            hint, self._hint = self._hint, None
            d = self._poll = defer.ensureDeferred(self._pollOnce(trigger, hint))
            d.addCallbacks(self._pollSucceeded, self._pollFailed)
            d.addBoth(self._pollFinished)
        return waiter

    def pollSoon(self, head=None, _by="push"):
        """
        The node says it has a new head (a push notification): poll now.

        Only a trigger: what is published still comes from the poll's own
        walk.  C{head}, the height the notification announced, if any, is a
        hint and nothing more: when it is the very next height, the poll
        fetches that block (and its receipts) at once rather than first
        asking the node for its head, a round trip less; anything else
        about it is checked, as every block is, before it is published.
        A trigger while a poll runs makes exactly one more poll after it
        (triggers coalesce, none is lost); while the tail backs off from a
        failing node, or is stopped, it is ignored: the retry comes anyway.
        """
        if self._stopping or not self.running:
            return
        if self._triggered is None:
            self._triggered = time.perf_counter()
        if head is not None and (self._hint is None or head > self._hint):
            self._hint = head
        if self._poll is not None:
            self._again = True
        elif self._retry_at is None or self.clock.seconds() >= self._retry_at:
            self.poll(_by)

    def whenRestored(self):
        """
        A Deferred that fires, with the number of blocks handed to
        C{hub.remember}, once the history is restored after a restart and
        the poll that restored it has finished: any reorg that happened
        while we were down has then been reported (C{hub.broadcastReorg}
        rolled the history back) and the blocks since published, so the
        hub can serve clients that resume.  At once when there is nothing
        to restore; with what we have if the tail stops first.
        """
        if self._restore_waiters is None:
            return defer.succeed(self._restored)
        waiter = defer.Deferred()
        self._restore_waiters.append(waiter)
        return waiter

    def _releaseRestored(self):
        waiters, self._restore_waiters = self._restore_waiters, None
        for waiter in waiters or ():
            waiter.callback(self._restored)

    def whenIdle(self):
        """A Deferred that fires once no poll is running (at once if none is)."""
        if self._poll is None:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._waiters.append(waiter)
        return waiter.addCallback(lambda _: None)

    @property
    def node(self):
        """The node's URL without credentials, for logs and /healthz."""
        return redact(self.rpc.url)

    def health(self):
        """
        The tail's view for C{/healthz}: C{degraded} while the node is
        failing (the last poll failed) or we are more than C{max_lag}
        blocks behind it; C{reasons} says why.
        """
        published = self.published
        head = self._head
        lag_blocks = None
        if head is not None and published is not None:
            lag_blocks = max(0, head - published["height"])
        lag_seconds = self._lagSeconds()
        lag_seconds = None if lag_seconds != lag_seconds else round(lag_seconds, 3)
        reasons = []
        if self._last_poll_ok is None:
            reasons.append("no poll has finished yet")
        elif not self._last_poll_ok:
            reasons.append(f"last poll failed: {self._last_error}")
        elif published is None:
            reasons.append("nothing published yet")
        if lag_blocks is not None and lag_blocks > self.max_lag:
            reasons.append(f"{lag_blocks} blocks behind the node (max_lag {self.max_lag})")
        if (self.max_lag_seconds is not None and lag_seconds is not None
                and lag_seconds > self.max_lag_seconds):
            reasons.append(f"last block is {lag_seconds:.0f}s old (max {self.max_lag_seconds:g}s)")
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "node": self.node,
            "receipts": self._source,
            "head": head,
            "published": published,
            "lag_blocks": lag_blocks,
            "lag_seconds": lag_seconds,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at,
            "consecutive_failures": self._failures,
            "expected_block_time": self.expected_block_time,
            "retry_in": (None if self._retry_at is None
                         else round(max(0.0, self._retry_at - self.clock.seconds()), 3)),
        }

    # The loop ------------------------------------------------------------

    def _tick(self):
        """The LoopingCall body: poll unless backing off; never raises."""
        try:
            if self._retry_at is not None and self.clock.seconds() < self._retry_at:
                return None
            return self.poll()
        except Exception:
            self.log.failure("live-tail tick failed; trying again next tick")
            return None

    def _pollSucceeded(self, _):
        self.metrics.polls.labels("ok").inc()
        if self._failures:
            self.log.info("node {url} answering again after {n} failed polls",
                          url=self.node, n=self._failures)
        self._last_poll_ok = True
        self._failures = 0
        self.backoff = None
        self._retry_at = None
        return True

    def _pollFailed(self, failure):
        if self._stopping and failure.check(defer.CancelledError, RPCUnavailable):
            return False  # we cancelled it
        e = failure.value
        kind = _kind(e)
        method = getattr(e, "method", None) or "-"
        self.metrics.polls.labels("failed").inc()
        self._last_poll_ok = False
        self._failures += 1
        self._last_error = f"{kind}: {e}" if str(e) else kind
        self._last_error_at = self._now()
        base = min(self.max_backoff, self.poll_interval * 2 ** min(self._failures - 1, 30))
        self.backoff = base / 2 + self._rng.uniform(0, base / 2)
        self._retry_at = self.clock.seconds() + self.backoff
        fields = dict(url=self.node, kind=kind, method=method,
                      error=str(e), during=self._doing, attempt=self._failures,
                      retry_in=self.backoff, published=self.published, head=self._head)
        if kind == "internal":
            self.log.failure("live-tail poll crashed while {during}; retry in {retry_in:.2f}s",
                             failure, **fields)
        else:
            self.log.warn("live-tail poll failed ({kind}) while {during}: {error}; "
                          "attempt {attempt}, retry in {retry_in:.2f}s", **fields)
        return False

    def _pollFinished(self, ok):
        if isinstance(ok, Failure):
            self.log.failure("live-tail poll bookkeeping failed", ok)
            ok = False
        self._poll = None
        self._doing = None
        try:
            self._saveState()
        except Exception:
            self.log.failure("saving the tail state failed")
        if self._restore is None and self._restore_waiters is not None:
            self._releaseRestored()
        # Before the waiters run: one of them may start the next poll.
        self._planAdaptivePoll()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(ok)
        if self._again:
            # A trigger came while this poll ran: its block may have come after our eth_blockNumber.
            self._again = False
            self.pollSoon(_by="push")
        return None

    # Adaptive polling ----------------------------------------------------

    @property
    def expected_block_time(self):
        """
        The chain's block time as learned from the timestamps of the last
        blocks published (the median interval), or C{None} until a few are.
        """
        stamps = list(self._timestamps)
        gaps = sorted(b[1] - a[1] for a, b in zip(stamps, stamps[1:]) if b[0] == a[0] + 1)
        if len(gaps) < _MIN_BLOCK_TIME_SAMPLES:
            return None
        median = gaps[len(gaps) // 2]
        return median if median > 0 else None

    def _planAdaptivePoll(self):
        """
        After a poll: one more when the next block is due (the last one's
        timestamp plus the block time), and while it is late, every quarter
        C{poll_interval}, for half a block time; the tick goes on meanwhile.
        """
        self._cancelSoon()
        if not self.adaptive or self._stopping or not self.running or self._retry_at is not None:
            return
        block_time = self.expected_block_time
        if block_time is None or self._published_ts is None:
            return
        due = self._published_ts + block_time - self._now()
        if due > 0:
            delay = due
        elif -due <= block_time / 2:
            delay = max(_MIN_ADAPTIVE_STEP, self.poll_interval / 4)
        else:
            return  # a missed slot, or a node behind: the tick will see it
        if delay < self.poll_interval:
            self._soon = self.clock.callLater(delay, self._adaptivePoll)

    def _adaptivePoll(self):
        self._soon = None
        self.pollSoon(_by="due")

    def _cancelSoon(self):
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None

    # One poll ------------------------------------------------------------

    async def _pollOnce(self, trigger, hint=None):
        self._trigger = trigger
        if (hint is not None and self._chain and self._restore is None
                and hint == self._chain[-1].height + 1):
            # The node announced the next block: fetch it now; the head is
            # asked for at the next tick as always.
            head, self._hinted = hint, hint
        else:
            self._hinted = None
            self._doing = "asking for the head"
            head = await self._call(_NUMBER, self.rpc.blockNumber)
        self._observeHead(head)
        if self._restore is not None:
            await self._restoreHistory(head)
        reorgs = 0
        while not self._stopping:
            if not self._chain:
                start = head if self._start_at is None else self._start_at
                if head - start + 1 > self.max_catchup:
                    self._skip(start, head)
                    start = head
                if start > head:
                    return  # the node is below where we must start: wait for it
                diverged = await self._forward(start, head, None)
            else:
                tip = self._chain[-1]
                if head <= tip.height:
                    if await self._headMatches(head):
                        return
                    diverged = True
                elif head - tip.height > self.max_catchup:
                    self._skip(tip.height + 1, head)
                    self._chain.clear()
                    self._older.clear()
                    self._trimmed = False
                    self._start_at = None
                    continue
                else:
                    diverged = await self._forward(tip.height + 1, head, tip.hash)
            if not diverged:
                return
            if reorgs == _MAX_REORGS_PER_POLL:
                self.log.warn("{n} reorgs in one poll: the node keeps switching branches; "
                              "carrying on next poll", n=reorgs)
                return
            reorgs += 1
            await self._reorg(min(head, self._chain[-1].height))

    async def _restoreHistory(self, head):
        """
        After a restart: give the hub back the blocks clients saw before it,
        fetched by hash, oldest first, before anything new is published.
        A poll that fails here (node unreachable) resumes where it stopped.
        """
        positions = self._restore
        if head - positions[-1].height > self.max_catchup:
            self.log.info("not restoring the history of {n} blocks: the node is {ahead} blocks "
                          "ahead, we re-anchor at its head", n=len(positions),
                          ahead=head - positions[-1].height)
            return self._restoreOver()
        while self._restore_at < len(positions) and not self._stopping:
            batch = positions[self._restore_at:self._restore_at + self.batch_size]
            self._doing = (f"restoring the history: fetching block {batch[0].height}"
                           + (f"-{batch[-1].height}" if len(batch) > 1 else "") + " by hash")
            method = _BY_HASH if len(batch) == 1 else _BY_HASH_BATCH
            try:
                blocks = await self._fetchByHash([p.hash for p in batch])
                extras = iter(await self._extrasOf([p.hash for p, b in zip(batch, blocks) if b is not None]))
                for p, block in zip(batch, blocks):
                    if block is None:
                        if not self._restored:
                            self._restore_skipped.append(p)  # pruned: try the next one up
                            self._restore_at += 1
                            continue
                        self.log.warn("the node no longer has block {height} {hash} (orphaned while "
                                      "we were down?): the history is restored up to block {last} only",
                                      height=p.height, hash=p.hash, last=p.height - 1)
                        return self._restoreOver()
                    extra = next(extras)
                    if isinstance(extra, Exception):
                        raise extra
                    entry = self._validated(block, p.height, method, full=True, extras=extra)
                    if entry.hash != p.hash:
                        self.metrics.rpc_errors.labels(method, BadBlock.kind).inc()
                        raise BadBlock(method, p.height, f"asked for {p.hash}, got {entry.hash}")
                    self.hub.remember(entry)
                    self._restored += 1
                    self._restore_at += 1
                    if extra.pruned:
                        self._restored_without_logs += 1
                        self.metrics.logs_unavailable.inc()
            except (RPCError, TailFault, events.InvalidBlock) as e:
                # Answers we cannot use: carry on without (the rest of) the history.
                self.log.warn("cannot restore the history from the node ({kind}: {error}); restored "
                              "{n} of {total} blocks", kind=_kind(e), error=str(e), n=self._restored,
                              total=len(positions))
                return self._restoreOver()
            except RPCFailure as e:
                # The node answered eth_blockNumber a moment ago: a batch that
                # keeps failing (too large for a provider, timing out) must
                # not hold publishing back for ever.
                self._restore_failures += 1
                if self._restore_failures < _MAX_RESTORE_FAILURES or self._stopping:
                    raise
                self.log.warn("giving up restoring the history after {n} failed attempts ({kind}: "
                              "{error}); restored {restored} of {total} blocks",
                              n=self._restore_failures, kind=_kind(e), error=str(e),
                              restored=self._restored, total=len(positions))
                return self._restoreOver()
        if not self._stopping:
            self._restoreOver()

    def _restoreOver(self):
        """The history restore is done or given up: say so, once."""
        if self._restore is None:
            return
        positions, self._restore = self._restore, None
        self.hub.history.rememberOrphans(self._orphaned)
        skipped, n = self._restore_skipped, self._restored
        if skipped:
            self.log.warn("the node has none of blocks {first}-{last} any more (pruned?); the "
                          "restored history starts above them", first=skipped[0].height,
                          last=skipped[-1].height)
        if n:
            first = positions[len(skipped)].height
            without = self._restored_without_logs
            self.log.info("restored the history of {n} blocks ({first}-{last}) for clients that resume"
                          + (", {without} of them without their logs (pruned by the node)" if without else ""),
                          n=n, first=first, last=first + n - 1, without=without)

    def _skip(self, first, head):
        skipped = head - first
        self.metrics.skipped.inc(max(0, skipped))
        self.log.warn("the node is {n} blocks ahead of us (max_catchup {max_catchup}): "
                      "skipping heights {first}-{last} and re-anchoring at the head {head}",
                      n=head - first + 1, max_catchup=self.max_catchup, first=first,
                      last=head - 1, head=head)

    async def _headMatches(self, head):
        """
        The head is at or below the last block we published: is the node's
        block there the one we published?  (No: a reorg.)  If we cannot
        tell -- the node is further back than we remember, or has no block
        there -- we wait.
        """
        lowest = self._chain[0].height
        if head < lowest:
            self.log.info("the node's head {head} is below every block we remember "
                          "({lowest}-{tip}); waiting for it", head=head, lowest=lowest,
                          tip=self._chain[-1].height)
            return True
        self._doing = f"checking the hash of block {head}"
        header = (await self._fetch([head], full=False))[0]
        if header is None:
            self.log.info("the node has no block {height} though it reports it as its head; "
                          "waiting", height=head)
            return True
        data = self._validated(header, head, _GET, full=False)
        ours = self._chain[head - lowest]
        if data["hash"] != ours.hash:
            self.log.info("block {height} is now {new}, we published {old}: reorg",
                          height=head, new=data["hash"], old=ours.hash)
            return False
        if head == self._chain[-1].height:
            self._published_ts = data["timestamp"]
        return True

    async def _forward(self, first, head, parent):
        """
        Publish heights C{first}..C{head} in order, C{batch_size} per round
        trip.  Returns C{True} when a block does not extend the last one we
        published (a reorg), C{False} when done or stopped at a null block.
        """
        height = first
        while height <= head and not self._stopping:
            last = min(head, height + self.batch_size - 1)
            heights = list(range(height, last + 1))
            self._doing = (f"fetching block {height}" if height == last
                           else f"fetching blocks {height}-{last}")
            announcing = None
            if height == last == self._hinted and parent is not None:
                announcing = defer.ensureDeferred(self._announceHead(height, parent))
            try:
                blocks, extras = await self._fetchWithExtras(heights)
            finally:
                if announcing is not None and not announcing.called:
                    announcing.cancel()  # the block itself is here: too late to go ahead of it
            fetched = time.perf_counter()
            method = _GET if len(heights) == 1 else _GET_BATCH
            # Check the batch first: the blocks we publish now, and why we
            # stop after them (a null block, a reorg, an invalid block, no
            # receipts or logs to publish it with).
            # Checking builds every block's frames: no collection until they are out.
            with heldOff():
                ready, pruned, stop, fault = [], set(), None, None
                since = fetched
                for i, (h, block) in enumerate(zip(heights, blocks)):
                    if self._reactor is not None and time.perf_counter() - since > _CHECK_SLICE:
                        await deferLater(self._reactor, 0, lambda: None)
                        if self._stopping:
                            return False
                        since = time.perf_counter()
                    if block is None:
                        self.log.debug("the node has no block {height} yet (head {head}); "
                                       "trying again next poll", height=h, head=head)
                        if h == self._hinted:
                            self._retryHinted(h)
                        stop = False
                        break
                    # Past the end of extras: a block without a hash to fetch
                    # them by, which validation refuses (BadBlock) just below.
                    extra = extras[i] if i < len(extras) else _NO_EXTRAS
                    if isinstance(extra, Exception):
                        fault = extra
                        break
                    try:
                        entry = self._validated(block, h, method, full=True, extras=extra)
                    except BadBlock as e:
                        fault = e
                        break
                    if parent is not None and entry.parent_hash != parent:
                        self.log.info("block {height} {hash} has parent {parent}, we published {ours}: "
                                      "reorg", height=h, hash=entry.hash, parent=entry.parent_hash,
                                      ours=parent)
                        stop = True
                        break
                    ready.append(entry)
                    if extra.pruned:
                        pruned.add(entry.hash)
                    parent = entry.hash
                if ready:
                    stage = self.metrics.block_stage
                    checked = time.perf_counter()
                    for _ in ready:
                        stage.labels("fetch").observe(fetched - self._trigger)
                        stage.labels("check").observe((checked - fetched) / len(ready))
                    self._publishAll(ready, method, pruned)
            # The next batch's fetch starts now.
            self._trigger = time.perf_counter()
            if fault is not None:
                raise fault
            if stop is not None:
                return stop
            height = last + 1
        return False

    async def _announceHead(self, height, parent):
        """
        Fetch the header of the block a notification announced (a node
        serves it at once, where the whole block with its transactions and
        receipts can take tens of ms: ~30 ms for 200 transactions on anvil)
        and, if it extends what we published, hand it to the hub ahead of
        the block.  Checked like any block; on any trouble, nothing.
        """
        try:
            header = await self._call(_HEADER, self.rpc.getBlockByNumber, height, False)
            data = validate(header, height, _GET, full=False) if header is not None else None
        except (RPCFailure, BadBlock, defer.CancelledError):
            return
        tip = self._chain[-1] if self._chain else None
        if data is None or tip is None or tip.hash != parent or data["parent_hash"] != parent:
            return  # not there yet, published meanwhile, or not on our branch
        self.hub.announce(events.node_header(header))
        self.metrics.block_stage.labels("announce").observe(time.perf_counter() - self._trigger)

    def _retryHinted(self, height):
        """
        The node announced C{height} but does not serve it yet (a provider
        whose HTTP backends lag its WebSocket): look again shortly, a few
        times, rather than at the next tick.
        """
        tries = self._hint_tries.get(height, 0)
        if tries >= len(_HINT_RETRIES) or self._hint_retry is not None:
            return
        self._hint_tries = {height: tries + 1}

        def again():
            self._hint_retry = None
            self.pollSoon(height)

        self._hint_retry = self.clock.callLater(_HINT_RETRIES[tries], again)

    def _publishAll(self, ready, method, pruned=()):
        """
        Publish checked entries in order.  The state file names
        them first: the hub's writes may reach clients before this reactor
        turn ends, and whatever a client got must be in the file (a crash
        in between leaves blocks in the file that nobody got: a restart puts
        them in the history, and resuming clients get them from there).
        What must precede the publish is the file's replacement in the
        kernel (write and rename), which survives a killed process; with
        C{sync}, its fsyncs, which only a machine crash needs, follow in a
        thread (~0.3 ms of the 0.7 ms a durable save of 256 positions costs
        on the reactor on our ext4 VM; far more on a disk that honours fsync).
        C{pruned}: hashes of those published without their logs because
        the node has pruned them.
        """
        saved = self._saveState(ahead=[Position(e.height, e.hash, e.parent_hash) for e in ready],
                                durable=self._sync is None)
        published, without = 0, []
        try:
            for entry in ready:
                self._publish(entry, method)
                published += 1
                if entry.hash in pruned:
                    without.append(entry.height)
        finally:
            if published < len(ready):
                self._dirty = True  # the hub refused one: the file must not name it
                self._saveState()
            else:
                self._dirty = not saved
            self._syncSoon()
            if without:
                self.metrics.logs_unavailable.inc(len(without))
                self.log.warn("the node cannot give the logs of {blocks} (pruned history): "
                              "published without them (log_count null)",
                              blocks=_heights(without), heights=without)

    async def _reorg(self, start):
        """
        Find the common ancestor at or below C{start}, tell the hub what was
        removed and forget it; the caller then publishes the new branch.
        """
        chain = self._chain
        lowest = chain[0].height
        ancestor, bottom = await self._findAncestor(start)
        if ancestor is not None:
            removed = [p for p in chain if p.height > ancestor.height]
            common = {"height": ancestor.height, "hash": ancestor.hash}
            while chain[-1].height > ancestor.height:
                chain.pop()
            if not removed:
                self.log.info("the node is back on our branch at {height}; nothing to report",
                              height=ancestor.height)
                return
        else:
            removed = list(chain)
            common = {"height": lowest - 1, "hash": bottom["parent_hash"]}
            if chain[0].parent is not None and chain[0].parent == bottom["parent_hash"]:
                # The parent of the lowest block we remember is still
                # canonical: a reorg of exactly what we remember.
                self.log.warn("reorg removes all {n} blocks we remember ({lowest}-{tip})",
                              n=len(removed), lowest=lowest, tip=chain[-1].height)
            elif not self._trimmed:
                # We have not published max_reorg_depth blocks yet (a fresh
                # start): the fork is below the first one.
                self.log.error("reorg below the first block we published: none of blocks "
                               "{lowest}-{tip} is canonical any more and the fork point is "
                               "unknown; reporting the {n} we published and publishing the new "
                               "branch from {lowest}, on top of {parent}",
                               lowest=lowest, tip=chain[-1].height, n=len(removed),
                               parent=bottom["parent_hash"])
            else:
                self.log.error("reorg deeper than max_reorg_depth {max}: none of blocks "
                               "{lowest}-{tip} is canonical any more; reporting the {n} we "
                               "remember and publishing the new branch from {lowest}",
                               max=self.max_reorg_depth, lowest=lowest, tip=chain[-1].height,
                               n=len(removed))
            chain.clear()
            # What lies below may be gone too: do not offer it to a restart.
            self._older.clear()
            self._trimmed = False
            self._start_at = lowest
        depth = len(removed)
        self._orphaned.extend(removed)
        self.hub.publishReorg(depth, common,
                                [{"height": p.height, "hash": p.hash} for p in removed])
        self.metrics.reorgs.inc()
        self.metrics.reorg_depth.observe(depth)
        self._published_ts = None
        self._setPublishedGauges()
        self._dirty = True
        self._saveState()
        self.log.warn("reorg of depth {depth}: back to {height} {hash}, removed {first}-{last}",
                      depth=depth, height=common["height"], hash=common["hash"],
                      first=removed[0].height, last=removed[-1].height,
                      removed=[p.hash for p in removed])

    async def _findAncestor(self, start):
        """
        Walk down from C{start} comparing the node's canonical hashes with
        ours.  Returns C{(position, None)} for the highest match, or
        C{(None, header_at_lowest)} when nothing we remember matches.
        """
        chain = self._chain
        lowest = chain[0].height
        height = min(start, chain[-1].height)
        step = 4
        bottom = None
        while height >= lowest:
            low = max(lowest, height - step + 1)
            heights = list(range(height, low - 1, -1))
            self._doing = f"looking for the common ancestor at {low}-{height}"
            headers = await self._fetch(heights, full=False)
            method = _GET if len(heights) == 1 else _GET_BATCH
            for h, header in zip(heights, headers):
                if header is None:
                    self.metrics.rpc_errors.labels(method, TailFault.kind).inc()
                    raise TailFault(method, f"no block {h} below the node's head while looking "
                                            "for the common ancestor")
                data = self._validated(header, h, method, full=False)
                ours = chain[h - lowest]
                if data["hash"] == ours.hash:
                    return ours, None
                bottom = data
            height = low - 1
            step = min(step * 4, self.batch_size)
        return None, bottom

    # Helpers -------------------------------------------------------------

    def _validated(self, block, height, method, full, extras=_NO_EXTRAS):
        try:
            return validate(block, height, method, full, extras.receipts, extras.logs)
        except BadBlock as e:
            fault = e
        if extras.method is not None:
            # Whose fault: the block's, or its receipts' (or logs')?
            try:
                validate(block, height, method, full)
            except BadBlock:
                pass
            else:
                method = extras.method
                fault = BadBlock(method, height, fault.reason)
        self.metrics.rpc_errors.labels(method, BadBlock.kind).inc()
        raise fault

    def _publish(self, entry, method):
        """Hand one checked block to the hub, then remember it."""
        start = time.perf_counter()
        try:
            self.hub.publish(entry)
        except events.InvalidBlock as e:
            # The hub refused it (it does not link) before writing to anyone.
            self.metrics.rpc_errors.labels(method, BadBlock.kind).inc()
            raise BadBlock(method, entry.height, f"refused by the hub: {e}") from None
        chain = self._chain
        if len(chain) == chain.maxlen:
            self._older.append(chain[0])
            self._trimmed = True
        chain.append(Position(entry.height, entry.hash, entry.parent_hash))
        self.metrics.block_stage.labels("publish").observe(time.perf_counter() - start)
        self._start_at = None
        self._published_ts = entry.data["timestamp"]
        self._timestamps.append((entry.height, entry.data["timestamp"]))
        self._dirty = True
        self.metrics.blocks_published.inc()
        if entry.tx_count:
            self.metrics.transactions_published.inc(entry.tx_count)
        self._setPublishedGauges()

    async def _call(self, method, fn, *args, **kwargs):
        """One RPC call, counted and timed by method."""
        m = self.metrics
        m.rpc_calls.labels(method).inc()
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        except RPCFailure as e:
            if not self._stopping:
                m.rpc_errors.labels(method, _kind(e)).inc()
            raise
        finally:
            m.rpc_latency.labels(method).observe(time.perf_counter() - start)

    async def _fetchByHash(self, hashes):
        if len(hashes) == 1:
            return [await self._call(_BY_HASH, self.rpc.getBlockByHash, hashes[0], True)]
        answers = await self._call(_BY_HASH_BATCH, self.rpc.batch,
                                   [(_BY_HASH, [h, True]) for h in hashes])
        for answer in answers:
            if answer is not None and not isinstance(answer, dict):
                self.metrics.rpc_errors.labels(_BY_HASH_BATCH, TailFault.kind).inc()
                raise TailFault(_BY_HASH_BATCH, f"a block is neither an object nor null: {answer!r:.80}")
        return answers

    async def _fetch(self, heights, full):
        if len(heights) == 1:
            return [await self._call(_GET, self.rpc.getBlockByNumber, heights[0], full)]
        return await self._call(_GET_BATCH, self.rpc.getBlocksByNumber, heights, full)

    async def _fetchWithExtras(self, heights):
        """
        The blocks at C{heights} (full, C{None} where the node has none) and
        for each its L{_Extras} (or why there are none), in one round trip:
        a batch asking for each block and its receipts (or logs) by number.
        By number, the two answers can be of different blocks if the node
        switched branches between them: each block's receipts (or logs) are
        used only if they name it, else fetched again by its hash, as are
        those the node would not give (the L{_extrasOf} path, which also
        falls back when the node lacks the method).
        """
        source = self._source
        if source == "off":
            blocks = await self._fetch(heights, full=True)
            return blocks, [_NO_EXTRAS] * len(blocks)
        single = _RECEIPTS if source == "block" else _LOGS
        calls = []
        for h in heights:
            calls.append((_GET, [hex(h), True]))
            calls.append((single, [hex(h)] if source == "block" else [{"fromBlock": hex(h), "toBlock": hex(h)}]))
        method = _GET_WITH[source]
        answers = await self._call(method, self.rpc.batch, calls, returnErrors=True)
        blocks, extras, again = answers[0::2], [], []
        for block in blocks:
            if isinstance(block, RPCError):
                self.metrics.rpc_errors.labels(_GET, _kind(block)).inc()
                raise block
            if block is not None and not isinstance(block, dict):
                self.metrics.rpc_errors.labels(_GET, TailFault.kind).inc()
                raise TailFault(_GET, f"a block is neither an object nor null: {block!r:.80}")
        hashes = _hashesOf(blocks)  # nothing is published past a null or hashless block
        answers = answers[1::2][:len(hashes)]
        refusal = next((a for a in answers if _unsupported(a)), None)
        if refusal is not None and self.receipts == "auto":
            self._fallBack(refusal)
            return blocks, await self._extrasOf(hashes)
        for i, (block_hash, answer) in enumerate(zip(hashes, answers)):
            if _unsupported(answer):
                extras.append(answer)  # and it must come with them: the poll fails there
            elif _theirs(blocks[i], answer, source):
                extras.append(self._extras(source, block_hash, answer, method))
            else:
                extras.append(None)
                again.append(i)
        if again:
            redone = await self._extrasOf([hashes[i] for i in again])
            for i, extra in zip(again, redone):
                extras[i] = extra
        return blocks, extras

    async def _extrasOf(self, hashes):
        """
        The receipts (or logs) of the blocks C{hashes}, in one round trip
        (two, the one time C{receipts="auto"} falls back): for each block an
        L{_Extras}, or the exception that says why it cannot be published
        (raise it once the blocks before it are out).
        """
        while True:
            source = self._source
            if source == "off" or not hashes:
                return [_NO_EXTRAS] * len(hashes)
            single, batch = (_RECEIPTS, _RECEIPTS_BATCH) if source == "block" else (_LOGS, _LOGS_BATCH)
            method = single if len(hashes) == 1 else batch
            answers = await self._fetchExtras(source, hashes, single, method)
            refusal = next((a for a in answers if _unsupported(a)), None)
            if refusal is None or self.receipts != "auto":
                return [self._extras(source, h, a, method) for h, a in zip(hashes, answers)]
            self._fallBack(refusal)

    async def _fetchExtras(self, source, hashes, single, method):
        """The node's answers for each block, its JSON-RPC errors (L{RPCError}) included."""
        if len(hashes) == 1:
            fn = (self.rpc.getBlockReceipts if source == "block"
                  else lambda h: self.rpc.getLogs({"blockHash": h}))
            try:
                return [await self._call(method, fn, hashes[0])]
            except RPCError as e:
                return [e]
        calls = [(single, [h] if source == "block" else [{"blockHash": h}]) for h in hashes]
        # An error answering the whole batch fails the poll: a node without
        # the method says so for each call.
        answers = await self._call(method, self.rpc.batch, calls, returnErrors=True)
        for answer in answers:
            if isinstance(answer, RPCError):
                self.metrics.rpc_errors.labels(method, _kind(answer)).inc()
        return answers

    def _extras(self, source, block_hash, answer, method):
        """One block's L{_Extras} from the node's answer, or why there are none."""
        if isinstance(answer, RPCError):
            if source == "logs" and answer.code == _PRUNED:
                return _Extras(pruned=True, method=method)
            return answer
        what = "receipts" if source == "block" else "logs"
        if not isinstance(answer, list):
            # null: the node served the block a moment ago but has nothing of
            # it now (a reorg, a lagging backend); try again rather than
            # publish it without.
            self.metrics.rpc_errors.labels(method, TailFault.kind).inc()
            if answer is None:
                return TailFault(method, f"the node has no {what} of block {block_hash}, which it served")
            return TailFault(method, f"the {what} of block {block_hash} are not a list: {answer!r:.80}")
        if source == "block":
            return _Extras(receipts=answer, method=method)
        return _Extras(logs=answer, method=method)

    def _fallBack(self, refusal):
        """receipts="auto" and the node does not have the method: fetch less, for the rest of the run."""
        old = self._source
        self._source = "logs" if old == "block" else "off"
        self.metrics.receipts_fallbacks.labels(self._source).inc()
        self._setSourceGauge()
        if self._source == "logs":
            self.log.warn("the node does not answer {method} ({error}): from now on the tail fetches "
                          "only each block's logs (eth_getLogs), and transactions go out without "
                          "status, gas_used, fee_wei and contract_address",
                          method=_RECEIPTS, error=str(refusal), receipts=self._source)
        else:
            self.log.warn("the node does not answer {method} either ({error}): from now on blocks "
                          "go out without their logs (log_count null)",
                          method=_LOGS, error=str(refusal), receipts=self._source)

    def _setSourceGauge(self):
        for source in _SOURCES:
            self.metrics.receipts_mode.labels(source).set(1 if source == self._source else 0)

    def _observeHead(self, head):
        if self._head is not None and head < self._head:
            self.log.debug("the node's head went back from {old} to {new}", old=self._head, new=head)
        self._head = head
        self.metrics.head.set(head)
        self._setPublishedGauges()

    def _setPublishedGauges(self):
        if self._chain:
            tip = self._chain[-1].height
            self.metrics.published_height.set(tip)
            if self._head is not None:
                self.metrics.blocks_behind.set(max(0, self._head - tip))

    def _lagSeconds(self):
        if self._published_ts is None:
            return float("nan")
        return max(0.0, self._now() - self._published_ts)

    def _syncSoon(self):
        """fsync what L{_saveState} wrote without it, in a thread; once more after if written meanwhile."""
        if self._sync is None or not self._unsynced or self._syncing is not None:
            return
        self._unsynced = False

        def failed(failure):
            self.log.error("could not fsync the tail position to {path}: {error}",
                           path=self.state.path, error=failure.getErrorMessage())

        def done(_):
            self._syncing = None
            if not self._stopping:
                self._syncSoon()

        d = self._syncing = self._sync(self.state.sync)
        d.addErrback(failed)
        d.addBoth(done)

    def _saveState(self, ahead=(), durable=True):
        """
        Write the last C{remember} positions (and C{ahead}, about to be
        published); True if saved.  Not C{durable}: not fsynced yet (L{_syncSoon}).
        """
        if self.state is None or not (self._dirty or ahead):
            return False
        positions = list(self._older) + list(self._chain) + list(ahead)
        try:
            if durable:
                self.state.save(positions[-self.remember:], self._orphaned)
            else:
                self.state.write(positions[-self.remember:], self._orphaned)
                self._unsynced = True
        except OSError as e:
            # Publishing goes on; a restart would resume from an older
            # position (and republish a little), which is the lesser evil.
            self.log.error("could not save the tail position to {path}: {error}",
                           path=self.state.path, error=str(e))
            return False
        self._dirty = False
        return True
