"""
A benchmark server: the real explorerd daemon (hub, /v1/stream, admission,
metrics) with blocks handed to the hub at a fixed rate by this script, so the
hub's receive time is known exactly.  Prints JSON lines:

  {"event": "listening", "port": P}
  {"event": "block", "height": H, "t": <epoch s at hand-off>, "took": <s in the hub>, "clients": N}
  {"event": "done", "cpu": <s user+sys>, "rss_kb": ..., "rss_idle_kb": ..., ...}

  python bench/hubserver.py --clients 1000 --blocks 10 --rate 1 --recording mainnet_15478281-15478287
"""

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="tcp:0:interface=127.0.0.1:backlog=4096")
    p.add_argument("--clients", type=int, required=True, help="start once this many are subscribed")
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--rate", type=float, default=1.0, help="blocks per second")
    p.add_argument("--recording", default="mainnet_15478281-15478287")
    p.add_argument("--profile", default="")
    p.add_argument("--idle", type=float, default=0.0, help="seconds to hold idle connections first")
    args = p.parse_args()

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor, task

    from explorerd.config import Config
    from explorerd.daemon import Daemon
    from explorerd.replaynode import load_recording

    blocks = [json.loads(json.dumps(b)) for b in load_recording(args.recording).blocks]
    config = Config.defaults(listen=args.listen, rate_limit=0, max_connections=args.clients + 100,
                             state_dir="", send_queue=256)
    daemon = Daemon(config, reactor, web_root="", tail=False)
    daemon.startService()
    emit(event="listening", port=daemon.listener.port.getHost().port)
    hub = daemon.hub
    base_rss = rss_kb()
    state = {"sent": 0, "cpu0": None, "rss_idle": None}
    profiler = None

    def wait_for_clients():
        subscribed = hub.subscriberCount("newBlocks") + hub.subscriberCount("newTxs")
        if hub.clientCount >= args.clients and subscribed >= args.clients:
            state["rss_idle"] = rss_kb()
            reactor.callLater(args.idle, begin)
        else:
            reactor.callLater(0.05, wait_for_clients)

    def begin():
        nonlocal profiler
        state["rss_idle"] = max(state["rss_idle"], rss_kb())
        state["cpu0"] = cpu()
        if args.profile:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        loop = task.LoopingCall(one)
        loop.start(1.0 / args.rate, now=True)
        state["loop"] = loop

    def one():
        if state["sent"] >= args.blocks:
            state["loop"].stop()
            reactor.callLater(2.0, finish)
            return
        block = blocks[state["sent"] % len(blocks)]
        block = dict(block, number=hex(1_000_000 + state["sent"]))
        t = time.time()
        t0 = time.perf_counter()
        hub.broadcastBlock(block)
        hub.broadcastTransactions(block, block["transactions"])
        took = time.perf_counter() - t0
        emit(event="block", height=1_000_000 + state["sent"], t=t, took=took, clients=hub.clientCount,
             txs=len(block["transactions"]))
        state["sent"] += 1

    def finish():
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        emit(event="done", cpu=cpu() - state["cpu0"], rss_kb=rss_kb(), rss_idle_kb=state["rss_idle"],
             rss_base_kb=base_rss, clients=hub.clientCount,
             slow_closed=hub.metrics.errors.labels("slow_client")._value.get())
        reactor.stop()

    reactor.callLater(0.05, wait_for_clients)
    reactor.run()


if __name__ == "__main__":
    main()
