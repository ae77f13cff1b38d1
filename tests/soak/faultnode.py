"""
The soak's node when it must fail: the replay node (the endless chain, as ``python -m
explorerd.replay`` serves it) in a process of its own, behind the fault proxy
(``tests/faultproxy.py``), told on stdin what to do.

    python tests/soak/faultnode.py --block-time 1.2

It prints one JSON line ``{"kind": "listening", "node": PORT, "proxy": PORT}`` (explorerd tails
the proxy; the soak reads the canonical chain from the node itself), then answers each command
(one JSON line on stdin) with one JSON line ``{"kind": "ack", ...}``:

- ``{"cmd": "faults", "rates": {"drop": 0.6}, "delay": 12}``: spoil that share of the proxied
  requests (kinds: drop, error, delay, truncate, cut, garbage, slow; ``delay`` is a stall's length
  and a slow body's duration); ``{"cmd": "faults", "rates": {}}`` is honest again;
- ``{"cmd": "lag", "blocks": 5}``: ``eth_blockNumber`` answers 5 below the head (a load-balanced
  provider asking a backend that is behind); 0 ends it;
- ``{"cmd": "reorg", "depth": 4, "length": 2}``: the node switches to a new branch from 4 below
  the head, 2 blocks long: its head goes down by 2;
- ``{"cmd": "status"}``: the head and the proxy's counts (every ack carries them).

EOF on stdin or SIGTERM stops it.  Everything listens on 127.0.0.1 only.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--block-time", type=float, default=1.2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log", default=None, help="the node's and proxy's log (default: none)")
    a = p.parse_args(argv)

    from twisted.internet import reactor, stdio
    from twisted.internet.defer import ensureDeferred
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.protocols.basic import LineReceiver

    from explorerd.replay import ReplayNode
    from tests.faultproxy import FaultProxy

    if a.log:
        globalLogBeginner.beginLoggingTo([textFileLogObserver(open(a.log, "a"))], redirectStandardIO=False)
    node = ReplayNode(reactor, None, a.block_time)
    service = node.asService(reactor, "tcp:0:interface=127.0.0.1")
    service.privilegedStartService()
    service.startService()

    def status():
        head = node.head
        return {"head": head.height if head else None, "counts": dict(proxy.counts), "rates": proxy.rates,
                "lag": proxy.lag, "reorgs": len(node.reorgs)}

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            try:
                cmd = json.loads(line)
                what = cmd.get("cmd")
                if what == "faults":
                    proxy.rates = dict(cmd.get("rates") or {})
                    if "delay" in cmd:
                        proxy.delay = float(cmd["delay"])
                    answer = {}
                elif what == "lag":
                    proxy.lag = int(cmd.get("blocks", 0))
                    answer = {}
                elif what == "reorg":
                    before = node.head.height
                    head = node.reorg(int(cmd["depth"]), int(cmd.get("length") or cmd["depth"]))
                    answer = {"from": before, "to": head.height, "new_head": head.hash}
                elif what == "status":
                    answer = {}
                else:
                    raise ValueError(f"unknown command {what!r}")
                answer.update(status(), kind="ack", cmd=what, ok=True)
            except Exception as e:  # a bad command is answered, never fatal
                answer = {"kind": "ack", "ok": False, "error": repr(e)}
            self.sendLine(json.dumps(answer).encode())

        def connectionLost(self, reason):
            if reactor.running:
                reactor.stop()

    async def start():
        nonlocal proxy
        proxy = await FaultProxy(reactor, service.url, seed=a.seed).start()
        port = int(service.url.rsplit(":", 1)[1].strip("/"))
        sys.stdout.write(json.dumps({"kind": "listening", "node": port,
                                     "proxy": proxy.port.getHost().port}) + "\n")
        sys.stdout.flush()
        stdio.StandardIO(Control())

    proxy = None
    reactor.callWhenRunning(lambda: ensureDeferred(start()).addErrback(lambda f: (f.printTraceback(),
                                                                                  reactor.stop())))
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
