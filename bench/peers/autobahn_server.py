"""
Peer 2: a minimal Autobahn broadcast server, the idiomatic prepared-message broadcast
(autobahn's examples/twisted/websocket/broadcast, BroadcastPreparedServerFactory) done right:
each message is JSON-encoded once, prepareMessage(bytes) once, then sendPreparedMessage to
every subscriber that is open.  No slow-client policy: a client that does not read has its
frames buffered by Twisted without bound (that is what the idiom does).

Speaks explorerd's /v1/stream subscribe protocol (channels newBlocks/newTxs, "batch": true):

  python bench/peers/autobahn_server.py --events events.json [--rate 1]

--events is a JSON list of {"block": newBlock data, "txs": [newTx data, ...]} (bench/blocks.py
wire_events).  Control protocol and output: see bench/benchserver.py.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchserver import Control, common_arguments, raise_nofile  # noqa: E402

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol  # noqa: E402

CHANNELS = ("newBlocks", "newTxs")


def encode(message):
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class StreamProtocol(WebSocketServerProtocol):
    def onOpen(self):
        self.bench_channels = set()
        self.bench_batch = False
        self.factory.register(self)

    def onMessage(self, payload, isBinary):
        try:
            message = json.loads(payload)
            action = message["action"]
        except (ValueError, TypeError, KeyError):
            return self.reply({"type": "error", "error": {"code": "invalid_message", "message": "bad message"}})
        if action == "ping":
            return self.reply({"type": "pong"})
        channels = [c for c in message.get("channels") or () if c in CHANNELS]
        if action == "subscribe":
            self.bench_channels.update(channels)
            if "newTxs" in channels:
                self.bench_batch = message.get("batch") is True
        elif action == "unsubscribe":
            self.bench_channels.difference_update(channels)
        else:
            return self.reply({"type": "error", "error": {"code": "unknown_action", "message": action}})
        self.factory.resubscribe(self)
        self.reply({"type": action + "d", "channels": sorted(self.bench_channels)})

    def reply(self, message):
        self.sendMessage(encode(message), False)

    def onClose(self, wasClean, code, reason):
        self.factory.unregister(self)


class BroadcastFactory(WebSocketServerFactory):
    protocol = StreamProtocol

    def __init__(self):
        super().__init__()
        self.setProtocolOptions(autoPingInterval=0, allowedOrigins=["*"], allowNullOrigin=True,
                                perMessageCompressionAccept=lambda offers: None)
        self.clients = set()
        self.blocks = {}      # subscriber -> None, insertion-ordered
        self.txs = {}
        self.batch = {}

    def register(self, client):
        self.clients.add(client)

    def unregister(self, client):
        self.clients.discard(client)
        for group in (self.blocks, self.txs, self.batch):
            group.pop(client, None)

    def resubscribe(self, client):
        for group in (self.blocks, self.txs, self.batch):
            group.pop(client, None)
        if "newBlocks" in client.bench_channels:
            self.blocks[client] = None
        if "newTxs" in client.bench_channels:
            (self.batch if client.bench_batch else self.txs)[client] = None

    def broadcast(self, subscribers, prepared):
        for client in tuple(subscribers):
            if client.state == WebSocketServerProtocol.STATE_OPEN:
                for pm in prepared:
                    client.sendPreparedMessage(pm)

    def publish(self, block, txs):
        if self.blocks:
            self.broadcast(self.blocks, [self.prepareMessage(encode({"type": "newBlock", "data": block}))])
        if txs and self.txs:
            self.broadcast(self.txs, [self.prepareMessage(encode({"type": "newTx", "data": tx})) for tx in txs])
        if txs and self.batch:
            body = {"block_height": block["height"], "block_hash": block["hash"], "txs": txs}
            self.broadcast(self.batch, [self.prepareMessage(encode({"type": "newTxs", "data": body}))])


class PeerServer:
    def __init__(self, factory):
        self.factory = factory

    def clientCount(self):
        return len(self.factory.clients)

    def extra(self):
        return {"slow_closed": 0}

    def publish(self, i, event):
        self.factory.publish(event["block"], event["txs"])
        return {"height": event["block"]["height"], "txs": len(event["txs"])}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(p)
    args = p.parse_args()
    raise_nofile()

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    with open(args.events) as f:
        events = json.load(f)
    factory = BroadcastFactory()
    port = reactor.listenTCP(args.port, factory, backlog=args.backlog, interface="127.0.0.1")
    control = Control(reactor, PeerServer(factory), events[:args.count or None], args.rate, args.profile)
    control.start(port.getHost().port)
    reactor.run()


if __name__ == "__main__":
    main()
