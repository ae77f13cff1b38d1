"""
What HTTP on the side doors costs a real explorerd: keep-alive connections that pipeline GETs of
one path as fast as they are answered, for a few seconds; the answers they got meanwhile, the
server's CPU (``/proc/PID/stat``) per answer, its idle CPU over the same time taken off, the
access-log lines written, and how late a WebSocket subscriber's pongs come back meanwhile (one
ping every 50 ms).

    python tests/soak/scrapecost.py --path /metrics --connections 50 --pipeline 16 --seconds 5

Everything runs on 127.0.0.1; the daemon is started and stopped here, by PID.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.scrapeflood import read_answer  # noqa: E402
from tests.soak import soak  # noqa: E402


async def scraper(port, path, pipeline, tally):
    """Keeps C{pipeline} GETs in flight until cancelled."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    request = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode()
    writer.write(request * pipeline)
    try:
        while True:
            status, _, _ = await read_answer(reader)
            tally[status] = tally.get(status, 0) + 1
            writer.write(request)
    finally:
        writer.close()


async def pinger(url, stop, delays):
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, open_timeout=10) as ws:
        await ws.send(json.dumps({"action": "subscribe", "channels": ["newBlocks"]}))
        await ws.recv()
        while not stop.is_set():
            t0 = time.monotonic()
            await ws.send(json.dumps({"action": "ping"}))
            while json.loads(await ws.recv()).get("type") != "pong":
                pass
            delays.append(time.monotonic() - t0)
            await asyncio.sleep(0.05)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else None


async def flood(d, a):
    stop = asyncio.Event()
    tally, delays = {}, []
    ping = asyncio.ensure_future(pinger(d.url, stop, delays))
    await asyncio.sleep(0.5)
    cpu0, t0 = soak.cpu_seconds(d.pid), time.monotonic()
    delays.clear()
    tasks = [asyncio.ensure_future(scraper(d.port, a.path, a.pipeline, tally)) for _ in range(a.connections)]
    await asyncio.sleep(a.seconds)
    answers, during = dict(tally), list(delays)
    cpu1, t1 = soak.cpu_seconds(d.pid), time.monotonic()
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await ping
    return answers, cpu1 - cpu0, t1 - t0, during


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", default="/metrics")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--pipeline", type=int, default=16)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--idle-seconds", type=float, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        d = soak.Daemon(["--listen", "tcp:0:interface=127.0.0.1:backlog=1024", "--state-dir=",
                         "--rate-limit", "0", "--replay-block-time", "3600"], workdir)
        try:
            time.sleep(1)
            cpu0, t0 = soak.cpu_seconds(d.pid), time.monotonic()
            time.sleep(a.idle_seconds)
            idle = (soak.cpu_seconds(d.pid) - cpu0) / (time.monotonic() - t0)
            tally, cpu, wall, delays = asyncio.run(flood(d, a))
            log_lines = d.text().count(f'"GET {a.path} ')
        finally:
            d.stop()
    answers = sum(tally.values())
    busy = cpu - idle * wall
    print(f"{a.path}: {a.connections} connections x {a.pipeline} pipelined, {wall:.1f} s: "
          f"{answers} answers {tally} ({answers / wall:.0f}/s); server CPU {cpu:.2f} s "
          f"({cpu / wall:.0%} of a core; idle {idle:.1%}), "
          f"{1e6 * busy / max(1, answers):.0f} us per answer; access-log lines naming the path {log_lines}; "
          + (f"subscriber's ping round trip p50 {percentile(delays, 50):.3f} s, p99 {percentile(delays, 99):.3f} s, "
             f"max {max(delays):.3f} s (n={len(delays)})" if delays else "the subscriber got no pong in that time"))


if __name__ == "__main__":
    main()
