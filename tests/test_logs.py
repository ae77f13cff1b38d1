"""
The logs channel on /v1/stream, with real mainnet blocks and their real logs: filters with
geth's semantics, one message per block, retraction after a reorg and on resume, and errors.
"""

import copy

import pytest
import pytest_twisted

from explorerd.history import Entry
from explorerd.logfilter import LogFilter
from tests.chaindata import mainnet_logs, mainnet_run
from tests.clients import connect, drain

WETH = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"
USDT = "0xdac17f958d2ee523a2206206994597c13d831ec7"
TRANSFER = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


def entries(n=6):
    logs = mainnet_logs()
    return [Entry.fromNode(b, logs=logs.get(b["hash"], [])) for b in mainnet_run()[:n]]


def wire_log(log, block):
    """What a client must get for one of the node's logs."""
    return {"address": log["address"].lower(), "topics": [t.lower() for t in log["topics"]],
            "data": log["data"].lower(), "tx_hash": log["transactionHash"].lower(),
            "tx_index": int(log["transactionIndex"], 16), "log_index": int(log["logIndex"], 16)}


def node_logs(entry):
    return mainnet_logs().get(entry.hash, [])


def geth_match(log, addresses=None, topics=()):
    """geth's filter rule, written out plainly, for comparison."""
    if addresses and log["address"].lower() not in addresses:
        return False
    if len(log["topics"]) < len(topics):
        return False
    return all(want is None or log["topics"][i].lower() in want for i, want in enumerate(topics))


async def logs_client(daemon, flt=None, channels=("logs",)):
    client = await connect(daemon.url)
    message = {"action": "subscribe", "channels": list(channels)}
    if flt is not None:
        message["logs"] = flt
    answer = await client.request(message)
    assert answer["type"] == "subscribed", answer
    return client, answer


@pytest_twisted.ensureDeferred
async def test_every_log_of_every_block_in_order_with_the_nodes_values(start_daemon):
    daemon = await start_daemon()
    client, _ = await logs_client(daemon)
    blocks = entries()
    for e in blocks:
        daemon.hub.publish(e)
    got = await drain(client)
    with_logs = [e for e in blocks if node_logs(e)]
    assert [m["data"]["block_hash"] for m in got] == [e.hash for e in with_logs]
    for m, e in zip(got, with_logs):
        assert m["type"] == "logs"
        assert m["data"]["block_height"] == e.height and m["data"]["removed"] is False
        assert m["data"]["logs"] == [wire_log(log, e) for log in node_logs(e)]
    assert sum(len(m["data"]["logs"]) for m in got) == 295 + 219 + 310 + 349 + 329 + 329
    await client.close()


@pytest.mark.parametrize("flt, addresses, topics", [
    ({"address": WETH}, {WETH}, ()),
    ({"address": [WETH.upper().replace("0X", "0x"), USDT]}, {WETH, USDT}, ()),
    ({"topics": [TRANSFER]}, None, ({TRANSFER},)),
    ({"address": USDT, "topics": [TRANSFER, None, None]}, {USDT}, ({TRANSFER}, None, None)),
    ({"topics": [None, None, None, None]}, None, (None, None, None, None)),  # at least 4 topics
    ({"topics": [[TRANSFER, "0x" + "00" * 32], []]}, None, ({TRANSFER, "0x" + "00" * 32}, None)),
], ids=["one-address", "addresses-any-case", "first-topic", "address-and-trailing-nulls", "four-nulls",
        "alternatives-and-empty-list"])
