"""
Ethereum JSON-RPC over HTTP(S), on treq.

The live-tail polls one node for the life of the daemon, so the client keeps
its own persistent ``HTTPConnectionPool`` (one warm keep-alive connection
instead of a TCP/TLS handshake per poll; never treq's global pool, which
would leak connections across tests and services) and ``close()`` drops it.

Every call has one deadline that covers connecting, sending, the response
headers *and* the body. (treq's ``timeout=`` stops at the headers, so a node
that stalls mid-body would hang a poll forever.) On the deadline the
connection is closed and the call fails with :class:`RPCTimeout`.

Failures are typed so the caller can pick a policy without parsing strings;
all are :class:`RPCFailure` and carry ``.method``:

- :class:`RPCError`: the node answered with a JSON-RPC error object
  (``.code``, ``.message``, ``.data``). Retrying the same call rarely helps.
- :class:`RPCUnavailable`: nothing usable came back (refused, reset, DNS,
  TLS, client closed); :class:`RPCTimeout` is the deadline case. Retry later.
- :class:`RPCHTTPError`: an HTTP status other than 2xx (``.status``), e.g.
  a proxy's 502 or a provider's 429.
- :class:`RPCProtocolError`: a 2xx answer that is not valid JSON-RPC
  (garbage, wrong id, no result, too large). Usually a misconfigured URL.

Batches (:meth:`JSONRPCClient.batch`) send one HTTP request and return the
results in request order, matched by id (servers may answer in any order).
"""

import itertools
import json
import re
import time
from urllib.parse import urlsplit

from twisted.internet import defer, error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    PotentialDataLoss,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)

try:  # TLS errors usually arrive wrapped in ResponseNeverReceived anyway
    from OpenSSL.SSL import Error as _TLSError
except ImportError:  # pragma: no cover - twisted without the [tls] extra
    _TLSError = ()

from treq.client import HTTPClient

__all__ = [
    "JSONRPCClient",
    "RPCFailure",
    "RPCError",
    "RPCUnavailable",
    "RPCTimeout",
    "RPCHTTPError",
    "RPCProtocolError",
    "BLOCK_TAGS",
]

BLOCK_TAGS = frozenset({"latest", "earliest", "pending", "safe", "finalized"})

# Exceptions that mean "the transport failed", not "we have a bug".
_TRANSPORT_ERRORS = (
    ierror.ConnectError,  # refused, DNS, connect timeout, no route
    ierror.ConnectionClosed,  # lost, aborted, done early
    ierror.ConnectingCancelledError,
    ResponseFailed,
    ResponseNeverReceived,
    RequestTransmissionFailed,
    RequestNotSent,
    OSError,
) + ((_TLSError,) if _TLSError else ())

_BODY_SNIPPET = 200


class RPCFailure(Exception):
    """Base of every failure of a call; ``.method`` names the RPC method."""

    def __init__(self, method, detail):
        super().__init__(method, detail)
        self.method = method
        self.detail = detail

    def __str__(self):
        return f"{self.method}: {self.detail}"


class RPCError(RPCFailure):
    """
    The node returned a JSON-RPC error object.

    ``index`` is the position in a batch (None for a single call).
    """

    def __init__(self, method, code, message, data=None, index=None):
        where = "" if index is None else f" (batch item {index})"
        super().__init__(method, f"error {code}: {message}{where}")
        self.code = code
        self.message = message
        self.data = data
        self.index = index


class RPCUnavailable(RPCFailure):
    """No usable answer: connection refused/reset, DNS, TLS, or closed client."""


class RPCTimeout(RPCUnavailable):
    """The call's deadline passed; the connection was closed."""

    def __init__(self, method, timeout):
        super().__init__(method, f"no complete answer within {timeout:g}s")
        self.timeout = timeout


class RPCHTTPError(RPCFailure):
    """HTTP status other than 2xx; ``.body`` holds the start of the body."""

    def __init__(self, method, status, body=b""):
        snippet = body[:_BODY_SNIPPET].decode("utf-8", "replace")
        super().__init__(method, f"HTTP {status}: {snippet!r}")
        self.status = status
        self.body = body


