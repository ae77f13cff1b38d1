"""
Node faults and shutdown at the daemon level: a real twistd explorerd tailing a real JSON-RPC node
(the replay node, ``python -m explorerd.replay``) that is absent at start, appears, is killed
mid-stream and comes back; and SIGTERM with hundreds of clients while blocks flow.
"""

import asyncio
import collections
import json
import re
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


class NodeStory:
    """
    A daemon polling a node's port every 0.1 s before anything listens on it,
    and one subscriber; the steps of the story start and kill the node.
    """

    def __init__(self, workdir, outage):
        self.outage = outage  # failed polls in a row while the node is down
        self.things = []
        self.port = free_port()
        self.daemon = soak.Daemon(
            ["--listen", "tcp:0:interface=127.0.0.1", "--state-dir=", "--rate-limit", "0",
             "--rpc-url", f"http://127.0.0.1:{self.port}", "--poll-interval", "0.1s", "--rpc-timeout", "1s"],
            str(workdir))
        self.things.append(self.daemon)
        self.client = None
        self.node = None
        self.killed_at = None

    def startNode(self, prefill=0):
        self.node = Node(self.port, prefill=prefill)
        self.things.append(self.node)

    def close(self):
        if self.client is not None:
            self.client.ws.close()
        for thing in reversed(self.things):
            if isinstance(thing, soak.Daemon):
                thing.stop()
            else:
                thing.kill()


@pytest.fixture(scope="class", params=[3, 7], ids=["short-outage", "long-outage"])
def node_story(request, tmp_path_factory):
    story = NodeStory(tmp_path_factory.mktemp("node-story"), request.param)
    yield story
    story.close()


@pytest.mark.incremental
class TestTheNodeIsAbsentAppearsDiesAndReturns:
    def test_without_a_node_the_daemon_serves_clients_and_says_degraded(self, node_story):
        d = node_story.daemon
        health = wait_until(lambda: (h := d.health()).get("tail", {}).get("last_error") and h, 10, "a failed poll")
        assert health["status"] == "degraded", health
        client = node_story.client = Subscriber(d.url)
        client.ws.send('{"action":"ping"}')
        wait_until(lambda: client.pongs == 1, 5, "a pong")

    def test_when_the_node_appears_health_is_ok_and_blocks_flow(self, node_story):
        d, client = node_story.daemon, node_story.client
        node_story.startNode()
        wait_until(lambda: d.health()["status"] == "ok", 40, "healthz ok once the node is up")
        wait_until(lambda: len(client.chain.seen) >= 5, 20, "blocks")

    def test_when_the_node_dies_health_degrades_and_the_client_stays(self, node_story):
        d, client = node_story.daemon, node_story.client
        node_story.node.kill()
        node_story.killed_at = client.height()
        wait_until(lambda: d.health()["status"] == "degraded", 10, "healthz degraded after the node died")
        client.ws.send('{"action":"ping"}')
        wait_until(lambda: client.pongs == 2, 5, "a pong during the outage")
        assert client.closed is None
        # The outage lasts as many failed polls as the story says (the backoff
        # grows with each: 3 is about a second, 7 several), however loaded the machine.
        wait_until(lambda: d.health()["tail"]["consecutive_failures"] >= node_story.outage, 60,
                   f"{node_story.outage} failed polls in a row")
        assert client.closed is None

    def test_when_the_node_returns_blocks_follow_without_a_gap(self, node_story):
        # The same deterministic chain, a few blocks further.
        d, client, killed_at = node_story.daemon, node_story.client, node_story.killed_at
        node_story.startNode(prefill=killed_at + 5)
        wait_until(lambda: d.health()["status"] == "ok", 40, "healthz ok once the node is back")
        wait_until(lambda: client.height() and client.height() >= killed_at + 10, 40, "blocks after the restart")
        assert client.closed is None
        assert not client.chain.violations, client.chain.violations[:5]
        heights = [h for h, _ in client.chain.seen]
        assert heights[-1] - heights[0] + 1 == len(set(heights)), "a gap"
        print(f"\nnode killed at height {killed_at}, down for {node_story.outage} failed polls; client saw "
              f"heights {heights[0]}..{heights[-1]} ({len(heights)} blocks, {len(client.chain.reorgs)} reorgs)")

    def test_the_client_holds_the_nodes_canonical_chain(self, node_story):
        client = node_story.client
        canonical = soak.canonical_hashes(node_story.port, list(client.chain.canonical())[:-3])
        held = client.chain.canonical()
        assert all(held[h] == canonical[h] for h in canonical), "the client's chain is not the node's"

    def test_the_daemon_stops_cleanly(self, node_story):
        d = node_story.daemon
        node_story.client.ws.close()
        node_story.client = None
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


