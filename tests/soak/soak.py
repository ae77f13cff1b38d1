"""
A soak run of a real explorerd: one ``twistd`` process tailing its embedded replay node at 10x
mainnet's block rate, and thousands of WebSocket clients (``clients.mjs``, in one or more Node
processes) that subscribe, verify every message, churn, stall and attack.

    PATH=/tmp/venv/bin:$PATH python tests/soak/soak.py --minutes 30 --clients 2000 \\
        --report soak-report.md

What it measures (every ``--sample-every`` seconds and at the end): the server's RSS
(``/proc/PID/status`` VmRSS), its open file descriptors (``/proc/PID/fd``), its CPU use, the
connections ``/healthz`` counts; per role what the clients saw (messages, blocks, txs, reorgs,
close codes, errors, violations of the sequence rules); ``Unhandled``/``Traceback`` lines in the
daemon's log; and the well-behaved clients' chains compared with the replay node's canonical chain
(``eth_getBlockByNumber`` on the embedded node's port, read from its log line).

``run(...)`` does the same from Python and returns every figure as a dict (tests/test_soak.py).
Everything runs on 127.0.0.1; the processes started here are stopped by PID; every loop is
bounded in time.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLIENTS_MJS = os.path.join(HERE, "clients.mjs")

# The mix of roles, as shares of --clients (2,000 → 600/600/300/100/200/100/100).
MIX = (("batch", 0.30), ("blocks", 0.30), ("hashes", 0.15), ("pertx", 0.05),
       ("churn", 0.10), ("slow", 0.05), ("hostile", 0.05))
WELL_BEHAVED = ("batch", "blocks", "hashes", "pertx", "churn")

LISTENING = re.compile(r"explorerd listening on .*http://127\.0\.0\.1:(\d+)/")
NODE_LISTENING = re.compile(r"replay node listening on .*http://127\.0\.0\.1:(\d+)/")
BAD_LOG = re.compile(r"Unhandled|Traceback")


def _bin(name):
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.path.exists(here) else shutil.which(name)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBSOCKET_", "API_CORS", "EXPLORERD_"))}
    # twistd finds the explorerd plugin in the checkout's twisted/plugins even when not installed
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


_OPTIONS = None


def daemon_options():
    """The options this checkout's ``twistd explorerd`` accepts (some are newer than others)."""
    global _OPTIONS
    if _OPTIONS is None:
        out = subprocess.run([_bin("twistd"), "-n", "explorerd", "--help"], capture_output=True, text=True,
                             env=clean_env(), cwd=ROOT, timeout=60)
        _OPTIONS = frozenset(re.findall(r"--([a-z][a-z0-9-]*)=", out.stdout))
    return _OPTIONS


def optional(option, value):
    """``["--option", value]`` if the daemon has that option, else nothing."""
    return [f"--{option}", str(value)] if option in daemon_options() else []


def role_counts(clients):
    counts = {role: int(round(clients * share)) for role, share in MIX}
    counts["batch"] += clients - sum(counts.values())
    return counts


def split(counts, procs):
    """Role counts for each of ``procs`` Node processes (as even as possible)."""
    parts = [{} for _ in range(procs)]
    for role, n in counts.items():
        for i in range(procs):
            parts[i][role] = n // procs + (1 if i < n % procs else 0)
    return parts


# ---------------------------------------------------------------- the daemon's process

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


