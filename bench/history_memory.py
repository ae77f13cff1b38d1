#!/usr/bin/env python3
"""
What explorerd's block history holds in memory, with and without logs.

  python3 bench/history_memory.py [--size 256] [--filters 1000] [--json out.json]

Fills an explorerd.history.History (by default explorerd's own size, `history_blocks`) the way
the live-tail fills it: each block parsed from JSON text (so nothing is shared with the
recordings), checked into an Entry with Entry.fromNode(block, logs=...) and added.  Three
chains: the six real mainnet blocks of 167-209 transactions (mainnet_11880804-11880809) with
their logs unknown (receipts off), the same with their real logs (219-349 a block), and one of
those blocks with its logs repeated to 600 (a busy mainnet block has 500+); every chain's
blocks get new heights and hashes (bench/blocks.py).

Measured after each step, with gc.collect() first: the Python allocations still held
(tracemalloc, in a process of its own) and the process's RSS growth (in another, without
tracemalloc's own overhead):
  entries   the history full, as published blocks leave it before anyone asked for a frame;
  frames    + the frames a publish makes and the entry keeps: newBlock, newTx per transaction
            and their joined payload, the newTxs batch, the logs message with every log
            (Entry.payload(True, None), .payload(False, "plain"), .payload(False, "batch"),
            .logFrame(None));
  filtered  + the logs messages of --filters clients with their own 10-address filters (drawn
            as bench/run.py draws them), each built as the hub's logs pass builds it
            (Entry.logFrame(indexes)); an entry keeps up to 64 of its logs frames.
Prints a Markdown table; --json also writes the raw figures (bench/run.py puts them in its report).
"""

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, REPO)

import blocks as blockdata  # noqa: E402

RECORDING = "mainnet_11880804-11880810"
CASES = {
    "unknown": "mainnet blocks, logs unknown (receipts off)",
    "logs": "mainnet blocks with their logs",
    "logs600": "a mainnet block with 600 logs (its 349 real ones repeated)",
}
PHASES = ("entries", "frames", "filtered")
FILTER_SIZE = 10


def sources(case):
    """C{[(block, logs), ...]}: the recorded blocks a chain of this case cycles through."""
    recorded = blockdata.recorded([RECORDING], min_txs=100)
    if case == "unknown":
        return [(block, None) for block, _ in recorded]
    if case == "logs":
        return recorded
    block, logs = max(recorded, key=lambda pair: len(pair[1]))
    repeated = [dict(logs[k % len(logs)], logIndex=hex(k)) for k in range(600)]
    return [(block, repeated)]


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(case, size, filters, traced):
    """One chain in this process: bytes held after each phase, over the baseline."""
    from explorerd.history import BATCH, PLAIN, Entry, History

    if traced:
        import tracemalloc

        tracemalloc.start()

        def held():
            gc.collect()
            return tracemalloc.get_traced_memory()[0]
    else:
        def held():
            gc.collect()
            return rss_bytes()

    source = sources(case)
    history = History(size)
    out = {"case": case, "size": size, "traced": traced}
    base = held()
    t = time.perf_counter()
    txs = logs = 0
    for item in blockdata.iter_raw_blocks(None, size, source=source):
        fresh = json.loads(json.dumps(item))  # as a JSON-RPC answer: nothing shared with the recordings
        entry = Entry.fromNode(fresh["block"], logs=fresh["logs"])
        history.add(entry)
        txs += entry.tx_count
        logs += len(entry.logs or ())
        del item, fresh, entry
    out["build_ms_per_block"] = (time.perf_counter() - t) * 1000 / size
    out["blocks"] = len(history)
    out["txs_per_block"] = txs / size
    out["logs_per_block"] = logs / size
    out["entries"] = held() - base
    entries = history.after(-1)
    t = time.perf_counter()
    for entry in entries:
        entry.payload(True, None)
        entry.payload(False, PLAIN)
        entry.payload(False, BATCH)
        entry.logFrame(None)
    out["frames_ms_per_block"] = (time.perf_counter() - t) * 1000 / size
    out["frames"] = held() - base
    pool = sorted({log["address"] for entry in entries for log in entry.logs or ()})
    chosen = [random.Random(f"bench-logs-0-{i}").sample(pool, min(FILTER_SIZE, len(pool))) for i in range(filters)] if pool else []
    t = time.perf_counter()
    built = 0
    for entry in entries:
        by_address = {}
        for i, log in enumerate(entry.logs or ()):
            by_address.setdefault(log["address"], []).append(i)
        for addresses in chosen:
            indexes = sorted(i for a in addresses for i in by_address.get(a, ()))
            if indexes:
                entry.logFrame(indexes)
                built += 1
    out["filtered_ms_per_block"] = (time.perf_counter() - t) * 1000 / size
    out["filtered_messages_per_block"] = built / size
    out["filtered"] = held() - base
    out["logs_frames_kept_per_block"] = sum(
        sum(1 for key in entry._logs if key != "json") for entry in entries) / size
    return out


