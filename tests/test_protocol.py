"""The /v1/stream wire protocol, message by message, with a real Autobahn client."""

import copy

import pytest
import pytest_twisted

from explorerd.events import InvalidBlock
from explorerd.history import Entry
from tests.chaindata import mainnet_run
from tests.clients import connect


async def subscribed_client(daemon, channels):
    client = await connect(daemon.url)
    answer = await client.request({"action": "subscribe", "channels": channels})
    assert answer == {"type": "subscribed", "channels": sorted(channels)}
    return client


@pytest_twisted.ensureDeferred
async def test_subscribe_and_unsubscribe_answer_with_the_channels_after_the_change(start_daemon):
    daemon = await start_daemon()
    client = await connect(daemon.url)
    assert await client.request({"action": "subscribe", "channels": ["newBlocks"]}) == \
        {"type": "subscribed", "channels": ["newBlocks"]}
    assert await client.request({"action": "subscribe", "channels": ["newTxs", "newBlocks"]}) == \
        {"type": "subscribed", "channels": ["newBlocks", "newTxs"]}
    assert await client.request({"action": "unsubscribe", "channels": ["newBlocks"]}) == \
        {"type": "unsubscribed", "channels": ["newTxs"]}
    assert await client.request({"action": "unsubscribe", "channels": ["newTxs", "newTxs"]}) == \
        {"type": "unsubscribed", "channels": []}
    assert daemon.hub.subscriberCount("newBlocks") == daemon.hub.subscriberCount("newTxs") == 0
    await client.close()


@pytest_twisted.ensureDeferred
async def test_ping_action_gets_pong(start_daemon):
    daemon = await start_daemon()
    client = await connect(daemon.url)
    assert await client.request({"action": "ping"}) == {"type": "pong"}
    await client.close()


BAD_MESSAGES = [
    ("not json at all", "invalid_json"),
    ('{"action": "subscribe", ', "invalid_json"),
    ("[1, 2, 3]", "invalid_message"),
    ('"subscribe"', "invalid_message"),
    ("42", "invalid_message"),
    ("null", "invalid_message"),
    ("{}", "invalid_message"),
    ('{"action": 7}', "invalid_message"),
    ('{"action": "dance"}', "unknown_action"),
    ('{"action": "subscribe"}', "invalid_message"),
    ('{"action": "subscribe", "channels": "newBlocks"}', "invalid_message"),
    ('{"action": "subscribe", "channels": []}', "invalid_message"),
    ('{"action": "subscribe", "channels": ["newFoo"]}', "unknown_channel"),
    ('{"action": "subscribe", "channels": [1, null, {}]}', "unknown_channel"),
    ('{"action": "unsubscribe", "channels": {"a": 1}}', "invalid_message"),
    ("[" * 3_000 + "]" * 3_000, "invalid_json"),  # deeper than the parser goes
]


@pytest_twisted.ensureDeferred
async def test_bad_messages_get_an_error_frame_and_keep_the_connection(start_daemon):
    daemon = await start_daemon()
    client = await connect(daemon.url)
    for text, code in BAD_MESSAGES:
        client.sendMessage(text.encode("utf-8"))
        answer = await client.next()
        assert answer["type"] == "error", text
        assert answer["error"]["code"] == code, (text[:80], answer)
        assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]
    client.sendMessage(b'{"action": "ping"}', isBinary=True)
    answer = await client.next()
    assert answer["error"]["code"] == "binary_not_supported"
    # Still connected and served after all of that.
    assert await client.request({"action": "ping"}) == {"type": "pong"}
    assert daemon.hub.clientCount == 1
    await client.close()


@pytest_twisted.ensureDeferred
async def test_valid_channels_beside_an_unknown_one_are_applied(start_daemon):
    daemon = await start_daemon()
    client = await connect(daemon.url)
    client.send_json({"action": "subscribe", "channels": ["newBlocks", "bogus"]})
    error = await client.next()
    assert error["type"] == "error" and error["error"]["code"] == "unknown_channel"
    assert "bogus" in error["error"]["message"]
    assert await client.next() == {"type": "subscribed", "channels": ["newBlocks"]}
    daemon.hub.publish(Entry.fromNode(mainnet_run()[0]))
    assert (await client.next())["type"] == "newBlock"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_huge_list_of_unknown_channels_gets_a_short_error(start_daemon):
    daemon = await start_daemon()
    client = await connect(daemon.url)
    # ~300 KB: within what a fresh connection may send (tests/test_parsecost.py)
    answer = await client.request({"action": "subscribe", "channels": ["x" * 200] * 1500})
    assert answer["error"]["code"] == "unknown_channel"
    assert len(answer["error"]["message"]) < 1000
    await client.close()


