"""
End to end: from the node producing a block (anvil's C{evm_mine}) to its arrival at N clients,
explorerd at its default latency settings against the node serving the same clients itself.

Part of bench/run.py (scenario C{e2e}); one cell is one mode, one N, one run:

  node-direct        each client subscribes to anvil's own WebSocket (C{eth_subscribe}
                     C{newHeads}, on anvil's HTTP port)
  explorerd-http     C{twistd explorerd --rpc-url http://anvil}: adaptive polling, the default
  explorerd-push     the same with C{--rpc-ws-url ws://anvil}: explorerd subscribes to anvil's
                     C{newHeads} and fetches each block the moment it is announced
  node-direct-fetch  as node-direct, and each client then fetches the block (full transactions)
                     and its receipts from anvil in one JSON-RPC batch: it has what explorerd's
                     C{newHeads} vouches for (explorerd publishes a head only after it fetched and
                     checked the block and its receipts)

The explorerd modes' clients use explorerd's C{/v1/rpc} C{eth_subscribe("newHeads")}: the same
client code and protocol as node-direct (bench/loadgen.mjs C{--protocol eth-subscribe}).
explorerd runs with its defaults except what a load test must change (C{--listen} with a large
backlog, C{--max-connections} above N, the per-IP limits off, C{--state-dir ''}).

Each cell: a fresh anvil (C{--no-mining}) with a tiny log-emitting contract deployed from its raw
bytecode (tests/contracts.py's Emitter); explorerd (explorerd modes); the N clients connect and
subscribe; then blocks on a fixed grid (C{block_time}, 2 s: an L2's block time), the first
C{warmup} of them unmeasured (adaptive polling learns the block time from them), then C{blocks}
measured ones.  Half a slot before each block, its transactions go to anvil as one JSON-RPC batch
of C{eth_sendTransaction} from an unlocked dev account: C{txs} (200) a block, every other one a
call of the contract emitting one or two ERC-20 Transfer logs, the rest plain transfers.  Each
block is mined at its grid time plus a seeded jitter of up to C{jitter} (a quarter of explorerd's
default poll interval, so the mining samples every phase of its polls); the grid starts C{phase}
into a wall-clock second, so a block comes shortly after its (whole-second) timestamp says, as on
a real chain.  Latency = a client's arrival (loadgen, CLOCK_MONOTONIC) - the moment C{evm_mine}
was sent (this process, time.monotonic(): the same clock).

explorerd's /metrics is read half a slot after the last warm-up block and half a slot after the
last measured one (a window of C{blocks} slots): per-block CPU, RPC calls per block by method
(C{explorer_tail_rpc_calls_total}) and the block's stages (C{explorer_tail_block_stage_seconds},
when this explorerd exports it) come from the difference.
"""

import http.client
import json
import math
import os
import random
import re
import shlex
import statistics
import subprocess
import sys
import time
import traceback
import urllib.request

import run
from run import BenchError, Proc

MODES = run.FULL["e2e"]["servers"]
PROTOCOL = {"node-direct": "eth-subscribe", "explorerd-http": "eth-subscribe",
            "explorerd-push": "eth-subscribe", "node-direct-fetch": "eth-subscribe-fetch"}
STAGES = ("announce", "fetch", "check", "publish")
STAGE_METRIC = "explorer_tail_block_stage_seconds"
CALLS_METRIC = "explorer_tail_rpc_calls_total"
POLLS_METRIC = "explorer_tail_polls_started_total"
SENDER = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"  # anvil's first unlocked dev account

# The targets, checked in the report.
TARGET_N1_MEDIAN_MS = 5.0
TARGET_N10000_P99_MS = 300.0


# ---------------------------------------------------------------------------------------------
# The node.

class NodeRPC:
    """Synchronous JSON-RPC over one keep-alive HTTP connection (the miner's, not a client's)."""

    def __init__(self, port, timeout=60):
        self.port, self.timeout = port, timeout
        self.conn = None

    def _post(self, body):
        for attempt in (0, 1):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                self.conn.request("POST", "/", body, {"Content-Type": "application/json"})
                return json.loads(self.conn.getresponse().read())
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if attempt:
                    raise BenchError(f"anvil: {e}") from None
        raise AssertionError("unreachable")

    def call(self, method, params=()):
        answer = self._post(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}))
        if "error" in answer:
            raise BenchError(f"anvil {method}: {answer['error']}")
        return answer["result"]

    def batch(self, calls):
        body = json.dumps([{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)])
        answers = sorted(self._post(body), key=lambda a: a.get("id", -1))
        bad = [a for a in answers if "error" in a]
        if bad or len(answers) != len(calls):
            raise BenchError(f"anvil batch: {len(bad)} errors of {len(calls)} (first: {bad[0]['error'] if bad else 'answers missing'})")
        return [a["result"] for a in answers]

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


_anvil_version = None