def run_child(case, size, filters, traced):
    argv = [sys.executable, os.path.abspath(__file__), "--child", case, "--size", str(size), "--filters", str(filters)]
    if traced:
        argv.append("--traced")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"history_memory: {case} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def render(data):
    """The Markdown table of a run's raw figures."""
    mib = lambda b: f"{b / 2**20:,.1f}"
    kib = lambda b, n: f"{b / 1024 / n:,.0f}"
    size, filters = data["size"], data["filters"]
    lines = [
        f"A History of {size} blocks (explorerd's `history_blocks` is {data.get('default_size', '?')}), filled as "
        "the live-tail fills it: each block parsed from JSON and checked into an Entry "
        "(`Entry.fromNode(block, logs=...)`), then `History.add`. Memory still held after `gc.collect()`: "
        "Python allocations (tracemalloc) and, in a separate run without tracemalloc, the process's RSS growth. "
        "*entries* = the history full, before any client asked for a frame; *+ frames* = plus the frames a "
        "publish makes and the entry keeps (newBlock, newTx per transaction and their joined payload, the "
        f"newTxs batch, the logs message with every log); *+ filtered* = plus the logs messages of {filters:,} "
        f"clients with their own {FILTER_SIZE}-address filters (each entry keeps up to 64 logs frames). "
        "MiB for the whole history (KiB per block). The RSS growth reuses memory the process freed before "
        "it started (loading the recordings), so with a small history it is below the allocations.\n",
        "| chain | txs/block | logs/block | entries | + frames | + filtered | RSS Δ entries | RSS Δ all | logs frames kept/block | build ms/block |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_case = {c["case"]: c for c in data["cases"]}
    for case, title in CASES.items():
        c = by_case.get(case)
        if c is None:
            continue
        t, r, n = c["traced"], c["rss"], c["blocks"]
        cells = [f"{mib(t[p])} ({kib(t[p], n)})" for p in PHASES]
        lines.append(f"| {title} | {c['txs_per_block']:.0f} | {c['logs_per_block']:.0f} | " + " | ".join(cells) +
                     f" | {mib(r['entries'])} | {mib(r['filtered'])} | {c['logs_frames_kept_per_block']:.1f} | "
                     f"{c['build_ms_per_block']:.1f} |")
    lines.append("")
    if "logs" in by_case and "unknown" in by_case:
        a, b = by_case["logs"]["traced"], by_case["unknown"]["traced"]
        n = by_case["logs"]["blocks"]
        lines.append(
            f"Logs add {kib(a['entries'] - b['entries'], n)} KiB a block to the entries "
            f"({mib(a['entries'] - b['entries'])} MiB over {n} blocks), {kib(a['frames'] - b['frames'], n)} KiB "
            f"with the publish frames and {kib(a['filtered'] - b['filtered'], n)} KiB with the filtered logs frames "
            f"({mib(a['filtered'] - b['filtered'])} MiB).")
        lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--size", type=int, default=0, help="blocks held (default: explorerd's history_blocks)")
    p.add_argument("--filters", type=int, default=1000, help="clients with their own 10-address logs filter")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list from: {', '.join(CASES)}")
    p.add_argument("--json", default="", help="also write the raw figures here")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.size, args.filters, args.traced)))
        return
    from explorerd.config import Config

    default_size = Config.defaults().history_blocks
    size = args.size or default_size
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for case in cases:
        if case not in CASES:
            raise SystemExit(f"history_memory: unknown case {case!r}")
    data = {"size": size, "default_size": default_size, "filters": args.filters, "python": sys.version.split()[0],
            "cases": []}
    for case in cases:
        traced = run_child(case, size, args.filters, True)
        rss = run_child(case, size, args.filters, False)
        data["cases"].append({
            "case": case, "blocks": traced["blocks"], "txs_per_block": traced["txs_per_block"],
            "logs_per_block": traced["logs_per_block"],
            "filtered_messages_per_block": traced["filtered_messages_per_block"],
            "logs_frames_kept_per_block": traced["logs_frames_kept_per_block"],
            "traced": {p: traced[p] for p in PHASES}, "rss": {p: rss[p] for p in PHASES},
            # Times from the run without tracemalloc.
            "build_ms_per_block": rss["build_ms_per_block"], "frames_ms_per_block": rss["frames_ms_per_block"],
            "filtered_ms_per_block": rss["filtered_ms_per_block"]})
        print(f"history_memory: {case} done", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    print(render(data))


if __name__ == "__main__":
    main()
