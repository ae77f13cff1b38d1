"""
The WAMP broker at C{/v1/wamp}, for AutobahnJS (and any WAMP v2) clients.

WAMP v2 over WebSocket, subprotocols C{wamp.2.json}, C{wamp.2.msgpack},
C{wamp.2.cbor} and their C{.batched} variants, on the same port as
C{/v1/stream}.  One realm (C{explorer} unless C{--wamp-realm} says
otherwise), anonymous sessions; server push only.

Topics (the C{data} dicts of the raw protocol, as the one positional arg)::

    explorer.block   [block_data]   every new canonical block, in chain order
    explorer.tx      [tx_data]      each transaction of a block, after its block
    explorer.reorg   [reorg_data]   blocks that are no longer canonical; the
                                    replacements follow as explorer.block/tx
    explorer.log     [logs_data]    a block's logs (the data of a logs message),
                                    after its transactions; after a reorg, those
                                    of the removed blocks, newest first, with
                                    "removed": true

Subscriptions match C{exact} (the default), C{prefix} (C{"explorer."} gets all
four) or C{wildcard} (C{"explorer."} components, empty ones match any);
events of a prefix or wildcard subscription carry C{details.topic}.  A
subscription that can match none of the topics gets ERROR
C{explorer.error.no_such_topic}.  A session holds at most
C{wamp_max_subscriptions} (one more gets ERROR
C{explorer.error.too_many_subscriptions}); it gets an event once per
subscription that matches it.  The realm has 39 subscriptions that match
a topic (4 exact, 25 prefixes, 10 wildcards); nothing else is stored.

Procedures::

    explorer.head()                      → block_data of the newest block, or null
    explorer.blocks_since(height, hash[, limit])
                                         → {"reorg": reorg_data | null,
                                            "blocks": [{"block": block_data,
                                                        "txs": [tx_data, ...],
                                                        "logs": [log, ...] | null}, ...],
                                            "more": bool}

C{blocks_since} follows the raw protocol's resume rules: everything after the
client's block, or, if that block was orphaned, a C{reorg} naming the
client's blocks that are gone and everything after the common ancestor.  At
most C{limit} (default and maximum 32) blocks come in one answer; with
C{"more": true}, call again with the last block received.
When the history cannot tell (the block is older than the history kept, or
was never published here) it fails with ERROR
C{explorer.error.history_unavailable}, kwargs C{{"oldest_height": int | null}}.
Bad arguments get ERROR C{wamp.error.invalid_argument}, other procedures
C{wamp.error.no_such_procedure}.  To resume without a gap: subscribe first,
then call C{blocks_since} with the last block you hold; events that arrive
before the RESULT are in it too (compare hashes), events after it are new.

Refused: PUBLISH (with C{acknowledge} → ERROR C{wamp.error.not_authorized};
without, dropped and counted), REGISTER → ERROR C{wamp.error.not_authorized}.
Nothing a client sends reaches another client.

Session errors: a HELLO for another realm → ABORT C{wamp.error.no_such_realm};
a HELLO that offers authmethods without C{anonymous} → ABORT
C{wamp.error.no_auth_method}; then the WebSocket closes (1000).  A protocol
violation (a message before HELLO, a second HELLO, a frame that does not
decode, an unknown or router-only message type, a binary frame on a JSON
session) → ABORT C{wamp.error.protocol_violation} and close 1002.  On
shutdown every session gets GOODBYE C{wamp.close.system_shutdown}, then the
hub's 1001 close.

Delivery.  WAMP clients are hub clients: admission (origin 403, per-IP rate
limit 429, the shared connection cap 503), the ping sweep, the subscribe
deadline (a session that holds no subscription and makes no CALL for
C{subscribe_timeout} is closed 1008) and the slow-client policy (send
queue, write deadline, close 1008) are the raw stream's, and so is the
message budget: a message counts as what parsing it costs
(L{explorerd.parsecost}; the JSON decoder is Python's pure-Python scanner,
~300 ms for a mebibyte of small numbers), each byte of MessagePack and CBOR a value.  Every
message to a client goes through C{hub.deliver}, so replies and events keep
their order.  An event is one C{Event} per (publication, subscription),
serialized and framed once per wire format in use, and the same bytes go to
every subscriber with that format; a block's transactions go to each client
as one write (for C{.batched} formats, as one WebSocket message).
"""