def anvil_version():
    global _anvil_version
    if _anvil_version is None:
        out = subprocess.run([run.ANVIL, "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"anvil Version: (\S+)", out)
        _anvil_version = m.group(1) if m else out.strip().splitlines()[0] if out.strip() else "?"
    return _anvil_version


def start_anvil(log_dir):
    if not os.path.exists(run.ANVIL):
        raise BenchError(f"no anvil binary at {run.ANVIL} (npm ci --prefix tests/node)")
    anvil = Proc("anvil", [run.ANVIL, "--host", "127.0.0.1", "--port", "0", "--no-mining"], log_dir, json_lines=False)
    line = anvil.expect("Listening on", 30)
    port = int(re.search(r"Listening on [0-9.]+:(\d+)", line).group(1))
    return anvil, port


class Chain:
    """The blocks of one cell: the contract, each block's transactions, the mining."""

    def __init__(self, rpc, txs, seed):
        self.rpc = rpc
        self.txs = txs
        self.rnd = random.Random(seed)
        self.emitter = None
        self.nonce = None

    def deploy(self):
        from tests.contracts import EMITTER_RUNTIME, creationCode

        tx = self.rpc.call("eth_sendTransaction", [{"from": SENDER, "data": "0x" + creationCode(EMITTER_RUNTIME).hex(),
                                                    "gas": hex(200_000)}])
        self.rpc.call("evm_mine")
        receipt = self.rpc.call("eth_getTransactionReceipt", [tx])
        if not receipt or receipt["status"] != "0x1":
            raise BenchError(f"deploying the log emitter failed: {receipt!r}")
        self.emitter = receipt["contractAddress"]
        self.nonce = int(self.rpc.call("eth_getTransactionCount", [SENDER, "latest"]), 16)
        return int(self.rpc.call("eth_blockNumber"), 16)

    def fill(self):
        """The next block's transactions, queued in anvil with one JSON-RPC batch."""
        from tests.contracts import encodeLogs, gasFor, transfer

        calls = []
        for j in range(self.txs):
            if j % 2 == 0:
                logs = [transfer(self.rnd.getrandbits(160), self.rnd.getrandbits(160), self.rnd.getrandbits(64))
                        for _ in range(1 + (j // 2) % 2)]
                tx = {"from": SENDER, "to": self.emitter, "data": encodeLogs(logs), "gas": hex(gasFor(logs))}
            else:
                tx = {"from": SENDER, "to": "0x%040x" % self.rnd.getrandbits(160), "value": hex(1 + j), "gas": hex(21_000)}
            # Explicit nonces: anvil runs a batch's items concurrently and would give two the same one.
            calls.append(("eth_sendTransaction", [dict(tx, nonce=hex(self.nonce + j))]))
        self.rpc.batch(calls)
        self.nonce += self.txs

    def mine(self):
        """C{(t, took)}: when evm_mine was sent (time.monotonic()) and how long anvil took to answer."""
        t = time.monotonic()
        self.rpc.call("evm_mine")
        return t, time.monotonic() - t


# ---------------------------------------------------------------------------------------------
# explorerd and its /metrics.

def start_explorerd(mode, anvil_port, n, log_dir):
    log_path = os.path.join(log_dir, "twistd.log")
    env = dict(os.environ, PYTHONPATH=run.REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    options = ["--rpc-url", f"http://127.0.0.1:{anvil_port}/"]
    if mode == "explorerd-push":
        options += ["--rpc-ws-url", f"ws://127.0.0.1:{anvil_port}/"]
    # Only what a load test must change; every latency setting at its default.
    options += ["--listen", "tcp:0:interface=127.0.0.1:backlog=8192", "--max-connections", str(n + 100),
                "--state-dir", ""] + run.limits_off()
    argv = run.twistd_argv() + ["-n", "--pidfile=", "--logfile", log_path, "explorerd"] + options
    srv = Proc("explorerd", argv, log_dir, json_lines=False, cwd=log_dir, env=env)
    port = None
    deadline = time.monotonic() + 60
    while port is None and time.monotonic() < deadline:
        if not srv.alive():
            raise BenchError(f"twistd explorerd exited; see {log_path} and {srv.stderr_path}")
        try:
            with open(log_path) as f:
                m = re.search(r"explorerd listening on .*?http://127\.0\.0\.1:(\d+)/", f.read())
            port = m and int(m.group(1))
        except OSError:
            pass
        time.sleep(0.1)
    if port is None:
        raise BenchError(f"twistd explorerd did not log its port; see {log_path}")
    return srv, port, options


def scrape(port):
    """explorerd's /metrics, parsed; None if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return parse_prometheus(r.read().decode("utf-8"))
    except OSError:
        return None


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text):
    """Prometheus text exposition -> {(name, ((label, value), ...)): float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = tuple(sorted(_LABEL.findall(m.group(3) or "")))
        try:
            out[(m.group(1), labels)] = float(m.group(4))
        except ValueError:
            continue
    return out


def _delta(before, after, name, **want):
    """Per remaining label set: after - before, for samples of C{name} with the labels C{want}."""
    out = {}
    for (metric, labels), value in after.items():
        if metric != name:
            continue
        d = dict(labels)
        if any(d.get(k) != v for k, v in want.items()):
            continue
        rest = tuple((k, v) for k, v in labels if k not in want)
        out[rest] = value - before.get((metric, labels), 0.0)
    return out


def histogram_quantile(q, buckets):
    """
    Prometheus's histogram_quantile over C{[(upper bound, cumulative count)]} (linear within the
    bucket): C{(value, beyond)}, C{beyond} true when it fell in the +Inf bucket and C{value} is only
    the last finite bound; C{(None, False)} without observations.
    """
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None, False
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, cum in buckets:
        if cum >= rank:
            if math.isinf(upper):
                return lower, True
            return lower + (upper - lower) * ((rank - below) / (cum - below) if cum > below else 1.0), False
        lower, below = upper, cum
    return lower, True


def stage_figures(before, after):
    """Per stage: blocks, mean, p50 and p99 (ms) over the window; None if explorerd has no such metric."""
    if not before or not after or not any(name == STAGE_METRIC + "_count" for name, _ in after):
        return None
    out = {}
    for stage in STAGES:
        count = sum(_delta(before, after, STAGE_METRIC + "_count", stage=stage).values())
        total = sum(_delta(before, after, STAGE_METRIC + "_sum", stage=stage).values())
        buckets = [(float(dict(labels)["le"]), v) for labels, v in
                   _delta(before, after, STAGE_METRIC + "_bucket", stage=stage).items() if "le" in dict(labels)]
        ms = lambda v: None if v is None else round(v * 1000, 2)
        out[stage] = {"count": int(count), "mean_ms": ms(total / count) if count else None}
        for q, key in ((0.5, "p50_ms"), (0.99, "p99_ms")):
            value, beyond = histogram_quantile(q, buckets)
            out[stage][key] = ms(value)
            if beyond:
                out[stage][key.replace("_ms", "_beyond_buckets")] = True
    return out


def counter_per_block(before, after, metric, label, blocks):
    """A counter's increase per block over the window, by one label; None if explorerd has no such counter."""
    if not before or not after or not any(name == metric for name, _ in after):
        return None
    counts = _delta(before, after, metric)
    return {dict(labels).get(label, "?"): round(v / blocks, 2) for labels, v in sorted(counts.items()) if v}


# ---------------------------------------------------------------------------------------------
# One cell.

def sleep_until(wall):
    left = wall - time.time()
    if left > 0:
        time.sleep(left)


def cpu_of(proc):
    return None if proc is None else run.proc_cpu(proc.pid)


def run_cell(spec, mode, n, run_index, out_dir, verify=False):
    cell = f"e2e-{mode}-{n}-r{run_index}"
    spec = dict(spec, **spec.get("cell_overrides", {}).get(mode, {}).get(n, {}))
    log_dir = os.path.join(out_dir, "logs", cell)
    os.makedirs(log_dir, exist_ok=True)
    slot, warmup, measured, k_txs = spec["block_time"], spec["warmup"], spec["blocks"], spec["txs"]
    result = {"scenario": "e2e", "server": mode, "mode": mode, "clients": n, "run": run_index, "blocks": measured,
              "warmup": warmup, "block_time": slot, "txs": k_txs, "protocol": PROTOCOL[mode], "errors": []}
    procs = []
    srv = None
    rpc = None
    try:
        result["anvil_version"] = anvil_version()
        anvil, anvil_port = start_anvil(log_dir)
        procs.append(anvil)
        rpc = NodeRPC(anvil_port)
        chain = Chain(rpc, k_txs, f"e2e-{n}-{run_index}")
        head = chain.deploy()
        metrics_port = None
        if mode.startswith("explorerd"):
            srv, metrics_port, options = start_explorerd(mode, anvil_port, n, log_dir)
            procs.append(srv)
            result["explorerd_options"] = options
            url = f"ws://127.0.0.1:{metrics_port}/v1/rpc"
        else:
            url = f"ws://127.0.0.1:{anvil_port}/"
        total = warmup + measured
        lg_spec = dict(spec, channels="newHeads", protocol=PROTOCOL[mode])
        loadgens = run.start_loadgens(lg_spec, n, url, log_dir, verify, 300 + n / 20 + total * slot)
        procs += loadgens
        ready = run.wait_ready(loadgens, n)
        subscribed = sum(r["subscribed"] for r in ready)
        result["subscribed"] = subscribed
        result["connect_failed"] = n - subscribed
        result["connect_s"] = round(max(r["connect_s"] for r in ready), 2)
        kinds = {}
        for r in ready:
            for key, v in r.get("errorKinds", {}).items():
                kinds[key] = kinds.get(key, 0) + v
        result["connect_errors"] = kinds
        if subscribed < n:
            result["errors"].append(f"only {subscribed}/{n} clients subscribed (errors: {kinds})")
        if subscribed == 0:
            raise BenchError("no client subscribed")
        time.sleep(1.0)

        # The blocks, on the grid.
        jitter = random.Random(f"e2e-jitter-{n}-{run_index}")
        offsets = [jitter.uniform(0, spec["jitter"]) for _ in range(total)]
        ours = lambda: sum(filter(None, (run.proc_cpu(p.pid) for p in procs))) + time.process_time()
        snapshot = lambda metrics: {"metrics": scrape(metrics_port) if metrics and metrics_port else None,
                                    "explorerd_cpu": cpu_of(srv), "anvil_cpu": cpu_of(anvil),
                                    "busy": run.system_busy(), "ours": ours()}
        start = snapshot(False)
        before = snapshot(True) if warmup == 0 else None
        chain.fill()
        grid0 = math.floor(time.time()) + 1 + spec["phase"]
        blocks = []
        for i in range(total):
            due = grid0 + i * slot + offsets[i]
            sleep_until(due)
            late = time.time() - due  # > 0 when anvil was still busy with the last block (or its transactions)
            t, took = chain.mine()
            blocks.append({"height": head + 1 + i, "t": t, "took": took, "wall": time.time() - took, "late": late,
                           "warmup": i < warmup})
            sleep_until(grid0 + i * slot + slot / 2)
            if i == warmup - 1:
                before = snapshot(True)
            if i < total - 1:
                chain.fill()
        if int(rpc.call("eth_blockNumber"), 16) != head + total:
            result["errors"].append(f"anvil's head is {int(rpc.call('eth_blockNumber'), 16)}, not {head + total}")

        expected_total = subscribed * total
        # node-direct-fetch: every client's fetch of every block is served by anvil, which may take
        # much longer than the blocks did; the others are done within a slot.
        max_wait = 30 + n / 100 + (0.05 * n * total if mode == "node-direct-fetch" else 0)
        got, drain_s, how = run.drain(loadgens, expected_total, max_wait=max_wait, stall=6.0)
        after = snapshot(True)
        result["drain_s"] = round(drain_s, 2)
        if how != "complete":
            result["errors"].append(f"delivery {how} {drain_s:.1f}s after the last block's slot: "
                                    f"{got}/{expected_total} blocks delivered")
        dones = []
        for lg in loadgens:
            lg.send("report")
        for lg in loadgens:
            dones.append(run.read_done(lg.expect("done", 120)))
        result.update(analyze(blocks, dones, subscribed))
        # CPU: from the first block's transactions to the last delivery, every block (warm-up included).
        per_block = lambda key: (None if start[key] is None or after[key] is None
                                 else round((after[key] - start[key]) / total * 1000, 1))
        result["explorerd_cpu_ms_per_block"] = per_block("explorerd_cpu")
        result["anvil_cpu_ms_per_block"] = per_block("anvil_cpu")
        result["foreign_cpu_cores"] = run.foreign_cores(start["busy"], after["busy"], start["ours"], after["ours"])
        result["loadavg"] = open("/proc/loadavg").read().split()[:3]
        if metrics_port:
            # /metrics: from half a slot after the last warm-up block to the last delivery.
            result["stages"] = stage_figures(before["metrics"], after["metrics"])
            window = before["metrics"], after["metrics"]
            result["rpc_calls_per_block"] = counter_per_block(*window, CALLS_METRIC, "method", measured)
            result["polls_per_block"] = counter_per_block(*window, POLLS_METRIC, "by", measured)
            if before["metrics"] is None or after["metrics"] is None:
                result["errors"].append("explorerd's /metrics did not answer")
        result.update(block_facts(rpc, [x["height"] for x in blocks if not x["warmup"]], blocks))
    except BenchError as e:
        result["errors"].append(str(e))
    except Exception as e:  # a bug here must not cost the rest of a 30-minute run: kept as a failed run
        with open(os.path.join(log_dir, "traceback.txt"), "w") as f:
            traceback.print_exc(file=f)
        result["errors"].append(f"internal error {e!r} (see {os.path.relpath(log_dir, run.REPO)}/traceback.txt)")
    finally:
        if rpc is not None:
            rpc.close()
        for p in reversed(procs):
            p.stop(grace=0.5)
    with open(os.path.join(out_dir, f"{cell}.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def analyze(blocks, dones, subscribed):
    """Latency of the measured blocks; loss, duplicates and order over every block."""
    mined = {b["height"]: b for b in blocks}
    lat, notify = [], []
    per_block = {}
    delivered = 0
    for d in dones:
        b0 = d["base"]
        for h, e in d["blocks"].items():
            b = mined.get(int(h))
            if b is None:
                continue
            for first, last, k in zip(e["first"], e["last"], e["n"]):
                if k <= 0 or last is None:
                    continue
                delivered += 1
                if b["warmup"]:
                    continue
                x = b0 + last / 1e6 - b["t"]
                lat.append(x)
                notify.append(b0 + first / 1e6 - b["t"])
                per_block.setdefault(b["height"], []).append(x)
    ms = lambda v: None if v is None else round(v * 1000, 2)
    fetch = {"sent": 0, "answers": 0, "errors": 0, "bytes": 0, "unexpected": 0, "errorKinds": {}}
    closes = {}
    for d in dones:
        f = d.get("fetch") or {}
        for key in ("sent", "answers", "errors", "bytes", "unexpected"):
            fetch[key] += f.get(key, 0)
        for key, v in (f.get("errorKinds") or {}).items():
            fetch["errorKinds"][key] = fetch["errorKinds"].get(key, 0) + v
        for code, v in d.get("closeCodes", {}).items():
            closes[code] = closes.get(code, 0) + v
    measured = [b for b in blocks if not b["warmup"]]
    return {
        "expected": subscribed * len(blocks), "delivered": delivered, "lost": subscribed * len(blocks) - delivered,
        "dupes": sum(d["dupes"] for d in dones), "order_errors": sum(d["orderErrors"] for d in dones),
        "verify_errors": sum(d.get("verifyErrors", 0) for d in dones),
        "other_messages": sum(d.get("otherMessages", 0) for d in dones),
        "closed_by_server": closes,
        "fetch": fetch if fetch["sent"] else None,
        "lat_p50_ms": ms(run.pct(lat, 50)), "lat_p99_ms": ms(run.pct(lat, 99)), "lat_max_ms": ms(max(lat, default=None)),
        "notify_p50_ms": ms(run.pct(notify, 50)), "samples": len(lat),
        "block_p50_ms": [ms(run.pct(per_block.get(b["height"], []), 50)) for b in measured],
        "mine_took_p50_ms": ms(run.pct([b["took"] for b in measured], 50)),
        "mine_took_max_ms": ms(max((b["took"] for b in measured), default=None)),
        "mined_at": [round(b["wall"] % 1, 3) for b in measured],
        "behind_grid_max_s": round(max(b["late"] for b in blocks), 3),
        "loadgen_cpu_share": [round(d["cpu_s"] / max(d["window_s"], 1e-9), 2) for d in dones],
        "loadgen_loop_p99_ms": [round(d["loop_delay_ms"]["p99"], 1) for d in dones],
    }


def block_facts(rpc, heights, blocks):
    """What the measured blocks held: transactions, logs, JSON bytes of block + receipts, timestamps."""
    txs, logs, sizes, stamps = [], [], [], []
    for h in heights:
        block = rpc.call("eth_getBlockByNumber", [hex(h), True])
        receipts = rpc.call("eth_getBlockReceipts", [hex(h)])
        txs.append(len(block["transactions"]))
        logs.append(sum(len(r["logs"]) for r in receipts))
        sizes.append(len(json.dumps(block, separators=(",", ":"))) + len(json.dumps(receipts, separators=(",", ":"))))
        stamps.append(int(block["timestamp"], 16))
    walls = {b["height"]: b["wall"] for b in blocks}
    return {"block_txs": txs, "block_logs": logs, "block_bytes": sizes,
            "timestamp_gaps": [b - a for a, b in zip(stamps, stamps[1:])],
            "late_after_timestamp_s": [round(walls[h] - s, 3) for h, s in zip(heights, stamps)]}


def progress(r):
    """One line for run.py's progress output."""
    if r.get("lat_p50_ms") is None:
        return f"FAILED: {r['errors']}"
    cpu = r.get("explorerd_cpu_ms_per_block") if r["mode"].startswith("explorerd") else r.get("anvil_cpu_ms_per_block")
    return (f"p50 {r['lat_p50_ms']} ms, p99 {r['lat_p99_ms']} ms, max {r['lat_max_ms']} ms, lost {r['lost']}, "
            f"dup {r['dupes']}, failed to connect {r.get('connect_failed', 0)}, server CPU {cpu} ms/block"
            + (f" ERRORS: {r['errors']}" if r["errors"] else ""))


# ---------------------------------------------------------------------------------------------
# The report.

def _med(rows, key):
    return run.median([r.get(key) for r in rows])


def _f(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


def _range(values):
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def _ok(rows):
    return [r for r in rows if r.get("lat_p50_ms") is not None]


def blocks_text(rows):
    """How many warm-up and measured blocks the cells had: the usual shape, then the exceptions."""
    shapes = {}
    for r in rows:
        shapes.setdefault((r["warmup"], r["blocks"]), set()).add((r["clients"], r["mode"]))
    ordered = sorted(shapes, key=lambda k: -len(shapes[k]))
    text = f"{ordered[0][0]} warm-up blocks, then {ordered[0][1]} measured"
    for shape in ordered[1:]:
        cells = ", ".join(f"{m} at N={n:,}" for n, m in sorted(shapes[shape]))
        text += f" ({cells}: {shape[0]} and {shape[1]})"
    return text


def options_text(rows):
    """explorerd's options as run (ports and N made generic), and what push adds."""
    def generic(options):
        text = re.sub(r"127\.0\.0\.1:\d+", "ANVIL", shlex.join(options))
        return re.sub(r"--max-connections \d+", "--max-connections N+100", text)

    http = next((r["explorerd_options"] for r in rows if r["mode"] == "explorerd-http" and r.get("explorerd_options")), None)
    push = next((r["explorerd_options"] for r in rows if r["mode"] == "explorerd-push" and r.get("explorerd_options")), None)
    if http and push:
        extra = push[push.index("--rpc-ws-url"):push.index("--rpc-ws-url") + 2] if "--rpc-ws-url" in push else []
        return f"`{generic(http)}`, and for push also `{generic(extra)}`"
    return f"`{generic(http or push)}`" if http or push else ""


def section(spec, rows, meta):
    out = []
    w = out.append
    ns = sorted({r["clients"] for r in rows})
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    cell = lambda n, m: [r for r in rows if r["clients"] == n and r["mode"] == m]
    w(f"## {spec['title']}\n")
    facts = [r for r in rows if r.get("block_txs")]
    on_grid = [r for r in facts if r.get("behind_grid_max_s", 0) < 0.1] or facts
    txs = [x for r in facts for x in r["block_txs"]]
    logs = [x for r in facts for x in r["block_logs"]]
    sizes = [x for r in facts for x in r["block_bytes"]]
    gaps = sorted({x for r in on_grid for x in r.get("timestamp_gaps", [])})
    late = [x for r in on_grid for x in r.get("late_after_timestamp_s", [])]
    r0 = rows[0]
    w(f"anvil {r0.get('anvil_version', '')} (`--no-mining`), a fresh one per cell; {blocks_text(rows)}"
      + f", one every {r0['block_time']:g} s"
      + (f" (timestamp gaps {', '.join(f'{g} s' for g in gaps)}; mined {min(late):.2f}–{max(late):.2f} s after the "
         f"block's timestamp, where anvil kept up)" if gaps and late else "") + ". "
      + (f"Blocks of {_range(txs)} transactions with {_range(logs)} logs (half of the transactions calls of a "
         f"contract emitting one or two ERC-20 Transfer logs, the rest plain transfers), block with transactions + "
         f"receipts {statistics.mean(sizes) / 1024:,.0f} KiB of JSON. " if txs else "")
      + "Each block's transactions are sent half a slot before it as one JSON-RPC batch of `eth_sendTransaction`. "
      "**Latency** = the client process reading the block (for node-direct-fetch: the answer with the block and its "
      "receipts) − the moment `evm_mine` was sent (CLOCK_MONOTONIC on both sides); it includes anvil building the "
      "block (*evm_mine ms*: how long anvil took to answer it).\n")
    opts = options_text(rows)
    w("Modes, the same clients (bench/loadgen.mjs, `eth_subscribe(\"newHeads\")`, one JSON-RPC protocol): "
      "**node-direct** = anvil's own WebSocket; **explorerd-http** = `twistd explorerd --rpc-url http://anvil` "
      "(adaptive polling); **explorerd-push** = the same with `--rpc-ws-url ws://anvil` (explorerd subscribes to "
      "anvil's newHeads); clients on explorerd's `/v1/rpc`, whose newHeads is published only after explorerd fetched "
      "and checked the block and its receipts; **node-direct-fetch** = node-direct, each client then fetching the "
      "block (full transactions) and its receipts from anvil in one JSON-RPC batch (`eth_getBlockByNumber` + "
      "`eth_getBlockReceipts`): arrival when it has both. explorerd at its default latency settings (poll interval "
      "1 s, adaptive polling on, receipts auto)"
      + (f"; its options: {opts}" if opts else "") + ".\n")
    w("Figures: median over runs, (min–max) with more than one run; p50/p99/max over every client × measured block "
      "of a run. *lost* = blocks a subscribed client never got, *dup* = blocks it got twice (warm-up blocks "
      "included: every client must get every block exactly once); *failed* = clients that could not connect or "
      "subscribe. *explorerd CPU*, *anvil CPU* = the process's CPU from the first block's transactions to the last "
      "delivery ÷ blocks, warm-up included (anvil's includes taking the transactions and building the block, the "
      "same in every mode: its figure in the explorerd modes is about that plus explorerd's fetches). *loadgen CPU* = "
      "the busiest load generator's CPU share; *foreign CPU* = other processes' CPU meanwhile, in cores.\n")
    w("| N | mode | runs ok | lat p50 ms | lat p99 ms | lat max ms | lost | dup | order | failed | "
      "explorerd CPU ms/block | anvil CPU ms/block | evm_mine ms | loadgen CPU | foreign CPU | notes |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in ns:
        for m in modes:
            rs = cell(n, m)
            if not rs:
                continue
            ok = _ok(rs)
            notes = [f"run {r['run'] + 1}: {e}" for r in rs for e in r["errors"]]
            closes = {}
            for r in rs:
                for code, v in (r.get("closed_by_server") or {}).items():
                    closes[code] = closes.get(code, 0) + v
            if closes:
                notes.append(f"closed by the server: {closes}")
            fetch_errors = sum((r.get("fetch") or {}).get("errors", 0) for r in rs)
            if fetch_errors:
                notes.append(f"{fetch_errors} fetches failed")
            behind = max((r.get("behind_grid_max_s", 0) for r in ok), default=0)
            if behind >= 0.1:
                notes.append(f"anvil fell behind the {rows[0]['block_time']:g} s grid (blocks up to {behind:.1f} s late: "
                             f"evm_mine or the transactions waited for it)")
            if m == "node-direct-fetch" and ok:
                notes.append(f"notification p50 {run.fmt([r.get('notify_p50_ms') for r in ok], 1)} ms")
            lg = max((x for r in ok for x in r.get("loadgen_cpu_share", [])), default=None)
            w(f"| {n:,} | {m} | {len(ok)}/{len(rs)} | {run.fmt([r['lat_p50_ms'] for r in ok], 1)} | "
              f"{run.fmt([r['lat_p99_ms'] for r in ok], 1)} | {run.fmt([r['lat_max_ms'] for r in ok], 1)} | "
              f"{sum(r.get('lost', 0) for r in ok)} | {sum(r.get('dupes', 0) for r in ok)} | "
              f"{sum(r.get('order_errors', 0) for r in ok)} | {sum(r.get('connect_failed', 0) for r in rs)} | "
              f"{run.fmt([r.get('explorerd_cpu_ms_per_block') for r in ok], 1)} | "
              f"{run.fmt([r.get('anvil_cpu_ms_per_block') for r in ok], 1)} | "
              f"{run.fmt([r.get('mine_took_p50_ms') for r in ok], 1)} | {'–' if lg is None else f'{lg:.0%}'} | "
              f"{run.fmt([r.get('foreign_cpu_cores') for r in ok], 2)} | {'; '.join(notes)} |")
    w("")

    peers = [p for p in ("node-direct", "node-direct-fetch") if p in modes]
    ours = [m for m in ("explorerd-http", "explorerd-push") if m in modes]
    if peers and ours:
        w("explorerd against the node serving the same clients itself (medians over runs; *Δ* = explorerd − peer in "
          "ms, negative: explorerd is faster; *÷* = explorerd ÷ peer):\n")
        w("| N | explorerd mode | vs | Δ p50 ms | Δ p99 ms | p99 ÷ |")
        w("|---|---|---|---|---|---|")
        for n in ns:
            for m in ours:
                e = _ok(cell(n, m))
                for p in peers:
                    q = _ok(cell(n, p))
                    if not e or not q:
                        continue
                    d50 = _med(e, "lat_p50_ms") - _med(q, "lat_p50_ms")
                    d99 = _med(e, "lat_p99_ms") - _med(q, "lat_p99_ms")
                    w(f"| {n:,} | {m} | {p} | {d50:+,.1f} | {d99:+,.1f} | "
                      f"{run.ratio(_med(e, 'lat_p99_ms'), _med(q, 'lat_p99_ms'))} |")
        w("")
    w(targets(rows))
    w(stages_table(rows, ns, modes, meta))
    w(calls_table(rows, ns, modes))
    return "\n".join(out)


def targets(rows):
    """The issue's targets, each met / not met / not measured."""
    def pick(n, mode):
        return [r for r in rows if r["clients"] == n and r["mode"] == mode]

    out = ["The issue's targets (medians over runs):\n", "| target | measured | met |", "|---|---|---|"]
    push1, node1 = _ok(pick(1, "explorerd-push")), _ok(pick(1, "node-direct"))
    if push1 and node1:
        d = _med(push1, "lat_p50_ms") - _med(node1, "lat_p50_ms")
        out.append(f"| N=1: explorerd-push median within {TARGET_N1_MEDIAN_MS:g} ms of node-direct | "
                   f"{_med(push1, 'lat_p50_ms'):.1f} vs {_med(node1, 'lat_p50_ms'):.1f} ms (Δ {d:+.1f} ms) | "
                   f"{'met' if d <= TARGET_N1_MEDIAN_MS else '**not met**'} |")
    else:
        out.append(f"| N=1: explorerd-push median within {TARGET_N1_MEDIAN_MS:g} ms of node-direct | not measured | – |")
    push, node = _ok(pick(1000, "explorerd-push")), _ok(pick(1000, "node-direct"))
    if push and node:
        a, b = _med(push, "lat_p99_ms"), _med(node, "lat_p99_ms")
        out.append(f"| N=1,000: explorerd-push p99 below node-direct p99 | {a:,.1f} vs {b:,.1f} ms | "
                   f"{'met' if a < b else '**not met**'} |")
    else:
        out.append("| N=1,000: explorerd-push p99 below node-direct p99 | not measured | – |")
    rs = pick(10000, "explorerd-push")
    push = _ok(rs)
    if push:
        p99 = _med(push, "lat_p99_ms")
        lost = sum(r.get("lost", 0) + r.get("dupes", 0) + r.get("connect_failed", 0) for r in rs)
        failed_runs = len(rs) - len(push)
        met = p99 < TARGET_N10000_P99_MS and lost == 0 and failed_runs == 0
        out.append(f"| N=10,000: explorerd-push p99 < {TARGET_N10000_P99_MS:g} ms with no loss | p99 {p99:,.1f} ms; "
                   f"lost + duplicated + clients failed to connect: {lost}; failed runs: {failed_runs} | "
                   f"{'met' if met else '**not met**'} |")
    else:
        out.append(f"| N=10,000: explorerd-push p99 < {TARGET_N10000_P99_MS:g} ms with no loss | "
                   f"{'every run failed' if rs else 'not measured'} | {'**not met**' if rs else '–'} |")
    return "\n".join(out) + "\n"


def stages_table(rows, ns, modes, meta):
    ours = [m for m in modes if m.startswith("explorerd")]
    if not ours:
        return ""
    have = [r for r in rows if r.get("stages")]
    if not have:
        return (f"Latency breakdown: this explorerd (`{meta.get('git', '?')}`) does not export "
                f"`{STAGE_METRIC}`, so there is none.\n")
    out = [f"Where explorerd's part of the latency goes (`{STAGE_METRIC}` from half a slot after the last warm-up "
           "block to the last delivery, i.e. the measured blocks: *fetch* = "
           "trigger (the node's newHeads notification, or the poll's start) → block and receipts decoded; *check* = "
           "validation and frame building; *publish* = every client's write handed to its transport; *announce* "
           "(push only) = the newHeads notification → the block's header fetched, checked and handed to every "
           "`/v1/rpc` newHeads subscriber's transport, ahead of the block: the path the clients here measure in "
           "explorerd-push, where the block's own fetch is not; – where the run's explorerd did not export it). Mean = "
           "sum/count; p50/p99 interpolated within the histogram's buckets (as Prometheus's histogram_quantile). "
           "Medians over runs, ms:\n",
           "| N | mode | blocks | " + " | ".join(f"{s} mean | {s} p50 | {s} p99" for s in STAGES) + " |",
           "|---|---|---|" + "---|---|---|" * len(STAGES)]
    for n in ns:
        for m in ours:
            rs = [r for r in have if r["clients"] == n and r["mode"] == m]
            if not rs:
                continue
            cells = []
            for s in STAGES:
                for key in ("mean_ms", "p50_ms", "p99_ms"):
                    figures = [r["stages"].get(s, {}) for r in rs]
                    beyond = any(f.get(key.replace("_ms", "_beyond_buckets")) for f in figures)
                    cells.append(("> " if beyond else "") + _f(run.median([f.get(key) for f in figures]), 2))
            count = run.median([r["stages"].get("fetch", {}).get("count") for r in rs])
            out.append(f"| {n:,} | {m} | {_f(count, 0)} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def calls_table(rows, ns, modes):
    have = [r for r in rows if r.get("rpc_calls_per_block")]
    if not have:
        return ""
    methods = sorted({k for r in have for k in r["rpc_calls_per_block"]})
    triggers = sorted({k for r in have for k in (r.get("polls_per_block") or {})})
    out = [f"explorerd's JSON-RPC requests to anvil per block, by method (`{CALLS_METRIC}`), and the polls it "
           f"started per block, by what started them (`{POLLS_METRIC}`: *push* = a newHeads notification, *tick* = "
           "the poll interval, *due* = adaptive polling), from half a slot after the last warm-up block to the last "
           "delivery ÷ measured blocks; median over runs:\n",
           "| N | mode | " + " | ".join(f"`{m}`" for m in methods) + "".join(f" | polls: {t}" for t in triggers) + " |",
           "|---|---|" + "---|" * (len(methods) + len(triggers))]
    for n in ns:
        for m in modes:
            rs = [r for r in have if r["clients"] == n and r["mode"] == m]
            if rs:
                cells = [_f(run.median([r["rpc_calls_per_block"].get(k, 0) for r in rs]), 2) for k in methods]
                cells += [_f(run.median([(r.get("polls_per_block") or {}).get(k, 0) for r in rs]), 2) for k in triggers]
                out.append(f"| {n:,} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit("bench/e2e.py is run by bench/run.py: python3 bench/run.py --scenarios e2e [--quick]")
