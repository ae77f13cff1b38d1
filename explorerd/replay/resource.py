"""
The replay node's JSON-RPC endpoint: what a node answers over HTTP about the
chain it serves.

POST to any path, JSON-RPC 2.0, one call or a batch::

    eth_blockNumber                      -> "0x.." (the head's height)
    eth_getBlockByNumber [tag|hex, bool] -> block | null   (canonical chain)
    eth_getBlockByHash   [hash, bool]    -> block | null   (orphans too)
    eth_chainId, net_version, web3_clientVersion, eth_syncing, net_listening

Tags C{latest}, C{pending}, C{safe} and C{finalized} all mean the head and
C{earliest} the lowest block still held.  Errors are geth's: -32700 invalid
JSON, -32600 invalid request, -32601 unknown method, -32602 bad params.
Anything but POST gets 405.
"""

import json
import re

from twisted.web import resource, server

CLIENT_VERSION = "explorerd-replay/0.2.0"

_HEX_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}\Z")
_HASH = re.compile(r"0x[0-9a-fA-F]{64}\Z")
_HEAD_TAGS = ("latest", "safe", "finalized")


class RPCError(Exception):
    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = code
        self.message = message


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
            raise RPCError(-32602, f"invalid argument {position}: invalid block number {tag!r}")
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


__all__ = ["CLIENT_VERSION", "QuietSite", "RPCError", "RPCResource"]
