"""
C{eth_subscribe} subscriptions of C{/v1/rpc} and their fan-out, encoded once.

A notification differs between clients only by its subscription id, so the
id is not drawn at random: it is derived from what was subscribed to (the
kind and the filter) and from how many identical subscriptions the
connection already holds (the first is 0, a second identical one 1, ...).
Ids stay unique on each connection, yet every client's first C{newHeads}
subscription has the same id, and one frame per block serves all of them:
a notification costs what a C{/v1/stream} message costs.  A connection that
subscribes twice to the same thing gets two ids and each notification
twice, as from geth.

L{RpcSubscriptions} is an L{IPublicationObserver} of the hub: it is told of
each block after the hub's own clients, and writes through the hub
(L{Hub.fanout}), so the slow-client policy, queues and metrics are the same
as for every other client.

Notifications, as geth sends them::

    {"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":ID,"result":R}}

C{newHeads}: R is the block's header as the node gave it, every published
block in chain order; after a reorg the new branch's blocks follow from the
fork point up.  C{logs}: R is one log in the node's format, one
notification per matching log; after a reorg the logs of the removed blocks
come again with C{"removed": true}, oldest block first, before the new
branch's logs (geth's order).
"""

import hashlib
from collections import OrderedDict

from twisted.logger import Logger
from zope.interface import implementer

from explorerd.events import encode, frame
from explorerd.interfaces import IHeadObserver, IPublicationObserver

NEW_HEADS, LOGS = "newHeads", "logs"

# Notification payloads remembered with their block, newest last, for the
# close reason of a client closed as too slow (L{RpcSubscriptions.firstQueued}):
# at most this many, and this many bytes that nothing else would keep alive.
RECENT_PAYLOADS = 4096
RECENT_BYTES = 16 * 1024 * 1024

log = Logger()


def subscriptionId(kind, key, n):
    """
    The id of the C{n}th identical subscription to C{kind} with filter
    C{key} on one connection: geth's shape (16 bytes of 0x-hex).
    """
    digest = hashlib.sha256(repr((kind, key, n)).encode("utf-8")).hexdigest()
    return "0x" + digest[:32]


def filterKey(log_filter):
    """One canonical, hashable form of a L{LogFilter}: equal filters, equal keys."""
    if log_filter is None:
        return None
    addresses = None if log_filter.addresses is None else tuple(sorted(log_filter.addresses))
    topics = tuple(None if t is None else tuple(sorted(t)) for t in log_filter.topics)
    return addresses, topics


class Group:
    """
    Every connection's C{n}th subscription to one kind and filter: one id,
    one frame per notification.
    """

    __slots__ = ("kind", "key", "n", "id", "log_filter", "clients", "prefix")

    def __init__(self, kind, key, n, log_filter=None):
        self.kind = kind
        self.key = key
        self.n = n
        self.id = subscriptionId(kind, key, n)
        self.log_filter = log_filter
        self.clients = {}
        self.prefix = (b'{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"'
                       + self.id.encode("ascii") + b'","result":')

    def notification(self, result):
        """One framed notification of C{result} (encoded JSON bytes) for this group."""
        return frame(self.prefix + result + b"}}")


def _hex(n):
    return None if n is None else hex(n)


def nodeHeader(entry):
    """
    The C{newHeads} result of a block: the node's header when the entry
    kept it; else (an edge's blocks) the fields explorerd's own wire data
    has, in the node's format.
    """
    if entry.header is not None:
        return entry.header
    d = entry.data
    header = {"number": hex(d["height"]), "hash": d["hash"], "parentHash": d["parent_hash"],
              "timestamp": hex(d["timestamp"]), "miner": d["miner"], "gasUsed": hex(d["gas_used"]),
              "gasLimit": hex(d["gas_limit"])}
    if d.get("base_fee_per_gas") is not None:
        header["baseFeePerGas"] = hex(int(d["base_fee_per_gas"]))
    return header


def nodeLogs(entry, removed=False):
    """An entry's logs in the node's format (C{eth_getLogs}, C{eth_subscribe}), each encoded once."""
    number = hex(entry.height)
    return [encode({
        "address": lg["address"], "topics": lg["topics"], "data": lg["data"], "blockNumber": number,
        "transactionHash": lg["tx_hash"], "transactionIndex": hex(lg["tx_index"]),
        "blockHash": entry.hash, "logIndex": hex(lg["log_index"]), "removed": removed,
    }) for lg in entry.logs or ()]


