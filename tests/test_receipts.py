"""
The live-tail's receipts and logs (C{LiveTail(receipts=...)}):

1. against the scripted fake node of C{test_livetail} (which serves
   C{eth_getBlockReceipts} and C{eth_getLogs} and can refuse them, answer
   for another block, fail or hang): each mode, the one fallback of
   C{auto}, receipts that are not the block's own, faults on the receipts
   call (also at random through L{tests.faultproxy.FaultProxy}), and the
   restore after a restart;
2. against a real anvil: the receipt fields of a transfer and of a
   contract creation are anvil's own receipts';
3. against the embedded replay node, which has no C{eth_getBlockReceipts}
   and only some blocks' logs: C{auto} falls back to the logs, and the
   blocks whose logs were never recorded go out with their logs unknown.

A block is never published without what its mode promises, nor with
anything that is not its own: the poll fails and the next one publishes it,
once.
"""


import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import LogLevel

from explorerd.livetail import LiveTail
from explorerd.replay import ReplayNode
from explorerd.tailstate import TailState
from tests.anvil import DEV_ACCOUNTS
from tests.faultproxy import FAULTS
from tests.replayfaults import ServedNode
from tests.test_livetail import (  # noqa: F401 (env and logged are fixtures)
    RECEIPT_METHODS,
    ZERO,
    RecordingHub,
    _hash,
    blocks_of,
    chain_of,
    env,
    logged,
    make_block,
    make_receipts,
    messages_at,
    sample,
)

NTX = 4  # transactions per fake block: 0, 1, 2 and 0 logs
# A block and its receipts (or logs), by number, in one round trip.
WITH_RECEIPTS = "batch[eth_getBlockByNumber,eth_getBlockReceipts]"
WITH_LOGS = "batch[eth_getBlockByNumber,eth_getLogs]"


class EntryHub(RecordingHub):
    """Keeps the entries it was handed, published and remembered, as the hub's history would."""

    def __init__(self):
        super().__init__()
        self.entries = []
        self.remembered_entries = []

    def publish(self, entry):
        n = super().publish(entry)
        self.entries.append(entry)
        return n

    def remember(self, entry):
        super().remember(entry)
        self.remembered_entries.append(entry)


def wire_logs(block):
    """The logs of a fake block as explorerd publishes them."""
    return [{"address": log["address"], "topics": log["topics"], "data": log["data"],
             "tx_hash": log["transactionHash"], "tx_index": int(log["transactionIndex"], 16),
             "log_index": int(log["logIndex"], 16)}
            for receipt in make_receipts(block) for log in receipt["logs"]]


def assert_with_receipts(entry, block):
    """Every receipt field of the block's transactions, as the node's receipts say."""
    assert entry.hash == block["hash"]
    assert entry.logs == wire_logs(block)
    assert entry.data["log_count"] == len(entry.logs)
    for tx, receipt in zip(entry.txs_data, make_receipts(block), strict=True):
        assert tx["hash"] == receipt["transactionHash"]
        assert (tx["status"], tx["gas_used"], tx["contract_address"]) == (1, int(receipt["gasUsed"], 16), None)
        assert tx["fee_wei"] == str(int(receipt["gasUsed"], 16) * 2 * 10**9)
        assert tx["log_count"] == len(receipt["logs"])


def assert_with_logs_only(entry, block):
    assert entry.hash == block["hash"]
    assert entry.logs == wire_logs(block)
    for tx, receipt in zip(entry.txs_data, make_receipts(block), strict=True):
        assert (tx["status"], tx["gas_used"], tx["fee_wei"], tx["contract_address"]) == (None,) * 4
        assert tx["log_count"] == len(receipt["logs"])


def assert_without_logs(entry, block):
    assert entry.hash == block["hash"]
    assert entry.logs is None and entry.data["log_count"] is None
    for tx in entry.txs_data:
        assert (tx["status"], tx["gas_used"], tx["fee_wei"], tx["log_count"]) == (None,) * 4