class RPCProtocolError(RPCFailure):
    """A 2xx answer that is not the JSON-RPC response we asked for."""


class _TooLarge(Exception):
    pass


@implementer(IBodyProducer)
class _BytesProducer:
    """
    Write a request body in one go.

    treq would wrap bytes in a ``FileBodyProducer``, which paces itself with
    the global cooperator (timers on the global reactor); a JSON-RPC body is
    small, so a single write is simpler and uses no timers at all.
    """

    def __init__(self, body):
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer):
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class _BodyReader(Protocol):
    """
    Collect a response body up to ``limit`` bytes.

    Unlike ``treq.content`` this is cancellable (cancel closes the
    connection, so a stalled body cannot keep a socket open) and bounded.
    """

    def __init__(self, limit):
        self.limit = limit
        self.chunks = []
        self.size = 0
        self.finished = Deferred(self._cancel)

    def _cancel(self, d):
        self.finished = None
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data):
        if self.finished is None:
            return
        self.size += len(data)
        if self.size > self.limit:
            d, self.finished = self.finished, None
            self.transport.loseConnection()
            d.errback(_TooLarge(self.size))
            return
        self.chunks.append(data)

    def connectionLost(self, reason):
        if self.finished is None:
            return
        d, self.finished = self.finished, None
        if reason.check(ResponseDone, PotentialDataLoss):
            d.callback(b"".join(self.chunks))
        else:
            d.errback(reason)


def _read_body(response, limit):
    reader = _BodyReader(limit)
    response.deliverBody(reader)
    return reader.finished


def _describe(exc):
    """One line for a transport failure, unwrapping Twisted's reason lists."""
    reasons = getattr(exc, "reasons", None)
    if reasons:
        inner = "; ".join(
            f"{type(r.value).__name__}: {r.getErrorMessage()}" for r in reasons
        )
        return f"{type(exc).__name__}({inner})"
    return f"{type(exc).__name__}: {exc}"


def _quantity(method, value):
    """Decode an Ethereum hex QUANTITY ("0x1a") or fail naming the method."""
    if isinstance(value, str) and value[:2] in ("0x", "0X"):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise RPCProtocolError(method, f"expected a hex quantity, got {value!r}")


def _block_param(n):
    """int height -> hex QUANTITY; tags and hex strings pass through."""
    if isinstance(n, bool):
        raise TypeError(f"block number must be int or str, not {n!r}")
    if isinstance(n, int):
        if n < 0:
            raise ValueError(f"block number must be >= 0, got {n}")
        return hex(n)
    if isinstance(n, str) and (n in BLOCK_TAGS or n[:2] in ("0x", "0X")):
        return n
    raise ValueError(f"block must be an int, a hex string or one of {sorted(BLOCK_TAGS)}")


def _block_or_none(method, value):
    if value is None or isinstance(value, dict):
        return value
    raise RPCProtocolError(method, f"expected a block object or null, got {type(value).__name__}")


def _list_or_none(method, value, what):
    if value is None or isinstance(value, list):
        return value
    raise RPCProtocolError(method, f"expected a list of {what} or null, got {type(value).__name__}")


def _list(method, value, what):
    if isinstance(value, list):
        return value
    raise RPCProtocolError(method, f"expected a list of {what}, got {type(value).__name__}")


#: Answers larger than this (bytes) are decoded a piece at a time, the
#: reactor running between pieces: a catch-up batch of 50 mainnet blocks with
#: their receipts is ~35 MB of JSON, ~130 ms of json.loads in one go.
PIECEMEAL_BYTES = 1 << 20
#: The most time (s) spent decoding before the reactor gets a turn.
_PIECE_SECONDS = 0.002
_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