@implementer(IPublicationObserver, IHeadObserver)
class RpcSubscriptions:
    """
    Every C{eth_subscribe} subscription, grouped so that identical ones
    share their frames (see the module docstring).

    @ivar hub: the L{Hub} whose blocks go out, and through which they are written.
    """

    def __init__(self, hub, metrics=None):
        self.hub = hub
        self.metrics = metrics
        self._groups = {}  # (kind, key, n) → Group
        self._heads = {}  # n → Group, in the order made
        # The head announced ahead of its block: (hash, {group: (payload, clients sent it)}).
        self._announced = None
        self._logs = {}  # (key, n) → Group
        # logs groups as the hub indexes its logs subscribers: every log,
        # else by address, else by first topic, else scanned.
        self._logs_all = {}
        self._logs_by_address = {}
        self._logs_by_topic = {}
        self._logs_scan = {}
        self._recent = OrderedDict()  # id(payload) → (payload, entry)
        self._recent_bytes = 0
        hub.addObserver(self)

    def subscribe(self, held, client, kind, log_filter=None):
        """
        Add a subscription for C{client}, whose subscriptions so far are
        C{held} (id → L{Group}, the connection's own dict, updated here);
        returns its L{Group}.
        """
        key = filterKey(log_filter) if kind == LOGS else None
        n = 0
        while subscriptionId(kind, key, n) in held:
            n += 1
        group = self._groups.get((kind, key, n))
        if group is None:
            group = self._groups[(kind, key, n)] = Group(kind, key, n, log_filter)
            if kind == NEW_HEADS:
                self._heads[n] = group
            else:
                self._logs[(key, n)] = group
                self._index(group, True)
        group.clients[client] = None
        held[group.id] = group
        self._count(kind, 1)
        self.hub.holdsSubscriptions(client, True)
        return group

    def unsubscribe(self, held, client, subscription_id):
        """Remove one of C{client}'s subscriptions; False if it holds none with that id."""
        group = held.pop(subscription_id, None)
        if group is None:
            return False
        group.clients.pop(client, None)
        if self._announced is not None and group in self._announced[1]:
            self._announced[1][group][1].discard(client)  # subscribing again: sent again
        self._count(group.kind, -1)
        if not held:
            self.hub.holdsSubscriptions(client, False)
        if not group.clients:
            del self._groups[(group.kind, group.key, group.n)]
            if group.kind == NEW_HEADS:
                del self._heads[group.n]
            else:
                del self._logs[(group.key, group.n)]
                self._index(group, False)
        return True

    def _index(self, group, add):
        flt = group.log_filter
        if flt is None:
            where, keys = self._logs_all, None
        elif flt.addresses is not None:
            where, keys = self._logs_by_address, flt.addresses
        elif flt.first is not None:
            where, keys = self._logs_by_topic, flt.first
        else:
            where, keys = self._logs_scan, None
        if keys is None:
            if add:
                where[group] = None
            else:
                where.pop(group, None)
            return
        for key in keys:
            if add:
                where.setdefault(key, {})[group] = None
            else:
                groups = where.get(key)
                if groups is not None:
                    groups.pop(group, None)
                    if not groups:
                        del where[key]

    def unsubscribeAll(self, held, client):
        for subscription_id in tuple(held):
            self.unsubscribe(held, client, subscription_id)

    def count(self, kind):
        return sum(len(g.clients) for g in self._groups.values() if g.kind == kind)

    def _count(self, kind, n):
        if self.metrics is not None:
            self.metrics.subscriptions.labels(kind).inc(n)

    # IPublicationObserver

    def announced(self, header):
        """
        A head ahead of its block: to every C{newHeads} subscriber now; when
        its block is published, only those who were not sent it get it.
        """
        self._announced = None
        if not self._heads:
            return
        encoded = encode(header)
        sent = {}
        for group in tuple(self._heads.values()):
            payload = group.notification(encoded)
            self.hub.fanout(group.clients, payload, (("rpc_newHeads", 1),))
            sent[group] = (payload, set(group.clients))
        self._announced = (header.get("hash"), sent)

    def published(self, entry):
        ahead = {}
        if self._announced is not None:
            if self._announced[0] == entry.hash:
                ahead = self._announced[1]
            self._announced = None  # a block at that height is out: whichever, the announcement is spent
        if self._heads:
            header = None
            for group in tuple(self._heads.values()):
                clients = group.clients
                if group in ahead:
                    payload, sent = ahead[group]
                    self._remember(payload, entry)
                    clients = [c for c in clients if c not in sent]
                    if not clients:
                        continue
                if header is None:
                    header = encode(nodeHeader(entry))
                payload = self._remember(group.notification(header), entry)
                self.hub.fanout(clients, payload, (("rpc_newHeads", 1),))
        if self._logs and entry.logs:
            self._sendLogs(entry, False)

    def reorganized(self, reorg, removed):
        """The removed blocks' logs again, C{"removed": true}, oldest block first."""
        if self._logs:
            for entry in reversed(removed):
                if entry.logs:
                    self._sendLogs(entry, True)

    def _sendLogs(self, entry, removed):
        """
        A block's logs to their groups, found through the indexes:
        O(logs + matches), not O(groups x logs).
        """
        encoded = nodeLogs(entry, removed)
        logs = entry.logs
        matches = {group: range(len(logs)) for group in self._logs_all}
        by_address, by_topic, scan = self._logs_by_address, self._logs_by_topic, self._logs_scan
        for i, lg in enumerate(logs):
            candidates = [by_address.get(lg["address"]), scan]
            if lg["topics"]:
                candidates.append(by_topic.get(lg["topics"][0]))
            for groups in candidates:
                if groups:
                    for group in groups:
                        if group.log_filter.matches(lg):
                            matches.setdefault(group, []).append(i)
        for group, indexes in matches.items():
            payload = b"".join(group.notification(encoded[i]) for i in indexes)
            if not removed:  # a retraction is not where a client resumes from
                self._remember(payload, entry)
            self.hub.fanout(group.clients, payload, (("rpc_logs", len(indexes)),))

    def _remember(self, payload, entry):
        recent = self._recent
        recent[id(payload)] = (payload, entry)
        self._recent_bytes += len(payload)
        while len(recent) > RECENT_PAYLOADS or (self._recent_bytes > RECENT_BYTES and len(recent) > 1):
            _, (old, _) = recent.popitem(last=False)
            self._recent_bytes -= len(old)
        return payload

    def firstQueued(self, queue):
        """
        The entry of the oldest block with a notification among C{queue}'s
        payloads (a hub client's queue), or C{None}: the client was sent
        everything before that block.  C{False} when a notification in the
        queue is too old to tell.
        """
        for payload, counts, *_ in queue:
            if not any(kind in ("rpc_newHeads", "rpc_logs") for kind, _ in counts):
                continue
            found = self._recent.get(id(payload))
            if found is None or found[0] is not payload:
                return False
            return found[1]
        return None

    # Replay (the since extension).

    def replayItems(self, group, entries, orphans=()):
        """
        C{[(payload, counts), ...]} that catch one subscription up: the
        logs of C{orphans} (oldest first) as removed, then C{entries}.
        """
        items = []
        for entry in orphans:
            if group.kind == LOGS and entry.logs:
                items.extend(self._logItems(group, entry, True))
        for entry in entries:
            if group.kind == NEW_HEADS:
                payload = self._remember(group.notification(encode(nodeHeader(entry))), entry)
                items.append((payload, (("rpc_newHeads", 1),)))
            elif entry.logs:
                items.extend(self._logItems(group, entry, False))
        return items

    def _logItems(self, group, entry, removed):
        encoded = nodeLogs(entry, removed)
        flt = group.log_filter
        indexes = [i for i, lg in enumerate(entry.logs) if flt is None or flt.matches(lg)]
        if not indexes:
            return []
        payload = b"".join(group.notification(encoded[i]) for i in indexes)
        if not removed:
            self._remember(payload, entry)
        return [(payload, (("rpc_logs", len(indexes)),))]
