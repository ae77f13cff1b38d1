#!/usr/bin/env python3
"""
explorerd's benchmark suite, in one command.

  python3 bench/run.py --quick        # smoke run: small N, 1 run per cell (~7 min)
  python3 bench/run.py                # the full matrix, 3 runs per key cell (see bench/README.md)

Runs explorerd (bench/hubserver.py: the real Daemon fed at a fixed block rate) and the peer
servers (bench/peers/: a minimal Node "ws" server, as the idiom and as ws-prepared, and a minimal
Autobahn prepared-message server) against the same load from bench/loadgen.mjs; measures, without clients, the block
history's memory (bench/history_memory.py) and what fetching receipts from anvil costs
(bench/receipts_cost.py); and writes bench/RESULTS.md (or --out) plus raw JSON under
bench/results/<date>/.  The Python running this script runs
explorerd and the Autobahn peer: it must have explorerd's dependencies (Twisted, Autobahn, ...).
Node's "ws" is installed with `npm ci --prefix bench` when missing.
"""

import argparse
import atexit
import datetime
import json
import math
import os
import platform
import queue
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, REPO)

import blocks as blockdata  # noqa: E402

if __name__ == "__main__":
    # bench/e2e.py imports this module as `run`: let it find this one, not a second copy.
    sys.modules.setdefault("run", sys.modules[__name__])

# ws-prepared (frames each message once, one corked write per client and block) is the strongest
# fair peer: in every default run, so that every table has it.
SERVERS = ("explorerd", "ws", "ws-prepared", "autobahn")
PEERS = ("ws", "ws-prepared", "autobahn")
# explorerd-split (broadcastBlock then broadcastTransactions) is gone with that API; the name stays
# so that committed raw results that have it still render.
ALL_SERVERS = ("explorerd", "explorerd-split", "ws", "ws-prepared", "autobahn")
ANVIL = os.path.join(REPO, "tests", "node", "node_modules", "@foundry-rs", "anvil-linux-amd64", "bin", "anvil")
MAINNET_200 = {"recordings": ["mainnet_11880804-11880810"], "min_txs": 100}  # 6 blocks, 167-209 txs, 219-349 logs
SMALL = {"recordings": ["mainnet_15478281-15478287"], "min_txs": 0}

# (f) and its baselines: mainnet blocks of ~190 transactions, a newTx frame each; N and 0.9 N share a
# rate and a length (10,000 and 9,000: one block every 2 s, 50 blocks).
SILENT_BASE = dict(channels="newBlocks,newTxs", silent=0, data=MAINNET_200, blocks=75, per_loadgen=2500,
                   rate_for={9000: 0.5, 10000: 0.5}, blocks_for={9000: 50, 10000: 50},
                   phase_seconds={"0-15 s": (0, 15), "15-60 s": (15, 60), "60 s-end": (60, 1e9)})

# Scenario -> how it runs.  "clients": {N: runs}.
FULL = {
    "blocks": dict(title="(a) newBlocks only, 1 block/s", channels="newBlocks", data=SMALL, blocks=10,
                   clients={100: 3, 1000: 3, 5000: 3, 10000: 3}, per_loadgen=10000),
    "txs": dict(title="(b)/(c) newBlocks + newTxs, mainnet blocks (~190 txs), 1 block/s",
                channels="newBlocks,newTxs", data=MAINNET_200, blocks=10,
                clients={100: 3, 1000: 3, 5000: 1, 10000: 1}, blocks_for={5000: 5, 10000: 15}, per_loadgen=2500),
    "batch": dict(title='(d) newBlocks + newTxs with "batch": true, mainnet blocks, 1 block/s',
                  channels="newBlocks,newTxs", batch=True, data=MAINNET_200, blocks=10,
                  clients={1000: 3}, per_loadgen=5000),
    # The silent clients stop reading once subscribed and send an app-level ping every 15 s (they
    # write, never read); explorerd counts only pongs to its own pings as signs of life.  With
    # WEBSOCKET_UNSENT_LIMIT (128 KiB) a silent client's transport pauses within a few blocks and
    # the write deadline (10 s) closes it as too slow; without it (silent-nolimit) the kernel
    # takes ~4 MiB for each first (~35 of these blocks) and the pong timeout (60 s) drops them.
    # The run lasts well past both.  At 10,000 clients the blocks come one every 2 s: at 1 a
    # second 9,000 readers of ~190 frames a block saturate both cores (the load generators alone
    # take ~1.6), and a load generator that falls behind never catches up (its unread queue grows
    # by ~350 MB/s until the OOM killer takes it), with silent clients or without.  The peers fall
    # far behind the block rate at 10,000 here.
    "silent": dict(SILENT_BASE, title="(f) as (b) with 10% of clients never reading (but sending a ping every 15 s)",
                   silent=0.1, silent_keepalive=15, clients={1000: 3, 10000: 2}, peer_runs=1,
                   servers_for={"ws": (1000,), "ws-prepared": (1000,), "autobahn": (1000,)}),
    # (f)'s reading clients alone (900 and 9,000): what "the others" get without the silent ones.
    "alone": dict(SILENT_BASE, title="(f) baseline: the reading clients of (f) alone",
                  clients={900: 2, 9000: 2}, servers=("explorerd",), clients_scale=0.9),
    # (f) as explorerd was before WEBSOCKET_UNSENT_LIMIT: the kernel's own buffering.  Not in the
    # default matrix: `--scenarios silent-nolimit`.
    "silent-nolimit": dict(SILENT_BASE, title="(f) with WEBSOCKET_UNSENT_LIMIT=0",
                           silent=0.1, silent_keepalive=15, clients={1000: 1, 10000: 1},
                           servers=("explorerd",), set={"unsent_limit": 0}),
    # The baseline as explorerd was: what the unsent limit costs clients that read.  Not in the
    # default matrix: `--scenarios alone-nolimit`.
    "alone-nolimit": dict(SILENT_BASE, title="(f) baseline with WEBSOCKET_UNSENT_LIMIT=0",
                          clients={900: 1, 9000: 1}, servers=("explorerd",), clients_scale=0.9,
                          set={"unsent_limit": 0}),
    # How many connections one process holds (its open-file cap is the limit: each load generator
    # is a process with its own), what an idle subscribed one costs, and whether blocks still all
    # arrive.  Not in the default matrix: `--scenarios connections`.
    "connections": dict(title="Connections one process holds: idle and subscribed, then newBlocks at 1 block/s",
                        channels="newBlocks", data=SMALL, blocks=10, clients={10000: 1, 19000: 2, 19900: 1},
                        per_loadgen=10000, servers=("explorerd",)),
    # bench/e2e.py: the node mining (anvil evm_mine) -> clients, explorerd at its default latency
    # settings against the node serving the clients itself; "servers" are its modes, all of them
    # in every run (node-direct-fetch only where it is listed in servers_for).
    "e2e": dict(title="End to end: anvil `evm_mine` → clients, explorerd at its default latency settings",
                channels="newHeads", blocks=8, warmup=4, block_time=2.0, jitter=0.25, phase=0.05, txs=200,
                clients={1: 3, 1000: 3, 10000: 3}, per_loadgen=5000, connect_seconds=60,
                servers=("node-direct", "explorerd-http", "explorerd-push", "node-direct-fetch"),
                servers_for={"node-direct-fetch": (1, 100, 1000)},
                # 1,000 clients fetching ~500 KiB each per block keep anvil busy for many block times:
                # fewer blocks, or that one cell would take most of the run.
                cell_overrides={"node-direct-fetch": {1000: dict(warmup=1, blocks=3)}}),
    # The same clients two ways in the same run, one cell after the other: each with its own
    # 10-address logs filter, then as (d).  explorerd only: the peers do not speak logs.
    "logs": dict(title="logs: own 10-address log filters vs newTxs batch, mainnet blocks (~300 logs), 1 block/s",
                 channels="logs", data=MAINNET_200, blocks=10, clients={1000: 3}, per_loadgen=5000,
                 servers=("explorerd",),
                 variants={"logs": dict(channels="logs", log_filters=10),
                           "batch": dict(channels="newBlocks,newTxs", batch=True)}),
}
# Measurements without clients, each one script that writes raw JSON and renders its own table.
SIDE = {
    "memory": dict(title="History memory with logs", script="history_memory.py", args=[], quick_args=["--size", "16"]),
    "receipts": dict(title="Receipts fetching against a local anvil", script="receipts_cost.py", args=[],
                     quick_args=["--blocks", "5", "--repeat", "1"]),
}
QUICK = {
    "blocks": dict(FULL["blocks"], blocks=4, clients={100: 1, 1000: 1}),
    "txs": dict(FULL["txs"], blocks=4, clients={100: 1, 500: 1}, blocks_for={}),
    "batch": dict(FULL["batch"], blocks=4, clients={200: 1}),
    "silent": dict(FULL["silent"], blocks=20, clients={200: 1}, phase_seconds={}),
    "alone": dict(FULL["alone"], blocks=20, clients={180: 1}, phase_seconds={}),
    "silent-nolimit": dict(FULL["silent-nolimit"], blocks=20, clients={200: 1}, phase_seconds={}),
    "alone-nolimit": dict(FULL["alone-nolimit"], blocks=20, clients={180: 1}, phase_seconds={}),
    "connections": dict(FULL["connections"], blocks=4, clients={200: 1}),
    "e2e": dict(FULL["e2e"], blocks=4, clients={1: 1, 100: 1}),
    "logs": dict(FULL["logs"], blocks=4, clients={200: 1}),
}

# ---------------------------------------------------------------------------------------------
# Processes: every one we start is remembered and killed (by PID, its own process group) at the
# end, on error, on SIGINT/SIGTERM.

_procs = []


# --pin: CPU lists by process kind ("server", "loadgen") for taskset, e.g. {"server": "0", "loadgen": "1"}.
PIN = {}


class Proc:
    def __init__(self, name, argv, log_dir, json_lines=True, cwd=None, env=None):
        self.name = name
        cpus = PIN.get(name.rstrip("0123456789"))
        if cpus:
            argv = ["taskset", "-c", cpus] + list(argv)
        self.json_lines = json_lines
        self.stderr_path = os.path.join(log_dir, f"{name}.stderr")
        self.stdout_path = os.path.join(log_dir, f"{name}.stdout")
        self._stderr = open(self.stderr_path, "w")
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                  cwd=cwd or REPO, env=env, text=True, bufsize=1, start_new_session=True)
        _procs.append(self)
        self.pid = self.p.pid
        self.q = queue.Queue()
        self.lines = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        with open(self.stdout_path, "w") as copy:
            for line in self.p.stdout:
                if len(line) < 4096:
                    copy.write(line)
                    copy.flush()
                if self.json_lines:
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                else:
                    msg = line.rstrip("\n")
                self.lines.append(msg)
                self.q.put(msg)
        self.q.put(None)

    def send(self, line):
        try:
            self.p.stdin.write(line + "\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def expect(self, event, timeout):
        """The next message with this event (others are kept in .lines); raises on timeout/exit."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no {event!r} within {timeout:.0f}s (see {self.stderr_path})")
            try:
                msg = self.q.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if msg is None:
                raise BenchError(f"{self.name} exited (code {self.p.wait()}) before {event!r}; see {self.stderr_path}")
            if self.json_lines and msg.get("event") == event:
                return msg
            if not self.json_lines and event in msg:
                return msg

    def alive(self):
        return self.p.poll() is None

    def stop(self, grace=5.0):
        if self.p.poll() is None:
            try:
                self.p.stdin.close()
            except OSError:
                pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.p.poll() is not None:
                break
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.p.wait(3)
            except subprocess.TimeoutExpired:
                pass
        self._stderr.close()
        if self in _procs:
            _procs.remove(self)


def kill_all():
    for proc in list(_procs):
        try:
            proc.stop(grace=0.5)
        except Exception:
            pass


atexit.register(kill_all)


def _on_signal(signum, frame):
    kill_all()
    sys.exit(128 + signum)


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# /proc readings.

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """user+sys seconds of a process (clock-tick precision)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError):
        return None


def proc_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def system_busy():
    """(busy, total) jiffies over all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def tcp_mem_pages():
    """The kernel's TCP buffer memory, machine-wide, in pages (/proc/net/sockstat "TCP: ... mem N")."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    fields = line.split()
                    return int(fields[fields.index("mem") + 1])
    except (OSError, ValueError):
        return None
    return None


# Slab caches a TCP connection's kernel objects live in: the socket, its inode, file and dentry,
# its epoll entry.
SOCKET_SLABS = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi")


def kernel_memory():
    """
    Machine-wide kernel memory a connection costs besides its buffers: /proc/net/sockstat (TCP
    sockets in use, their buffer memory in pages), /proc/meminfo's unreclaimable slab, and the
    bytes of the socket slab caches (/proc/slabinfo, readable by root only).  On loopback both
    ends of every connection are on this machine.
    """
    out = {"tcp_mem_pages": tcp_mem_pages(), "page_kb": os.sysconf("SC_PAGE_SIZE") // 1024}
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    fields = line.split()
                    out["tcp_inuse"] = int(fields[fields.index("inuse") + 1])
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Slab", "SUnreclaim"):
                    out[key.lower() + "_kb"] = int(value.split()[0])
    except OSError:
        pass
    try:
        slabs = {}
        with open("/proc/slabinfo") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] in SOCKET_SLABS:
                    slabs[fields[0]] = int(fields[1]) * int(fields[3])  # active objects x object size
        out["socket_slabs_kb"] = round(sum(slabs.values()) / 1024)
        out["slabs_kb"] = {k: round(v / 1024) for k, v in slabs.items()}
    except (OSError, ValueError, IndexError):
        pass
    return out