def modes(tail):
    return {mode: sample(tail, "explorer_tail_receipts_mode", mode=mode) for mode in ("block", "logs", "off")}


def calls(tail, method):
    return sample(tail, "explorer_tail_rpc_calls_total", method=method)


async def receipts_setup(env, timeout=5.0, **kw):
    """A tail that published block 2 of a fake node whose blocks have NTX transactions."""
    node = await env.fake_node()
    hub = EntryHub()
    tail = env.tail(env.rpc(node.url, timeout=timeout), hub, **kw)
    node.grow(2, ntx=NTX)
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 2, 2)
    return node, hub, tail


# The modes ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_by_default_every_block_comes_with_its_receipts_in_the_same_round_trip(env):
    node, hub, tail = await receipts_setup(env)
    assert tail.receipts == "auto" and tail.receipts_source == "block"
    node.grow(5, ntx=NTX)
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 3, 7)
    for entry in hub.entries:
        assert_with_receipts(entry, node.blocks[entry.height])
    # Block 2 alone, then 3-7: each time the blocks and their receipts, by number, in one batch.
    assert calls(tail, WITH_RECEIPTS) == 2 and calls(tail, "eth_getBlockReceipts") == 0
    assert calls(tail, "eth_blockNumber") == 2 and calls(tail, "batch[eth_getBlockReceipts]") == 0
    assert node.methods["eth_getBlockReceipts"] == 6 and node.methods["eth_getLogs"] == 0
    assert node.requests == 2 + 2
    assert sample(tail, "explorer_tail_rpc_latency_seconds_count", method=WITH_RECEIPTS) == 2
    assert modes(tail) == {"block": 1, "logs": 0, "off": 0}
    assert tail.health()["receipts"] == "block"


@pytest_twisted.ensureDeferred
async def test_logs_mode_fetches_only_the_logs(env):
    node, hub, tail = await receipts_setup(env, receipts="logs")
    node.grow(3, ntx=NTX)
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 3, 5)
    for entry in hub.entries:
        assert_with_logs_only(entry, node.blocks[entry.height])
    assert node.methods["eth_getBlockReceipts"] == 0 and node.methods["eth_getLogs"] == 4
    assert calls(tail, WITH_LOGS) == 2 and calls(tail, "batch[eth_getLogs]") == 0
    assert modes(tail) == {"block": 0, "logs": 1, "off": 0}


@pytest_twisted.ensureDeferred
async def test_off_mode_fetches_neither_and_the_logs_are_unknown(env):
    node, hub, tail = await receipts_setup(env, receipts="off")
    node.grow(3, ntx=NTX)
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 3, 5)
    for entry in hub.entries:
        assert_without_logs(entry, node.blocks[entry.height])
    assert node.methods["eth_getBlockReceipts"] == node.methods["eth_getLogs"] == 0
    assert modes(tail) == {"block": 0, "logs": 0, "off": 1}


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="receipts must be one of auto, block, logs, off, got 'all'"):
        LiveTail(Clock(), None, RecordingHub(), receipts="all")