class Daemon:
    """A real ``twistd -n explorerd``, its log in a file; finds its ports in the log."""

    def __init__(self, args, workdir, timeout=30, log_name="explorerd.log"):
        self.log_path = os.path.join(workdir, log_name)
        self._log = open(self.log_path, "w")
        argv = [_bin("twistd"), "-n", "--pidfile=", "explorerd"] + list(args)
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=clean_env(),
                                     cwd=workdir)
        self.pid = self.proc.pid
        self.port = int(self.wait_for(LISTENING, timeout).group(1))
        node = self.search(NODE_LISTENING)
        self.node_port = int(node.group(1)) if node else None
        self.http = f"http://127.0.0.1:{self.port}"
        self.url = f"ws://127.0.0.1:{self.port}/v1/stream"

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def search(self, pattern):
        return pattern.search(self.text())

    def wait_for(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = self.search(pattern)
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"explorerd never logged {pattern.pattern!r}; log:\n{self.text()[-4000:]}")

    # Monitoring requests come from their own loopback address, so that per-IP limits on the
    # clients' address (127.0.0.1) do not apply to them.
    monitor_address = "127.0.0.254"

    def get(self, path, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout,
                                          source_address=(self.monitor_address, 0))
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read().decode()
            if r.status != 200:
                raise urllib.error.HTTPError(self.http + path, r.status, body[:200], r.headers, None)
            return body
        finally:
            conn.close()

    def health(self):
        try:
            return json.loads(self.get("/healthz"))
        except urllib.error.HTTPError as e:
            try:
                return dict(json.loads(e.msg), http_status=e.code)
            except ValueError:
                return {"error": f"HTTP {e.code}", "http_status": e.code}
        except Exception as e:  # a sample must not end the run
            return {"error": repr(e)}

    def metrics(self):
        """``{(name, labels): value}`` from /metrics."""
        out = {}
        for line in self.get("/metrics").splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
            if m:
                out[(m.group(1), m.group(2) or "")] = float(m.group(3))
        return out

    def sample(self):
        return {"rss_kib": rss_kib(self.pid), "fds": fd_count(self.pid), "cpu_s": cpu_seconds(self.pid)}

    def stop(self, timeout=20):
        """SIGTERM, wait; returns the exit status (twistd re-raises SIGTERM: -15 is clean)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


PUBLISHED = re.compile(r"\] block (\d+) (0x[0-9a-f]{64}) \(")
DETACH = {
    "too slow (queue limit)": re.compile(r"detached: too slow: \d+ messages waiting"),
    "too slow (write deadline)": re.compile(r"detached: too slow: (not reading|[\d.]+s behind)"),
    "too slow (read probe)": re.compile(r"detached: too slow: block \d+ not read"),
    "ping timeout": re.compile(r"detached: no pong to our pings"),
    "message budget": re.compile(r"exceeded its message budget"),
}


class LogWatcher:
    """Reads the daemon's log as it grows: bad lines, detach reasons, the blocks it published."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.partial = ""
        self.lines = 0
        self.bad = []
        self.bad_count = 0
        self.reasons = {k: 0 for k in DETACH}
        self.published = []  # (height, hash), the last 400

    def poll(self):
        with open(self.path, errors="replace") as f:
            f.seek(self.offset)
            chunk = f.read()
            self.offset = f.tell()
        text = self.partial + chunk
        lines = text.split("\n")
        self.partial = lines.pop()
        for line in lines:
            self.lines += 1
            if BAD_LOG.search(line):
                self.bad_count += 1
                if len(self.bad) < 20:
                    self.bad.append(line)
            if "detached" in line or "budget" in line:
                for k, pattern in DETACH.items():
                    if pattern.search(line):
                        self.reasons[k] += 1
            m = PUBLISHED.search(line)
            if m:
                self.published.append((int(m.group(1)), m.group(2)))
                del self.published[:-400]

    def old_block(self, behind=200):
        """A published block about ``behind`` blocks back (the server's history keeps 256)."""
        if not self.published:
            return None
        height, block_hash = self.published[max(0, len(self.published) - 1 - behind)]
        return {"height": height, "hash": block_hash}


def rpc(port, calls, timeout=10):
    body = json.dumps([{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)])
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        answers = json.loads(r.read())
    answers.sort(key=lambda a: a["id"])
    return [a.get("result") for a in answers]


def canonical_hashes(node_port, heights, batch=100):
    out = {}
    heights = sorted(heights)
    for i in range(0, len(heights), batch):
        chunk = heights[i:i + batch]
        blocks = rpc(node_port, [("eth_getBlockByNumber", [hex(h), False]) for h in chunk])
        for h, b in zip(chunk, blocks):
            out[h] = b["hash"] if b else None
    return out


# ---------------------------------------------------------------- the clients' processes