class Sampler(threading.Thread):
    """
    Samples a process's RSS every 0.1 s, and the kernel's TCP buffer memory (machine-wide):
    .peak and .tcp_mem_peak (pages) are the highest seen.
    """

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.tcp_mem_peak = 0
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            rss = proc_rss_kb(self.pid)
            if rss:
                self.peak = max(self.peak, rss)
            self.tcp_mem_peak = max(self.tcp_mem_peak, tcp_mem_pages() or 0)
            self.stopped.wait(0.1)

    def stop(self):
        self.stopped.set()
        self.join(2)


# ---------------------------------------------------------------------------------------------
# One run of one cell.

def foreign_cores(busy0, busy1, ours0, ours1):
    """Cores' worth of CPU that processes other than ours used between two readings."""
    cores = os.cpu_count() or 1
    window_jiffies = (busy1[1] - busy0[1]) or 1
    return round(max(0.0, (busy1[0] - busy0[0]) / CLK_TCK - (ours1 - ours0)) / (window_jiffies / CLK_TCK / cores), 2)


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    k = max(0, min(len(values) - 1, math.ceil(p / 100 * len(values)) - 1))
    return values[k]


def server_argv(server, files, rate, count, log_dir, profile="", settings=None):
    """C{settings}: explorerd settings other than its defaults (C{{name: value}}), for explorerd only."""
    common = ["--rate", str(rate), "--count", str(count)]
    if server.startswith("explorerd"):
        argv = [sys.executable, os.path.join(HERE, "hubserver.py"), "--events", files["raw"], *common,
                "--log", os.path.join(log_dir, "explorerd.log")]
        for name, value in (settings or {}).items():
            argv += ["--set", f"{name}={value}"]
        if profile:
            argv += ["--profile", profile]
        return argv
    if server == "autobahn":
        argv = [sys.executable, os.path.join(HERE, "peers", "autobahn_server.py"), "--events", files["wire"], *common]
        return argv + (["--profile", profile] if profile else [])
    if server in ("ws", "ws-prepared"):
        return ["node", os.path.join(HERE, "peers", "ws_server.mjs"), "--events", files["wire"], *common,
                "--mode", "prepared" if server == "ws-prepared" else "send"]
    raise ValueError(server)


def start_loadgens(spec, n, url, log_dir, verify, max_seconds, logs_filters=""):
    """
    The load generators of one cell; with C{logs_filters} (a file from L{write_log_filters}) each
    client subscribes with its own logs filter and checks what it gets against it.
    """
    sizes = loadgen_sizes(spec, n)
    # Source addresses 127.0.0.<host_base + hosts * i ...>, each loadgen its own `hosts` of them.
    hosts, host_base = spec.get("hosts", 4), spec.get("host_base", 2)
    loadgens = []
    for i, size in enumerate(sizes):
        argv = ["node", os.path.join(HERE, "loadgen.mjs"), "--url", url, "--clients", str(size),
                "--channels", spec["channels"], "--hosts", str(hosts), "--host-base", str(host_base + hosts * i), "--id", str(i),
                "--max-seconds", str(int(max_seconds))]
        if spec.get("batch"):
            argv.append("--batch")
        if spec.get("silent"):
            argv += ["--silent", str(spec["silent"])]
        if spec.get("silent_keepalive"):
            argv += ["--silent-keepalive", str(spec["silent_keepalive"])]
        if spec.get("protocol"):
            argv += ["--protocol", spec["protocol"]]
        if spec.get("connect_seconds"):
            argv += ["--connect-seconds", str(spec["connect_seconds"])]
        if verify:
            argv.append("--verify")
        if logs_filters:
            argv += ["--logs-filters", logs_filters, "--client-offset", str(sum(sizes[:i]))]
        argv += ["--report-file", os.path.join(log_dir, f"loadgen{i}.json")]
        loadgens.append(Proc(f"loadgen{i}", argv, log_dir))
    return loadgens


def read_done(msg):
    if "file" in msg:
        with open(msg["file"]) as f:
            done = json.load(f)
        os.unlink(msg["file"])
        return done
    return msg


def expected_messages(spec, txs):
    """Messages a client should get for a block of C{txs} transactions on newBlocks and newTxs."""
    channels = spec["channels"].split(",")
    m = 1 if "newBlocks" in channels else 0
    if "newTxs" in channels:
        m += (1 if txs else 0) if spec.get("batch") else txs
    return m


def block_expectation(spec, block, clients, logs_expect=None):
    """
    C{(total, per_client)}: the messages C{clients} reading clients should get for C{block} (a
    server's "block" line), and at most how many one client should.  A logs subscriber gets one
    logs message per block with logs; with log filters, only the clients whose filter matches
    (C{logs_expect}: the load generators' count per height) do.
    """
    per_client = expected_messages(spec, block["txs"])
    total = per_client * clients
    if "logs" in spec["channels"].split(","):
        if spec.get("log_filters"):
            total += (logs_expect or {}).get(str(block["height"]), 0)
        elif block.get("logs"):
            total += clients
        per_client += 1
    return total, per_client


def merged_logs_expect(messages):
    """The load generators' logs expectations (per height) added up, or None without log filters."""
    out = None
    for m in messages:
        expect = m.get("logsExpect") if "logsExpect" in m else (m.get("logs") or {}).get("expect")
        if expect is not None:
            out = out or {}
            for h, k in expect.items():
                out[h] = out.get(h, 0) + k
    return out


def write_log_filters(raw_path, nblocks, n, size, path, seed=0):
    """
    Every client's own logs filter: C{size} addresses drawn (seeded by the client's index, so
    runs and load generators agree) from the addresses in the logs of the cell's first
    C{nblocks} blocks, so every client's filter matches some logs and no two are alike; and per
    client and block how many logs it should get.  Written once to C{path} for loadgen.mjs.
    """
    if os.path.exists(path):
        return path
    with open(raw_path) as f:
        items = json.load(f)[:nblocks]
    per_block = []
    for item in items:
        counts = {}
        for log in item["logs"] or ():
            address = log["address"].lower()
            counts[address] = counts.get(address, 0) + 1
        per_block.append(counts)
    pool = sorted({a for counts in per_block for a in counts})
    if not pool:
        raise BenchError("the blocks have no logs to draw log filters from")
    filters, expect = [], []
    for i in range(n):
        chosen = random.Random(f"bench-logs-{seed}-{i}").sample(pool, min(size, len(pool)))
        filters.append(chosen)
        expect.append([sum(counts.get(a, 0) for a in chosen) for counts in per_block])
    with open(path, "w") as f:
        json.dump({"heights": [int(item["block"]["number"], 16) for item in items], "filters": filters,
                   "expect": expect}, f)
    return path


def wait_ready(loadgens, n):
    ready = []
    for lg in loadgens:
        ready.append(lg.expect("ready", 60 + n / 50))
    return ready


def drain(loadgens, expected_total, max_wait, stall=4.0):
    """Poll the loadgens until they hold every expected message, stop progressing, or max_wait."""
    start = time.monotonic()
    last, last_change = -1, start
    while True:
        total = 0
        for lg in loadgens:
            lg.send("progress")
        for lg in loadgens:
            total += lg.expect("progress", 30)["unique"]
        now = time.monotonic()
        if total >= expected_total:
            return total, now - start, "complete"
        if total != last:
            last, last_change = total, now
        elif now - last_change > stall:
            return total, now - start, "stalled"
        if now - start > max_wait:
            return total, now - start, "timeout"
        time.sleep(0.2)


def start_pyspy(pid, output, log_dir):
    spy = subprocess.Popen([pyspy_binary(), "record", "--pid", str(pid), "--rate", "500", "--format", "raw",
                            "--output", output, "--nonblocking"] + (["--native"] if os.environ.get("BENCH_PYSPY_NATIVE") else []),
                           stdout=subprocess.DEVNULL, stderr=open(os.path.join(log_dir, "py-spy.stderr"), "a"),
                           start_new_session=True)
    time.sleep(1.5)
    return spy


def stop_pyspy(spy):
    if spy is None:
        return
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(5)