async def many_subscribers(url, n, ready, blocks, codes):
    async def one(i):
        from websockets.asyncio.client import connect

        async with connect(url, compression=None, max_size=None, open_timeout=20, close_timeout=10) as ws:
            await ws.send(json.dumps({"action": "subscribe", "channels": ["newBlocks", "newTxs"], "batch": True}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
            ready.append(i)
            try:
                async for _ in ws:
                    blocks[i] += 1
            except ConnectionClosed:
                pass
            codes[i] = (ws.close_code, ws.close_reason)

    await asyncio.gather(*(one(i) for i in range(n)))


SHUTTING_DOWN = re.compile(r"shutting down: closing (\d+) connections")
CLOSE_TIMED_OUT = "peer did not finish the closing handshake in time"
ABORTED = re.compile(r"shutdown: (\d+) connections did not close in time; aborting them")


class SigtermUnderLoad:
    """
    200 subscribers while blocks flow; with C{stalled}, also clients that
    never read (their close is never answered); then SIGTERM.  Runs once, in
    a class-scoped fixture: the tests check what it saw, one step each.
    """

    readers = 200

    def __init__(self, workdir, stalled):
        self.stalled = stalled
        self.ready = []
        self.blocks = collections.Counter()  # reader → messages received before the close
        self.codes = {}
        self.rc = None
        self.d = soak.Daemon(["--listen", "tcp:0:interface=127.0.0.1:backlog=1024", "--state-dir=",
                              "--rate-limit", "0", "--replay-block-time", "0.2", "--poll-interval", "0.05s",
                              "--shutdown-timeout", "3s"]
                             + soak.optional("max-connections-per-ip", 0), str(workdir))

    def run(self):
        try:
            asyncio.run(self._main())
        finally:
            self.d.stop()
        self.text = self.d.text()

    async def _main(self):
        stalled_socks = []
        try:
            for _ in range(self.stalled):
                s, status, _ = await wsraw.handshake(self.d.port, rcvbuf=4096, mss=1400)
                await asyncio.get_running_loop().sock_sendall(
                    s, wsraw.text({"action": "subscribe", "channels": ["newBlocks", "newTxs"]}))
                stalled_socks.append(s)
            task = asyncio.create_task(many_subscribers(self.d.url, self.readers, self.ready, self.blocks,
                                                        self.codes))
            # Blocks flowing to everyone: each reader has had one.  (The bound
            # only stops a broken run; the story goes on either way.)
            deadline = time.monotonic() + 60
            while (len(self.ready) < self.readers or len(self.blocks) < self.readers) \
                    and time.monotonic() < deadline and not task.done():
                await asyncio.sleep(0.05)
            self.d.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(task, 60)
            except TimeoutError:
                pass  # readers still open: their missing close codes say so
            try:
                self.rc = await asyncio.to_thread(self.d.proc.wait, 60)
            except subprocess.TimeoutExpired:
                pass  # no exit status: test_the_process_exits_cleanly says so
        finally:
            for s in stalled_socks:
                s.close()


@pytest.fixture(scope="class", params=[0, 20], ids=["readers", "with-stalled-readers"])
def sigterm_run(request, tmp_path_factory):
    run = SigtermUnderLoad(tmp_path_factory.mktemp("sigterm"), request.param)
    run.run()
    print(f"\nSIGTERM with {run.readers} readers and {run.stalled} stalled: exit status {run.rc}")
    return run


class TestSigtermUnderLoad:
    def test_every_reader_was_subscribed_and_getting_blocks(self, sigterm_run):
        assert len(sigterm_run.ready) == sigterm_run.readers
        assert len(sigterm_run.blocks) == sigterm_run.readers, "some readers got no block before the SIGTERM"

    def test_the_daemon_closes_every_connection_it_holds(self, sigterm_run):
        closing = SHUTTING_DOWN.search(sigterm_run.text)
        assert closing, sigterm_run.text[-3000:]
        assert int(closing.group(1)) == sigterm_run.readers + sigterm_run.stalled

    def test_every_reader_gets_1001(self, sigterm_run):
        assert len(sigterm_run.codes) == sigterm_run.readers
        wrong = {i: c for i, c in sigterm_run.codes.items() if c != (1001, "server shutting down")}
        assert not wrong, list(wrong.items())[:5]

    def test_clients_that_never_answer_are_dropped_at_the_shutdown_timeout(self, sigterm_run):
        # What bounds the shutdown is the daemon's own timers (each close
        # handshake's, set to the shutdown timeout, and the hub's for all),
        # not the clients: every stalled one is dropped by one of them.
        text = sigterm_run.text
        aborted = ABORTED.search(text)
        dropped = text.count(CLOSE_TIMED_OUT) + (int(aborted.group(1)) if aborted else 0)
        assert dropped >= sigterm_run.stalled, text[-3000:]

    def test_the_process_exits_cleanly(self, sigterm_run):
        assert sigterm_run.rc in (0, -signal.SIGTERM)
        assert "Traceback" not in sigterm_run.text and "Unhandled" not in sigterm_run.text, \
            sigterm_run.text[-3000:]