class ClientProcess:
    """One ``node clients.mjs``; keeps its last progress line and its final one."""

    def __init__(self, url, seconds, roles, ident, seed, slow_hold, ramp, report_every, history_seconds,
                 slow_kinds, late_after, since=None, resume=False):
        argv = ["node", CLIENTS_MJS, "--url", url, "--seconds", str(seconds), "--id", str(ident),
                "--seed", str(seed), "--slow-hold", str(slow_hold), "--ramp", str(ramp),
                "--report-every", str(report_every), "--history-seconds", str(history_seconds),
                "--slow-kinds", ",".join(slow_kinds), "--late-after", str(late_after),
                "--roles", ",".join(f"{k}={v}" for k, v in roles.items() if v)]
        if since:
            argv += ["--since-height", str(since["height"]), "--since-hash", since["hash"]]
        if resume:
            argv += ["--resume"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT)
        self.progress = []
        self.final = None
        self.stderr = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def tell(self, message):
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def _read(self):
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                self.stderr.append(line)
                continue
            if msg.get("kind") == "final":
                self.final = msg
            else:
                self.progress.append(msg)

    def _read_err(self):
        for line in self.proc.stderr:
            if len(self.stderr) < 200:
                self.stderr.append(line)

    def wait(self, timeout):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        deadline = time.monotonic() + 5
        while self.final is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.proc.returncode


def merge_roles(finals):
    """Sum the per-role stats of several client processes."""
    merged = {}
    for final in finals:
        for role, s in final["roles"].items():
            m = merged.setdefault(role, {})
            for k, v in s.items():
                if isinstance(v, (int, float)):
                    m[k] = m.get(k, 0) + v
                elif isinstance(v, dict) and k == "open_held_max":
                    d = m.setdefault(k, {})
                    for kk, vv in v.items():
                        d[kk] = max(d.get(kk, 0), vv)
                elif isinstance(v, dict):
                    d = m.setdefault(k, {})
                    for kk, vv in v.items():
                        d[kk] = d.get(kk, [] if isinstance(vv, list) else 0) + vv
                elif isinstance(v, list):
                    m.setdefault(k, []).extend(v[:max(0, 20 - len(m.get(k, [])))])
    return merged


# ---------------------------------------------------------------- the run

