"""
The soak with faults (``soak.py --faults --restarts term,kill``): the same clients as the plain soak
(``--resume``: every well-behaved one reconnects with ``since``), but the node is the replay node in
a process of its own behind the fault proxy (``faultnode.py``) and fails on a schedule, in windows
(a fault kind for a while, then honest), and the daemon (with a state directory) is restarted under
load, by SIGTERM and by SIGKILL, on the same port at once.

What it adds to the plain soak's figures: each fault window with what explorerd did meanwhile (the
tail's errors by kind, failed polls, reorgs, blocks published, how long after the window it was back
at the node's head); each restart (how long the port was closed, how many clients the restart
closed and with what, the history it restored); the clients that resumed outside the history
(counted apart) and any that were refused although their block was within it; RSS as a
least-squares slope per daemon lifetime (a restart resets RSS); fds at the start and after the
clients left; CPU per lifetime.

``run_faults(...)`` returns every figure as a dict, like ``soak.run``.
"""

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

from tests.soak import soak

HERE = os.path.dirname(os.path.abspath(__file__))
FAULTNODE = os.path.join(HERE, "faultnode.py")

#: The fault kinds a window can be, in the order a schedule goes through them.
KINDS = ("reset", "5xx", "stall", "slow-body", "head-lag", "truncate", "cut", "garbage", "reorg-shorter")
DESCRIBE = {
    "reset": "connections aborted without an answer (proxy `drop`)",
    "5xx": "HTTP 500/502/503/504 with an HTML body (proxy `error`)",
    "stall": "the answer held past the tail's RPC timeout (proxy `delay`)",
    "slow-body": "the answer trickled out in 20 pieces over most of the RPC timeout (proxy `slow`)",
    "head-lag": "`eth_blockNumber` answers 6 below the node's head: the head goes backwards (a lagging backend)",
    "truncate": "the first third of the JSON body, then the end of the response (proxy `truncate`)",
    "cut": "the full Content-Length announced, half sent, the connection aborted (proxy `cut`)",
    "garbage": "a 200 whose body is not a JSON-RPC answer (proxy `garbage`)",
    "reorg-shorter": "the node switches to a branch 2 blocks shorter (depth 3-5), every few seconds: its head number goes down",
}
RESTORED = re.compile(r"restored the history of (\d+) blocks \((\d+)-(\d+)\)")
RESTORE_TROUBLE = re.compile(r"cannot restore the history|giving up restoring|not restoring the history|"
                             r"no longer has block")
LAG_BLOCKS = 6


class FaultNode:
    """``faultnode.py`` as a subprocess: commands on stdin, one JSON answer per line on stdout."""

    def __init__(self, block_time, workdir, seed=1):
        self.log_path = os.path.join(workdir, "faultnode.log")
        self.proc = subprocess.Popen([sys.executable, FAULTNODE, "--block-time", str(block_time), "--seed", str(seed),
                                      "--log", self.log_path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=soak.clean_env(), cwd=soak.ROOT)
        self.lock = threading.Lock()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"faultnode.py did not start: {self.proc.stderr.read()[-2000:]}")
        ports = json.loads(line)
        self.node_port, self.proxy_port = ports["node"], ports["proxy"]
        self.proxy_url = f"http://127.0.0.1:{self.proxy_port}/"

    def command(self, **cmd):
        with self.lock:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            answer = json.loads(self.proc.stdout.readline())
        if not answer.get("ok"):
            raise RuntimeError(f"faultnode refused {cmd}: {answer}")
        return answer

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # EOF: it stops its reactor
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def plan(seconds, window, gap, restarts=(), kinds=KINDS, start=40.0, tail=60.0, restart_slot=40.0):
    """
    The schedule: ``[{"at", "what": "fault", "kind", "until", "rate"} | {"at", "what": "restart", "how"}]``.
    Windows of each kind in turn (the first pass at a rate of 1: the node is down for that kind; later
    passes 0.4: it is flaky), each followed by ``gap`` seconds honest; the restarts split the run
    into lifetimes of equal length (each has the same warm-up before its RSS slope is judged),
    each in a slot of its own (no fault meanwhile), and the last ``tail`` seconds are honest.
    """
    events = []
    k = len(restarts)
    due = [(seconds * (i + 1) / (k + 1), how) for i, how in enumerate(restarts)]
    t, i = start, 0
    while True:
        if due and due[0][0] <= t + window / 2:
            if t + restart_slot > seconds - tail:
                break
            events.append({"at": round(t, 1), "what": "restart", "how": due.pop(0)[1]})
            t += restart_slot
            continue
        if t + window + gap > seconds - tail or not kinds:
            break
        kind = kinds[i % len(kinds)]
        events.append({"at": round(t, 1), "what": "fault", "kind": kind, "until": round(t + window, 1),
                       "rate": 1.0 if i < len(kinds) else 0.4})
        t += window + gap
        i += 1
    for _, how in due:  # a run too short for its windows still restarts
        events.append({"at": round(min(t, seconds - tail / 2), 1), "what": "restart", "how": how})
        t += restart_slot
    return events


