#!/usr/bin/env python3
"""
WAMP fan-out: explorerd's embedded broker against a Crossbar.io router, the same WAMP clients.

  python3 bench/wampfanout.py                                  # N = 1,000 (3 runs) and 10,000 (2 runs)
  python3 bench/wampfanout.py --clients 1000 --runs 1 --modes embedded
  python3 bench/wampfanout.py --wire-check                     # AutobahnJS against both, once
  python3 bench/wampfanout.py --report-from bench/results/<date>-wamp   # the report again, from raw JSON

Two modes, the same blocks at the same rate to the same clients:

  embedded  explorerd (bench/hubserver.py: the real Daemon, fed blocks at a fixed rate with
            hub.publish(Entry.fromNode(...))), clients on its own broker at /v1/wamp
  crossbar  the same explorerd publishing everything to a Crossbar.io router (its --wamp-router
            publisher, ticket-authenticated, as in tests/crossbar/), clients on the router

The clients are bench/loadgen.mjs --protocol wamp: WAMP v2 over WebSocket, JSON (wamp.2.json),
HELLO with AutobahnJS's roles, SUBSCRIBE explorer.block (and explorer.tx with --channels
newBlocks,newTxs), EVENTs stamped on CLOCK_MONOTONIC when read.  Latency is from the hand-off to
explorerd's hub (its "block" line) to the client's read, through the router in crossbar mode.

CPU is user + system from /proc/<pid>/stat over the measured window (from just before the first
block to the last delivery): explorerd's process, and Crossbar's whole process tree (its node
controller and its router worker), each divided by the events delivered.  In crossbar mode
explorerd also publishes every block's transactions (explorer.tx) to the router whether or not
anyone subscribed: that is what the tail does.

Crossbar runs from the repo's tests/crossbar/.crossbar/config.json (a scratch copy) on a free
port, installed by tests/crossbar/install.sh into $CROSSBAR_VENV (default
~/.cache/explorerd/crossbar).  Raw JSON goes to bench/results/<date>-wamp/ (one file per run
and results.json), the report to bench/RESULTS-wamp.md, generated from the raw JSON only.
"""

import argparse
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402
from run import BenchError, Proc  # noqa: E402

REPO = run.REPO
CROSSBAR_CONFIG = os.path.join(REPO, "tests", "crossbar", ".crossbar", "config.json")
CROSSBAR_VENV = os.environ.get("CROSSBAR_VENV") or os.path.expanduser("~/.cache/explorerd/crossbar")
CLIENT_JS = os.path.join(REPO, "tests", "wamp", "client.js")
READY = re.compile(r"local node configuration ran successfully|NODE_BOOT_COMPLETE")
MODES = ("embedded", "crossbar")
DEFAULT_CLIENTS = {1000: 3, 10000: 2}
SPEC = dict(channels="newBlocks", protocol="wamp", data=run.SMALL, blocks=10, rate=1.0, per_loadgen=5000,
            hosts=4, host_base=2, connect_seconds=240)


# ---------------------------------------------------------------------------------------------
# Processes and /proc.

