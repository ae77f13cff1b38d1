"""
tests.contracts against anvil itself (no explorerd): the Emitter's logs, the
Reverter's status 0, receipts three ways, and reorgs that swap logs.

Each test gets its own anvil that mines only on request, so it knows exactly
which transactions share a block.
"""

import pytest
import pytest_twisted

from explorerd.jsonrpc import JSONRPCClient, RPCError
from tests.anvil import DEV_ACCOUNTS, Anvil, blocking_anvil
from tests.contracts import (
    EMITTER_RUNTIME,
    REVERTER_RUNTIME,
    TRANSFER_TOPIC,
    BlockingRPC,
    Contracts,
    Log,
    ReorgError,
    encodeLogs,
    fetchBlock,
    fetchLogs,
    logFields,
    runBlocking,
    transfer,
    word,
)

A, B = DEV_ACCOUNTS
ZERO_BLOOM = "0x" + "00" * 256


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest_twisted.async_yield_fixture
async def rpc(no_leaks):
    """A JSON-RPC client of a fresh anvil that mines only on request."""
    reactor = _reactor()
    node = await Anvil(reactor, no_mining=True).start()
    client = JSONRPCClient(reactor, node.url, timeout=5.0)
    yield client
    await client.close()
    await node.stop()


# Encoding, without a node ----------------------------------------------------------


