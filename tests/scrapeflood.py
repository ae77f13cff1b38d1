"""
A scrape flood and a bystander, in a process of their own (tests/test_sidedoors.py), so that the
flood's clients do not share the server's reactor: keep-alive connections that pipeline GETs of
/metrics and /healthz, in turn, and send another as each answer comes (as fast as they are
answered), and a WebSocket client subscribed to newBlocks.

    python tests/scrapeflood.py PORT --scrapers 50 --pipeline 500 --blocks 3

Protocol on stdout, one JSON object a line: {"flooding": true} once the subscriber is subscribed
and every scraper has sent its pipeline; then {"block": height, "after": seconds} for each block
the subscriber gets, the seconds counted from the line before it (the test publishes a block as
it reads a line); at the end {"scrapers": [{"answers": n, "problem": text or null}, ...]}, once
every scraper has --answers answers, or --seconds after the start.  Every answer is checked
against the request it answers, in order.
"""

import argparse
import asyncio
import json
import sys
import time

PATHS = (b"/metrics", b"/healthz")


def say(**message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def read_answer(reader):
    """One HTTP/1.1 answer (Content-Length or chunked): (status, headers by lowercase name, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append((await reader.readexactly(size + 2))[:size])
            if size == 0:
                return status, headers, b"".join(chunks)
    length = int(headers.get(b"content-length", b"0"))
    return status, headers, await reader.readexactly(length)


def problem(path, status, headers, body):
    """What is wrong with an answer to C{path}, or None."""
    if status != 200:
        return f"{path.decode()}: HTTP {status}"
    if path == b"/metrics":
        if not headers.get(b"content-type", b"").startswith(b"text/plain"):
            return f"/metrics: Content-Type {headers.get(b'content-type')!r}"
        if b"\nexplorer_websocket_connections " not in body:
            return f"/metrics: not the metrics: {body[:80]!r}"
    else:
        try:
            status_field = json.loads(body)["status"]
        except (ValueError, KeyError, TypeError):
            return f"/healthz: not the status: {body[:80]!r}"
        if status_field not in ("ok", "degraded"):
            return f"/healthz: status {status_field!r}"
    return None


class Scraper:
    def __init__(self):
        self.answers = 0
        self.problem = None

    async def run(self, port, pipeline, stop):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        sent = 0

        def send():
            nonlocal sent
            writer.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % PATHS[sent % 2])
            sent += 1

        for _ in range(pipeline):
            send()
        await writer.drain()
        self.sent = True
        try:
            while not stop.is_set() and self.problem is None:
                status, headers, body = await read_answer(reader)
                self.problem = problem(PATHS[self.answers % 2], status, headers, body)
                self.answers += 1
                send()
        except (OSError, asyncio.IncompleteReadError) as e:
            self.problem = self.problem or f"connection: {e!r}"
        finally:
            writer.close()


async def subscriber(port, blocks, got):
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/v1/stream", compression=None, open_timeout=10) as ws:
        await ws.send(json.dumps({"action": "subscribe", "channels": ["newBlocks"]}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        got.set_result(None)
        while blocks:
            message = json.loads(await ws.recv())
            if message["type"] == "newBlock":
                say(block=message["data"]["height"], after=round(time.monotonic() - blocks.pop(0), 3))
                if blocks:
                    blocks[0] = time.monotonic()


async def main(a):
    deadline = time.monotonic() + a.seconds
    stop = asyncio.Event()
    subscribed = asyncio.get_running_loop().create_future()
    blocks = [None] * a.blocks  # when each block was asked for
    watching = asyncio.ensure_future(subscriber(a.port, blocks, subscribed))
    await asyncio.wait_for(asyncio.shield(subscribed), 10)
    scrapers = [Scraper() for _ in range(a.scrapers)]
    tasks = [asyncio.ensure_future(s.run(a.port, a.pipeline, stop)) for s in scrapers]
    while not all(getattr(s, "sent", False) for s in scrapers):
        await asyncio.sleep(0.01)
    blocks[0] = time.monotonic()
    say(flooding=True)
    while time.monotonic() < deadline and not (watching.done() and all(
            s.answers >= a.answers or s.problem for s in scrapers)):
        await asyncio.sleep(0.05)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)
    say(scrapers=[{"answers": s.answers, "problem": s.problem} for s in scrapers])


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("port", type=int)
    p.add_argument("--scrapers", type=int, default=50)
    p.add_argument("--pipeline", type=int, default=500)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--answers", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30)
    asyncio.run(main(p.parse_args()))
