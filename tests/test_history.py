"""
L{explorerd.history.History} on its own: the chain it holds stays linked,
where a resuming client stands (a C{since} that contradicts itself
included), and what a replay will cost before it is sent.
"""

import pytest

from explorerd.events import InvalidBlock
from explorerd.history import BATCH, HASHES, PLAIN, BrokenChain, Entry, History


def _hash(tag, height):
    return "0x" + f"{tag}{height:x}".rjust(64, "0")


def entry(height, tag="a", parent_tag=None, ntx=2):
    """A block at C{height} on branch C{tag} whose parent is on C{parent_tag} (default: the same)."""
    block_hash = _hash(tag, height)
    data = {"height": height, "hash": block_hash, "parent_hash": _hash(parent_tag or tag, height - 1),
            "tx_count": ntx, "timestamp": 1_700_000_000 + height, "miner": "0x" + "11" * 20, "gas_used": 21000}
    txs = [{"hash": _hash(f"{tag}f{i}", height), "from_addr": "0x" + "22" * 20, "to_addr": "0x" + "33" * 20,
            "value_wei": "1", "block_height": height, "block_hash": block_hash, "tx_index": i}
           for i in range(ntx)]
    return Entry(data, txs)


def chain(lo, hi, size=16):
    history = History(size)
    for h in range(lo, hi + 1):
        history.add(entry(h))
    return history


def test_a_block_that_does_not_follow_the_newest_is_refused_and_changes_nothing():
    history = chain(1, 5)
    stranger = entry(6, tag="b")  # height 6, but its parent is b5, not a5
    with pytest.raises(BrokenChain) as e:
        history.add(stranger)
    assert isinstance(e.value, InvalidBlock)  # publishers that discard invalid blocks discard it too
    message = str(e.value)
    assert f"block 6 {stranger.hash}" in message and stranger.parent_hash in message
    assert f"newest block is 5 {_hash('a', 5)}" in message
    assert [e.height for e in history.after(0)] == [1, 2, 3, 4, 5]
    assert history.canonical(stranger.hash) is None
    history.add(entry(6))  # the real child still extends it
    assert history.newest.hash == _hash("a", 6)


def test_after_a_rollback_the_new_branch_links_to_the_ancestor():
    history = chain(1, 5)
    history.rollback(3, [{"height": 4, "hash": _hash("a", 4)}, {"height": 5, "hash": _hash("a", 5)}],
                     _hash("a", 3))
    with pytest.raises(BrokenChain):
        history.add(entry(4, tag="b"))  # b4's parent is b3, which was never published
    history.add(entry(4, tag="b", parent_tag="a"))
    history.add(entry(5, tag="b"))
    assert [e.hash for e in history.after(3)] == [_hash("b", 4), _hash("b", 5)]


def test_a_jump_in_heights_still_starts_over():
    history = chain(1, 5)
    history.add(entry(9, tag="c"))  # the tail re-anchored after a long outage
    assert [e.height for e in history.after(0)] == [9]


@pytest.mark.parametrize("where", ["canonical", "parent-of-oldest", "orphan"])
def test_a_since_whose_height_contradicts_its_hash_is_a_mismatch(where):
    history = chain(1, 6, size=4)  # holds 3-6; 2 is the parent of the oldest
    if where == "orphan":
        history.rollback(4, [{"height": 5, "hash": _hash("a", 5)}, {"height": 6, "hash": _hash("a", 6)}],
                         _hash("a", 4))
        held = 5
    else:
        held = {"canonical": 4, "parent-of-oldest": 2}[where]
    block_hash = _hash("a", held)
    assert history.resume(held + 3, block_hash) == ("mismatch", {"height": held, "hash": block_hash}, None)
    assert history.resume(held - 1, block_hash)[0] == "mismatch"
    assert history.resume(held, block_hash)[0] == "ok"


def test_an_unknown_hash_is_unavailable_whatever_the_height():
    history = chain(1, 4)
    assert history.resume(2, _hash("z", 2)) == ("unavailable", None, None)


@pytest.mark.parametrize("blocks, mode", [(True, PLAIN), (True, None), (False, PLAIN), (True, BATCH),
                                          (False, HASHES)])
def test_the_replay_size_is_the_bytes_a_replay_writes(blocks, mode):
    history = chain(1, 8)
    expected = 0
    for e in history.after(3):
        payload, _ = e.payload(blocks, mode)
        expected += len(payload)
    assert history.replay_size(3, blocks, mode) == expected > 0
    assert history.replay_size(8, blocks, mode) == 0
