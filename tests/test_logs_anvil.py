"""
Receipts and logs end to end on a real anvil: contracts that emit events and one whose calls
revert, the live-tail fetching receipts, the hub, and a real WebSocket client, compared field by
field with what anvil itself answers (eth_getTransactionReceipt, eth_getLogs); filters; a reorg
(anvil_reorg) removing blocks with logs; a resume across it.
"""

import pytest
import pytest_twisted

from tests.clients import connect, drain
from tests.contracts import Contracts, Log, transfer, word
from tests.test_livetail import env  # noqa: F401  (a fixture)

pytestmark = pytest.mark.needs_node  # anvil from tests/node

A, B, C = ("0x" + c * 40 for c in "abc")
OTHER = "0x" + "11" * 32


def wire_log(log):
    return {"address": log["address"].lower(), "topics": [t.lower() for t in log["topics"]],
            "data": log["data"].lower(), "tx_hash": log["transactionHash"].lower(),
            "tx_index": int(log["transactionIndex"], 16), "log_index": int(log["logIndex"], 16)}


class Chain:
    """anvil with the contracts, a daemon whose hub a live-tail feeds, and the anvil control client."""

    def __init__(self, env, daemon, ctl, contracts, tail):
        self.env, self.daemon, self.ctl, self.contracts, self.tail = env, daemon, ctl, contracts, tail

    async def client(self, channels=("logs",), **subscribe):
        client = await connect(self.daemon.url)
        answer = await client.request({"action": "subscribe", "channels": list(channels), **subscribe})
        assert answer["type"] == "subscribed", answer
        return client

    async def block(self, *calls):
        """Mine one block with C{calls} (coroutines that queue a transaction); the tail publishes it."""
        hashes = [await call for call in calls]
        number = await self.contracts.mine()
        assert await self.tail.poll()
        return number, hashes

    async def logs(self, number):
        return await self.ctl.call("eth_getLogs", [{"fromBlock": hex(number), "toBlock": hex(number)}])


@pytest_twisted.async_yield_fixture
async def chain(start_daemon, env):  # noqa: F811
    node = await env.anvil()
    daemon = await start_daemon()
    ctl = env.rpc(node.url)
    contracts = await Contracts.deploy(ctl)
    tail = env.tail(env.rpc(node.url), daemon.hub)
    assert await tail.poll()  # the deployment block
    yield Chain(env, daemon, ctl, contracts, tail)


@pytest_twisted.ensureDeferred
async def test_receipt_fields_and_logs_are_anvils_own(chain):
    c = chain.contracts
    client = await chain.client(("newTxs", "logs"), batch=True)
    number, (ok, failed, two) = await chain.block(
        c.emit([transfer(A, B, 10**21), Log((OTHER,), b"hello")]),
        c.revert([transfer(A, C, 1)]),  # its log is discarded with it
        c.emit([Log(), Log((OTHER, word(7), word(8), word(9)), b"\x01" * 40)], sender=None),
    )
    batch, logs = await drain(client)
    assert batch["type"] == "newTxs" and logs["type"] == "logs"
    txs = {tx["hash"]: tx for tx in batch["data"]["txs"]}
    for tx_hash in (ok, failed, two):
        receipt = await chain.ctl.call("eth_getTransactionReceipt", [tx_hash])
        tx = txs[tx_hash]
        assert tx["status"] == int(receipt["status"], 16)
        assert tx["gas_used"] == int(receipt["gasUsed"], 16)
        assert tx["fee_wei"] == str(int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16))
        assert tx["gas_price_wei"] == str(int(receipt["effectiveGasPrice"], 16))
        assert tx["contract_address"] is None and tx["log_count"] == len(receipt["logs"])
        assert tx["type"] == int(receipt["type"], 16)
        sent = await chain.ctl.call("eth_getTransactionByHash", [tx_hash])
        assert tx["nonce"] == int(sent["nonce"], 16) and tx["gas"] == int(sent["gas"], 16)
        assert tx["method_id"] == sent["input"][:10] and tx["input_size"] == (len(sent["input"]) - 2) // 2
        assert tx["max_fee_per_gas_wei"] == str(int(sent["maxFeePerGas"], 16))
    assert txs[failed]["status"] == 0 and txs[failed]["log_count"] == 0
    assert (txs[ok]["log_count"], txs[two]["log_count"]) == (2, 2)
    node_logs = await chain.logs(number)
    assert len(node_logs) == 4
    assert logs["data"] == {"block_height": number, "block_hash": batch["data"]["block_hash"], "removed": False,
                            "logs": [wire_log(log) for log in node_logs]}
    await client.close()


