"""
Ethereum JSON-RPC over WebSocket at C{/v1/rpc}: what ethers, viem and
web3.py speak to a node, so their C{eth_subscribe} works unchanged.

JSON-RPC 2.0: single requests and batches (at most C{rpc_batch_max}
requests), in text or binary frames (web3.py sends binary), answered in
text frames; ids echoed as given; a notification (no C{id}) gets no
answer.  Errors::

    -32700  invalid JSON (id null)          -32600  invalid request, empty or too large batch
    -32601  method not served               -32602  bad params, unsupported subscription
    -32000  the upstream node failed (its own error codes pass through)

Methods answered here:

  - C{eth_subscribe ["newHeads"]} and C{["logs", {"address", "topics"}]}
    (L{explorerd.rpcsubs}); a last parameter C{{"since": {"number",
    "hash"}}} resumes from the history as C{/v1/stream}'s C{since} does.
    C{eth_unsubscribe [id]} answers C{true}, or C{false} for an id the
    connection does not hold.
  - C{eth_blockNumber}: the newest block explorerd published, so it never
    contradicts the notifications.
  - C{eth_chainId}, C{net_version}: the node's, asked once.
  - C{eth_getBlockByNumber}, C{eth_getBlockByHash}: from the node, pinned
    by hash for a block in the history (C{latest} is the newest published);
    without a node (an edge), C{null}.
  - C{web3_clientVersion}: explorerd's own.

Everything that changes a node or reads its accounts (C{admin_*},
C{debug_*}, C{personal_*}, C{miner_*}, C{txpool_*}, C{anvil_*}, C{evm_*},
C{hardhat_*}, C{eth_sign*}, C{eth_sendTransaction}, C{eth_accounts}) and
any other method is answered C{-32601} and never reaches the node.

A connection is a hub client like any other: the same admission, caps,
message budget (each request in a batch costs one message), pings and
slow-client policy.
"""

import json

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from prometheus_client import Counter, Gauge
from twisted.internet import defer
from twisted.logger import Logger

from explorerd import __version__, events
from explorerd.connection import HubConnection
from explorerd.events import encode, frame
from explorerd.jsonrpc import RPCError, RPCFailure
from explorerd.logfilter import LogFilter
from explorerd.rpcsubs import LOGS, NEW_HEADS, RpcSubscriptions
from explorerd.stream import apply_limits

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
SERVER_ERROR = -32000

MAX_SUBSCRIPTIONS = 256  # per connection
CLIENT_VERSION = f"explorerd/v{__version__}"

# Methods that write, sign, or reach into a node's internals: never forwarded.
REFUSED_PREFIXES = ("admin_", "debug_", "personal_", "miner_", "txpool_", "anvil_", "evm_", "hardhat_",
                    "eth_sign")
REFUSED_METHODS = frozenset(("eth_sendTransaction", "eth_accounts"))

_BLOCK_TAGS = ("latest", "safe", "finalized", "pending", "earliest")

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
    def __init__(self, registry):
        self.subscriptions = Gauge(
            "explorer_rpc_subscriptions", "eth_subscribe subscriptions held now, by kind.", ["kind"],
            registry=registry)
        self.requests = Counter(
            "explorer_rpc_requests_total", "JSON-RPC requests on /v1/rpc, by method and outcome.",
            ["method", "outcome"], registry=registry)


def refused(method):
    """Whether C{method} changes a node or reads its accounts: answered -32601 here."""
    return method in REFUSED_METHODS or method.startswith(REFUSED_PREFIXES)


def _short(value, limit=64):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _validId(value):
    return value is None or isinstance(value, str) or (
        isinstance(value, (int, float)) and not isinstance(value, bool))


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


class Upstream:
    """
    The node, as clients' calls reach it: through its own
    C{DeferredSemaphore}, so clients can never take the tail's connections
    or starve it; its answers and failures become JSON-RPC answers.
    """

    def __init__(self, rpc, limit=8):
        self.rpc = rpc
        self._semaphore = defer.DeferredSemaphore(limit)
        self._chain_id = None

    def call(self, method, params):
        d = self._semaphore.run(self.rpc.call, method, params)
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


