"""
Restarts of a real explorerd process (twistd) tailing a real anvil, with a
real WebSocket client (the C{websockets} library) that resumes with C{since}.

anvil runs with C{--no-mining}: the test makes every block (evm_mine,
anvil_mine, anvil_reorg).  explorerd polls it every 0.1 s and keeps its
position in a state directory under C{tmp_path}.  A client that reconnects
after a restart with C{since} = the last block it holds must get every
block it missed, in order, with its transactions, no duplicate and no gap;
across a reorg that happened while explorerd was down it first gets a
C{reorg} naming its removed blocks.

The client resumes as soon as the restarted daemon listens: a resume that
arrives while the live-tail is still restoring the history waits for it.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.anvil import DEV_ACCOUNTS, blocking_anvil
from tests.processlog import ProcessLog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.needs_node  # anvil from tests/node
BOTH = ["newBlocks", "newTxs"]


def twistd():
    path = os.path.join(os.path.dirname(sys.executable), "twistd")
    return path if os.path.exists(path) else shutil.which("twistd")


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("WEBSOCKET_", "API_CORS", "EXPLORERD_"))}


# anvil, driven over plain HTTP ---------------------------------------------------------


def rpc(node, method, params=()):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(node.url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert "error" not in answer, answer
    return answer["result"]


def mine(node, n=1, txs=1):
    """n blocks; the first holds C{txs} transactions."""
    for i in range(txs):
        rpc(node, "eth_sendTransaction", [{"from": DEV_ACCOUNTS[i % 2], "to": DEV_ACCOUNTS[(i + 1) % 2],
                                           "value": hex(10**15 + i)}])
    rpc(node, "anvil_mine", [hex(n)])
    return head(node)


def head(node):
    return int(rpc(node, "eth_blockNumber"), 16)


def canonical(node, lo, hi):
    return [rpc(node, "eth_getBlockByNumber", [hex(h), False]) for h in range(lo, hi + 1)]


# explorerd -------------------------------------------------------------------------------


class Explorerd(ProcessLog):
    """One real explorerd process; its port and events come from its log."""

    def __init__(self, node, state_dir):
        self.argv = [twistd(), "-n", "--pidfile=", "explorerd", "--listen", "tcp:0:interface=127.0.0.1",
                     "--rpc-url", node.url, "--state-dir", str(state_dir), "--poll-interval", "0.1s",
                     "--rpc-batch-size", "4", "--shutdown-timeout", "5s"]
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=clean_env(), cwd=ROOT, text=True)
        self.readOutput()
        port = int(self.wait_for(r"explorerd listening on .*http://127\.0\.0\.1:(\d+)/").group(1))
        self.url = f"ws://127.0.0.1:{port}/v1/stream"
        self.http = f"http://127.0.0.1:{port}"
        return self

    def wait_published(self, height, timeout=20):
        """Until the hub logs that it sent block C{height} out."""
        self.wait_for(rf"\bblock {height} 0x[0-9a-f]{{64}} \(", timeout)

    def kill(self, sig):
        self.proc.send_signal(sig)
        code = self.proc.wait(15)
        rest = self.proc.stdout.read()
        self.log.append(rest)
        return code

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def state(self):
        """The position explorerd saved: (height, hash) of its last block."""
        (path,) = glob.glob(os.path.join(self.argv[self.argv.index("--state-dir") + 1], "livetail-*.json"))
        with open(path) as f:
            saved = json.load(f)
        return saved["height"], saved["hash"]


class Story:
    """
    An anvil, the explorerd processes started one after another on one
    state directory, and one client, kept across the steps of a story.
    """

    def __init__(self, node, state_dir):
        self.anvil = node
        self.state_dir = state_dir
        self.started = []
        self.daemon = None
        self.client = Client()

    def start(self):
        self.daemon = Explorerd(self.anvil, self.state_dir).start()
        self.started.append(self.daemon)
        return self.daemon

    def close(self):
        if self.client.ws is not None:
            self.client.close()
        for daemon in self.started:
            daemon.stop()


@pytest.fixture(scope="class")
def story(tmp_path_factory):
    with blocking_anvil(no_mining=True) as node:
        s = Story(node, tmp_path_factory.mktemp("restart") / "state")
        try:
            yield s
        finally:
            s.close()


# A client --------------------------------------------------------------------------------


class Client:
    """
    A subscriber that checks the stream as it reads it: blocks in height
    order, each extending the last (a reorg first removes exactly the
    client's newest blocks), each block's transactions right after it.
    """

    def __init__(self):
        self.chain = []  # [(height, hash)]
        self.tx_counts = {}
        self.txs = {}
        self.reorgs = []
        self.ws = None

    def connect(self, url, since=None):
        # Entered like a context manager (closed by close()), as websockets >= 17 wants.
        self.ws = ws_connect(url, compression=None, open_timeout=10, max_size=None).__enter__()
        message = {"action": "subscribe", "channels": BOTH}
        if since is not None:
            message["since"] = since
        self.ws.send(json.dumps(message))
        answer = json.loads(self.ws.recv(timeout=10))
        assert answer["type"] == "subscribed", answer
        return answer

    @property
    def last(self):
        height, block_hash = self.chain[-1]
        return {"height": height, "hash": block_hash}

    def read_through(self, height, timeout=20):
        """Read until block C{height} and all its transactions are in."""
        deadline = time.monotonic() + timeout
        while not (self.chain and self.chain[-1][0] == height
                   and len(self.txs[self.chain[-1][1]]) == self.tx_counts[self.chain[-1][1]]):
            self.apply(json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))))

    def read_until_closed(self):
        try:
            while True:
                self.apply(json.loads(self.ws.recv(timeout=20)))
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None

    def apply(self, m):
        kind, d = m["type"], m["data"]
        if kind == "newBlock":
            if self.chain:
                assert (d["height"], d["parent_hash"]) == (self.chain[-1][0] + 1, self.chain[-1][1]), \
                    f"gap, duplicate or unannounced reorg: {d} after {self.chain[-1]}"
                assert len(self.txs[self.chain[-1][1]]) == self.tx_counts[self.chain[-1][1]]
            self.chain.append((d["height"], d["hash"]))
            self.tx_counts[d["hash"]], self.txs[d["hash"]] = d["tx_count"], []
        elif kind == "newTx":
            assert (d["block_height"], d["block_hash"]) == self.chain[-1]
            self.txs[d["block_hash"]].append(d["hash"])
        elif kind == "reorg":
            removed = [(r["height"], r["hash"]) for r in d["removed"]]
            assert d["depth"] == len(removed) and removed == self.chain[-len(removed):]
            del self.chain[-len(removed):]
            assert (d["common_ancestor"]["height"], d["common_ancestor"]["hash"]) == self.chain[-1]
            self.reorgs.append(d)
        else:
            raise AssertionError(f"unexpected message {m}")

    def close(self):
        self.ws.close()

    def assert_canonical(self, node):
        lo, hi = self.chain[0][0], self.chain[-1][0]
        assert hi == head(node)
        blocks = canonical(node, lo, hi)
        assert self.chain == [(int(b["number"], 16), b["hash"]) for b in blocks]
        for b in blocks:
            assert self.txs[b["hash"]] == b["transactions"]


def resume(daemon, client):
    """Reconnect with since = the client's last block; returns how many blocks were replayed."""
    answer = client.connect(daemon.url, since=client.last)
    return answer["replayed"]


# The tests -------------------------------------------------------------------------------


@pytest.mark.incremental
class TestResumingAfterSigkillAndAfterSigterm:
    """A client resumes without gap or duplicate after a SIGKILL, then after a SIGTERM."""

    def test_a_client_follows_the_daemon(self, story):
        anvil, client = story.anvil, story.client
        mine(anvil, 2)
        daemon = story.start()
        daemon.wait_published(2)
        client.connect(daemon.url)
        for _ in range(3):
            client.read_through(mine(anvil, 1, txs=2))

    def test_a_sigkill_mid_catch_up_leaves_every_block_a_client_got_in_the_state_file(self, story):
        # SIGKILL while it streams a catch-up of 24 blocks, 4 per request.
        anvil, client, daemon = story.anvil, story.client, story.daemon
        top = mine(anvil, 24, txs=3)
        client.read_through(top - 16)
        daemon.kill(signal.SIGKILL)
        client.read_until_closed()  # whatever was already on its way
        story.saved = saved = daemon.state()
        assert saved[0] >= client.last["height"]  # whatever a client got is in the file

    def test_after_the_sigkill_a_resume_gets_every_missed_block_then_live(self, story):
        anvil, client, saved = story.anvil, story.client, story.saved
        top = mine(anvil, 5, txs=2)  # while it is down
        daemon = story.start()
        # The history holds at least what explorerd had published at the SIGKILL.
        assert resume(daemon, client) >= saved[0] - client.last["height"]
        client.read_through(top)
        client.read_through(mine(anvil, 1, txs=1))  # then live

    def test_a_sigterm_says_1001_and_saves_the_last_block_a_client_got(self, story):
        client, daemon = story.client, story.daemon
        assert daemon.kill(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert client.read_until_closed() == 1001
        assert daemon.state() == (client.last["height"], client.last["hash"])
        assert "Traceback" not in "".join(daemon.log)

    def test_after_the_sigterm_a_resume_gets_every_missed_block_then_live(self, story):
        anvil, client = story.anvil, story.client
        top = mine(anvil, 3, txs=2)  # while it is down
        daemon = story.start()
        assert resume(daemon, client) in (0, 1, 2, 3)  # 0-3: as far as the tail got before we asked
        client.read_through(top)
        client.read_through(mine(anvil, 2, txs=1))

    def test_the_client_holds_the_canonical_chain_and_saw_no_reorg(self, story):
        story.client.assert_canonical(story.anvil)
        assert story.client.reorgs == []


@pytest.mark.incremental
class TestResumingAcrossAReorgThatHappenedWhileExplorerdWasDown:
    def test_a_client_follows_the_daemon_until_a_sigterm_says_1001(self, story):
        anvil, client = story.anvil, story.client
        mine(anvil, 2)
        daemon = story.start()
        daemon.wait_published(2)
        client.connect(daemon.url)
        for _ in range(6):
            client.read_through(mine(anvil, 1, txs=2))
        assert daemon.kill(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert client.read_until_closed() == 1001
        story.held = list(client.chain)

    def test_the_restarted_daemon_finds_the_reorg(self, story):
        anvil = story.anvil
        rpc(anvil, "anvil_reorg", [3, [[{"from": DEV_ACCOUNTS[1], "to": DEV_ACCOUNTS[0], "value": hex(777)}, 0]]])
        story.top = mine(anvil, 2, txs=1)
        daemon = story.start()
        daemon.wait_for(r"reorg of depth 3")

    def test_a_resume_replays_the_new_branch(self, story):
        client = story.client
        assert resume(story.daemon, client) == 5  # the new branch: 3 blocks in place of the client's, then 2
        client.read_through(story.top)

    def test_the_client_got_one_reorg_naming_its_removed_blocks(self, story):
        held = story.held
        ancestor = held[-4]
        assert story.client.reorgs == [{"depth": 3, "common_ancestor": {"height": ancestor[0], "hash": ancestor[1]},
                                        "removed": [{"height": h, "hash": x} for h, x in held[-3:]]}]
        story.client.assert_canonical(story.anvil)
