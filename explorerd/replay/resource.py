"""
The replay node's JSON-RPC endpoint: what a node answers over HTTP about the
chain it serves.

POST to any path, JSON-RPC 2.0, one call or a batch::

    eth_blockNumber                      -> "0x.." (the head's height)
    eth_getBlockByNumber [tag|hex, bool] -> block | null   (canonical chain)
    eth_getBlockByHash   [hash, bool]    -> block | null   (orphans too)
    eth_getLogs [{"blockHash": h} | {"fromBlock", "toBlock"}, "address", "topics"]
                                         -> [log, ...]     (recorded logs only)
    eth_chainId, net_version, web3_clientVersion, eth_syncing, net_listening

Tags C{latest}, C{pending}, C{safe} and C{finalized} all mean the head and
C{earliest} the lowest block still held.  Errors are geth's: -32700 invalid
JSON, -32600 invalid request, -32601 unknown method (C{eth_getBlockReceipts}
too: no receipts of the served blocks were recorded), -32602 bad params,
-32000 unknown block, 4444 logs that were not recorded ("pruned history
unavailable", as a node that pruned them says), -32005 more than
L{MAX_LOGS} logs.  Anything but POST gets 405.
"""

import json
import re

from twisted.web import resource, server

CLIENT_VERSION = "explorerd-replay/0.2.0"

#: The most logs one C{eth_getLogs} answers, as hosted nodes limit it.
MAX_LOGS = 10_000

_HEX_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}\Z")
_HASH = re.compile(r"0x[0-9a-fA-F]{64}\Z")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}\Z")
_HEAD_TAGS = ("latest", "safe", "finalized")


class RPCError(Exception):
    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = code
        self.message = message


def _pruned():
    return RPCError(4444, "pruned history unavailable")


class _Encoded(bytes):
    """JSON already encoded: spliced into the answer as is."""


class RPCResource(resource.Resource):
    """Every path is the endpoint; one instance per node."""

    isLeaf = True

    def __init__(self, chain, client_version=CLIENT_VERSION):
        super().__init__()
        self.chain = chain
        self.client_version = client_version
        self._methods = {
            "eth_blockNumber": self._blockNumber,
            "eth_getBlockByNumber": self._getBlockByNumber,
            "eth_getBlockByHash": self._getBlockByHash,
            "eth_getLogs": self._getLogs,
            "eth_chainId": lambda params: _noParams(params, hex(self.chain.chain_id)),
            "net_version": lambda params: _noParams(params, str(self.chain.chain_id)),
            "web3_clientVersion": lambda params: _noParams(params, self.client_version),
            "eth_syncing": lambda params: _noParams(params, False),
            "net_listening": lambda params: _noParams(params, True),
        }

    def render(self, request):
        if request.method != b"POST":
            request.setResponseCode(405)
            request.setHeader(b"allow", b"POST")
            request.setHeader(b"content-type", b"text/plain")
            return b"JSON-RPC: use POST\n"
        request.setHeader(b"content-type", b"application/json")
        return self.answer(request.content.read()) or b""

    def answer(self, body):
        """The answer to one HTTP body (one call or a batch); C{None} when none is owed."""
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(None, -32700, "parse error")
        if isinstance(payload, list):
            if not payload:
                return _error(None, -32600, "empty batch")
            parts = [p for p in map(self._call, payload) if p is not None]
            return b"[" + b",".join(parts) + b"]" if parts else None
        return self._call(payload)

    def _call(self, call):
        if not isinstance(call, dict):
            return _error(None, -32600, "invalid request")
        rid = call.get("id")
        if isinstance(rid, bool) or not (rid is None or isinstance(rid, (str, int, float))):
            return _error(None, -32600, "invalid request id")
        method = call.get("method")
        if call.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return _error(rid, -32600, "invalid request")
        notification = "id" not in call
        params = call.get("params")
        try:
            if params is None:
                params = []
            if not isinstance(params, list):
                raise RPCError(-32602, "params must be an array")
            handler = self._methods.get(method)
            if handler is None:
                raise RPCError(-32601, f"the method {method} does not exist/is not available")
            result = handler(params)
        except RPCError as e:
            return None if notification else _error(rid, e.code, e.message)
        if notification:
            return None
        body = result if isinstance(result, _Encoded) else json.dumps(result, separators=(",", ":")).encode()
        return b'{"jsonrpc":"2.0","id":' + json.dumps(rid).encode() + b',"result":' + body + b"}"

    def _height(self, tag, position=0):
        """A block parameter as a height; C{None} while there is no head."""
        head = self.chain.head
        if not isinstance(tag, str):
            raise RPCError(-32602, f"invalid argument {position}: block number must be a hex string or tag")
        if tag in _HEAD_TAGS or tag == "pending":
            return head.height if head is not None else None
        if tag == "earliest":
            return self.chain.low if head is not None else None
        if not _HEX_QUANTITY.match(tag):
            raise RPCError(-32602, f"invalid argument {position}: invalid block number {_short(tag)}")
        return int(tag, 16)

    def _blockNumber(self, params):
        head = self.chain.head
        return _noParams(params, hex(head.height) if head is not None else "0x0")

    def _getBlockByNumber(self, params):
        _arity(params, 2, required=1)
        height = self._height(params[0])
        full = _fullTx(params)
        block_hash = self.chain.hashAt(height) if height is not None else None
        return _Encoded(self.chain.blockJSON(block_hash, full)) if block_hash else None

    def _getBlockByHash(self, params):
        _arity(params, 2, required=1)
        if not isinstance(params[0], str) or not _HASH.match(params[0]):
            raise RPCError(-32602, "invalid argument 0: hex string of length 64 expected")
        data = self.chain.blockJSON(params[0].lower(), _fullTx(params))
        return _Encoded(data) if data is not None else None

    def _getLogs(self, params):
        """geth's C{eth_getLogs}, over the logs recorded for the served blocks."""
        _arity(params, 1)
        criteria = params[0]
        if not isinstance(criteria, dict):
            raise RPCError(-32602, "invalid argument 0: filter must be an object")
        match = LogFilter.fromCriteria(criteria).matches
        if criteria.get("blockHash") is not None:
            if criteria.get("fromBlock") is not None or criteria.get("toBlock") is not None:
                raise RPCError(-32602, "invalid argument 0: cannot specify both BlockHash and "
                                       "FromBlock/ToBlock, choose one or the other")
            block_hash = criteria["blockHash"]
            if not isinstance(block_hash, str) or not _HASH.match(block_hash):
                raise RPCError(-32602, "invalid argument 0: blockHash must be a hex string of length 64")
            block_hash = block_hash.lower()
            if not self.chain.knows(block_hash):
                raise RPCError(-32000, "unknown block")
            logs = self.chain.logsOf(block_hash, match)
            if logs is None:
                raise _pruned()
            return _capped(logs)
        ends = []
        for key in ("fromBlock", "toBlock"):
            tag = criteria.get(key)
            if tag == "pending":
                raise RPCError(-32602, "pending logs are not supported")
            ends.append(self._height("latest" if tag is None else tag))
        first, last = ends
        head = self.chain.head
        if head is None:
            return []
        if first > last:
            raise RPCError(-32602, "invalid block range params")
        if last > head.height:
            raise RPCError(-32602, "block range extends beyond current head block")
        if first < self.chain.low:
            raise _pruned()
        out = []
        for height in range(first, last + 1):
            block_hash = self.chain.hashAt(height)
            logs = self.chain.logsOf(block_hash, match) if block_hash is not None else None
            if logs is None:
                raise _pruned()
            out.extend(logs)
            _capped(out)
        return out