def run(minutes=30.0, clients=2000, procs=2, report=None, sample_every=10.0, slow_hold=75.0,
        block_time=1.2, extra_args=(), echo=print, workdir=None, slow_kinds=("silent", "keepalive", "burst"),
        ping_interval=30.0, pong_timeout=60.0, write_deadline=10.0, shutdown_timeout=5.0):
    """
    Run the soak; returns every figure as a dict (``verdict``: ``{check: (ok, detail)}``).
    The four timeouts are the daemon's (its defaults here); the checks are bounded by them.
    """
    seconds = max(10.0, minutes * 60.0)
    counts = role_counts(clients)
    ramp = min(10.0, seconds / 6)
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="explorerd-soak-")
    args = ["--listen", "tcp:0:interface=127.0.0.1:backlog=4096", "--replay-block-time", str(block_time),
            "--poll-interval", "0.2s", "--rate-limit", "0", "--max-connections", "5000", "--state-dir="]
    args += optional("max-connections-per-ip", 0)  # every client comes from 127.0.0.1
    args += ["--ping-interval", f"{ping_interval:g}s", "--pong-timeout", f"{pong_timeout:g}s",
             "--write-deadline", f"{write_deadline:g}s", "--shutdown-timeout", f"{shutdown_timeout:g}s"]
    args += list(extra_args)
    result = {"minutes": minutes, "clients": clients, "procs": procs, "roles_planned": counts,
              "daemon_args": args, "samples": []}
    daemon = Daemon(args, workdir)
    watcher = LogWatcher(daemon.log_path)
    result["limits"] = {"pong_timeout": pong_timeout, "ping_interval": ping_interval, "write_deadline": write_deadline,
                        "shutdown_timeout": shutdown_timeout, "slow_hold": slow_hold}
    nodes = []
    try:
        echo(f"explorerd pid {daemon.pid} on {daemon.url}; embedded node on {daemon.node_port}; log {daemon.log_path}")
        time.sleep(3)  # a few blocks, so the baseline includes a warm tail
        t0 = time.monotonic()
        base = daemon.sample()
        result["baseline"] = dict(base, t=0.0)
        history_seconds = 256 * block_time
        # between the deadline firing (the sweep runs every write_deadline/4 at most) and the abort
        # (shutdown_timeout after the close frame): a "late" slow client reads again then
        sweep = min(ping_interval, write_deadline / 4, pong_timeout / 4)
        late_after = write_deadline + (sweep + shutdown_timeout) / 2
        watcher.poll()
        for i, part in enumerate(split(counts, procs)):
            nodes.append(ClientProcess(daemon.url, seconds, part, i, 1 + i, slow_hold, ramp,
                                       min(10.0, sample_every), history_seconds, slow_kinds,
                                       late_after, watcher.old_block()))
        last_cpu, last_t = base["cpu_s"], 0.0
        end = t0 + seconds + 25
        next_sample = t0 + sample_every
        while time.monotonic() < end and any(n.proc.poll() is None for n in nodes):
            time.sleep(max(0.0, min(1.0, next_sample - time.monotonic())))
            if time.monotonic() < next_sample:
                continue
            next_sample += sample_every
            watcher.poll()
            since = watcher.old_block()
            for n in nodes:
                n.tell({"since": since})
            s = daemon.sample()
            t = time.monotonic() - t0
            h = daemon.health()
            tail = h.get("tail") or {}
            s.update(t=round(t, 1), cpu_pct=round(100 * (s["cpu_s"] - last_cpu) / max(0.001, t - last_t), 1),
                     connections=h.get("connections"), clients=h.get("clients"),
                     published=(tail.get("published") or {}).get("height"), status=h.get("status"),
                     client_loop_p99_ms=max((n.progress[-1]["loop_delay_ms"]["p99"] for n in nodes if n.progress),
                                            default=None))
            last_cpu, last_t = s["cpu_s"], t
            result["samples"].append(s)
            echo(f"t={s['t']:7.1f}s rss={s['rss_kib'] / 1024:7.1f} MiB fds={s['fds']:5d} cpu={s['cpu_pct']:5.1f}% "
                 f"connections={s['connections']} height={s['published']} client-loop-p99={s['client_loop_p99_ms']}ms")
        for n in nodes:
            n.wait(max(1.0, end - time.monotonic()))
        finals = [n.final for n in nodes if n.final]
        result["client_processes"] = [{"rc": n.proc.returncode, "final": n.final is not None,
                                       "stderr": "".join(n.stderr[-20:])} for n in nodes]
        # All clients gone: connections back to 0, fds back near the baseline.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and daemon.health().get("connections") not in (0,):
            time.sleep(0.25)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and daemon.sample()["fds"] > base["fds"] + 2:
            time.sleep(0.25)
        after = daemon.sample()
        after["t"] = round(time.monotonic() - t0, 1)
        after["connections"] = daemon.health().get("connections")
        result["after"] = after
        metrics = daemon.metrics()
        result["metrics"] = {f"{k[0]}{k[1]}": v for k, v in metrics.items()
                             if k[0].startswith(("explorer_websocket_errors_total",
                                                 "explorer_websocket_connections_refused_total",
                                                 "explorer_websocket_connections_accepted_total",
                                                 "explorer_websocket_queued_messages",
                                                 "explorer_websocket_connections"))}
        roles = merge_roles(finals)
        result["roles"] = roles
        result["loop_delay_ms"] = [f["loop_delay_ms"] for f in finals]
        result["chain"] = compare_chains(daemon, finals)
        settle_edge_refusals(daemon.node_port, result["roles"])
        result["head_after"] = int(rpc(daemon.node_port, [("eth_blockNumber", [])])[0], 16)
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait()
        rc = daemon.stop()
        result["exit_status"] = rc
        watcher.poll()
        watcher.partial += "\n"
        watcher.poll()
        result["log_bad_lines"] = watcher.bad_count
        result["log_bad_samples"] = watcher.bad
        result["log_lines"] = watcher.lines
        result["log_reasons"] = watcher.reasons
        result["log_path"] = daemon.log_path
        if own_dir and not watcher.bad_count and report is None:
            shutil.rmtree(workdir, ignore_errors=True)
            result["log_path"] = None
    result["verdict"] = verdict(result)
    if report:
        with open(report, "w") as f:
            f.write(markdown(result))
        echo(f"report written to {report}")
    return result


