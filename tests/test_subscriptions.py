"""newTxs options: per-block batches, address filters, hashes only; and the one-write publish path."""

import pytest_twisted

from explorerd.history import Entry
from tests.chaindata import mainnet_run
from tests.clients import connect, drain
from tests.metricvalues import sample


THIN_TX = ("hash", "from_addr", "to_addr", "value_wei", "block_height", "block_hash", "tx_index")


def thin(tx_data):
    """The fields of the original wire format (the receipt-era ones are tested in test_receipts.py)."""
    return {k: tx_data[k] for k in THIN_TX}


def tx_view(tx, block):
    return {
        "hash": tx["hash"].lower(), "from_addr": tx["from"].lower(),
        "to_addr": tx["to"].lower() if tx["to"] else None, "value_wei": str(int(tx["value"], 16)),
        "block_height": int(block["number"], 16), "block_hash": block["hash"].lower(),
        "tx_index": int(tx["transactionIndex"], 16),
    }


async def subscriber(daemon, **subscribe):
    client = await connect(daemon.url)
    answer = await client.request({"action": "subscribe", **subscribe})
    assert answer["type"] == "subscribed", answer
    return client, answer


@pytest_twisted.ensureDeferred
async def test_batch_mode_gets_one_frame_per_block(start_daemon):
    daemon = await start_daemon()
    client, answer = await subscriber(daemon, channels=["newTxs"], batch=True)
    assert answer == {"type": "subscribed", "channels": ["newTxs"], "batch": True}
    run = mainnet_run()[:3]
    for block in run:
        daemon.hub.publish(Entry.fromNode(block))
    got = await drain(client)
    assert [m["type"] for m in got] == ["newTxs"] * 3
    for message, block in zip(got, run):
        assert message["data"]["block_height"] == int(block["number"], 16)
        assert message["data"]["block_hash"] == block["hash"]
        assert [thin(tx) for tx in message["data"]["txs"]] == [tx_view(tx, block) for tx in block["transactions"]]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_hashes_only_per_tx_and_in_batches(start_daemon):
    daemon = await start_daemon()
    plain, _ = await subscriber(daemon, channels=["newTxs"], hashes_only=True)
    batched, answer = await subscriber(daemon, channels=["newTxs", "newBlocks"], batch=True, hashes_only=True)
    assert answer["batch"] is True and answer["hashes_only"] is True
    block = mainnet_run()[1]
    daemon.hub.publish(Entry.fromNode(block))
    got = await drain(plain)
    assert [m["data"] for m in got] == [
        {"hash": tx["hash"], "block_height": int(block["number"], 16), "block_hash": block["hash"],
         "tx_index": i} for i, tx in enumerate(block["transactions"])]
    got = await drain(batched)
    assert [m["type"] for m in got] == ["newBlock", "newTxs"]
    assert got[1]["data"] == {"block_height": int(block["number"], 16), "block_hash": block["hash"],
                              "hashes": [tx["hash"] for tx in block["transactions"]]}
    await plain.close()
    await batched.close()


@pytest_twisted.ensureDeferred
async def test_address_filter_delivers_only_matching_transactions(start_daemon):
    daemon = await start_daemon()
    run = mainnet_run()[:4]
    txs = [tx for block in run for tx in block["transactions"]]
    # A busy address (the most frequent sender or recipient) and a rare one, in mixed case.
    counts = {}
    for tx in txs:
        for a in (tx["from"], tx["to"]):
            if a:
                counts[a.lower()] = counts.get(a.lower(), 0) + 1
    busy = max(counts, key=counts.get)
    rare = min(counts, key=counts.get)
    watched = {busy, rare}
    filtered, answer = await subscriber(daemon, channels=["newTxs"],
                                        filter={"addresses": [busy.upper().replace("0X", "0x"), rare]})
    assert answer["filter"] == {"addresses": 2}
    with_blocks, _ = await subscriber(daemon, channels=["newTxs", "newBlocks"], batch=True,
                                      filter={"addresses": [busy]})
    nobody, _ = await subscriber(daemon, channels=["newTxs"],
                                 filter={"addresses": ["0x" + "ab" * 20]})
    for block in run:
        daemon.hub.publish(Entry.fromNode(block))

    expected = [tx_view(tx, block) for block in run for tx in block["transactions"]
                if tx["from"].lower() in watched or (tx["to"] or "").lower() in watched]
    got = await drain(filtered)
    assert [thin(m["data"]) for m in got] == expected and len(expected) >= 2

    got = await drain(with_blocks)
    assert [m["type"] for m in got if m["type"] == "newBlock"] == ["newBlock"] * 4
    batches = [m["data"] for m in got if m["type"] == "newTxs"]
    assert [thin(tx) for b in batches for tx in b["txs"]] == [
        t for t in expected if busy in (t["from_addr"], t["to_addr"])]
    assert await drain(nobody) == []
    for c in (filtered, with_blocks, nobody):
        await c.close()
    assert daemon.hub._by_address == {}


