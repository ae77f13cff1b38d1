"""
The replay node's WebSocket JSON-RPC, on the same port as its HTTP (as
geth's and anvil's): every call the HTTP endpoint answers, plus
C{newHeads} subscriptions, so a live-tail can be pushed its blocks::

    -> {"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}
    <- {"jsonrpc":"2.0","id":1,"result":"0x<subscription id>"}
    <- {"jsonrpc":"2.0","method":"eth_subscription",
        "params":{"subscription":"0x<id>","result":{<header>}}}
    -> {"jsonrpc":"2.0","id":2,"method":"eth_unsubscribe","params":["0x<id>"]}
    <- {"jsonrpc":"2.0","id":2,"result":true}

A header is announced for each head event: the new block, or after a reorg
the new branch's head.  Other subscription types get -32602.
"""

import json

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.web import resource

from explorerd.replay.resource import _error


class _HeadsProtocol(WebSocketServerProtocol):
    def onOpen(self):
        self.factory.subscriptions[self] = set()

    def onClose(self, wasClean, code, reason):
        self.factory.subscriptions.pop(self, None)

    def onMessage(self, payload, isBinary):
        answer = self.factory.answer(self, payload)
        if answer is not None:
            self.sendMessage(answer, isBinary)


class HeadsFactory(WebSocketServerFactory):
    """WebSocket JSON-RPC for one node: calls answered by its L{RPCResource}, heads announced."""

    protocol = _HeadsProtocol
    noisy = False

    def __init__(self, rpc, chain):
        super().__init__()
        self.rpc = rpc
        self.chain = chain
        self.subscriptions = {}  # protocol -> its subscription ids (bytes)
        self._count = 0

    def answer(self, protocol, payload):
        """The answer to one message (a call or a batch), or C{None} when none is owed."""
        try:
            call = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            call = None
        if isinstance(call, dict) and call.get("method") in ("eth_subscribe", "eth_unsubscribe") \
                and call.get("jsonrpc") == "2.0" and "id" in call:
            return self._subscription(protocol, call)
        return self.rpc.answer(payload)

    def _subscription(self, protocol, call):
        rid, params = call["id"], call.get("params")
        if not isinstance(params, list) or len(params) != 1 or not isinstance(params[0], str):
            return _error(rid, -32602, "invalid argument 0: expected one subscription name or id")
        ids = self.subscriptions.setdefault(protocol, set())
        if call["method"] == "eth_unsubscribe":
            sid = params[0].encode()
            found = sid in ids
            ids.discard(sid)
            return _result(rid, b"true" if found else b"false")
        if params[0] != "newHeads":
            return _error(rid, -32602, f"no {params[0][:40]!r} subscriptions here (only newHeads)")
        self._count += 1
        sid = hex(self._count).encode()
        ids.add(sid)
        return _result(rid, b'"' + sid + b'"')

    def announce(self, head):
        """Send the header of C{head} to every C{newHeads} subscription."""
        if head is None or not any(self.subscriptions.values()):
            return
        header = self.chain.blockJSON(head.hash, False)
        if header is None:
            return
        for protocol, ids in list(self.subscriptions.items()):
            if protocol.state != protocol.STATE_OPEN:
                continue
            for sid in ids:
                protocol.sendMessage(b'{"jsonrpc":"2.0","method":"eth_subscription","params":'
                                     b'{"subscription":"' + sid + b'","result":' + header + b"}}")

    def dropAll(self):
        """Drop every WebSocket connection (the node is stopping)."""
        for protocol in list(self.subscriptions):
            if protocol.transport is not None:
                protocol.transport.abortConnection()


def _result(rid, body):
    return b'{"jsonrpc":"2.0","id":' + json.dumps(rid).encode() + b',"result":' + body + b"}"


class NodeResource(resource.Resource):
    """Every path: a WebSocket upgrade goes to C{heads}, anything else to the HTTP endpoint C{rpc}."""

    isLeaf = True

    def __init__(self, rpc, heads):
        super().__init__()
        self.rpc = rpc
        self.websocket = WebSocketResource(heads)

    def render(self, request):
        upgrade = request.getHeader(b"upgrade") or b""
        if upgrade.lower() == b"websocket":
            return self.websocket.render(request)
        return self.rpc.render(request)


__all__ = ["HeadsFactory", "NodeResource"]