@pytest_twisted.ensureDeferred
async def test_block_mode_on_a_node_without_the_method_fails_the_poll_and_publishes_nothing(env):
    node, hub, tail = await receipts_setup(env, receipts="block")
    node.refuse = {"eth_getBlockReceipts": -32601}
    node.grow(2, ntx=NTX)
    for _ in range(2):
        assert not await tail.poll()
        assert hub.take() == []
    health = tail.health()
    assert health["status"] == "degraded" and "rpc_error" in health["last_error"]
    assert "eth_getBlockReceipts" in health["last_error"] and health["receipts"] == "block"
    assert node.methods["eth_getLogs"] == 0 and sample(tail, "explorer_tail_receipts_fallbacks_total",
                                                       mode="logs") == 0
    node.refuse = {}
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 3, 4)
    for entry in hub.entries:
        assert_with_receipts(entry, node.blocks[entry.height])


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("code", [-32601, -32602])  # geth and the replay node; anvil and some providers
async def test_auto_falls_back_to_the_logs_once_and_for_the_rest_of_the_run(env, logged, code):
    node = await env.fake_node()
    node.refuse = {"eth_getBlockReceipts": code}
    hub = EntryHub()
    tail = env.tail(env.rpc(node.url), hub)
    node.grow(2, ntx=NTX)
    assert await tail.poll()  # no poll fails for it: the block goes out with its logs
    node.grow(4, ntx=NTX)
    assert await tail.poll()
    node.grow(1, ntx=NTX)
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 2, 7)
    for entry in hub.entries:
        assert_with_logs_only(entry, node.blocks[entry.height])
    assert node.methods["eth_getBlockReceipts"] == 1  # asked once, never again
    assert node.methods["eth_getLogs"] == 6
    assert tail.receipts_source == "logs" and modes(tail) == {"block": 0, "logs": 1, "off": 0}
    assert sample(tail, "explorer_tail_receipts_fallbacks_total", mode="logs") == 1
    warnings = [m for m in messages_at(logged, LogLevel.warn) if "eth_getBlockReceipts" in m]
    assert len(warnings) == 1 and "only each block's logs" in warnings[0] and str(code) in warnings[0]
    assert sample(tail, "explorer_tail_polls_total", outcome="failed") == 0


@pytest_twisted.ensureDeferred
async def test_auto_falls_back_within_a_batch_and_then_to_nothing_if_the_logs_are_refused_too(env, logged):
    node, hub, tail = await receipts_setup(env)
    node.refuse = {"eth_getBlockReceipts": -32601}
    node.grow(3, ntx=NTX)
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 3, 5)
    for entry in hub.entries[1:]:
        assert_with_logs_only(entry, node.blocks[entry.height])
    node.refuse["eth_getLogs"] = -32601
    node.grow(2, ntx=NTX)
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 6, 7)
    for entry in hub.entries[4:]:
        assert_without_logs(entry, node.blocks[entry.height])
    node.refuse = {}  # it is decided for the run
    node.grow(1, ntx=NTX)
    assert await tail.poll()
    assert_without_logs(hub.entries[-1], node.blocks[7 + 1])
    assert modes(tail) == {"block": 0, "logs": 0, "off": 1}
    assert [sample(tail, "explorer_tail_receipts_fallbacks_total", mode=m) for m in ("logs", "off")] == [1, 1]
    assert (node.methods["eth_getBlockReceipts"], node.methods["eth_getLogs"]) == (1 + 3, 3 + 2)
    assert any("does not answer eth_getLogs either" in m for m in messages_at(logged, LogLevel.warn))


@pytest_twisted.ensureDeferred
async def test_logs_the_node_has_pruned_go_out_unknown_with_a_warning(env, logged):
    node, hub, tail = await receipts_setup(env, receipts="logs")
    node.grow(4, ntx=NTX)
    node.pruned = {node.hash(4), node.hash(5)}
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 3, 6)
    by_height = {e.height: e for e in hub.entries}
    for h in (3, 6):
        assert_with_logs_only(by_height[h], node.blocks[h])
    for h in (4, 5):
        assert_without_logs(by_height[h], node.blocks[h])
    assert sample(tail, "explorer_tail_logs_unavailable_total") == 2
    assert any("cannot give the logs of blocks 4, 5 (pruned history)" in m
               for m in messages_at(logged, LogLevel.warn))
    assert sample(tail, "explorer_tail_polls_total", outcome="failed") == 0


# Receipts that are not the block's own -------------------------------------------------


def _from_another_block(receipts):
    return [dict(r, blockHash=_hash("elsewhere")) for r in receipts]


