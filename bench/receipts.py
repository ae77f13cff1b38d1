"""
What fetching each block's receipts costs the live-tail: a local anvil with N
blocks of 200 transactions (half plain transfers, half calls to a contract
that logs one event), then

  1. latencies: eth_getBlockByNumber(h, true) vs eth_getBlockReceipts(hash),
     one block per call, and in batches of 10 blocks;
  2. CPU: Entry.fromNode(block) vs Entry.fromNode(block, receipts);
  3. end to end: a LiveTail catching up the N blocks, receipts=off, logs, block.

    python3 bench/receipts.py [blocks]       # default 30; needs tests/node's anvil

A quick measurement, not part of bench/run.py; run it on a quiet machine.
"""

import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prometheus_client import CollectorRegistry  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402
from zope.interface import implementer  # noqa: E402

from explorerd.history import Entry  # noqa: E402
from explorerd.interfaces import IBlockSink  # noqa: E402
from explorerd.jsonrpc import JSONRPCClient  # noqa: E402
from explorerd.livetail import LiveTail  # noqa: E402
from explorerd.tailstate import Position, TailState  # noqa: E402
from tests.anvil import DEV_ACCOUNTS, blocking_anvil  # noqa: E402

TXS = 200
TOPIC = "ab" * 32
RUNTIME = "602a600052" + "7f" + TOPIC + "60206000a1" + "00"  # mstore 42; log1(0, 32, topic); stop
INIT = "602c600c600039602c6000f3" + RUNTIME


def post(url, payload):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def call(url, method, *params):
    answer = post(url, {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    assert "error" not in answer, answer
    return answer["result"]


def fill(url, blocks):
    sender = DEV_ACCOUNTS[0]
    call(url, "eth_sendTransaction", {"from": sender, "data": "0x" + INIT})
    call(url, "evm_mine")
    receipt = call(url, "eth_getTransactionReceipt", call(url, "eth_getBlockByNumber", "0x1", False)["transactions"][0])
    contract = receipt["contractAddress"]
    nonce = int(call(url, "eth_getTransactionCount", sender, "pending"), 16)
    for _ in range(blocks):
        batch = [{"jsonrpc": "2.0", "id": i, "method": "eth_sendTransaction",
                  "params": [{"from": sender, "to": contract if i % 2 else DEV_ACCOUNTS[1],
                              "value": hex(1 - i % 2), "gas": hex(60000), "nonce": hex(nonce + i)}]}
                 for i in range(TXS)]
        nonce += TXS
        answers = post(url, batch)
        errors = [a for a in answers if "error" in a]
        assert not errors, (len(errors), errors[:2])
        call(url, "evm_mine")
    head = int(call(url, "eth_blockNumber"), 16)
    last = call(url, "eth_getBlockByNumber", hex(head), True)
    receipts = call(url, "eth_getBlockReceipts", last["hash"])
    print(f"anvil: {head} blocks, the last with {len(last['transactions'])} txs and "
          f"{sum(len(r['logs']) for r in receipts)} logs; block JSON {len(json.dumps(last)) // 1024} KiB, "
          f"receipts JSON {len(json.dumps(receipts)) // 1024} KiB")
    return head


def ms(xs):
    xs = sorted(xs)
    return f"median {statistics.median(xs) * 1000:7.2f} ms  p90 {xs[int(len(xs) * 0.9)] * 1000:7.2f} ms"


@implementer(IBlockSink)
class Sink:
    def __init__(self):
        self.n = 0

    def publish(self, entry):
        self.n += 1
        return 0

    def publishReorg(self, depth, ancestor, removed):
        return 0

    def remember(self, entry):
        pass

    def announce(self, header):
        pass


async def measure(reactor, url, head):
    rpc = JSONRPCClient(reactor, url, timeout=60)
    heights = list(range(2, head + 1))
    await rpc.blockNumber()  # warm connection
    t_block, t_receipts, t_entry, t_entry_r = [], [], [], []
    for _ in range(3):
        for h in heights:
            t0 = time.perf_counter()
            block = await rpc.getBlockByNumber(h, True)
            t1 = time.perf_counter()
            receipts = await rpc.getBlockReceipts(block["hash"])
            t2 = time.perf_counter()
            Entry.fromNode(block)
            t3 = time.perf_counter()
            Entry.fromNode(block, receipts)
            t4 = time.perf_counter()
            t_block.append(t1 - t0)
            t_receipts.append(t2 - t1)
            t_entry.append(t3 - t2)
            t_entry_r.append(t4 - t3)
    print(f"one block per call ({len(t_block)} calls each):")
    print(f"  eth_getBlockByNumber(h, true)   {ms(t_block)}")
    print(f"  eth_getBlockReceipts(hash)      {ms(t_receipts)}")
    print(f"  Entry.fromNode(block)           {ms(t_entry)}")
    print(f"  Entry.fromNode(block, receipts) {ms(t_entry_r)}")
    b_blocks, b_receipts = [], []
    for _ in range(3):
        for i in range(0, len(heights) - 9, 10):
            chunk = heights[i:i + 10]
            t0 = time.perf_counter()
            blocks = await rpc.getBlocksByNumber(chunk, True)
            t1 = time.perf_counter()
            await rpc.batch([("eth_getBlockReceipts", [b["hash"]]) for b in blocks])
            t2 = time.perf_counter()
            b_blocks.append(t1 - t0)
            b_receipts.append(t2 - t1)
    print(f"batches of 10 blocks ({len(b_blocks)} each):")
    print(f"  blocks   {ms(b_blocks)}")
    print(f"  receipts {ms(b_receipts)}")

    print("end to end, batch_size 10:")
    genesis = await rpc.getBlockByNumber(0, False)
    for mode in ("off", "logs", "block") * 3:
        with tempfile.TemporaryDirectory() as d:
            state = TailState(f"{d}/s.json")
            state.save([Position(0, genesis["hash"], genesis["parentHash"])])
            sink = Sink()
            tail = LiveTail(task.Clock(), rpc, sink, state=state, receipts=mode, batch_size=10,
                            registry=CollectorRegistry(), max_catchup=10_000)
            t0 = time.perf_counter()
            assert await tail.poll()
            elapsed = time.perf_counter() - t0
            await tail.stopService()
            print(f"  tail catch-up of {sink.n} blocks, receipts={mode:5}: {elapsed:6.2f} s "
                  f"({elapsed / sink.n * 1000:6.1f} ms per block)")
    await rpc.close()


async def main(reactor, blocks):
    with blocking_anvil(no_mining=True, extra_args=["--gas-limit", "100000000"]) as node:
        head = fill(node.url, blocks)
        await measure(reactor, node.url, head)


if __name__ == "__main__":
    blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    task.react(lambda reactor: ensureDeferred(main(reactor, blocks)))