import itertools
import time

from autobahn import util
from autobahn.twisted.websocket import WampWebSocketServerFactory, WampWebSocketServerProtocol
from autobahn.wamp import message
from autobahn.wamp.exception import ApplicationError, ProtocolError
from autobahn.wamp.role import RoleBrokerFeatures, RoleDealerFeatures
from prometheus_client import Counter, Gauge, Histogram
from twisted.application.service import Service
from twisted.logger import Logger
from zope.interface import implementer

from explorerd import events, parsecost
from explorerd.connection import HubConnection
from explorerd.events import frame
from explorerd.interfaces import IPublicationObserver
from explorerd.metrics import LATENCY_BUCKETS
from explorerd.stream import apply_limits

BLOCK, TX, REORG, LOG = TOPICS = ("explorer.block", "explorer.tx", "explorer.reorg", "explorer.log")
HEAD, BLOCKS_SINCE = PROCEDURES = ("explorer.head", "explorer.blocks_since")
# Blocks (with all their transactions) in one blocks_since answer: ~2.5 MB of
# JSON for busy mainnet blocks; ask again from the last one for more.
MAX_BLOCKS_SINCE = 32

HISTORY_UNAVAILABLE = "explorer.error.history_unavailable"
NO_SUCH_TOPIC = "explorer.error.no_such_topic"
TOO_MANY_SUBSCRIPTIONS = "explorer.error.too_many_subscriptions"
PROTOCOL_VIOLATION = "wamp.error.protocol_violation"
NOT_AUTHORIZED = "wamp.error.not_authorized"
SYSTEM_SHUTDOWN = "wamp.close.system_shutdown"

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002

# The hub's message kinds (its messages_sent{type} label) for WAMP traffic.
_EVENT_KIND = {BLOCK: "wamp_block", TX: "wamp_tx", REORG: "wamp_reorg", LOG: "wamp_log"}

log = Logger()


def serializers():
    """
    The wire formats we speak: JSON, MessagePack and CBOR (C{msgpack} and
    C{cbor2} are dependencies), each plain and batched.
    """
    from autobahn.wamp.serializer import CBORSerializer, JsonSerializer, MsgPackSerializer

    classes = (JsonSerializer, MsgPackSerializer, CBORSerializer)
    return [cls(batched=batched) for batched in (False, True) for cls in classes]


# ---------------------------------------------------------------------------
# Procedures, shared by the embedded broker and the router publisher.

def _since(height, block_hash):
    """The raw protocol's rules for a block a client holds."""
    try:
        return events.since(height, block_hash)
    except ValueError as e:
        raise ApplicationError(ApplicationError.INVALID_ARGUMENT, str(e)) from None


def publications(entry):
    """C{(topic, items)} for a published block, in order: one publication per item."""
    yield BLOCK, (entry.data,)
    if entry.tx_count:
        yield TX, entry.txs_data
    if entry.logs:
        yield LOG, (events.logs_data(entry.data, entry.logs),)


def retractions(reorg, removed):
    """C{(topic, items)} for a reorg: the reorg, then the logs of the removed blocks, newest first."""
    yield REORG, (reorg,)
    for entry in removed:
        if entry.logs:
            yield LOG, (events.logs_data(entry.data, entry.logs, removed=True),)