def _one_short(receipts):
    return receipts[:-1]


def _reordered(receipts):
    return receipts[::-1]


def _someone_elses(receipts):
    return make_receipts(make_block(99, ZERO, "z", ntx=len(receipts)))


def _null(receipts):
    return None


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("breakage, kind, says", [
    (_from_another_block, "invalid_block", "is from block"),
    (_one_short, "invalid_block", "4 transactions but 3 receipts"),
    (_reordered, "invalid_block", "is for transaction"),
    (_someone_elses, "invalid_block", "is for transaction"),
    (_null, "inconsistent", "the node has no receipts of block"),
])
async def test_receipts_that_are_not_the_blocks_own_are_never_published(env, breakage, kind, says):
    node, hub, tail = await receipts_setup(env)
    node.grow(3, ntx=NTX)
    node.spoil = {4: breakage}  # block 3's receipts are right, block 4's are not, by number or hash
    for _ in range(2):
        assert not await tail.poll()
        # What came before goes out, once.
        assert blocks_of(hub.take()) == (chain_of(node, 3, 3) if _ == 0 else [])
        error = tail.health()["last_error"]
        assert error.startswith(f"{kind}: ") and says in error
        assert "block 4" in error or node.hash(4) in error
    # Those that do not even name the block are asked for again by its hash, in vain.
    asked_again = breakage in (_from_another_block, _someone_elses, _null)
    assert calls(tail, "eth_getBlockReceipts") == 2 * asked_again
    assert sample(tail, "explorer_tail_rpc_errors_total",
                  method="eth_getBlockReceipts" if asked_again else WITH_RECEIPTS, kind=kind) == 2
    node.spoil = {}
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 4, 5)  # then once, right
    for entry in hub.entries:
        assert_with_receipts(entry, node.blocks[entry.height])
    assert [e.height for e in hub.entries] == [2, 3, 4, 5]


@pytest_twisted.ensureDeferred
async def test_receipts_of_another_block_at_that_height_are_fetched_again_by_hash(env):
    """The node switched branches between the block and its receipts (by number): no poll fails for it."""
    node, hub, tail = await receipts_setup(env)
    node.grow(2, ntx=NTX)
    node.tamper = [None, _someone_elses]  # block 4's receipts, by number, are another block's
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 3, 4)
    for entry in hub.entries:
        assert_with_receipts(entry, node.blocks[entry.height])
    assert calls(tail, WITH_RECEIPTS) == 2 and calls(tail, "eth_getBlockReceipts") == 1


def _logs_of_another_block(logs):
    return [dict(log, blockHash=_hash("elsewhere")) for log in logs]


def _logs_of_another_transaction(logs):
    return [dict(log, transactionHash=_hash("elsewhere")) for log in logs]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("breakage", [_logs_of_another_block, _logs_of_another_transaction])
async def test_logs_that_are_not_the_blocks_own_are_never_published(env, breakage):
    node, hub, tail = await receipts_setup(env, receipts="logs")
    node.grow(1, ntx=NTX)
    node.spoil = {3: breakage}
    assert not await tail.poll()
    assert hub.take() == []
    error = tail.health()["last_error"]
    assert error.startswith("invalid_block: ") and "block 3" in error
    node.spoil = {}
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 3, 3)
    assert_with_logs_only(hub.entries[-1], node.blocks[3])


def _bad_miner(block):
    return dict(block, miner="0x1234")


def _tx_without_from(block):
    txs = [dict(tx) for tx in block["transactions"]]
    del txs[1]["from"]
    return dict(block, transactions=txs)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("breakage", [_bad_miner, _tx_without_from])