def settle_edge_refusals(node_port, roles):
    """
    A resume refused with "since" at the oldest block held less one
    (C{history_unavailable_edge}, "height:hash" -> count) was right if a reorg
    the client did not see orphaned that block: the canonical block at its
    height, which it would need first, is no longer held.  It was wrong if the
    block is canonical (the oldest block's parent resumes).  The node says
    which; the counts move to C{history_unavailable} (with
    C{history_unavailable_orphaned}) or C{history_unavailable_within}.
    """
    edges = {role: roles[role].pop("history_unavailable_edge", None) or {}
             for role in WELL_BEHAVED if role in roles}
    heights = {int(key.split(":")[0]) for edge in edges.values() for key in edge}
    canon = canonical_hashes(node_port, heights) if heights else {}
    for role, edge in edges.items():
        s = roles[role]
        s.setdefault("history_unavailable_orphaned", 0)
        for key, n in edge.items():
            height, block_hash = key.split(":")
            if canon.get(int(height)) == block_hash:
                s["history_unavailable_within"] = s.get("history_unavailable_within", 0) + n
                samples = s.setdefault("history_unavailable_samples", [])
                if len(samples) < 20:
                    samples.append({"since": int(height), "hash": block_hash, "clients": n,
                                    "what": "canonical, the parent of the oldest block held"})
            else:
                s["history_unavailable"] = s.get("history_unavailable", 0) + n
                s["history_unavailable_orphaned"] += n


def compare_chains(daemon, finals):
    """The well-behaved clients' blocks (all but their last 3) against the node's canonical chain."""
    seen = {}
    for final in finals:
        for height, by_hash in (final.get("chains") or {}).items():
            d = seen.setdefault(int(height), {})
            for h, n in by_hash.items():
                d[h] = d.get(h, 0) + n
    canon = canonical_hashes(daemon.node_port, list(seen)) if seen else {}
    mismatches = []
    blocks_checked = 0
    for height, by_hash in sorted(seen.items()):
        for h, n in by_hash.items():
            blocks_checked += n
            if canon.get(height) != h:
                mismatches.append({"height": height, "hash": h, "clients": n, "canonical": canon.get(height)})
    return {"heights": len(seen), "lowest": min(seen) if seen else None, "highest": max(seen) if seen else None,
            "client_blocks_checked": blocks_checked, "mismatches": len(mismatches),
            "mismatch_samples": mismatches[:10],
            "clients_with_chain": {k: sum((f.get("clients_with_chain") or {}).get(k, 0) for f in finals)
                                   for k in WELL_BEHAVED}}


