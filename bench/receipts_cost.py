#!/usr/bin/env python3
"""
What fetching a block's receipts costs, per block, against a local anvil.

  python3 bench/receipts_cost.py [--blocks 40] [--txs 200] [--repeat 3] [--json out.json]

Starts an anvil that mines only on request (tests/anvil.py: the binary `npm ci --prefix
tests/node` installs), deploys tests/contracts.py's Emitter and mines --blocks blocks of --txs
calls each (one JSON-RPC batch of eth_sendTransaction, then evm_mine), every call emitting one
or two ERC-20 Transfer logs (~1.5 a transaction, ~300 a block, as mainnet).  Then, for every
block, --repeat times in a shuffled order, with explorerd's own JSON-RPC client
(explorerd.jsonrpc.JSONRPCClient: treq, one keep-alive connection):
  block           eth_getBlockByNumber(n, full), what the live-tail fetches without receipts;
  block+receipts  the same, then eth_getBlockReceipts(its hash): two round trips, by hash so
                  that a reorg in between fails instead of mixing two blocks, as the live-tail
                  does with receipts auto/block (one block a poll; it batches when catching up);
  block+logs      the same, then eth_getLogs({"blockHash": its hash}) (receipts logs);
  batch           eth_getBlockByNumber(n, full) and eth_getBlockReceipts(n) in one JSON-RPC
                  batch: one round trip, but by number, so a reorg between the two is not seen.
Per fetch: wall time (request to parsed result), this process's CPU meanwhile (what explorerd
would spend: HTTP and JSON decoding), anvil's CPU (from /proc, 10 ms ticks: a mean over all
fetches), and the time Entry.fromNode takes to check what came into an Entry.
Prints a Markdown table; --json also writes the raw figures (bench/run.py puts them in its report).
bench/receipts.py (not part of the suite) measures the same fetches a call at a time, batches of
10 blocks, and a LiveTail catching up, in each receipts mode.
"""

import argparse
import json
import math
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

METHODS = ("block", "block+receipts", "block+logs", "batch")
ROUND_TRIPS = {"block": 1, "block+receipts": 2, "block+logs": 2, "batch": 1}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError):
        return 0.0


def pct(values, p):
    values = sorted(values)
    return values[max(0, min(len(values) - 1, math.ceil(p / 100 * len(values)) - 1))]


def block_calls(contracts, k, seed, nonce):
    """
    C{k} Emitter calls of one block, each emitting one or two Transfer logs between made-up
    accounts, with their nonces from C{nonce} on (anvil runs a batch's items concurrently: left
    to itself it gives two of them the same nonce).
    """
    from tests.contracts import transfer

    rnd = random.Random(seed)
    calls = []
    for i in range(k):
        logs = [transfer(rnd.getrandbits(160), rnd.getrandbits(160), rnd.getrandbits(64)) for _ in range(1 + i % 2)]
        calls.append(("eth_sendTransaction", [dict(contracts.emitTx(logs), nonce=hex(nonce + i))]))
    return calls


async def fetch(rpc, method, number):
    """One fetch of block C{number} the way C{method} says; C{(block, receipts, logs)}."""
    if method == "batch":
        block, receipts = await rpc.batch([("eth_getBlockByNumber", [hex(number), True]),
                                           ("eth_getBlockReceipts", [hex(number)])])
        return block, receipts, None
    block = await rpc.getBlockByNumber(number, True)
    if method == "block+receipts":
        return block, await rpc.getBlockReceipts(block["hash"]), None
    if method == "block+logs":
        return block, None, await rpc.getLogs({"blockHash": block["hash"]})
    return block, None, None