async def test_an_invalid_block_is_blamed_on_the_block_not_on_its_receipts(env, breakage):
    node, hub, tail = await receipts_setup(env)
    node.grow(1, ntx=NTX)
    node.served[3] = breakage(node.blocks[3])
    assert not await tail.poll()
    assert tail.health()["last_error"].startswith("invalid_block: eth_getBlockByNumber: block 3")
    assert sample(tail, "explorer_tail_rpc_errors_total", method="eth_getBlockByNumber", kind="invalid_block") == 1
    assert sample(tail, "explorer_tail_rpc_errors_total", method="eth_getBlockReceipts", kind="invalid_block") == 0
    # They came with the block, by number; not asked for again by hash.
    assert calls(tail, WITH_RECEIPTS) == 2 and calls(tail, "eth_getBlockReceipts") == 0


# The receipts call failing ------------------------------------------------------------


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("fault, kind", [
    ("500", "http"), ("garbage", "protocol"), ("rpc_error", "rpc_error"), ("drop", "unavailable"),
    ("hang", "timeout"),
])
async def test_a_failed_receipts_call_publishes_nothing_and_the_next_poll_publishes_once(env, fault, kind):
    node, hub, tail = await receipts_setup(env, timeout=0.5)
    node.grow(3, ntx=NTX)
    node.receipt_faults = [fault]
    assert not await tail.poll()
    assert hub.take() == []
    assert tail.health()["last_error"].startswith(f"{kind}: {WITH_RECEIPTS}")
    assert sample(tail, "explorer_tail_rpc_errors_total", method=WITH_RECEIPTS, kind=kind) == 1
    assert await tail.poll()
    assert blocks_of(hub.take()) == chain_of(node, 3, 5)
    assert [e.height for e in hub.entries] == [2, 3, 4, 5]
    for entry in hub.entries:
        assert_with_receipts(entry, node.blocks[entry.height])


@pytest_twisted.ensureDeferred
async def test_through_a_proxy_spoiling_receipts_calls_every_block_goes_out_once_with_its_receipts(env):
    node = await env.fake_node()
    rates = {fault: 0.1 for fault in FAULTS}  # 60% of the receipts calls spoiled
    proxy = await env.proxy(node.url, seed=7, rates=rates, delay=0.4, methods=RECEIPT_METHODS)
    hub = EntryHub()
    tail = env.tail(env.rpc(proxy.url, timeout=0.2), hub, batch_size=3)
    node.grow(2, ntx=NTX)
    polls = 0
    for grow in (1, 3, 1, 5, 2, 1, 4):
        node.grow(grow, ntx=NTX)
        while tail.published is None or tail.published["height"] < len(node.blocks) - 1:
            polls += 1
            assert polls < 200, "the tail does not get through"
            await tail.poll()
    recorded = hub.take()
    first = hub.entries[0].height
    assert blocks_of(recorded) == chain_of(node, first, len(node.blocks) - 1)  # no gap, no duplicate
    for entry in hub.entries:
        assert_with_receipts(entry, node.blocks[entry.height])
    assert sum(proxy.counts[f] for f in FAULTS) >= 10 and proxy.counts["pass"] > 0
    assert sample(tail, "explorer_tail_polls_total", outcome="failed") > 0


# The restore after a restart -------------------------------------------------------------


async def published_then_stopped(env, path, **kw):
    """A fake node, and a tail that published its blocks 2-12 and stopped (state in C{path})."""
    node = await env.fake_node()
    tail = env.tail(env.rpc(node.url), RecordingHub(), state=TailState(path), max_reorg_depth=3,
                    remember=8, batch_size=3, **kw)
    node.grow(2, ntx=NTX)
    assert await tail.poll()
    node.grow(10, ntx=NTX)
    assert await tail.poll()
    await tail.stopService()
    return node