class Procedures:
    """C{explorer.head} and C{explorer.blocks_since}, answered from the hub's history."""

    def __init__(self, history):
        self.history = history

    def call(self, procedure, args, kwargs):
        """The result of C{procedure}, or L{ApplicationError}."""
        args = list(args or ())
        kwargs = dict(kwargs or {})
        if procedure == HEAD:
            if args or kwargs:
                raise ApplicationError(ApplicationError.INVALID_ARGUMENT, "explorer.head takes no arguments")
            return self.head()
        if procedure == BLOCKS_SINCE:
            names = ("height", "hash", "limit")
            for name in names[len(args):]:
                if name in kwargs:
                    args.append(kwargs.pop(name))
            if len(args) not in (2, 3) or kwargs:
                raise ApplicationError(ApplicationError.INVALID_ARGUMENT,
                                       "explorer.blocks_since takes (height, hash) of the last block you "
                                       f"hold, and optionally a limit (at most {MAX_BLOCKS_SINCE} blocks)")
            return self.blocks_since(*args)
        raise ApplicationError(ApplicationError.NO_SUCH_PROCEDURE,
                               f"no procedure {str(procedure)[:100]!r}; procedures are {', '.join(PROCEDURES)}")

    def head(self):
        newest = self.history.newest
        return None if newest is None else newest.data

    def blocks_since(self, height, block_hash, limit=None):
        since = _since(height, block_hash)
        height, block_hash = since["height"], since["hash"]
        if limit is None:
            limit = MAX_BLOCKS_SINCE
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_BLOCKS_SINCE:
            raise ApplicationError(ApplicationError.INVALID_ARGUMENT,
                                   f"limit must be a whole number from 1 to {MAX_BLOCKS_SINCE}")
        history = self.history
        status, ancestor, removed = history.resume(height, block_hash)
        if status != "ok":
            oldest = history.oldest
            raise ApplicationError(
                HISTORY_UNAVAILABLE,
                f"cannot resume after block {height} {block_hash}: it is older than the history kept, "
                "or not a block this server published",
                oldest_height=None if oldest is None else oldest.height)
        entries = history.after(ancestor["height"])
        reorg = None
        if removed:
            reorg = {"depth": len(removed), "common_ancestor": ancestor, "removed": removed}
        return {"reorg": reorg, "blocks": [{"block": e.data, "txs": e.txs_data, "logs": e.logs}
                                           for e in entries[:limit]],
                "more": len(entries) > limit}


# ---------------------------------------------------------------------------
# Subscriptions.

def _matches(match, uri, topic):
    if match == "exact":
        return uri == topic
    if match == "prefix":
        return topic.startswith(uri)
    parts, want = topic.split("."), uri.split(".")
    return len(parts) == len(want) and all(w == "" or w == p for w, p in zip(want, parts))


class Subscription:
    """
    One (match, uri), shared by every session subscribed to it: one id, one
    C{Event} per publication.  Subscribers are grouped by wire format so each
    format is encoded once.
    """

    __slots__ = ("id", "match", "uri", "topics", "groups", "count")

    def __init__(self, subscription_id, match, uri, topics):
        self.id = subscription_id
        self.match = match
        self.uri = uri
        self.topics = topics
        self.groups = {}  # serializer id → {hub client: None}
        self.count = 0


class WampMetrics:
    """explorer_wamp_* metrics, on the daemon's registry."""

    def __init__(self, registry):
        r = registry
        self.sessions = Gauge("explorer_wamp_sessions", "WAMP sessions joined now.", registry=r)
        self.subscriptions = Gauge(
            "explorer_wamp_subscriptions", "WAMP subscriptions held by sessions now.", registry=r)
        self.events = Counter(
            "explorer_wamp_events_total",
            "WAMP EVENT messages written or queued to sessions, by topic.", ["topic"], registry=r)
        self.encodings = Counter(
            "explorer_wamp_encodings_total",
            "WAMP events serialized and framed, by serializer: once per event and wire format "
            "in use, however many subscribers.", ["serializer"], registry=r)
        self.calls = Counter(
            "explorer_wamp_calls_total", "WAMP CALLs, by procedure and outcome.",
            ["procedure", "outcome"], registry=r)
        self.errors = Counter(
            "explorer_wamp_errors_total",
            "WAMP ERROR and ABORT messages sent to clients, by error URI.", ["error"], registry=r)
        self.messages_received = Counter(
            "explorer_wamp_messages_received_total", "WAMP messages received, by type.", ["type"], registry=r)
        self.broadcast_latency = Histogram(
            "explorer_wamp_broadcast_latency_seconds",
            "From a hub event to the last WAMP subscriber's write done, by topic.",
            ["topic"], buckets=LATENCY_BUCKETS, registry=r)