@pytest_twisted.ensureDeferred
async def test_block_and_transaction_fields(start_daemon):
    daemon = await start_daemon()
    client = await subscribed_client(daemon, ["newBlocks", "newTxs"])
    block = mainnet_run()[0]
    daemon.hub.publish(Entry.fromNode(block))

    message = await client.next()
    assert message == {"type": "newBlock", "data": {
        "height": 11880804,
        "hash": block["hash"].lower(),
        "parent_hash": block["parentHash"].lower(),
        "tx_count": 209,
        "timestamp": int(block["timestamp"], 16),
        "miner": block["miner"].lower(),
        "gas_used": int(block["gasUsed"], 16),
        "gas_limit": int(block["gasLimit"], 16),
        "base_fee_per_gas": None,  # before London
        "size": int(block["size"], 16),
        "burnt_fees_wei": None,
        "log_count": None,  # published without receipts or logs
    }}
    creations = 0
    for i, tx in enumerate(block["transactions"]):
        message = await client.next()
        assert message["type"] == "newTx"
        data = message["data"]
        assert set(data) == {"hash", "from_addr", "to_addr", "value_wei", "block_height", "block_hash", "tx_index",
                             "nonce", "gas", "type", "gas_price_wei", "max_fee_per_gas_wei",
                             "max_priority_fee_per_gas_wei", "method_id", "input_size", "status", "gas_used",
                             "fee_wei", "contract_address", "log_count"}
        assert (data["nonce"], data["gas"]) == (int(tx["nonce"], 16), int(tx["gas"], 16))
        assert data["type"] == int(tx.get("type", "0x0"), 16)
        assert data["gas_price_wei"] == str(int(tx["gasPrice"], 16))
        assert data["max_fee_per_gas_wei"] is None and data["max_priority_fee_per_gas_wei"] is None
        assert data["input_size"] == (len(tx["input"]) - 2) // 2
        assert data["method_id"] == (tx["input"][:10].lower() if len(tx["input"]) >= 10 else None)
        # No receipt: what only a receipt can say is null.
        assert [data[k] for k in ("status", "gas_used", "fee_wei", "contract_address", "log_count")] == [None] * 5
        assert data["hash"] == tx["hash"].lower()
        assert data["from_addr"] == tx["from"].lower()
        assert data["to_addr"] == (tx["to"].lower() if tx["to"] else None)
        creations += data["to_addr"] is None
        assert data["value_wei"] == str(int(tx["value"], 16))
        assert isinstance(data["value_wei"], str)
        assert data["block_height"] == 11880804 and data["block_hash"] == block["hash"].lower()
        assert data["tx_index"] == i
    assert creations == 1
    await client.close()


@pytest_twisted.ensureDeferred
async def test_wei_beyond_2_to_the_53_is_exact(start_daemon):
    daemon = await start_daemon()
    client = await subscribed_client(daemon, ["newTxs"])
    block = copy.deepcopy(mainnet_run()[1])
    tx = block["transactions"][0]
    tx["value"] = hex(123456789012345678901234567890)
    tx["from"] = tx["from"].upper().replace("0X", "0x")
    daemon.hub.publish(Entry.fromNode(block))
    data = (await client.next())["data"]
    assert data["value_wei"] == "123456789012345678901234567890"
    assert data["from_addr"] == tx["from"].lower()
    await client.close()


@pytest_twisted.ensureDeferred
async def test_each_client_gets_only_its_channels_in_order(start_daemon):
    daemon = await start_daemon()
    blocks_only = await subscribed_client(daemon, ["newBlocks"])
    txs_only = await subscribed_client(daemon, ["newTxs"])
    both = await subscribed_client(daemon, ["newBlocks", "newTxs"])
    nothing = await connect(daemon.url)
    run = mainnet_run()[:4]
    for block in run:
        daemon.hub.publish(Entry.fromNode(block))
    for block in run:
        got = await blocks_only.next()
        assert (got["type"], got["data"]["hash"]) == ("newBlock", block["hash"])
        got = await both.next()
        assert (got["type"], got["data"]["hash"]) == ("newBlock", block["hash"])
        for tx in block["transactions"]:
            for client in (txs_only, both):
                got = await client.next()
                assert (got["type"], got["data"]["hash"]) == ("newTx", tx["hash"])
    # A ping round-trip proves nothing else was queued before the pong.
    for client in (blocks_only, txs_only, both, nothing):
        assert await client.request({"action": "ping"}) == {"type": "pong"}
    assert nothing.received == [{"type": "pong"}]
    for client in (blocks_only, txs_only, both, nothing):
        await client.close()


@pytest_twisted.ensureDeferred
async def test_unsubscribed_channel_stops_arriving(start_daemon):
    daemon = await start_daemon()
    client = await subscribed_client(daemon, ["newBlocks", "newTxs"])
    await client.request({"action": "unsubscribe", "channels": ["newTxs"]})
    block = mainnet_run()[2]
    daemon.hub.publish(Entry.fromNode(block))
    assert (await client.next())["type"] == "newBlock"
    assert await client.request({"action": "ping"}) == {"type": "pong"}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_block_missing_a_field_reaches_nobody(start_daemon):
    daemon = await start_daemon()
    client = await subscribed_client(daemon, ["newBlocks", "newTxs"])
    good = mainnet_run()[3]
    broken = copy.deepcopy(good)
    del broken["miner"]
    with pytest.raises(InvalidBlock, match="miner"):
        daemon.hub.publish(Entry.fromNode(broken))
    broken_txs = copy.deepcopy(good["transactions"][:3])
    broken_txs[2]["value"] = "lots"
    with pytest.raises(InvalidBlock, match="value"):
        daemon.hub.publish(Entry.fromNode(dict(good, transactions=broken_txs)))
    with pytest.raises(InvalidBlock, match="full transactions"):
        daemon.hub.publish(Entry.fromNode(dict(good, transactions=[tx["hash"] for tx in good["transactions"][:2]])))
    assert await client.request({"action": "ping"}) == {"type": "pong"}
    assert client.received[1:] == [{"type": "pong"}]
    await client.close()