@pytest_twisted.ensureDeferred
async def test_bad_options_are_refused_with_a_reason(start_daemon):
    daemon = await start_daemon()
    client = await connect(daemon.url)
    bad = [
        {"channels": ["newTxs"], "batch": "yes"},
        {"channels": ["newTxs"], "hashes_only": 1},
        {"channels": ["newTxs"], "filter": ["0x" + "00" * 20]},
        {"channels": ["newTxs"], "filter": {"addresses": []}},
        {"channels": ["newTxs"], "filter": {"addresses": ["0x1234"]}},
        {"channels": ["newTxs"], "filter": {"addresses": ["0x" + "zz" * 20]}},
        {"channels": ["newTxs"], "filter": {"addresses": ["0x%040x" % i for i in range(1001)]}},
        {"channels": ["newBlocks"], "batch": True},
    ]
    for message in bad:
        answer = await client.request({"action": "subscribe", **message})
        assert answer["type"] == "error" and answer["error"]["code"] == "invalid_message", (message, answer)
    answer = await client.request({"action": "subscribe", "channels": ["newTxs"],
                                   "filter": {"addresses": ["0x%040x" % i for i in range(1000)]}})
    assert answer["filter"] == {"addresses": 1000}
    answer = await client.request({"action": "unsubscribe", "channels": ["newTxs"], "batch": True})
    assert answer["error"]["code"] == "invalid_message"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_subscribing_again_replaces_the_options(start_daemon):
    daemon = await start_daemon()
    client, _ = await subscriber(daemon, channels=["newTxs"], batch=True,
                                 filter={"addresses": ["0x" + "11" * 20]})
    answer = await client.request({"action": "subscribe", "channels": ["newTxs"]})
    assert answer == {"type": "subscribed", "channels": ["newTxs"]}
    block = mainnet_run()[2]
    daemon.hub.publish(Entry.fromNode(block))
    got = await drain(client)
    assert [m["type"] for m in got] == ["newTx"] * len(block["transactions"])
    assert daemon.hub._by_address == {}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_publish_block_sends_each_client_its_block_then_its_transactions(start_daemon):
    daemon = await start_daemon()
    both, _ = await subscriber(daemon, channels=["newBlocks", "newTxs"])
    blocks_only, _ = await subscriber(daemon, channels=["newBlocks"])
    run = mainnet_run()[:2]
    for block in run:
        daemon.hub.publish(Entry.fromNode(block))
    got = await drain(both)
    expected = []
    for block in run:
        expected.append(("newBlock", block["hash"]))
        expected += [("newTx", tx["hash"]) for tx in block["transactions"]]
    assert [(m["type"], m["data"]["hash"]) for m in got] == expected
    assert [m["data"]["hash"] for m in await drain(blocks_only)] == [b["hash"] for b in run]
    registry = daemon.hub.metrics.registry
    assert sample(registry, "explorer_websocket_messages_sent_total", type="newBlock") == 4
    assert sample(registry, "explorer_websocket_messages_sent_total", type="newTx") == sum(
        len(b["transactions"]) for b in run)
    await both.close()
    await blocks_only.close()


@pytest_twisted.ensureDeferred
async def test_resume_respects_batch_and_filter(start_daemon):
    daemon = await start_daemon()
    run = mainnet_run()[:4]
    for block in run:
        daemon.hub.publish(Entry.fromNode(block))
    since = {"height": int(run[0]["number"], 16), "hash": run[0]["hash"]}
    target = run[2]["transactions"][0]["from"].lower()
    client = await connect(daemon.url)
    client.send_json({"action": "subscribe", "channels": ["newTxs", "newBlocks"], "batch": True,
                      "filter": {"addresses": [target]}, "since": since})
    answer = await client.next()
    assert answer["replayed"] == 3 and answer["batch"] is True
    got = await drain(client)
    assert [m["type"] for m in got if m["type"] == "newBlock"] == ["newBlock"] * 3
    txs = [tx for m in got if m["type"] == "newTxs" for tx in m["data"]["txs"]]
    assert txs and all(target in (tx["from_addr"], tx["to_addr"]) for tx in txs)
    await client.close()