def verdict(r):
    """Every check the soak makes: ``{name: (ok, detail)}``."""
    roles = r.get("roles") or {}
    checks = {}
    violations = {k: roles.get(k, {}).get("violations", 0) for k in WELL_BEHAVED}
    checks["no sequence violations (well-behaved)"] = (sum(violations.values()) == 0, violations)
    unexpected = {k: roles.get(k, {}).get("unexpected", 0) for k in WELL_BEHAVED}
    checks["well-behaved clients never closed by the server"] = (sum(unexpected.values()) == 0, unexpected)
    checks["no Unhandled/Traceback in the log"] = (r.get("log_bad_lines", 1) == 0, r.get("log_bad_lines"))
    chain = r.get("chain") or {}
    checks["clients' chains = the node's canonical chain"] = (
        chain.get("mismatches", 1) == 0 and chain.get("client_blocks_checked", 0) > 0,
        f"{chain.get('client_blocks_checked')} client blocks at {chain.get('heights')} heights, "
        f"{chain.get('mismatches')} mismatches")
    slow = roles.get("slow", {})
    limits = r.get("limits") or {}
    held = slow.get("open_held_max") or {}
    # A silent client must be gone once the pong timeout (plus a sweep) has passed, a keepalive one
    # (talks, never reads) once a ping round more has; a burst client (it keeps pinging too) by
    # whichever comes first: the write deadline and the close timeout once its replays fill what
    # the kernel holds for it (WEBSOCKET_UNSENT_LIMIT and its window), or the pong timeout like a
    # keepalive one.  Silent and keepalive ones on a busy stream are closed that way too, sooner.
    talker = limits.get("pong_timeout", 60) + limits.get("ping_interval", 30) + 15
    bounds = {"silent": limits.get("pong_timeout", 60) + 15, "keepalive": talker,
              "burst": max(talker, limits.get("write_deadline", 10) + limits.get("shutdown_timeout", 5) + 20)}
    over = {k: held[k] for k in bounds if held.get(k, 0) > bounds[k]}
    late = {k: v for k, v in (slow.get("outcomes") or {}).items() if k.startswith("late_")}
    if late:
        checks["late slow clients find their backlog, then close 1008"] = (
            late.get("late_1008", 0) >= 0.5 * sum(late.values()),
            f"{fmt(late)} (1006: read outside the window between the deadline and the abort)")
    checks["slow clients dropped by the server in bounded time"] = (
        slow.get("unexpected", 0) == 0 and not over,
        f"still open after the hold: {slow.get('still_open_after_hold', 0)}; open at the end (longest stall, s): "
        f"{fmt(slow.get('open_at_end'))} ({fmt(held)}); bounds {fmt(bounds)}; drops: {fmt(slow_drop_summary(slow))}")
    hostile = roles.get("hostile", {})
    checks["hostile clients closed/answered as expected"] = (
        hostile.get("unexpected", 0) == 0, f"{hostile.get('unexpected', 0)} unexpected outcomes")
    after, base = r.get("after") or {}, r.get("baseline") or {}
    if after and base:
        checks["fds back to the baseline after all clients left"] = (
            after["fds"] <= base["fds"] + 3, f"{base['fds']} → {after['fds']} (connections {after.get('connections')})")
    samples = r.get("samples") or []
    if len(samples) >= 4 and base:
        # loose: the second half of the run must not keep growing like the first
        half = len(samples) // 2
        first = max(s["rss_kib"] for s in samples[:half])
        last = max(s["rss_kib"] for s in samples[half:])
        checks["RSS bounded (2nd-half peak ≤ 1.5 × 1st-half peak + 64 MiB)"] = (
            last <= 1.5 * first + 65536, f"{first / 1024:.0f} MiB → {last / 1024:.0f} MiB")
    checks["exit status 0 or -SIGTERM"] = (r.get("exit_status") in (0, -signal.SIGTERM), r.get("exit_status"))
    return checks


