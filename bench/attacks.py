#!/usr/bin/env python3
"""
Hostile clients against explorerd, with bystanders watching: what each attack cost the others.

  python bench/attacks.py                        # every attack, 200 bystanders, 10-block windows
  python bench/attacks.py --quick                # 30 bystanders, 4-block windows, smaller attacks
  python bench/attacks.py --attacks flood,stalled --bystanders 500 --blocks 10 --out /tmp/A.md

One fresh server per attack (bench/hubserver.py: the real explorerd Daemon fed one mainnet block a
second with hub.publish), with explorerd's own defaults for every limit (hubserver's bench
setting that turns the per-IP limits off is undone here) except what an attack needs.  Bystanders
(bench/loadgen.mjs, `newBlocks`+`newTxs` with `"batch": true`, on source addresses 127.0.0.60 and
up, at most 8 per address so the default rate limit admits them all) subscribe; then a baseline
window of --blocks blocks; then the attacker (this script, `attacks.py attacker …`: asyncio and the
bare sockets of tests/soak/wsraw.py, in a process of its own, from 127.0.0.2-50) runs for
--blocks seconds (longer where its policy needs more: the stalled readers' write deadline) while
blocks keep coming.  Measured: the attacker's attempts and what it saw the server do (close codes,
HTTP statuses, resets), the server's own counters (/metrics, before and after), bystanders' lost /
duplicated / out-of-order messages and first-frame latency (block hand-off -> arrival, one clock)
in the baseline and under attack, the server's RSS and open fds before, at their peak, and after
(the attacker gone and the server settled).  Writes bench/ATTACKS.md (--out) and raw JSON under
bench/results/<date>-attacks/.
"""

import argparse
import asyncio
import collections
import datetime
import json
import math
import os
import random
import signal
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, REPO)

import run  # noqa: E402
from tests import scrapeflood  # noqa: E402
from tests.soak import wsraw  # noqa: E402

ATTACKER_SOURCES = [f"127.0.0.{i}" for i in range(2, 51)]
BYSTANDER_HOST_BASE = 60          # bystanders on 127.0.0.60 and up
BYSTANDERS_PER_HOST = 8           # under the default rate limit's burst (10)

# What each attack is, what explorerd should do, and how its attacker is sized.
ATTACKS = {
    "flood": dict(title="message flood: subscribe/unsubscribe/ping pipelined at full speed until closed, "
                        "5 connections at a time, a new one every 0.25 s each",
                  expect="close 1008 (message budget)"),
    "flood-deaf": dict(title="as flood, but each connection ignores the close frame and keeps sending until "
                             "the server drops it",
                       expect="close 1008, then the TCP connection dropped"),
    "garbage": dict(title="garbage: invalid JSON, wrong types, unknown actions/channels, binary frames, "
                          "3,000-deep nesting, a 5,000-digit number; 5 connections at 10 msg/s (under the budget)",
                    expect="error frames, connections kept open"),
    "oversize": dict(title="one text frame of 1 MiB + 4 KiB, 1 connection a second",
                     expect="close 1009"),
    "fragments": dict(title="a text message in 5 fragments of 256 KiB + 1 KiB (> 1 MiB in all), 1 connection a second",
                      expect="close 1009"),
    "utf8": dict(title="a text frame of invalid UTF-8, 4 connections a second", expect="close 1007"),
    "protocol": dict(title="protocol violations: unmasked frame, 126-byte ping, RSV1 bit, reserved opcode, "
                           "fragmented ping; 4 connections a second", expect="close 1002"),
    "slowloris": dict(title="slowloris: a pool of sockets that never finish the upgrade (half silent, half a "
                            "header byte every 0.5 s), each reopened when dropped; handshake timeout 2 s",
                      expect="dropped at the handshake timeout", settings={"handshake_timeout": 2.0}),
    "storm-one": dict(title="connection storm from one address (127.0.0.2), as fast as it goes, "
                            "each accepted one closed at once; default rate limit (10/min)",
                      expect="HTTP 429 past the burst of 10"),
    "storm-many": dict(title="connection storm from 49 addresses (127.0.0.2-50), as fast as it goes; "
                             "default rate limit (10/min per address)",
                       expect="HTTP 429 past 10 per address"),
    "stalled": dict(title="stalled readers: subscribe to newBlocks+newTxs with a 4 KiB receive buffer and a "
                          "1400-byte MSS, never read",
                    expect="close 1008 (too slow) or reset, by the write deadline / queue limit",
                    extra_seconds=25),
    "replay": dict(title="replay loop: subscribe with `since` = the oldest block, again at every answer, "
                         "1 connection a second",
                   expect="close 1008 (message budget: replays count by size)"),
    "wamp": dict(title="WAMP misuse at /v1/wamp: SUBSCRIBE before HELLO, HELLO for another realm, a second "
                       "HELLO, a non-array message; PUBLISH/REGISTER after WELCOME; 2 connections a second",
                 expect="ABORT + close 1002 (violations), ABORT no_such_realm, ERROR not_authorized"),
    "scrape-flood": dict(title="scrape flood: 200 keep-alive connections (127.0.0.2-50), a third each "
                               "pipelining GETs of /metrics, of /healthz and of a static file (/app.js, 36 KB), "
                               "50 in flight each, another sent as each answer comes",
                         expect="answered in turns; bystanders' p99 under 1 s", web_root=True),
    "http-abuse": dict(title="HTTP abuse, 4 connections a second in turn: a POST body trickled a byte every "
                             "0.25 s, a 20 KiB header line, a 20 KiB head of 1 KiB headers, 501 headers, "
                             "Content-Length with Transfer-Encoding, two Content-Lengths; handshake timeout 2 s",
                       expect="400/431 and closed; the slow body dropped at the handshake timeout",
                       settings={"handshake_timeout": 2.0}),
    "tls-flood": dict(title="TLS flood on an ssl: listener (EC P-256 certificate, bystanders over wss://): one "
                            "address (127.0.0.2) upgrades until refused (429), then 50 at a time open TLS "
                            "connections as fast as it can, half the window each sending an upgrade, then "
                            "half the window closing right after the handshake",
                      expect="closed at accept, before any TLS work, while the address is rate-limited",
                      tls=True, extra_seconds=10),
    "wamp-amplify": dict(title="WAMP amplification: one client (127.0.0.2) calling explorer.blocks_since(oldest "
                               "block) again at every RESULT, reconnecting when closed, for 30 s",
                         expect="RESULTs charged by their bytes: close 1008 past the budget; MiB pulled bounded "
                                "by 3.75 MiB a session plus 1.25 MiB/s", extra_seconds=20),
    "wamp-subs": dict(title="WAMP subscription storm: one session pipelining 100,000 SUBSCRIBEs (exact, prefix "
                            "and wildcard patterns, most matching no topic); one more at 19/s (under the "
                            "budget), prefix and wildcard patterns over every topic",
                      expect="at most 8 subscriptions a session (ERROR too_many_subscriptions); the pipelined "
                             "one closed 1008"),
    "stream-resubscribe": dict(title="/v1/stream re-subscribing a 1,000-address filter at every answer, reconnecting "
                                     "when closed (127.0.0.2); one more (127.0.0.3) every 1.3 s",
                               expect="the loop closed 1008 (filters count one per 40 entries); the paced one kept"),
    "rpc-abuse": dict(title="/v1/rpc: 100 eth_subscribe newHeads on one connection at 16/s; eth_getBalance "
                            "to a node that answers in 2 s, 60 at once then 19/s on another",
                      expect="-32005 past 64 subscriptions and past 16 calls in flight + 100 waiting",
                      node=True),
    "squatters": dict(title="squatters: 10 addresses (127.0.0.2-11) x 100 connections that upgrade, never "
                            "subscribe and send a ping action every 5 s (rate limit raised to 100/min for "
                            "them); a newcomer (127.0.0.55) tries to connect every 0.5 s",
                      expect="newcomers refused with 503 while the cap is full; every squatter closed 1008 "
                             "at 30 s; then the newcomer gets in",
                      settings={"rate_limit": 100}, extra_seconds=28),
    "nested-json": dict(title="parse cost: 849 KB of valid JSON [[],[],…] (~65 ms to json.loads, ~0.2 s through "
                              "WAMP's JSON decoder) to /v1/stream, /v1/rpc and /v1/wamp in turn, 3 connections "
                              "a second, each sending it up to 20 times",
                        expect="close 1009 (too big to parse), unparsed"),
}
ORDER = list(ATTACKS)


def sizes(quick):
    """Attack sizes (connections, pool sizes) for full and quick runs."""
    return {"stalled": 50 if quick else 200, "slowloris": 100 if quick else 300,
            "storm_concurrency": 50 if quick else 100, "storm_max": 5000 if quick else 30000,
            "scrapers": 50 if quick else 200, "squatters": 100}


# =============================================================================================
# The attacker process: `python bench/attacks.py attacker --kind K --port P --seconds S …`.
# Prints {"event":"started","t":…} when the attack begins and {"event":"result",…} at its end.

class Tally:
    def __init__(self):
        self.outcomes = collections.Counter()   # what the server did, as the attacker saw it
        self.connections = 0                    # TCP connections opened
        self.messages = 0                       # messages / frames sent after the upgrade
        self.bytes_sent = 0
        self.replies = collections.Counter()    # replies the server sent (types / error codes)
        self.timings = collections.defaultdict(list)
        self.notes = {}
        self._source = 0

    def source(self, sources):
        self._source += 1
        return sources[(self._source - 1) % len(sources)]

    def result(self):
        timings = {}
        for k, v in self.timings.items():
            v = sorted(v)
            timings[k] = {"n": len(v), "p50": round(run.pct(v, 50), 3), "max": round(v[-1], 3)} if v else {"n": 0}
        return {"connections": self.connections, "messages": self.messages, "bytes_sent": self.bytes_sent,
                "outcomes": dict(self.outcomes.most_common()), "replies": dict(self.replies.most_common()),
                "timings": timings, "notes": self.notes}


def short_reason(payload):
    reason = payload[2:].decode("utf-8", "replace")
    head = reason.split(":", 1)[0].strip()
    return head if len(head) <= 50 else head[:48] + "…"