class RpcProtocol(HubConnection, WebSocketServerProtocol):
    """One JSON-RPC WebSocket client: a hub client holding C{eth_subscribe} subscriptions."""

    _explorer_subs = None
    _explorer_after = ()

    def onConnect(self, request):
        self._explorer_ip = self.factory.admission.admit(self, request)
        return None

    def onOpen(self):
        self._explorer_subs = {}
        self._explorer_after = []
        self._explorer_client = self.factory.hub.attach(self, self._explorer_ip, "rpc")
        log.info("JSON-RPC client {client} connected from {peer}",
                 client=self._explorer_client.id, peer=self._explorer_ip)

    def _leaveHub(self, reason):
        client, held = self._explorer_client, self._explorer_subs
        if held:
            self.factory.subscriptions.unsubscribeAll(held, client)
        super()._leaveHub(reason)

    def onMessage(self, payload, isBinary):
        client = self._explorer_client
        if client is None or client.hub is None:
            return
        hub = client.hub
        self.factory.metrics.messages_received.inc()
        if not self._withinBudget(hub):
            return self._overBudget(client, f"too many messages: {self._budgetText()}")
        try:
            message = json.loads(payload)
        except (ValueError, RecursionError):
            self.factory.rpcMetrics.requests.labels("", "parse_error").inc()
            return self._send(_answer(None, error=RpcError(PARSE_ERROR, "parse error: not valid JSON")))
        if isinstance(message, list):
            self._batch(hub, client, message)
        else:
            answer = self._handle(message)
            if answer is not None:
                answer.addCallback(self._send)
        self._afterAnswers()

    def _afterAnswers(self):
        after, self._explorer_after = self._explorer_after, []
        for action in after:
            action()

    def _batch(self, hub, client, requests):
        if not requests:
            return self._send(_answer(None, error=RpcError(INVALID_REQUEST, "invalid request: empty batch")))
        most = self.factory.batchMax
        if len(requests) > most:
            return self._send(_answer(None, error=RpcError(
                INVALID_REQUEST, f"invalid request: a batch holds at most {most} requests, not {len(requests)}")))
        if not self._withinBudget(hub, len(requests) - 1):
            return self._overBudget(client, f"too many messages: {len(requests)} in one batch; "
                                            f"{self._budgetText()}")
        answers = [a for a in map(self._handle, requests) if a is not None]
        if not answers:
            return
        if all(a.called for a in answers):
            # Answered now (nothing forwarded): before anything else is sent.
            results = [a.result for a in answers]
            return self._send(results)
        defer.gatherResults(answers).addCallback(self._send)

    def _send(self, answer):
        client = self._explorer_client
        if client is not None and client.hub is not None:
            client.hub.deliver(client, frame(encode(answer)), 1, "rpc_answer")

    def _handle(self, request):
        """
        The answer to one request, as a Deferred (fired at once unless the
        node was asked), or C{None} for a notification.
        """
        metrics = self.factory.rpcMetrics.requests
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
        label = method if method in self._methods or method in self.factory.forwarded else "other"
        d = defer.maybeDeferred(self._call, method, params)
        notification = "id" not in request

        def answered(result):
            metrics.labels(label, "ok").inc()
            return None if notification else _answer(request_id, result)

        def failed(failure):
            if not failure.check(RpcError):
                log.failure("JSON-RPC {method} failed", failure, method=method)
                error = RpcError(SERVER_ERROR, f"internal error in {method}")
            else:
                error = failure.value
            metrics.labels(label, "error").inc()
            return None if notification else _answer(request_id, error=error)

        d.addCallbacks(answered, failed)
        if notification:
            return None
        return d

    def _call(self, method, params):
        handler = self._methods.get(method)
        if handler is not None:
            return handler(self, params)
        if refused(method):
            raise RpcError(METHOD_NOT_FOUND, f"the method {_short(method)} is not served: explorerd never "
                                             "sends a node anything that signs, sends or changes state")
        raise RpcError(METHOD_NOT_FOUND, f"the method {_short(method)} does not exist or is not available")

    # Methods.

    def _subscribe(self, params):
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
        if kind == LOGS and not self.factory.logsAvailable:
            raise RpcError(INVALID_PARAMS, "this server does not fetch logs (EXPLORERD_RECEIPTS=off): "
                                           "no logs subscriptions")
        if len(self._explorer_subs) >= MAX_SUBSCRIPTIONS:
            raise RpcError(INVALID_PARAMS, f"too many subscriptions on this connection (at most {MAX_SUBSCRIPTIONS})")
        client = self._explorer_client
        group = self.factory.subscriptions.subscribe(self._explorer_subs, client, kind, log_filter)
        if since is not None:
            self._catchUp(client, group, since)
        return group.id

    def _catchUp(self, client, group, since):
        """
        The C{since} extension: the subscription's notifications for every
        block after the one the client holds, written right after the
        answer (the hub keeps the order), as C{/v1/stream} replays; an
        error and nothing subscribed when the history cannot tell.
        """
        hub = client.hub
        status, ancestor, removed = hub.history.resume(since["height"], since["hash"])
        if status != "ok":
            self.factory.subscriptions.unsubscribe(self._explorer_subs, client, group.id)
            oldest = hub.history.oldest
            raise RpcError(INVALID_PARAMS, f"cannot resume after block {since['height']} {since['hash']}: it is "
                                           "older than the history kept, or not a block this server published",
                           {"oldest": None if oldest is None else hex(oldest.height)})
        orphans = [o for o in (hub.history.orphan(r["hash"]) for r in removed) if o is not None]
        items = self.factory.subscriptions.replayItems(group, hub.history.after(ancestor["height"]), orphans)

        def replay():
            for payload, ((kind, n),) in items:
                if client.hub is None:
                    return
                hub.deliver(client, payload, n, kind)

        # After the answer that tells the client the id; in this same turn,
        # so that no live notification can come between.
        self._explorer_after.append(replay)

    def _unsubscribe(self, params):
        params = _params(params, 1, 1, "[subscription id]")
        if not isinstance(params[0], str):
            raise RpcError(INVALID_PARAMS, "invalid params: the subscription id is a string")
        return self.factory.subscriptions.unsubscribe(self._explorer_subs, self._explorer_client, params[0])

    def _blockNumber(self, params):
        _params(params, 0, 0, "no params")
        newest = self.factory.hub.history.newest
        if newest is not None:
            return hex(newest.height)
        return self._upstream().call("eth_blockNumber", [])

    def _chainId(self, params):
        _params(params, 0, 0, "no params")
        return self._upstream().chainId()

    def _netVersion(self, params):
        _params(params, 0, 0, "no params")
        return self._upstream().chainId().addCallback(lambda chain_id: str(int(chain_id, 16)))

    def _clientVersion(self, params):
        _params(params, 0, 0, "no params")
        return CLIENT_VERSION

    def _getBlockByNumber(self, params):
        params = _params(params, 1, 2, "[block number or tag, full transactions?]")
        tag, full = params[0], params[1] if len(params) > 1 else False
        if not isinstance(full, bool):
            raise RpcError(INVALID_PARAMS, "invalid params: the second parameter is true or false")
        history = self.factory.hub.history
        entry = None
        if tag == "latest":
            entry = history.newest
        elif isinstance(tag, str) and tag.startswith("0x"):
            try:
                height = int(tag, 16)
            except ValueError:
                raise RpcError(INVALID_PARAMS, f"invalid params: {_short(tag)!r} is not a block number") from None
            entry = next((e for e in history.after(height - 1) if e.height == height), None)
        elif tag not in _BLOCK_TAGS:
            raise RpcError(INVALID_PARAMS, f"invalid params: {_short(tag)!r} is not a block number or tag")
        if entry is not None:
            return self._block(entry, full)
        return self._forwardOrNull("eth_getBlockByNumber", [tag, full])

    def _getBlockByHash(self, params):
        params = _params(params, 1, 2, "[block hash, full transactions?]")
        full = params[1] if len(params) > 1 else False
        try:
            block_hash = events.topic(params[0])
        except ValueError:
            raise RpcError(INVALID_PARAMS, "invalid params: a block hash is 0x and 64 hex digits") from None
        if not isinstance(full, bool):
            raise RpcError(INVALID_PARAMS, "invalid params: the second parameter is true or false")
        entry = self.factory.hub.history.canonical(block_hash)
        if entry is not None:
            return self._block(entry, full)
        return self._forwardOrNull("eth_getBlockByHash", [block_hash, full])

    def _block(self, entry, full):
        """A block of the history, as the node has it: asked by hash, so never another one."""
        return self._forwardOrNull("eth_getBlockByHash", [entry.hash, full])

    def _forwardOrNull(self, method, params):
        upstream = self.factory.upstream
        if upstream is None:
            return None
        return upstream.call(method, params)

    def _upstream(self):
        if self.factory.upstream is None:
            raise RpcError(METHOD_NOT_FOUND, "this server has no node to ask (an edge without --rpc-url)")
        return self.factory.upstream

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


class RpcFactory(WebSocketServerFactory):
    """Builds L{RpcProtocol}s sharing the hub, its subscriptions, admission, metrics and the node."""

    protocol = RpcProtocol

    def __init__(self, hub, admission, metrics, config, rpc=None, url=None):
        super().__init__(url)
        self.hub = hub
        self.admission = admission
        self.metrics = metrics
        self.rpcMetrics = RpcMetrics(metrics.registry)
        self.subscriptions = RpcSubscriptions(hub, self.rpcMetrics)
        self.upstream = None if rpc is None else Upstream(rpc)
        self.forwarded = frozenset()
        self.batchMax = config.rpc_batch_max
        self.logsAvailable = config.source == "wamp" or config.receipts != "off"
        apply_limits(self, config)
