"""
The explorerd benchmark server: the real explorerd Daemon (hub, /v1/stream under twisted.web,
admission, metrics, explorerd's TCP transport) with blocks handed to the hub at a fixed rate by
this script instead of the live-tail, so the moment the hub receives each block is known exactly.

  python bench/hubserver.py --events blocks.json [--rate 1] [--profile out.prof]

--events is a JSON list of {"block": JSON-RPC block (full transactions), "logs": its logs
(eth_getLogs elements) or null}, as bench/blocks.py makes them.  Each block is checked into an
Entry with its logs (Entry.fromNode(block, logs=logs), what the live-tail does with receipts on)
and handed to hub.publish (both are inside the timed publish).
Control protocol and output: see bench/benchserver.py.  The daemon logs to --log (a file, as
under twistd) so its per-connection log events do not pile up in memory.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from benchserver import Control, common_arguments, raise_nofile  # noqa: E402

from explorerd.collector import heldOff  # noqa: E402
from explorerd.history import Entry  # noqa: E402

BENCH_SETTINGS = {"rate_limit": 0, "max_connections_per_ip": 0}


def open_files():
    """This process's file descriptors, or None when it cannot open one more (at its limit)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


class HubServer:
    """
    The Control's server object; also notes when the hub closes a client as too slow or drops
    it on the pong timeout (time.monotonic(), the clock of the "block" lines), and samples the
    longest queue a paused client holds and all the queues' total every 0.1 s.
    """

    def __init__(self, daemon, reactor):
        self.daemon = daemon
        self.hub = daemon.hub
        self.slow_closes = []
        self.overload_closes = []
        self.ping_timeouts = []
        self.queue_peak = 0
        self.queued_peak = 0
        self._watchCloses()
        from twisted.internet import task

        self._sampler = task.LoopingCall(self._sampleQueues)
        self._sampler.clock = reactor
        self._sampler.start(0.1, now=False)

    def _watchCloses(self):
        hub = self.hub
        close, detach = hub.close, hub.detach

        def closing(client, code, reason, error=None):
            if error == "slow_client" and client.hub is not None:
                self.slow_closes.append(time.monotonic())
            elif error == "overloaded" and client.hub is not None:
                self.overload_closes.append(time.monotonic())
            return close(client, code, reason, error)

        def detaching(client, reason):
            if client.hub is not None and reason.startswith("no pong"):
                self.ping_timeouts.append(time.monotonic())
            return detach(client, reason)

        # The keepalive and the delivery path call them through the hub object.
        hub.close, hub.detach = closing, detaching

    def _sampleQueues(self):
        hub = self.hub
        self.queued_peak = max(self.queued_peak, hub._queued_total)
        for client in hub._paused:
            self.queue_peak = max(self.queue_peak, len(client.queue))

    def clientCount(self):
        return self.hub.clientCount

    def extra(self):
        def error_count(kind):
            return self.daemon.metrics.registry.get_sample_value("explorer_websocket_errors_total", {"type": kind})

        return {"slow_closed": error_count("slow_client"), "ping_timeouts": error_count("ping_timeout"),
                "queued": self.daemon.metrics.registry.get_sample_value("explorer_websocket_queued_messages"),
                "connections": self.hub.connectionCount, "open_files": open_files(),
                "overload_closed": error_count("overloaded"),
                "slow_close_t": [round(t, 3) for t in self.slow_closes],
                "overload_close_t": [round(t, 3) for t in self.overload_closes],
                "ping_timeout_t": [round(t, 3) for t in self.ping_timeouts],
                "queue_peak": self.queue_peak, "queued_peak": self.queued_peak}

    def publish(self, i, item):
        block, logs = item["block"], item["logs"]
        with heldOff():  # as the live-tail checks and publishes a block
            self.hub.publish(Entry.fromNode(block, logs=logs))
        return {"height": int(block["number"], 16), "txs": len(block["transactions"]),
                "logs": None if logs is None else len(logs)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(p)
    p.add_argument("--max-connections", type=int, default=20000)
    p.add_argument("--log", default=os.devnull, help="explorerd's log file (default: discarded)")
    p.add_argument("--web-root", default="", help="serve this directory's files at / (default: a small page)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a Config field, e.g. --set write_deadline=5")
    args = p.parse_args()
    raise_nofile()

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from explorerd.config import Config
    from explorerd.daemon import Daemon

    log_file = open(args.log, "a")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log_file)], redirectStandardIO=False)

    with open(args.events) as f:
        blocks = json.load(f)
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        current = getattr(Config.defaults(), name)
        overrides[name] = type(current)(value)
    # Every client comes from one of a few loopback addresses: per-IP limits off (those that
    # exist in this version of explorerd), everything else at its default.
    known = {f.name for f in dataclasses.fields(Config)}
    settings = {name: value for name, value in BENCH_SETTINGS.items() if name in known}
    settings.update(listen=f"tcp:{args.port}:interface=127.0.0.1:backlog={args.backlog}",
                    max_connections=args.max_connections, state_dir="")
    settings.update(overrides)
    config = Config.defaults(**settings)
    daemon = Daemon(config, reactor, web_root=args.web_root, tail=False)
    daemon.startService()
    control = Control(reactor, HubServer(daemon, reactor), blocks[:args.count or None], args.rate, args.profile)
    control.start(daemon.address.port)
    reactor.run()


if __name__ == "__main__":
    main()