@pytest_twisted.ensureDeferred
async def test_the_restored_history_has_the_receipts_and_logs(env, tmp_path):
    path = tmp_path / "livetail.json"
    node = await published_then_stopped(env, path)
    node.grow(1, ntx=NTX)
    hub = EntryHub()
    tail = env.tail(env.rpc(node.url), hub, state=TailState(path), max_reorg_depth=3, remember=8, batch_size=3)
    assert await tail.poll()
    assert [(e.height, e.hash) for e in hub.remembered_entries] == chain_of(node, 5, 12)
    for entry in hub.remembered_entries:
        assert_with_receipts(entry, node.blocks[entry.height])
    assert calls(tail, "batch[eth_getBlockReceipts]") == 3  # 5-7, 8-10, 11-12: a round trip per batch
    assert blocks_of(hub.take()) == chain_of(node, 13, 13)
    assert_with_receipts(hub.entries[0], node.blocks[13])


@pytest_twisted.ensureDeferred
async def test_a_restore_falls_back_too_and_restores_pruned_logs_as_unknown(env, tmp_path, logged):
    path = tmp_path / "livetail.json"
    node = await published_then_stopped(env, path)
    node.refuse = {"eth_getBlockReceipts": -32601}
    node.pruned = {node.hash(6), node.hash(7)}
    hub = EntryHub()
    tail = env.tail(env.rpc(node.url), hub, state=TailState(path), max_reorg_depth=3, remember=8, batch_size=3)
    assert await tail.poll()
    assert [(e.height, e.hash) for e in hub.remembered_entries] == chain_of(node, 5, 12)
    for entry in hub.remembered_entries:
        if entry.height in (6, 7):
            assert_without_logs(entry, node.blocks[entry.height])
        else:
            assert_with_logs_only(entry, node.blocks[entry.height])
    assert tail.receipts_source == "logs"
    assert calls(tail, "batch[eth_getBlockReceipts]") == 1 and calls(tail, "batch[eth_getLogs]") == 3
    assert sample(tail, "explorer_tail_logs_unavailable_total") == 2
    assert any("restored the history of 8 blocks (5-12)" in m and "2 of them without their logs" in m
               for m in messages_at(logged, LogLevel.info))


@pytest_twisted.ensureDeferred
async def test_a_restore_with_receipts_that_are_not_the_blocks_own_stops_there(env, tmp_path, logged):
    path = tmp_path / "livetail.json"
    node = await published_then_stopped(env, path)
    node.tamper = [None, None, None, _reordered]  # 5-7 right; 8 is not
    node.grow(1, ntx=NTX)
    hub = EntryHub()
    tail = env.tail(env.rpc(node.url), hub, state=TailState(path), max_reorg_depth=3, remember=8, batch_size=3)
    assert await tail.poll()
    assert [(e.height, e.hash) for e in hub.remembered_entries] == chain_of(node, 5, 7)
    assert blocks_of(hub.take()) == chain_of(node, 13, 13)
    assert any("cannot restore the history" in m and "invalid_block" in m and "eth_getBlockReceipts" in m
               for m in messages_at(logged, LogLevel.warn))


# Against anvil -----------------------------------------------------------------------

# Init code that deploys the 10-byte runtime 602a60005260206000f3 (returns 42).
CREATION = "0x600a600c600039600a6000f3602a60005260206000f3"