async def decodePiecemeal(reactor, body):
    """
    C{json.loads(body)} for a JSON array (a batch's answer), one element
    at a time, letting the reactor run whenever a few ms have gone by;
    anything else in one go.  Raises C{ValueError} as C{json.loads} would.
    """
    text = body.decode("utf-8")
    at = _SPACE.match(text).end()
    if not text.startswith("[", at):
        return json.loads(text)
    items = []
    at = _SPACE.match(text, at + 1).end()
    if text.startswith("]", at):
        at += 1
    else:
        since = time.perf_counter()
        while True:
            item, at = _DECODER.raw_decode(text, at)
            items.append(item)
            at = _SPACE.match(text, at).end()
            if text.startswith(",", at):
                at = _SPACE.match(text, at + 1).end()
            elif text.startswith("]", at):
                at += 1
                break
            else:
                raise ValueError(f"expected ',' or ']' at character {at}")
            if time.perf_counter() - since > _PIECE_SECONDS:
                await deferLater(reactor, 0, lambda: None)
                since = time.perf_counter()
    if _SPACE.match(text, at).end() != len(text):
        raise ValueError(f"extra data at character {at}")
    return items


def _notJSON(method, body, e):
    return RPCProtocolError(method, f"response is not JSON ({e}): {body[:_BODY_SNIPPET]!r}")


def _error_from(method, obj, index=None):
    """Build an RPCError from a response's "error" member (validated)."""
    err = obj["error"]
    if (
        not isinstance(err, dict)
        or not isinstance(err.get("code"), int)
        or isinstance(err.get("code"), bool)
        or not isinstance(err.get("message"), str)
    ):
        return RPCProtocolError(method, f"malformed error object: {err!r}")
    return RPCError(method, err["code"], err["message"], err.get("data"), index)