class Conn:
    """An upgraded bare socket: frames out, frames in, and how it ended."""

    def __init__(self, s, rest=b""):
        self.s = s
        self.loop = asyncio.get_running_loop()
        self.reader = wsraw.FrameReader(rest)
        self.ended = None

    async def send(self, data, tally=None, messages=1):
        try:
            await self.loop.sock_sendall(self.s, data)
        except OSError as e:
            if self.ended is None:
                self.ended = "reset while sending" if isinstance(e, ConnectionResetError) else f"{type(e).__name__} while sending"
            return False
        if tally is not None:
            tally.messages += messages
            tally.bytes_sent += len(data)
        return True

    async def read_end(self, timeout, on_frame=None, reply=True):
        """Read until a close frame (answered if ``reply``), EOF, reset or ``timeout``; returns how it ended."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for opcode, payload in self.reader.frames():
                        if opcode == 0x8:
                            code = wsraw.close_code(payload)
                            reason = short_reason(payload)
                            if reply:
                                try:
                                    await self.loop.sock_sendall(self.s, wsraw.close(code or 1000))
                                except OSError:
                                    pass
                            self.ended = f"close {code}" + (f" ({reason})" if reason else "")
                            return self.ended
                        if on_frame is not None:
                            on_frame(opcode, payload)
                    try:
                        chunk = await self.loop.sock_recv(self.s, 1 << 16)
                    except ConnectionResetError:
                        self.ended = "reset"
                        return self.ended
                    if not chunk:
                        self.ended = "EOF without close frame"
                        return self.ended
                    self.reader.feed(chunk)
        except TimeoutError:
            return f"still open after {timeout:g}s"

    def close(self):
        self.s.close()


async def upgrade(port, tally, source, path="/v1/stream", headers="", rcvbuf=None, mss=None, timeout=10):
    """Open and upgrade a socket: a Conn, or the outcome string if the server refused it."""
    tally.connections += 1
    try:
        if path == "/v1/stream" and not headers:
            s, status, rest = await wsraw.handshake(port, source=source, rcvbuf=rcvbuf, mss=mss, timeout=timeout)
        else:
            s = await wsraw.open_socket(port, source, rcvbuf, mss, timeout)
            req = wsraw.request(port).decode().replace("/v1/stream", path, 1)
            req = req[:-2] + headers + "\r\n"
            try:
                await asyncio.get_running_loop().sock_sendall(s, req.encode())
                status, _, rest = await wsraw.read_head(s, timeout)
            except BaseException:
                s.close()
                raise
    except ConnectionResetError:
        return "reset at handshake"
    except (ConnectionError, OSError) as e:
        return f"handshake failed: {type(e).__name__}"
    except TimeoutError:
        return f"no handshake answer in {timeout}s"
    if status != 101:
        s.close()
        return f"HTTP {status}"
    return Conn(s, rest)


async def paced(per_second, seconds, fn):
    """Call ``fn(i)`` at ``per_second`` for ``seconds``, each in its own task; wait for them all."""
    n = max(1, round(per_second * seconds))
    t0 = time.monotonic()
    tasks = []
    for i in range(n):
        delay = t0 + i / per_second - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fn(i)))
    await asyncio.gather(*tasks)


def text_replies(tally):
    def on_frame(opcode, payload):
        if opcode != 0x1:
            tally.replies[f"opcode {opcode}"] += 1
            return
        try:
            m = json.loads(payload)
        except ValueError:
            tally.replies["unparseable"] += 1
            return
        if isinstance(m, dict) and m.get("type") == "error":
            tally.replies["error " + str(m.get("error", {}).get("code"))] += 1
        elif isinstance(m, dict):
            tally.replies[str(m.get("type"))] += 1
        elif isinstance(m, list) and m:
            tally.replies[wamp_label(m)] += 1
    return on_frame


# ---- the attacks ----------------------------------------------------------------------------

async def attack_flood(a, tally, deaf=False):
    """
    Pipelined subscribe/unsubscribe/ping as fast as the socket takes them.  The polite flooder stops
    when it reads the server's close frame (and drops the TCP connection: the server has megabytes of
    its frames still to read, ahead of any close reply); the deaf one ignores the close frame and
    keeps sending until the server drops the connection (at most 10 s).
    """
    cycle = [{"action": "subscribe", "channels": ["newBlocks", "newTxs"]},
             {"action": "unsubscribe", "channels": ["newTxs"]}, {"action": "ping"}]
    batch = b"".join(wsraw.text(cycle[i % 3]) for i in range(60))
    deadline = time.monotonic() + a.seconds

    async def one():
        c = await upgrade(a.port, tally, tally.source(a.sources))
        if isinstance(c, str):
            tally.outcomes[c] += 1
            return
        sent = [0]
        closed_at = []
        t0 = time.monotonic()

        async def flood():
            while time.monotonic() - t0 < 10 and (deaf or not closed_at):
                try:
                    await c.loop.sock_sendall(c.s, batch)
                except OSError as e:
                    return type(e).__name__
                sent[0] += 60
                tally.messages += 60
                tally.bytes_sent += len(batch)
                await asyncio.sleep(0)
            return "stopped"

        sender = asyncio.create_task(flood())
        end = await c.read_end(10, text_replies(tally), reply=False)
        closed_at.append(time.monotonic())
        before_close = sent[0]
        tally.timings["messages sent until the close frame was read"].append(before_close)
        tally.timings["seconds until the close frame was read"].append(closed_at[0] - t0)
        if deaf and end.startswith("close"):
            # Keep sending; drain what the server sends, until it drops the connection.
            after = await c.read_end(10 - (closed_at[0] - t0))
            how = await sender
            tally.timings["seconds from the close frame to the connection's end"].append(time.monotonic() - closed_at[0])
            tally.timings["messages sent after the close frame"].append(sent[0] - before_close)
            end += f", ignored: then {after}" + (f" (send: {how})" if how not in ("stopped",) else "")
        else:
            sender.cancel()
        tally.outcomes[end] += 1
        c.close()

    async def worker():
        while time.monotonic() < deadline:
            t = time.monotonic()
            await one()
            await asyncio.sleep(max(0.0, 0.25 - (time.monotonic() - t)))

    await asyncio.gather(*(worker() for _ in range(5)))


async def attack_flood_deaf(a, tally):
    await attack_flood(a, tally, deaf=True)


def garbage_messages(rnd):
    # Deeper than json.loads goes (100,000 deep, 100,000 values, is now refused unparsed: nested-json).
    deep = "[" * 3_000 + "]" * 3_000
    fixed = [
        ("text", "not json"), ("text", '{"action": "subscribe", '), ("text", "{'action': 'ping'}"),
        ("text", "[]"), ("text", "42"), ("text", '"subscribe"'), ("text", "null"),
        ("text", json.dumps({"action": 5})), ("text", json.dumps({"action": None})),
        ("text", json.dumps({"action": "subscribe", "channels": "newBlocks"})),
        ("text", json.dumps({"action": "subscribe", "channels": [1, 2, {}]})),
        ("text", json.dumps({"action": "subscribe", "channels": ["newBlocks"], "since": "yesterday"})),
        ("text", json.dumps({"action": "subscribe", "channels": ["newTxs"], "filter": {"addresses": ["nope"]}})),
        ("text", json.dumps({"action": "subscribe", "channels": ["newTxs"], "filter": {"addresses": []}})),
        ("text", json.dumps({"action": "subscribe", "channels": ["newBlocks"], "batch": "yes"})),
        ("text", json.dumps({"action": "delete", "channels": ["newBlocks"]})),
        ("text", json.dumps({"action": "subscribe", "channels": ["pendingTxs", "mempool"]})),
        ("text", json.dumps({"action": "ping", "extra": "x" * 10_000})),
        ("text", deep), ("text", "9" * 5000), ("text", json.dumps({"action": "subscribe" * 1000})),
        ("binary", bytes(range(256))), ("binary", b'{"action":"ping"}'),
    ]
    frames = []
    for kind, payload in fixed:
        frames.append(wsraw.frame(payload, opcode=0x2 if kind == "binary" else 0x1))
    for _ in range(20):  # random printable text
        frames.append(wsraw.frame("".join(chr(rnd.randrange(32, 127)) for _ in range(rnd.randrange(1, 200)))))
    return frames


async def attack_garbage(a, tally):
    rnd = random.Random(7)
    frames = garbage_messages(rnd)
    deadline = time.monotonic() + a.seconds

    async def one():
        c = await upgrade(a.port, tally, tally.source(a.sources))
        if isinstance(c, str):
            tally.outcomes[c] += 1
            return
        reading = asyncio.create_task(c.read_end(a.seconds + 15, text_replies(tally)))
        i = 0
        while time.monotonic() < deadline and not reading.done():
            if not await c.send(frames[i % len(frames)], tally):
                break
            i += 1
            await asyncio.sleep(0.1)
        if not reading.done():
            await c.send(wsraw.close(1000))
            end = await reading
            end = "kept open to the end; " + end + " after our close 1000"
        else:
            end = reading.result()
        tally.outcomes[end] += 1
        c.close()

    await asyncio.gather(*(one() for _ in range(5)))


async def one_shot(a, tally, payload_for, variant_of=None, read_timeout=10.0):
    """A connection that sends one thing and waits for the server to end it."""
    async def fn(i):
        c = await upgrade(a.port, tally, tally.source(a.sources))
        variant = variant_of(i) if variant_of else ""
        prefix = f"{variant}: " if variant else ""
        if isinstance(c, str):
            tally.outcomes[prefix + c] += 1
            return
        t0 = time.monotonic()
        reading = asyncio.create_task(c.read_end(read_timeout, text_replies(tally)))
        await c.send(payload_for(i), tally)
        end = await reading
        if end.startswith("close") or end.startswith("EOF") or end == "reset":
            tally.timings["seconds until closed"].append(time.monotonic() - t0)
        if c.ended and c.ended.endswith("while sending") and not end.startswith("close"):
            end = c.ended + ", then " + end
        tally.outcomes[prefix + end] += 1
        c.close()
    return fn


async def attack_oversize(a, tally):
    big = wsraw.frame(b"a" * ((1 << 20) + 4096))
    await paced(1, a.seconds, await one_shot(a, tally, lambda i: big))


async def attack_fragments(a, tally):
    piece = b"a" * ((256 << 10) + 1024)
    msg = b"".join(wsraw.frame(piece, opcode=0x1 if i == 0 else 0x0, fin=i == 4) for i in range(5))
    await paced(1, a.seconds, await one_shot(a, tally, lambda i: msg))


async def attack_utf8(a, tally):
    await paced(4, a.seconds, await one_shot(a, tally, lambda i: wsraw.frame(b'{"action": "\xff\xfe"}')))


PROTOCOL = [
    ("unmasked text frame", lambda: b"\x81\x11" + b'{"action":"ping"}'),
    ("126-byte ping", lambda: wsraw.frame(b"x" * 126, opcode=0x9)),
    ("RSV1 set", lambda: bytes([0xC1]) + wsraw.text({"action": "ping"})[1:]),
    ("reserved opcode 3", lambda: wsraw.frame(b"hello", opcode=0x3)),
    ("fragmented ping", lambda: wsraw.frame(b"hi", opcode=0x9, fin=False)),
]


async def attack_protocol(a, tally):
    await paced(4, a.seconds, await one_shot(a, tally, lambda i: PROTOCOL[i % len(PROTOCOL)][1](),
                                             variant_of=lambda i: PROTOCOL[i % len(PROTOCOL)][0]))


async def attack_slowloris(a, tally):
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + a.seconds
    still_open = collections.Counter()

    async def slot(i):
        trickle = i % 2 == 1
        kind = "byte-by-byte" if trickle else "silent"
        while time.monotonic() < deadline:
            tally.connections += 1
            try:
                s = await wsraw.open_socket(a.port, tally.source(a.sources))
            except OSError as e:
                tally.outcomes[f"{kind}: connect failed ({type(e).__name__})"] += 1
                await asyncio.sleep(0.2)
                continue
            t0 = time.monotonic()
            got = b""
            end = None
            try:
                if trickle:
                    head = f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\nX-Slow: ".encode()
                    await loop.sock_sendall(s, head)
                    tally.bytes_sent += len(head)
                while time.monotonic() < deadline:
                    if trickle:
                        await loop.sock_sendall(s, b"a")
                        tally.bytes_sent += 1
                    try:
                        async with asyncio.timeout(0.5):
                            data = await loop.sock_recv(s, 4096)
                    except TimeoutError:
                        continue
                    if not data:
                        status = got.split(b" ", 2)[1:2]
                        end = "dropped (EOF)" if not got else f"HTTP {status[0].decode(errors='replace') if status else '?'}, then closed"
                        break
                    got += data
            except ConnectionResetError:
                end = "reset"
            except OSError as e:
                end = f"{type(e).__name__}"
            finally:
                s.close()
            if end is None:
                age = time.monotonic() - t0
                # One reopened late in the window is pending for less than the timeout: no failure.
                still_open[f"{kind}: pending at the end, " +
                           ("younger than the timeout" if age < a.handshake_timeout + 1.0 else
                            f"open for over {a.handshake_timeout + 1.0:g} s")] += 1
            else:
                tally.outcomes[f"{kind}: {end}"] += 1
                tally.timings[f"{kind}: dropped after (s)"].append(time.monotonic() - t0)

    await asyncio.gather(*(slot(i) for i in range(a.pool)))
    for key, n in still_open.items():
        tally.outcomes[key] += n


async def attack_storm(a, tally):
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + a.seconds
    budget = [a.storm_max]
    t0 = time.monotonic()

    async def worker():
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            c = await upgrade(a.port, tally, tally.source(a.sources), timeout=15)
            if isinstance(c, str):
                tally.outcomes[c] += 1
                continue
            tally.outcomes["HTTP 101"] += 1
            try:
                await loop.sock_sendall(c.s, wsraw.close())
            except OSError:
                pass
            c.close()

    await asyncio.gather(*(worker() for _ in range(a.concurrency)))
    tally.notes["handshakes_per_s"] = round(tally.connections / max(1e-9, time.monotonic() - t0))


def healthz(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return json.loads(r.read())
    except Exception as e:  # a 503 (degraded) still has a body
        body = getattr(e, "read", None)
        try:
            return json.loads(body()) if body else {}
        except Exception:
            return {}


async def attack_stalled(a, tally):
    sub = wsraw.text({"action": "subscribe", "channels": ["newBlocks", "newTxs"]})
    conns = []
    sem = asyncio.Semaphore(50)

    async def one():
        async with sem:
            c = await upgrade(a.port, tally, tally.source(a.sources), rcvbuf=4096, mss=1400)
        if isinstance(c, str):
            tally.outcomes[c] += 1
            return
        await c.send(sub, tally)
        conns.append(c)

    await asyncio.gather(*(one() for _ in range(a.stalled)))
    t0 = time.monotonic()
    # Nobody reads.  The server's /healthz says when it has let go of them all.
    deadline = t0 + a.seconds + a.extra_seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        h = await asyncio.to_thread(healthz, a.port)
        if "clients" in h and h["clients"] <= a.bystanders:
            tally.notes["all dropped after (s)"] = round(time.monotonic() - t0, 1)
            break
    else:
        tally.notes["all dropped after (s)"] = None
    # Hold on till the end of the attack window anyway (the same length of attack for every row).
    await asyncio.sleep(max(0.0, t0 + a.seconds - time.monotonic()))

    async def finish(c):
        end = await c.read_end(5)
        tally.outcomes[end] += 1
        c.close()

    await asyncio.gather(*(finish(c) for c in conns))


async def attack_replay(a, tally):
    since = {"height": a.since_height, "hash": a.since_hash}
    ask = wsraw.text({"action": "subscribe", "channels": ["newBlocks", "newTxs"], "since": since})

    async def fn(i):
        c = await upgrade(a.port, tally, tally.source(a.sources))
        if isinstance(c, str):
            tally.outcomes[c] += 1
            return
        answers = asyncio.Queue()
        received = [0]

        def on_frame(opcode, payload):
            received[0] += len(payload)
            if opcode == 0x1 and payload.startswith(b'{"type":"subscribed"'):
                m = json.loads(payload)
                tally.replies["subscribed"] += 1
                tally.timings["blocks replayed per answer"].append(m.get("replayed", 0))
                answers.put_nowait(1)
            elif opcode == 0x1 and payload.startswith(b'{"type":"error"'):
                tally.replies["error " + json.loads(payload)["error"]["code"]] += 1

        reading = asyncio.create_task(c.read_end(15, on_frame))
        t0 = time.monotonic()
        sent = 0
        while not reading.done() and time.monotonic() - t0 < 12:
            if not await c.send(ask, tally):
                break
            sent += 1
            waiter = asyncio.create_task(answers.get())
            await asyncio.wait([waiter, reading], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        end = await reading
        tally.timings["replays asked until closed"].append(sent)
        tally.timings["MiB received per connection"].append(received[0] / 1048576)
        tally.outcomes[end] += 1
        c.close()

    await paced(1, a.seconds, fn)


def wamp_label(m):
    """ABORT/ERROR with their error URI, GOODBYE with its reason, else the message's name."""
    name = WAMP_NAMES.get(m[0], f"wamp {m[0]}")
    if m[0] == 3 and len(m) > 2:
        return f"{name} {m[2]}"
    if m[0] == 8 and len(m) > 4:
        return f"{name} {m[4]}"
    if m[0] == 6 and len(m) > 2:
        return f"{name} {m[2]}"
    return name