def test_topics_and_calldata_encoding():
    assert word(1) == "0x" + "00" * 31 + "01"
    assert word(A) == "0x" + "00" * 12 + A[2:]
    assert word(b"\xff" * 32) == "0x" + "ff" * 32
    assert Log((1,), "0xabcd").data == b"\xab\xcd"
    # One record: n=1, L=2, the topic, then the data padded to 32 bytes.
    assert encodeLogs([Log((5,), b"\x01\x02")]) == "0x" + (
        "00" * 31 + "01" + "00" * 31 + "02" + "00" * 31 + "05" + "0102" + "00" * 30
    )
    assert encodeLogs([]) == "0x"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Log((1, 2, 3, 4, 5)), "at most 4 topics"),
        (lambda: Log((b"\x01" * 33,)), "at most 32 bytes"),
        (lambda: Log((2**256,)), "fit in 32 bytes"),
        (lambda: Log((-1,)), "fit in 32 bytes"),
        (lambda: Log(("nothex",)), "0x-prefixed hex"),
        (lambda: Log((), "0xzz"), "0x-prefixed hex"),
        (lambda: Log((True,)), "int, bytes or hex"),
        (lambda: Log(TRANSFER_TOPIC), "a sequence of topics"),
        (lambda: encodeLogs([{"topics": []}]), "expected a Log"),
    ],
)
def test_bad_logs_are_refused_clearly(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_the_reverter_differs_from_the_emitter_only_in_its_last_instruction():
    diff = [i for i, (x, y) in enumerate(zip(EMITTER_RUNTIME, REVERTER_RUNTIME)) if x != y]
    assert diff == [0x0C] and EMITTER_RUNTIME[0x0C] == 0xF3 and REVERTER_RUNTIME[0x0C] == 0xFD


# Against anvil ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_deployment_receipts_name_the_contracts(rpc):
    c = await Contracts.deploy(rpc)
    fetched = await fetchBlock(rpc, c.deployBlock)
    assert fetched.block["transactions"] == list(c.deployTxs)
    assert [(r["to"], r["contractAddress"], r["status"]) for r in fetched.receipts] == [
        (None, c.emitter, "0x1"),
        (None, c.reverter, "0x1"),
    ]
    assert await rpc.call("eth_getCode", [c.emitter, "latest"]) == "0x" + EMITTER_RUNTIME.hex()
    assert await rpc.call("eth_getCode", [c.reverter, "latest"]) == "0x" + REVERTER_RUNTIME.hex()
    # The constants are what they claim to be (web3_sha3 is keccak256).
    signature = "0x" + b"Transfer(address,address,uint256)".hex()
    assert await rpc.call("web3_sha3", [signature]) == TRANSFER_TOPIC


@pytest_twisted.ensureDeferred
async def test_a_transfer_log_is_found_by_getLogs(rpc):
    c = await Contracts.deploy(rpc)
    tx = await c.emit([transfer(A, B, 12345)])
    block = await c.mine()
    logs = await fetchLogs(rpc, block, block, address=c.emitter, topics=[TRANSFER_TOPIC, None, word(B)])
    assert [logFields(log) for log in logs] == [{
        "address": c.emitter,
        "topics": [TRANSFER_TOPIC, word(A), word(B)],
        "data": "0x" + "00" * 30 + "3039",
    }]
    assert logs[0]["transactionHash"] == tx and logs[0]["removed"] is False
    # Filtered by another recipient: nothing.
    assert await fetchLogs(rpc, block, block, topics=[TRANSFER_TOPIC, None, word(A)]) == []


@pytest_twisted.ensureDeferred
async def test_one_tx_logs_0_to_4_topics_with_any_data_in_order(rpc):
    c = await Contracts.deploy(rpc)
    wanted = [
        Log(),
        Log((TRANSFER_TOPIC,), b"\x01"),
        Log((1, 2), bytes(range(32))),
        Log((A, B, 2**256 - 1), bytes(range(33))),
        Log((4, 3, 2, 1), b"a longer payload, " * 7),
    ]
    tx = await c.emit(wanted)
    fetched = await fetchBlock(rpc, await c.mine())
    (receipt,) = fetched.receipts
    assert receipt["transactionHash"] == tx and receipt["status"] == "0x1"
    assert [logFields(log) for log in receipt["logs"]] == [log.expectedAt(c.emitter) for log in wanted]
    assert [log["logIndex"] for log in receipt["logs"]] == ["0x0", "0x1", "0x2", "0x3", "0x4"]
    assert fetched.logs == receipt["logs"]


@pytest_twisted.ensureDeferred
async def test_several_txs_in_one_block_receipts_in_tx_order(rpc):
    c = await Contracts.deploy(rpc)
    sent = [
        await c.emit([transfer(A, B, 1), Log((7,))]),
        await c.emit([transfer(B, A, 2)], sender=B),
        await c.revert([transfer(A, B, 3)]),
        await c.emit([]),
        await c.emit([Log((8,), b"last")], sender=B),
    ]
    fetched = await fetchBlock(rpc, await c.mine())

    assert fetched.block["transactions"] == sent
    assert [r["transactionHash"] for r in fetched.blockReceipts] == sent
    assert fetched.blockReceipts == fetched.receipts
    assert [r["transactionIndex"] for r in fetched.receipts] == [hex(i) for i in range(5)]
    assert [r["status"] for r in fetched.receipts] == ["0x1", "0x1", "0x0", "0x1", "0x1"]
    assert [len(r["logs"]) for r in fetched.receipts] == [2, 1, 0, 0, 1]
    cumulative = [int(r["cumulativeGasUsed"], 16) for r in fetched.receipts]
    used = [int(r["gasUsed"], 16) for r in fetched.receipts]
    assert cumulative == [sum(used[: i + 1]) for i in range(5)]
    # eth_getLogs has the same logs, numbered across the block.
    assert fetched.logs == fetched.receiptLogs
    assert [log["logIndex"] for log in fetched.logs] == ["0x0", "0x1", "0x2", "0x3"]
    assert [log["transactionIndex"] for log in fetched.logs] == ["0x0", "0x0", "0x1", "0x4"]
    assert all(log["removed"] is False and log["blockHash"] == fetched.block["hash"] for log in fetched.logs)


@pytest_twisted.ensureDeferred
async def test_a_reverted_call_has_status_0_and_no_logs(rpc):
    c = await Contracts.deploy(rpc)
    quiet = await c.revert()
    noisy = await c.revert([transfer(A, B, 99), Log((1, 2, 3, 4), b"gone")])
    block = await c.mine()
    for tx in (quiet, noisy):
        receipt = await rpc.call("eth_getTransactionReceipt", [tx])
        assert (receipt["status"], receipt["logs"], receipt["logsBloom"]) == ("0x0", [], ZERO_BLOOM)
        assert receipt["to"] == c.reverter and receipt["blockNumber"] == hex(block)
    assert await fetchLogs(rpc, 0, "latest", address=c.reverter) == []
    assert await fetchLogs(rpc, block, block) == []
    # The same calls to the Emitter do log: the Reverter's logs were made, then undone.
    await c.emit([transfer(A, B, 99), Log((1, 2, 3, 4), b"gone")])
    assert len(await fetchLogs(rpc, await c.mine(), "latest")) == 2


@pytest_twisted.ensureDeferred
async def test_reorg_replaces_the_old_logs_with_the_new(rpc):
    c = await Contracts.deploy(rpc)
    old = []
    for amount in (1, 2, 3):
        old.append(await c.emit([transfer(A, B, amount)]))
        await c.mine()
    head = await rpc.blockNumber()
    oldHashes = [(await rpc.getBlockByNumber(n, False))["hash"] for n in (head - 1, head)]

    # A raw signed transaction carries the nonce valid at the fork point (B
    # sends nothing else here: anvil numbers its objects ignoring raw ones).
    nonce = await rpc.call("eth_getTransactionCount", [B, hex(head - 2)])
    raw = await c.sign({**c.emitTx([Log((4,), b"raw")], sender=B), "nonce": nonce})
    new = await c.reorg(2, [
        (c.emitTx([transfer(B, A, 10), transfer(B, A, 11)]), 0),
        (c.revertTx([transfer(B, A, 12)]), 0),
        (raw, 1),
        (c.emitTx([transfer(B, A, 13)]), 1),
    ])

    assert await rpc.blockNumber() == head
    for n, oldHash in zip((head - 1, head), oldHashes):
        assert (await rpc.getBlockByNumber(n, False))["hash"] != oldHash
        assert await rpc.call("eth_getBlockReceipts", [oldHash]) is None
    for tx in old[1:]:
        assert await rpc.call("eth_getTransactionReceipt", [tx]) is None
    assert (await rpc.call("eth_getTransactionReceipt", [old[0]]))["status"] == "0x1"

    logs = await fetchLogs(rpc, head - 2, head, address=c.emitter)
    assert [(int(log["blockNumber"], 16), log["transactionHash"], logFields(log)) for log in logs] == [
        (head - 2, old[0], transfer(A, B, 1).expectedAt(c.emitter)),
        (head - 1, new[0], transfer(B, A, 10).expectedAt(c.emitter)),
        (head - 1, new[0], transfer(B, A, 11).expectedAt(c.emitter)),
        (head, new[2], Log((4,), b"raw").expectedAt(c.emitter)),
        (head, new[3], transfer(B, A, 13).expectedAt(c.emitter)),
    ]
    assert all(log["removed"] is False for log in logs)
    first, second = await fetchBlock(rpc, head - 1), await fetchBlock(rpc, head)
    assert first.block["transactions"] == new[:2] and second.block["transactions"] == new[2:]
    assert [r["status"] for r in first.blockReceipts + second.blockReceipts] == ["0x1", "0x0", "0x1", "0x1"]
    assert first.blockReceipts == first.receipts and first.logs == first.receiptLogs


@pytest_twisted.ensureDeferred
async def test_reorg_reports_what_anvil_silently_dropped(rpc):
    c = await Contracts.deploy(rpc)
    await c.mine()
    late = {**c.emitTx([Log((1,))]), "nonce": hex(99)}
    with pytest.raises(ReorgError, match=r"dropped replacement #1 \(for block 2\)"):
        await c.reorg(1, [(c.emitTx([Log((2,))]), 0), (late, 0)])
    with pytest.raises(ValueError, match="depth must be an int >= 1"):
        await c.reorg(0, [])
    with pytest.raises(ValueError, match=r"offset must be in 0..1"):
        await c.reorg(2, [(c.emitTx([]), 2)])
    with pytest.raises(RPCError, match="Reorg depth must not exceed"):
        await c.reorg(99, [])


@pytest_twisted.ensureDeferred
async def test_deploy_refuses_an_automining_anvil(rpc):
    await rpc.call("evm_setAutomine", [True])
    with pytest.raises(ValueError, match="mines only on request"):
        await Contracts.deploy(rpc)


def test_plain_synchronous_use():
    with blocking_anvil(no_mining=True) as node:
        rpc = BlockingRPC(node.url)
        c = runBlocking(Contracts.deploy(rpc))
        tx = runBlocking(c.emit([transfer(A, B, 5)]))
        fetched = runBlocking(fetchBlock(rpc, runBlocking(c.mine())))
        assert fetched.block["transactions"] == [tx]
        assert [logFields(log) for log in fetched.logs] == [transfer(A, B, 5).expectedAt(c.emitter)]
        assert runBlocking(fetchBlock(rpc, 99)) is None
        with pytest.raises(RPCError, match="anvil_nosuchmethod"):
            runBlocking(rpc.call("anvil_nosuchmethod"))