@pytest_twisted.ensureDeferred
async def test_a_filter_selects_exactly_what_geth_would(start_daemon, flt, addresses, topics):
    daemon = await start_daemon()
    client, answer = await logs_client(daemon, flt)
    blocks = entries()
    for e in blocks:
        daemon.hub.publish(e)
    got = await drain(client)
    expected = []
    for e in blocks:
        matching = [wire_log(log, e) for log in node_logs(e) if geth_match(log, addresses, topics)]
        if matching:  # no message for a block with no match
            expected.append((e.hash, matching))
    assert [(m["data"]["block_hash"], m["data"]["logs"]) for m in got] == expected
    assert expected, "the filter should match something in real mainnet blocks"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_client_on_every_channel_gets_a_blocks_logs_after_its_transactions(start_daemon):
    daemon = await start_daemon()
    client, _ = await logs_client(daemon, {"address": WETH}, channels=("newBlocks", "newTxs", "logs"))
    blocks = entries(2)
    for e in blocks:
        daemon.hub.publish(e)
    got = await drain(client)
    kinds = [(m["type"], m["data"].get("height", m["data"].get("block_height"))) for m in got]
    first, second = blocks[0], blocks[1]
    assert kinds == ([("newBlock", first.height)] + [("newTx", first.height)] * first.tx_count + [("logs", first.height)]
                     + [("newBlock", second.height)] + [("newTx", second.height)] * second.tx_count
                     + [("logs", second.height)])
    assert got[0]["data"]["log_count"] == 295
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_reorg_retracts_the_removed_blocks_logs_newest_first_then_the_new_branch(start_daemon):
    daemon = await start_daemon()
    hub = daemon.hub
    everything, _ = await logs_client(daemon)
    weth, _ = await logs_client(daemon, {"address": WETH})
    blocks = entries(5)
    for e in blocks:
        hub.publish(e)
    await drain(everything)
    await drain(weth)
    # Blocks 3 and 4 (of 0-4) are replaced by one block carrying block 4's logs and transactions.
    ancestor = blocks[2]
    hub.publishReorg(2, ancestor.ref(), [blocks[3].ref(), blocks[4].ref()])
    raw = copy.deepcopy(mainnet_run()[4])
    raw.update(number=hex(ancestor.height + 1), parentHash=ancestor.hash, hash="0x" + "ab" * 32)
    logs = [dict(log, blockHash=raw["hash"]) for log in node_logs(blocks[4])]
    replacement = Entry.fromNode(raw, logs=logs)
    hub.publish(replacement)
    got = await drain(everything)
    assert got[0]["type"] == "reorg" and got[0]["data"]["depth"] == 2
    assert [(m["data"]["block_hash"], m["data"]["removed"]) for m in got[1:]] == [
        (blocks[4].hash, True), (blocks[3].hash, True), (replacement.hash, False)]
    assert got[1]["data"]["logs"] == [wire_log(log, blocks[4]) for log in node_logs(blocks[4])]
    got = await drain(weth)
    assert got[0]["type"] == "reorg"
    assert [(m["data"]["block_hash"], m["data"]["removed"]) for m in got[1:]] == [
        (blocks[4].hash, True), (blocks[3].hash, True), (replacement.hash, False)]
    assert all(log["address"] == WETH for m in got[1:] for log in m["data"]["logs"])
    await everything.close()
    await weth.close()


@pytest_twisted.ensureDeferred
async def test_resuming_from_an_orphan_retracts_its_logs_before_the_new_branch(start_daemon):
    daemon = await start_daemon()
    hub = daemon.hub
    blocks = entries(5)
    for e in blocks:
        hub.publish(e)
    held = blocks[4]  # the client holds block 4, then goes away; 3-4 are reorged out
    ancestor = blocks[2]
    hub.publishReorg(2, ancestor.ref(), [blocks[3].ref(), held.ref()])
    raw = copy.deepcopy(mainnet_run()[3])
    raw.update(number=hex(ancestor.height + 1), parentHash=ancestor.hash, hash="0x" + "cd" * 32)
    replacement = Entry.fromNode(raw, logs=[dict(log, blockHash=raw["hash"]) for log in node_logs(blocks[3])])
    hub.publish(replacement)
    client = await connect(daemon.url)
    answer = await client.request({"action": "subscribe", "channels": ["logs"], "logs": {"address": USDT},
                                   "since": held.ref()})
    assert answer == {"type": "subscribed", "channels": ["logs"], "logs": {"addresses": 1}, "replayed": 1}
    got = await drain(client)
    assert got[0]["type"] == "reorg"
    assert [(m["data"]["block_hash"], m["data"]["removed"]) for m in got[1:]] == [
        (held.hash, True), (blocks[3].hash, True), (replacement.hash, False)]
    assert all(log["address"] == USDT for m in got[1:] for log in m["data"]["logs"])
    await client.close()


