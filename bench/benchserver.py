"""
What every Python benchmark server shares: the stdin/stdout control protocol bench/run.py
drives, the fixed-rate block loop, and the process's own CPU and RSS.

stdout (JSON lines):
  {"event": "listening", "port": P, "pid": ...}
  {"event": "stats", "t": mono, "cpu": user+sys s, "rss_kb": ..., "clients": n, ...}   per "stats"
  {"event": "block", "height": H, "t": mono at hand-off, "t_sched": when it was due (go + i/rate),
   "took": s in the publish call, "txs": k, "logs": k or null (explorerd), "clients": n}
  {"event": "sent_all", "t": mono}
stdin (lines): "stats", "go", "profile_stop", "quit" (EOF = quit).

Times are time.monotonic() (CLOCK_MONOTONIC), the clock the Node load generator stamps
arrivals with.
"""

import gc
import json
import os
import resource
import select
import sys
import time


def rss_kb():
    """VmRSS, or None when the process cannot open a file (at its open-file limit)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return 0


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sys_s():
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def emit(**fields):
    """
    One JSON line on stdout, whole, however long.  Twisted's StandardIO
    makes fd 1 non-blocking: a line longer than the pipe (64 KiB; a
    'stats' line lists every close the server made, ~100 KiB at 10,000
    closes) was cut at what the pipe took, and bench/run.py waited for
    its 'stats' in vain.  Here the rest waits until the pipe has room.
    """
    sys.stdout.flush()
    fd = sys.stdout.fileno()
    data = memoryview((json.dumps(fields) + "\n").encode())
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            select.select([], [fd], [])


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def common_arguments(parser):
    parser.add_argument("--events", required=True, help="JSON file: raw blocks (explorerd) or wire events (peers)")
    parser.add_argument("--rate", type=float, default=1.0, help="blocks per second")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--count", type=int, default=0, help="publish only the first COUNT blocks (default all)")
    parser.add_argument("--profile", default="", help="cProfile the window from 'go' to 'quit' into this file")


class GCPauses:
    """Every garbage collection's generation and length, so a slow block can be told from a GC pause."""

    def __init__(self):
        self.pauses = []
        self._start = None
        gc.callbacks.append(self._callback)

    def _callback(self, phase, info):
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start is not None:
            self.pauses.append((info["generation"], time.perf_counter() - self._start))
            self._start = None

    def summary(self):
        by_gen = {}
        for gen, took in self.pauses:
            count, total, longest = by_gen.get(gen, (0, 0.0, 0.0))
            by_gen[gen] = (count + 1, total + took, max(longest, took))
        return {str(gen): {"count": c, "total_ms": round(t * 1000, 1), "max_ms": round(m * 1000, 1)}
                for gen, (c, t, m) in sorted(by_gen.items())}


class Control:
    """
    Runs the control protocol for a server object that has C{publish(i, item)} (returns
    the number of clients it went to), C{clientCount()} and C{extra()} (a dict for stats).
    """

    def __init__(self, reactor, server, items, rate, profile=""):
        self.reactor = reactor
        self.server = server
        self.items = items
        self.rate = rate
        self.profile_path = profile
        self.profiler = None
        self.sent = 0
        self.loop = None
        self.started = False
        self.gc = GCPauses()

    def start(self, port):
        from twisted.internet import stdio
        from twisted.protocols.basic import LineReceiver

        control = self

        class Lines(LineReceiver):
            delimiter = b"\n"

            def lineReceived(self, line):
                control.command(line.decode().strip())

            def connectionLost(self, reason=None):
                control.quit()

        stdio.StandardIO(Lines(), reactor=self.reactor)
        emit(event="listening", port=port, pid=os.getpid())

    def stats(self, **more):
        emit(event="stats", t=time.monotonic(), cpu=cpu_s(), sys=sys_s(), rss_kb=rss_kb(),
             clients=self.server.clientCount(), sent=self.sent, gc=self.gc.summary(), **self.server.extra(), **more)

    def command(self, cmd):
        if cmd == "stats":
            self.stats()
        elif cmd == "go":
            self.go()
        elif cmd == "profile_stop":
            self.stop_profile()
        elif cmd == "quit":
            self.quit()

    def go(self):
        if self.started:
            return
        self.started = True
        if self.profile_path:
            import cProfile

            self.profiler = cProfile.Profile()
            self.profiler.enable()
        from twisted.internet import task

        self.gc.pauses.clear()
        self.t_go = time.monotonic()
        self.loop = task.LoopingCall(self.one)
        self.loop.clock = self.reactor
        self.loop.start(1.0 / self.rate, now=True)

    def one(self):
        if self.sent >= len(self.items):
            self.loop.stop()
            emit(event="sent_all", t=time.monotonic())
            return
        item = self.items[self.sent]
        t = time.monotonic()
        before = len(self.gc.pauses)
        t0 = time.perf_counter()
        info = self.server.publish(self.sent, item)
        took = time.perf_counter() - t0
        gc_ms = round(sum(p for _, p in self.gc.pauses[before:]) * 1000, 1)
        emit(event="block", t=t, t_sched=self.t_go + self.sent / self.rate, took=took, gc_ms=gc_ms,
             clients=self.server.clientCount(), **info)
        self.sent += 1

    def stop_profile(self):
        if self.profiler is not None:
            self.profiler.disable()
            self.profiler.dump_stats(self.profile_path)
            self.profiler = None

    def quit(self):
        self.stop_profile()
        if self.reactor.running:
            self.stats(final=True)
            self.reactor.stop()