@implementer(IPublicationObserver)
class Broker(Service):
    """
    The realm: sessions, subscriptions and the fan-out of what the hub
    publishes, each block and reorg to its topic.
    """

    name = "wamp"

    def __init__(self, hub, realm, registry):
        self.hub = hub
        self.realm = realm
        self.serializers = serializers()
        self._objsers = {s.SERIALIZER_ID: (s._serializer, s._serializer.BINARY, "batched" in s.SERIALIZER_ID)
                         for s in self.serializers}
        self.metrics = WampMetrics(registry)
        self.procedures = Procedures(hub.history)
        self.maxSubscriptions = hub.config.wamp_max_subscriptions
        self._sessions = {}
        self._subscriptions = {}  # (match, uri) → Subscription
        self._by_id = {}
        self._by_topic = {topic: [] for topic in TOPICS}
        self._ids = itertools.count(1)
        self._held = 0
        hub.addObserver(self)

    @property
    def sessionCount(self):
        return len(self._sessions)

    # Sessions.

    def join(self, session):
        while session._session_id is None or session._session_id in self._sessions:
            session._session_id = util.id()
        self._sessions[session._session_id] = session
        self.metrics.sessions.set(len(self._sessions))

    def leave(self, session):
        for sub in tuple(session.subscriptions.values()):
            self.unsubscribe(session, sub)
        if self._sessions.pop(session._session_id, None) is not None:
            self.metrics.sessions.set(len(self._sessions))

    def subscribe(self, session, match, uri):
        """
        The L{Subscription} for (match, uri), with C{session} in it; None if
        it can match no topic; L{ApplicationError} when the session already
        holds as many as it may (and this is not one of them).
        """
        key = (match, uri)
        sub = self._subscriptions.get(key)
        if sub is not None and sub.id in session.subscriptions:
            return sub
        topics = sub.topics if sub is not None else tuple(t for t in TOPICS if _matches(match, uri, t))
        if not topics:
            return None
        if len(session.subscriptions) >= self.maxSubscriptions:
            raise ApplicationError(
                TOO_MANY_SUBSCRIPTIONS,
                f"this session holds {len(session.subscriptions)} subscriptions, the most it may "
                "(EXPLORERD_WAMP_MAX_SUBSCRIPTIONS); unsubscribe one first")
        if sub is None:
            sub = Subscription(next(self._ids), match, uri, topics)
            self._subscriptions[key] = sub
            self._by_id[sub.id] = sub
            for topic in topics:
                self._by_topic[topic].append(sub)
        session.subscriptions[sub.id] = sub
        sub.groups.setdefault(session.serializer_id, {})[session.client] = None
        sub.count += 1
        self._held += 1
        self.metrics.subscriptions.set(self._held)
        self.hub.holdsSubscriptions(session.client, True)
        return sub

    def unsubscribe(self, session, sub):
        if session.subscriptions.pop(sub.id, None) is None:
            return
        group = sub.groups.get(session.serializer_id)
        if group is not None:
            group.pop(session.client, None)
            if not group:
                del sub.groups[session.serializer_id]
        sub.count -= 1
        self._held -= 1
        self.metrics.subscriptions.set(self._held)
        if not session.subscriptions:
            self.hub.holdsSubscriptions(session.client, False)
        if sub.count == 0:
            del self._subscriptions[(sub.match, sub.uri)]
            del self._by_id[sub.id]
            for topic in sub.topics:
                self._by_topic[topic].remove(sub)

    # Events.

    def published(self, entry):
        for topic, items in publications(entry):
            self.publish(topic, items)

    def reorganized(self, reorg, removed):
        for topic, items in retractions(reorg, removed):
            self.publish(topic, items)

    def publish(self, topic, items):
        """
        Publish each of C{items} to C{topic}, in order: one publication each.
        Returns the number of sessions written or queued to.
        """
        subs = self._by_topic[topic]
        if not subs:
            return 0
        start = time.perf_counter()
        count = len(items)
        kind = _EVENT_KIND[topic]
        ids = [util.id() for _ in items]
        fanout = self.hub.fanout
        counts = ((kind, count),)
        recipients = 0
        for sub in tuple(subs):
            detail = None if sub.match == "exact" else topic
            messages = [message.Event(sub.id, pub, args=[item], topic=detail)
                        for pub, item in zip(ids, items)]
            for serializer_id, group in tuple(sub.groups.items()):
                payload = self._encode(messages, serializer_id)
                recipients += len(group)
                fanout(group, payload, counts)
        self.metrics.events.labels(topic).inc(recipients * count)
        self.metrics.broadcast_latency.labels(topic).observe(time.perf_counter() - start)
        return recipients

    def _encode(self, messages, serializer_id):
        objser, binary, batched = self._objsers[serializer_id]
        self.metrics.encodings.labels(serializer_id).inc(len(messages))
        if batched:
            # One WebSocket message holding the whole batch.
            return frame(b"".join(m.serialize(objser) for m in messages), binary)
        if len(messages) == 1:
            return frame(messages[0].serialize(objser), binary)
        return b"".join(frame(m.serialize(objser), binary) for m in messages)

    # Service.

    def stopService(self):
        """Say GOODBYE to every session; the hub then closes the connections with 1001."""
        super().stopService()
        for session in tuple(self._sessions.values()):
            session.goodbye(SYSTEM_SHUTDOWN, "server shutting down")