TAIL_METRICS = ("explorer_tail_rpc_errors_total", "explorer_tail_polls_total", "explorer_tail_reorgs_total",
                "explorer_tail_blocks_published_total", "explorer_tail_published_height",
                "explorer_tail_head_height", "explorer_tail_blocks_skipped_total")


def tail_metrics(daemon):
    """The tail's counters, summed over the labels that do not matter here."""
    out = {"errors": {}, "polls": {}}
    try:
        m = daemon.metrics()
    except Exception as e:  # a sample must not end the run
        return {"error": repr(e)}
    for (name, labels), v in m.items():
        if name == "explorer_tail_rpc_errors_total":
            kind = re.search(r'kind="([^"]*)"', labels)
            k = kind.group(1) if kind else "?"
            out["errors"][k] = out["errors"].get(k, 0) + v
        elif name == "explorer_tail_polls_total":
            outcome = re.search(r'outcome="([^"]*)"', labels)
            out["polls"][outcome.group(1) if outcome else "?"] = v
        elif name in TAIL_METRICS:
            out[name[len("explorer_tail_"):]] = v
    return out


def delta(after, before):
    d = {}
    for k, v in after.items():
        if isinstance(v, dict):
            d[k] = {kk: round(vv - (before.get(k) or {}).get(kk, 0)) for kk, vv in v.items()
                    if vv - (before.get(k) or {}).get(kk, 0)}
        elif isinstance(v, (int, float)) and k.endswith("_total"):
            d[k] = round(v - before.get(k, 0))
    return d