@pytest.mark.parametrize("flt, says", [
    ({"address": "0x1234"}, "address"),
    ({"address": ["0x" + "11" * 20] * 1001}, "at most 1000"),
    ({"topics": [None] * 5}, "at most 4"),
    ({"topics": ["0x" + "11" * 31]}, "topic"),
    ({"topics": [["0x" + "zz" * 32]]}, "topic"),
    ({"topics": "0x" + "11" * 32}, "list"),
    ({"fromBlock": "latest"}, "fromBlock"),
    ("everything", "filter object"),
], ids=["short-address", "1001-addresses", "five-positions", "short-topic", "not-hex", "topics-not-a-list",
        "unknown-key", "not-an-object"])
@pytest_twisted.ensureDeferred
async def test_an_invalid_filter_is_an_invalid_message_and_subscribes_nothing(start_daemon, flt, says):
    daemon = await start_daemon()
    client = await connect(daemon.url)
    answer = await client.request({"action": "subscribe", "channels": ["logs", "newBlocks"], "logs": flt})
    assert answer["type"] == "error" and answer["error"]["code"] == "invalid_message"
    assert says in answer["error"]["message"]
    daemon.hub.publish(entries(1)[0])
    assert await drain(client) == []
    assert daemon.hub.subscriberCount("logs") == 0
    await client.close()


@pytest_twisted.ensureDeferred
async def test_without_logs_a_logs_subscription_is_refused_and_the_rest_applies(start_daemon):
    daemon = await start_daemon(receipts="off")
    client = await connect(daemon.url)
    client.send_json({"action": "subscribe", "channels": ["logs", "newBlocks"]})
    error = await client.next()
    assert error["type"] == "error" and error["error"]["code"] == "logs_unavailable"
    assert await client.next() == {"type": "subscribed", "channels": ["newBlocks"]}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_leaving_forgets_the_indexes(start_daemon):
    daemon = await start_daemon()
    hub = daemon.hub
    clients = [(await logs_client(daemon, flt))[0] for flt in (
        None, {"address": [WETH, USDT]}, {"topics": [TRANSFER]}, {"topics": [None, TRANSFER]})]
    assert len(hub._logs_all) == 1 and set(hub._logs_by_address) == {WETH, USDT}
    assert set(hub._logs_by_topic) == {TRANSFER} and len(hub._logs_scan) == 1
    answer = await clients[1].request({"action": "unsubscribe", "channels": ["logs"]})
    assert answer == {"type": "unsubscribed", "channels": []}
    assert hub._logs_by_address == {}
    for client in clients:
        await client.close()
    assert hub._logs_all == {} and hub._logs_by_topic == {} and hub._logs_scan == {}


@pytest_twisted.ensureDeferred
async def test_input_adds_the_call_data_and_hashes_only_stays_hashes(start_daemon):
    daemon = await start_daemon()
    with_input = await connect(daemon.url)
    answer = await with_input.request({"action": "subscribe", "channels": ["newTxs"], "batch": True, "input": True})
    assert answer == {"type": "subscribed", "channels": ["newTxs"], "batch": True, "input": True}
    hashes = await connect(daemon.url)
    await hashes.request({"action": "subscribe", "channels": ["newTxs"], "hashes_only": True, "input": True})
    block = mainnet_run()[0]
    daemon.hub.publish(Entry.fromNode(block))
    (batch,) = await drain(with_input)
    assert [tx["input"] for tx in batch["data"]["txs"]] == [tx["input"].lower() for tx in block["transactions"]]
    got = await drain(hashes)
    assert set(got[0]["data"]) == {"hash", "block_height", "block_hash", "tx_index"}
    await with_input.close()
    await hashes.close()


def test_the_filter_parser_follows_geth():
    assert LogFilter.parse(None).everything and LogFilter.parse({}).everything
    assert LogFilter.parse({"address": []}).everything  # an empty list: any address
    flt = LogFilter.parse({"topics": [None, [TRANSFER]]})
    assert not flt.matches({"address": WETH, "topics": [TRANSFER]})  # needs at least 2 topics
    assert flt.matches({"address": WETH, "topics": ["0x" + "00" * 32, TRANSFER]})
    assert not LogFilter.parse({"topics": [None]}).matches({"address": WETH, "topics": []})
