"""
C{python -m explorerd.replay}: the replay node on its own, for a tail under
test or a benchmark to poll.
"""

import argparse
import json
import sys

from explorerd.replay.chain import expected_reorgs
from explorerd.replay.node import ReplayNode
from explorerd.replay.recordings import load_recording, packaged_recordings


def _positive(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _parser():
    p = argparse.ArgumentParser(prog="python -m explorerd.replay",
                                description="Serve real recorded Ethereum blocks as a JSON-RPC node.")
    p.add_argument("--listen", default="tcp:8545:interface=127.0.0.1",
                   help="Twisted endpoint (default: %(default)s)")
    p.add_argument("--block-time", type=_positive, default=2.0, help="seconds per head event (default: %(default)s)")
    p.add_argument("--recording", metavar="NAME_OR_FILE",
                   help="replay one recording with its original heights and hashes "
                        f"(packaged: {', '.join(packaged_recordings())}); default: the endless chain")
    p.add_argument("--orphans", metavar="FILE", help="orphaned blocks for --recording")
    p.add_argument("--loop", action=argparse.BooleanOptionalAction, default=None,
                   help="keep going after the last block (default: only the endless chain does)")
    p.add_argument("--chain-id", type=int, default=None)
    p.add_argument("--start-height", type=int, default=1, help="the endless chain's first height")
    p.add_argument("--prefill", type=int, default=0, help="blocks made, back-dated, at start")
    p.add_argument("--expected-reorgs", action="store_true",
                   help="print the reorgs a correct tail of --recording reports, as JSON, and exit")
    p.add_argument("--verbose", action="store_true", help="log every head")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.expected_reorgs:
        if not args.recording:
            _parser().error("--expected-reorgs needs --recording")
        recording = load_recording(args.recording, args.orphans)
        json.dump([r.asDict() for r in expected_reorgs(recording)], sys.stdout, indent=1)
        sys.stdout.write("\n")
        return

    from twisted.internet import reactor
    from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner,
                                textFileLogObserver)

    if args.recording:
        node = ReplayNode.recording(reactor, load_recording(args.recording, args.orphans), args.block_time,
                                    loop=args.loop, chain_id=args.chain_id, prefill=args.prefill)
    else:
        node = ReplayNode(reactor, None, args.block_time, args.chain_id, loop=args.loop,
                          start_height=args.start_height, prefill=args.prefill)
    try:
        svc = node.asService(reactor, args.listen)
        svc.privilegedStartService()
    except Exception as e:  # a bad endpoint string, or one that cannot be bound
        _parser().error(f"cannot listen on {args.listen!r}: {e}")
    level = LogLevel.debug if args.verbose else LogLevel.info  # what was logged so far comes out too
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(textFileLogObserver(sys.stdout),
                                                           [LogLevelFilterPredicate(defaultLogLevel=level)])])
    svc.startService()
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
