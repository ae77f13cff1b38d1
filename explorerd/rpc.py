"""
Ethereum JSON-RPC at C{/v1/rpc}: what ethers, viem and web3.py speak to a
node, over WebSocket (with C{eth_subscribe}) and over HTTP C{POST}.

JSON-RPC 2.0: single requests and batches (at most C{rpc_batch_max}
requests, answered as one array in any order), in text or binary frames
(web3.py sends binary), answered in text frames; ids echoed as given; a
notification (no C{id}) gets no answer.  Errors::

    -32700  invalid JSON (id null)          -32600  invalid request, empty or too large batch
    -32601  method not served               -32602  bad params, unsupported subscription
    -32000  the node failed or timed out (a node's own error codes pass through)
    -32005  a limit: too many subscriptions or calls waiting, a replay over the budget

Answered here:

  - C{eth_subscribe ["newHeads"]} and C{["logs", {"address", "topics"}]}
    (L{explorerd.rpcsubs}), WebSocket only; a last parameter
    C{{"since": {"number", "hash"}}} resumes from the history as
    C{/v1/stream}'s C{since} does.  C{eth_unsubscribe [id]} answers
    C{true}, or C{false} for an id the connection does not hold.
  - C{eth_blockNumber}: the newest block explorerd published, so it never
    contradicts the notifications.
  - C{eth_chainId}, C{net_version}: C{EXPLORERD_CHAIN_ID}, else the
    node's, asked once.
  - C{web3_clientVersion}: explorerd's own.
  - C{eth_getBlockByNumber}, C{eth_getBlockByHash}: a block of the history
    without full transactions, from the history as the node gave it;
    others from the node (a block of the history by its hash, so never
    another one); without a node (an edge), an edge's block of the history
    as far as explorerd knows it, else C{null}.

Forwarded to the node: the read-only methods of C{EXPLORERD_RPC_FORWARD},
through a concurrency limit of their own
(C{EXPLORERD_RPC_FORWARD_CONCURRENCY}, apart from the live-tail's calls)
and at most L{PER_CONNECTION} a connection, more waiting in order (up to
C{rpc_batch_max}, a whole batch; more are C{-32005}).  With
C{EXPLORERD_RPC_PIN_LATEST} on, a block parameter that is C{latest} or
absent becomes the block explorerd last announced (EIP-1898
C{{"blockHash": …}}, or its number where a method takes only a number), so
a client that reacts to a C{newHeads} notification reads that block's
state.  C{eth_getLogs} spans at most C{EXPLORERD_RPC_GETLOGS_RANGE} blocks.
An edge without a node answers C{-32601} for them.

Everything that signs, sends or changes a node (C{admin_*}, C{debug_*},
C{personal_*}, C{miner_*}, C{txpool_*}, C{anvil_*}, C{evm_*}, C{hardhat_*},
C{eth_sign*}, C{eth_sendTransaction}, C{eth_accounts}) and any other method
is answered C{-32601} and never reaches the node.

A WebSocket connection is a hub client like any other: the same admission,
caps, message budget (each request of a batch costs one message, a
message at least what parsing it costs, L{explorerd.parsecost}), pings,
subscribe deadline and slow-client policy; one closed as too slow is told
the last block it was sent (L{IResumeHint}).  At most
C{rpc_max_subscriptions} subscriptions a connection, their logs filters
holding at most L{FILTER_ENTRIES} addresses and topics together (more is
C{-32005}); a filter costs messages of the budget as on C{/v1/stream}.  A
request counts as use for the subscribe deadline, but for L{KEEPALIVES}.  HTTP C{POST} (L{explorerd.web.RpcResource}) answers the
same methods but subscriptions.
"""

