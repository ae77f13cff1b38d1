"""
Node faults and shutdown at the daemon level: a real twistd explorerd tailing a real JSON-RPC node
(the replay node, ``python -m explorerd.replay``) that is absent at start, appears, is killed
mid-stream and comes back; and SIGTERM with hundreds of clients while blocks flow.
"""

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.soak import soak, wsraw
from tests.soak.chain import Chain


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """``python -m explorerd.replay`` on a given port; deterministic blocks, so a restart
    with ``prefill`` serves the same chain, longer."""

    def __init__(self, port, prefill=0, block_time=0.2):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "explorerd.replay", "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--block-time", str(block_time), "--prefill", str(prefill)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=soak.clean_env(), cwd=soak.ROOT)
        self.port = port
        deadline = time.monotonic() + 20
        while True:
            try:
                soak.rpc(port, [("eth_blockNumber", [])], timeout=1)
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.kill()
                    raise RuntimeError("the replay node did not start")
                time.sleep(0.05)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def cleanup(tmp_path):
    things = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, soak.Daemon):
            thing.stop()
        else:
            thing.kill()


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Subscriber:
    """A websockets client in a thread, checking every message with a Chain."""

    def __init__(self, url):
        self.ws = ws_connect(url, compression=None, max_size=None, open_timeout=10).__enter__()
        self.ws.send(json.dumps({"action": "subscribe", "channels": ["newBlocks", "newTxs"], "batch": True}))
        assert json.loads(self.ws.recv(timeout=10))["type"] == "subscribed"
        self.chain = Chain("batch")
        self.pongs = 0
        self.closed = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for raw in self.ws:
                m = json.loads(raw)
                if m == {"type": "pong"}:
                    self.pongs += 1
                else:
                    self.chain.on_message(m)
        except ConnectionClosed as e:
            self.closed = e
        self.closed = self.closed or "closed"

    def height(self):
        tip = self.chain.tip()
        return tip[0] if tip else None


@pytest.mark.parametrize("outage", [1, 8])
def test_the_node_is_absent_appears_dies_and_returns(tmp_path, cleanup, outage):
    port = free_port()
    d = soak.Daemon(["--listen", "tcp:0:interface=127.0.0.1", "--state-dir=", "--rate-limit", "0",
                     "--rpc-url", f"http://127.0.0.1:{port}", "--poll-interval", "0.1s", "--rpc-timeout", "1s"],
                    str(tmp_path))
    cleanup.append(d)
    # No node: the daemon serves clients and says degraded.
    health = wait_until(lambda: (h := d.health()).get("tail", {}).get("last_error") and h, 10, "a failed poll")
    assert health["status"] == "degraded", health
    client = Subscriber(d.url)
    client.ws.send('{"action":"ping"}')
    wait_until(lambda: client.pongs == 1, 5, "a pong")

    # The node appears: ok, and blocks flow.
    node = Node(port)
    cleanup.append(node)
    wait_until(lambda: d.health()["status"] == "ok", 40, "healthz ok once the node is up")
    wait_until(lambda: len(client.chain.seen) >= 5, 20, "blocks")

    # The node dies mid-stream: degraded, the client stays connected.
    node.kill()
    killed_at = client.height()
    wait_until(lambda: d.health()["status"] == "degraded", 10, "healthz degraded after the node died")
    client.ws.send('{"action":"ping"}')
    wait_until(lambda: client.pongs == 2, 5, "a pong during the outage")
    assert client.closed is None
    time.sleep(outage)

    # It comes back (the same deterministic chain, a few blocks further): no gap, no duplicate.
    node = Node(port, prefill=killed_at + 5)
    cleanup.append(node)
    t0 = time.monotonic()
    wait_until(lambda: d.health()["status"] == "ok", 40, "healthz ok once the node is back")
    print(f"\nnode killed at height {killed_at}, down {outage}s, back with head {killed_at + 6}; healthz ok "
          f"{time.monotonic() - t0:.1f}s later")
    wait_until(lambda: client.height() and client.height() >= killed_at + 10, 40, "blocks after the restart")
    assert client.closed is None
    assert not client.chain.violations, client.chain.violations[:5]
    heights = [h for h, _ in client.chain.seen]
    assert heights[-1] - heights[0] + 1 == len(set(heights)), "a gap"
    # what the client holds is the node's canonical chain
    canonical = soak.canonical_hashes(port, list(client.chain.canonical())[:-3])
    held = client.chain.canonical()
    assert all(held[h] == canonical[h] for h in canonical), "the client's chain is not the node's"
    print(f"client saw heights {heights[0]}..{heights[-1]} ({len(heights)} blocks, "
          f"{len(client.chain.reorgs)} reorgs), no gap across the outage")
    client.ws.close()
    rc = d.stop()
    assert rc in (0, -signal.SIGTERM)
    assert "Traceback" not in d.text() and "Unhandled" not in d.text()


