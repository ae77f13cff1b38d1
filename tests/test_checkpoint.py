"""
The tail's position file off the reactor thread (LiveTail(sync=...)): the
file is replaced before a batch reaches the hub (a killed process loses
nothing the kernel has), and its fsyncs run after, through C{sync}, never
two at once and once more when written meanwhile; stopping waits for them.
"""

import json

import pytest_twisted
from twisted.internet import defer

from explorerd.tailstate import TailState
from tests.test_livetail import RecordingHub, env  # noqa: F401 (env: fixture)


class FileReadingHub(RecordingHub):
    """Reads the state file as each block arrives: what a kill -9 at that moment would leave."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.on_disk = []

    def publish(self, entry):
        with open(self.path) as f:
            self.on_disk.append((entry.height, json.load(f)["height"]))
        return super().publish(entry)


class HeldSync:
    """A thread pool stand-in: keeps each function until the test runs it."""

    def __init__(self):
        self.pending = []

    def __call__(self, f):
        d = defer.Deferred()
        self.pending.append((f, d))
        return d

    def runOne(self):
        f, d = self.pending.pop(0)
        d.callback(f())


@pytest_twisted.ensureDeferred
async def test_the_file_names_a_batch_before_the_hub_gets_it_and_is_fsynced_after(env, tmp_path, monkeypatch):
    path = str(tmp_path / "state.json")
    node = await env.fake_node()
    node.grow(3)
    hub = FileReadingHub(path)
    sync = HeldSync()
    fsyncs = []
    monkeypatch.setattr(TailState, "sync", lambda self: fsyncs.append(self.last))
    tail = env.tail(env.rpc(node.url), hub, state=TailState(path), sync=sync, max_catchup=10)
    await tail.poll()
    assert hub.on_disk == [(3, 3)]
    assert len(sync.pending) == 1 and fsyncs == []  # after the publish, not before
    node.grow(2)
    await tail.poll()  # written while the first fsync runs: no second one at once
    assert hub.on_disk[-2:] == [(4, 5), (5, 5)] and len(sync.pending) == 1
    sync.runOne()
    assert [p.height for p in fsyncs] == [5] and len(sync.pending) == 1  # one more, for block 5
    sync.runOne()
    assert sync.pending == []


@pytest_twisted.ensureDeferred
async def test_stopping_waits_for_the_fsync_and_leaves_the_file_durable(env, tmp_path, monkeypatch):
    path = str(tmp_path / "state.json")
    node = await env.fake_node()
    node.grow(2)
    sync = HeldSync()
    fsyncs = []
    real = TailState.sync
    monkeypatch.setattr(TailState, "sync", lambda self: (fsyncs.append(self.last), real(self)))
    tail = env.tail(env.rpc(node.url), RecordingHub(), state=TailState(path), sync=sync)
    tail.startService()
    await tail.whenIdle()
    node.grow(1)
    await tail.poll()
    stopped = tail.stopService()
    assert not stopped.called  # the fsync in its thread is not done
    sync.runOne()
    await stopped
    # The held one (begun for block 2), then the one for block 3's write, before stopping is done.
    assert [p.height for p in fsyncs] == [3, 3]
    assert TailState(path).load()[-1].height == 3


def test_the_file_keeps_the_blocks_a_reorg_removed_for_clients_that_still_hold_them(tmp_path):
    h = lambda n: "0x" + f"{n:064x}"  # noqa: E731
    chain = [(5, h(5), h(4)), (6, h(6), h(5)), (7, h(7), h(6))]
    orphans = [(6, h(106), h(5)), (7, h(107), h(106))]
    state = TailState(tmp_path / "s.json")
    state.save(chain, orphans)
    again = TailState(tmp_path / "s.json")
    assert [tuple(p) for p in again.load()] == chain
    assert [tuple(p) for p in again.orphans] == orphans
    # a file written before orphans were kept has none
    state.save(chain)
    assert "orphans" not in json.loads((tmp_path / "s.json").read_text())
    again = TailState(tmp_path / "s.json")
    assert len(again.load()) == 3 and again.orphans == []
