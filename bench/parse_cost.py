"""
CPU to parse the worst messages a client may send, before and after they
were charged by their parse cost (explorerd.parsecost).

Before: any message up to WEBSOCKET_MAX_MESSAGE_SIZE (1 MiB) was parsed for
one token.  After: the costliest message of each shape that a fresh
connection's burst (60) pays for is parsed, for what it counts as; a bigger
one is refused for the price of counting its values.

    python bench/parse_cost.py [--json out.json]

Prints a markdown table: per shape and parser, ms to parse the 1 MiB
message (before), the largest accepted one's size, ms and messages it
counts as, microseconds per message counted (after), and what refusing
one costs (counting the values of the biggest that passes the byte count;
a bigger one is refused by its length alone).
"""

import argparse
import json
import sys
import time

import cbor2
import msgpack
import txaio

txaio.use_twisted()

from autobahn.wamp.serializer import CBORSerializer, JsonSerializer, MsgPackSerializer  # noqa: E402

from explorerd import parsecost  # noqa: E402

MIB = 1 << 20
BURST = 60


def repeat(unit, size, head=b"[", tail=b"]", sep=b","):
    n = max(1, (size - len(head) - len(tail) + len(sep)) // (len(unit) + len(sep)))
    return head + sep.join([unit] * n) + tail


JSON_SHAPES = {
    "[[],[],…]": lambda size: repeat(b"[]", size),
    "[[[]],[[]],…]": lambda size: repeat(b"[[]]", size),
    "[{},{},…]": lambda size: repeat(b"{}", size),
    "[1,1,…]": lambda size: repeat(b"1", size),
    '{"1":1,…}': lambda size: b"{" + b",".join(b'"%d":1' % i for i in range(size // 9)) + b"}",
    "4,299-digit integers": lambda size: repeat(b"9" * 4299, size),
    "[1.5e300,…]": lambda size: repeat(b"1.5e300", size),
    '["0x…" addresses]': lambda size: repeat(b'"0x' + b"ab" * 20 + b'"', size),
}
BINARY_SHAPES = {
    "msgpack [[],[],…]": lambda size: b"\xdd" + (size - 5).to_bytes(4, "big") + b"\x90" * (size - 5),
    "msgpack [1,1,…]": lambda size: b"\xdd" + (size - 5).to_bytes(4, "big") + b"\x01" * (size - 5),
    "cbor [[],[],…]": lambda size: b"\x9a" + (size - 5).to_bytes(4, "big") + b"\x80" * (size - 5),
    "cbor [{},{},…]": lambda size: b"\x9a" + (size - 5).to_bytes(4, "big") + b"\xa0" * (size - 5),
}


def cpu(f, payload, runs):
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        try:
            f(payload)
        except Exception:  # garbage for the protocol: parsed all the same
            pass
        best = min(best, time.process_time() - start)
    return best


def largest_accepted(make, values):
    """The biggest payload of a shape that counts as at most a burst."""
    lo, hi = 16, MIB
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if parsecost.cost(make(mid), values, BURST)[0] <= BURST:
            lo = mid
        else:
            hi = mid
    return make(lo)


def measure(name, parser, parse, make, values, runs):
    before = make(MIB)
    before_ms = cpu(parse, before, runs) * 1e3
    after = largest_accepted(make, values)
    cost, _ = parsecost.cost(after, values, BURST)
    after_ms = cpu(parse, after, runs) * 1e3
    # Refused after counting its values: the biggest size that passes the byte count.
    counted = make(BURST * parsecost.BYTES_PER_MESSAGE)
    refuse_ms = cpu(lambda p: parsecost.cost(p, values, BURST), counted, 20) * 1e3
    return {"shape": name, "parser": parser, "before_bytes": len(before), "before_ms": before_ms,
            "after_bytes": len(after), "after_counts": cost, "after_ms": after_ms,
            "after_us_per_message": after_ms * 1e3 / cost, "refuse_ms": refuse_ms}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    wamp_json = JsonSerializer()
    rows = []
    for name, make in JSON_SHAPES.items():
        rows.append(measure(name, "json.loads (/v1/stream, /v1/rpc)", json.loads, make, parsecost.json_values,
                            args.runs))
        rows.append(measure(name, "WAMP JSON", lambda p: wamp_json.unserialize(p, False), make,
                            parsecost.json_values, 1))
    binary = {"msgpack": (MsgPackSerializer(), msgpack.unpackb), "cbor": (CBORSerializer(), cbor2.loads)}
    for name, make in BINARY_SHAPES.items():
        serializer, _ = binary[name.split()[0]]
        rows.append(measure(name, "WAMP " + name.split()[0], lambda p, s=serializer: s.unserialize(p, True), make,
                            parsecost.byte_values, args.runs))
    small = b'{"action":"ping"}'
    per = cpu(lambda p: [json.loads(p) for _ in range(1000)], small, 3)
    print(f"A small message: {per * 1e3:.2f} us to json.loads (the frame and the rest: ~45 us a message)\n")
    print("| shape | parser | before: 1 MiB, 1 message: ms | after: largest accepted, bytes | counts as | ms "
          "| us per message counted | refusing 480 KiB of it: ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['parser']} | {r['before_ms']:.1f} | {r['after_bytes']:,} | {r['after_counts']} "
              f"| {r['after_ms']:.2f} | {r['after_us_per_message']:.0f} | {r['refuse_ms']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": sys.version, "burst": BURST, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