import json
import math
import time
from collections import OrderedDict

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from prometheus_client import Counter, Gauge, Histogram
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from explorerd import __version__, events, parsecost
from explorerd.config import rpc_refused
from explorerd.connection import HubConnection
from explorerd.events import encode, frame
from explorerd.interfaces import IResumeHint
from explorerd.jsonrpc import RPCError, RPCFailure
from explorerd.logfilter import LogFilter
from explorerd.metrics import LATENCY_BUCKETS
from explorerd.rpcsubs import LOGS, NEW_HEADS, RpcSubscriptions, nodeHeader
from explorerd.stream import apply_limits

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
SERVER_ERROR, LIMIT_EXCEEDED = -32000, -32005

PER_CONNECTION = 16  # forwarded calls in flight per connection
# Addresses and topics the logs filters of one connection's subscriptions
# hold together: what one /v1/stream connection can hold at most (1,000
# addresses for newTxs, a logs filter of 1,000 and 4 x 1,000 topics), some
# 1.3 MiB of indexes, not 64 times that.
FILTER_ENTRIES = 6000
# What libraries send to keep a connection alive (viem's keepAlive asks
# net_version): like pings, they do not start the subscribe deadline again.
KEEPALIVES = frozenset(("net_version", "eth_chainId", "web3_clientVersion"))
CLIENT_VERSION = f"explorerd/v{__version__}"

# Where each forwarded method takes its block: (index, EIP-1898 hash allowed?).
BLOCK_PARAM = {
    "eth_call": (1, True),
    "eth_estimateGas": (1, True),
    "eth_getBalance": (1, True),
    "eth_getTransactionCount": (1, True),
    "eth_getCode": (1, True),
    "eth_getStorageAt": (2, True),
    "eth_getProof": (2, True),
    "eth_getBlockReceipts": (0, True),
    "eth_feeHistory": (1, False),
}

log = Logger()