def run_cell(scenario, spec, server, n, run_index, files, out_dir, verify=False, profile="", pyspy="",
             pyspy_setup="", variant=""):
    """
    One run: start server and loadgens, publish, collect; returns a result dict.  C{variant}
    names which of the scenario's subscriptions C{spec} (already merged with it) is.
    """
    cell = f"{scenario}-{variant + '-' if variant else ''}{server}-{n}-r{run_index}"
    log_dir = os.path.join(out_dir, "logs", cell)
    os.makedirs(log_dir, exist_ok=True)
    rate, nblocks = rate_for(spec, n), blocks_for(spec, n)
    result = {"scenario": scenario, "server": server, "clients": n, "run": run_index, "blocks": nblocks,
              "rate": rate, "channels": spec["channels"], "batch": bool(spec.get("batch")),
              "silent_share": spec.get("silent", 0), "errors": []}
    if variant:
        result["variant"] = variant
    if spec.get("set"):
        result["settings"] = dict(spec["set"])
    if spec.get("log_filters"):
        result["log_filters"] = spec["log_filters"]
    procs = []
    try:
        logs_filters = ""
        if spec.get("log_filters"):
            logs_filters = write_log_filters(files["raw"], nblocks, n, spec["log_filters"],
                                             os.path.join(out_dir, f"{scenario}-logs-filters-{n}-{nblocks}.json"))
        srv = Proc("server", server_argv(server, files, rate, nblocks, log_dir, profile, spec.get("set")), log_dir)
        procs.append(srv)
        listening = srv.expect("listening", 60)
        port = listening["port"]
        time.sleep(0.5)
        srv.send("stats")
        base = own_rss(srv.expect("stats", 30), srv.pid)
        kernel = {"base": kernel_memory()}
        url = f"ws://127.0.0.1:{port}/v1/stream"
        setup_spy = start_pyspy(srv.pid, pyspy_setup, log_dir) if pyspy_setup else None
        max_seconds = 900 + n / 20 + nblocks / rate
        loadgens = start_loadgens(spec, n, url, log_dir, verify, max_seconds, logs_filters)
        procs += loadgens
        ready = wait_ready(loadgens, n)
        stop_pyspy(setup_spy)
        subscribed = sum(r["subscribed"] for r in ready)
        result["subscribed"] = subscribed
        result["connect_s"] = max(r["connect_s"] for r in ready)
        if subscribed < n:
            kinds = {}
            for r in ready:
                for k, v in r.get("errorKinds", {}).items():
                    kinds[k] = kinds.get(k, 0) + v
            result["errors"].append(f"only {subscribed}/{n} clients subscribed (connect errors: {kinds})")
        time.sleep(2.0)
        srv.send("stats")
        idle = own_rss(srv.expect("stats", 30), srv.pid)
        kernel["idle"] = kernel_memory()
        spy = start_pyspy(srv.pid, pyspy, log_dir) if pyspy else None
        sampler = Sampler(srv.pid)
        sampler.start()
        ours0 = sum(filter(None, (proc_cpu(p.pid) for p in procs)))
        busy0 = system_busy()
        srv.send("go")
        blocks = [srv.expect("block", 30 + n / 100 + (nblocks / rate if i == 0 else 0)) for i in range(nblocks)]
        srv.expect("sent_all", 30 + n / 100)
        non_silent = n - sum(round_silent(spec, size) for size in loadgen_sizes(spec, n))
        logs_expect = merged_logs_expect(ready)
        expected_total = sum(block_expectation(spec, b, min(non_silent, subscribed), logs_expect)[0] for b in blocks)
        # Generous: an overloaded peer may take tens of seconds per block; a stall ends it sooner.
        got, drain_s, how = drain(loadgens, expected_total, max_wait=60 + expected_total / 5e4)
        srv.send("stats")
        end = own_rss(srv.expect("stats", 60), srv.pid)
        kernel["end"] = kernel_memory()
        kernel["tcp_mem_peak_pages"] = sampler.tcp_mem_peak
        result["kernel"] = kernel
        if profile:
            srv.send("profile_stop")
        busy1 = system_busy()
        ours1 = sum(filter(None, (proc_cpu(p.pid) for p in procs)))
        sampler.stop()
        stop_pyspy(spy)
        result["delivery"] = f"{how} after {drain_s:.1f}s: {got}/{expected_total} messages"
        dones = []
        for lg in loadgens:
            lg.send("report")
        for lg in loadgens:
            dones.append(read_done(lg.expect("done", 120)))
        srv.send("quit")
        try:
            final = srv.expect("stats", 20)
        except BenchError:
            final = end
        result.update(analyze(spec, blocks, dones, base, idle, end, final, sampler.peak, n))
        # A delivery that ended short only by the clients the server closed is complete: the closes
        # are a result (reported, and what they missed of their last block counted as lost), not a
        # failed measurement.
        if how != "complete" and (result["lost"] > result["lost_rest_at_close"] or not result["server_closed"]):
            result["errors"].append(f"delivery {result['delivery']}")
        result["foreign_cpu_cores"] = foreign_cores(busy0, busy1, ours0, ours1)
        result["loadavg"] = open("/proc/loadavg").read().split()[:3]
    except BenchError as e:
        result["errors"].append(str(e))
    finally:
        for p in reversed(procs):
            p.stop()
    with open(os.path.join(out_dir, f"{cell}.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def own_rss(stats, pid):
    """A server's stats, with its RSS read from here when it could not read its own (at its open-file limit)."""
    if stats.get("rss_kb") is None:
        stats["rss_kb"] = proc_rss_kb(pid)
    return stats


def blocks_for(spec, n):
    return spec.get("blocks_for", {}).get(n, spec["blocks"])


def rate_for(spec, n):
    """Blocks per second at N clients."""
    return spec.get("rate_for", {}).get(n, spec.get("rate", 1.0))


def loadgen_sizes(spec, n):
    k = max(1, math.ceil(n / spec["per_loadgen"]))
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def round_silent(spec, size):
    share = spec.get("silent", 0)
    return sum(1 for i in range(size) if math.floor((i + 1) * share) > math.floor(i * share))


def closes_after(blocks, stats):
    """
    When the server closed clients as too slow and dropped them on the pong timeout: how many,
    and the first, median and last, in seconds after the first block's hand-off.
    """
    if not blocks or "slow_close_t" not in stats:
        return None
    t0 = blocks[0]["t"]
    out = {}
    for key, kind in (("slow_close_t", "too_slow"), ("ping_timeout_t", "pong_timeout"), ("overload_close_t", "overloaded")):
        times = sorted(t - t0 for t in stats.get(key) or ())
        out[kind] = {"n": len(times), "first": round(times[0], 1) if times else None,
                     "p50": round(pct(times, 50), 1) if times else None,
                     "last": round(times[-1], 1) if times else None}
    return out


def analyze(spec, blocks, dones, base, idle, end, final, rss_peak, n):
    handoff = {b["height"]: b for b in blocks}
    phases = {}
    first_lat, whole_lat = [], []
    per_block_first, per_block_last = {}, {}
    unique = dupes = order = verify_err = 0
    received_by_block = {}
    tx_mismatch = 0
    non_silent = 0
    silent = {"count": 0, "messages": 0, "closeCodes": {}, "stillOpen": 0}
    lg_cpu, loop_p99, loop_max = [], [], []
    logs_expect = merged_logs_expect(dones)
    logs = {"messages": 0, "logs": 0, "bytes": 0, "unexpected": 0, "mismatch": 0}
    for d in dones:
        for key in logs:
            logs[key] += (d.get("logs") or {}).get(key, 0)
        unique += d["unique"]
        dupes += d["dupes"]
        order += d["orderErrors"]
        verify_err += d.get("verifyErrors", 0)
        non_silent += d["nonSilent"]
        s = d["silent"]
        silent["count"] += s["count"]
        silent["messages"] += s["messages"]
        silent["stillOpen"] += s["stillOpen"]
        for code, k in s["closeCodes"].items():
            silent["closeCodes"][code] = silent["closeCodes"].get(code, 0) + k
        lg_cpu.append(d["cpu_s"] / max(d["window_s"], 1e-9))
        loop_p99.append(d["loop_delay_ms"]["p99"])
        loop_max.append(d["loop_delay_ms"]["max"])
        b0 = d["base"]
        for h, e in d["blocks"].items():
            h = int(h)
            b = handoff.get(h)
            if b is None:
                continue
            t = b["t"]
            exp_msgs = block_expectation(spec, b, 1, logs_expect)[1]
            firsts = [b0 + f / 1e6 - t for f in e["first"]]
            lasts = [b0 + x / 1e6 - t for x in e["last"]]
            first_lat += firsts
            whole_lat += lasts
            per_block_first.setdefault(h, []).extend(firsts)
            per_block_last.setdefault(h, []).extend(lasts)
            received_by_block[h] = received_by_block.get(h, 0) + sum(min(k, exp_msgs) for k in e["n"])
            if "newTxs" in spec["channels"]:
                tx_mismatch += sum(1 for k in e["txs"] if k != b["txs"])
    phase_blocks = {label: blocks[lo:hi] for label, (lo, hi) in spec.get("phases", {}).items()}
    for label, (lo, hi) in spec.get("phase_seconds", {}).items():  # by hand-off time after the first block
        phase_blocks[label] = [b for b in blocks if lo <= b["t"] - blocks[0]["t"] < hi]
    for label, phase in phase_blocks.items():
        heights = [b["height"] for b in phase]
        lat = [x for h in heights for x in per_block_first.get(h, [])]
        whole = [x for h in heights for x in per_block_last.get(h, [])]
        phases[label] = {"lat_p99_ms": round(pct(lat, 99) * 1000, 2) if lat else None,
                         "whole_p99_ms": round(pct(whole, 99) * 1000, 2) if whole else None}
    msgs_per_block = [block_expectation(spec, b, non_silent, logs_expect)[0] for b in blocks]
    expected = sum(msgs_per_block)
    delivered = sum(received_by_block.values())
    lost = expected - delivered
    # Reading clients the server closed during the run (1013 overloaded, 1008 too slow; from load
    # generators that report them, with the newest height each had): the blocks after its newest
    # were not sent to it and are not lost (a real client resumes with `since`, the close reason
    # names where); what it did not get of its newest block and before still is.  *rest_at_close*:
    # that part of lost, taken as the smallest counts of that block (exact when the clients that
    # stayed open got all of it), so a delivery short only by the closed clients can be told from
    # one where open clients lost messages.  With log filters a closed client's share is an upper bound.
    server_closed, closed_at, not_sent, rest_at_close = {}, {}, 0, 0
    for d in dones:
        for code, newest in d.get("serverClosed") or ():
            server_closed[str(code)] = server_closed.get(str(code), 0) + 1
            closed_at[newest] = closed_at.get(newest, 0) + 1
    if closed_at:
        counts_by_block = {}
        for d in dones:
            for h, e in d["blocks"].items():
                counts_by_block.setdefault(int(h), []).extend(e["n"])
        for b in blocks:
            per = block_expectation(spec, b, 1, logs_expect)[1]
            not_sent += per * sum(k for newest, k in closed_at.items() if newest is None or newest < b["height"])
            k = closed_at.get(b["height"], 0)
            if k:
                rest_at_close += sum(per - x for x in sorted(min(x, per) for x in counts_by_block.get(b["height"], []))[:k])
    not_sent = min(not_sent, expected - delivered)
    lost = expected - delivered - not_sent
    rest_at_close = min(rest_at_close, lost)
    completion = []
    for h in per_block_first:
        completion.append(max(per_block_last[h]) - min(per_block_first[h]))
    last_arrival = max((max(v) + handoff[h]["t"] for h, v in per_block_last.items()), default=None)
    window = (last_arrival - blocks[0]["t"]) if blocks and last_arrival else None
    cpu = end["cpu"] - idle["cpu"]
    ms = lambda v: None if v is None else round(v * 1000, 2)
    fanout_rates = [m / c for m, c in zip(msgs_per_block, completion) if c > 0]
    out = {
        "closes_s": closes_after(blocks, final if "slow_close_t" in final else end),
        "queue_peak": (final if "queue_peak" in final else end).get("queue_peak"),
        "queued_peak": (final if "queued_peak" in final else end).get("queued_peak"),
        "open_files_base": base.get("open_files"), "open_files_idle": idle.get("open_files"),
        "non_silent": non_silent, "expected": expected, "delivered": delivered, "lost": lost, "dupes": dupes,
        "order_errors": order, "verify_errors": verify_err, "tx_count_mismatch": tx_mismatch,
        "lat_p50_ms": ms(pct(first_lat, 50)), "lat_p99_ms": ms(pct(first_lat, 99)),
        "lat_max_ms": ms(max(first_lat) if first_lat else None),
        "whole_p50_ms": ms(pct(whole_lat, 50)), "whole_p99_ms": ms(pct(whole_lat, 99)),
        "whole_max_ms": ms(max(whole_lat) if whole_lat else None),
        "completion_p50_ms": ms(pct(completion, 50)), "completion_max_ms": ms(max(completion) if completion else None),
        "handoff_took_p50_ms": ms(pct([b["took"] for b in blocks], 50)),
        "handoff_took_max_ms": ms(max((b["took"] for b in blocks), default=None)),
        "behind_schedule_max_s": round(max((b["t"] - b["t_sched"] for b in blocks if "t_sched" in b), default=0), 3),
        "msgs_per_s": round(delivered / window) if window else None,
        "fanout_msgs_per_s": round(pct(fanout_rates, 50)) if fanout_rates else None,
        "server_cpu_s": round(cpu, 4),
        # The kernel splits user/sys by tick sampling: no use for small totals.
        "server_sys_share": round((end["sys"] - idle["sys"]) / cpu, 2) if cpu > 0.2 and "sys" in idle and "sys" in end else None,
        "cpu_us_per_msg": round(cpu / delivered * 1e6, 3) if delivered else None,
        "cpu_ms_per_block": round(cpu / len(blocks) * 1000, 2) if blocks else None,
        "msgs_per_block": round(delivered / len(blocks), 1) if blocks else None,
        "rss_base_kb": base["rss_kb"], "rss_idle_kb": idle["rss_kb"], "rss_peak_kb": max(rss_peak, end["rss_kb"]),
        "rss_end_kb": end["rss_kb"],
        "rss_per_conn_idle_kb": round((idle["rss_kb"] - base["rss_kb"]) / n, 2),
        "setup_cpu_us_per_conn": round((idle["cpu"] - base["cpu"]) / n * 1e6) if "cpu" in base else None,
        "rss_per_conn_load_kb": round((max(rss_peak, end["rss_kb"]) - base["rss_kb"]) / n, 2),
        "server_clients_end": end.get("clients"), "slow_closed": final.get("slow_closed", end.get("slow_closed")),
        "overload_closed": final.get("overload_closed", end.get("overload_closed")),
        "server_closed": server_closed, "not_sent_after_close": not_sent, "lost_rest_at_close": rest_at_close,
        "ping_timeouts": final.get("ping_timeouts", end.get("ping_timeouts")),
        "silent": silent,
        "loadgen_cpu_share": [round(x, 2) for x in lg_cpu],
        "loadgen_loop_p99_ms": [round(x, 1) for x in loop_p99], "loadgen_loop_max_ms": [round(x, 1) for x in loop_max],
        "block_txs": [b["txs"] for b in blocks],
        # Per block, in hand-off order: where a slow block (a GC, a burst of closes) shows.
        "block_lat_p99_ms": [ms(pct(per_block_first.get(b["height"], []), 99)) for b in blocks],
        "block_whole_p99_ms": [ms(pct(per_block_last.get(b["height"], []), 99)) for b in blocks],
        "block_gc_ms": [b.get("gc_ms") for b in blocks],
        # Every collection from the first block to the end, by generation: those outside a publish too.
        "server_gc": end.get("gc"),
        "block_logs": [b.get("logs") for b in blocks],
        "phases": phases,
    }
    if "logs" in spec["channels"].split(","):
        out["logs"] = dict(logs, per_message=round(logs["logs"] / logs["messages"], 1) if logs["messages"] else None,
                           bytes_per_message=round(logs["bytes"] / logs["messages"]) if logs["messages"] else None)
    return out


# ---------------------------------------------------------------------------------------------
# End to end with anvil and a real `twistd explorerd` (bench/e2e.py).

def twistd_argv():
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [sys.executable, script]
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def limits_off():
    """twistd options that turn per-IP limits off, for those this version of explorerd has."""
    from explorerd.config import SETTINGS
    from hubserver import BENCH_SETTINGS

    argv = []
    for setting in SETTINGS:
        if setting.name in BENCH_SETTINGS:
            argv += ["--" + setting.option, str(BENCH_SETTINGS[setting.name])]
    return argv


# ---------------------------------------------------------------------------------------------
# Set-up, machine facts, the report.

def ensure_node_deps():
    if not shutil.which("node") or not shutil.which("npm"):
        raise SystemExit("bench: Node.js and npm are needed (the load generator and the ws peer)")
    if not os.path.isfile(os.path.join(HERE, "node_modules", "ws", "package.json")):
        print("bench: installing the Node dependencies: npm ci --prefix bench", flush=True)
        subprocess.run(["npm", "ci", "--prefix", HERE, "--no-audit", "--no-fund"], check=True)


def ensure_python_deps():
    try:
        import autobahn  # noqa: F401
        import twisted  # noqa: F401
        sys.path.insert(0, REPO)
        import explorerd.daemon  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"bench: this Python ({sys.executable}) cannot run explorerd: {e}. "
                         "Run with the Python that has explorerd's dependencies "
                         "(e.g. `pip install -e .` first, or a tox/venv interpreter).")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine():
    def read(path):
        try:
            return open(path).read()
        except OSError:
            return ""

    cpuinfo = read("/proc/cpuinfo")
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    mhz = re.search(r"cpu MHz\s*:\s*(.*)", cpuinfo)
    mem = re.search(r"MemTotal:\s*(\d+)", read("/proc/meminfo"))
    import autobahn
    import twisted

    def cmd(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
        except OSError:
            return "?"

    ws_version = json.load(open(os.path.join(HERE, "node_modules", "ws", "package.json")))["version"]
    return {
        "nproc": cmd(["nproc"]), "cpu": (model.group(1) if model else "?") + (f" ({mhz.group(1)} MHz)" if mhz else ""),
        "ram_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
        "kernel": platform.release(), "python": platform.python_version(), "twisted": twisted.__version__,
        "autobahn": autobahn.__version__, "node": cmd(["node", "--version"]), "ws": ws_version,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "somaxconn": read("/proc/sys/net/core/somaxconn").strip(),
        "loadavg_start": read("/proc/loadavg").split()[:3],
        "git": cmd(["git", "-C", REPO, "describe", "--always", "--dirty"]),
        "pin": dict(PIN),
    }


def make_files(spec, out_dir, key):
    """The run's blocks: raw JSON-RPC blocks with their logs for explorerd and wire events for the peers."""
    data = spec["data"]
    # As many blocks as the longest run takes (a cell may run more than the scenario's default).
    count = max([spec["blocks"], *spec.get("blocks_for", {}).values()])
    raw = blockdata.raw_blocks(data["recordings"], count, min_txs=data["min_txs"])
    wire = blockdata.wire_events(raw)
    files = {"raw": os.path.join(out_dir, f"{key}.raw.json"), "wire": os.path.join(out_dir, f"{key}.wire.json")}
    with open(files["raw"], "w") as f:
        json.dump(raw, f)
    with open(files["wire"], "w") as f:
        json.dump(wire, f)
    files.update(file_facts(files["wire"], files["raw"]))
    return files


def file_facts(wire_path, raw_path=None):
    """
    Frame sizes (as explorerd encodes them) and transactions per block of a wire-events file;
    with the raw file, logs per block and the size of a block's logs message with all of them.
    """
    import explorerd.events as ev

    with open(wire_path) as f:
        wire = json.load(f)
    sizes = [len(ev.frame(ev.encode({"type": "newBlock", "data": w["block"]}))) for w in wire]
    tx_sizes = [len(ev.frame(ev.encode({"type": "newTx", "data": t}))) for w in wire for t in w["txs"]]
    facts = {"block_frame_bytes": round(statistics.mean(sizes)),
             "tx_frame_bytes": round(statistics.mean(tx_sizes)) if tx_sizes else 0,
             "txs_per_block": [len(w["txs"]) for w in wire]}
    if raw_path and os.path.exists(raw_path):
        from explorerd.history import Entry

        with open(raw_path) as f:
            raw = json.load(f)
        logs = [item for item in raw if item["logs"] is not None]
        facts["logs_per_block"] = [len(item["logs"]) for item in logs]
        facts["log_addresses"] = len({log["address"].lower() for item in logs for log in item["logs"]})
        if logs:
            facts["all_logs_frame_bytes"] = round(statistics.mean(
                len(Entry.fromNode(item["block"], logs=item["logs"]).logFrame(None)) for item in logs))
    return facts


def fmt(values, digits=1):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = statistics.median(values)
    f = lambda v: f"{v:,.{digits}f}" if isinstance(v, float) or digits else f"{v:,}"
    if len(values) == 1:
        return f(med)
    return f"{f(med)} ({f(min(values))}–{f(max(values))})"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def run_states(rs):
    """
    A cell's runs as complete, partial (figures, but an error: not every client subscribed, or
    the delivery stalled or timed out) and failed (no figures).  Partial runs stay in the
    medians and are named; none is dropped or replaced.
    """
    complete = [r for r in rs if "lat_p50_ms" in r and not r["errors"]]
    partial = [r for r in rs if "lat_p50_ms" in r and r["errors"]]
    failed = [r for r in rs if "lat_p50_ms" not in r]
    return complete, partial, failed


def runs_ok(rs):
    """The *runs ok* cell: complete runs / runs, and how many of the others were partial or failed."""
    complete, partial, failed = run_states(rs)
    more = [f"{len(which)} {what}" for which, what in ((partial, "partial"), (failed, "failed")) if which]
    return f"{len(complete)}/{len(rs)}" + (f" ({', '.join(more)})" if more else "")


# The figures the peers are compared on: (label, key, higher is better).
RATIO_FIGURES = [
    ("lat p99", "lat_p99_ms", False), ("whole block p99", "whole_p99_ms", False),
    ("fan-out", "completion_p50_ms", False), ("fan-out msg/s", "fanout_msgs_per_s", True),
    ("CPU µs/msg", "cpu_us_per_msg", False), ("RSS/conn idle", "rss_per_conn_idle_kb", False),
    ("RSS/conn load", "rss_per_conn_load_kb", False),
]


def best_peer(rows, n, key, higher=False, peers=PEERS):
    """
    The best peer at N for one figure (the lowest median, or the highest for a rate), its
    median, and whether any of its runs was partial; (None, None, False) without peer runs.
    """
    found = []
    for peer in peers:
        measured = [r for r in rows if r["clients"] == n and r["server"] == peer and "lat_p50_ms" in r]
        value = median([r.get(key) for r in measured])
        if value is not None:
            found.append((-value if higher else value, peers.index(peer), peer, value,
                          any(r["errors"] for r in measured)))
    if not found:
        return None, None, False
    _, _, peer, value, partial = min(found)
    return peer, value, partial


def vs_best(rows, n, key, higher=False):
    """A ratio cell: explorerd ÷ the best peer at N for this figure, naming the peer (and † for partial runs)."""
    measured = [r for r in rows if r["clients"] == n and r["server"] == "explorerd" and "lat_p50_ms" in r]
    mine = median([r.get(key) for r in measured])
    peer, theirs, partial = best_peer(rows, n, key, higher)
    if peer is None or mine is None:
        return "–"
    dagger = "†" if partial or any(r["errors"] for r in measured) else ""
    return f"{ratio(mine, theirs)}{dagger} ({peer})"


COLUMNS = [
    ("lat p50 ms", "lat_p50_ms", 1), ("lat p99 ms", "lat_p99_ms", 1), ("lat max ms", "lat_max_ms", 1),
    ("fan-out ms", "completion_p50_ms", 1), ("msg/s", "msgs_per_s", 0), ("fan-out msg/s", "fanout_msgs_per_s", 0),
    ("CPU µs/msg", "cpu_us_per_msg", 2), ("of it sys", "server_sys_share", 2),
    ("RSS/conn idle KiB", "rss_per_conn_idle_kb", 1),
    ("RSS/conn load KiB", "rss_per_conn_load_kb", 1), ("publish call ms", "handoff_took_p50_ms", 1),
    ("setup s", "connect_s", 1), ("setup CPU µs/conn", "setup_cpu_us_per_conn", 0),
]
TX_COLUMNS = COLUMNS[:3] + [("whole block p50 ms", "whole_p50_ms", 1), ("whole block p99 ms", "whole_p99_ms", 1)] + COLUMNS[3:]
LOGS_COLUMNS = [
    ("msgs/block", "msgs_per_block", 0), ("CPU ms/block", "cpu_ms_per_block", 1), ("CPU µs/msg", "cpu_us_per_msg", 2),
    ("of it sys", "server_sys_share", 2), ("lat p50 ms", "lat_p50_ms", 1), ("lat p99 ms", "lat_p99_ms", 1),
    ("whole block p99 ms", "whole_p99_ms", 1), ("fan-out ms", "completion_p50_ms", 1),
    ("publish call ms", "handoff_took_p50_ms", 1), ("RSS/conn load KiB", "rss_per_conn_load_kb", 1),
]
LOGS_TARGET = 1.5  # logs fan-out within 1.5x the CPU of newTxs batch fan-out for the same clients


def logs_section(spec, rows, files):
    """The logs scenario: each variant of the same clients as a row, then logs / batch."""
    out = []
    w = out.append
    w(f"## {spec['title']}\n")
    variants = list(spec.get("variants") or {})
    logs_per_block = files.get("logs_per_block") or []
    if files:
        txs = files.get("txs_per_block", [])
        w(f"{spec['blocks']} blocks at {spec.get('rate', 1)}/s: real mainnet blocks of {min(txs)}–{max(txs)} "
          f"transactions with their real logs, {min(logs_per_block, default=0)}–{max(logs_per_block, default=0)} "
          f"logs per block (a logs message with all of a block's logs: {files.get('all_logs_frame_bytes', 0):,} B), "
          f"{files.get('log_addresses', '?')} distinct log addresses over the blocks.\n")
    filters = spec.get("variants", {}).get("logs", {}).get("log_filters", 10)
    w(f"Subscriptions, the same N clients each way, one cell after the other in every run: **logs** = "
      f'`{{"action": "subscribe", "channels": ["logs"], "logs": {{"address": [...]}}}}`, each client its own '
      f"{filters} addresses drawn (seeded by the client's index) from the addresses in the run's logs, so every "
      f"client gets some logs and no two filters are alike; a client gets one `logs` message per block that has a "
      f"log from one of its addresses, and checks the block and the number of logs against what its filter "
      f"should take (*unexpected*: a message for a block it should get nothing of; *count mismatch*: another "
      f'number of logs). **batch** = `newBlocks` + `newTxs` with `"batch": true`, as (d). explorerd only: the '
      f"peers (ws, autobahn) do not speak logs. *whole block* = block hand-off → the client's last frame of the "
      f"block (for logs its one `logs` message, for batch its `newTxs` frame); *CPU ms/block* = the server's CPU "
      f"from just before the first block to the last delivery, / blocks; *logs/msg*, *B/msg*: logs and bytes per "
      f"`logs` message received.\n")
    w("| subscription | N | runs ok | " + " | ".join(c[0] for c in LOGS_COLUMNS)
      + " | logs/msg | B/msg | lost | dup | order | unexpected | count mismatch | loadgen CPU | foreign CPU | notes |")
    w("|---|---|---|" + "---|" * len(LOGS_COLUMNS) + "---|---|---|---|---|---|---|---|---|---|")
    for n in sorted({r["clients"] for r in rows}):
        for variant in variants:
            rs = [r for r in rows if r["clients"] == n and r.get("variant") == variant]
            if not rs:
                continue
            ok = [r for r in rs if "lat_p50_ms" in r]
            cells = [fmt([r.get(key) for r in ok], d) for _, key, d in LOGS_COLUMNS]
            logs = [r["logs"] for r in ok if r.get("logs")]
            per_msg = fmt([x.get("per_message") for x in logs], 1) if logs else "–"
            bytes_msg = fmt([x.get("bytes_per_message") for x in logs], 0) if logs else "–"
            unexpected = sum(x["unexpected"] for x in logs) if logs else "–"
            mismatch = sum(x["mismatch"] for x in logs) if logs else "–"
            lg = max((x for r in ok for x in r.get("loadgen_cpu_share", [])), default=None)
            notes = [e for r in rs for e in r["errors"]]
            behind = max((r.get("behind_schedule_max_s") or 0 for r in ok), default=0)
            if behind > 0.5:
                notes.append(f"fell behind the block rate by up to {behind:.1f} s")
            w(f"| {variant} | {n:,} | {runs_ok(rs)} | " + " | ".join(cells) +
              f" | {per_msg} | {bytes_msg} | {sum(r.get('lost', 0) for r in ok)} | {sum(r.get('dupes', 0) for r in ok)} | "
              f"{sum(r.get('order_errors', 0) for r in ok)} | {unexpected} | {mismatch} | "
              f"{'–' if lg is None else f'{lg:.0%}'} | {fmt([r.get('foreign_cpu_cores') for r in ok], 2)} | "
              f"{'; '.join(notes)} |")
    w("")
    if "logs" in variants and "batch" in variants:
        w(f"logs ÷ batch, the same clients (medians; target: logs fan-out within {LOGS_TARGET}× the CPU of "
          f"newTxs batch fan-out, and no loss):\n")
        w("| N | CPU per block | target met | CPU µs/msg | whole block p99 | logs lost |")
        w("|---|---|---|---|---|---|")
        for n in sorted({r["clients"] for r in rows}):
            m = lambda variant, key: median([r.get(key) for r in rows if r["clients"] == n
                                              and r.get("variant") == variant and "lat_p50_ms" in r])
            cpu_l, cpu_b = m("logs", "cpu_ms_per_block"), m("batch", "cpu_ms_per_block")
            logs_rows = [r for r in rows if r["clients"] == n and r.get("variant") == "logs" and "lat_p50_ms" in r]
            lost = sum(r.get("lost", 0) for r in logs_rows)
            wrong = sum(r["logs"]["unexpected"] + r["logs"]["mismatch"] for r in logs_rows if r.get("logs"))
            misses = [what for what, bad in (("CPU", cpu_l is not None and cpu_b and cpu_l / cpu_b > LOGS_TARGET),
                                             ("loss", lost > 0), ("wrong logs", wrong > 0)) if bad]
            met = "–" if cpu_l is None or not cpu_b else f"**no** ({', '.join(misses)})" if misses else "yes"
            w(f"| {n:,} | {ratio(cpu_l, cpu_b)} | {met} | {ratio(m('logs', 'cpu_us_per_msg'), m('batch', 'cpu_us_per_msg'))} | "
              f"{ratio(m('logs', 'whole_p99_ms'), m('batch', 'whole_p99_ms'))} | {lost} |")
        w("")
    return "\n".join(out)


SILENT_FAMILY = ("silent", "alone", "silent-nolimit", "alone-nolimit")
SILENT_TARGET = 1.2  # the reading clients' p99 with the silent ones within 20% of theirs alone


def _mib(kb):
    return None if kb is None else kb / 1024


def _tcp_mem_mib(r):
    k = r.get("kernel") or {}
    peak = k.get("tcp_mem_peak_pages")
    if peak is None:
        return None
    return peak * (k.get("base") or {}).get("page_kb", 4) / 1024


def _baseline(rows, scenario, server, reading):
    """
    The runs a row is compared with: silent with alone, silent-nolimit with alone-nolimit (or
    alone), alone-nolimit with alone (what the limit costs reading clients); the same number of
    reading clients, the same server.
    """
    if scenario == "alone" or reading is None:
        return []
    names = {"silent": ("alone",), "silent-nolimit": ("alone-nolimit", "alone"),
             "alone-nolimit": ("alone",)}.get(scenario, ())
    for name in names:
        found = [r for r in rows if r["scenario"] == name and r["server"] == server and "lat_p50_ms" in r
                 and r["clients"] == round(reading)]
        if found:
            return found
    return []


def silent_section(results, scenarios, files_by_scenario):
    """
    (f) and its baseline side by side: per run of silent clients, how the server closed them and
    when, and what the reading clients got against the same number of reading clients alone.
    """
    rows = [r for r in results if r["scenario"] in SILENT_FAMILY]
    out = []
    w = out.append
    spec = scenarios.get("silent") or scenarios.get("silent-nolimit") or scenarios["alone"]
    w(f"## {spec['title']}\n")
    files = next((files_by_scenario[s] for s in SILENT_FAMILY if files_by_scenario.get(s)), {})
    if files:
        txs = files.get("txs_per_block", [])
        per_block = files["block_frame_bytes"] + files["tx_frame_bytes"] * statistics.mean(txs) if txs else 0
        w(f"Channels `{spec['channels']}` (a `newTx` frame per transaction); newBlock frame "
          f"{files['block_frame_bytes']} B, newTx frame {files['tx_frame_bytes']} B, txs per block "
          f"{min(txs)}–{max(txs)}: ~{per_block / 1024:.0f} KiB per client per block. *blocks*: how many, at what "
          f"rate (one every 2 s at 9,000 and 10,000 clients: at 1 a second their ~1.7 M frames/s saturate this "
          f"machine's two cores and a load generator that falls behind does not catch up).\n")
    w(f"Rows: **silent** = N clients of which {spec.get('silent', 0.1):.0%} stop reading once subscribed (they send "
      f"`{{\"action\":\"ping\"}}` every {spec.get('silent_keepalive', 15)} s, so they look alive, and never read); "
      "**alone** = only the reading clients of a silent row (N × 0.9), the baseline the issue asks for: "
      "\"the others' p99\" with and without the silent ones; **silent-nolimit**, **alone-nolimit** = the same with "
      "`WEBSOCKET_UNSENT_LIMIT=0` (the kernel's own buffering: explorerd before this limit). *÷ alone*: against "
      "the same number of reading clients alone (silent-nolimit against alone-nolimit, alone-nolimit against "
      "alone). Latency figures are "
      "the reading clients' only: *first frame* = block hand-off → a client's `newBlock`, *whole block* = → its last "
      "`newTx` of the block. *closed too slow* / *pong timeout* = the server's closes of each kind "
      "(`explorer_websocket_errors_total`), *at s* = when, after the first block (first–last); *queue peak* = the "
      "longest send queue a paused client held (entries; WEBSOCKET_SEND_QUEUE is 256); *kernel TCP mem peak* = "
      "/proc/net/sockstat's TCP `mem` at its highest during the run, machine-wide (on loopback it holds both ends: "
      "what the server's sockets hold unsent and what the clients' sockets hold unread). Median over runs, "
      "(min–max) with more than one.\n")
    cols = ("| row | server | N | reading | blocks | runs ok | first frame p50 ms | first frame p99 ms | whole block p50 ms | "
            "whole block p99 ms | p99 ÷ alone | whole p99 ÷ alone | closed too slow | pong timeout | still open | "
            "too-slow closes at s | pong closes at s | RSS peak MiB | RSS ÷ alone | queue peak | kernel TCP mem peak MiB | "
            "lost | loadgen CPU | foreign CPU | notes |")
    w(cols)
    w("|" + "---|" * cols.count(" | ") + "---|")
    order = {s: i for i, s in enumerate(("alone", "alone-nolimit", "silent", "silent-nolimit"))}
    keys = sorted({(r["scenario"], r["server"], r["clients"]) for r in rows},
                  key=lambda k: (k[2] * (1 if k[0].startswith("alone") else 1 - spec.get("silent", 0.1)),
                                 ALL_SERVERS.index(k[1]) if k[1] in ALL_SERVERS else 9, order[k[0]]))
    for scenario, server, n in keys:
        rs = [r for r in rows if (r["scenario"], r["server"], r["clients"]) == (scenario, server, n)]
        ok = [r for r in rs if "lat_p50_ms" in r]
        reading = median([r.get("non_silent") for r in ok])
        alone = _baseline(rows, scenario, server, reading)
        m = lambda rs_, key: median([r.get(key) for r in rs_])
        vs = lambda key: ratio(m(ok, key), m(alone, key)) if alone else "–"
        vs_rss = ratio(m(ok, "rss_peak_kb"), m(alone, "rss_peak_kb")) if alone else "–"

        def closes(kind, what):
            values = [((r.get("closes_s") or {}).get(kind) or {}).get(what) for r in ok]
            return values

        def span(kind):
            firsts, lasts = closes(kind, "first"), closes(kind, "last")
            if not any(v is not None for v in firsts):
                return "–"
            return "; ".join(f"{a}–{b}" for a, b in zip(firsts, lasts) if a is not None)

        slow = [r.get("slow_closed") or 0 for r in ok]
        pong = [r.get("ping_timeouts") or 0 for r in ok]
        still = [r["silent"]["stillOpen"] for r in ok]
        silent_n = median([r["silent"]["count"] for r in ok]) or 0
        notes = [e for r in rs for e in r["errors"]]
        behind = max((r.get("behind_schedule_max_s") or 0 for r in ok), default=0)
        if behind > 0.5:
            notes.append(f"fell behind the block rate by up to {behind:.1f} s")
        lg = max((x for r in ok for x in r.get("loadgen_cpu_share", [])), default=None)
        blocks = f"{rs[0]['blocks']} at {rs[0]['rate']:g}/s"
        w(f"| {scenario} | {server} | {n:,} | {'–' if reading is None else f'{reading:,.0f}'} | {blocks} | "
          f"{runs_ok(rs)} | "
          f"{fmt([r.get('lat_p50_ms') for r in ok])} | {fmt([r.get('lat_p99_ms') for r in ok])} | "
          f"{fmt([r.get('whole_p50_ms') for r in ok])} | {fmt([r.get('whole_p99_ms') for r in ok])} | "
          f"{vs('lat_p99_ms')} | {vs('whole_p99_ms')} | "
          f"{fmt(slow, 0) if silent_n else '–'} | {fmt(pong, 0) if silent_n else '–'} | {fmt(still, 0) if silent_n else '–'} | "
          f"{span('too_slow')} | {span('pong_timeout')} | "
          f"{fmt([_mib(r.get('rss_peak_kb')) for r in ok], 0)} | "
          f"{vs_rss} | "
          f"{fmt([r.get('queue_peak') for r in ok], 0)} | {fmt([_tcp_mem_mib(r) for r in ok], 0)} | "
          f"{sum(r.get('lost', 0) for r in ok)} | {'–' if lg is None else f'{lg:.0%}'} | "
          f"{fmt([r.get('foreign_cpu_cores') for r in ok], 2)} | {'; '.join(notes)} |")
    w("")
    phases = list(spec.get("phase_seconds") or spec.get("phases") or {})
    if phases and any(r.get("phases") for r in rows):
        w("The reading clients' p99 by phase of the run, in seconds after the first block (first frame / whole "
          "block, ms; median over runs):\n")
        w("| row | server | N | " + " | ".join(phases) + " |")
        w("|---|---|---|" + "---|" * len(phases))
        for scenario, server, n in keys:
            ok = [r for r in rows if (r["scenario"], r["server"], r["clients"]) == (scenario, server, n)
                  and r.get("phases")]
            if not ok:
                continue
            cells = []
            for label in phases:
                first = median([(r["phases"].get(label) or {}).get("lat_p99_ms") for r in ok])
                whole = median([(r["phases"].get(label) or {}).get("whole_p99_ms") for r in ok])
                cells.append("–" if first is None else f"{first:,.0f} / {whole:,.0f}")
            w(f"| {scenario} | {server} | {n:,} | " + " | ".join(cells) + " |")
        w("")
    checks = []
    for scenario, server, n in keys:
        if scenario != "silent" or server != "explorerd":
            continue
        ok = [r for r in rows if (r["scenario"], r["server"], r["clients"]) == (scenario, server, n) and "lat_p50_ms" in r]
        reading = median([r.get("non_silent") for r in ok])
        alone = [r for r in rows if r["scenario"] == "alone" and r["server"] == server and "lat_p50_ms" in r
                 and reading is not None and r["clients"] == round(reading)]
        if not ok or not alone:
            continue
        worst = lambda rs_, key: max(r.get(key) for r in rs_)
        best = lambda rs_, key: min(r.get(key) for r in rs_)
        first = median([r.get("lat_p99_ms") for r in ok]) / median([r.get("lat_p99_ms") for r in alone])
        whole = median([r.get("whole_p99_ms") for r in ok]) / median([r.get("whole_p99_ms") for r in alone])
        first_worst = worst(ok, "lat_p99_ms") / best(alone, "lat_p99_ms")
        whole_worst = worst(ok, "whole_p99_ms") / best(alone, "whole_p99_ms")
        silent_n = sum(r["silent"]["count"] for r in ok)
        slow = sum(r.get("slow_closed") or 0 for r in ok)
        pong = sum(r.get("ping_timeouts") or 0 for r in ok)
        met = first <= SILENT_TARGET and whole <= SILENT_TARGET and slow == silent_n and not pong
        extra_kb = median([r.get("rss_peak_kb") for r in ok]) - median([r.get("rss_peak_kb") for r in alone])
        per_silent = extra_kb / (silent_n / len(ok))
        checks.append(f"| {n:,} | {first:.2f}× (worst run ÷ best alone {first_worst:.2f}×) | "
                      f"{whole:.2f}× ({whole_worst:.2f}×) | {slow:.0f} of {silent_n} | {pong:.0f} | "
                      f"{extra_kb / 1024:+.1f} MiB ({per_silent:.1f} KiB per silent client) | "
                      f"{max(r.get('queue_peak') or 0 for r in ok)} | {'yes' if met else '**no**'} |")
    if checks:
        w(f"Targets: every silent client closed as too slow (not on the pong timeout), and the reading clients' "
          f"p99 within {SILENT_TARGET:g}× of theirs alone (medians over runs; in brackets the worst silent run "
          f"against the best alone run). *RSS*: the server's peak RSS against the reading clients alone, all of "
          f"it and per silent client (an idle subscribed connection costs ~9 KiB, see RESULTS-connections.md); "
          f"*queue*: the longest send queue a silent client held before it was closed (entries, each a reference "
          f"to frames every other client shares; the queue's bound is WEBSOCKET_SEND_QUEUE, 256):\n")
        w("| N | first frame p99 | whole block p99 | closed too slow | pong timeout | RSS | queue | met |")
        w("|---|---|---|---|---|---|---|---|")
        out += checks
        w("")
    return "\n".join(out)


def connections_section(spec, rows, meta):
    """
    How many connections one process held, what an idle subscribed one cost (process RSS and the
    kernel's socket memory), and whether blocks still all arrived.
    """
    out = []
    w = out.append
    w(f"## {spec['title']}\n")
    w(f"Each row: N clients connect and subscribe to `{spec['channels']}` (from load generator processes of up "
      f"to {spec['per_loadgen']:,} clients each: every process's open-file cap is {meta.get('nofile', '?'):,}, "
      "explorerd's included), 2 s idle, then "
      f"{spec['blocks']} blocks at {spec.get('rate', 1)}/s. *open files* = explorerd's file descriptors with all "
      "N connected (its cap is the same). *RSS/conn* = (RSS with N idle subscribed connections − RSS before any) "
      "/ N. Kernel, machine-wide and so both ends of each loopback connection: *TCP buffers* = /proc/net/sockstat "
      "TCP `mem` (pages) idle − before, / N; *socket slabs* = the slab caches a connection's kernel objects live in "
      f"({', '.join(SOCKET_SLABS)}; /proc/slabinfo, active objects × size) idle − before, / N, both ends: "
      "one server socket is about half; *slab* = /proc/meminfo Slab, idle − before, / N. Median over runs, "
      "(min–max) with more than one.\n")
    cols = ("| N | runs ok | subscribed | setup s | open files | RSS before MiB | RSS idle MiB | RSS/conn idle KiB | "
            "TCP buffers/conn KiB | socket slabs/conn KiB (both ends) | slab/conn KiB (both ends) | "
            "RSS peak MiB | expected | delivered | lost | lat p50 ms | lat p99 ms | fan-out ms | CPU µs/msg | "
            "loadgen CPU | foreign CPU | notes |")
    w(cols)
    w("|" + "---|" * cols.count(" | ") + "---|")

    def delta(r, key, per=None):
        k = r.get("kernel") or {}
        a, b = (k.get("base") or {}).get(key), (k.get("idle") or {}).get(key)
        if a is None or b is None:
            return None
        return (b - a) / (per or r["clients"])

    for n in sorted({r["clients"] for r in rows}):
        rs = [r for r in rows if r["clients"] == n]
        ok = [r for r in rs if "lat_p50_ms" in r]
        page_kb = ((ok[0].get("kernel") or {}).get("base") or {}).get("page_kb", 4) if ok else 4
        tcp = [None if delta(r, "tcp_mem_pages") is None else delta(r, "tcp_mem_pages") * page_kb for r in ok]
        lg = max((x for r in ok for x in r.get("loadgen_cpu_share", [])), default=None)
        notes = [e for r in rs for e in r["errors"]]
        w(f"| {n:,} | {runs_ok(rs)} | {fmt([r.get('subscribed') for r in ok], 0)} | "
          f"{fmt([r.get('connect_s') for r in ok])} | {fmt([r.get('open_files_idle') for r in ok], 0)} | "
          f"{fmt([_mib(r.get('rss_base_kb')) for r in ok])} | {fmt([_mib(r.get('rss_idle_kb')) for r in ok])} | "
          f"{fmt([r.get('rss_per_conn_idle_kb') for r in ok], 2)} | {fmt(tcp, 2)} | "
          f"{fmt([delta(r, 'socket_slabs_kb') for r in ok], 2)} | {fmt([delta(r, 'slab_kb') for r in ok], 2)} | "
          f"{fmt([_mib(r.get('rss_peak_kb')) for r in ok])} | {fmt([r.get('expected') for r in ok], 0)} | "
          f"{fmt([r.get('delivered') for r in ok], 0)} | {sum(r.get('lost', 0) for r in ok)} | "
          f"{fmt([r.get('lat_p50_ms') for r in ok])} | {fmt([r.get('lat_p99_ms') for r in ok])} | "
          f"{fmt([r.get('completion_p50_ms') for r in ok])} | {fmt([r.get('cpu_us_per_msg') for r in ok], 2)} | "
          f"{'–' if lg is None else f'{lg:.0%}'} | {fmt([r.get('foreign_cpu_cores') for r in ok], 2)} | "
          f"{'; '.join(notes)} |")
    w("")
    held = [r for r in rows if "lat_p50_ms" in r and not r.get("lost") and not r["errors"]]
    if held:
        top = max(held, key=lambda r: r["clients"])
        w(f"Most held with every block delivered: **{top['clients']:,}** connections in one process "
          f"({top.get('open_files_idle') or '?'} open files of its {meta.get('nofile', '?'):,}).\n")
        rss = median([r.get("rss_per_conn_idle_kb") for r in held])
        slabs = median([delta(r, "socket_slabs_kb") for r in held])
        slab = median([delta(r, "slab_kb") for r in held])
        if None not in (rss, slabs, slab):
            w(f"Per idle subscribed connection (medians over those rows): **{rss:.1f} KiB** of explorerd's RSS; in "
              f"the kernel, per socket (half of both ends), {slabs / 2:.1f} KiB in the socket slab caches and "
              f"{slab / 2:.1f} KiB of slab in all, and no buffer memory while idle: about "
              f"{rss + slab / 2:.0f} KiB on the server's side in all, {(rss + slab / 2) * 20000 / 1048576:.2f} GiB "
              f"for 20,000.\n")
    return "\n".join(out)


def side_sections(side):
    """The measurements without clients (bench/history_memory.py, bench/receipts_cost.py), as their scripts render them."""
    out = []
    for name, data in (side or {}).items():
        if name not in SIDE:
            continue
        module = __import__(SIDE[name]["script"][:-3])
        out.append(f"## {SIDE[name]['title']}\n")
        if data.get("error"):
            out.append(f"Failed: {data['error']}\n")
            continue
        out.append(module.render(data))
    return "\n".join(out)


def report(results, meta, out_path, command, files_by_scenario, started, finished, scenarios, profiles=(), side=None):
    lines = []
    w = lines.append
    w("# explorerd benchmark results\n")
    parts = meta.get("parts") or []
    software = ("python", "twisted", "autobahn", "node", "ws")
    if len(parts) > 1:  # one report of several runs of the suite: each with its own command, date and commit
        w(f"One report of {len(parts)} runs of the suite, each from its own raw results:\n")
        for part in parts:
            begin, end = (datetime.datetime.fromisoformat(part["meta"][k]) if part["meta"].get(k) else None
                          for k in ("started", "finished"))
            when = ("date not recorded" if begin is None else f"{begin:%Y-%m-%d %H:%M} UTC (end not recorded)" if end is None
                    else f"{begin:%Y-%m-%d %H:%M} – {end:%H:%M} UTC ({(end - begin).total_seconds() / 60:.1f} min)")
            differs = [f"{k} {part['meta'].get(k)}" for k in software
                       if len({p["meta"].get(k) for p in parts}) > 1]
            w(f"- {raw_dirs(part['dir'])}: scenarios {', '.join(f'`{x}`' for x in part['scenarios'])}, explorerd at "
              f"`{part['meta'].get('git', '?')}`; `{part['command']}`; {when}; load average at start "
              f"{' '.join(part['meta'].get('loadavg_start', []))}, at end {' '.join(part['meta'].get('loadavg_end', []))}"
              + (f"; {', '.join(differs)}" if differs else ""))
        w("")
    else:
        w(f"Command: `{command}`  ")
        if finished > started:
            w(f"Date: {started:%Y-%m-%d %H:%M} – {finished:%H:%M} UTC ({(finished - started).total_seconds() / 60:.1f} min)  ")
        else:  # re-rendered from a run that did not record its end
            w(f"Date: {started:%Y-%m-%d %H:%M} UTC (start; the end was not recorded)  ")
    w(f"Machine: {meta['nproc']} CPUs ({meta['cpu']}), {meta['ram_gib']} GiB RAM, Linux {meta['kernel']}, "
      f"open files {meta['nofile']}, somaxconn {meta['somaxconn']}  ")
    if meta.get("pin"):
        w("Pinned (taskset): " + ", ".join(f"{kind} on CPU {cpus}" for kind, cpus in sorted(meta["pin"].items()))
          + "; otherwise every process shares every CPU  ")
    same = [k for k in software if len({p["meta"].get(k) for p in parts}) <= 1]
    names = {"python": "Python", "twisted": "Twisted", "autobahn": "Autobahn", "node": "Node", "ws": "ws"}
    w("Software: " + ", ".join(f"{names[k]} {meta[k]}" for k in same)
      + ("" if len(parts) > 1 else f"; explorerd at `{meta['git']}`") + "  ")
    if len(parts) <= 1:
        w(f"Load average at start: {' '.join(meta['loadavg_start'])}; at end: {' '.join(meta.get('loadavg_end', []))}  ")
    shown = os.path.relpath(out_path, REPO) if os.path.abspath(out_path).startswith(REPO + os.sep) else "this report"
    w(f"Written by bench/run.py from the raw results only (no hand edits; `bench/run.py --report-from` writes it "
      f"again); the earlier versions of {shown} are in git history (`git log -p -- {shown}`).\n"
      if shown != "this report" else
      "Written by bench/run.py from the raw results only (no hand edits; `bench/run.py --report-from` writes it again).\n")
    if any(scenario != "e2e" for scenario in scenarios):  # the fan-out scenarios' servers and figures
        w("Servers: **explorerd** = the real Daemon (bench/hubserver.py: each JSON-RPC block checked into an `Entry` and "
          "handed to `hub.publish`, which writes in passes: every client's `newBlock`, then every client's transactions, "
          "then every client's logs, one write per client per pass; since the overload change (c1a15d1) the "
          "transactions and logs go out in 10 ms slices of the reactor's time, and when the next block comes the "
          "clients the previous one's slices had not reached are closed 1013 (overloaded) and those with broadcasts "
          "still queued a block time later 1008 (too slow), both naming where to resume; since the read probes "
          "(ca773d6, 385e2f1) a ping follows each client's transactions in the same write, and a client that has not "
          "answered one sent 0.5 s or more before the next block is closed 1008 (too slow), at most half the clients "
          "a block: *closed by server*); **ws** = minimal Node `ws` server, `client.send(str)` per client and message, "
          "each message stringified once (bench/peers/ws_server.mjs); **ws-prepared** = the same server with each "
          "message also framed once (`ws` `Sender.frame`) and a client's frames of a block (its `newBlock` and its "
          "transactions) written in one corked write, in one pass over the clients; **autobahn** = minimal Autobahn "
          "server, `prepareMessage` once per message, `sendPreparedMessage` per client and message "
          "(bench/peers/autobahn_server.py). The peers have no slow-client policy (a client that does not keep up has "
          "its frames buffered without bound) and are handed the blocks already in wire shape; explorerd converts and "
          "checks each JSON-RPC block itself, inside the timed hand-off. All load from bench/loadgen.mjs (Node `ws` "
          "clients), same blocks, same rate.\n")
        w("Figures are the median over the runs that produced figures, with (min–max) when there was more than one. "
          "*runs ok* = complete runs / runs; a *partial* run (not every client subscribed, or the delivery stalled for "
          "4 s or timed out) stays in the medians and its error is in the notes; a *failed* run has no figures, and its "
          "error is in the notes too. Latency: from the "
          "server's hand-off of the block (just before the hub/broadcast call) to the moment each client process read the "
          "first frame of the block (CLOCK_MONOTONIC on both sides); *whole block* = its last frame of the block (its last "
          "`newTx`, or with `batch` its `newTxs`). *Fan-out* = last "
          "client's last frame − first client's first frame, per block (median over blocks). *msg/s* = messages "
          "delivered / (last arrival − first hand-off); *fan-out msg/s* = one block's messages / its fan-out time. "
          "*CPU µs/msg* = server process user+sys CPU (getrusage / process.cpuUsage) from just before the first block "
          "to the end of the delivery (every expected message arrived, or it stalled or timed out), / messages "
          "delivered; *of it sys* = the kernel's share of that CPU (on loopback a "
          "sender's send() also runs the receiving side's TCP processing, so sys time is higher than over a NIC). "
          "*RSS/conn* = (RSS with N subscribed idle clients − RSS before any "
          "client) / N; *load* uses the peak RSS sampled every 0.1 s during the run. `foreign CPU` = cores' worth of "
          "CPU used by other processes on the machine during the window (noise indicator). *publish call* = "
          "time inside the server's publish call for one block (median; for explorerd: JSON-RPC → `Entry`, encoding, "
          "the `newBlock` pass and, since the overload change, the first 10 ms slice of the transactions, the rest "
          "going out in later reactor turns; before it, every pass's writes). *setup s* = time for all N clients to connect and subscribe (200 "
          "handshakes in flight per load generator); *setup CPU* = server CPU for that, per connection. *loadgen CPU* = "
          "busiest load generator's CPU share over its run (if near 100 % the "
          "client, not the server, is the limit). *lost* = messages expected (every client, every block the server "
          "handed off) and not received by the end of the run, summed over runs, but for the blocks after the newest "
          "one a reading client the server closed had: *closed by server* = those clients by close code (1013 "
          "overloaded, 1008 too slow) and the messages they were not sent (a real client resumes with `since`; the "
          "close reason names the block); what they did not get of their last block and before counts as lost. A "
          "delivery that ended short only by the closed clients is complete.\n")
    silent_done = False
    for scenario in scenarios:
        rows = [r for r in results if r["scenario"] == scenario]
        if not rows:
            continue
        spec = scenarios[scenario]
        files = files_by_scenario.get(scenario, {})
        if scenario in SILENT_FAMILY:
            if not silent_done:
                w(silent_section(results, scenarios, files_by_scenario))
                silent_done = True
            continue
        if scenario == "connections":
            w(connections_section(spec, rows, meta))
            continue
        if spec.get("variants"):
            w(logs_section(spec, rows, files))
            continue
        if scenario == "e2e" and any("mode" in r for r in rows):
            import e2e

            w(e2e.section(spec, [r for r in rows if "mode" in r], meta))
            continue
        w(f"## {spec['title']}\n")
        if files:
            txs = files.get("txs_per_block", [])
            w(f"{spec['blocks']} blocks at {spec.get('rate', 1)}/s, channels `{spec['channels']}`"
              f"{', batch' if spec.get('batch') else ''}{', silent share %g' % spec['silent'] if spec.get('silent') else ''}; "
              f"newBlock frame {files['block_frame_bytes']} B"
              + (f", newTx frame {files['tx_frame_bytes']} B, txs per block {min(txs)}–{max(txs)} (mean {statistics.mean(txs):.0f})"
                 if "newTxs" in spec["channels"] else "") + "\n")
        else:
            w(f"{spec['blocks']} blocks at {spec.get('rate', 1)}/s, channels `{spec['channels']}`, "
              f"{spec.get('txs_per_block', 0)} txs per block\n")
        cols = TX_COLUMNS if "newTxs" in spec["channels"] else COLUMNS
        w("| N | server | runs ok | " + " | ".join(c[0] for c in cols)
          + " | lost | closed by server | dup | order | loadgen CPU | foreign CPU | notes |")
        w("|---|---|---|" + "---|" * len(cols) + "---|---|---|---|---|---|---|")
        keys = sorted({(r["clients"], r["server"]) for r in rows},
                      key=lambda k: (k[0], ALL_SERVERS.index(k[1]) if k[1] in ALL_SERVERS else 99))
        for n, server in keys:
            rs = [r for r in rows if r["clients"] == n and r["server"] == server]
            ok = [r for r in rs if "lat_p50_ms" in r]
            cells = [fmt([r.get(key) for r in ok], d) for _, key, d in cols]
            lost = sum(r.get("lost", 0) for r in ok)
            dup = sum(r.get("dupes", 0) for r in ok)
            order = sum(r.get("order_errors", 0) for r in ok)
            lg = max((x for r in ok for x in r.get("loadgen_cpu_share", [])), default=None)
            foreign = fmt([r.get("foreign_cpu_cores") for r in ok], 2)
            notes = []
            several = len({r.get("source") for r in rs}) > 1  # runs from several raw directories
            for r in rs:
                which = f"{r['source']} run {r['run'] + 1}" if several else f"run {r['run'] + 1}"
                notes += [f"{which}{'' if 'lat_p50_ms' in r else ' failed'}: {e}" for e in r["errors"]]
            if any(r.get("slow_closed") for r in ok):
                notes.append(f"slow-closed {sum(r.get('slow_closed') or 0 for r in ok)}")
            behind = max((r.get("behind_schedule_max_s") or 0 for r in ok), default=0)
            if behind > 0.5:
                notes.append(f"fell behind the block rate by up to {behind:.1f} s")
            ran = sorted({r.get("blocks", blocks_for(spec, n)) for r in rs})  # as the runs recorded it
            if ran != [spec["blocks"]]:
                notes.append(f"{' or '.join(map(str, ran))} blocks a run")
            if not ok:  # no run with figures: nothing was counted
                lost = dup = order = "–"
            w(f"| {n:,} | {server} | {runs_ok(rs)} | " + " | ".join(cells) +
              f" | {lost} | {closed_cell(ok)} | {dup} | {order} | {'–' if lg is None else f'{lg:.0%}'} | {foreign} | "
              f"{'; '.join(notes)} |")
        w("")
        w(best_peer_section(spec, rows))
        variants = [s for s in ("explorerd-split",) if any(r["server"] == s for r in rows)]
        for variant in variants:
            w(f"{variant} ÷ explorerd (medians):\n")
            w("| N | lat p50 | lat p99 | whole block p99 | fan-out | CPU µs/msg |")
            w("|---|---|---|---|---|---|")
            for n in sorted({r["clients"] for r in rows if r["server"] == variant}):
                e = [r for r in rows if r["clients"] == n and r["server"] == "explorerd" and "lat_p50_ms" in r]
                v = [r for r in rows if r["clients"] == n and r["server"] == variant and "lat_p50_ms" in r]
                m = lambda rs, key: median([r.get(key) for r in rs])
                w(f"| {n:,} | " + " | ".join(ratio(m(v, k), m(e, k)) for k in
                                            ("lat_p50_ms", "lat_p99_ms", "whole_p99_ms", "completion_p50_ms",
                                             "cpu_us_per_msg")) + " |")
            w("")
    if side:
        w(side_sections(side))
    w(summary_section(results))
    if profiles:
        w("## Where explorerd's CPU goes\n")
        for path in profiles:
            w(f"`{os.path.relpath(path, REPO)}`:\n")
            with open(path) as f:
                text = f.read()
            head = text.split("## top 30 by inclusive")[0].split("# pstats")[0].strip().splitlines()[:18]
            w("```\n" + "\n".join(head) + "\n```\n")
    w("Raw per-run JSON (every figure above, per run, plus loadgen event-loop delay, handoff times, silent "
      f"clients' close codes): {raw_dirs(meta.get('out_dirs') or meta['out_dir'])}, committed with this report "
      "(the block files and the processes' logs are not).\n")
    with open(out_path, "w") as f:
        f.write("\n".join(lines))


def closed_cell(ok):
    """
    The *closed by server* cell over a cell's runs: reading clients the server closed, by code,
    what they were not sent after, when (s after the first block: first–last, 1008 and 1013),
    and how many clients were still connected at the end.
    """
    if not any("server_closed" in r for r in ok):
        return "–"  # raw results from before the load generators reported them
    closed = {}
    for r in ok:
        for code, k in (r.get("server_closed") or {}).items():
            closed[code] = closed.get(code, 0) + k
    if not closed:
        return "0"
    codes = ", ".join(f"{code} ×{k:,}" for code, k in sorted(closed.items()))
    when = []
    for r in ok:
        for kind, code in (("too_slow", "1008"), ("overloaded", "1013")):
            c = ((r.get("closes_s") or {}).get(kind) or {})
            if c.get("n"):
                when.append(f"{code} at {c['first']}–{c['last']} s")
    left = [r.get("server_clients_end") for r in ok if r.get("server_clients_end") is not None]
    return (f"{codes}; {sum(r.get('not_sent_after_close') or 0 for r in ok):,} msgs not sent after, "
            f"{sum(r.get('lost_rest_at_close') or 0 for r in ok):,} of lost the rest of their last block"
            + (f"; {', '.join(when)}" if when else "")
            + (f"; {', '.join(f'{x:,}' for x in left)} clients left at the end" if left else ""))


def best_peer_section(spec, rows):
    """
    explorerd ÷ the best peer, per N and figure: the lowest of the peers' medians (the highest
    for a rate), whichever peer that is; and the messages each lost.
    """
    peers = [p for p in PEERS if any(r["server"] == p for r in rows)]
    if not any(r["server"] == "explorerd" for r in rows) or not peers:
        return ""
    figures = [f for f in RATIO_FIGURES if f[1] != "whole_p99_ms" or "newTxs" in spec["channels"]]
    missing = [p for p in PEERS if p not in peers]
    out = [f"explorerd ÷ the best peer in each cell (medians; the best of the peers run here ({', '.join(peers)}"
           f"{'; not run: ' + ', '.join(missing) if missing else ''}) for each figure on its own, named in brackets: "
           "the lowest, or the highest for *fan-out msg/s*; < 1 means explorerd "
           "is lower: better, except for *fan-out msg/s*, where > 1 is better; † = the figure includes a "
           "partial run, see the notes above):\n",
           "| N | " + " | ".join(label + (" (higher is better)" if higher else "") for label, _, higher in figures)
           + " | lost: explorerd / peers |",
           "|---|" + "---|" * len(figures) + "---|"]
    for n in sorted({r["clients"] for r in rows}):
        lost = {s: sum(r.get("lost", 0) for r in rows if r["clients"] == n and r["server"] == s and "lat_p50_ms" in r)
                for s in ["explorerd"] + peers
                if any(r["clients"] == n and r["server"] == s and "lat_p50_ms" in r for r in rows)}
        lost_cell = f"{lost.get('explorerd', '–')} / " + ", ".join(f"{p} {v}" for p, v in lost.items() if p != "explorerd")
        out.append(f"| {n:,} | " + " | ".join(vs_best(rows, n, key, higher) for _, key, higher in figures)
                   + f" | {lost_cell} |")
    return "\n".join(out) + "\n"


def summary_section(results):
    """
    Scenarios (a)-(f) as rows: explorerd's key figures, every peer's, and explorerd ÷ the best
    peer for each figure (named); the cells' partial and failed runs in the notes.
    """
    def cell(scenario, server, n):
        return [r for r in results if r["scenario"] == scenario and r["server"] == server and r["clients"] == n]

    def pick(scenario, wanted, exact):
        ns = sorted({r["clients"] for r in results if r["scenario"] == scenario})
        if not ns or (exact and wanted not in ns):
            return None
        return wanted if wanted in ns else ns[-1] if wanted > ns[-1] else min(ns, key=lambda x: abs(x - wanted))

    # (title, scenario, N wanted, only that N, [(label, key, higher is better)])
    spec = [("(a) newBlocks subscribers at 1 block/s", "blocks", 10000, False,
             [("lat p99 ms", "lat_p99_ms", False), ("fan-out ms", "completion_p50_ms", False),
              ("CPU µs/msg", "cpu_us_per_msg", False)]),
            ("(b) newBlocks+newTxs, ~190-tx blocks", "txs", 1000, False,
             [("lat p99 ms", "lat_p99_ms", False), ("fan-out msg/s", "fanout_msgs_per_s", True),
              ("CPU µs/msg", "cpu_us_per_msg", False)]),
            ("(b) at 10,000 clients: one frame per transaction", "txs", 10000, True,
             [("lat p99 ms", "lat_p99_ms", False), ("whole block p99 ms", "whole_p99_ms", False),
              ("CPU µs/msg", "cpu_us_per_msg", False), ("lost messages", "lost", False)]),
            ("(c) whole block (block + all tx frames)", "txs", 100, False, [("whole block p99 ms", "whole_p99_ms", False)]),
            ("(d) batch mode", "batch", 1000, False,
             [("lat p99 ms", "lat_p99_ms", False), ("whole block p99 ms", "whole_p99_ms", False)]),
            ("(e) idle connections", "blocks", 10000, False, [("RSS/conn idle KiB", "rss_per_conn_idle_kb", False)]),
            ("(f) 10% never reading: others' p99", "silent", 1000, False,
             [("lat p99 ms", "lat_p99_ms", False), ("whole block p99 ms", "whole_p99_ms", False),
              ("RSS peak MiB", "rss_peak_kb", False)])]
    peers = [p for p in PEERS if any(r["server"] == p for r in results)]
    out = ["## Summary: scenarios as rows (medians)\n",
           "*best peer*: the best of the peers' medians for that figure (the lowest; the highest for msg/s), "
           "and explorerd ÷ it (< 1: explorerd lower; for msg/s > 1 is better); † = it includes a partial run. "
           "*lost messages* is the sum over the cell's runs.\n",
           "| scenario | N | figure | explorerd | " + " | ".join(peers) + " | best peer | explorerd ÷ best | notes |",
           "|---|---|---|---|" + "---|" * len(peers) + "---|---|---|"]
    header = len(out)
    for title, scenario, wanted, exact, figures in spec:
        n = pick(scenario, wanted, exact)
        if n is None:
            continue
        rows = [r for r in results if r["scenario"] == scenario]
        notes = []
        for server in ["explorerd"] + peers:
            rs = cell(scenario, server, n)
            complete, partial, failed = run_states(rs)
            if partial or failed:
                notes.append(f"{server}: runs ok {runs_ok(rs)}")
        for label, key, higher in figures:
            scale = 1 / 1024 if key == "rss_peak_kb" else 1
            if key == "lost":
                vals = {s: (sum(r.get("lost", 0) for r in cell(scenario, s, n) if "lat_p50_ms" in r)
                            if any("lat_p50_ms" in r for r in cell(scenario, s, n)) else None)
                        for s in ["explorerd"] + peers}
                found = [(v, peers.index(p), p) for p, v in vals.items() if p != "explorerd" and v is not None]
                peer, theirs = (min(found)[2], min(found)[0]) if found else (None, None)
                best = "–" if peer is None else f"{peer}: {theirs:,}"
                versus = "–"
            else:
                vals = {s: median([r.get(key) for r in cell(scenario, s, n) if "lat_p50_ms" in r]) for s in ["explorerd"] + peers}
                vals = {s: None if v is None else v * scale for s, v in vals.items()}
                peer, theirs, partial = best_peer(rows, n, key, higher, tuple(peers))
                best = "–" if peer is None else f"{peer}{'†' if partial else ''}"
                versus = "–" if peer is None else vs_best(rows, n, key, higher).split(" (")[0]
            f = lambda v: "–" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"
            out.append(f"| {title} | {n:,} | {label} | {f(vals['explorerd'])} | "
                       + " | ".join(f(vals[p]) for p in peers) + f" | {best} | {versus} | {'; '.join(notes)} |")
    if len(out) == header:
        return ""  # none of (a)-(f) ran
    return "\n".join(out) + "\n"


def run_side(name, out_dir, quick, timeout=1800):
    """One measurement without clients, in a process of its own; its raw JSON (or the error)."""
    spec = SIDE[name]
    log_dir = os.path.join(out_dir, "logs", name)
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    argv = [sys.executable, os.path.join(HERE, spec["script"]), "--json", path] + (spec["quick_args"] if quick else spec["args"])
    proc = Proc(name, argv, log_dir, json_lines=False)
    try:
        code = proc.p.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    proc.stop()
    if code != 0 or not os.path.exists(path):
        return {"error": f"{spec['script']} {'timed out' if code is None else f'exited {code}'}; see {proc.stderr_path}"}
    with open(path) as f:
        return json.load(f)


def pyspy_binary():
    for candidate in (os.environ.get("PYSPY", ""), shutil.which("py-spy") or "",
                      os.path.join(os.path.dirname(sys.executable), "py-spy")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def summarize_pyspy(raw_path, out, top=30):
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) stacks."""
    selfs, incl, total = {}, {}, 0
    with open(raw_path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count)
            total += count
            frames = [re.sub(r":\d+\)$", ")", fr) for fr in stack.split(";")]
            for fr in set(frames):
                incl[fr] = incl.get(fr, 0) + count
            selfs[frames[-1]] = selfs.get(frames[-1], 0) + count
    out.write(f"# py-spy, {total} samples (sampled while the process ran; idle samples excluded by py-spy)\n\n")
    for title, table in (("self", selfs), ("inclusive", incl)):
        out.write(f"## top {top} by {title} share\n")
        for fr, c in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            out.write(f"{100 * c / max(total, 1):6.1f}%  {fr}\n")
        out.write("\n")


def summarize_cprofile(prof, out, top=20):
    """Self time per function as a share of the busy time (the reactor's epoll wait left out)."""
    import pstats

    rows = []
    for (path, line, fn), (cc, nc, tt, ct, callers) in pstats.Stats(prof).stats.items():
        where = os.path.relpath(path, REPO) if path.startswith(REPO) else os.path.basename(path)
        rows.append((tt, nc, f"{fn} ({where}:{line})" if line else fn))
    busy = sum(tt for tt, nc, name in rows if "select.epoll" not in name) or 1e-9
    out.write(f"## top {top} by self time, % of {busy:.3f} s busy (epoll wait excluded)\n")
    for tt, nc, name in sorted((r for r in rows if "select.epoll" not in r[2]), key=lambda r: -r[0])[:top]:
        out.write(f"{100 * tt / busy:6.1f}%  {nc:>9} calls  {name}\n")


def profile_runs(scenarios, out_dir, quick):
    """
    Profile explorerd in (a) and (b): once under cProfile (exact call counts, inflated times) and,
    if py-spy is installed, once sampled by py-spy (true proportions).  Text summaries go next to
    the raw results; their paths are returned.
    """
    import pstats

    outputs = []
    spy = pyspy_binary()
    for scenario, n in (("blocks", 1000 if quick else 10000), ("txs", 200 if quick else 1000)):
        spec = dict(scenarios[scenario], clients={n: 1}, blocks_for={})
        files = make_files(spec, out_dir, f"profile-{scenario}")
        prof = os.path.join(out_dir, f"profile-{scenario}-{n}.prof")
        r = run_cell(f"profile-{scenario}", spec, "explorerd", n, 0, files, out_dir, profile=prof)
        text_path = os.path.join(out_dir, f"profile-{scenario}-{n}.cprofile.txt")
        if os.path.exists(prof):
            with open(text_path, "w") as f:
                f.write(f"# explorerd, scenario {scenario}, N={n}, messages delivered {r.get('delivered')}, "
                        f"CPU {r.get('server_cpu_s')} s (under cProfile, which inflates Python-level calls)\n")
                summarize_cprofile(prof, f)
                f.write("\n\n# pstats, by internal time\n")
                st = pstats.Stats(prof, stream=f)
                st.sort_stats("tottime").print_stats(40)
            outputs.append(text_path)
        if spy:
            raw = os.path.join(out_dir, f"profile-{scenario}-{n}.pyspy.raw")
            setup_raw = os.path.join(out_dir, f"profile-setup-{n}.pyspy.raw") if scenario == "blocks" else ""
            r = run_cell(f"pyspy-{scenario}", spec, "explorerd", n, 0, files, out_dir, pyspy=raw, pyspy_setup=setup_raw)
            if os.path.exists(raw):
                text_path = os.path.join(out_dir, f"profile-{scenario}-{n}.pyspy.txt")
                with open(text_path, "w") as f:
                    f.write(f"# explorerd, scenario {scenario}, N={n}, messages delivered {r.get('delivered')}, "
                            f"CPU {r.get('server_cpu_s')} s, {r.get('cpu_us_per_msg')} µs/msg\n")
                    summarize_pyspy(raw, f)
                outputs.append(text_path)
            if setup_raw and os.path.exists(setup_raw):
                text_path = os.path.join(out_dir, f"profile-setup-{n}.pyspy.txt")
                with open(text_path, "w") as f:
                    f.write(f"# explorerd, {n} clients connecting and subscribing, {r.get('connect_s', 0):.1f} s, "
                            f"{r.get('setup_cpu_us_per_conn')} µs CPU per connection\n")
                    summarize_pyspy(setup_raw, f)
                outputs.append(text_path)
    for path in outputs:
        print(f"bench: profile written to {os.path.relpath(path, REPO)}", flush=True)
    return outputs


def raw_dirs(out_dir):
    """Where a report's raw results are: one directory, or (a report of several runs) each."""
    dirs = out_dir if isinstance(out_dir, list) else [out_dir]
    return ", ".join(f"`{os.path.relpath(d, REPO)}/`" for d in dirs)


def raw_parts(raws, dirs):
    """Each raw results file's own run of the suite: where, its command, its meta (commit, dates), its scenarios."""
    return [{"dir": os.path.join(HERE, "results", os.path.basename(os.path.normpath(d))), "command": raw["command"],
             "meta": raw["meta"], "scenarios": list(dict.fromkeys(r["scenario"] for r in raw["results"]))
             + list(raw.get("side") or {})} for raw, d in zip(raws, dirs)]


def report_again(raw_dir, out_path):
    """The report of a finished run, from its raw results only (the report is never edited by hand)."""
    import tempfile

    dirs = [d for d in raw_dir.split(",") if d]
    raws = []
    for d in dirs:
        with open(os.path.join(d, "results.json")) as f:
            raws.append(json.load(f))
    # Several runs of the same command (a re-run on a quieter machine): one report of all their runs.
    raw = raws[0]
    meta, results = dict(raw["meta"]), [r for each in raws for r in each["results"]]
    meta["parts"] = raw_parts(raws, dirs)
    for each, d in zip(raws, dirs):  # which run of the suite a result is from, for the notes
        for r in each["results"]:
            r["source"] = os.path.basename(os.path.normpath(d))
    if len(dirs) > 1:
        meta["out_dir"] = [os.path.join(HERE, "results", os.path.basename(d.rstrip("/"))) for d in dirs]
        if "finished" in raws[-1]["meta"]:
            meta["finished"] = raws[-1]["meta"]["finished"]
        meta["loadavg_end"] = raws[-1]["meta"].get("loadavg_end", [])
    raw_dir = dirs[0]
    quick = raw_dir.rstrip("/").endswith("-quick")
    base = QUICK if quick else FULL
    scenarios = {s: dict(base[s]) for s in dict.fromkeys(r["scenario"] for r in results)}
    for s, spec in scenarios.items():
        spec["clients"] = {n: sum(1 for r in results if r["scenario"] == s and r["clients"] == n)
                           for n in sorted({r["clients"] for r in results if r["scenario"] == s})}
    if "started" in meta:
        started = datetime.datetime.fromisoformat(meta["started"])
    else:  # runs before the start was recorded: the directory's name is it
        stamp = os.path.basename(raw_dir.rstrip("/"))[:15]
        started = datetime.datetime.strptime(stamp, "%Y%m%d-%H%M%S").replace(tzinfo=datetime.timezone.utc)
    finished = datetime.datetime.fromisoformat(meta["finished"]) if "finished" in meta else started
    with tempfile.TemporaryDirectory() as tmp:
        files = {s: make_files(spec, tmp, s) for s, spec in scenarios.items() if s != "e2e"}
        report(results, meta, out_path or os.path.join(HERE, "RESULTS.md"), raw["command"], files, started,
               finished, scenarios, (), raw.get("side") or {})
    print(f"bench: report written to {os.path.relpath(out_path, REPO) if out_path else 'bench/RESULTS.md'} "
          f"from {', '.join(dirs)}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke run: small N, 1 run per cell, few blocks")
    p.add_argument("--scenarios", default="blocks,txs,batch,silent,alone,e2e,logs,memory,receipts",
                   help="comma list from: blocks, txs, batch, silent, alone, silent-nolimit, connections, e2e, "
                        "logs, memory, receipts (default: all but silent-nolimit and connections)")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help=f"comma list from: {', '.join(ALL_SERVERS)} (default: {','.join(SERVERS)})")
    p.add_argument("--clients", default="", help="override N for every scenario, e.g. 1000,5000 "
                   "(alone and alone-nolimit take 0.9 N: the reading clients of silent at N)")
    p.add_argument("--runs", type=int, default=0, help="override runs per cell")
    p.add_argument("--blocks", type=int, default=0, help="override blocks per run")
    p.add_argument("--verify", action="store_true", help="loadgen JSON.parses every message too (slower)")
    p.add_argument("--profile", action="store_true",
                   help="also profile explorerd in (a) and (b): cProfile, and py-spy if installed (PYSPY=path)")
    p.add_argument("--profile-only", action="store_true", help="only the profiled runs (full-size N unless --quick)")
    p.add_argument("--pin", default="", metavar="SERVER_CPUS/LOADGEN_CPUS",
                   help="run the server and the load generators on separate CPUs (taskset), e.g. 0/1: "
                        "tells the server's limits from those of the machine its clients share with it")
    p.add_argument("--out", default="", help="report path (default bench/RESULTS.md, or bench/RESULTS-quick.md with --quick)")
    p.add_argument("--report-from", default="", metavar="DIR[,DIR...]",
                   help="write the report again from committed raw results (DIR/results.json; several: one "
                        "report of all their runs), running nothing")
    args = p.parse_args()
    if args.report_from:
        return report_again(args.report_from, args.out)
    if args.pin:
        server_cpus, _, loadgen_cpus = args.pin.partition("/")
        if not server_cpus or not loadgen_cpus or not shutil.which("taskset"):
            p.error("--pin takes SERVER_CPUS/LOADGEN_CPUS (e.g. 0/1) and needs taskset (util-linux)")
        PIN.update(server=server_cpus, loadgen=loadgen_cpus)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    ensure_python_deps()
    ensure_node_deps()
    nofile = raise_nofile()
    base = QUICK if args.quick else FULL
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in chosen:
        if s not in base and s not in SIDE:
            raise SystemExit(f"bench: unknown scenario {s!r}")
    side_chosen = [s for s in chosen if s in SIDE]
    chosen = [s for s in chosen if s not in SIDE]
    e2e_modes = FULL["e2e"]["servers"]
    for s in servers:
        if s not in ALL_SERVERS and s not in e2e_modes:
            raise SystemExit(f"bench: unknown server {s!r} (e2e modes: {', '.join(e2e_modes)})")
    scenarios = {}
    for s in chosen:
        spec = dict(base[s])
        if args.clients:
            # A baseline of reading clients alone takes the share of N that reads in (f).
            ns = [round(int(x) * spec.get("clients_scale", 1)) for x in args.clients.split(",")]
            spec["clients"] = {n: spec["clients"].get(n, max(spec["clients"].values())) for n in ns}
        if args.runs:
            spec["clients"] = {n: args.runs for n in spec["clients"]}
            spec.pop("peer_runs", None)
        if args.blocks:
            spec["blocks"] = args.blocks
            spec["blocks_for"] = {}
        if max(spec["clients"]) / max(1, math.ceil(max(spec["clients"]) / spec["per_loadgen"])) > nofile - 100:
            raise SystemExit(f"bench: open-file limit {nofile} is too low")
        if s == "e2e" and any(x in e2e_modes for x in servers):  # --servers picks e2e modes too
            spec["servers"] = tuple(x for x in e2e_modes if x in servers)
        scenarios[s] = spec

    started = datetime.datetime.now(datetime.timezone.utc)
    out_dir = os.path.join(HERE, "results", started.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else ""))
    os.makedirs(out_dir, exist_ok=True)
    out_path = args.out or os.path.join(HERE, "RESULTS-quick.md" if args.quick else "RESULTS.md")
    command = " ".join(["python3"] + [os.path.relpath(sys.argv[0], REPO) if i == 0 else a for i, a in enumerate(sys.argv)])
    meta = machine()
    meta["out_dir"] = out_dir
    print(f"bench: writing to {os.path.relpath(out_dir, REPO)}; load average {' '.join(meta['loadavg_start'])}", flush=True)

    files_by_scenario = {}
    plan = []
    max_runs = max((max(s["clients"].values()) for s in scenarios.values()), default=0)
    for scenario, spec in scenarios.items():
        if scenario != "e2e":
            files_by_scenario[scenario] = make_files(spec, out_dir, scenario)
    for run_index in range(max_runs):
        for scenario, spec in scenarios.items():
            for n, runs in sorted(spec["clients"].items()):
                if run_index >= runs:
                    continue
                extra = [s for s, ns in spec.get("extra_servers", {}).items() if n in ns and s not in servers]
                for server in list(spec.get("servers", servers)) + extra:
                    if not server.startswith("explorerd") and run_index >= spec.get("peer_runs", runs):
                        continue
                    if server in spec.get("servers_for", {}) and n not in spec["servers_for"][server]:
                        continue
                    if scenario == "e2e" or server in servers or server in extra:
                        for variant in spec.get("variants") or [""]:
                            plan.append((scenario, server, n, run_index, variant))
    results = []
    profiles = []
    side = {}
    if args.profile_only:
        plan = []
        side_chosen = []
        args.profile = True
    t0 = time.monotonic()
    try:
        for i, (scenario, server, n, run_index, variant) in enumerate(plan):
            spec = scenarios[scenario]
            if variant:
                spec = dict(spec, **spec["variants"][variant])
            label = f"[{i + 1}/{len(plan)}] {scenario}{' ' + variant if variant else ''} {server} N={n} run {run_index + 1}"
            print(f"bench: {label} ...", end=" ", flush=True)
            t = time.monotonic()
            if scenario == "e2e":
                import e2e

                r = e2e.run_cell(spec, server, n, run_index, out_dir, verify=args.verify)
                print(f"{e2e.progress(r)} ({time.monotonic() - t:.0f}s)", flush=True)
            else:
                r = run_cell(scenario, spec, server, n, run_index, files_by_scenario[scenario], out_dir,
                             verify=args.verify, variant=variant)
            results.append(r)
            if scenario == "e2e":
                pass
            elif "lat_p50_ms" in r:
                print(f"p50 {r['lat_p50_ms']} ms, p99 {r['lat_p99_ms']} ms, whole p99 {r['whole_p99_ms']} ms, "
                      f"{r['cpu_us_per_msg']} µs/msg, lost {r['lost']}, dup {r['dupes']}"
                      f" ({time.monotonic() - t:.0f}s)" + (f" ERRORS: {r['errors']}" if r["errors"] else ""), flush=True)
            else:
                print(f"FAILED: {r['errors']} ({time.monotonic() - t:.0f}s)", flush=True)
            time.sleep(1.0)
        for name in side_chosen:
            print(f"bench: {name} ({SIDE[name]['script']}) ...", end=" ", flush=True)
            t = time.monotonic()
            side[name] = run_side(name, out_dir, args.quick)
            print(f"{'FAILED: ' + side[name]['error'] if side[name].get('error') else 'done'} "
                  f"({time.monotonic() - t:.0f}s)", flush=True)
        if args.profile:
            profiles = profile_runs({**base, **scenarios}, out_dir, args.quick)
    finally:
        kill_all()
        finished = datetime.datetime.now(datetime.timezone.utc)
        meta["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        meta["started"], meta["finished"] = started.isoformat(), finished.isoformat()
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            # The blocks' facts (frame sizes, txs per block) go with the results: the block files are not committed.
            facts = {name: {k: v for k, v in known.items() if k not in ("raw", "wire")}
                     for name, known in files_by_scenario.items()}
            json.dump({"meta": meta, "command": command, "results": results, "side": side, "files": facts}, f, indent=1)
        if results or profiles or side:
            report(results, meta, out_path, command, files_by_scenario, started, finished, scenarios, profiles, side)
            print(f"bench: {len(results)} runs in {(time.monotonic() - t0) / 60:.1f} min; report: "
                  f"{os.path.relpath(out_path, REPO)}", flush=True)


if __name__ == "__main__":
    main()