class LogFilter:
    """
    geth's address and topic matching.  A filter of k topic positions
    (trailing C{null}s count) matches only logs with at least k topics; each
    position is C{null} (any), a topic, or a list of alternatives.
    """

    def __init__(self, addresses, topics):
        self.addresses = addresses  # frozenset of lowercase addresses, or None: any
        self.topics = topics  # one frozenset of lowercase topics per position, or None: any

    @classmethod
    def fromCriteria(cls, criteria):
        """Read C{address} and C{topics} of a filter object; bad ones raise L{RPCError} -32602."""
        address = criteria.get("address")
        if address is None:
            addresses = None
        elif isinstance(address, str):
            addresses = frozenset([_checked(_ADDRESS, address, "address")])
        elif isinstance(address, list):
            addresses = frozenset(_checked(_ADDRESS, a, "address") for a in address) or None
        else:
            raise RPCError(-32602, "invalid argument 0: address must be an address or a list of addresses")
        topics = criteria.get("topics")
        if topics is None:
            topics = []
        if not isinstance(topics, list):
            raise RPCError(-32602, "invalid argument 0: topics must be a list")
        if len(topics) > 4:
            raise RPCError(-32602, "invalid argument 0: exceed max topics")
        positions = []
        for position in topics:
            if position is None:
                positions.append(None)
            elif isinstance(position, str):
                positions.append(frozenset([_checked(_HASH, position, "topic")]))
            elif isinstance(position, list):
                if len(position) > 1000:
                    raise RPCError(-32602, "invalid argument 0: exceed max topics")
                alternatives = [_checked(_HASH, t, "topic") if t is not None else None for t in position]
                positions.append(None if None in alternatives or not alternatives else frozenset(alternatives))
            else:
                raise RPCError(-32602, "invalid argument 0: invalid topic(s)")
        return cls(addresses, positions)

    def matches(self, log):
        if self.addresses is not None and log["address"].lower() not in self.addresses:
            return False
        topics = log["topics"]
        if len(self.topics) > len(topics):
            return False
        return all(wanted is None or topic.lower() in wanted for wanted, topic in zip(self.topics, topics))


def _checked(pattern, value, what):
    if not isinstance(value, str) or not pattern.match(value):
        raise RPCError(-32602, f"invalid argument 0: invalid {what} {_short(value)}")
    return value.lower()


def _short(value):
    """A bad value, quoted back no longer than a line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _capped(logs):
    if len(logs) > MAX_LOGS:
        raise RPCError(-32005, f"query returned more than {MAX_LOGS} results")
    return logs


def _noParams(params, result):
    _arity(params, 0)
    return result


def _arity(params, most, required=None):
    need = most if required is None else required
    if len(params) > most:
        raise RPCError(-32602, f"too many arguments, want at most {most}")
    if len(params) < need:
        raise RPCError(-32602, f"missing value for required argument {len(params)}")


def _fullTx(params):
    full = params[1] if len(params) > 1 else False
    if not isinstance(full, bool):
        raise RPCError(-32602, "invalid argument 1: fullTx must be a boolean")
    return full


def _error(rid, code, message):
    return json.dumps({"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}},
                      separators=(",", ":")).encode()


class QuietSite(server.Site):
    """No access log line per request: a benchmark would drown the log."""

    noisy = False

    def log(self, request):
        pass


__all__ = ["CLIENT_VERSION", "MAX_LOGS", "LogFilter", "QuietSite", "RPCError", "RPCResource"]