WAMP_NAMES = {1: "HELLO", 2: "WELCOME", 3: "ABORT", 6: "GOODBYE", 8: "ERROR", 17: "PUBLISHED", 33: "SUBSCRIBED",
              36: "EVENT", 50: "RESULT", 65: "REGISTERED"}
HELLO = [1, "explorer", {"roles": {"subscriber": {}, "publisher": {}, "callee": {}, "caller": {}}}]
WAMP = [
    ("SUBSCRIBE before HELLO", [[32, 1, {}, "explorer.block"]]),
    ("HELLO for another realm", [[1, "not-a-realm", {"roles": {"subscriber": {}}}]]),
    ("a second HELLO", [HELLO, HELLO]),
    ("a message that is not an array", [HELLO, {"hello": "world"}]),
    ("PUBLISH + REGISTER after WELCOME", [HELLO, [16, 1, {"acknowledge": True}, "explorer.block", ["x"]],
                                          [64, 2, {}, "explorer.head"], [6, {}, "wamp.close.normal"]]),
]


async def attack_wamp(a, tally):
    async def fn(i):
        variant, msgs = WAMP[i % len(WAMP)]
        c = await upgrade(a.port, tally, tally.source(a.sources), path="/v1/wamp",
                          headers="Sec-WebSocket-Protocol: wamp.2.json\r\n")
        if isinstance(c, str):
            tally.outcomes[f"{variant}: {c}"] += 1
            return
        seen = []
        inner = text_replies(tally)
        goodbye = asyncio.Event()

        def on_frame(opcode, payload):
            inner(opcode, payload)
            try:
                m = json.loads(payload)
                seen.append(wamp_label(m))
                if m[0] == 6:
                    goodbye.set()
            except (ValueError, IndexError, KeyError, TypeError):
                seen.append("?")

        reading = asyncio.create_task(c.read_end(8, on_frame))
        for m in msgs:
            await c.send(wsraw.text(m), tally)
            await asyncio.sleep(0.05)
        waiter = asyncio.create_task(goodbye.wait())
        await asyncio.wait([waiter, reading], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not reading.done():  # the session ended with GOODBYE: the client closes the WebSocket
            await c.send(wsraw.close(1000))
            end = "our close 1000 after GOODBYE: " + await reading
        else:
            end = reading.result()
        got = ", ".join(x for x in seen if x != "WELCOME")
        tally.outcomes[f"{variant}: {got + ', ' if got else ''}{end}"] += 1
        c.close()

    await paced(2, a.seconds, fn)


# ---- the side doors, TLS, WAMP and JSON-RPC sessions, squatters, parse cost -------------------

def fast_frame(payload, opcode=0x1):
    """A client frame masked with zeros (valid, and no per-byte masking for big payloads)."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def fast_text(message):
    return fast_frame(json.dumps(message, separators=(",", ":")))


SCRAPE_PATHS = (b"/metrics", b"/healthz", b"/app.js")


async def attack_scrape_flood(a, tally):
    deadline = time.monotonic() + a.seconds
    answered = collections.Counter()

    async def scraper(i):
        source = tally.source(a.sources)
        tally.connections += 1
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", a.port, local_addr=(source, 0), limit=1 << 22), 10)
        except (OSError, TimeoutError) as e:
            tally.outcomes[f"connect failed ({type(e).__name__})"] += 1
            return
        sent = got = 0
        longest = 0.0
        path = SCRAPE_PATHS[i % 3]  # one path a connection: a /metrics answer does not hold up the others

        def send():
            nonlocal sent
            writer.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path)
            sent += 1
            tally.messages += 1

        end = None
        try:
            for _ in range(50):
                send()
            last = time.monotonic()
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + deadline - time.monotonic()):
                while True:
                    status, _, _ = await scrapeflood.read_answer(reader)
                    now = time.monotonic()
                    longest = max(longest, now - last)
                    last = now
                    got += 1
                    answered[path.decode()] += 1
                    if status != 200:
                        tally.replies[f"{path.decode()}: HTTP {status}"] += 1
                    send()
        except TimeoutError:
            end = "kept scraping to the end"
        except asyncio.IncompleteReadError:
            end = "closed by the server"
        except OSError as e:
            end = f"connection ended: {type(e).__name__}"
        finally:
            writer.close()
        tally.outcomes[end] += 1
        tally.timings[f"{path.decode()}: answers per scraper"].append(got)
        tally.timings[f"{path.decode()}: longest wait for an answer (s)"].append(longest)

    t0 = time.monotonic()
    await asyncio.gather(*(scraper(i) for i in range(a.scrapers)))
    elapsed = max(1e-9, time.monotonic() - t0)
    tally.notes["answers per s"] = ", ".join(f"{p} {n / elapsed:,.0f}" for p, n in answered.items())


def _head(lines, body=b""):
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


HTTP_ABUSE = [
    ("slow body", None),
    ("header line over 16 KiB", _head(["GET / HTTP/1.1", "Host: 127.0.0.1", "X-Big: " + "a" * 20_000])),
    ("head of 20 KiB in 1 KiB headers", _head(["GET / HTTP/1.1", "Host: 127.0.0.1"]
                                               + [f"X-H{i}: " + "a" * 1000 for i in range(20)])),
    ("501 headers", _head(["GET / HTTP/1.1", "Host: 127.0.0.1"] + [f"X-H{i}: a" for i in range(501)])),
    ("Content-Length + Transfer-Encoding", _head(["POST /v1/rpc HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 5",
                                                  "Transfer-Encoding: chunked"], b"0\r\n\r\n")),
    ("two Content-Lengths", _head(["POST /v1/rpc HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 2",
                                   "Content-Length: 3"], b"{}")),
]


async def attack_http_abuse(a, tally):
    loop = asyncio.get_running_loop()

    async def fn(i):
        variant, payload = HTTP_ABUSE[i % len(HTTP_ABUSE)]
        tally.connections += 1
        try:
            s = await wsraw.open_socket(a.port, tally.source(a.sources))
        except OSError as e:
            tally.outcomes[f"{variant}: connect failed ({type(e).__name__})"] += 1
            return
        t0 = time.monotonic()
        got = b""
        end = None

        async def trickle():
            head = _head(["POST /v1/rpc HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
                          "Content-Length: 1000"])
            await loop.sock_sendall(s, head)
            tally.bytes_sent += len(head)
            while True:
                await asyncio.sleep(0.25)
                await loop.sock_sendall(s, b" ")
                tally.bytes_sent += 1

        sender = None
        try:
            if payload is None:
                sender = asyncio.create_task(trickle())
            else:
                await loop.sock_sendall(s, payload)
                tally.bytes_sent += len(payload)
            tally.messages += 1
            async with asyncio.timeout(15):
                while True:
                    data = await loop.sock_recv(s, 65536)
                    if not data:
                        break
                    got += data
        except TimeoutError:
            end = "still open after 15 s"
        except ConnectionResetError:
            end = "reset"
        except OSError as e:
            end = type(e).__name__
        finally:
            if sender is not None:
                sender.cancel()
            s.close()
        if end is None:
            status = got.split(b" ", 2)[1:2]
            end = (f"HTTP {status[0].decode(errors='replace')}, then closed" if status else "dropped (EOF)")
        tally.outcomes[f"{variant}: {end}"] += 1
        tally.timings[f"{variant}: ended after (s)"].append(time.monotonic() - t0)

    await paced(4, a.seconds, fn)


async def tls_open(a, ctx, source, timeout=10):
    return await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", a.port, ssl=ctx, server_hostname="127.0.0.1", local_addr=(source, 0)), timeout)


async def tls_upgrade(a, ctx, source):
    """A TLS connection and a WebSocket upgrade: ('tls', status) / ('refused', how)."""
    try:
        reader, writer = await tls_open(a, ctx, source)
    except (OSError, EOFError) as e:  # ssl.SSLError is an OSError
        return "refused", type(e).__name__
    except TimeoutError:
        return "refused", "no TLS handshake in 10 s"
    try:
        writer.write(wsraw.request(a.port))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return "tls", f"HTTP {int(head.split(b' ', 2)[1])}"
    except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as e:
        return "tls", f"no answer ({type(e).__name__})"
    finally:
        writer.close()


async def attack_tls_flood(a, tally):
    import ssl

    ctx = ssl.create_default_context(cafile=a.cafile)
    source = a.sources[0]
    # Rate-limited first: upgrades until one is refused.
    for _ in range(30):
        tally.connections += 1
        kind, how = await tls_upgrade(a, ctx, source)
        tally.outcomes[f"exhausting the rate limit: {how}"] += 1
        if how == "HTTP 429" or kind == "refused":
            break
    half = (a.seconds + a.extra_seconds) / 2
    for phase, upgrade_too in (("upgrading", True), ("handshake only", False)):
        deadline = time.monotonic() + half
        counts = collections.Counter()
        t0 = time.monotonic()

        async def worker():
            while time.monotonic() < deadline:
                tally.connections += 1
                if upgrade_too:
                    kind, how = await tls_upgrade(a, ctx, source)
                    counts[kind] += 1
                    tally.outcomes[f"{phase}: " + ("closed at accept" if kind == "refused" else f"TLS, {how}")] += 1
                    continue
                try:
                    reader, writer = await tls_open(a, ctx, source)
                except (OSError, EOFError, TimeoutError):
                    counts["refused"] += 1
                    tally.outcomes[f"{phase}: closed at accept"] += 1
                    continue
                counts["tls"] += 1
                tally.outcomes[f"{phase}: TLS done, closed by us"] += 1
                writer.close()

        await asyncio.gather(*(worker() for _ in range(a.concurrency)))
        elapsed = max(1e-9, time.monotonic() - t0)
        tally.notes[f"{phase}: attempts per s"] = round((counts["tls"] + counts["refused"]) / elapsed)
        tally.notes[f"{phase}: TLS handshakes per s"] = round(counts["tls"] / elapsed, 1)


async def wamp_open(a, tally, source):
    """A WAMP JSON session (HELLO → WELCOME): a Conn, or the outcome string."""
    c = await upgrade(a.port, tally, source, path="/v1/wamp", headers="Sec-WebSocket-Protocol: wamp.2.json\r\n")
    if isinstance(c, str):
        return c
    await c.send(wsraw.text(HELLO), tally)
    return c


async def attack_wamp_amplify(a, tally):
    window = a.seconds + a.extra_seconds
    deadline = time.monotonic() + window
    source = a.sources[0]
    pulled = [0]
    request = [0]
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        c = await wamp_open(a, tally, source)
        if isinstance(c, str):
            tally.outcomes[c] += 1
            await asyncio.sleep(1.0)
            continue
        answers = asyncio.Queue()
        got = [0]

        def on_frame(opcode, payload):
            pulled[0] += len(payload)
            if payload.startswith(b"[50,"):
                got[0] += 1
                tally.replies["RESULT"] += 1
                answers.put_nowait(len(payload))
            elif payload.startswith(b"[2,"):
                answers.put_nowait(0)
            elif opcode == 0x1:
                try:
                    tally.replies[wamp_label(json.loads(payload))] += 1
                except (ValueError, IndexError, TypeError):
                    tally.replies["?"] += 1

        reading = asyncio.create_task(c.read_end(window + 10, on_frame))

        async def answer():
            waiter = asyncio.create_task(answers.get())
            await asyncio.wait([waiter, reading], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

        await answer()  # WELCOME
        while not reading.done() and time.monotonic() < deadline:
            request[0] += 1
            call = [48, request[0], {}, "explorer.blocks_since", [a.since_height, a.since_hash]]
            if not await c.send(wsraw.text(call), tally):
                break
            await answer()
        if not reading.done():
            await c.send(wsraw.close(1000))
            end = "open at the end, our close 1000: " + await reading
        else:
            end = reading.result()
        tally.outcomes[end] += 1
        tally.timings["RESULTs per session"].append(got[0])
        c.close()
    elapsed = time.monotonic() - t0
    tally.notes["MiB pulled"] = round(pulled[0] / 1048576, 1)
    tally.notes["MiB per s"] = round(pulled[0] / 1048576 / elapsed, 2)
    sessions = sum(v for k, v in tally.outcomes.items() if not k.startswith("HTTP"))
    tally.notes["bound by the byte charge (MiB)"] = round(sessions * 3.75 + elapsed * 1.25, 1)


WAMP_MATCHABLE = [("exact", t) for t in ("explorer.block", "explorer.tx", "explorer.reorg", "explorer.log")] + \
    [("prefix", "explorer.block"[:n]) for n in range(1, 15)] + \
    [("wildcard", w) for w in ("explorer.", ".block", ".tx", ".", "explorer.tx", ".log", ".reorg")]


async def attack_wamp_subs(a, tally):
    deadline = time.monotonic() + a.seconds

    async def session(variant, source, pipelined):
        c = await wamp_open(a, tally, source)
        if isinstance(c, str):
            tally.outcomes[f"{variant}: {c}"] += 1
            return
        ids = set()

        def on_frame(opcode, payload):
            try:
                m = json.loads(payload)
            except ValueError:
                return
            if m and m[0] == 33:
                ids.add(m[2])
            tally.replies[f"{variant}: {wamp_label(m)}"] += 1

        reading = asyncio.create_task(c.read_end(a.seconds + 10, on_frame))
        await asyncio.sleep(0.2)
        rnd = random.Random(3)
        if pipelined:
            async def pipeline():
                chunk = []
                for i in range(100_000):
                    if i % 3:
                        match, uri = "prefix" if i % 2 else "wildcard", f"explorer.x{rnd.randrange(1 << 30)}"
                    else:
                        match, uri = WAMP_MATCHABLE[i % len(WAMP_MATCHABLE)]
                    chunk.append(fast_text([32, i + 1, {"match": match}, uri]))
                    if len(chunk) == 1000:
                        if reading.done() or not await c.send(b"".join(chunk), tally, messages=1000):
                            return
                        chunk = []

            # A server that stops reading leaves a send blocked: its close frame ends the attempt.
            sender = asyncio.create_task(pipeline())
            await asyncio.wait([sender, reading], return_when=asyncio.FIRST_COMPLETED)
            sender.cancel()
        else:
            i = 0
            while time.monotonic() < deadline and not reading.done():
                match, uri = WAMP_MATCHABLE[4 + i % (len(WAMP_MATCHABLE) - 4)]
                if i % 5 == 4:
                    match, uri = rnd.choice(("prefix", "wildcard")), f"explorer.{rnd.randrange(1 << 30)}"
                if not await c.send(wsraw.text([32, i + 1, {"match": match}, uri]), tally):
                    break
                i += 1
                await asyncio.sleep(1 / 19)
        if not reading.done():
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        if not reading.done():
            await c.send(wsraw.close(1000))
            end = "open at the end, our close 1000: " + await reading
        else:
            end = reading.result()
        tally.outcomes[f"{variant}: {end}"] += 1
        tally.notes[f"{variant}: subscriptions granted"] = len(ids)
        c.close()

    await asyncio.gather(session("100,000 pipelined", a.sources[0], True),
                         session("19/s", a.sources[1], False))


async def attack_stream_resubscribe(a, tally):
    addresses = ["0x%040x" % (0xabc0000 + n) for n in range(1000)]
    sub = fast_text({"action": "subscribe", "channels": ["newTxs"], "filter": {"addresses": addresses}})
    deadline = time.monotonic() + a.seconds

    async def loop_from(variant, source, pause, reconnect):
        while time.monotonic() < deadline:
            c = await upgrade(a.port, tally, source)
            if isinstance(c, str):
                tally.outcomes[f"{variant}: {c}"] += 1
                if not reconnect:
                    return
                await asyncio.sleep(1.0)
                continue
            answers = asyncio.Queue()
            inner = text_replies(tally)

            def on_frame(opcode, payload):
                if payload.startswith(b'{"type":"subscribed"'):
                    answers.put_nowait(1)
                    tally.replies["subscribed"] += 1
                else:
                    inner(opcode, payload)

            reading = asyncio.create_task(c.read_end(a.seconds + 10, on_frame))
            n = 0
            while not reading.done() and time.monotonic() < deadline:
                if not await c.send(sub, tally):
                    break
                waiter = asyncio.create_task(answers.get())
                await asyncio.wait([waiter, reading], return_when=asyncio.FIRST_COMPLETED)
                if waiter.done():
                    n += 1
                waiter.cancel()
                if pause:
                    await asyncio.sleep(pause)
            if not reading.done():
                await c.send(wsraw.close(1000))
                end = "open at the end, our close 1000: " + await reading
            else:
                end = reading.result()
            tally.outcomes[f"{variant}: {end}"] += 1
            tally.timings[f"{variant}: subscribes answered per connection"].append(n)
            c.close()
            if not reconnect:
                return

    await asyncio.gather(loop_from("loop", a.sources[0], 0, True), loop_from("every 1.3 s", a.sources[1], 1.3, False))


async def attack_rpc_abuse(a, tally):
    deadline = time.monotonic() + a.seconds

    async def client(variant, source, requests, pace, burst):
        c = await upgrade(a.port, tally, source, path="/v1/rpc")
        if isinstance(c, str):
            tally.outcomes[f"{variant}: {c}"] += 1
            return
        ids = set()

        def on_frame(opcode, payload):
            try:
                m = json.loads(payload)
            except ValueError:
                return
            if isinstance(m, dict) and "error" in m:
                tally.replies[f"{variant}: error {m['error'].get('code')} "
                              f"{str(m['error'].get('message', ''))[:40]}…"] += 1
            elif isinstance(m, dict) and "result" in m and "id" in m:
                tally.replies[f"{variant}: result"] += 1
                if variant == "subscriptions":
                    ids.add(m["result"])

        reading = asyncio.create_task(c.read_end(a.seconds + 15, on_frame))
        for i, req in enumerate(requests):
            if i >= burst:
                await asyncio.sleep(1 / pace)
            if reading.done() or time.monotonic() > deadline:
                break
            if not await c.send(wsraw.text(dict(req, id=i + 1)), tally):
                break
        await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 3)  # the last answers
        if not reading.done():
            await c.send(wsraw.close(1000))
            end = "open at the end, our close 1000: " + await reading
        else:
            end = reading.result()
        tally.outcomes[f"{variant}: {end}"] += 1
        if variant == "subscriptions":
            tally.notes["subscriptions granted"] = len(ids)
        c.close()

    subscribe = {"jsonrpc": "2.0", "method": "eth_subscribe", "params": ["newHeads"]}
    balance = {"jsonrpc": "2.0", "method": "eth_getBalance", "params": ["0x" + "ab" * 20, "latest"]}
    await asyncio.gather(client("subscriptions", a.sources[0], [subscribe] * 100, 16, 0),
                         client("calls", a.sources[1], [balance] * 100_000, 19, 60))


async def attack_squatters(a, tally):
    window = a.seconds + a.extra_seconds
    t0 = time.monotonic()
    deadline = t0 + window
    sources = a.sources[:10]
    in_at = []
    sem = asyncio.Semaphore(100)

    async def squat(i):
        async with sem:
            c = await upgrade(a.port, tally, sources[i % len(sources)])
        if isinstance(c, str):
            tally.outcomes[c] += 1
            return
        in_at.append(time.monotonic())
        t_in = time.monotonic()
        loop = asyncio.get_running_loop()

        def on_frame(opcode, payload):
            if opcode == 0x9:  # the hub's ping: answered, as a live client does
                loop.create_task(c.send(fast_frame(payload, opcode=0xA)))

        reading = asyncio.create_task(c.read_end(window + 5, on_frame))
        ping = wsraw.text({"action": "ping"})
        while not reading.done() and time.monotonic() < deadline:
            await c.send(ping, tally)
            waiter = asyncio.create_task(asyncio.sleep(5))
            await asyncio.wait([waiter, reading], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        if not reading.done():
            await c.send(wsraw.close(1000))
            end = "open at the end, our close 1000: " + await reading
        else:
            end = reading.result()
            tally.timings["squatter closed after (s)"].append(time.monotonic() - t_in)
        tally.outcomes[end] += 1
        c.close()

    async def newcomer():
        seen = collections.Counter()
        await asyncio.sleep(3.0)  # the squatters are in
        while time.monotonic() < deadline:
            try:
                s, status, _ = await wsraw.handshake(a.port, source="127.0.0.55", timeout=5)
                s.close()
            except (OSError, TimeoutError) as e:
                status = type(e).__name__
            seen[f"newcomer: HTTP {status}"] += 1
            if status == 101:
                tally.notes["newcomer first admitted, s after the last squatter got in"] = \
                    round(time.monotonic() - max(in_at), 1) if in_at else None
                tally.notes["newcomer first admitted, s after the attack began"] = round(time.monotonic() - t0, 1)
                break
            await asyncio.sleep(0.5)
        else:
            tally.notes["newcomer first admitted, s after the last squatter got in"] = None
        for k, v in seen.items():
            tally.replies[k] += v

    await asyncio.gather(newcomer(), *(squat(i) for i in range(len(sources) * a.squatters)))
    tally.notes["squatters admitted"] = len(in_at)


def nested_payload():
    return b"[" + b"[]," * 283_000 + b"[]]"


async def attack_nested_json(a, tally):
    nested = nested_payload()
    endpoints = [
        ("/v1/stream", "/v1/stream", "", [], fast_frame(nested)),
        ("/v1/rpc", "/v1/rpc", "", [], fast_frame(nested)),
        ("/v1/wamp", "/v1/wamp", "Sec-WebSocket-Protocol: wamp.2.json\r\n", [wsraw.text(HELLO)],
         fast_frame(b"[32," + nested[1:])),
    ]

    async def fn(i):
        name, path, headers, opening, frame_ = endpoints[i % len(endpoints)]
        c = await upgrade(a.port, tally, tally.source(a.sources), path=path, headers=headers)
        if isinstance(c, str):
            tally.outcomes[f"{name}: {c}"] += 1
            return
        t0 = time.monotonic()
        reading = asyncio.create_task(c.read_end(15, text_replies(tally)))
        sent = [0]

        async def send():
            for m in opening:
                await c.send(m, tally)
            while not reading.done() and sent[0] < 20:
                if not await c.send(frame_, tally):
                    break
                sent[0] += 1

        # A server that stops reading leaves a send blocked: the close frame ends the attempt.
        sender = asyncio.create_task(send())
        end = await reading
        if end.startswith("close"):
            tally.timings[f"{name}: seconds until closed"].append(time.monotonic() - t0)
        sender.cancel()
        tally.timings[f"{name}: messages sent until closed"].append(sent[0])
        tally.outcomes[f"{name}: {end}"] += 1
        c.close()

    await paced(3, a.seconds, fn)


ATTACKERS = {"flood": attack_flood, "flood-deaf": attack_flood_deaf, "garbage": attack_garbage, "oversize": attack_oversize,
             "fragments": attack_fragments, "utf8": attack_utf8, "protocol": attack_protocol,
             "slowloris": attack_slowloris, "storm-one": attack_storm, "storm-many": attack_storm,
             "stalled": attack_stalled, "replay": attack_replay, "wamp": attack_wamp,
             "scrape-flood": attack_scrape_flood, "http-abuse": attack_http_abuse, "tls-flood": attack_tls_flood,
             "wamp-amplify": attack_wamp_amplify, "wamp-subs": attack_wamp_subs,
             "stream-resubscribe": attack_stream_resubscribe, "rpc-abuse": attack_rpc_abuse,
             "squatters": attack_squatters, "nested-json": attack_nested_json}


def attacker_main(argv):
    p = argparse.ArgumentParser(prog="attacks.py attacker")
    p.add_argument("--kind", required=True, choices=sorted(ATTACKERS))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--extra-seconds", type=float, default=0)
    p.add_argument("--sources", default="")
    p.add_argument("--bystanders", type=int, default=0)
    p.add_argument("--stalled", type=int, default=200)
    p.add_argument("--pool", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--storm-max", type=int, default=30000)
    p.add_argument("--handshake-timeout", type=float, default=10.0)
    p.add_argument("--since-height", type=int, default=0)
    p.add_argument("--since-hash", default="")
    p.add_argument("--scrapers", type=int, default=200)
    p.add_argument("--squatters", type=int, default=100, help="connections per squatting address")
    p.add_argument("--cafile", default="", help="the TLS listener's certificate (tls-flood)")
    a = p.parse_args(argv)
    a.sources = a.sources.split(",") if a.sources else ATTACKER_SOURCES
    run.raise_nofile()
    tally = Tally()

    async def main():
        t0 = time.monotonic()
        run_emit(event="started", t=t0)
        try:
            await ATTACKERS[a.kind](a, tally)
            # Every attack lasts its window at least (a paced one's last connection may end early).
            await asyncio.sleep(max(0.0, t0 + a.seconds - time.monotonic()))
            error = None
        except Exception as e:  # report what was done so far
            import traceback

            traceback.print_exc()
            error = f"{type(e).__name__}: {e}"
        run_emit(event="result", t_start=t0, t_end=time.monotonic(), error=error, **tally.result())

    asyncio.run(main())


def node_main(argv):
    """
    `attacks.py node --delay S`: a JSON-RPC node over HTTP that answers every call with "0x0" after S
    seconds (keep-alive, single requests and batches), for the forwarded calls of rpc-abuse.
    """
    p = argparse.ArgumentParser(prog="attacks.py node")
    p.add_argument("--delay", type=float, default=2.0)
    a = p.parse_args(argv)

    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = json.loads(await reader.readexactly(length)) if length else {}
                await asyncio.sleep(a.delay)

                def answer(req):
                    return {"jsonrpc": "2.0", "id": req.get("id") if isinstance(req, dict) else None, "result": "0x0"}

                out = json.dumps([answer(r) for r in body] if isinstance(body, list) else answer(body)).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(out), out))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        run_emit(event="listening", port=server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def run_emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


# =============================================================================================
# The runner.

def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Peaks(run.Sampler):
    """run.Sampler's RSS peak, and the peak of the server's open fds."""

    def __init__(self, pid):
        super().__init__(pid)
        self.peak_fds = 0

    def run(self):
        while not self.stopped.is_set():
            rss, fds = run.proc_rss_kb(self.pid), fd_count(self.pid)
            if rss:
                self.peak = max(self.peak, rss)
            if fds:
                self.peak_fds = max(self.peak_fds, fds)
            self.stopped.wait(0.1)


def fetch(port, path, cafile=None):
    """GET a path of the server (https with the test CA when it listens on TLS)."""
    import ssl

    context = ssl.create_default_context(cafile=cafile) if cafile else None
    scheme = "https" if cafile else "http"
    with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}{path}", timeout=10, context=context) as r:
        return r.read()


def metrics(port, cafile=None):
    """explorerd's counters that say what it did: errors by type, refusals, handshakes, calls."""
    out = {}
    try:
        text = fetch(port, "/metrics", cafile).decode()
    except Exception as e:
        return {"error": str(e)}
    for line in text.splitlines():
        for name, key in (("explorer_websocket_errors_total{", "error"),
                          ("explorer_websocket_connections_refused_total{", "refused"),
                          ("explorer_wamp_errors_total{", "wamp"),
                          ("explorer_wamp_calls_total{", "wamp call"),
                          ("explorer_rpc_requests_total{", "rpc")):
            if line.startswith(name):
                labels, value = line[len(name):].rsplit(" ", 1)
                values = [part.split("=", 1)[-1].strip(chr(34)) for part in labels.rstrip("}").split('",')]
                out[f"{key} {' '.join(v.strip(chr(34)) for v in values if v)}"] = float(value)
        if line.startswith("explorer_connections_refused_at_accept_total "):
            out["refused at accept"] = float(line.split()[-1])
        if line.startswith("explorer_websocket_connections_accepted_total "):
            out["accepted"] = float(line.split()[-1])
        if line.startswith("explorer_websocket_messages_received_total "):
            out["messages received"] = float(line.split()[-1])
    return out


def counter_diff(before, after):
    return {k: int(v - before.get(k, 0)) for k, v in after.items()
            if isinstance(v, float) and v - before.get(k, 0) > 0}


def defaults_settings():
    """--set options that undo hubserver's bench settings: explorerd's own defaults for them."""
    from explorerd.config import Config
    from hubserver import BENCH_SETTINGS

    d = Config.defaults()
    return {name: getattr(d, name) for name in BENCH_SETTINGS if hasattr(d, name)}, d


def settle(srv, bystanders, timeout=15.0):
    """Wait for the server to be back to its bystanders and its fd count to hold still."""
    deadline = time.monotonic() + timeout
    counts = []
    stats = None
    while time.monotonic() < deadline:
        srv.send("stats")
        stats = srv.expect("stats", 30)
        counts.append(fd_count(srv.pid))
        if (stats.get("connections", stats.get("clients")) or 0) <= bystanders and len(counts) >= 3 \
                and len(set(counts[-3:])) == 1:
            break
        time.sleep(0.3)
    return stats, counts[-1] if counts else None


def run_attack(kind, args, files, raw, out_dir, sz):
    info = ATTACKS[kind]
    log_dir = os.path.join(out_dir, "logs", kind)
    os.makedirs(log_dir, exist_ok=True)
    n, B = args.bystanders, args.blocks
    attack_seconds = B + 0.5
    extra = info.get("extra_seconds", 0)
    spec = dict(channels="newBlocks,newTxs", batch=True, per_loadgen=5000, host_base=BYSTANDER_HOST_BASE,
                hosts=max(1, min(255 - BYSTANDER_HOST_BASE, math.ceil(n / BYSTANDERS_PER_HOST))))
    result = {"attack": kind, "title": info["title"], "expect": info["expect"], "bystanders": n, "blocks": B,
              "errors": []}
    defaults, config = defaults_settings()
    settings = dict(defaults, **info.get("settings", {}))
    cafile = None
    if info.get("tls"):
        # A certificate for 127.0.0.1 that is its own CA (tests/tls.py): the bystanders trust it
        # through NODE_EXTRA_CA_CERTS, the attacker and the runner through an ssl context.
        from tests.tls import self_signed_pem

        cafile = os.path.join(log_dir, "cert.pem")
        with open(cafile, "wb") as f:
            f.write(self_signed_pem())
        settings["listen"] = f"ssl:0:interface=127.0.0.1:backlog=4096:privateKey={cafile}"
    result["settings"] = dict(settings, max_connections=config.max_connections)
    count = len(raw)
    argv = run.server_argv("explorerd", files, 1.0, count, log_dir) + ["--max-connections", str(config.max_connections)]
    if info.get("web_root"):
        argv += ["--web-root", os.path.join(REPO, "web")]
    procs = []
    env_before = os.environ.get("NODE_EXTRA_CA_CERTS")
    try:
        if info.get("node"):
            node = run.Proc("node", [sys.executable, os.path.abspath(__file__), "node", "--delay", "2"], log_dir)
            procs.append(node)
            settings["rpc_url"] = f"http://127.0.0.1:{node.expect('listening', 30)['port']}"
            result["settings"]["rpc_url"] = settings["rpc_url"] + " (a node answering every call in 2 s)"
        for name, value in settings.items():
            argv += ["--set", f"{name}={value}"]
        srv = run.Proc("server", argv, log_dir)
        procs.append(srv)
        port = srv.expect("listening", 60)["port"]
        time.sleep(0.5)
        srv.send("stats")
        base = srv.expect("stats", 30)
        base_fds = fd_count(srv.pid)
        url = f"{'wss' if cafile else 'ws'}://127.0.0.1:{port}/v1/stream"
        if cafile:
            os.environ["NODE_EXTRA_CA_CERTS"] = cafile
        loadgens = run.start_loadgens(spec, n, url, log_dir, False, 600)
        procs += loadgens
        ready = run.wait_ready(loadgens, n)
        subscribed = sum(r["subscribed"] for r in ready)
        result["subscribed"] = subscribed
        if subscribed < n:
            result["errors"].append(f"only {subscribed}/{n} bystanders subscribed: "
                                    f"{[r.get('errorKinds') for r in ready]}")
        time.sleep(2.0)
        srv.send("stats")
        before = srv.expect("stats", 30)
        before_fds = fd_count(srv.pid)
        m_before = metrics(port, cafile)
        peaks = Peaks(srv.pid)
        peaks.start()
        srv.send("go")

        def blocks_now():
            return [m for m in srv.lines if isinstance(m, dict) and m.get("event") == "block"]

        deadline = time.monotonic() + B + 30
        while len(blocks_now()) < B:
            if time.monotonic() > deadline or not srv.alive():
                raise run.BenchError(f"the server published {len(blocks_now())}/{B} baseline blocks")
            time.sleep(0.05)
        # The attack, from its own process.
        oldest = raw[0]
        a_argv = [sys.executable, os.path.abspath(__file__), "attacker", "--kind", kind, "--port", str(port),
                  "--seconds", str(attack_seconds), "--extra-seconds", str(extra), "--bystanders", str(n),
                  "--stalled", str(sz["stalled"]), "--pool", str(sz["slowloris"]),
                  "--concurrency", str(sz["storm_concurrency"]), "--storm-max", str(sz["storm_max"]),
                  "--since-height", str(int(oldest["number"], 16)), "--since-hash", oldest["hash"],
                  "--handshake-timeout", str(settings.get("handshake_timeout", config.handshake_timeout)),
                  "--scrapers", str(sz["scrapers"]), "--squatters", str(sz["squatters"])]
        if cafile:
            a_argv += ["--cafile", cafile]
        if kind == "storm-one":
            a_argv += ["--sources", ATTACKER_SOURCES[0]]
        attacker = run.Proc("attacker", a_argv, log_dir)
        procs.append(attacker)
        started = attacker.expect("started", 30)
        outcome = attacker.expect("result", attack_seconds + extra + 90)
        attacker.stop(grace=5)
        if outcome.get("error"):
            result["errors"].append(f"attacker: {outcome['error']}")
        # Settled: the attacker gone, the server back to its bystanders.
        after, after_fds = settle(srv, n)
        m_after = metrics(port, cafile)
        time.sleep(1.5)  # the last block handed off reaches everyone
        blocks = blocks_now()
        got, drain_s, how = run.drain(loadgens, sum(run.expected_messages(spec, b["txs"]) for b in blocks) * subscribed,
                                      max_wait=15, stall=3.0)
        blocks = [b for b in blocks if b["t"] < time.monotonic() - 1.0]
        peaks.stop()
        dones = []
        for lg in loadgens:
            lg.send("report")
        for lg in loadgens:
            dones.append(run.read_done(lg.expect("done", 120)))
        srv.send("quit")
        try:
            final = srv.expect("stats", 20)
        except run.BenchError:
            final = after
        t_start, t_end = outcome["t_start"], outcome["t_end"]
        baseline = [b for b in blocks[:B] if b["t"] < t_start]
        during = [b for b in blocks if t_start <= b["t"] <= t_end]
        later = [b for b in blocks if b["t"] > t_end]

        def window(bs):
            if not bs:
                return {}
            r = run.analyze(spec, bs, dones, base, before, after, final, peaks.peak, n)
            keep = ("lost", "dupes", "order_errors", "lat_p50_ms", "lat_p99_ms", "lat_max_ms", "whole_p50_ms",
                    "whole_p99_ms", "expected", "delivered")
            # How late the block loop (a LoopingCall in the server's reactor) handed the blocks off:
            # a busy reactor delays the hand-off itself, which latency from the hand-off does not show.
            late = max((b["t"] - b["t_sched"] for b in bs), default=0)
            return dict({k: r[k] for k in keep}, blocks=len(bs), handoff_late_max_ms=round(late * 1000, 1))

        result.update({
            "attacker": outcome, "attack_s": round(t_end - t_start, 2), "attack_started_after_block": B,
            "baseline": window(baseline), "under_attack": window(during), "after_attack": window(later),
            "all": window(blocks), "delivery": how,
            "bystander_close_codes": dict(sum((collections.Counter(d["closeCodes"]) for d in dones),
                                              collections.Counter())),
            "rss_kb": {"start": base["rss_kb"], "before": before["rss_kb"], "peak": max(peaks.peak, before["rss_kb"]),
                       "after": after["rss_kb"]},
            "fds": {"start": base_fds, "before": before_fds, "peak": max(peaks.peak_fds, before_fds or 0),
                    "after": after_fds},
            "server_cpu_s_attack": round(after["cpu"] - before["cpu"], 2),
            "server_counters": counter_diff(m_before, m_after),
            "server_stats_after": {k: after.get(k) for k in ("clients", "connections", "slow_closed", "ping_timeouts")},
            "behind_schedule_max_s": round(max((b["t"] - b["t_sched"] for b in blocks), default=0), 3),
            "loadgen_cpu_share": [round(d["cpu_s"] / max(d["window_s"], 1e-9), 2) for d in dones],
            "settle_note": None if (after.get("connections") or 0) <= n else
            f"server still had {after.get('connections')} connections after settling",
            "started_t": started["t"],
        })
        if how != "complete":
            result["errors"].append(f"bystander delivery {how}: {got} messages")
    except run.BenchError as e:
        result["errors"].append(str(e))
    finally:
        for p in reversed(procs):
            p.stop()
        if env_before is None:
            os.environ.pop("NODE_EXTRA_CA_CERTS", None)
        else:
            os.environ["NODE_EXTRA_CA_CERTS"] = env_before
    with open(os.path.join(out_dir, f"{kind}.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


# ---- the report -----------------------------------------------------------------------------

def fmt_counts(counts, limit=8):
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    text = "; ".join(f"{k} ×{v:,}" for k, v in items[:limit])
    if len(items) > limit:
        text += f"; … {len(items) - limit} more"
    return text or "–"


def ms(window, key):
    v = window.get(key) if window else None
    return "–" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def mib(kb):
    return "–" if kb is None else f"{kb / 1024:.0f}"


def row(r):
    if "attacker" not in r:
        return f"| {r['attack']} | – | FAILED: {'; '.join(r['errors'])} | – | – | – | – |"
    a = r["attacker"]
    attempts = f"{a['connections']:,} conn"
    if a["messages"]:
        attempts += f", {a['messages']:,} msgs"
    if a["bytes_sent"] >= 1 << 20:
        attempts += f", {a['bytes_sent'] / 1048576:.0f} MiB"
    attempts += f" in {r['attack_s']:.1f} s"
    did = fmt_counts(a["outcomes"])
    replies = {k: v for k, v in a["replies"].items() if k.startswith(("error", "ABORT", "ERROR"))}
    if replies:
        did += f"<br>replies: {fmt_counts(replies, 10)}"
    if r.get("server_counters"):
        counted = {k: v for k, v in r["server_counters"].items() if k not in ("messages received",)}
        did += f"<br>server counted: {fmt_counts(counted, 10)}"
    b, u = r["baseline"], r["under_attack"]
    allw = r["all"]
    by = f"{allw.get('lost', '–')} / {allw.get('dupes', '–')} / {allw.get('order_errors', '–')}"
    if r.get("bystander_close_codes"):
        by += f"<br>bystanders closed: {r['bystander_close_codes']}"
    if r.get("subscribed", r["bystanders"]) < r["bystanders"]:
        by += f"<br>only {r['subscribed']}/{r['bystanders']} subscribed"
    lat = (f"{ms(b, 'lat_p50_ms')} / {ms(b, 'lat_p99_ms')} → {ms(u, 'lat_p50_ms')} / {ms(u, 'lat_p99_ms')}"
           f" ({u.get('blocks', 0)} blocks)")
    late = (u or {}).get("handoff_late_max_ms") or 0
    if late > 50:
        lat += f"<br>hand-offs up to {late:,.0f} ms late (baseline {(b or {}).get('handoff_late_max_ms', 0):,.0f})"
    rss, fds = r["rss_kb"], r["fds"]
    return (f"| {r['attack']} | {attempts} | {did} | {by} | {lat} | "
            f"{mib(rss['before'])} → {mib(rss['peak'])} → {mib(rss['after'])} | "
            f"{fds['before']} → {fds['peak']} → {fds['after']} |")


def report(results, meta, args, out_path, command, started, finished, out_dir, sz):
    lines = []
    w = lines.append
    w("# explorerd under attack: what hostile clients cost the others\n")
    w(f"Command: `{command}`  ")
    w(f"Date: {started:%Y-%m-%d %H:%M} – {finished:%H:%M} UTC  ")
    w(f"Machine: {meta['nproc']} CPUs ({meta['cpu']}), {meta['ram_gib']} GiB RAM, Linux {meta['kernel']}; "
      f"Python {meta['python']}, Twisted {meta['twisted']}, Autobahn {meta['autobahn']}, Node {meta['node']}; "
      f"explorerd at `{meta['git']}`  ")
    w(f"Load average at start: {' '.join(meta['loadavg_start'])}; at end: {' '.join(meta.get('loadavg_end', []))}\n")
    w(f"Each row is one fresh explorerd (bench/hubserver.py: the real Daemon, one mainnet block of 167–209 "
      f"transactions handed to `hub.publish` a second) with **explorerd's default limits** (rate limit "
      f"10 new connections a minute per address, 100 connections per address, 1,000 in all, message budget "
      f"20/s in bursts of 60, 1 MiB messages, write deadline 10 s, send queue 256), except where the attack "
      f"says otherwise. **{args.bystanders} bystanders** (bench/loadgen.mjs, `newBlocks`+`newTxs` with "
      f"`\"batch\": true`, from 127.0.0.{BYSTANDER_HOST_BASE} and up, at most {BYSTANDERS_PER_HOST} per address) "
      f"subscribe; {args.blocks} blocks are the baseline; then the attacker (bench/attacks.py in a process of its "
      f"own, bare sockets from tests/soak/wsraw.py, source addresses 127.0.0.2–50) runs for {args.blocks} s "
      f"(longer where it needs more: the stalled readers until the server has dropped them all, at most "
      f"{ATTACKS['stalled']['extra_seconds']} s more; wamp-amplify {args.blocks + ATTACKS['wamp-amplify']['extra_seconds']} s; "
      f"squatters {args.blocks + ATTACKS['squatters']['extra_seconds']} s, past their 30 s deadline) while blocks keep "
      f"coming.\n")
    w("- **attempts**: TCP connections the attacker opened, messages/frames it sent after the upgrade, bytes "
      "when over 1 MiB, and how long the attack ran.")
    w("- **what the server did**: how each attacking connection ended as the attacker saw it (close code and "
      "reason, HTTP status, reset), the replies it got (error codes, WAMP ABORT/ERROR), and what explorerd "
      "counted in `/metrics` meanwhile (`error <type>`, `refused <reason>`, `accepted` handshakes).")
    w("- **bystanders lost / dup / order**: messages the bystanders should have had and did not, duplicates, "
      "out-of-order frames, over every block of the run; any bystander the server closed is named.")
    w("- **latency**: block hand-off → the bystander reading the block's first frame (one clock), p50 / p99 in "
      "ms, over the baseline blocks → over the blocks handed off while the attacker ran. The hand-off itself is "
      "a LoopingCall in the server's reactor: when an attack keeps the reactor busy it comes late, and the cell "
      "says by how much (latency from the hand-off does not include that delay).")
    w("- **RSS / fds**: the server process before the attack (bystanders connected) → peak (sampled every "
      "0.1 s) → after (the attacker's process gone, the server back to its bystanders and its fd count steady). "
      "CPython rarely gives freed memory back to the OS, so RSS after is a high-water mark, not a leak by itself; "
      "the fd count is the one that must come back.\n")
    w(f"Attack sizes: stalled readers {sz['stalled']}, slowloris pool {sz['slowloris']}, storm "
      f"{sz['storm_concurrency']} handshakes in flight (at most {sz['storm_max']:,}).\n")
    w("| attack | attempts | what the server did | bystanders lost / dup / order | latency p50 / p99 ms: "
      "baseline → under attack | RSS MiB before → peak → after | fds before → peak → after |")
    w("|---|---|---|---|---|---|---|")
    for r in results:
        w(row(r))
    w("")
    w("## The attacks\n")
    w("| attack | what it does | explorerd should | as expected? | notes |")
    w("|---|---|---|---|---|")
    for r in results:
        notes = list(r.get("errors", []))
        a = r.get("attacker", {})
        for k, t in a.get("timings", {}).items():
            if t.get("n"):
                notes.append(f"{k}: p50 {t['p50']:g}, max {t['max']:g} (n={t['n']})")
        for k, v in a.get("notes", {}).items():
            notes.append(f"{k}: {v}")
        if r.get("settings", {}).get("handshake_timeout", 10) != 10 and r["attack"] == "slowloris":
            notes.append(f"handshake timeout {r['settings']['handshake_timeout']:g} s")
        if r.get("server_cpu_s_attack") is not None:
            notes.append(f"server CPU from the baseline's start to settled: {r['server_cpu_s_attack']} s")
        if (r.get("behind_schedule_max_s") or 0) > 0.2:
            notes.append(f"block hand-offs fell behind schedule by up to {r['behind_schedule_max_s']:.2f} s")
        if r.get("settle_note"):
            notes.append(r["settle_note"])
        w(f"| {r['attack']} | {r['title']} | {r['expect']} | {verdict(r)} | {'; '.join(notes)} |")
    w("")
    w(f"Raw JSON per attack (attacker outcomes, server counters, per-window latency and loss, settings): "
      f"`{os.path.relpath(out_dir, REPO)}/` (the logs are not committed). This report is generated from them: "
      f"`python3 bench/attacks.py --report-from {os.path.relpath(out_dir, REPO)}/results.json`.\n")
    with open(out_path, "w") as f:
        f.write("\n".join(lines))


def verdict(r):
    """A first reading of whether the server did what it should; the table has the detail."""
    if "attacker" not in r:
        return "failed"
    out = r["attacker"]["outcomes"]
    total = sum(out.values()) or 1
    kind = r["attack"]

    def share(pred):
        return sum(v for k, v in out.items() if pred(k)) / total

    ok = {
        "flood": lambda: share(lambda k: k.startswith("close 1008")) > 0.9,
        "flood-deaf": lambda: share(lambda k: k.startswith("close 1008") and "still open" not in k) > 0.9,
        "garbage": lambda: share(lambda k: k.startswith("kept open")) == 1.0,
        "oversize": lambda: share(lambda k: "close 1009" in k) > 0.9,
        "fragments": lambda: share(lambda k: "close 1009" in k) > 0.9,
        "utf8": lambda: share(lambda k: "close 1007" in k) > 0.9,
        "protocol": lambda: share(lambda k: "close 1002" in k) > 0.9,
        "slowloris": lambda: share(lambda k: "open for over" in k or "connect failed" in k) == 0 and all(
            t.get("max", 0) <= r["settings"]["handshake_timeout"] + 1.5
            for k, t in r["attacker"]["timings"].items() if "dropped after" in k),
        "storm-one": lambda: share(lambda k: k in ("HTTP 101", "HTTP 429")) == 1.0 and out.get("HTTP 429", 0) > 0,
        "storm-many": lambda: share(lambda k: k in ("HTTP 101", "HTTP 429")) == 1.0,
        "stalled": lambda: share(lambda k: k.startswith("close 1008") or k in ("reset", "EOF without close frame")) == 1.0,
        "replay": lambda: share(lambda k: k.startswith("close 1008")) > 0.9,
        "wamp": lambda: share(lambda k: "still open" not in k and ("close 1002" in k or "no_such_realm" in k
                                                                     or "not_authorized" in k)) == 1.0,
        "scrape-flood": lambda: (r["under_attack"].get("lat_p99_ms") or 1e9) < 1000
        and share(lambda k: k == "kept scraping to the end") > 0.9,
        "http-abuse": lambda: share(lambda k: ("slow body" in k and k.endswith(("dropped (EOF)", "reset")))
                                    or (", then closed" in k and any(f"HTTP {c}" in k for c in (400, 431)))) == 1.0
        and all(t.get("max", 0) <= r["settings"]["handshake_timeout"] + 1.5
                for k, t in r["attacker"]["timings"].items() if k.startswith("slow body")),
        "tls-flood": lambda: share(lambda k: k.startswith("upgrading: closed at accept"))
        / max(1e-9, share(lambda k: k.startswith("upgrading"))) > 0.9,
        "wamp-amplify": lambda: r["attacker"]["notes"].get("MiB pulled", 1e9)
        <= r["attacker"]["notes"].get("bound by the byte charge (MiB)", 0),
        "wamp-subs": lambda: all(v <= 8 for k, v in r["attacker"]["notes"].items() if k.endswith("granted"))
        and share(lambda k: k.startswith("100,000 pipelined: close 1008")) > 0,
        "stream-resubscribe": lambda: share(lambda k: k.startswith("loop: close 1008")) > 0
        and share(lambda k: k.startswith("every 1.3 s: open at the end")) > 0,
        "rpc-abuse": lambda: r["attacker"]["notes"].get("subscriptions granted", 1e9) <= 64
        and any("-32005" in k for k in r["attacker"]["replies"]),
        "squatters": lambda: r["attacker"]["notes"].get("newcomer first admitted, s after the attack began") is not None
        and share(lambda k: "no subscription within" in k or k.startswith("HTTP 503")) > 0.95,
        "nested-json": lambda: share(lambda k: "close 1009" in k) > 0.9,
    }[kind]()
    # A server with a node keeps a pool of keep-alive connections to it for the forwarded calls.
    pool = r.get("settings", {}).get("rpc_forward_concurrency", 8) if "rpc_url" in r.get("settings", {}) else 0
    fine = r["all"].get("lost", 1) == 0 and not r.get("bystander_close_codes") and \
        (r.get("fds", {}).get("after") or 0) <= (r.get("fds", {}).get("before") or 0) + 2 + pool
    return ("yes" if ok else "**no**") + ("" if fine else " (**bystanders or fds affected**)")


def report_from(path, out=""):
    """The report of a finished run, from its results.json alone."""
    with open(path) as f:
        saved = json.load(f)
    args = argparse.Namespace(**saved["args"])
    out_path = out or os.path.join(HERE, "ATTACKS-quick.md" if args.quick else "ATTACKS.md")
    started = datetime.datetime.fromisoformat(saved["started"])
    finished = datetime.datetime.fromisoformat(saved["finished"])
    report(saved["results"], saved["meta"], args, out_path, saved["command"], started, finished,
           os.path.dirname(os.path.abspath(path)), saved["sizes"])
    print(f"attacks: report: {os.path.relpath(out_path, REPO)}", flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "attacker":
        return attacker_main(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "node":
        return node_main(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--bystanders", type=int, default=0, help="bystander clients (default 200; 30 with --quick)")
    p.add_argument("--attacks", default=",".join(ORDER), help=f"comma list from: {', '.join(ORDER)}")
    p.add_argument("--blocks", type=int, default=0, help="blocks per window (default 10; 4 with --quick)")
    p.add_argument("--quick", action="store_true", help="30 bystanders, 4-block windows, smaller attacks")
    p.add_argument("--out", default="", help="report path (default bench/ATTACKS.md; ATTACKS-quick.md with --quick)")
    p.add_argument("--report-from", default="", metavar="RESULTS_JSON",
                   help="write the report from a run's results.json, running nothing")
    args = p.parse_args()
    if args.report_from:
        return report_from(args.report_from, args.out)
    args.bystanders = args.bystanders or (30 if args.quick else 200)
    args.blocks = args.blocks or (4 if args.quick else 10)
    kinds = [k.strip() for k in args.attacks.split(",") if k.strip()]
    for k in kinds:
        if k not in ATTACKS:
            raise SystemExit(f"attacks: unknown attack {k!r} (choose from {', '.join(ORDER)})")
    if math.ceil(args.bystanders / BYSTANDERS_PER_HOST) > 255 - BYSTANDER_HOST_BASE:
        raise SystemExit(f"attacks: at most {(255 - BYSTANDER_HOST_BASE) * BYSTANDERS_PER_HOST} bystanders "
                         "(the default rate limit admits 10 per address)")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, run._on_signal)
    run.ensure_python_deps()
    run.ensure_node_deps()
    run.raise_nofile()
    sz = sizes(args.quick)
    started = datetime.datetime.now(datetime.timezone.utc)
    out_dir = os.path.join(HERE, "results", started.strftime("%Y%m%d-%H%M%S") + "-attacks" + ("-quick" if args.quick else ""))
    os.makedirs(out_dir, exist_ok=True)
    out_path = args.out or os.path.join(HERE, "ATTACKS-quick.md" if args.quick else "ATTACKS.md")
    command = " ".join(["python3", os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
    meta = run.machine()
    meta["out_dir"] = out_dir
    # Enough blocks for the longest cell; a cell stops its server when it is done.
    longest = max(args.blocks + args.blocks + 1 + ATTACKS[k].get("extra_seconds", 0) for k in kinds) + 40
    files = run.make_files({"data": run.MAINNET_200, "blocks": longest}, out_dir, "blocks")
    with open(files["raw"]) as f:
        raw = [item["block"] for item in json.load(f)]
    print(f"attacks: writing to {os.path.relpath(out_dir, REPO)}; load average {' '.join(meta['loadavg_start'])}",
          flush=True)
    results = []
    try:
        for i, kind in enumerate(kinds):
            print(f"attacks: [{i + 1}/{len(kinds)}] {kind} ...", end=" ", flush=True)
            t = time.monotonic()
            r = run_attack(kind, args, files, raw, out_dir, sz)
            results.append(r)
            if "attacker" in r:
                print(f"{fmt_counts(r['attacker']['outcomes'], 3)}; bystanders lost {r['all'].get('lost')}, "
                      f"p99 {ms(r['baseline'], 'lat_p99_ms')} → {ms(r['under_attack'], 'lat_p99_ms')} ms; "
                      f"fds {r['fds']['before']} → {r['fds']['peak']} → {r['fds']['after']} "
                      f"({time.monotonic() - t:.0f}s)" + (f" ERRORS: {r['errors']}" if r["errors"] else ""), flush=True)
            else:
                print(f"FAILED: {r['errors']} ({time.monotonic() - t:.0f}s)", flush=True)
            time.sleep(1.0)
    finally:
        run.kill_all()
        finished = datetime.datetime.now(datetime.timezone.utc)
        meta["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump({"meta": meta, "command": command, "sizes": sz, "results": results,
                       "args": {"bystanders": args.bystanders, "blocks": args.blocks, "quick": args.quick},
                       "started": started.isoformat(), "finished": finished.isoformat()}, f, indent=1)
        if results:
            report(results, meta, args, out_path, command, started, finished, out_dir, sz)
            print(f"attacks: report: {os.path.relpath(out_path, REPO)}", flush=True)


if __name__ == "__main__":
    main()