def markdown(r):
    mib = lambda kib: f"{kib / 1024:.1f}"  # noqa: E731
    out = [f"# explorerd soak: {r['clients']} clients, {r['minutes']:g} min", ""]
    out.append(f"Daemon: `twistd -n --pidfile= explorerd {' '.join(r['daemon_args'])}`; clients in "
               f"{r['procs']} Node process(es) (`tests/soak/clients.mjs`). Roles: "
               + ", ".join(f"{k} {v}" for k, v in r["roles_planned"].items()) + ".")
    out += ["", "## Verdict", "", "| check | ok | detail |", "|---|---|---|"]
    for name, (ok, detail) in r["verdict"].items():
        out.append(f"| {name} | {'yes' if ok else '**NO**'} | {detail} |")
    out += ["", "## Server over time", "",
            "| t (s) | RSS (MiB) | fds | CPU % | connections | published height | client loop p99 (ms) |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    base = r.get("baseline")
    if base:
        out.append(f"| 0 (baseline) | {mib(base['rss_kib'])} | {base['fds']} | | | | |")
    for s in r["samples"]:
        out.append(f"| {s['t']} | {mib(s['rss_kib'])} | {s['fds']} | {s['cpu_pct']} | {s['connections']} | "
                   f"{s['published']} | {s['client_loop_p99_ms']} |")
    after = r.get("after")
    if after:
        out.append(f"| {after['t']} (clients gone) | {mib(after['rss_kib'])} | {after['fds']} | | "
                   f"{after.get('connections')} | | |")
    out += ["", "## Per role", "",
            "| role | clients | connects | opens | messages | blocks | txs | reorgs | resumes | replayed | "
            "history_unavailable | violations | unexpected | closes | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for role, s in (r.get("roles") or {}).items():
        out.append(f"| {role} | {s.get('clients')} | {s.get('connects')} | {s.get('opens')} | {s.get('messages')} | "
                   f"{s.get('blocks')} | {s.get('txs')} | {s.get('reorgs')} | {s.get('resumes')} | "
                   f"{s.get('replayed')} | {s.get('history_unavailable')} | {s.get('violations')} | "
                   f"{s.get('unexpected')} | {fmt(s.get('closes'))} | {fmt(s.get('errors'))} |")
    roles = r.get("roles") or {}
    out += ["", "## Slow and hostile clients", ""]
    slow = roles.get("slow", {})
    out.append(f"- slow clients by kind: {fmt(slow.get('kinds'))}")
    out.append(f"- how their connections ended (kind_closecode[_error], as the client saw it once it read or "
               f"wrote again): {fmt(slow.get('outcomes'))}")
    out.append(f"- seconds from the stall to the drop the client noticed (min/median/max, n): "
               f"{fmt(slow_drop_summary(slow))}")
    out.append(f"- still open at the end (longest stall in s): {fmt(slow.get('open_at_end'))} "
               f"({fmt(slow.get('open_held_max'))}); silent ones still open after the hold: "
               f"{slow.get('still_open_after_hold', 0)}")
    out.append(f"- hostile attacks: {fmt(roles.get('hostile', {}).get('attacks'))}")
    out.append(f"- hostile outcomes (attack_closecode): {fmt(roles.get('hostile', {}).get('outcomes'))}")
    out.append(f"- seconds from connecting to the close, per attack (min/median/max, n): "
               f"{fmt(slow_drop_summary(roles.get('hostile', {})))}")
    out.append(f"- server log, why clients were dropped: {fmt(r.get('log_reasons'))}")
    for role in ("slow", "hostile") + WELL_BEHAVED:
        samples = (roles.get(role) or {}).get("unexpected_samples") or []
        if samples:
            out.append(f"- {role} unexpected (first {len(samples)}): " + "; ".join(
                f"{x['client']}@{x['t']}s {x['what']}" for x in samples[:8]))
        samples = (roles.get(role) or {}).get("violation_samples") or []
        if samples:
            out.append(f"- {role} violations (first {len(samples)}): " + "; ".join(
                f"{x['client']}@{x['t']}s {x['what']}" for x in samples[:8]))
    out += ["", "## Server metrics at the end", ""]
    for k, v in sorted((r.get("metrics") or {}).items()):
        out.append(f"- `{k}` {v:g}")
    chain = r.get("chain") or {}
    out += ["", "## Chain check", "",
            f"{chain.get('client_blocks_checked')} (client, block) pairs at heights {chain.get('lowest')}–"
            f"{chain.get('highest')} compared with the replay node's `eth_getBlockByNumber`: "
            f"{chain.get('mismatches')} mismatches. Clients holding a chain at the end: "
            f"{fmt(chain.get('clients_with_chain'))}."]
    for m in chain.get("mismatch_samples") or []:
        out.append(f"- height {m['height']}: {m['clients']} clients hold {m['hash']}, node says {m['canonical']}")
    out += ["", "## Daemon log", "",
            f"{r.get('log_lines')} lines; {r.get('log_bad_lines')} with Unhandled/Traceback; exit status "
            f"{r.get('exit_status')}."]
    for line in r.get("log_bad_samples") or []:
        out.append(f"    {line}")
    out.append("")
    return "\n".join(out)


def slow_drop_summary(slow):
    out = {}
    for kind, values in (slow.get("dropped_after") or {}).items():
        if values:
            v = sorted(values)
            out[kind] = f"{v[0]}/{v[len(v) // 2]}/{v[-1]} (n={len(v)})"
    return out


def fmt(d):
    if not d:
        return "–"
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items(), key=lambda kv: str(kv[0])))