# ---------------------------------------------------------------------------
# One session.

class BrokerSession:
    """
    The WAMP side of one WebSocket connection (an C{ITransportHandler}):
    the session state machine and the broker/dealer messages.
    """

    _session_id = None
    _authid = None

    def __init__(self, broker, transport, client, serializer_id):
        self.broker = broker
        self.client = client
        self.serializer_id = serializer_id
        self.subscriptions = {}
        self._transport = transport
        self._saying_goodbye = False
        self._over = False

    # ITransportHandler

    def onOpen(self, transport):
        self._transport = transport

    def onClose(self, wasClean):
        self._end()

    def onMessage(self, msg):
        if self._over:
            return
        cls = msg.__class__
        self.broker.metrics.messages_received.labels(cls.__name__.upper()).inc()
        if self._session_id is None:
            if cls is message.Hello:
                return self._hello(msg)
            if cls is message.Abort:
                # The client gave up during the opening (it cannot authenticate).
                return self._transport.closeWith(CLOSE_NORMAL, "client aborted")
            return self.violation(f"{cls.__name__.upper()} received before HELLO")
        handler = self._handlers.get(cls)
        if handler is None:
            return self.violation(f"{cls.__name__.upper()} is not a message a client may send to a router")
        handler(self, msg)

    # Session lifecycle.

    def _hello(self, msg):
        broker = self.broker
        if msg.realm != broker.realm:
            return self._abort("wamp.error.no_such_realm",
                               f"no realm {str(msg.realm)[:100]!r} here; the realm is {broker.realm!r}",
                               CLOSE_NORMAL)
        if msg.authmethods and "anonymous" not in msg.authmethods:
            return self._abort("wamp.error.no_auth_method",
                               "this router only admits anonymous sessions", CLOSE_NORMAL)
        broker.join(self)
        self._authid = f"anonymous-{self._session_id}"
        roles = {
            "broker": RoleBrokerFeatures(pattern_based_subscription=True),
            "dealer": RoleDealerFeatures(),
        }
        self._send(message.Welcome(self._session_id, roles, realm=broker.realm, authid=self._authid,
                                   authrole="anonymous", authmethod="anonymous", authprovider="static"))
        log.info("WAMP session {session} joined realm {realm} (client {client}, {serializer})",
                 session=self._session_id, realm=broker.realm, client=self.client.id,
                 serializer=self.serializer_id)

    def _goodbye(self, msg):
        if not self._saying_goodbye:
            self._send(message.Goodbye("wamp.close.goodbye_and_out"))
        self._leave()

    def _leave(self):
        self.broker.leave(self)
        self._session_id = None
        self._authid = None
        self._saying_goodbye = False

    def _end(self):
        if not self._over:
            self._over = True
            self.broker.leave(self)

    def goodbye(self, reason, text):
        """The router ends the session (shutdown); the client answers with its own GOODBYE."""
        if self._session_id is not None and not self._over:
            self._saying_goodbye = True
            self._send(message.Goodbye(reason, message=text))
            self.broker.leave(self)

    def violation(self, text):
        """A protocol violation: ABORT, then close 1002; only this connection is affected."""
        log.info("WAMP client {client}: protocol violation: {text}", client=self.client.id, text=text)
        self._abort(PROTOCOL_VIOLATION, text, CLOSE_PROTOCOL_ERROR)

    def _abort(self, reason, text, code):
        self.broker.metrics.errors.labels(reason).inc()
        self._send(message.Abort(reason, message=text[:500]))
        self._end()
        self._transport.closeWith(code, reason)

    def _send(self, msg):
        self._transport.send(msg)

    def _error(self, request_type, request, error, *args, **kwargs):
        self.broker.metrics.errors.labels(error).inc()
        self._send(message.Error(request_type, request, error, args=list(args) or None, kwargs=kwargs or None))

    # Broker.

    def _subscribe(self, msg):
        match = msg.match or "exact"
        if match not in ("exact", "prefix", "wildcard"):
            return self._error(message.Subscribe.MESSAGE_TYPE, msg.request, "wamp.error.invalid_argument",
                               f"unknown match policy {match!r}; use exact, prefix or wildcard")
        try:
            sub = self.broker.subscribe(self, match, msg.topic)
        except ApplicationError as e:
            return self._error(message.Subscribe.MESSAGE_TYPE, msg.request, e.error, *e.args)
        if sub is None:
            return self._error(message.Subscribe.MESSAGE_TYPE, msg.request, NO_SUCH_TOPIC,
                               f"{match} {str(msg.topic)[:100]!r} matches no topic; topics are "
                               f"{', '.join(TOPICS)}")
        self._send(message.Subscribed(msg.request, sub.id))

    def _unsubscribe(self, msg):
        sub = self.subscriptions.get(msg.subscription)
        if sub is None:
            return self._error(message.Unsubscribe.MESSAGE_TYPE, msg.request, "wamp.error.no_such_subscription",
                               f"no subscription {msg.subscription}")
        self.broker.unsubscribe(self, sub)
        self._send(message.Unsubscribed(msg.request))

    def _publish(self, msg):
        # Server push only: nothing a client publishes goes anywhere.
        self.broker.metrics.errors.labels("publish_refused").inc()
        if msg.acknowledge:
            self._error(message.Publish.MESSAGE_TYPE, msg.request, NOT_AUTHORIZED,
                        "clients may not publish here: explorer topics are published by the server")

    # Dealer.

    def _register(self, msg):
        self._error(message.Register.MESSAGE_TYPE, msg.request, NOT_AUTHORIZED,
                    "clients may not register procedures here")

    def _unregister(self, msg):
        self._error(message.Unregister.MESSAGE_TYPE, msg.request, "wamp.error.no_such_registration",
                    f"no registration {msg.registration}")

    def _call(self, msg):
        metrics = self.broker.metrics
        procedure = msg.procedure if msg.procedure in PROCEDURES else "other"
        if procedure != "other":
            self.broker.hub.madeRequest(self.client)
        try:
            result = self.broker.procedures.call(msg.procedure, msg.args, msg.kwargs)
        except ApplicationError as e:
            metrics.calls.labels(procedure, "error").inc()
            return self._error(message.Call.MESSAGE_TYPE, msg.request, e.error, *e.args, **e.kwargs)
        answer = message.Result(msg.request, args=[result])
        # Charged by the bytes it sends, as the raw protocol's replays are:
        # a blocks_since answer can be 32 busy blocks (~2.5 MB) for one CALL.
        if not self._transport.payForAnswer(answer, f"an answer to {procedure}"):
            metrics.calls.labels(procedure, "over_budget").inc()
            return
        metrics.calls.labels(procedure, "ok").inc()
        self._send(answer)

    def _cancel(self, msg):
        # Calls are answered at once: there is never anything to cancel.
        pass

    _handlers = {
        message.Hello: lambda self, msg: self.violation("HELLO received in an open session"),
        message.Goodbye: _goodbye,
        message.Subscribe: _subscribe,
        message.Unsubscribe: _unsubscribe,
        message.Publish: _publish,
        message.Register: _register,
        message.Unregister: _unregister,
        message.Call: _call,
        message.Cancel: _cancel,
    }