def test_a_hung_node_degrades_health_and_clients_stay(tmp_path, cleanup):
    """A node that accepts connections and never answers: the RPC timeout, then degraded."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        d = soak.Daemon(["--listen", "tcp:0:interface=127.0.0.1", "--state-dir=", "--rate-limit", "0",
                         "--rpc-url", f"http://127.0.0.1:{port}", "--poll-interval", "0.1s",
                         "--rpc-timeout", "1s"], str(tmp_path))
        cleanup.append(d)
        client = Subscriber(d.url)
        h = wait_until(lambda: (h := d.health()).get("tail", {}).get("last_error") and h, 10, "a timed-out poll")
        assert h["status"] == "degraded" and accepted, h
        client.ws.send('{"action":"ping"}')
        wait_until(lambda: client.pongs == 1, 5, "a pong while the node hangs")
        client.ws.close()
    finally:
        stop.set()
        listener.close()
        for s in accepted:
            s.close()


async def many_subscribers(url, n, ready, codes):
    async def one(i):
        from websockets.asyncio.client import connect

        async with connect(url, compression=None, max_size=None, open_timeout=20, close_timeout=10) as ws:
            await ws.send(json.dumps({"action": "subscribe", "channels": ["newBlocks", "newTxs"], "batch": True}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
            ready.append(i)
            try:
                async for _ in ws:
                    pass
            except ConnectionClosed:
                pass
            codes[i] = (ws.close_code, ws.close_reason)

    await asyncio.gather(*(one(i) for i in range(n)))


@pytest.mark.parametrize("stalled", [0, 20], ids=["readers", "with-stalled-readers"])
def test_sigterm_under_load_says_1001_to_every_client(tmp_path, stalled):
    """
    200 subscribers while blocks flow; with ``stalled``, also clients that never read (their
    close is never answered): SIGTERM, every reader gets 1001, and the process exits cleanly
    within the shutdown timeout.
    """
    d = soak.Daemon(["--listen", "tcp:0:interface=127.0.0.1:backlog=1024", "--state-dir=", "--rate-limit", "0",
                     "--replay-block-time", "0.2", "--poll-interval", "0.05s", "--shutdown-timeout", "3s"]
                    + soak.optional("max-connections-per-ip", 0), str(tmp_path))
    try:
        codes, ready = {}, []

        async def main():
            stalled_socks = []
            for _ in range(stalled):
                s, status, _ = await wsraw.handshake(d.port, rcvbuf=4096, mss=1400)
                await asyncio.get_running_loop().sock_sendall(
                    s, wsraw.text({"action": "subscribe", "channels": ["newBlocks", "newTxs"]}))
                stalled_socks.append(s)
            task = asyncio.create_task(many_subscribers(d.url, 200, ready, codes))
            deadline = time.monotonic() + 30
            while len(ready) < 200 and time.monotonic() < deadline and not task.done():
                await asyncio.sleep(0.05)
            assert len(ready) == 200
            await asyncio.sleep(1.5)  # blocks flowing to everyone
            t0 = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(task, 20)
            rc = await asyncio.to_thread(d.proc.wait, 20)
            exit_after = time.monotonic() - t0
            for s in stalled_socks:
                s.close()
            return rc, exit_after

        rc, exit_after = asyncio.run(main())
        print(f"\nSIGTERM with 200 readers and {stalled} stalled: exit status {rc} after {exit_after:.2f}s")
        assert rc in (0, -signal.SIGTERM)
        assert len(codes) == 200
        wrong = {i: c for i, c in codes.items() if c != (1001, "server shutting down")}
        assert not wrong, list(wrong.items())[:5]
        assert exit_after <= 3 + 3
    finally:
        d.stop()
    text = d.text()
    assert "Traceback" not in text and "Unhandled" not in text, text[-3000:]