def commit():
    """The checkout's commit, ``-dirty`` if it has changes (what a report ran at)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("-dirty" if dirty else "")) or None


def main(argv=None):
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from tests.soak import faultsoak  # it builds on this module's parts

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=None,
                   help="30 (60 with --faults or --restarts: each lifetime needs 5 minutes after its warm-up, and a step "
                        "of the heap reads as a slope over few)")
    p.add_argument("--clients", type=int, default=2000)
    p.add_argument("--procs", type=int, default=2, help="Node processes the clients are split across")
    p.add_argument("--report", default=None, help="write a markdown report here")
    p.add_argument("--sample-every", type=float, default=10.0)
    p.add_argument("--slow-hold", type=float, default=75.0,
                   help="seconds a silent slow client stops reading before it looks at how it was closed")
    p.add_argument("--json", default=None, help="also dump every figure as JSON here")
    p.add_argument("--slow-kinds", default="silent,keepalive,burst",
                   help="slow clients' kinds (silent, keepalive, burst, late); see clients.mjs")
    p.add_argument("--faults", action="store_true",
                   help="the node fails in windows (reset, 5xx, stall, slow-body, head-lag, truncate, cut, garbage, "
                        "reorg-shorter), each then honest; implies --external-node")
    p.add_argument("--restarts", default="",
                   help="restart the daemon under load, in this order, spread over the run: e.g. term,kill "
                        "(SIGTERM, SIGKILL); implies --external-node")
    p.add_argument("--external-node", action="store_true",
                   help="the replay node in its own process behind the fault proxy (tests/soak/faultnode.py), "
                        "the daemon with a state directory, every well-behaved client resuming with since")
    p.add_argument("--fault-kinds", default=",".join(faultsoak.KINDS), help="the windows' kinds, in turn")
    p.add_argument("--window", type=float, default=40.0, help="seconds of each fault window")
    p.add_argument("--gap", type=float, default=40.0, help="honest seconds after each window")
    p.add_argument("--rpc-timeout", type=float, default=10.0, help="the daemon's --rpc-timeout (s)")
    p.add_argument("--rpc-retry", type=float, default=5.0, help="the daemon's --rpc-retry (s)")
    a = p.parse_args(argv)
    restarts = tuple(x for x in a.restarts.split(",") if x)
    if any(x not in ("term", "kill") for x in restarts):
        p.error("--restarts: a comma-separated list of term and kill")
    kinds = tuple(x for x in a.fault_kinds.split(",") if x)
    if any(k not in faultsoak.KINDS for k in kinds):
        p.error(f"--fault-kinds: of {', '.join(faultsoak.KINDS)}")
    if a.faults or restarts or a.external_node:
        a.minutes = 60.0 if a.minutes is None else a.minutes
        r = faultsoak.run_faults(
            minutes=a.minutes, clients=a.clients, procs=a.procs, report=a.report, sample_every=a.sample_every,
            slow_hold=a.slow_hold, slow_kinds=tuple(a.slow_kinds.split(",")), faults=a.faults, restarts=restarts,
            kinds=kinds, window=a.window, gap=a.gap, rpc_timeout=a.rpc_timeout, rpc_retry=a.rpc_retry,
            commit=commit())
    else:
        r = run(minutes=30.0 if a.minutes is None else a.minutes, clients=a.clients, procs=a.procs, report=a.report, sample_every=a.sample_every,
                slow_hold=a.slow_hold, slow_kinds=tuple(a.slow_kinds.split(",")))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({k: v for k, v in r.items() if k != "verdict"} | {"verdict": {k: list(v) for k, v in r["verdict"].items()}},
                      f, indent=1, default=str)
    failed = [k for k, (ok, _) in r["verdict"].items() if not ok]
    for k, (ok, detail) in r["verdict"].items():
        print(f"{'ok  ' if ok else 'FAIL'} {k}: {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