class RpcError(Exception):
    """A JSON-RPC error answer: C{code}, C{message} and optional C{data}."""

    def __init__(self, code, message, data=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def asDict(self):
        error = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class RpcMetrics:
    """The metrics of C{/v1/rpc}, in the daemon's registry."""

    def __init__(self, registry):
        self.subscriptions = Gauge(
            "explorer_rpc_subscriptions", "eth_subscribe subscriptions held now, by kind.", ["kind"],
            registry=registry)
        self.requests = Counter(
            "explorer_rpc_requests_total",
            "JSON-RPC requests on /v1/rpc, by method (other: methods not served) and outcome.",
            ["method", "outcome"], registry=registry)
        self.forwarded = Histogram(
            "explorer_rpc_forwarded_latency_seconds", "Calls forwarded to the node, until its answer.",
            ["method"], buckets=LATENCY_BUCKETS + (5.0, 10.0), registry=registry)


class RawJSON(bytes):
    """A result already encoded: spliced into its answers, not encoded again."""


def encodeAnswer(answer):
    """An answer (or a batch of them) as JSON bytes, L{RawJSON} results spliced in as they are."""
    if isinstance(answer, list):
        return b"[" + b",".join(encodeAnswer(a) for a in answer) + b"]"
    result = answer.get("result")
    try:
        if isinstance(result, RawJSON):
            return b'{"jsonrpc":"2.0","id":' + encode(answer["id"]) + b',"result":' + result + b"}"
        return encode(answer)
    except UnicodeEncodeError:
        # A lone surrogate (JSON allows "\ud800") echoed back: escaped, as it came.
        if isinstance(result, RawJSON):
            answer = dict(answer, result=json.loads(result))
        return json.dumps(answer, separators=(",", ":")).encode("ascii")


def _short(value, limit=64):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _validId(value):
    if isinstance(value, float):
        return math.isfinite(value)  # Infinity would be echoed as no JSON at all
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _answer(request_id, result=None, error=None):
    if error is not None:
        return {"jsonrpc": "2.0", "id": request_id, "error": error.asDict()}
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def _params(params, least, most, usage):
    if not isinstance(params, list) or not least <= len(params) <= most:
        raise RpcError(INVALID_PARAMS, f"invalid params: expected {usage}")
    return params


def _since(options):
    """C{{"height", "hash"}} from the C{since} extension's C{{"since": {"number", "hash"}}}."""
    since = options.get("since") if isinstance(options, dict) else None
    if not isinstance(options, dict) or set(options) != {"since"} or not isinstance(since, dict):
        raise RpcError(INVALID_PARAMS, 'invalid params: the last parameter may be {"since": {"number": '
                                       '"0x…", "hash": "0x…"}}, the block the client holds')
    number = since.get("number")
    try:
        if not isinstance(number, str) or not number.startswith("0x"):
            raise ValueError("number must be a hex quantity")
        return events.since(int(number, 16), since.get("hash"))
    except ValueError as e:
        raise RpcError(INVALID_PARAMS, f"invalid params: since: {e}") from None


def _number(value, what):
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise RpcError(INVALID_PARAMS, f"invalid params: {what} {_short(value)!r} is not a block number or tag")


class Upstream:
    """
    The node, as clients' calls reach it: through its own
    C{DeferredSemaphore}, so clients never take the tail's place or starve
    it; its answers and failures become JSON-RPC answers.
    """

    def __init__(self, rpc, limit, metrics):
        self.rpc = rpc
        self.metrics = metrics
        self._semaphore = defer.DeferredSemaphore(limit)
        self._chain_id = None

    def call(self, method, params):
        start = time.perf_counter()

        def timed(result):
            self.metrics.forwarded.labels(method).observe(time.perf_counter() - start)
            return result

        d = self._semaphore.run(self.rpc.call, method, params)
        d.addBoth(timed)
        d.addErrback(self._failed, method)
        return d

    @staticmethod
    def _failed(failure, method):
        error = failure.value
        if isinstance(error, RPCError):
            raise RpcError(error.code, error.message, error.data)
        if isinstance(error, RPCFailure):
            raise RpcError(SERVER_ERROR, f"the node did not answer {method}: {error}")
        return failure

    def chainId(self):
        if self._chain_id is not None:
            return defer.succeed(self._chain_id)

        def keep(result):
            self._chain_id = result
            return result

        return self.call("eth_chainId", []).addCallback(keep)


class Session:
    """
    What one caller holds: its subscriptions (a WebSocket connection; an
    HTTP request has none) and its share of the node, L{PER_CONNECTION}
    calls in flight.
    """

    def __init__(self, client=None, payForReplay=None, payForFilter=None):
        self.client = client
        # (bytes, tokens the filter took) → whether the budget paid for a replay that size
        self.payForReplay = payForReplay
        # (addresses and topics) → tokens taken besides the request's, or None: over the budget
        self.payForFilter = payForFilter
        self.subscriptions = {} if client is not None else None
        self.after = []  # replays written right after the answers that announce them
        self.inflight = defer.DeferredSemaphore(PER_CONNECTION)
        self.closed = False


class RpcService:
    """
    The methods of C{/v1/rpc}, shared by the WebSocket and HTTP front ends:
    a request or batch in, its answer (a Deferred) out.
    """

    def __init__(self, hub, config, registry, rpc=None):
        self.hub = hub
        self.metrics = RpcMetrics(registry)
        self.subscriptions = RpcSubscriptions(hub, self.metrics)
        self.upstream = None if rpc is None else Upstream(rpc, config.rpc_forward_concurrency, self.metrics)
        self.forwarded = frozenset(config.rpc_forward)
        self.chainId = config.chain_id
        self._blocks = OrderedDict()  # hash → RawJSON of recent blocks asked for
        self.batchMax = config.rpc_batch_max
        self.pinLatest = config.rpc_pin_latest
        self.getLogsRange = config.rpc_getlogs_range
        self.maxSubscriptions = config.rpc_max_subscriptions
        self.logsAvailable = config.source == "wamp" or config.receipts != "off"

    def parse(self, payload):
        """C{(message, None)}, or C{(None, answer)} for a payload that is not JSON or is an empty batch."""
        try:
            message = json.loads(payload)
        except (ValueError, RecursionError):
            self.metrics.requests.labels("", "parse_error").inc()
            return None, _answer(None, error=RpcError(PARSE_ERROR, "parse error: not valid JSON"))
        if isinstance(message, list):
            if not message:
                return None, _answer(None, error=RpcError(INVALID_REQUEST, "invalid request: empty batch"))
            if len(message) > self.batchMax:
                return None, _answer(None, error=RpcError(
                    INVALID_REQUEST, f"invalid request: a batch holds at most {self.batchMax} requests, "
                                     f"not {len(message)}"))
        return message, None

    def answer(self, message, session):
        """
        A Deferred of the answer to C{message} (one request or a batch),
        C{None} when there is none (notifications only).  Fired at once
        unless the node was asked.
        """
        if not isinstance(message, list):
            return self._handle(message, session)
        answers = [a for a in (self._handle(r, session) for r in message) if a is not None]
        if not answers:
            return None
        return defer.gatherResults(answers)

    def _handle(self, request, session):
        metrics = self.metrics.requests
        if not isinstance(request, dict):
            metrics.labels("", "invalid_request").inc()
            return defer.succeed(_answer(None, error=RpcError(INVALID_REQUEST, "invalid request: not an object")))
        request_id = request.get("id")
        if not _validId(request_id):
            request_id = None
            problem = "id must be a string, a number or null"
        elif request.get("jsonrpc") != "2.0":
            problem = 'jsonrpc must be "2.0"'
        elif not isinstance(request.get("method"), str):
            problem = "method must be a string"
        elif not isinstance(request.get("params", []), (list, dict)):
            problem = "params must be an array or an object"
        else:
            problem = None
        if problem is not None:
            metrics.labels("", "invalid_request").inc()
            return defer.succeed(_answer(request_id, error=RpcError(INVALID_REQUEST, "invalid request: " + problem)))
        method, params = request["method"], request.get("params", [])
        label = method if method in self._methods or method in self.forwarded else "other"
        notification = "id" not in request
        if session.client is not None and label != "other" and method not in KEEPALIVES:
            self.hub.madeRequest(session.client)

        def answered(result):
            metrics.labels(label, "ok").inc()
            return None if notification else _answer(request_id, result)

        def failed(failure):
            if failure.check(RpcError):
                error = failure.value
            else:
                log.failure("JSON-RPC {method} failed", failure, method=method)
                error = RpcError(SERVER_ERROR, f"internal error in {method}")
            metrics.labels(label, "error").inc()
            return None if notification else _answer(request_id, error=error)

        d = defer.maybeDeferred(self._call, method, params, session)
        d.addCallbacks(answered, failed)
        return None if notification else d

    def _call(self, method, params, session):
        handler = self._methods.get(method)
        if handler is not None:
            return handler(self, params, session)
        if method in self.forwarded:
            return self._forward(method, self._pinned(method, params), session)
        if rpc_refused(method):
            raise RpcError(METHOD_NOT_FOUND, f"the method {_short(method)} is not served: explorerd never "
                                             "sends a node anything that signs, sends or changes state")
        raise RpcError(METHOD_NOT_FOUND, f"the method {_short(method)} does not exist or is not available")

    # Forwarding.

    def _forward(self, method, params, session):
        upstream = self.upstream
        if upstream is None:
            raise RpcError(METHOD_NOT_FOUND, f"the method {method} is not available: this server has no node "
                                             "to ask (an edge without --rpc-url)")
        if len(session.inflight.waiting) >= self.batchMax:
            # Else a connection calling faster than the node answers queues
            # calls (and their params) without end, all still to be sent.
            raise RpcError(LIMIT_EXCEEDED, f"too many calls to the node from this connection: {PER_CONNECTION} in "
                                           f"flight and {self.batchMax} waiting; wait for their answers")
        return session.inflight.run(self._forwardNow, session, upstream, method, params)

    @staticmethod
    def _forwardNow(session, upstream, method, params):
        # Calls still waiting when their connection closed are not sent: nobody would read the answer.
        if session.closed:
            raise RpcError(SERVER_ERROR, "the connection closed")
        return upstream.call(method, params)

    def _pinned(self, method, params):
        """C{params} with a C{latest} (or absent) block made the newest announced block, if so set."""
        if not isinstance(params, list):
            raise RpcError(INVALID_PARAMS, "invalid params: expected an array")
        newest = self.hub.history.newest
        if method == "eth_getLogs":
            return self._getLogsParams(params, newest)
        where = BLOCK_PARAM.get(method)
        if where is None or newest is None or not self.pinLatest:
            return params
        index, by_hash = where
        pin = {"blockHash": newest.hash} if by_hash else hex(newest.height)
        if len(params) == index:
            return params + [pin]
        if len(params) > index and params[index] == "latest":
            return params[:index] + [pin] + params[index + 1:]
        return params

    def _getLogsParams(self, params, newest):
        params = _params(params, 1, 1, "[filter]")
        flt = params[0]
        if not isinstance(flt, dict):
            raise RpcError(INVALID_PARAMS, "invalid params: the filter is an object")
        if "blockHash" in flt:
            return params
        flt = dict(flt)
        head = None
        if newest is not None and self.pinLatest:
            head = newest.height
            for key in ("fromBlock", "toBlock"):
                if flt.get(key, "latest") == "latest":
                    flt[key] = hex(head)
        start, end = flt.get("fromBlock", "latest"), flt.get("toBlock", "latest")
        if start == "earliest":
            start = "0x0"
        if isinstance(start, str) and start.startswith("0x") and isinstance(end, str) and end.startswith("0x"):
            span = _number(end, "toBlock") - _number(start, "fromBlock") + 1
            if span > self.getLogsRange:
                raise RpcError(INVALID_PARAMS, f"invalid params: eth_getLogs spans {span} blocks; at most "
                                               f"{self.getLogsRange} (EXPLORERD_RPC_GETLOGS_RANGE)")
        elif start not in ("latest", "safe", "finalized", "pending") or end not in ("latest", "safe",
                                                                                   "finalized", "pending"):
            # A range from a number to a tag: its size is the node's to know; refuse rather than guess.
            if not (isinstance(end, str) and end.startswith("0x")):
                raise RpcError(INVALID_PARAMS, "invalid params: eth_getLogs needs a fromBlock and toBlock of "
                                               f"at most {self.getLogsRange} blocks, as numbers")
        return [flt]

    # Methods answered here.

    def _subscribe(self, params, session):
        if session.subscriptions is None:
            raise RpcError(METHOD_NOT_FOUND, "eth_subscribe needs a WebSocket connection (ws://…/v1/rpc)")
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            raise RpcError(INVALID_PARAMS, 'invalid params: expected ["newHeads"] or ["logs", {filter}]')
        kind, rest = params[0], params[1:]
        since = None
        if kind == NEW_HEADS:
            if len(rest) > 1:
                raise RpcError(INVALID_PARAMS, 'invalid params: newHeads takes no filter ("since" only)')
            log_filter = None
        elif kind == LOGS:
            if len(rest) > 2:
                raise RpcError(INVALID_PARAMS, 'invalid params: expected ["logs", {filter}, {"since": …}]')
            try:
                log_filter = LogFilter.parse(rest[0] if rest else None)
            except ValueError as e:
                raise RpcError(INVALID_PARAMS, f"invalid params: {e}") from None
            if log_filter.everything:
                log_filter = None
            rest = rest[1:]
        else:
            raise RpcError(INVALID_PARAMS, f"unsupported subscription {_short(kind)!r}: explorerd streams mined "
                                           "blocks (no mempool, no sync status); eth_subscribe supports "
                                           '"newHeads" and "logs"')
        if rest:
            since = _since(rest[0])
        if kind == LOGS and not self.logsAvailable:
            raise RpcError(INVALID_PARAMS, "this server does not fetch logs (EXPLORERD_RECEIPTS=off): "
                                           "no logs subscriptions")
        paid = 0
        if log_filter is not None and session.payForFilter is not None:
            # Charged as /v1/stream charges its filters, before any of the work.
            paid = session.payForFilter(log_filter.size)
            if paid is None:
                raise RpcError(LIMIT_EXCEEDED, "too many messages: the filter is over the message budget")
        if since is None:
            return self._subscribeNow(session, kind, log_filter, None)
        # After a restart the live-tail gives the hub its history back before
        # it publishes anything: a resume waits for that, as on /v1/stream.
        restored = defer.Deferred()
        self.hub.whenResumable(lambda: restored.callback(None))
        return restored.addCallback(lambda _: self._subscribeNow(session, kind, log_filter, since, paid))

    def _subscribeNow(self, session, kind, log_filter, since, paid=0):
        if session.closed:
            raise RpcError(SERVER_ERROR, "the connection closed")
        if len(session.subscriptions) >= self.maxSubscriptions:
            raise RpcError(LIMIT_EXCEEDED, f"too many subscriptions on this connection (at most "
                                           f"{self.maxSubscriptions}, EXPLORERD_RPC_MAX_SUBSCRIPTIONS): "
                                           "eth_unsubscribe one first")
        if log_filter is not None:
            held = sum(g.log_filter.size for g in session.subscriptions.values() if g.log_filter is not None)
            if held + log_filter.size > FILTER_ENTRIES:
                raise RpcError(LIMIT_EXCEEDED, f"the filters of this connection's subscriptions would hold "
                                               f"{held + log_filter.size} addresses and topics, at most "
                                               f"{FILTER_ENTRIES}: eth_unsubscribe one first")
        group = self.subscriptions.subscribe(session.subscriptions, session.client, kind, log_filter)
        if since is not None:
            self._catchUp(session, group, since, paid)
        return group.id

    def _catchUp(self, session, group, since, paid=0):
        """
        The C{since} extension: the subscription's notifications for every
        block after the one the client holds (the removed blocks' logs
        first, when a reorg took it), written right after the answer, as
        C{/v1/stream} replays, and paid for from the message budget as
        those are; an error and nothing subscribed when the history cannot
        tell.
        """
        hub, client = self.hub, session.client
        status, ancestor, removed = hub.history.resume(since["height"], since["hash"])
        if status != "ok":
            self.subscriptions.unsubscribe(session.subscriptions, client, group.id)
            oldest = hub.history.oldest
            raise RpcError(INVALID_PARAMS, f"cannot resume after block {since['height']} {since['hash']}: it is "
                                           "older than the history kept, or not a block this server published",
                           {"oldest": None if oldest is None else hex(oldest.height)})
        orphans = [o for o in (hub.history.orphan(r["hash"]) for r in removed) if o is not None]
        items = self.subscriptions.replayItems(group, hub.history.after(ancestor["height"]), orphans)
        if session.payForReplay is not None and not session.payForReplay(sum(len(p) for p, _ in items), paid):
            self.subscriptions.unsubscribe(session.subscriptions, client, group.id)
            raise RpcError(LIMIT_EXCEEDED, "too many messages: the replay is over the message budget")
        session.after.append(lambda: hub.deliverBacklog(client, items))

    def _unsubscribe(self, params, session):
        if session.subscriptions is None:
            raise RpcError(METHOD_NOT_FOUND, "eth_unsubscribe needs a WebSocket connection (ws://…/v1/rpc)")
        params = _params(params, 1, 1, "[subscription id]")
        if not isinstance(params[0], str):
            raise RpcError(INVALID_PARAMS, "invalid params: the subscription id is a string")
        return self.subscriptions.unsubscribe(session.subscriptions, session.client, params[0])

    def _blockNumber(self, params, session):
        _params(params, 0, 0, "no params")
        newest = self.hub.history.newest
        if newest is not None:
            return hex(newest.height)
        return self._forward("eth_blockNumber", [], session)

    def _chain(self):
        """The chain id (0x-hex): the setting's, else the node's."""
        if self.chainId:
            return defer.succeed(hex(self.chainId))
        if self.upstream is None:
            raise RpcError(METHOD_NOT_FOUND, "this server has no node to ask the chain id (an edge without "
                                             "--rpc-url): set EXPLORERD_CHAIN_ID")
        return self.upstream.chainId()

    def _chainId(self, params, session):
        _params(params, 0, 0, "no params")
        return self._chain()

    def _netVersion(self, params, session):
        _params(params, 0, 0, "no params")
        return self._chain().addCallback(lambda chain_id: str(int(chain_id, 16)))

    def _clientVersion(self, params, session):
        _params(params, 0, 0, "no params")
        return CLIENT_VERSION

    def _getBlockByNumber(self, params, session):
        params = _params(params, 1, 2, "[block number or tag, full transactions?]")
        tag, full = params[0], params[1] if len(params) > 1 else False
        if not isinstance(full, bool):
            raise RpcError(INVALID_PARAMS, "invalid params: the second parameter is true or false")
        history = self.hub.history
        entry = None
        if tag == "latest":
            entry = history.newest if self.pinLatest else None
        elif tag not in ("safe", "finalized", "pending", "earliest"):
            entry = history.at(_number(tag, "block"))
        if entry is not None:
            return self._block(entry, full, session)
        return self._forwardOrNull("eth_getBlockByNumber", [tag, full], session)

    def _getBlockByHash(self, params, session):
        params = _params(params, 1, 2, "[block hash, full transactions?]")
        full = params[1] if len(params) > 1 else False
        try:
            block_hash = events.topic(params[0])
        except ValueError:
            raise RpcError(INVALID_PARAMS, "invalid params: a block hash is 0x and 64 hex digits") from None
        if not isinstance(full, bool):
            raise RpcError(INVALID_PARAMS, "invalid params: the second parameter is true or false")
        entry = self.hub.history.canonical(block_hash)
        if entry is not None:
            return self._block(entry, full, session)
        return self._forwardOrNull("eth_getBlockByHash", [block_hash, full], session)

    def _block(self, entry, full, session):
        """
        A block of the history: without its transactions' bodies, from the
        history as the node gave it (encoded once, for every client that
        asks: viem's C{watchBlocks} asks for each block it is told of);
        with them, from the node, asked by hash so that it is this very
        block.  An edge's block without a node: the fields explorerd
        publishes, in the node's format.
        """
        if not full and entry.header is not None and entry.extras is not None:
            return self._encodedBlock(entry)
        if self.upstream is not None:
            return self._forward("eth_getBlockByHash", [entry.hash, full], session)
        if full:
            return None
        return self._encodedBlock(entry)

    def _encodedBlock(self, entry):
        cache = self._blocks
        raw = cache.get(entry.hash)
        if raw is None:
            if entry.header is not None and entry.extras is not None:
                block = dict(entry.header, **entry.extras)
            else:
                block = dict(nodeHeader(entry))
                if entry.data.get("size") is not None:
                    block["size"] = hex(entry.data["size"])
            block["transactions"] = [tx["hash"] for tx in entry.txs_data]
            raw = cache[entry.hash] = RawJSON(encode(block))
            while len(cache) > 64:
                cache.popitem(last=False)
        return raw

    def _forwardOrNull(self, method, params, session):
        """Forwarded, or C{null} (a block the server does not know) when there is no node to ask."""
        if self.upstream is None:
            return None
        return self._forward(method, params, session)

    _methods = {
        "eth_subscribe": _subscribe,
        "eth_unsubscribe": _unsubscribe,
        "eth_blockNumber": _blockNumber,
        "eth_chainId": _chainId,
        "net_version": _netVersion,
        "web3_clientVersion": _clientVersion,
        "eth_getBlockByNumber": _getBlockByNumber,
        "eth_getBlockByHash": _getBlockByHash,
    }


@implementer(IResumeHint)
class RpcProtocol(HubConnection, WebSocketServerProtocol):
    """One JSON-RPC WebSocket client: a hub client holding C{eth_subscribe} subscriptions."""

    _explorer_session = None

    def onConnect(self, request):
        self._explorer_ip = self.factory.admission.admit(self, request)
        return None

    def onOpen(self):
        client = self._explorer_client = self.factory.hub.attach(self, self._explorer_ip, "rpc")
        self._explorer_session = Session(client, self._payForReplay, self._payForFilterOf)
        log.info("JSON-RPC client {client} connected from {peer}", client=client.id, peer=self._explorer_ip)

    def _leaveHub(self, reason):
        session = self._explorer_session
        if session is not None:
            session.closed = True
            if session.subscriptions:
                self.factory.service.subscriptions.unsubscribeAll(session.subscriptions, session.client)
        super()._leaveHub(reason)

    def onMessage(self, payload, isBinary):
        client, session = self._explorer_client, self._explorer_session
        if client is None or client.hub is None:
            return
        self.factory.metrics.messages_received.inc()
        # Paid for by what parsing it costs, before it is parsed; binary
        # frames (web3.py's) are JSON too.
        if not self._payForMessage(client, payload, parsecost.json_values):
            return
        try:
            self._received(client, session, payload)
        finally:
            self._explorer_credit = 0  # a resume that waits for the history pays anew

    def _received(self, client, session, payload):
        service = self.factory.service
        message, error = service.parse(payload)
        if error is not None:
            return self._send(error)
        if isinstance(message, list) and not self._takeMore(client.hub, len(message) - 1):
            return self._overBudget(client, f"too many messages: {len(message)} in one batch; "
                                            f"{self._budgetText()}")
        answer = service.answer(message, session)
        if answer is None:
            return self._afterAnswers(session)
        answer.addCallback(self._send)
        answer.addCallback(lambda _: self._afterAnswers(session))

    @staticmethod
    def _afterAnswers(session):
        """
        Replays (C{since}) go out right after the answers that give their
        ids, in the same turn, so that no live notification comes between.
        """
        after, session.after = session.after, []
        for replay in after:
            replay()

    def _payForReplay(self, size, paid=0):
        """
        A C{since} replay of C{size} bytes, charged as C{/v1/stream} charges
        its replays (with its filter's C{paid} tokens, at most a burst).
        """
        return self._payForBytes(self._explorer_client, size, "a replay",
                                 cap=max(1, self.factory.messageBurst - paid))

    def _payForFilterOf(self, entries):
        """A logs filter of C{entries} addresses and topics, charged as C{/v1/stream} charges its filters."""
        return self._payForFilter(self._explorer_client, entries)

    def resumeHint(self, client):
        """
        Closed as too slow: the last block it was sent (everything before
        the oldest block still queued for it), to resume from with C{since}.
        """
        session = self._explorer_session
        if session is None or not session.subscriptions:
            return None
        first = self.factory.service.subscriptions.firstQueued(client.queue)
        if first is False:
            return None
        if first is None:
            newest = self.factory.hub.history.newest
            if newest is None:
                return None
            number, block_hash = newest.height, newest.hash
        else:
            number, block_hash = first.height - 1, first.parent_hash
        return f"last block sent {hex(number)} {block_hash}"

    def _send(self, answer):
        client = self._explorer_client
        if client is not None and client.hub is not None:
            client.hub.deliver(client, frame(encodeAnswer(answer)), 1, "rpc_answer")


class RpcFactory(WebSocketServerFactory):
    """Builds L{RpcProtocol}s sharing the hub, the L{RpcService}, admission and metrics."""

    protocol = RpcProtocol

    def __init__(self, service, admission, metrics, config, url=None):
        super().__init__(url)
        self.service = service
        self.hub = service.hub
        self.admission = admission
        self.metrics = metrics
        apply_limits(self, config)
