#!/usr/bin/env python3
"""
How long a catch-up blocks the reactor: the live-tail fetching, decoding,
checking and publishing one batch of mainnet-size blocks (200 transactions
each, with their receipts) from a real anvil, while a 1 ms heartbeat on the
same reactor records every gap between its beats.

  python3 bench/catchup.py [--blocks 50] [--txs 200] [--repeat 3] [--json out.json]

Prints, per repeat: the batch's response size, the whole catch-up's wall
time, and the heartbeat's longest gaps (what every client and every other
connection of the process waited for at worst).  Needs anvil
(`npm ci --prefix tests/node`) and explorerd's dependencies.
"""

import argparse
import json
import os
import platform
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from twisted.internet import defer, task  # noqa: E402
from zope.interface import implementer  # noqa: E402

from explorerd.history import History  # noqa: E402
from explorerd.interfaces import IBlockSink  # noqa: E402
from explorerd import jsonrpc  # noqa: E402
from explorerd.jsonrpc import JSONRPCClient  # noqa: E402
from explorerd.livetail import LiveTail  # noqa: E402
from tests.anvil import DEV_ACCOUNTS, BlockingAnvil  # noqa: E402


@implementer(IBlockSink)
class CountingSink:
    """The hub's part that costs nothing: counts what it is handed."""

    def __init__(self):
        self.history = History(256)
        self.blocks = 0
        self.txs = 0

    def publish(self, entry):
        self.blocks += 1
        self.txs += entry.tx_count
        return 0

    def publishReorg(self, depth, ancestor, removed):
        return 0

    def remember(self, entry):
        pass

    def announce(self, header):
        pass


def rpc(url, payload):
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def grow(url, blocks, txs):
    """C{blocks} blocks of C{txs} transfers each, sent as one batch per block, then mined."""
    n = 0
    accounts = rpc(url, {"jsonrpc": "2.0", "id": 0, "method": "eth_accounts", "params": []})["result"]
    assert len(accounts) >= txs, "anvil has fewer accounts than transactions per block"
    for _ in range(blocks):
        # One transaction per sender per block: the batch's nonces cannot collide.
        batch = [{"jsonrpc": "2.0", "id": i, "method": "eth_sendTransaction",
                  "params": [{"from": accounts[i], "to": DEV_ACCOUNTS[0], "value": hex(1 + n + i)}]}
                 for i in range(txs)]
        answers = rpc(url, batch)
        assert all("result" in a for a in answers), [a for a in answers if "result" not in a][:1]
        n += txs
        rpc(url, {"jsonrpc": "2.0", "id": 0, "method": "evm_mine", "params": []})


async def one(reactor, url, blocks, txs):
    sink = CountingSink()
    client = JSONRPCClient(reactor, url, timeout=60)
    tail = LiveTail(reactor, client, sink, batch_size=blocks, max_catchup=10 * blocks, reactor=reactor)
    head = int(rpc(url, {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []})["result"], 16)
    tail._start_at = head + 1  # publish what comes next, from the height after the head
    tail.running = True
    grow(url, blocks, txs)
    gaps = []
    last = [time.perf_counter()]

    def beat():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    heartbeat = task.LoopingCall(beat)
    heartbeat.clock = reactor
    heartbeat.start(0.001, now=True)
    started = time.perf_counter()
    ok = await tail.poll()
    took = time.perf_counter() - started
    heartbeat.stop()
    tail.running = False
    await client.close()
    gaps.sort(reverse=True)
    return {"ok": ok, "blocks": sink.blocks, "txs": sink.txs, "wall_s": round(took, 3),
            "longest_gaps_ms": [round(g * 1000, 1) for g in gaps[:5]],
            "gaps_over_5ms": sum(g > 0.005 for g in gaps), "beats": len(gaps)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=50)
    p.add_argument("--txs", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default="")
    p.add_argument("--whole", action="store_true",
                   help="decode every answer in one json.loads (as before piecemeal decoding), for comparison")
    args = p.parse_args()
    if args.whole:
        jsonrpc.PIECEMEAL_BYTES = float("inf")
    results = []
    with BlockingAnvil(no_mining=True, accounts=max(10, args.txs),
                       extra_args=["--gas-limit", "100000000"]) as anvil:

        async def runs(reactor):
            for i in range(args.repeat):
                r = await one(reactor, anvil.url, args.blocks, args.txs)
                results.append(r)
                print(f"run {i + 1}: {r}", flush=True)

        try:
            task.react(lambda reactor: defer.ensureDeferred(runs(reactor)))
        except SystemExit as e:
            if e.code:
                raise
    out = {"machine": f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
           "decoding": "whole" if args.whole else f"piecemeal above {jsonrpc.PIECEMEAL_BYTES} bytes",
           "blocks": args.blocks, "txs_per_block": args.txs, "runs": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