async def measure(reactor, args):
    from explorerd.history import Entry
    from explorerd.jsonrpc import JSONRPCClient
    from tests.anvil import Anvil
    from tests.contracts import Contracts

    node = await Anvil(reactor, no_mining=True).start()
    rpc = JSONRPCClient(reactor, node.url, timeout=60)
    try:
        contracts = await Contracts.deploy(rpc)
        numbers, txs, logs, sizes = [], [], [], {"block": [], "receipts": [], "logs": []}
        for b in range(args.blocks):
            nonce = int(await rpc.call("eth_getTransactionCount", [contracts.sender, "latest"]), 16)
            await rpc.batch(block_calls(contracts, args.txs, b, nonce))
            await rpc.call("evm_mine", [])
            number = int(await rpc.call("eth_blockNumber", []), 16)
            block, receipts, _ = await fetch(rpc, "block+receipts", number)
            if len(block["transactions"]) != args.txs:
                raise SystemExit(f"receipts_cost: block {number} has {len(block['transactions'])} transactions, "
                                 f"not {args.txs} (block gas limit?)")
            numbers.append(number)
            txs.append(len(block["transactions"]))
            logs.append(sum(len(r["logs"]) for r in receipts))
            found = await rpc.getLogs({"blockHash": block["hash"]})
            for key, value in (("block", block), ("receipts", receipts), ("logs", found)):
                sizes[key].append(len(json.dumps(value, separators=(",", ":"))))
        samples = {m: {"wall": [], "cpu": [], "check": [], "node_cpu": 0.0} for m in METHODS}
        order = random.Random(1)
        for number in numbers:
            for _ in range(args.repeat):
                methods = list(METHODS)
                order.shuffle(methods)
                for method in methods:
                    node0, cpu0, t0 = proc_cpu(node.pid), time.process_time(), time.perf_counter()
                    block, receipts, found = await fetch(rpc, method, number)
                    wall, cpu, node1 = time.perf_counter() - t0, time.process_time() - cpu0, proc_cpu(node.pid)
                    t0 = time.perf_counter()
                    Entry.fromNode(block, receipts=receipts, logs=found)
                    s = samples[method]
                    s["check"].append(time.perf_counter() - t0)
                    s["wall"].append(wall)
                    s["cpu"].append(cpu)
                    s["node_cpu"] += node1 - node0
    finally:
        await rpc.close()
        await node.stop()
    ms = lambda v: round(v * 1000, 3)
    out = {"blocks": len(numbers), "repeat": args.repeat, "txs_per_block": statistics.mean(txs),
           "logs_per_block": statistics.mean(logs),
           "bytes": {k: round(statistics.mean(v)) for k, v in sizes.items()}, "methods": {}}
    for method, s in samples.items():
        out["methods"][method] = {
            "fetches": len(s["wall"]), "round_trips": ROUND_TRIPS[method],
            "wall_p50_ms": ms(pct(s["wall"], 50)), "wall_p99_ms": ms(pct(s["wall"], 99)),
            "cpu_p50_ms": ms(pct(s["cpu"], 50)), "cpu_p99_ms": ms(pct(s["cpu"], 99)),
            "node_cpu_mean_ms": ms(s["node_cpu"] / len(s["wall"])),
            "check_p50_ms": ms(pct(s["check"], 50)),
        }
    return out


def render(data):
    """The Markdown table of a run's raw figures."""
    b = data["bytes"]
    lines = [
        f"anvil (`--no-mining`), {data['blocks']} blocks of {data['txs_per_block']:.0f} Emitter calls and "
        f"{data['logs_per_block']:.0f} logs each (ERC-20 Transfers), every block fetched {data['repeat']}× each way in a "
        f"shuffled order with explorerd's JSON-RPC client on one keep-alive connection. Results as JSON: block "
        f"{b['block'] / 1024:,.0f} KiB, receipts {b['receipts'] / 1024:,.0f} KiB, logs {b['logs'] / 1024:,.0f} KiB. "
        "*wall* = request to parsed result; *client CPU* = this process's CPU meanwhile (HTTP, JSON decoding: what "
        "explorerd spends); *anvil CPU* = the node's CPU per fetch (mean, from 10 ms ticks); *check* = "
        "`Entry.fromNode` on what came. Node and client share the machine's cores.\n",
        "| per block | round trips | wall p50 ms | wall p99 ms | client CPU p50 ms | client CPU p99 ms | anvil CPU ms | check p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        m = data["methods"].get(method)
        if m is None:
            continue
        lines.append(f"| {method} | {m['round_trips']} | {m['wall_p50_ms']:.1f} | {m['wall_p99_ms']:.1f} | "
                     f"{m['cpu_p50_ms']:.1f} | {m['cpu_p99_ms']:.1f} | {m['node_cpu_mean_ms']:.1f} | {m['check_p50_ms']:.1f} |")
    lines.append("")
    one, both = data["methods"].get("block"), data["methods"].get("block+receipts")
    if one and both:
        lines.append(f"Receipts (by hash, after the block) add {both['wall_p50_ms'] - one['wall_p50_ms']:.1f} ms wall "
                     f"(p50), {both['cpu_p50_ms'] - one['cpu_p50_ms']:.1f} ms of client CPU and "
                     f"{both['check_p50_ms'] - one['check_p50_ms']:.1f} ms of checking per block.")
        lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--blocks", type=int, default=40, help="blocks mined and measured (default 40)")
    p.add_argument("--txs", type=int, default=200, help="transactions per block (default 200)")
    p.add_argument("--repeat", type=int, default=3, help="fetches of each block each way (default 3)")
    p.add_argument("--json", default="", help="also write the raw figures here")
    args = p.parse_args()
    if args.blocks < 1 or args.txs < 1 or args.repeat < 1:
        raise SystemExit("receipts_cost: --blocks, --txs and --repeat must be at least 1")
    from twisted.internet import defer, task

    result = {}

    async def run(reactor):
        result.update(await measure(reactor, args))

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(render(result))


if __name__ == "__main__":
    main()