@pytest_twisted.ensureDeferred
async def test_against_anvil_the_receipt_fields_are_anvils_receipts(env):
    node = await env.anvil()
    rpc = env.rpc(node.url)
    hub = EntryHub()
    tail = env.tail(rpc, hub)
    transfer = await rpc.call("eth_sendTransaction", [
        {"from": DEV_ACCOUNTS[0], "to": DEV_ACCOUNTS[1], "value": hex(12345)}])
    creation = await rpc.call("eth_sendTransaction", [{"from": DEV_ACCOUNTS[0], "data": CREATION}])
    await rpc.call("evm_mine")
    assert await tail.poll()
    (entry,) = hub.entries
    assert entry.height == 1 and [tx["hash"] for tx in entry.txs_data] == [transfer, creation]
    for tx in entry.txs_data:
        receipt = await rpc.call("eth_getTransactionReceipt", [tx["hash"]])
        gas_used = int(receipt["gasUsed"], 16)
        assert tx["status"] == int(receipt["status"], 16) == 1
        assert tx["gas_used"] == gas_used
        assert tx["fee_wei"] == str(gas_used * int(receipt["effectiveGasPrice"], 16))
        assert tx["contract_address"] == (receipt["contractAddress"] and receipt["contractAddress"].lower())
        assert tx["log_count"] == len(receipt["logs"]) == 0
    assert entry.txs_data[0]["contract_address"] is None
    assert entry.txs_data[1]["contract_address"] is not None and entry.txs_data[1]["to_addr"] is None
    code = await rpc.call("eth_getCode", [entry.txs_data[1]["contract_address"], "latest"])
    assert code == "0x602a60005260206000f3"
    assert entry.logs == [] and entry.data["log_count"] == 0
    assert tail.receipts_source == "block" and calls(tail, WITH_RECEIPTS) == 1


# Against the replay node ----------------------------------------------------------------


class Closing:
    """A served replay node as C{Env} stops its nodes: after the tails and their clients."""

    def __init__(self, served, reactor):
        self.served = served
        self.reactor = reactor

    async def stop(self):
        await self.served.close(self.reactor)


def recorded_logs(node, block_hash):
    """The logs the replay node serves for a block, as explorerd publishes them; None if never recorded."""
    logs = node.chain.logsOf(block_hash)
    if logs is None:
        return None
    return [{"address": log["address"].lower(), "topics": [t.lower() for t in log["topics"]],
             "data": log["data"].lower(), "tx_hash": log["transactionHash"].lower(),
             "tx_index": int(log["transactionIndex"], 16), "log_index": int(log["logIndex"], 16)}
            for log in logs]


@pytest_twisted.ensureDeferred
async def test_against_the_replay_node_auto_falls_back_to_the_recorded_logs(env, logged):
    from twisted.internet import reactor

    # mainnet 11880804-11880810: every block's logs recorded; rinkeby 4941854-4941873: none.
    node = ReplayNode(Clock(), ["mainnet_11880804-11880810", "rinkeby_4941854-4941873"])
    served = await ServedNode(node).listen(reactor)
    env.nodes.append(Closing(served, reactor))
    hub = EntryHub()
    tail = env.tail(env.rpc(served.url), hub, batch_size=4)
    node.mine()
    assert await tail.poll()
    for _ in range(11):
        node.mine()
    assert await tail.poll()
    assert [e.height for e in hub.entries] == list(range(1, 13))
    assert tail.receipts_source == "logs"
    assert sample(tail, "explorer_tail_receipts_fallbacks_total", mode="logs") == 1
    without = []
    for entry in hub.entries:
        expected = recorded_logs(node, entry.hash)
        assert entry.logs == expected
        assert all(tx["status"] is None for tx in entry.txs_data)
        if expected is None:
            without.append(entry.height)
            assert entry.data["log_count"] is None
        else:
            counts = {}
            for log in expected:
                counts[log["tx_hash"]] = counts.get(log["tx_hash"], 0) + 1
            assert [tx["log_count"] for tx in entry.txs_data] == [counts.get(tx["hash"], 0)
                                                                  for tx in entry.txs_data]
    assert sum(len(e.logs or ()) for e in hub.entries[:7]) == 1831  # the recorded mainnet logs
    assert without == list(range(8, 13))  # the rinkeby blocks
    assert sample(tail, "explorer_tail_logs_unavailable_total") == len(without)
    warnings = messages_at(logged, LogLevel.warn)
    assert sum("eth_getBlockReceipts" in m and "-32601" in m for m in warnings) == 1
    assert sum("cannot give the logs of blocks 8, 9 (pruned history)" in m for m in warnings) == 1  # 6-9
    assert sum("cannot give the logs of blocks 10, 11, 12 (pruned history)" in m for m in warnings) == 1