@pytest.mark.parametrize("flt, wanted", [
    ({"address": "EMITTER"}, lambda log: True),
    ({"address": ["0x" + "99" * 20, "EMITTER"], "topics": [OTHER]}, lambda log: log["topics"][:1] == [OTHER]),
    ({"topics": [[OTHER, "TRANSFER"], None, word(B)]},
     lambda log: len(log["topics"]) >= 3 and log["topics"][2] == word(B)),
    ({"topics": [None, None, None, None]}, lambda log: len(log["topics"]) == 4),
    ({"topics": [None, word(7)]}, lambda log: log["topics"][1:2] == [word(7)]),
], ids=["address", "addresses-and-topic", "alternatives-wildcard-third", "four-topics", "second-topic-only"])
@pytest_twisted.ensureDeferred
async def test_filters_against_anvils_logs(chain, flt, wanted):
    c = chain.contracts
    from tests.contracts import TRANSFER_TOPIC

    def resolve(value):
        return {"EMITTER": c.emitter, "TRANSFER": TRANSFER_TOPIC}.get(value, value) if isinstance(value, str) else value

    flt = {k: ([[resolve(t) for t in p] if isinstance(p, list) else resolve(p) for p in v] if isinstance(v, list)
               else resolve(v)) for k, v in flt.items()}
    client = await chain.client(logs=flt)
    blocks = []
    for logs in ([transfer(A, B, 5), Log((OTHER,), b"x")],
                 [Log((OTHER, word(7), word(8), word(9))), transfer(B, C, 6)],
                 [Log()]):
        number, _ = await chain.block(c.emit(logs))
        blocks.append(number)
    got = await drain(client)
    expected = []
    for number in blocks:
        matching = [wire_log(log) for log in await chain.logs(number) if wanted(log)]
        if matching:
            expected.append((number, matching))
    assert [(m["data"]["block_height"], m["data"]["logs"]) for m in got] == expected and expected
    await client.close()


@pytest_twisted.ensureDeferred
async def test_anvil_reorg_retracts_the_logs_then_sends_the_new_branchs(chain):
    c = chain.contracts
    client = await chain.client(("newBlocks", "logs"))
    first, _ = await chain.block(c.emit([transfer(A, B, 1)]))
    second, _ = await chain.block(c.emit([transfer(B, C, 2), Log((OTHER,))]))
    before = await drain(client)
    assert [m["type"] for m in before] == ["newBlock", "logs", "newBlock", "logs"]
    old = [m["data"] for m in before if m["type"] == "logs"]
    # anvil replaces both blocks: the new first block has one different log, the second none.
    await c.reorg(2, [(c.emitTx([transfer(A, C, 3)]), 0)])
    assert await chain.tail.poll()
    got = await drain(client)
    assert got[0]["type"] == "reorg" and got[0]["data"]["depth"] == 2
    assert [m["data"] for m in got[1:3]] == [dict(old[1], removed=True), dict(old[0], removed=True)]
    assert [m["type"] for m in got[3:]] == ["newBlock", "logs", "newBlock"]
    assert got[4]["data"]["logs"] == [wire_log(log) for log in await chain.logs(first)]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_client_that_resumes_across_the_reorg_gets_the_retraction(chain):
    c = chain.contracts
    client = await chain.client(("newBlocks", "logs"), logs={"address": c.emitter})
    await chain.block(c.emit([transfer(A, B, 1)]))
    number, _ = await chain.block(c.emit([transfer(B, C, 2)]))
    seen = await drain(client)
    held = [m["data"] for m in seen if m["type"] == "newBlock"][-1]
    gone_logs = [m["data"] for m in seen if m["type"] == "logs"][-1]
    await client.close()
    await c.reorg(1, [(c.emitTx([Log((OTHER,), b"new")]), 0)])
    assert await chain.tail.poll()
    back = await chain.client(("newBlocks", "logs"), logs={"address": c.emitter},
                              since={"height": held["height"], "hash": held["hash"]})
    got = await drain(back)
    assert got[0]["type"] == "reorg" and got[0]["data"]["removed"] == [{"height": number, "hash": held["hash"]}]
    assert got[1] == {"type": "logs", "data": dict(gone_logs, removed=True)}
    assert [m["type"] for m in got[2:]] == ["newBlock", "logs"]
    assert got[3]["data"]["logs"] == [wire_log(log) for log in await chain.logs(number)]
    await back.close()