def slope(points):
    """Least-squares slope of ``[(hours, MiB)]``, MiB per hour (None with fewer than 3 points)."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def run_faults(minutes=30.0, clients=2000, procs=2, report=None, sample_every=10.0, slow_hold=75.0,
               block_time=1.2, echo=print, workdir=None, slow_kinds=("silent", "keepalive", "burst"),
               ping_interval=30.0, pong_timeout=60.0, write_deadline=10.0, shutdown_timeout=5.0,
               faults=True, restarts=("term", "kill"), window=40.0, gap=40.0, start=45.0, tail=60.0,
               restart_slot=40.0, restart_grace=20.0, rpc_timeout=10.0, rpc_retry=5.0, kinds=KINDS,
               warmup=None, slope_minutes=5.0, extra_args=(), commit=None):
    """
    ``warmup``: seconds of each lifetime before its RSS slope is judged (default: the time the
    history takes to turn over, 256 blocks, plus a minute); ``slope_minutes``: how much of each
    lifetime must follow it (0: the slope is reported but not judged, for runs too short for it).
    """
    seconds = max(10.0, minutes * 60.0)
    warmup = 256 * block_time + 60 if warmup is None else warmup
    counts = soak.role_counts(clients)
    ramp = min(10.0, seconds / 6)
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="explorerd-faultsoak-")
    events = plan(seconds, window, gap, restarts, kinds if faults else (), start, tail, restart_slot)
    result = {"mode": "faults", "minutes": minutes, "clients": clients, "procs": procs, "roles_planned": counts,
              "samples": [], "windows": [], "restarts": [], "lifetimes": [], "plan": events, "commit": commit,
              "limits": {"pong_timeout": pong_timeout, "ping_interval": ping_interval,
                         "write_deadline": write_deadline, "shutdown_timeout": shutdown_timeout,
                         "slow_hold": slow_hold, "rpc_timeout": rpc_timeout, "rpc_retry": rpc_retry,
                         "window": window, "gap": gap, "block_time": block_time,
                         "warmup": warmup, "slope_minutes": slope_minutes}}
    node = FaultNode(block_time, workdir)
    state_dir = os.path.join(workdir, "state")
    args = ["--rpc-url", node.proxy_url, "--state-dir", state_dir, "--poll-interval", "0.2s",
            "--rpc-timeout", f"{rpc_timeout:g}s", "--rpc-retry", f"{rpc_retry:g}s",
            "--rate-limit", "0", "--max-connections", "5000"]
    args += soak.optional("max-connections-per-ip", 0)
    args += ["--ping-interval", f"{ping_interval:g}s", "--pong-timeout", f"{pong_timeout:g}s",
             "--write-deadline", f"{write_deadline:g}s", "--shutdown-timeout", f"{shutdown_timeout:g}s"]
    args += list(extra_args)
    listen = "tcp:{port}:interface=127.0.0.1:backlog=4096"
    result["daemon_args"] = ["--listen", listen.format(port="PORT")] + args
    lifetimes = []  # [{"daemon", "watcher", "start_t", ...}]
    nodes = []
    t0 = None

    def now():
        return round(time.monotonic() - t0, 1) if t0 is not None else 0.0

    def start_daemon(port):
        n = len(lifetimes) + 1
        spawned = now()
        d = soak.Daemon(["--listen", listen.format(port=port)] + args, workdir, log_name=f"explorerd-{n}.log")
        d.node_port = node.node_port
        life = {"n": n, "daemon": d, "watcher": soak.LogWatcher(d.log_path), "start_t": spawned, "pid": d.pid,
                "log": d.log_path}
        if lifetimes:
            # the blocks published before: an old block for burst and replay clients (a new log
            # starts with none, and a recent "since" would make their replays cheap, not abusive)
            life["watcher"].published = list(lifetimes[-1]["watcher"].published)
        lifetimes.append(life)
        return life

    life = start_daemon(0)
    port = life["daemon"].port
    url = f"ws://127.0.0.1:{port}/v1/stream"
    try:
        echo(f"explorerd pid {life['daemon'].pid} on {url}; node on {node.node_port} behind the fault proxy on "
             f"{node.proxy_port}; workdir {workdir}")
        echo("plan: " + "; ".join(f"{e['at']}s {e.get('kind') or e.get('how')}" for e in events))
        time.sleep(3)
        t0 = time.monotonic()
        life["start_t"] = 0.0
        base = life["daemon"].sample()
        result["baseline"] = dict(base, t=0.0)
        history_seconds = 256 * block_time
        sweep = min(ping_interval, write_deadline / 4, pong_timeout / 4)
        late_after = write_deadline + (sweep + shutdown_timeout) / 2
        life["watcher"].poll()
        life["sampled_cpu"] = True  # its CPU counts from the baseline
        for i, part in enumerate(soak.split(counts, procs)):
            nodes.append(soak.ClientProcess(url, seconds, part, i, 1 + i, slow_hold, ramp, min(10.0, sample_every),
                                            history_seconds, slow_kinds, late_after, life["watcher"].old_block(),
                                            resume=True))
        last_cpu, last_t = base["cpu_s"], 0.0
        end = t0 + seconds + 25
        next_sample = t0 + sample_every
        pending = list(events)
        window = None  # the open fault window
        recovering = []  # windows waiting for the tail to be back at the node's head
        next_reorg = None

        def tell(msg):
            for n in nodes:
                n.tell(msg)

        while time.monotonic() < end and any(n.proc.poll() is None for n in nodes):
            time.sleep(0.2)
            t = now()
            daemon = lifetimes[-1]["daemon"]
            if window and t >= window["until"]:
                close_window(node, daemon, window, t)
                echo(f"t={t}s {window['kind']} window over: tail errors {window['tail'].get('errors')}, "
                     f"polls {window['tail'].get('polls')}")
                recovering.append(window)
                window = next_reorg = None
            if window and next_reorg is not None and t >= next_reorg:
                depth = 3 + len(window["reorgs"]) % 3
                a = node.command(cmd="reorg", depth=depth, length=depth - 2)
                window["reorgs"].append({"t": t, "depth": depth, "length": depth - 2, "from": a["from"], "to": a["to"]})
                next_reorg = t + max(2.0, min(8.0, (window["until"] - window["at"]) / 4))
            for w in list(recovering):
                h = daemon.health()
                published = ((h.get("tail") or {}).get("published") or {}).get("height")
                if published is not None and published >= w["node_head_at_end"]:
                    w["recovered_after_s"] = round(t - w["until_actual"], 1)
                    recovering.remove(w)
                elif t - w["until_actual"] > 120:
                    w["recovered_after_s"] = None
                    recovering.remove(w)
            if pending and t >= pending[0]["at"] and window is None:
                e = pending.pop(0)
                if e["what"] == "fault":
                    window = open_window(node, daemon, e, t, rpc_timeout)
                    result["windows"].append(window)
                    echo(f"t={t}s {e['kind']} window until {e['until']}s (rate {e['rate']})")
                    if e["kind"] == "reorg-shorter":
                        next_reorg = t + 1.0
                else:
                    for w in recovering:  # a restart ends the measurement of a recovery
                        w.setdefault("recovered_after_s", None)
                    recovering = []
                    r = restart(e["how"], lifetimes, start_daemon, port, tell, shutdown_timeout, node, echo, now)
                    result["restarts"].append(r)
                    r["grace_until"] = round(now() + restart_grace, 1)
            for r in result["restarts"]:
                if not r.get("grace_over") and t >= r["grace_until"]:
                    tell({"restarting": False})
                    r["grace_over"] = True
            if time.monotonic() < next_sample:
                continue
            next_sample += sample_every
            life = lifetimes[-1]
            daemon = life["daemon"]
            life["watcher"].poll()
            tell({"since": life["watcher"].old_block()})
            try:
                s = daemon.sample()
            except OSError:
                continue
            if life.get("sampled_cpu") is None:
                life["sampled_cpu"] = True
                last_cpu, last_t = 0.0, life["start_t"]
            h = daemon.health()
            tail_ = h.get("tail") or {}
            s.update(t=t, lifetime=life["n"], cpu_pct=round(100 * (s["cpu_s"] - last_cpu) / max(1.0, t - last_t), 1),
                     connections=h.get("connections"), clients=h.get("clients"),
                     published=(tail_.get("published") or {}).get("height"), status=h.get("status"),
                     fault=window["kind"] if window else None,
                     client_loop_p99_ms=max((n.progress[-1]["loop_delay_ms"]["p99"] for n in nodes if n.progress),
                                            default=None))
            last_cpu, last_t = s["cpu_s"], t
            life["last_cpu_s"] = s["cpu_s"]
            result["samples"].append(s)
            echo(f"t={s['t']:7.1f}s [{life['n']}] rss={s['rss_kib'] / 1024:7.1f} MiB fds={s['fds']:5d} "
                 f"cpu={s['cpu_pct']:5.1f}% connections={s['connections']} height={s['published']} "
                 f"status={s['status']} fault={s['fault']}")
        if window:
            close_window(node, lifetimes[-1]["daemon"], window, now())
        for w in recovering:
            w.setdefault("recovered_after_s", None)
        node.command(cmd="faults", rates={})
        daemon = lifetimes[-1]["daemon"]
        for n in nodes:
            n.wait(max(1.0, end - time.monotonic()))
        finals = [n.final for n in nodes if n.final]
        result["client_processes"] = [{"rc": n.proc.returncode, "final": n.final is not None,
                                       "stderr": "".join(n.stderr[-20:])} for n in nodes]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and daemon.health().get("connections") not in (0,):
            time.sleep(0.25)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and daemon.sample()["fds"] > base["fds"] + 2:
            time.sleep(0.25)
        after = daemon.sample()
        after["t"] = now()
        after["connections"] = daemon.health().get("connections")
        after["lifetime"] = lifetimes[-1]["n"]
        result["after"] = after
        metrics = daemon.metrics()
        result["metrics"] = {f"{k[0]}{k[1]}": v for k, v in metrics.items()
                             if k[0].startswith(("explorer_websocket_errors_total",
                                                 "explorer_websocket_connections_refused_total",
                                                 "explorer_websocket_connections_accepted_total",
                                                 "explorer_websocket_connections", "explorer_tail_blocks_skipped",
                                                 "explorer_tail_reorgs_total", "explorer_tail_polls_total"))}
        result["roles"] = soak.merge_roles(finals)
        result["loop_delay_ms"] = [f["loop_delay_ms"] for f in finals]
        result["chain"] = soak.compare_chains(daemon, finals)
        soak.settle_edge_refusals(daemon.node_port, result["roles"])
        status = node.command(cmd="status")
        result["node"] = {"head": status["head"], "reorgs": status["reorgs"], "proxy_counts": status["counts"]}
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait()
        last = lifetimes[-1]
        last["exit_status"] = last["daemon"].stop()
        node.stop()
        bad = 0
        for life in lifetimes:
            w = life["watcher"]
            w.poll()
            w.partial += "\n"
            w.poll()
            bad += w.bad_count
            text = life["daemon"].text()
            life["restored"] = [m.groups() for m in RESTORED.finditer(text)]
            life["restore_trouble"] = [m.group(0) for m in RESTORE_TROUBLE.finditer(text)]
        result["log_bad_lines"] = bad
        result["log_bad_samples"] = [line for life in lifetimes for line in life["watcher"].bad][:20]
        result["log_lines"] = sum(life["watcher"].lines for life in lifetimes)
        result["log_reasons"] = {k: sum(life["watcher"].reasons[k] for life in lifetimes) for k in soak.DETACH}
        # The first lifetime fills its history (256 blocks) as it goes. Later ones restore it at start,
        # but take every client's resume at once and then the same faults: at 385e2f1 their RSS rose for
        # 4-6 minutes to the first lifetime's plateau (and no further), so they get the same warm-up.
        result["lifetimes"] = [lifetime_summary(life, result["samples"], warmup) for life in lifetimes]
        result["exit_status"] = last.get("exit_status")
        if own_dir and not bad and report is None:
            shutil.rmtree(workdir, ignore_errors=True)
    result["verdict"] = verdict(result)
    if report:
        with open(report, "w") as f:
            f.write(markdown(result))
        echo(f"report written to {report}")
    return result


def open_window(node, daemon, e, t, rpc_timeout):
    kind, rate = e["kind"], e["rate"]
    before = tail_metrics(daemon)
    if kind == "head-lag":
        a = node.command(cmd="lag", blocks=LAG_BLOCKS)
    elif kind == "reorg-shorter":
        a = node.command(cmd="status")
    else:
        fault = {"reset": "drop", "5xx": "error", "stall": "delay", "slow-body": "slow"}.get(kind, kind)
        delay = {"stall": rpc_timeout * 1.5, "slow-body": rpc_timeout * 0.8}.get(kind, 1.0)
        a = node.command(cmd="faults", rates={fault: rate}, delay=delay)
    return dict(e, at_actual=t, tail_before=before, counts_before=a["counts"], node_head_at_start=a["head"],
                reorgs=[], rate=rate if kind not in ("head-lag", "reorg-shorter") else None)


def close_window(node, daemon, w, t):
    if w["kind"] == "head-lag":
        a = node.command(cmd="lag", blocks=0)
    else:
        a = node.command(cmd="faults", rates={})
    w["until_actual"] = t
    w["node_head_at_end"] = a["head"]
    w["proxy"] = {k: v - w["counts_before"].get(k, 0) for k, v in a["counts"].items()
                  if v - w["counts_before"].get(k, 0)}
    after = tail_metrics(daemon)
    w["tail"] = delta(after, w.pop("tail_before"))
    w["tail"]["published_height"] = after.get("published_height")
    w.pop("counts_before")


def restart(how, lifetimes, start_daemon, port, tell, shutdown_timeout, node, echo, now):
    life = lifetimes[-1]
    d = life["daemon"]
    life["watcher"].poll()
    before = tail_metrics(d)
    r = {"how": how, "t": now(), "lifetime": life["n"], "published_before": before.get("published_height"),
         "connections_before": d.health().get("connections")}
    try:
        life["last_sample"] = d.sample()
    except OSError:
        pass
    tell({"restarting": True})
    time.sleep(0.5)  # the clients have read it
    stopped = time.monotonic()
    if how == "kill":
        d.proc.kill()
        d.proc.wait()
        d._log.close()
        life["exit_status"] = d.proc.returncode
    else:
        life["exit_status"] = d.stop(timeout=shutdown_timeout + 30)
    r["exit_status"] = life["exit_status"]
    r["stop_s"] = round(time.monotonic() - stopped, 2)
    life["end_t"] = now()
    new = start_daemon(port)
    r["port_closed_s"] = round(time.monotonic() - stopped, 2)
    r["new_pid"] = new["pid"]
    # how long until the new daemon publishes past what the old one had
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        h = new["daemon"].health()
        published = ((h.get("tail") or {}).get("published") or {}).get("height")
        if published is not None and r["published_before"] is not None and published > r["published_before"]:
            r["publishing_after_s"] = round(time.monotonic() - stopped, 2)
            break
        time.sleep(0.2)
    else:
        r["publishing_after_s"] = None
    echo(f"t={r['t']}s restart by {how}: exit {r['exit_status']}, port closed {r['port_closed_s']} s, "
         f"publishing again after {r['publishing_after_s']} s; new pid {new['pid']}")
    return r


def lifetime_summary(life, samples, warmup):
    mine = [s for s in samples if s.get("lifetime") == life["n"]]
    pts = [((s["t"] - life["start_t"]) / 3600.0, s["rss_kib"] / 1024.0) for s in mine]
    warm = [(x, y) for x, y in pts if x * 3600.0 >= warmup]
    out = {"n": life["n"], "pid": life["pid"], "start_t": life["start_t"], "end_t": life.get("end_t"),
           "exit_status": life.get("exit_status"), "samples": len(mine),
           "rss_first_mib": round(pts[0][1], 1) if pts else None, "rss_last_mib": round(pts[-1][1], 1) if pts else None,
           "rss_max_mib": round(max(y for _, y in pts), 1) if pts else None,
           "rss_slope_mib_h": _round(slope(pts)), "rss_slope_after_warmup_mib_h": _round(slope(warm)),
           "warmup_s": round(warmup), "warm_minutes": round((warm[-1][0] - warm[0][0]) * 60, 1) if len(warm) > 1 else 0.0,
           "fds_first": mine[0]["fds"] if mine else None, "fds_last": mine[-1]["fds"] if mine else None,
           "cpu_s": mine[-1]["cpu_s"] if mine else None,
           "restored": life.get("restored"), "restore_trouble": life.get("restore_trouble"), "log": life["log"]}
    if mine:
        out["cpu_pct_mean"] = round(100 * out["cpu_s"] / max(1.0, mine[-1]["t"] - life["start_t"]), 1)
    return out


def _round(x, n=1):
    return None if x is None else round(x, n)


SLOPE_BOUND = 64.0  # MiB/h


def verdict(r):
    roles = r.get("roles") or {}
    checks = {}
    violations = {k: roles.get(k, {}).get("violations", 0) for k in soak.WELL_BEHAVED}
    checks["no block lost or doubled, every sequence checks out across reorgs and resumes (well-behaved)"] = (
        sum(violations.values()) == 0 and sum(roles.get(k, {}).get("blocks", 0) for k in soak.WELL_BEHAVED) > 0,
        f"violations {soak.fmt(violations)}")
    within = {k: roles.get(k, {}).get("history_unavailable_within", 0) for k in soak.WELL_BEHAVED}
    checks["no resume within the history refused"] = (sum(within.values()) == 0, soak.fmt(within))
    resumes = sum(roles.get(k, {}).get("resumes", 0) for k in soak.WELL_BEHAVED)
    outside = sum(roles.get(k, {}).get("history_unavailable", 0) for k in soak.WELL_BEHAVED)
    checks["clients resumed with since"] = (resumes > 0, f"{resumes} resumes, {outside} of them outside the history "
                                                         "(answered history_unavailable, counted apart)")
    unexpected = {k: roles.get(k, {}).get("unexpected", 0) for k in soak.WELL_BEHAVED}
    checks["well-behaved clients closed only by the restarts"] = (sum(unexpected.values()) == 0, soak.fmt(unexpected))
    checks["no Unhandled/Traceback in the logs"] = (r.get("log_bad_lines", 1) == 0, r.get("log_bad_lines"))
    chain = r.get("chain") or {}
    checks["clients' chains = the node's canonical chain"] = (
        chain.get("mismatches", 1) == 0 and chain.get("client_blocks_checked", 0) > 0,
        f"{chain.get('client_blocks_checked')} client blocks at {chain.get('heights')} heights, "
        f"{chain.get('mismatches')} mismatches")
    skipped = (r.get("metrics") or {}).get("explorer_tail_blocks_skipped_total", 0)
    checks["no heights skipped by the tail (last lifetime's counter)"] = (not skipped, skipped)
    hostile = roles.get("hostile", {})
    checks["hostile clients closed/answered as expected"] = (hostile.get("unexpected", 0) == 0,
                                                             f"{hostile.get('unexpected', 0)} unexpected outcomes")
    slow = roles.get("slow", {})
    checks["slow clients dropped by the server"] = (slow.get("unexpected", 0) == 0,
                                                    f"{slow.get('unexpected', 0)} unexpected outcomes")
    windows = r.get("windows") or []
    unrecovered = [w["kind"] for w in windows if w.get("recovered_after_s") is None]
    checks["the tail back at the node's head after every fault window"] = (
        not unrecovered, f"{len(windows)} windows; not recovered: {', '.join(unrecovered) or 'none'}")
    plan_restarts = [e["how"] for e in r.get("plan") or [] if e["what"] == "restart"]
    done = r.get("restarts") or []
    expected = {"term": (-signal.SIGTERM, 0), "kill": (-signal.SIGKILL,)}
    checks["restarts done as planned, each publishing again"] = (
        [x["how"] for x in done] == plan_restarts
        and all(x["exit_status"] in expected[x["how"]] and x.get("publishing_after_s") is not None for x in done),
        "; ".join(f"{x['how']}: exit {x['exit_status']}, publishing after {x.get('publishing_after_s')} s"
                  for x in done) or "none")
    after, base = r.get("after") or {}, r.get("baseline") or {}
    if after and base:
        checks["fds back to the first start's after all clients left"] = (
            after["fds"] <= base["fds"] + 3, f"{base['fds']} → {after['fds']} (connections {after.get('connections')})")
    # Every lifetime is judged: one too short to judge fails the check (with two restarts, a run of
    # 45 minutes gives each lifetime about 9 minutes after its warm-up).
    lives = r.get("lifetimes") or []
    need = (r.get("limits") or {}).get("slope_minutes", 5.0)
    if need:
        checks[f"RSS slope after warm-up ≤ {SLOPE_BOUND:g} MiB/h in every lifetime (each with ≥ {need:g} min of it)"] = (
            bool(lives) and all(x.get("warm_minutes", 0) >= need and x["rss_slope_after_warmup_mib_h"] is not None
                                and x["rss_slope_after_warmup_mib_h"] <= SLOPE_BOUND for x in lives),
            "; ".join(f"#{x['n']}: {x['rss_slope_after_warmup_mib_h']} MiB/h over {x['warm_minutes']} min"
                      for x in lives) or "–")
    checks["last exit status 0 or -SIGTERM"] = (r.get("exit_status") in (0, -signal.SIGTERM), r.get("exit_status"))
    return checks


def markdown(r):
    mib = lambda kib: f"{kib / 1024:.1f}"  # noqa: E731
    out = [f"# explorerd soak with faults: {r['clients']} clients, {r['minutes']:g} min", ""]
    out.append(f"Commit `{r.get('commit') or '?'}`. Generated by `tests/soak/soak.py --faults` "
               f"(`tests/soak/faultsoak.py`); raw figures in the JSON next to this file.")
    out.append("")
    out.append(f"Daemon: `twistd -n --pidfile= explorerd {' '.join(r['daemon_args'])}`, restarted on the same port. "
               f"Node: the replay node (a block every {r['limits']['block_time']:g} s) in its own process behind "
               f"the fault proxy (`tests/soak/faultnode.py`). Clients in {r['procs']} Node process(es) "
               "(`tests/soak/clients.mjs --resume`): every well-behaved one reconnects after a drop with `since` = "
               "the last block it holds complete. Roles: "
               + ", ".join(f"{k} {v}" for k, v in r["roles_planned"].items()) + ".")
    out += ["", "## Verdict", "", "| check | ok | detail |", "|---|---|---|"]
    for name, (ok, detail) in r["verdict"].items():
        out.append(f"| {name} | {'yes' if ok else '**NO**'} | {detail} |")
    roles = r.get("roles") or {}
    wb = [roles.get(k, {}) for k in soak.WELL_BEHAVED]
    out += ["", "## Summary", "",
            f"- blocks the well-behaved clients received and checked: {sum(s.get('blocks', 0) for s in wb)}; "
            f"reorg messages: {sum(s.get('reorgs', 0) for s in wb)}; node head at the end "
            f"{(r.get('node') or {}).get('head')}, node reorgs {(r.get('node') or {}).get('reorgs')}",
            f"- lost or doubled blocks / sequence violations: {sum(s.get('violations', 0) for s in wb)}",
            f"- resumes with `since`: {sum(s.get('resumes', 0) for s in wb)}, blocks replayed to them "
            f"{sum(s.get('replayed', 0) for s in wb)}; outside the history (history_unavailable, counted apart): "
            f"{sum(s.get('history_unavailable', 0) for s in wb)} (of them at the oldest block held less one, "
            f"orphaned by a reorg the client missed: {sum(s.get('history_unavailable_orphaned', 0) for s in wb)}); "
            "refused within the history: "
            f"{sum(s.get('history_unavailable_within', 0) for s in wb)}",
            f"- fault windows: {soak.fmt(_count(w['kind'] for w in r.get('windows') or []))}; the proxy's answers "
            f"over the run, by fault (`pass`: honest): {soak.fmt((r.get('node') or {}).get('proxy_counts'))}",
            f"- restarts: {', '.join(x['how'] for x in r.get('restarts') or []) or 'none'}; clients closed by them "
            f"(code: count): {soak.fmt(_sum_dicts(s.get('restart_closes') for s in roles.values()))}",
            f"- fds: {(r.get('baseline') or {}).get('fds')} at the first start, {(r.get('after') or {}).get('fds')} "
            "after the clients left",
            f"- server CPU: {sum(x['cpu_s'] or 0 for x in r.get('lifetimes') or []):.1f} s over the run, all lifetimes "
            "(each lifetime's last sample)"]
    for x in r.get("lifetimes") or []:
        out.append(f"- lifetime #{x['n']} (pid {x['pid']}, t {x['start_t']}–{x['end_t'] if x['end_t'] is not None else 'end'} s,"
                   f" exit {x['exit_status']}): RSS {x['rss_first_mib']} → {x['rss_last_mib']} MiB (max {x['rss_max_mib']}),"
                   f" slope {x['rss_slope_mib_h']} MiB/h over the lifetime, {x['rss_slope_after_warmup_mib_h']} MiB/h "
                   f"after a {x['warmup_s']} s warm-up (over {x['warm_minutes']} min); fds {x['fds_first']} → {x['fds_last']}; CPU "
                   f"{x['cpu_s']} s ({x.get('cpu_pct_mean')}% of a core); restored history {x['restored'] or '–'}"
                   + (f"; restore trouble: {x['restore_trouble']}" if x['restore_trouble'] else ""))
    out += ["", "## Fault windows", "",
            "What explorerd's `/metrics` said about each window (deltas over the window): the tail's failed JSON-RPC "
            "requests by kind, its polls (a failed poll is retried with backoff), reorgs it reported and blocks it "
            "published; and how long after the window ended it had published the node's head of that moment.", "",
            "| kind | t (s) | rate | proxy answers | tail errors by kind | polls | reorgs | blocks published | "
            "node head start→end | back at the head after (s) |",
            "|---|---|---:|---|---|---|---:|---:|---|---:|"]
    for w in r.get("windows") or []:
        tail = w.get("tail") or {}
        extra = ""
        if w.get("reorgs"):
            extra = " (" + ", ".join(f"{x['from']}→{x['to']}" for x in w["reorgs"]) + ")"
        out.append(f"| {w['kind']} | {w['at_actual']}–{w.get('until_actual')} | {w.get('rate') if w.get('rate') is not None else '–'} | "
                   f"{soak.fmt(w.get('proxy'))} | {soak.fmt(tail.get('errors'))} | {soak.fmt(tail.get('polls'))} | "
                   f"{tail.get('explorer_tail_reorgs_total', tail.get('reorgs_total', '–'))}{extra} | "
                   f"{tail.get('blocks_published_total', '–')} | {w.get('node_head_at_start')}→{w.get('node_head_at_end')} | "
                   f"{w.get('recovered_after_s')} |")
    out += ["", "Kinds: " + "; ".join(f"`{k}`: {v}" for k, v in DESCRIBE.items()) + "."]
    out += ["", "## Restarts", "",
            "| how | t (s) | exit status | stop took (s) | port closed (s) | publishing past the old height after (s) | "
            "connections before | published before |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r.get("restarts") or []:
        out.append(f"| {x['how']} | {x['t']} | {x['exit_status']} | {x['stop_s']} | {x['port_closed_s']} | "
                   f"{x.get('publishing_after_s')} | {x.get('connections_before')} | {x.get('published_before')} |")
    out += ["", "## Server over time", "",
            "| t (s) | lifetime | RSS (MiB) | fds | CPU % | connections | published height | status | fault | client loop p99 (ms) |",
            "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    base = r.get("baseline")
    if base:
        out.append(f"| 0 (baseline) | 1 | {mib(base['rss_kib'])} | {base['fds']} | | | | | | |")
    for s in r["samples"]:
        out.append(f"| {s['t']} | {s['lifetime']} | {mib(s['rss_kib'])} | {s['fds']} | {s['cpu_pct']} | {s['connections']} | "
                   f"{s['published']} | {s['status']} | {s['fault'] or ''} | {s['client_loop_p99_ms']} |")
    after = r.get("after")
    if after:
        out.append(f"| {after['t']} (clients gone) | {after['lifetime']} | {mib(after['rss_kib'])} | {after['fds']} | | "
                   f"{after.get('connections')} | | | | |")
    out += ["", "## Per role", "",
            "| role | clients | connects | opens | messages | blocks | txs | reorgs | resumes | replayed | "
            "outside history | refused within | restart closes | violations | unexpected | closes | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|"]
    for role, s in roles.items():
        out.append(f"| {role} | {s.get('clients')} | {s.get('connects')} | {s.get('opens')} | {s.get('messages')} | "
                   f"{s.get('blocks')} | {s.get('txs')} | {s.get('reorgs')} | {s.get('resumes')} | {s.get('replayed')} | "
                   f"{s.get('history_unavailable')} | {s.get('history_unavailable_within')} | "
                   f"{soak.fmt(s.get('restart_closes'))} | {s.get('violations')} | {s.get('unexpected')} | "
                   f"{soak.fmt(s.get('closes'))} | {soak.fmt(s.get('errors'))} |")
    for role in soak.WELL_BEHAVED + ("slow", "hostile"):
        s = roles.get(role) or {}
        for key, label in (("violation_samples", "violations"), ("unexpected_samples", "unexpected"),
                           ("history_unavailable_samples", "refused within the history")):
            samples = s.get(key) or []
            if samples:
                out.append(f"- {role} {label} (first {len(samples)}): " + "; ".join(
                    json.dumps(x) for x in samples[:8]))
    out.append(f"- server log, why clients were dropped: {soak.fmt(r.get('log_reasons'))}")
    out += ["", "## Server metrics at the end (last lifetime)", ""]
    for k, v in sorted((r.get("metrics") or {}).items()):
        out.append(f"- `{k}` {v:g}")
    chain = r.get("chain") or {}
    out += ["", "## Chain check", "",
            f"{chain.get('client_blocks_checked')} (client, block) pairs at heights {chain.get('lowest')}–"
            f"{chain.get('highest')} compared with the node's `eth_getBlockByNumber` (asked directly, not through "
            f"the proxy): {chain.get('mismatches')} mismatches. Clients holding a chain at the end: "
            f"{soak.fmt(chain.get('clients_with_chain'))}."]
    for m in chain.get("mismatch_samples") or []:
        out.append(f"- height {m['height']}: {m['clients']} clients hold {m['hash']}, node says {m['canonical']}")
    out += ["", "## Daemon logs", "",
            f"{r.get('log_lines')} lines over {len(r.get('lifetimes') or [])} lifetimes; {r.get('log_bad_lines')} with "
            f"Unhandled/Traceback; last exit status {r.get('exit_status')}."]
    for line in r.get("log_bad_samples") or []:
        out.append(f"    {line}")
    out += ["", "## Plan", "", "; ".join(f"{e['at']} s {e.get('kind') or 'restart ' + e.get('how')}"
                                        + (f" until {e['until']} s" if e.get("until") else "") for e in r.get("plan") or []), ""]
    return "\n".join(out)


def _count(items):
    d = {}
    for x in items:
        d[x] = d.get(x, 0) + 1
    return d


def _sum_dicts(ds):
    out = {}
    for d in ds:
        for k, v in (d or {}).items():
            out[k] = out.get(k, 0) + v
    return out