class JSONRPCClient:
    """
    A JSON-RPC client for one node URL.

    :param reactor: the reactor (passed in, never imported here).
    :param url: ``http://`` or ``https://`` endpoint of the node; ``None``
        for a node whose address is known only once it listens (the
        embedded replay node): ``connectTo`` gives it, and calls before
        fail as the node being unavailable.
    :param timeout: default deadline in seconds for each call (whole call).
    :param maxConnections: keep-alive connections kept per host.
    :param idleTimeout: close a cached connection after this many idle
        seconds (below typical server/proxy keep-alive limits, so we rarely
        send on a socket the server is closing).
    :param maxResponseSize: refuse bodies larger than this (bytes).
    :param headers: extra request headers, e.g. ``{"Authorization": ...}``.
    :param tlsPolicy: an ``IPolicyForHTTPS`` for https (default: Twisted's
        browser-like certificate and hostname checks).
    """

    def __init__(
        self,
        reactor,
        url,
        *,
        timeout=10.0,
        maxConnections=2,
        idleTimeout=30.0,
        maxResponseSize=64 * 1024 * 1024,
        headers=None,
        tlsPolicy=None,
    ):
        if not timeout or timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self._reactor = reactor
        self.url = None
        if url is not None:
            self.connectTo(url)
        self.timeout = float(timeout)
        self._maxResponseSize = maxResponseSize
        self._headers = {
            "Content-Type": ["application/json"],
            "Accept": ["application/json"],
            "User-Agent": ["explorerd"],
        }
        for name, value in (headers or {}).items():
            self._headers[name] = [value]
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = maxConnections
        self._pool.cachedConnectionTimeout = idleTimeout
        agentArgs = {"pool": self._pool}
        if tlsPolicy is not None:
            agentArgs["contextFactory"] = tlsPolicy
        self._http = HTTPClient(Agent(reactor, **agentArgs))
        self._ids = itertools.count(1)
        self._inflight = set()
        self._closed = False

    def __repr__(self):
        return f"<JSONRPCClient {self.url}>"

    def connectTo(self, url):
        """The node's URL, once (L{__init__} with C{url=None}: once it is known)."""
        if self.url is not None:
            raise RuntimeError(f"{self!r} already has a node URL")
        if isinstance(url, bytes):
            url = url.decode("ascii")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"JSON-RPC url must be http(s)://host[:port][/path], got {url!r}")
        self.url = url

    # Generic calls -------------------------------------------------------

    def call(self, method, params=(), *, timeout=None):
        """
        Call ``method`` with ``params``; fire with the ``result`` member.

        Fails with an :class:`RPCFailure` subclass naming ``method``.
        """
        reqid = next(self._ids)
        payload = {"jsonrpc": "2.0", "id": reqid, "method": method, "params": list(params)}
        d = self._post(method, payload, timeout)
        d.addCallback(self._single_result, method, reqid)
        return d

    def batch(self, calls, *, timeout=None, returnErrors=False):
        """
        Send ``[(method, params), ...]`` as one JSON-RPC batch.

        Fires with the results in request order. If any item has an error,
        fails with that item's :class:`RPCError` (the first in request
        order; ``.index`` says which); with ``returnErrors``, that
        :class:`RPCError` takes the item's place in the results instead, for
        callers that can use the other items (a node may refuse one block of
        many). Transport failures, and an error object answering the whole
        batch, name the batch as ``"batch[m1,m2,...]"``. An empty batch
        fires ``[]`` without a request.
        """
        calls = [(m, list(p)) for m, p in calls]
        if not calls:
            return defer.succeed([])
        label = "batch[" + ",".join(dict.fromkeys(m for m, _ in calls)) + "]"
        ids = [next(self._ids) for _ in calls]
        payload = [
            {"jsonrpc": "2.0", "id": i, "method": m, "params": p}
            for i, (m, p) in zip(ids, calls)
        ]
        d = self._post(label, payload, timeout)
        d.addCallback(self._batch_results, label, calls, ids, returnErrors)
        return d

    # Convenience ---------------------------------------------------------

    def blockNumber(self):
        """Height of the node's latest block, as int."""
        m = "eth_blockNumber"
        return self.call(m).addCallback(lambda r: _quantity(m, r))

    def chainId(self):
        """EIP-155 chain id, as int (to refuse a node on the wrong chain)."""
        m = "eth_chainId"
        return self.call(m).addCallback(lambda r: _quantity(m, r))

    def getBlockByNumber(self, number, full=True):
        """Block at ``number`` (int, hex string or tag) or None if unknown."""
        m = "eth_getBlockByNumber"
        d = self.call(m, [_block_param(number), bool(full)])
        return d.addCallback(lambda r: _block_or_none(m, r))

    def getBlockByHash(self, blockHash, full=True):
        """Block with ``blockHash`` or None (e.g. reorged away)."""
        m = "eth_getBlockByHash"
        d = self.call(m, [blockHash, bool(full)])
        return d.addCallback(lambda r: _block_or_none(m, r))

    def getBlocksByNumber(self, numbers, full=True):
        """Many blocks in one batch round trip; None where unknown."""
        m = "eth_getBlockByNumber"
        calls = [(m, [_block_param(n), bool(full)]) for n in numbers]
        d = self.batch(calls)
        return d.addCallback(lambda rs: [_block_or_none(m, r) for r in rs])

    def getBlockReceipts(self, blockHash):
        """
        The receipts of every transaction of block ``blockHash``, in block
        order, or None if the node does not know the block.  Not every node
        has this method (geth, erigon, anvil, reth do): the error is an
        :class:`RPCError`, usually -32601.
        """
        m = "eth_getBlockReceipts"
        d = self.call(m, [blockHash])
        return d.addCallback(lambda r: _list_or_none(m, r, "receipts"))

    def getLogs(self, criteria):
        """
        The logs that match ``criteria``, a filter object such as
        ``{"blockHash": h}`` or ``{"fromBlock": ..., "toBlock": ...,
        "address": ..., "topics": [...]}`` (passed as given).
        """
        if not isinstance(criteria, dict):
            raise TypeError(f"a log filter must be a dict, not {type(criteria).__name__}")
        m = "eth_getLogs"
        d = self.call(m, [criteria])
        return d.addCallback(lambda r: _list(m, r, "logs"))

    # Lifecycle -----------------------------------------------------------

    def close(self):
        """
        Stop: fail calls in flight with RPCUnavailable, refuse new ones and
        close the cached keep-alive connections (and their idle timers).

        Returns a Deferred that fires when the cached connections are closed.
        Safe to call twice.
        """
        self._closed = True
        for d in list(self._inflight):
            d.cancel()
        return self._pool.closeCachedConnections()

    # Plumbing ------------------------------------------------------------

    def _post(self, method, payload, timeout):
        if self._closed:
            return defer.fail(RPCUnavailable(method, "client closed"))
        if self.url is None:
            return defer.fail(RPCUnavailable(method, "the node's URL is not known yet"))
        timeout = self.timeout if timeout is None else timeout
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        d = self._http.post(
            self.url,
            data=_BytesProducer(body),
            headers=self._headers,
            unbuffered=True,
            reactor=self._reactor,
        )
        d.addCallback(self._read, method)

        timedOut = []

        def onTimeout():
            timedOut.append(True)
            d.cancel()

        timer = self._reactor.callLater(timeout, onTimeout)

        def settle(result):
            if timer.active():
                timer.cancel()
            self._inflight.discard(d)
            if isinstance(result, Failure) and not result.check(RPCFailure):
                if timedOut:
                    raise RPCTimeout(method, timeout)
                if self._closed:
                    # close() cancelled it; depending on the stage that shows
                    # up as CancelledError, ResponseNeverReceived or even
                    # DNSLookupError (cancelled name resolution)
                    raise RPCUnavailable(method, "client closed")
                if result.check(*_TRANSPORT_ERRORS):
                    raise RPCUnavailable(method, _describe(result.value))
            return result

        self._inflight.add(d)
        d.addBoth(settle)
        return d

    def _read(self, response, method):
        d = _read_body(response, self._maxResponseSize)

        def got(body):
            if not 200 <= response.code < 300:
                raise RPCHTTPError(method, response.code, body)
            if len(body) > PIECEMEAL_BYTES:
                d = defer.ensureDeferred(decodePiecemeal(self._reactor, body))
                return d.addErrback(notJSON, body)
            try:
                return json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise _notJSON(method, body, e) from None

        def notJSON(failure, body):
            failure.trap(ValueError, UnicodeDecodeError)
            raise _notJSON(method, body, failure.value)

        def tooLarge(f):
            f.trap(_TooLarge)
            raise RPCProtocolError(
                method, f"response larger than {self._maxResponseSize} bytes"
            )

        return d.addCallbacks(got, tooLarge)

    @staticmethod
    def _single_result(obj, method, reqid):
        if not isinstance(obj, dict):
            raise RPCProtocolError(method, f"expected a JSON object, got {type(obj).__name__}")
        if obj.get("error") is not None:
            # id may be null if the server could not parse our request
            if obj.get("id") not in (reqid, None):
                raise RPCProtocolError(method, f"error for id {obj.get('id')!r}, sent {reqid}")
            raise _error_from(method, obj)
        if obj.get("id") != reqid:
            raise RPCProtocolError(method, f"response id {obj.get('id')!r}, sent {reqid}")
        if "result" not in obj:
            raise RPCProtocolError(method, "response has neither result nor error")
        return obj["result"]

    @staticmethod
    def _batch_results(objs, label, calls, ids, returnErrors=False):
        if isinstance(objs, dict) and objs.get("error") is not None:
            raise _error_from(label, objs)  # the whole batch was rejected
        if not isinstance(objs, list):
            raise RPCProtocolError(label, f"expected a JSON array, got {type(objs).__name__}")
        sent = set(ids)
        byId = {}
        for obj in objs:
            if not isinstance(obj, dict) or "id" not in obj:
                raise RPCProtocolError(label, f"batch item without id: {obj!r:.{_BODY_SNIPPET}}")
            rid = obj["id"]
            if isinstance(rid, bool) or not isinstance(rid, int) or rid not in sent or rid in byId:
                raise RPCProtocolError(label, f"unexpected or repeated id {rid!r} in batch")
            byId[rid] = obj
        results = []
        for index, (reqid, (method, _)) in enumerate(zip(ids, calls)):
            obj = byId.get(reqid)
            if obj is None:
                raise RPCProtocolError(method, f"no response for batch item {index} (id {reqid})")
            if obj.get("error") is not None:
                error = _error_from(method, obj, index)
                if returnErrors and isinstance(error, RPCError):
                    results.append(error)
                    continue
                raise error
            if "result" not in obj:
                raise RPCProtocolError(method, f"batch item {index} has neither result nor error")
            results.append(obj["result"])
        return results