# ---------------------------------------------------------------------------
# The WebSocket side.

class WampProtocol(HubConnection, WampWebSocketServerProtocol):
    """
    One WAMP-over-WebSocket connection: admission and subprotocol choice in
    the handshake, a hub client from the moment it opens, every outgoing
    message through the hub.
    """

    _explorer_ser = None

    def onConnect(self, request):
        self._explorer_ip = self.factory.admission.admit(self, request)
        # Picks the first subprotocol the client offers that we speak, or
        # answers 400 naming the ones we do.
        return super().onConnect(request)

    def onOpen(self):
        factory = self.factory
        self._explorer_client = factory.hub.attach(self, self._explorer_ip, "wamp")
        serializer_id = self._serializer.SERIALIZER_ID
        objser = self._serializer._serializer
        self._explorer_ser = (objser, objser.BINARY)
        self._session = BrokerSession(factory.broker, self, self._explorer_client, serializer_id)
        self._session.onOpen(self)
        log.info("WAMP client {client} connected from {peer} ({protocol})",
                 client=self._explorer_client.id, peer=self._explorer_ip, protocol=serializer_id)

    def onMessage(self, payload, isBinary):
        client = self._explorer_client
        session = self._session
        if client is None or client.hub is None or session is None:
            return
        self.factory.metrics.messages_received.inc()
        # The raw stream's message budget: each WebSocket message costs a
        # token, or what parsing it costs (counted before it is parsed: in
        # MessagePack and CBOR each byte may be a value), and each WAMP
        # message past the first in a batch a token.
        values = parsecost.byte_values if self._explorer_ser[1] else parsecost.json_values
        if not self._payForMessage(client, payload, values):
            return
        try:
            self._received(client, session, payload, isBinary)
        finally:
            self._explorer_credit = 0

    def _received(self, client, session, payload, isBinary):
        try:
            msgs = self._serializer.unserialize(payload, isBinary)
        except ProtocolError as e:
            return session.violation(str(e))
        except Exception as e:  # a parser that raised something else on garbage
            return session.violation(f"invalid WAMP message: {type(e).__name__}")
        if len(msgs) > 1 and not self._takeMore(client.hub, len(msgs) - 1):
            return self._overBudget(client, f"too many messages: {len(msgs)} in one batch; {self._budgetText()}")
        for msg in msgs:
            if self._session is None or client.hub is None:
                break
            session.onMessage(msg)

    def payForAnswer(self, msg, what):
        """Charge C{msg}'s size to the budget before it is sent (its bytes are kept for sending)."""
        client = self._explorer_client
        if client is None or client.hub is None:
            return False
        # At most the burst less the HELLO's token: a fresh session's first
        # full answer always goes through, as a fresh raw client's replay does.
        return self._payForBytes(client, len(msg.serialize(self._explorer_ser[0])), what,
                                 cap=max(1, self.factory.messageBurst - 1))

    def send(self, msg):
        """C{ITransport.send}: serialize with this connection's format, frame, hand to the hub."""
        client = self._explorer_client
        if client is None or client.hub is None:
            return False
        objser, binary = self._explorer_ser
        kind = "wamp_" + msg.__class__.__name__.lower()
        return client.hub.deliver(client, frame(msg.serialize(objser), binary), 1, kind)

    def closeWith(self, code, reason):
        client = self._explorer_client
        if client is not None and client.hub is not None:
            client.hub.close(client, code, reason)
        else:
            self.beginClose(code, reason)

    def isOpen(self):
        return self._session is not None

    def _leaveHub(self, reason):
        session, self._session = self._session, None
        if session is not None:
            session.onClose(False)
        super()._leaveHub(reason)


class WampFactory(WampWebSocketServerFactory):
    """Builds L{WampProtocol}s that share the broker, the hub and the admission policy."""

    protocol = WampProtocol

    def __init__(self, broker, admission, metrics, config, url=None):
        super().__init__(None, url, serializers=broker.serializers)
        self.broker = broker
        self.hub = broker.hub
        self.admission = admission
        self.metrics = metrics
        apply_limits(self, config)