def children(pid):
    """Every descendant of C{pid} (by /proc/<pid>/stat's parent field)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        found += kids
        todo += kids
    return found


def tree_cpu(pids):
    """{pid: user+sys seconds} of the processes still there."""
    return {pid: cpu for pid in pids if (cpu := run.proc_cpu(pid)) is not None}


def tree_rss_kb(pids):
    return sum(run.proc_rss_kb(pid) or 0 for pid in pids)


class TreeSampler(threading.Thread):
    """The peak of the summed RSS of some processes, every 0.1 s."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = list(pids)
        self.peak = 0
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            self.peak = max(self.peak, tree_rss_kb(self.pids))
            self.stopped.wait(0.1)

    def stop(self):
        self.stopped.set()
        self.join(2)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Crossbar:
    """One `crossbar start` from a scratch copy of the repo's config, and its process tree."""

    def __init__(self, log_dir, ticket):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        cbdir = os.path.abspath(os.path.join(log_dir, "crossbar", ".crossbar"))
        os.makedirs(cbdir, exist_ok=True)
        shutil.copy(CROSSBAR_CONFIG, os.path.join(cbdir, "config.json"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPLORERD_", "WEBSOCKET_"))}
        env.update(EXPLORERD_ROUTER_PORT=str(self.port), EXPLORERD_WAMP_ROUTER_TICKET=ticket, PYTHONUNBUFFERED="1")
        exe = os.path.join(CROSSBAR_VENV, "bin", "crossbar")
        self.proc = Proc("crossbar", [exe, "start", "--cbdir", cbdir, "--loglevel", "info"], log_dir,
                         json_lines=False, cwd=os.path.dirname(cbdir), env=env)
        self.pids = [self.proc.pid]

    def wait_ready(self, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(READY.search(line) for line in self.proc.lines):
                self.pids = [self.proc.pid] + children(self.proc.pid)
                return
            if not self.proc.alive():
                break
            time.sleep(0.2)
        raise BenchError(f"crossbar not ready within {timeout}s; see {self.proc.stdout_path}")

    def stop(self):
        self.proc.stop(grace=0)
        # The router worker is its child (same process group, killed with it): make sure.
        for pid in self.pids[1:]:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"crossbar" in f.read():
                        os.kill(pid, 9)
            except OSError:
                pass


def crossbar_versions():
    py = os.path.join(CROSSBAR_VENV, "bin", "python")
    code = ("import json, sys, crossbar, autobahn, twisted; print(json.dumps({'crossbar': crossbar.__version__, "
            "'autobahn': autobahn.__version__, 'twisted': twisted.__version__, 'python': sys.version.split()[0]}))")
    try:
        return json.loads(subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=60).stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        return {"error": repr(e)}


def http_json(port, path, timeout=5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read())


def metric_samples(port, prefix):
    """{'name{labels}': value} of /metrics lines starting with C{prefix}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def start_explorerd(files, spec, n, log_dir, router=None, ticket=""):
    argv = run.server_argv("explorerd", files, spec["rate"], spec["blocks"], log_dir)
    argv += ["--max-connections", str(n + 1000)]
    if router is not None:
        argv += ["--set", f"wamp_router={router.url}", "--set", f"wamp_router_ticket={ticket}"]
    srv = Proc("server", argv, log_dir)
    port = srv.expect("listening", 60)["port"]
    if router is not None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if (http_json(port, "/healthz").get("router") or {}).get("connected"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("explorerd did not join the router within 30 s")
            time.sleep(0.2)
    return srv, port


# ---------------------------------------------------------------------------------------------
# One run of one cell.

def run_cell(spec, mode, n, run_index, files, out_dir, verify=False):
    tx = "tx-" if "newTxs" in spec["channels"] else ""
    cell = f"wamp-{tx}{mode}-{n}-r{run_index}"
    log_dir = os.path.join(out_dir, "logs", cell)
    os.makedirs(log_dir, exist_ok=True)
    result = {"scenario": "wamp", "mode": mode, "server": mode, "clients": n, "run": run_index,
              "blocks": spec["blocks"], "rate": spec["rate"], "channels": spec["channels"], "errors": []}
    procs, router, samplers = [], None, []
    ticket = secrets.token_hex(16)
    try:
        if mode == "crossbar":
            router = Crossbar(log_dir, ticket)
            router.wait_ready()
            result["crossbar_pids"] = len(router.pids)
        srv, port = start_explorerd(files, spec, n, log_dir, router, ticket)
        procs.append(srv)
        time.sleep(0.5)
        srv.send("stats")
        base = run.own_rss(srv.expect("stats", 30), srv.pid)
        cb_rss_base = tree_rss_kb(router.pids) if router else None
        url = router.url if router else f"ws://127.0.0.1:{port}/v1/wamp"
        result["url_path"] = url.rsplit("/", 1)[1]
        nblocks = spec["blocks"]
        loadgens = run.start_loadgens(spec, n, url, log_dir, verify, 900 + n / 20 + nblocks / spec["rate"])
        procs += loadgens
        ready = run.wait_ready(loadgens, n)
        subscribed = sum(r["subscribed"] for r in ready)
        kinds = {}
        for r in ready:
            for k, v in r.get("errorKinds", {}).items():
                kinds[k] = kinds.get(k, 0) + v
        result.update(subscribed=subscribed, connect_failed=n - subscribed, connect_errors=kinds,
                      connect_s=round(max(r["connect_s"] for r in ready), 2))
        if subscribed < n:
            result["errors"].append(f"only {subscribed}/{n} clients subscribed (connect errors: {kinds})")
        if subscribed == 0:
            raise BenchError("no client subscribed")
        if router:
            router.pids = [router.proc.pid] + children(router.proc.pid)
        time.sleep(2.0)
        srv.send("stats")
        idle = run.own_rss(srv.expect("stats", 30), srv.pid)
        cb_rss_idle = tree_rss_kb(router.pids) if router else None
        sampler = run.Sampler(srv.pid)
        sampler.start()
        samplers.append(sampler)
        cb_sampler = None
        if router:
            cb_sampler = TreeSampler(router.pids)
            cb_sampler.start()
            samplers.append(cb_sampler)
        all_pids = lambda: [p.pid for p in procs] + (router.pids if router else [])
        ours = lambda: sum(tree_cpu(all_pids()).values()) + time.process_time()
        ours0, busy0 = ours(), run.system_busy()
        cb0 = tree_cpu(router.pids) if router else None
        metrics0 = metric_samples(port, "explorer_wamp_")
        srv.send("go")
        blocks = [srv.expect("block", 30 + n / 100 + (nblocks / spec["rate"] if i == 0 else 0)) for i in range(nblocks)]
        srv.expect("sent_all", 30 + n / 100)
        expected_total = sum(run.block_expectation(spec, b, subscribed)[0] for b in blocks)
        got, drain_s, how = run.drain(loadgens, expected_total, max_wait=120 + expected_total / 1e4, stall=10.0)
        srv.send("stats")
        end = run.own_rss(srv.expect("stats", 60), srv.pid)
        cb1 = tree_cpu(router.pids) if router else None
        ours1, busy1 = ours(), run.system_busy()
        metrics1 = metric_samples(port, "explorer_wamp_")
        for s in samplers:
            s.stop()
        result["drain_s"] = round(drain_s, 2)
        if how != "complete":
            result["errors"].append(f"delivery {how} {drain_s:.1f}s after the last block: {got}/{expected_total} events")
        dones = []
        for lg in loadgens:
            lg.send("report")
        for lg in loadgens:
            dones.append(run.read_done(lg.expect("done", 120)))
        srv.send("quit")
        try:
            final = srv.expect("stats", 20)
        except BenchError:
            final = end
        result.update(run.analyze(spec, blocks, dones, base, idle, end, final, sampler.peak, n))
        delivered = result["delivered"]
        result["explorerd_cpu_s"] = result["server_cpu_s"]
        result["explorerd_cpu_us_per_event"] = result["cpu_us_per_msg"]
        total = result["server_cpu_s"]
        if router:
            per_pid = {str(pid): round(cb1[pid] - cb0.get(pid, 0.0), 3) for pid in cb1}
            cb_cpu = sum(per_pid.values())
            total += cb_cpu
            result.update(crossbar_cpu_s=round(cb_cpu, 3), crossbar_cpu_by_pid=per_pid,
                          crossbar_cpu_us_per_event=round(cb_cpu / delivered * 1e6, 2) if delivered else None,
                          crossbar_cpu_ms_per_block=round(cb_cpu / nblocks * 1000, 1),
                          crossbar_rss_base_kb=cb_rss_base, crossbar_rss_idle_kb=cb_rss_idle,
                          crossbar_rss_peak_kb=max(cb_sampler.peak, cb_rss_idle or 0))
        result["total_cpu_us_per_event"] = round(total / delivered * 1e6, 2) if delivered else None
        result["wamp_metrics"] = {k: round(metrics1.get(k, 0) - metrics0.get(k, 0), 1) for k in metrics1
                                  if "_created{" not in k and metrics1.get(k, 0) != metrics0.get(k, 0)}
        result["foreign_cpu_cores"] = run.foreign_cores(busy0, busy1, ours0, ours1)
        result["loadavg"] = open("/proc/loadavg").read().split()[:3]
    except BenchError as e:
        result["errors"].append(str(e))
    except Exception as e:  # a bug must not cost the other cells: kept as a failed run
        with open(os.path.join(log_dir, "traceback.txt"), "w") as f:
            traceback.print_exc(file=f)
        result["errors"].append(f"internal error {e!r} (see {os.path.relpath(log_dir, REPO)}/traceback.txt)")
    finally:
        for s in samplers:
            s.stop()
        for p in reversed(procs):
            p.stop(grace=1.0)
        if router:
            router.stop()
    with open(os.path.join(out_dir, f"{cell}.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


# ---------------------------------------------------------------------------------------------
# The wire check: a real AutobahnJS client on both, and a --verify loadgen client next to it.

class JsClient:
    """tests/wamp/client.js (AutobahnJS, JSON serializer) driven over stdin/stdout."""

    def __init__(self, name, url, log_dir):
        node_modules = os.path.join(REPO, "tests", "node", "node_modules", "autobahn")
        if not os.path.isdir(node_modules):
            raise BenchError("AutobahnJS missing: npm ci --prefix tests/node")
        self.proc = Proc(name, ["node", CLIENT_JS, url, "explorer", "json"], log_dir)

    def wait(self, kind, timeout=30, **match):
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            lines = self.proc.lines
            for msg in lines[seen:]:
                if msg.get("type") == kind and all(msg.get(k) == v for k, v in match.items()):
                    return msg
            seen = len(lines)
            time.sleep(0.05)
        raise BenchError(f"{self.proc.name}: no {kind} {match} within {timeout}s; see {self.proc.stderr_path}")

    def events(self):
        return [m for m in self.proc.lines if m.get("type") == "event"]


def wire_check(files, spec, out_dir):
    log_dir = os.path.join(out_dir, "logs", "wire-check")
    os.makedirs(log_dir, exist_ok=True)
    ticket = secrets.token_hex(16)
    out = {"errors": []}
    procs, router = [], None
    spec = dict(spec, channels="newBlocks,newTxs", blocks=min(spec["blocks"], 3), rate=1.0)
    try:
        router = Crossbar(log_dir, ticket)
        router.wait_ready()
        srv, port = start_explorerd(files, spec, 10, log_dir, router, ticket)
        procs.append(srv)
        urls = {"embedded": f"ws://127.0.0.1:{port}/v1/wamp", "crossbar": router.url}
        js = {}
        for mode, url in urls.items():
            client = js[mode] = JsClient(f"autobahnjs-{mode}", url, log_dir)
            procs.append(client.proc)
            joined = client.wait("joined")
            out[f"{mode}_protocol"] = joined["protocol"]
            for k, topic in enumerate(("explorer.block", "explorer.tx")):
                client.proc.send(json.dumps({"id": k + 1, "op": "subscribe", "topic": topic}))
                if not client.wait("reply", id=k + 1)["ok"]:
                    raise BenchError(f"AutobahnJS could not subscribe to {topic} on {mode}")
        loadgens = {}
        for i, (mode, url) in enumerate(urls.items()):
            lg_dir = os.path.join(log_dir, mode)
            os.makedirs(lg_dir, exist_ok=True)
            lg = loadgens[mode] = run.start_loadgens(dict(spec, host_base=2 + 4 * i), 1, url, lg_dir, True, 120)[0]
            procs.append(lg)
            lg.expect("ready", 60)
        srv.send("go")
        blocks = [srv.expect("block", 30) for _ in range(spec["blocks"])]
        srv.expect("sent_all", 30)
        want = sum(run.expected_messages(spec, b["txs"]) for b in blocks)
        for mode, client in js.items():
            deadline = time.monotonic() + 30
            while len(client.events()) < want and time.monotonic() < deadline:
                time.sleep(0.1)
        for mode, lg in loadgens.items():
            lg.send("report")
            done = run.read_done(lg.expect("done", 60))
            out[f"loadgen_{mode}"] = {"unique": done["unique"], "verify_errors": done["verifyErrors"],
                                      "dupes": done["dupes"], "order_errors": done["orderErrors"]}
        seen = {mode: [(e["topic"], e["args"]) for e in client.events()] for mode, client in js.items()}
        out["expected_events"] = want
        out["autobahnjs_events"] = {mode: len(v) for mode, v in seen.items()}
        out["same_events"] = seen["embedded"] == seen["crossbar"]
        out["ok"] = (out["same_events"] and len(seen["embedded"]) == want
                     and all(out[f"loadgen_{m}"]["unique"] == want and out[f"loadgen_{m}"]["verify_errors"] == 0
                             for m in urls))
    except BenchError as e:
        out["errors"].append(str(e))
        out["ok"] = False
    finally:
        for p in reversed(procs):
            p.stop(grace=1.0)
        if router:
            router.stop()
    with open(os.path.join(out_dir, "wire-check.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


# ---------------------------------------------------------------------------------------------
# The report, from raw JSON only.

def _med(rows, key):
    values = [r.get(key) for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def _f(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


def _range(rows, key, digits=1):
    values = [r.get(key) for r in rows if r.get(key) is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return _f(values[0], digits)
    return f"{_f(statistics.median(values), digits)} ({_f(min(values), digits)}–{_f(max(values), digits)})"


def _mib(kb):
    return None if kb is None else kb / 1024


TOPICS_LABEL = {"newBlocks": "block", "newBlocks,newTxs": "block + tx"}


def _cell_order(r):
    return ("newTxs" in r["channels"], r["clients"], MODES.index(r["mode"]), r["run"])


def report(raw_dir, out_path):
    with open(os.path.join(raw_dir, "results.json")) as f:
        data = json.load(f)
    meta, results = data["meta"], data["results"]
    wire = None
    if os.path.exists(os.path.join(raw_dir, "wire-check.json")):
        with open(os.path.join(raw_dir, "wire-check.json")) as f:
            wire = json.load(f)
    m = meta["machine"]
    cb = meta.get("crossbar", {})
    topics = meta["topics"]
    lines = [
        "# WAMP fan-out: explorerd's embedded broker against Crossbar.io",
        "",
        f"Generated by `python3 bench/wampfanout.py --report-from {os.path.relpath(raw_dir, REPO)}` from the raw "
        f"results in that directory. Command: `{meta['command']}`; {meta['started']} – {meta['finished']} UTC.",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m['ram_gib']} GiB, Linux {m['kernel']}; load average at "
        f"start {' '.join(m['loadavg_start'])}. explorerd at `{m['git']}`: Python {m['python']}, Twisted "
        f"{m['twisted']}, Autobahn {m['autobahn']}. Crossbar.io {cb.get('crossbar', '?')} (its own virtualenv: "
        f"Python {cb.get('python', '?')}, Twisted {cb.get('twisted', '?')}, Autobahn {cb.get('autobahn', '?')}), "
        f"from `tests/crossbar/.crossbar/config.json`. Clients: Node {m['node']}, ws {m['ws']}.",
        "",
        "Both modes: the same explorerd (`bench/hubserver.py`, the real Daemon) handed the same "
        f"{meta['spec']['blocks']} real mainnet blocks (`{', '.join(meta['spec']['data']['recordings'])}`, "
        f"{meta.get('txs_per_block')} transactions) at {meta['spec']['rate']:g} block/s; N WAMP clients "
        "(`bench/loadgen.mjs --protocol wamp`: WebSocket, `wamp.2.json`, AutobahnJS's HELLO, SUBSCRIBE "
        f"`{topics['newBlocks']}`, and `{topics['newTxs']}` where the topics say *block + tx*) on explorerd's "
        "`/v1/wamp` (**embedded**) or on a Crossbar.io router that explorerd publishes to with `--wamp-router` "
        "(**crossbar**). Latency: from the hand-off to explorerd's hub to the client's read (CLOCK_MONOTONIC both), "
        "to a block's `explorer.block` event (p50, p99, max) and to its last event (*whole block p99*). "
        "CPU: user + system from just before the first block to the last delivery, divided by the events "
        "delivered: explorerd's from its own getrusage, Crossbar's from `/proc/<pid>/stat` of its node "
        "controller and its router worker together. In crossbar mode explorerd also publishes each block's "
        "transactions (`explorer.tx`, one publication each) to the router, subscribed or not (what the tail does): "
        "that is in its figure. *loadgen CPU*: the busiest load generator's share of a core (near 100 %: the "
        "clients set the figure); *foreign CPU*: other processes' CPU meanwhile, in cores.",
        "",
    ]
    if wire is not None:
        lines += [
            "Wire check (`--wire-check`, once): a real AutobahnJS client (`tests/wamp/client.js`, JSON) on each, "
            f"subscribed to `explorer.block` and `explorer.tx`, {wire.get('expected_events')} events expected: "
            f"embedded {wire.get('autobahnjs_events', {}).get('embedded')}, crossbar "
            f"{wire.get('autobahnjs_events', {}).get('crossbar')}, the same events in the same order: "
            f"**{'yes' if wire.get('same_events') else 'no'}**; a `loadgen --protocol wamp --verify` client next to "
            "each (every event JSON-parsed and checked): "
            + ", ".join(f"{mode} {wire.get(f'loadgen_{mode}', {}).get('unique')} events, "
                        f"{wire.get(f'loadgen_{mode}', {}).get('verify_errors')} disagreements"
                        for mode in MODES)
            + (f". Errors: {'; '.join(wire['errors'])}" if wire.get("errors") else "") + ".",
            "",
        ]
    lines += [
        "Medians over the runs that completed (range in brackets); failed runs are counted, listed below, "
        "and not in the medians.",
        "",
        "| topics | N | mode | runs ok | clients failed | p50 ms | p99 ms | max ms | whole block p99 ms | "
        "lost / dup / order | explorerd µs/event | Crossbar µs/event | total µs/event | explorerd RSS peak MiB | "
        "Crossbar RSS peak MiB | loadgen CPU | foreign CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_cell = {}
    for r in sorted(results, key=_cell_order):
        by_cell.setdefault((r["channels"], r["clients"]), {}).setdefault(r["mode"], []).append(r)
    for (channels, n), modes in by_cell.items():
        for mode, rows in modes.items():
            ok = [r for r in rows if not r["errors"]]
            failed = sum(r.get("connect_failed", 0) or 0 for r in rows)
            lost = sum(r.get("lost", 0) or 0 for r in rows)
            dup = sum(r.get("dupes", 0) or 0 for r in rows)
            order = sum(r.get("order_errors", 0) or 0 for r in rows)
            lg = [max(r.get("loadgen_cpu_share") or [0]) for r in rows if r.get("loadgen_cpu_share")]
            foreign = [r.get("foreign_cpu_cores") for r in rows if r.get("foreign_cpu_cores") is not None]
            rss = [dict(r, x=_mib(r.get("rss_peak_kb"))) for r in ok]
            cbrss = [dict(r, x=_mib(r.get("crossbar_rss_peak_kb"))) for r in ok]
            crossbar = mode == "crossbar"
            lines.append(
                f"| {TOPICS_LABEL.get(channels, channels)} | {n:,} | {mode} | {len(ok)}/{len(rows)} | {failed} | "
                f"{_range(ok, 'lat_p50_ms')} | {_range(ok, 'lat_p99_ms')} | {_range(ok, 'lat_max_ms')} | "
                f"{_range(ok, 'whole_p99_ms')} | {lost} / {dup} / {order} | "
                f"{_range(ok, 'explorerd_cpu_us_per_event')} | "
                f"{_range(ok, 'crossbar_cpu_us_per_event') if crossbar else '–'} | "
                f"{_range(ok, 'total_cpu_us_per_event')} | {_range(rss, 'x', 0)} | "
                f"{_range(cbrss, 'x', 0) if crossbar else '–'} | "
                f"{f'{max(lg):.0%}' if lg else '–'} | {_f(max(foreign), 2) if foreign else '–'} |")
    lines += ["", "Embedded ÷ crossbar (medians of the completed runs; below 1: the embedded broker costs less "
              "or is faster):", "", "| topics | N | total CPU per event | p50 | p99 | whole block p99 |",
              "|---|---|---|---|---|---|"]
    for (channels, n), modes in by_cell.items():
        e = [r for r in modes.get("embedded", []) if not r["errors"]]
        c = [r for r in modes.get("crossbar", []) if not r["errors"]]

        def ratio(key):
            a, b = _med(e, key), _med(c, key)
            return "–" if a is None or not b else f"{a / b:.2f}" if a / b >= 0.1 else f"{a / b:.2g}"

        lines.append(f"| {TOPICS_LABEL.get(channels, channels)} | {n:,} | {ratio('total_cpu_us_per_event')} | "
                     f"{ratio('lat_p50_ms')} | {ratio('lat_p99_ms')} | {ratio('whole_p99_ms')} |")
    encodings = []
    for (channels, n), modes in by_cell.items():
        for r in modes.get("embedded", []):
            m = r.get("wamp_metrics") or {}
            enc = sum(v for k, v in m.items() if k.startswith("explorer_wamp_encodings_total"))
            events = sum(v for k, v in m.items() if k.startswith("explorer_wamp_events_total"))
            if enc and events and r.get("subscribed"):
                encodings.append((TOPICS_LABEL.get(channels, channels), n, enc, events / r["subscribed"]))
    if encodings:
        cells = sorted({(t, n, e, p) for t, n, e, p in encodings})
        lines += ["", "The embedded broker's encodings (`explorer_wamp_encodings_total` over the window) against its "
                  "publications (`explorer_wamp_events_total` / subscribed clients), per run: "
                  + "; ".join(f"{t} at {n:,}: {e:,.0f} for {p:,.0f}" for t, n, e, p in cells)
                  + " (one encoding per publication and wire format, whatever N)."]
    lines += ["", "## Every run", "",
              "| topics | N | mode | run | subscribed | delivered / expected | p50 ms | p99 ms | max ms | "
              "explorerd CPU s | Crossbar CPU s | explorerd ms/block | Crossbar ms/block | drain s | errors |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=_cell_order):
        lines.append(
            f"| {TOPICS_LABEL.get(r['channels'], r['channels'])} | {r['clients']:,} | {r['mode']} | {r['run']} | "
            f"{r.get('subscribed', '–')} | {r.get('delivered', '–')} / {r.get('expected', '–')} | "
            f"{_f(r.get('lat_p50_ms'))} | {_f(r.get('lat_p99_ms'))} | {_f(r.get('lat_max_ms'))} | "
            f"{_f(r.get('explorerd_cpu_s'), 2)} | {_f(r.get('crossbar_cpu_s'), 2)} | "
            f"{_f(r.get('cpu_ms_per_block'))} | {_f(r.get('crossbar_cpu_ms_per_block'))} | {_f(r.get('drain_s'))} | "
            f"{'; '.join(r['errors']) or '–'} |")
    lines.append("")
    with open(out_path, "w") as f:
        f.write("\n".join(lines))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------

def write_results(out_dir, meta, results):
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)


def parse_clients(text):
    """'1000,10000' or '1000:3,10000:2' -> {N: runs or None}."""
    out = {}
    for part in text.split(","):
        n, _, runs = part.partition(":")
        out[int(n)] = int(runs) if runs else None
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="", help="N[:runs],...  (default 1000:3,10000:2)")
    p.add_argument("--runs", type=int, default=0, help="runs per N where --clients gives none")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--blocks", type=int, default=SPEC["blocks"])
    p.add_argument("--rate", type=float, default=SPEC["rate"], help="blocks per second")
    p.add_argument("--tx-clients", default="", help="N[:runs],... also with explorer.tx (newBlocks,newTxs), e.g. 1000:1")
    p.add_argument("--verify", action="store_true", help="clients JSON-parse and check every event too")
    p.add_argument("--wire-check", action="store_true", help="also check AutobahnJS against both, first")
    p.add_argument("--out-dir", default="", help="raw results (default bench/results/<date>-wamp)")
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS-wamp.md"))
    p.add_argument("--report-from", default="", help="only regenerate the report from this directory's raw JSON")
    args = p.parse_args()
    if args.report_from:
        print(report(os.path.abspath(args.report_from), args.out))
        return
    run.ensure_node_deps()
    run.ensure_python_deps()
    run.raise_nofile()
    clients = parse_clients(args.clients) if args.clients else dict(DEFAULT_CLIENTS)
    clients = {n: runs or args.runs or DEFAULT_CLIENTS.get(n, 1) for n, runs in clients.items()}
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r} (embedded, crossbar)")
    spec = dict(SPEC, blocks=args.blocks, rate=args.rate)
    tx_spec = dict(spec, channels="newBlocks,newTxs")
    tx_clients = {n: runs or args.runs or 1 for n, runs in parse_clients(args.tx_clients).items()} if args.tx_clients else {}
    out_dir = os.path.abspath(args.out_dir or os.path.join(HERE, "results", time.strftime("%Y%m%d-%H%M%S-wamp",
                                                                                          time.gmtime())))
    os.makedirs(out_dir, exist_ok=True)
    files = run.make_files(spec, out_dir, "blocks")
    topics = {"newBlocks": "explorer.block", "newTxs": "explorer.tx"}
    meta = {"command": "python3 bench/wampfanout.py " + shlex.join(sys.argv[1:]), "machine": run.machine(),
            "crossbar": crossbar_versions(), "spec": spec, "clients": clients, "tx_clients": tx_clients, "modes": modes,
            "topics": {ch: topics[ch] for ch in tx_spec["channels"].split(",")}, "txs_per_block": files["txs_per_block"],
            "block_frame_bytes": files["block_frame_bytes"],
            "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "finished": None}
    results = []
    if args.wire_check:
        w = wire_check(files, spec, out_dir)
        print(f"wire check: {'ok' if w.get('ok') else 'FAILED'} {json.dumps(w)}", flush=True)
    # Interleaved: every run index runs every N and mode in turn; the explorer.tx cells after the rest.
    plan = [(spec, clients), (tx_spec, tx_clients)]
    for cell_spec, cell_clients in plan:
        for run_index in range(max(cell_clients.values(), default=0)):
            for n, runs in sorted(cell_clients.items()):
                if run_index >= runs:
                    continue
                for mode in modes:
                    t0 = time.monotonic()
                    r = run_cell(cell_spec, mode, n, run_index, files, out_dir, args.verify)
                    results.append(r)
                    meta["finished"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
                    write_results(out_dir, meta, results)
                    print(f"{r['channels']} {mode} N={n} run {run_index}: {time.monotonic() - t0:.0f}s "
                          f"p50 {r.get('lat_p50_ms')} ms p99 {r.get('lat_p99_ms')} ms, "
                          f"explorerd {r.get('explorerd_cpu_us_per_event')} µs/event, "
                          f"crossbar {r.get('crossbar_cpu_us_per_event')} µs/event, lost {r.get('lost')}, "
                          f"errors {r['errors']}", flush=True)
    for name in ("blocks.raw.json", "blocks.wire.json"):
        try:
            os.unlink(os.path.join(out_dir, name))
        except OSError:
            pass
    print(report(out_dir, args.out))


if __name__ == "__main__":
    main()
