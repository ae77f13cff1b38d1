"""
/v1/rpc, Ethereum JSON-RPC over WebSocket, spoken raw: every JSON-RPC 2.0 rule,
eth_subscribe newHeads and logs with real mainnet blocks and logs, reorgs with
geth's semantics, resuming with since, and the refused method families (against
a real anvil, which shows no effect of them).
"""

import json

import pytest
import pytest_twisted

from explorerd.history import Entry
from explorerd.rpcsubs import nodeLogs
from tests.anvil import Anvil
from tests.chaindata import mainnet_logs, mainnet_run
from tests.clients import connect

WETH = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"
TRANSFER = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


def _reactor():
    from twisted.internet import reactor

    return reactor


def entries(n=6):
    logs = mainnet_logs()
    return [Entry.fromNode(b, logs=logs.get(b["hash"], [])) for b in mainnet_run()[:n]]


def header_of(block):
    """geth's newHeads header: the node's block minus five fields, values untouched."""
    return {k: v for k, v in block.items()
            if k not in ("transactions", "uncles", "size", "totalDifficulty", "withdrawals")}


def node_log(log, removed=False):
    """One of the node's logs as an eth_subscribe client must get it (hex quantities, lowercase)."""
    return {"address": log["address"].lower(), "topics": [t.lower() for t in log["topics"]],
            "data": log["data"].lower(), "blockNumber": log["blockNumber"],
            "transactionHash": log["transactionHash"].lower(), "transactionIndex": log["transactionIndex"],
            "blockHash": log["blockHash"].lower(), "logIndex": log["logIndex"], "removed": removed}


def rpc_url(daemon):
    return f"ws://127.0.0.1:{daemon.port}/v1/rpc"


async def rpc_client(daemon):
    return await connect(rpc_url(daemon))


async def ask(client, method, params=(), request_id=1):
    """One request; the answer (everything sent before it is kept in C{client.received})."""
    client.send_json({"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)})
    while True:
        message = await client.next()
        if isinstance(message, dict) and "id" in message and message.get("id") == request_id:
            return message


async def notifications_until_answer(client, request_id=999):
    """Every notification sent so far: a request's answer comes after all of them."""
    client.send_json({"jsonrpc": "2.0", "id": request_id, "method": "web3_clientVersion", "params": []})
    got = []
    while True:
        message = await client.next()
        if message.get("id") == request_id:
            return got
        got.append(message)


async def subscribe(client, *params, request_id=1):
    answer = await ask(client, "eth_subscribe", params, request_id)
    assert "result" in answer, answer
    return answer["result"]


# JSON-RPC 2.0 conformance ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ids_are_echoed_as_given_and_a_notification_gets_no_answer(start_daemon):
    daemon = await start_daemon()
    client = await rpc_client(daemon)
    for request_id in (7, "abc", None, 1.5, 0):
        client.send_json({"jsonrpc": "2.0", "id": request_id, "method": "web3_clientVersion"})
        answer = await client.next()
        assert answer == {"jsonrpc": "2.0", "id": request_id, "result": answer["result"]}
        assert answer["result"].startswith("explorerd/")
    client.send_json({"jsonrpc": "2.0", "method": "web3_clientVersion", "params": []})  # a notification
    client.send_json({"jsonrpc": "2.0", "method": "no_such_method", "params": []})  # no answer, not even an error
    client.send_json({"jsonrpc": "2.0", "id": "last", "method": "web3_clientVersion", "params": []})
    assert (await client.next())["id"] == "last"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_binary_frames_are_read_and_answered_in_text(start_daemon):
    daemon = await start_daemon()
    client = await rpc_client(daemon)
    client.sendMessage(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "web3_clientVersion"}).encode(),
                       isBinary=True)
    answer = await client.next()
    assert answer["id"] == 1 and "result" in answer
    await client.close()


@pytest.mark.parametrize("payload, code", [
    (b"{not json", -32700),
    (b'{"jsonrpc":"2.0","id":1,"method":"web3_clientVersion"', -32700),
    (b"\xff\xfe", -32700),  # not UTF-8 (a binary frame)
    (b"[]", -32600),
    (b"42", -32600),
    (b'"eth_chainId"', -32600),
    (b'{"jsonrpc":"2.0","id":1e999,"method":"web3_clientVersion"}', -32600),  # an id of Infinity
    (b'[' * 3000 + b']' * 3000, -32700),  # deeper than the parser goes (100,000 deep is refused unparsed)
    (b'{"jsonrpc":"2.0","id":' + b'9' * 5000 + b',"method":"web3_clientVersion"}', -32700),
])
@pytest_twisted.ensureDeferred
async def test_invalid_json_and_invalid_requests_get_one_error_with_id_null(start_daemon, payload, code):
    daemon = await start_daemon()
    client = await rpc_client(daemon)
    client.sendMessage(payload, isBinary=True)
    answer = await client.next()
    assert answer["jsonrpc"] == "2.0" and answer["id"] is None and answer["error"]["code"] == code
    assert answer["error"]["message"]
    # The connection stays open and useful.
    assert "result" in await ask(client, "web3_clientVersion")
    await client.close()


@pytest.mark.parametrize("request_, request_id", [
    ({"jsonrpc": "1.0", "id": 3, "method": "web3_clientVersion"}, 3),
    ({"id": 3, "method": "web3_clientVersion"}, 3),
    ({"jsonrpc": "2.0", "id": 3, "method": 5}, 3),
    ({"jsonrpc": "2.0", "id": 3, "method": "web3_clientVersion", "params": "x"}, 3),
    ({"jsonrpc": "2.0", "id": {"an": "object"}, "method": "web3_clientVersion"}, None),
    ({"jsonrpc": "2.0", "id": True, "method": "web3_clientVersion"}, None),
])
@pytest_twisted.ensureDeferred
async def test_an_invalid_request_is_32600_naming_what_is_wrong(start_daemon, request_, request_id):
    daemon = await start_daemon()
    client = await rpc_client(daemon)
    client.send_json(request_)
    answer = await client.next()
    assert answer["id"] == request_id and answer["error"]["code"] == -32600, answer
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_batch_is_answered_as_one_array_notifications_left_out(start_daemon):
    daemon = await start_daemon()
    for e in entries(2):
        daemon.hub.publish(e)
    client = await rpc_client(daemon)
    client.send_json([
        {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"},
        {"jsonrpc": "2.0", "method": "eth_blockNumber"},
        {"jsonrpc": "2.0", "id": "two", "method": "nope_nope"},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_blockNumber", "params": ["extra"]},
        1,
    ])
    answer = await client.next()
    assert isinstance(answer, list)
    by_id = {a["id"]: a for a in answer}
    assert len(answer) == 4 and set(by_id) == {1, "two", 3, None}
    assert by_id[1]["result"] == mainnet_run()[1]["number"]
    assert by_id["two"]["error"]["code"] == -32601
    assert by_id[3]["error"]["code"] == -32602
    assert by_id[None]["error"]["code"] == -32600
    # A batch of notifications only: no answer at all.
    client.send_json([{"jsonrpc": "2.0", "method": "eth_blockNumber"}])
    assert (await ask(client, "web3_clientVersion", request_id="after"))["id"] == "after"
    assert client.received[-1]["id"] == "after" and client.received[-2] == answer
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_batch_over_the_cap_is_one_32600(start_daemon):
    daemon = await start_daemon(rpc_batch_max=3)
    client = await rpc_client(daemon)
    client.send_json([{"jsonrpc": "2.0", "id": i, "method": "web3_clientVersion"} for i in range(4)])
    answer = await client.next()
    assert answer["id"] is None and answer["error"]["code"] == -32600 and "at most 3" in answer["error"]["message"]
    client.send_json([{"jsonrpc": "2.0", "id": i, "method": "web3_clientVersion"} for i in range(3)])
    assert len(await client.next()) == 3
    await client.close()


@pytest_twisted.ensureDeferred
async def test_each_request_of_a_batch_counts_against_the_message_budget(start_daemon):
    daemon = await start_daemon(message_rate=1, message_burst=5)
    client = await rpc_client(daemon)
    client.send_json([{"jsonrpc": "2.0", "id": i, "method": "web3_clientVersion"} for i in range(10)])
    code, reason = await client.closed
    assert code == 1008 and "10 in one batch" in reason


@pytest.mark.parametrize("params, says", [
    (["newPendingTransactions"], "no mempool"),
    (["syncing"], "newHeads"),
    (["whatever"], '"logs"'),
    ([], "newHeads"),
    ([5], "newHeads"),
    (["newHeads", {"includeTransactions": True}], "since"),
    (["logs", {"address": "0x1234"}], "address"),
    (["logs", {"fromBlock": "0x1"}], "fromBlock"),
    (["logs", {}, {"since": {"number": 5, "hash": "0x00"}}], "since"),
])
@pytest_twisted.ensureDeferred
async def test_unsupported_subscriptions_and_bad_params_are_32602_saying_what_is_supported(
        start_daemon, params, says):
    daemon = await start_daemon()
    client = await rpc_client(daemon)
    answer = await ask(client, "eth_subscribe", params)
    assert answer["error"]["code"] == -32602 and says in answer["error"]["message"], answer
    assert daemon.service.rpcService.subscriptions.count("newHeads") == 0
    await client.close()


# newHeads ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_new_heads_every_block_in_order_with_the_nodes_header(start_daemon):
    daemon = await start_daemon()
    client = await rpc_client(daemon)
    sub = await subscribe(client, "newHeads")
    assert sub.startswith("0x") and len(sub) == 34
    blocks = mainnet_run()[:6]
    for e in entries(6):
        daemon.hub.publish(e)
    got = await notifications_until_answer(client)
    assert got == [{"jsonrpc": "2.0", "method": "eth_subscription",
                    "params": {"subscription": sub, "result": header_of(b)}} for b in blocks]
    assert (await ask(client, "eth_blockNumber", request_id=5))["result"] == blocks[-1]["number"]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_identical_subscriptions_share_frames_but_ids_stay_unique_per_connection(start_daemon):
    daemon = await start_daemon()
    a, b = await rpc_client(daemon), await rpc_client(daemon)
    first_a, first_b = await subscribe(a, "newHeads"), await subscribe(b, "newHeads")
    second_a = await subscribe(a, "newHeads", request_id=2)
    assert first_a == first_b != second_a
    daemon.hub.publish(entries(1)[0])
    got_a, got_b = await notifications_until_answer(a), await notifications_until_answer(b)
    assert sorted(m["params"]["subscription"] for m in got_a) == sorted([first_a, second_a])
    assert [m["params"]["subscription"] for m in got_b] == [first_b]
    # Unsubscribing one leaves the other; an unknown id is false.
    assert (await ask(a, "eth_unsubscribe", [first_a], 3))["result"] is True
    assert (await ask(a, "eth_unsubscribe", [first_a], 4))["result"] is False
    assert (await subscribe(a, "newHeads", request_id=5)) == first_a  # the free slot again
    assert daemon.service.rpcService.subscriptions.count("newHeads") == 3
    await a.close()
    await b.close()
    assert daemon.service.rpcService.subscriptions.count("newHeads") == 0


@pytest_twisted.ensureDeferred
async def test_a_head_announced_ahead_of_its_block_reaches_each_subscriber_exactly_once(start_daemon):
    """The tail hands the hub a pushed block's header before the block: newHeads gets it then, once."""
    daemon = await start_daemon()
    early, late, again = await rpc_client(daemon), await rpc_client(daemon), await rpc_client(daemon)
    sub_early = await subscribe(early, "newHeads")
    sub_again = await subscribe(again, "newHeads")
    blocks, es = mainnet_run()[:3], entries(3)
    daemon.hub.publish(es[0])
    daemon.hub.announce(header_of(blocks[1]))
    got = await notifications_until_answer(early)
    assert [m["params"]["result"] for m in got] == [header_of(b) for b in blocks[:2]]
    # Subscribed between the head and its block; re-subscribed in between: they get it with the block.
    sub_late = await subscribe(late, "newHeads")
    assert (await ask(again, "eth_unsubscribe", [sub_again], 2))["result"] is True
    sub_again = await subscribe(again, "newHeads", request_id=3)
    daemon.hub.publish(es[1])
    # A head the block at its height then is not (the node switched branches): both, in order.
    other = dict(header_of(blocks[2]), hash="0x" + "ab" * 32)
    daemon.hub.announce(other)
    daemon.hub.publish(es[2])
    heads = {}
    for name, client, sub in (("early", early, sub_early), ("late", late, sub_late), ("again", again, sub_again)):
        got = await notifications_until_answer(client)
        assert all(m["params"]["subscription"] == sub for m in got if m.get("method") == "eth_subscription")
        heads[name] = [m["params"]["result"]["hash"] for m in got if m.get("method") == "eth_subscription"]
    assert heads["early"] == [other["hash"], blocks[2]["hash"]]
    assert heads["late"] == heads["again"] == [blocks[1]["hash"], other["hash"], blocks[2]["hash"]]
    for c in (early, late, again):
        await c.close()


@pytest_twisted.ensureDeferred
async def test_a_new_heads_subscriber_costs_one_shared_frame_per_block(start_daemon):
    daemon = await start_daemon()
    clients = [await rpc_client(daemon) for _ in range(5)]
    for c in clients:
        await subscribe(c, "newHeads")
    written = []
    for c in daemon.hub._clients.values():
        original = c.transport.write
        c.transport.write = lambda data, original=original: (written.append(data), original(data))[1]
    daemon.hub.publish(entries(1)[0])
    assert len(written) == 5 and len({id(w) for w in written}) == 1
    for c in clients:
        await c.close()


# logs --------------------------------------------------------------------------


@pytest.mark.parametrize("flt", [
    {},
    {"address": WETH},
    {"topics": [TRANSFER]},
    {"address": [WETH], "topics": [TRANSFER, None, None]},
    {"topics": [None, None, None, None]},
])
@pytest_twisted.ensureDeferred
async def test_logs_one_notification_per_matching_log_in_the_nodes_format(start_daemon, flt):
    daemon = await start_daemon()
    client = await rpc_client(daemon)
    sub = await subscribe(client, "logs", flt)
    blocks = entries(3)
    for e in blocks:
        daemon.hub.publish(e)
    got = await notifications_until_answer(client)
    want = []
    for e in blocks:
        for log in mainnet_logs().get(e.hash, []):
            if flt.get("address") and log["address"].lower() not in {a.lower() for a in
                                                                        ([flt["address"]] if isinstance(flt["address"], str) else flt["address"])}:
                continue
            topics = flt.get("topics", [])
            if len(log["topics"]) < len(topics) or any(t is not None and log["topics"][i].lower() != t
                                                       for i, t in enumerate(topics)):
                continue
            want.append(node_log(log))
    assert want, "the filter should match something in these blocks"
    assert [m["params"]["result"] for m in got] == want
    assert all(m["params"]["subscription"] == sub and m["method"] == "eth_subscription" for m in got)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_reorg_resends_removed_logs_oldest_first_then_the_new_branch(start_daemon):
    daemon = await start_daemon()
    client = await rpc_client(daemon)
    heads = await subscribe(client, "newHeads", request_id=1)
    logs_sub = await subscribe(client, "logs", {"address": WETH}, request_id=2)
    blocks = entries(6)
    for e in blocks[:5]:
        daemon.hub.publish(e)
    await notifications_until_answer(client)
    # Blocks 3 and 4 are replaced: the new branch is block 3' (the recorded block 5's content re-parented).
    ancestor = blocks[2]
    removed = [b.ref() for b in blocks[3:5]]
    daemon.hub.publishReorg(2, ancestor.ref(), removed)
    raw = dict(mainnet_run()[5], parentHash=ancestor.hash, number=hex(ancestor.height + 1))
    raw_logs = [dict(log, blockNumber=raw["number"]) for log in mainnet_logs().get(raw["hash"], [])]
    replacement = Entry.fromNode(raw, logs=raw_logs)
    daemon.hub.publish(replacement)
    got = await notifications_until_answer(client)
    removed_logs = [json.loads(b) for e in blocks[3:5] for b in nodeLogs(e, removed=True)
                    if json.loads(b)["address"] == WETH]
    new_logs = [node_log(log) for log in raw_logs if log["address"].lower() == WETH]
    assert removed_logs and new_logs
    assert [m["params"]["result"] for m in got if m["params"]["subscription"] == logs_sub] == removed_logs + new_logs
    assert [m["params"]["result"]["hash"] for m in got if m["params"]["subscription"] == heads] == [raw["hash"]]
    # The removed logs came before the new branch's header.
    kinds = [m["params"]["subscription"] for m in got]
    assert kinds.index(heads) > kinds.index(logs_sub)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_since_resumes_new_heads_and_logs_from_the_history(start_daemon):
    daemon = await start_daemon()
    blocks = entries(6)
    for e in blocks:
        daemon.hub.publish(e)
    client = await rpc_client(daemon)
    since = {"since": {"number": hex(blocks[2].height), "hash": blocks[2].hash}}
    heads = await subscribe(client, "newHeads", since, request_id=1)
    logs_sub = await subscribe(client, "logs", {"address": WETH}, since, request_id=2)
    await notifications_until_answer(client)
    got = [m for m in client.received if m.get("method") == "eth_subscription"]
    assert [m["params"]["result"]["number"] for m in got if m["params"]["subscription"] == heads] == \
        [hex(e.height) for e in blocks[3:]]
    assert [m["params"]["result"] for m in got if m["params"]["subscription"] == logs_sub] == \
        [node_log(log) for e in blocks[3:] for log in mainnet_logs()[e.hash] if log["address"].lower() == WETH]
    answer = await ask(client, "eth_subscribe", ["newHeads", {"since": {"number": "0x1", "hash": "0x" + "11" * 32}}], 3)
    assert answer["error"]["code"] == -32602 and "older than the history" in answer["error"]["message"]
    assert answer["error"]["data"]["oldest"] == hex(blocks[0].height)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_without_logs_a_logs_subscription_is_refused(start_daemon):
    daemon = await start_daemon(receipts="off")
    client = await rpc_client(daemon)
    answer = await ask(client, "eth_subscribe", ["logs", {}])
    assert answer["error"]["code"] == -32602 and "EXPLORERD_RECEIPTS=off" in answer["error"]["message"]
    await client.close()


# With a real node ------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def anvil(no_leaks):
    node = await Anvil(_reactor(), no_mining=True, chain_id=31337).start()
    yield node
    await node.stop()


REFUSED = ["evm_mine", "anvil_mine", "anvil_setBalance", "hardhat_mine", "admin_nodeInfo", "debug_traceBlockByNumber",
           "personal_listAccounts", "miner_start", "txpool_content", "eth_sign", "eth_signTransaction",
           "eth_signTypedData_v4", "eth_sendTransaction", "eth_accounts"]


@pytest.mark.needs_node
@pytest_twisted.ensureDeferred
async def test_refused_families_are_32601_and_never_reach_the_node(start_daemon, anvil):
    from explorerd.jsonrpc import JSONRPCClient

    daemon = await start_daemon(rpc_url=anvil.url)
    node = JSONRPCClient(_reactor(), anvil.url, timeout=5.0)
    try:
        before = await node.blockNumber()
        client = await rpc_client(daemon)
        params = {"evm_mine": [], "anvil_mine": ["0x5"], "hardhat_mine": ["0x5"],
                  "eth_sendTransaction": [{"from": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
                                           "to": "0x70997970c51812dc3a010c7d01b50e0d17dc79c8", "value": "0x1"}]}
        for i, method in enumerate(REFUSED):
            answer = await ask(client, method, params.get(method, []), i)
            assert answer["error"]["code"] == -32601, (method, answer)
            assert "not served" in answer["error"]["message"]
        assert await node.blockNumber() == before  # evm_mine, anvil_mine, hardhat_mine: nothing mined
        assert await node.call("eth_getTransactionCount", ["0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", "pending"]) \
            == "0x0"  # and nothing sent
        # What is answered comes from the node.
        assert (await ask(client, "eth_chainId", [], "c"))["result"] == "0x7a69"
        assert (await ask(client, "net_version", [], "n"))["result"] == "31337"
        block = (await ask(client, "eth_getBlockByNumber", ["0x0", False], "b"))["result"]
        assert block == await node.call("eth_getBlockByNumber", ["0x0", False])
        await client.close()
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_a_node_that_fails_is_a_32000_for_that_id_and_the_connection_stays(start_daemon):
    daemon = await start_daemon(rpc_url="http://127.0.0.1:9/", rpc_timeout=2.0)
    client = await rpc_client(daemon)
    answer = await ask(client, "eth_chainId", [], "x")
    assert answer["id"] == "x" and answer["error"]["code"] == -32000 and "eth_chainId" in answer["error"]["message"]
    assert "result" in await ask(client, "web3_clientVersion", [], "y")
    await client.close()


# Forwarding ----------------------------------------------------------------------


async def publish_anvil_blocks(daemon, node, published=-1):
    """Publish anvil's new blocks as the live-tail would; returns the newest published."""
    head = await node.blockNumber()
    for n in range(published + 1, head + 1):
        daemon.hub.publish(Entry.fromNode(await node.getBlockByNumber(n, True)))
    return head


@pytest_twisted.async_yield_fixture
async def node_client(anvil):
    from explorerd.jsonrpc import JSONRPCClient

    client = JSONRPCClient(_reactor(), anvil.url, timeout=5.0)
    yield client
    await client.close()


@pytest.mark.needs_node
@pytest.mark.parametrize("pin", [True, False])
@pytest_twisted.ensureDeferred
async def test_latest_reads_the_block_explorerd_announced(start_daemon, anvil, node_client, pin):
    alice, bob = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
    daemon = await start_daemon(rpc_url=anvil.url, rpc_pin_latest=pin)
    announced = await publish_anvil_blocks(daemon, node_client)
    before = await node_client.call("eth_getBalance", [bob, "latest"])
    # The node moves on; explorerd has not announced that block yet.
    await node_client.call("eth_sendTransaction", [{"from": alice, "to": bob, "value": "0x1000"}])
    await node_client.call("evm_mine", [])
    after = await node_client.call("eth_getBalance", [bob, "latest"])
    assert after != before
    client = await rpc_client(daemon)
    want = before if pin else after
    assert (await ask(client, "eth_getBalance", [bob, "latest"], 1))["result"] == want
    if pin:  # absent is latest too (anvil itself wants the parameter: unpinned, it says so)
        assert (await ask(client, "eth_getBalance", [bob], 2))["result"] == want
    assert (await ask(client, "eth_getTransactionCount", [alice, "latest"], 3))["result"] == ("0x0" if pin else "0x1")
    assert (await ask(client, "eth_getBalance", [bob, "0x1"], 4))["result"] == after  # a number: as asked
    block = (await ask(client, "eth_getBlockByNumber", ["latest", False], 5))["result"]
    assert int(block["number"], 16) == (announced if pin else announced + 1)
    await client.close()


@pytest.mark.needs_node
@pytest_twisted.ensureDeferred
async def test_get_logs_is_forwarded_within_its_range_cap(start_daemon, anvil, node_client):
    daemon = await start_daemon(rpc_url=anvil.url, rpc_getlogs_range=10)
    await node_client.call("anvil_mine", ["0x14"])
    await publish_anvil_blocks(daemon, node_client)
    client = await rpc_client(daemon)
    ok = await ask(client, "eth_getLogs", [{"fromBlock": "0x1", "toBlock": "0xa"}], 1)
    assert ok["result"] == []
    wide = await ask(client, "eth_getLogs", [{"fromBlock": "0x1", "toBlock": "0xb"}], 2)
    assert wide["error"]["code"] == -32602 and "spans 11 blocks; at most 10" in wide["error"]["message"]
    earliest = await ask(client, "eth_getLogs", [{"fromBlock": "earliest"}], 3)  # to latest: 21 blocks
    assert earliest["error"]["code"] == -32602
    recent = await ask(client, "eth_getLogs", [{"fromBlock": "0x12"}], 4)  # 0x12 to the announced 0x14
    assert recent["result"] == []
    # A method that is not in EXPLORERD_RPC_FORWARD is not forwarded.
    assert (await ask(client, "eth_getUncleCountByBlockNumber", ["0x1"], 5))["error"]["code"] == -32601
    await client.close()


class HeldNode:
    """A node that answers only when told: to see how many calls are in flight to it."""

    def __init__(self):
        from twisted.web.resource import Resource

        self.held = []
        node = self

        class Rpc(Resource):
            isLeaf = True

            def render_POST(self, request):
                from twisted.web.server import NOT_DONE_YET

                node.held.append((request, json.loads(request.content.read())))
                return NOT_DONE_YET

        self.resource = Rpc()

    async def start(self):
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.web.server import Site

        self.site = Site(self.resource)
        self.port = await TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1").listen(self.site)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/"
        return self

    def release(self):
        held, self.held = self.held, []
        for request, body in held:
            request.setHeader(b"Content-Type", b"application/json")
            request.write(json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": body["params"][0]}).encode())
            request.finish()
        return len(held)


@pytest_twisted.ensureDeferred
async def test_forwarded_calls_wait_in_order_16_per_connection_and_under_the_shared_limit(start_daemon):
    from tests.conftest import eventually

    node = await HeldNode().start()
    try:
        daemon = await start_daemon(rpc_url=node.url, rpc_forward_concurrency=20, rpc_pin_latest=False)
        upstream = daemon.service.rpcService.upstream
        a, b = await rpc_client(daemon), await rpc_client(daemon)

        def send(client, first, n):
            for i in range(n):
                client.send_json({"jsonrpc": "2.0", "id": first + i, "method": "eth_getCode",
                                  "params": [f"0x{first + i:040x}", "0x1"]})

        send(a, 0, 20)
        await ask(a, "web3_clientVersion", [], "a read")  # all 20 were read
        await eventually(lambda: len(node.held) == 16, what="a's first 16 calls to reach the node")
        assert sorted(int(body["params"][0], 16) for _, body in node.held) == list(range(16))
        send(b, 100, 10)
        await ask(b, "web3_clientVersion", [], "b read")
        await eventually(lambda: len(node.held) == 20, what="b's calls to take the rest of the shared 20")
        assert len(upstream._semaphore.waiting) == 6  # b's other 6 wait for the node
        total = 0
        while total < 30:
            total += node.release()
            if total < 30:
                await eventually(lambda: node.held, what="waiting calls to go out")
        answers_a = [await a.next() for _ in range(20)]
        answers_b = [await b.next() for _ in range(10)]
        assert sorted(m["id"] for m in answers_a) == list(range(20))
        assert sorted(m["id"] for m in answers_b) == list(range(100, 110))
        assert all(m["result"] == f"0x{m['id']:040x}" for m in answers_a + answers_b)
        await a.close()
        await b.close()
    finally:
        await node.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_node_that_times_out_is_a_32000_for_that_id(start_daemon):
    node = await HeldNode().start()
    try:
        daemon = await start_daemon(rpc_url=node.url, rpc_timeout=0.2)
        client = await rpc_client(daemon)
        answer = await ask(client, "eth_gasPrice", [], "slow")
        assert answer["id"] == "slow" and answer["error"]["code"] == -32000
        assert "eth_gasPrice" in answer["error"]["message"]
        assert "result" in await ask(client, "web3_clientVersion", [], "still here")
        await client.close()
        for request, _ in node.held:
            request.transport.abortConnection()
    finally:
        await node.port.stopListening()


# HTTP POST -----------------------------------------------------------------------


async def post(daemon, body):
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(_reactor(), persistent=False)
    http = treq.client.HTTPClient(Agent(_reactor(), pool=pool))
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await http.post(f"http://127.0.0.1:{daemon.port}/v1/rpc", data=data,
                               headers={"Content-Type": "application/json"})
    text = await response.content()
    return response.code, (json.loads(text) if text else None)


@pytest_twisted.ensureDeferred
async def test_http_post_answers_the_same_methods_without_subscriptions(start_daemon):
    daemon = await start_daemon()
    for e in entries(2):
        daemon.hub.publish(e)
    code, answer = await post(daemon, {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"})
    assert code == 200 and answer == {"jsonrpc": "2.0", "id": 1, "result": mainnet_run()[1]["number"]}
    code, answer = await post(daemon, [{"jsonrpc": "2.0", "id": "a", "method": "eth_subscribe", "params": ["newHeads"]},
                                       {"jsonrpc": "2.0", "id": "b", "method": "evm_mine"}])
    assert {m["id"]: m["error"]["code"] for m in answer} == {"a": -32601, "b": -32601}
    assert "WebSocket" in answer[0]["error"]["message"]
    code, answer = await post(daemon, b"{nope")
    assert code == 200 and answer["error"]["code"] == -32700 and answer["id"] is None
    code, answer = await post(daemon, {"jsonrpc": "2.0", "method": "eth_blockNumber"})
    assert code == 204 and answer is None


@pytest.mark.needs_node
@pytest_twisted.ensureDeferred
async def test_after_anvil_reorg_new_heads_has_the_new_branch_from_the_fork_point_up(start_daemon, anvil, node_client):
    daemon = await start_daemon(with_tail=True, rpc_url=anvil.url)
    tail = daemon.service.tail
    await tail.whenIdle()
    client = await rpc_client(daemon)
    sub = await subscribe(client, "newHeads")
    for _ in range(5):
        await node_client.call("evm_mine", [])
    assert await tail.poll()
    old = [m["params"]["result"] for m in await notifications_until_answer(client, "a")]
    head = await node_client.blockNumber()
    assert [int(h["number"], 16) for h in old] == list(range(head - 4, head + 1))
    await node_client.call("anvil_reorg", [3, []])  # the last three blocks replaced, same height
    await tail.poll()
    got = await notifications_until_answer(client, "b")
    new = [m["params"]["result"] for m in got if m["params"]["subscription"] == sub]
    assert [int(h["number"], 16) for h in new] == [head - 2, head - 1, head]
    assert new[0]["parentHash"] == old[1]["hash"]  # from the fork point
    assert all(b["parentHash"] == a["hash"] for a, b in zip(new, new[1:]))
    assert {h["hash"] for h in new}.isdisjoint(h["hash"] for h in old)
    assert new == [header_of(await node_client.getBlockByNumber(n, False)) for n in range(head - 2, head + 1)]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_calls_still_waiting_when_their_connection_closes_never_reach_the_node(start_daemon):
    from tests.conftest import eventually

    node = await HeldNode().start()
    try:
        daemon = await start_daemon(rpc_url=node.url, rpc_pin_latest=False, rpc_forward_concurrency=32)
        client = await rpc_client(daemon)
        for i in range(20):
            client.send_json({"jsonrpc": "2.0", "id": i, "method": "eth_getCode", "params": [f"0x{i:040x}", "0x1"]})
        await eventually(lambda: len(node.held) == 16, what="16 calls to reach the node")
        await client.close()
        assert node.release() == 16
        other = await rpc_client(daemon)  # a round trip: the released answers were taken care of
        assert "result" in await ask(other, "web3_clientVersion")
        assert node.held == []
        await other.close()
    finally:
        await node.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_metrics_count_subscriptions_by_kind_and_requests_by_method_and_outcome(start_daemon):
    from tests.metricvalues import sample as metric_value

    daemon = await start_daemon()
    registry = daemon.service.metrics.registry
    client = await rpc_client(daemon)
    await subscribe(client, "newHeads", request_id=1)
    await subscribe(client, "logs", {"address": WETH}, request_id=2)
    await subscribe(client, "logs", {}, request_id=3)
    await ask(client, "evm_mine", [], 4)
    await ask(client, "eth_subscribe", ["syncing"], 5)
    assert metric_value(registry, "explorer_rpc_subscriptions", kind="newHeads") == 1
    assert metric_value(registry, "explorer_rpc_subscriptions", kind="logs") == 2
    assert metric_value(registry, "explorer_rpc_requests_total", method="eth_subscribe", outcome="ok") == 3
    assert metric_value(registry, "explorer_rpc_requests_total", method="eth_subscribe", outcome="error") == 1
    assert metric_value(registry, "explorer_rpc_requests_total", method="other", outcome="error") == 1
    daemon.hub.publish(entries(1)[0])
    await notifications_until_answer(client)
    assert metric_value(registry, "explorer_websocket_messages_sent_total", type="rpc_newHeads") == 1
    await client.close()
    assert metric_value(registry, "explorer_rpc_subscriptions", kind="logs") == 0


@pytest_twisted.ensureDeferred
async def test_an_edges_blocks_have_a_header_made_of_what_explorerd_publishes(start_daemon):
    daemon = await start_daemon()
    client = await rpc_client(daemon)
    sub = await subscribe(client, "newHeads")
    node_entry = entries(1)[0]
    daemon.hub.publish(Entry.fromWire(node_entry.data, node_entry.txs_data, node_entry.logs))
    (got,) = await notifications_until_answer(client)
    header = header_of(mainnet_run()[0])
    assert got["params"]["subscription"] == sub
    assert got["params"]["result"] == {k: header[k] for k in ("number", "hash", "parentHash", "timestamp", "miner",
                                                              "gasUsed", "gasLimit", "baseFeePerGas") if k in header}
    await client.close()


def chained_entries(n, first=None):
    """C{n} blocks that link, made from a recorded mainnet block without its transactions."""
    import hashlib

    base = dict(mainnet_run()[0], transactions=[])
    parent = base["parentHash"] if first is None else first.hash
    height = int(base["number"], 16) if first is None else first.height + 1
    made = []
    for i in range(n):
        block_hash = "0x" + hashlib.sha256(f"{height + i}".encode()).hexdigest()
        made.append(Entry.fromNode(dict(base, number=hex(height + i), hash=block_hash, parentHash=parent)))
        parent = block_hash
    return made


@pytest_twisted.ensureDeferred
async def test_a_subscriber_closed_as_too_slow_is_told_the_last_block_it_was_sent(start_daemon):
    import socket

    daemon = await start_daemon(send_queue=8)
    hub = daemon.hub
    reader, slow = await rpc_client(daemon), await rpc_client(daemon)
    await subscribe(reader, "newHeads")
    sub = await subscribe(slow, "newHeads")
    local = slow.transport.getHost().port
    (server_side,) = [c for c in hub._clients.values() if c.transport.getPeer().port == local]
    server_side.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    slow.transport.pauseProducing()  # stops reading
    blocks = chained_entries(2000)
    for i, entry in enumerate(blocks):
        hub.publish(entry)
        await notifications_until_answer(reader, f"r{i}")  # the others get every block meanwhile
        if server_side.hub is None:
            break
    else:
        raise AssertionError("the slow subscriber was never closed")
    slow.transport.resumeProducing()
    code, reason = await slow.closed
    assert code == 1008 and reason.startswith("too slow")
    assert "last block sent" in reason, reason
    number, block_hash = reason.split("last block sent ")[1].split()
    got = [m["params"]["result"] for m in slow.received if m.get("method") == "eth_subscription"]
    assert all(m["params"]["subscription"] == sub for m in slow.received if m.get("method") == "eth_subscription")
    assert got, "it had read nothing at all"
    assert (got[-1]["number"], got[-1]["hash"]) == (number, block_hash)
    assert [h["number"] for h in got] == [hex(e.height) for e in blocks[:len(got)]]
    await reader.close()


@pytest.mark.needs_node
@pytest_twisted.ensureDeferred
async def test_after_anvil_reorg_removed_logs_come_first_oldest_first_then_the_new_branch(
        start_daemon, anvil, node_client):
    from tests.contracts import Contracts, transfer

    a, b, c = ("0x" + ch * 40 for ch in "abc")
    daemon = await start_daemon(with_tail=True, rpc_url=anvil.url)
    tail = daemon.service.tail
    await tail.whenIdle()
    contracts = await Contracts.deploy(node_client)
    assert await tail.poll()
    client = await rpc_client(daemon)
    heads = await subscribe(client, "newHeads", request_id=1)
    logs_sub = await subscribe(client, "logs", {"address": contracts.emitter}, request_id=2)
    for log in (transfer(a, b, 1), transfer(b, c, 2)):
        await contracts.emit([log])
        await contracts.mine()
        assert await tail.poll()
    before = await notifications_until_answer(client, "before")
    old_logs = [m["params"]["result"] for m in before if m["params"]["subscription"] == logs_sub]
    assert len(old_logs) == 2
    await contracts.reorg(2, [(contracts.emitTx([transfer(a, c, 3)]), 0)])
    assert await tail.poll()
    got = [(m["params"]["subscription"], m["params"]["result"]) for m in await notifications_until_answer(client, "after")]
    head = await node_client.blockNumber()
    new_logs = await node_client.call("eth_getLogs", [{"fromBlock": hex(head - 1), "toBlock": hex(head)}])
    assert got == [
        (logs_sub, dict(old_logs[0], removed=True)),
        (logs_sub, dict(old_logs[1], removed=True)),
        (heads, header_of(await node_client.getBlockByNumber(head - 1, False))),
        (logs_sub, node_log(new_logs[0])),
        (heads, header_of(await node_client.getBlockByNumber(head, False))),
    ]
    await client.close()


@pytest.mark.needs_node
@pytest_twisted.ensureDeferred
async def test_an_edge_serves_subscriptions_and_forwards_to_its_own_node_if_it_has_one(start_daemon, anvil):
    edge = await start_daemon(source="wamp", wamp_router="ws://127.0.0.1:9/ws", rpc_url=anvil.url)
    bare = await start_daemon(source="wamp", wamp_router="ws://127.0.0.1:9/ws")
    for daemon, chain_id in ((edge, "0x7a69"), (bare, None)):
        client = await rpc_client(daemon)
        sub = await subscribe(client, "newHeads")
        node_entry = entries(1)[0]
        daemon.hub.publish(Entry.fromWire(node_entry.data, node_entry.txs_data, node_entry.logs))
        (got,) = await notifications_until_answer(client)
        assert got["params"]["subscription"] == sub
        answer = await ask(client, "eth_chainId", [], "c")
        if chain_id is None:
            assert answer["error"]["code"] == -32601 and "EXPLORERD_CHAIN_ID" in answer["error"]["message"]
            answer = await ask(client, "eth_getBalance", ["0x" + "00" * 20, "latest"], "b")
            assert answer["error"]["code"] == -32601
        else:
            assert answer["result"] == chain_id
        await client.close()


def geth_match(log, flt):
    """geth's filter rule, written out plainly."""
    addresses = flt.get("address")
    if addresses is not None:
        addresses = {a.lower() for a in ([addresses] if isinstance(addresses, str) else addresses)}
        if log["address"].lower() not in addresses:
            return False
    topics = flt.get("topics", [])
    if len(log["topics"]) < len(topics):
        return False
    for i, want in enumerate(topics):
        if want is None or want == []:
            continue
        want = {w.lower() for w in ([want] if isinstance(want, str) else want)}
        if log["topics"][i].lower() not in want:
            return False
    return True


@pytest_twisted.ensureDeferred
async def test_many_different_filters_at_once_each_get_exactly_their_logs(start_daemon):
    daemon = await start_daemon()
    usdt = "0xdac17f958d2ee523a2206206994597c13d831ec7"
    filters = [{}, {"address": WETH}, {"address": [WETH, usdt]}, {"topics": [TRANSFER]},
               {"topics": [None, None, None]}, {"topics": [[TRANSFER, "0x" + "00" * 32], None]},
               {"address": usdt, "topics": [TRANSFER]}, {"topics": [None, "0x" + "00" * 32]}]
    clients = []
    for flt in filters:
        client = await rpc_client(daemon)
        clients.append((client, flt, await subscribe(client, "logs", flt)))
    blocks = entries(3)
    for e in blocks:
        daemon.hub.publish(e)
    for client, flt, sub in clients:
        got = await notifications_until_answer(client)
        want = [node_log(log) for e in blocks for log in mainnet_logs().get(e.hash, []) if geth_match(log, flt)]
        assert [m["params"]["result"] for m in got] == want, flt
        assert all(m["params"]["subscription"] == sub for m in got)
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_connection_holds_at_most_64_subscriptions(start_daemon):
    daemon = await start_daemon(message_rate=0)
    client = await rpc_client(daemon)
    client.send_json([{"jsonrpc": "2.0", "id": i, "method": "eth_subscribe", "params": ["newHeads"]}
                      for i in range(65)])
    answers = sorted(await client.next(), key=lambda a: a["id"])
    assert len({a["result"] for a in answers[:64]}) == 64
    error = answers[64]["error"]
    assert error["code"] == -32005 and "at most 64, EXPLORERD_RPC_MAX_SUBSCRIPTIONS" in error["message"]
    # The connection stays; a subscription given up makes room for another.
    assert (await ask(client, "eth_unsubscribe", [answers[0]["result"]], 70))["result"] is True
    assert "result" in await ask(client, "eth_subscribe", ["logs", {}], 71)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_the_subscriptions_a_connection_may_hold_are_a_setting(start_daemon):
    daemon = await start_daemon(rpc_max_subscriptions=2)
    client = await rpc_client(daemon)
    assert "result" in await ask(client, "eth_subscribe", ["newHeads"], 1)
    assert "result" in await ask(client, "eth_subscribe", ["logs", {}], 2)
    answer = await ask(client, "eth_subscribe", ["newHeads"], 3)
    assert answer["error"]["code"] == -32005 and "at most 2" in answer["error"]["message"]
    assert (await ask(client, "web3_clientVersion", [], 4))["result"].startswith("explorerd/"), "the connection stays"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_http_post_checks_the_origin_and_counts_against_a_budget_per_address(start_daemon):
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    daemon = await start_daemon(cors_origins=("https://dapp.example",), message_rate=1, message_burst=3)
    pool = HTTPConnectionPool(_reactor(), persistent=False)
    http = treq.client.HTTPClient(Agent(_reactor(), pool=pool))
    url = f"http://127.0.0.1:{daemon.port}/v1/rpc"
    request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "web3_clientVersion"}).encode()

    response = await http.post(url, data=request, headers={"Origin": "https://evil.example"})
    assert response.code == 403
    await response.content()
    response = await http.request("OPTIONS", url, headers={"Origin": "https://dapp.example",
                                                           "Access-Control-Request-Method": "POST"})
    assert response.code == 204
    assert response.headers.getRawHeaders("Access-Control-Allow-Origin") == ["https://dapp.example"]
    await response.content()
    response = await http.post(url, data=request, headers={"Origin": "https://dapp.example"})
    assert response.code == 200 and response.headers.getRawHeaders("Access-Control-Allow-Origin") == [
        "https://dapp.example"]
    assert "result" in json.loads(await response.content())
    # 1 of the burst of 3 is spent: a batch of 3 is over it.
    batch = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "web3_clientVersion"} for i in range(3)]).encode()
    response = await http.post(url, data=batch)
    assert response.code == 429
    assert json.loads(await response.content())["error"]["code"] == -32005


@pytest.mark.needs_node
@pytest_twisted.ensureDeferred
async def test_blocks_of_the_history_are_answered_from_it_exactly_as_the_node_has_them(start_daemon, anvil,
                                                                                        node_client):
    daemon = await start_daemon(rpc_url=anvil.url)
    alice, bob = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
    for value in ("0x1", "0x2"):
        await node_client.call("eth_sendTransaction", [{"from": alice, "to": bob, "value": value}])
    await node_client.call("evm_mine", [])
    head = await publish_anvil_blocks(daemon, node_client)
    block = await node_client.call("eth_getBlockByNumber", [hex(head), False])
    assert len(block["transactions"]) == 2
    full = await node_client.call("eth_getBlockByNumber", [hex(head), True])
    client = await rpc_client(daemon)
    await anvil.stop()  # from here on only the history can answer
    assert (await ask(client, "eth_getBlockByNumber", [hex(head), False], 1))["result"] == block
    assert (await ask(client, "eth_getBlockByNumber", ["latest", False], 2))["result"] == block
    assert (await ask(client, "eth_getBlockByHash", [block["hash"], False], 3))["result"] == block
    assert (await ask(client, "eth_getBlockByHash", [block["hash"].upper().replace("0X", "0x")], 4))["result"] == block
    # Full transactions, or a block it does not hold, need the node (gone here: an error, not a guess).
    assert (await ask(client, "eth_getBlockByHash", [block["hash"], True], 5))["error"]["code"] == -32000
    assert (await ask(client, "eth_getBlockByNumber", [hex(head + 5), False], 6))["error"]["code"] == -32000
    assert full["hash"] == block["hash"]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_without_a_node_an_edge_answers_its_blocks_as_far_as_it_knows_them(start_daemon):
    daemon = await start_daemon(source="wamp", wamp_router="ws://127.0.0.1:9/ws")
    client = await rpc_client(daemon)
    node_entry = entries(1)[0]
    daemon.hub.publish(Entry.fromWire(node_entry.data, node_entry.txs_data, node_entry.logs))
    assert (await ask(client, "eth_getBlockByNumber", ["0x1", False], 1))["result"] is None
    # An edge's own block: what explorerd publishes of it, in the node's format (viem's watchBlocks asks).
    block = mainnet_run()[0]
    got = (await ask(client, "eth_getBlockByHash", [node_entry.hash, False], 2))["result"]
    assert got == dict({k: block[k] for k in ("number", "hash", "parentHash", "timestamp", "miner", "gasUsed",
                                              "gasLimit", "size") if k in block},
                       transactions=[tx["hash"] for tx in block["transactions"]])
    assert (await ask(client, "eth_getBlockByNumber", [block["number"], False], 3))["result"] == got
    assert (await ask(client, "eth_getBlockByHash", [node_entry.hash, True], 4))["result"] is None
    await client.close()


@pytest_twisted.ensureDeferred
async def test_since_waits_for_the_history_to_be_restored_after_a_restart(start_daemon):
    from twisted.internet.defer import Deferred

    daemon = await start_daemon()
    restored = Deferred()
    daemon.hub.holdResumes(restored)
    blocks = entries(4)
    client = await rpc_client(daemon)
    client.send_json({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                      "params": ["newHeads", {"since": {"number": hex(blocks[1].height), "hash": blocks[1].hash}}]})
    assert (await ask(client, "web3_clientVersion", [], "meanwhile"))["id"] == "meanwhile"
    assert len(client.received) == 1  # nothing for the subscription yet
    for e in blocks:
        daemon.hub.remember(e)  # what the live-tail gives back after a restart
    restored.callback(None)
    answer = await client.next()
    assert answer["id"] == 1
    replayed = [await client.next() for _ in range(2)]
    assert [m["params"]["result"]["number"] for m in replayed] == [hex(e.height) for e in blocks[2:]]
    assert all(m["params"]["subscription"] == answer["result"] for m in replayed)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_since_across_a_reorg_sends_the_removed_logs_then_the_new_branch(start_daemon):
    daemon = await start_daemon()
    blocks = entries(6)
    for e in blocks[:5]:
        daemon.hub.publish(e)
    held = blocks[4]  # the client holds block 4, which the reorg removes with block 3
    ancestor = blocks[2]
    daemon.hub.publishReorg(2, ancestor.ref(), [b.ref() for b in blocks[3:5]])
    raw = dict(mainnet_run()[5], parentHash=ancestor.hash, number=hex(ancestor.height + 1))
    raw_logs = [dict(log, blockNumber=raw["number"]) for log in mainnet_logs().get(raw["hash"], [])]
    daemon.hub.publish(Entry.fromNode(raw, logs=raw_logs))
    client = await rpc_client(daemon)
    sub = await subscribe(client, "logs", {"address": WETH}, {"since": {"number": hex(held.height), "hash": held.hash}})
    await notifications_until_answer(client)
    got = [m["params"]["result"] for m in client.received if m.get("method") == "eth_subscription"]
    removed = [json.loads(b) for e in blocks[3:5] for b in nodeLogs(e, removed=True) if json.loads(b)["address"] == WETH]
    assert got == removed + [node_log(log) for log in raw_logs if log["address"].lower() == WETH]
    assert all(m["params"]["subscription"] == sub for m in client.received if m.get("method") == "eth_subscription")
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_replay_is_paid_from_the_message_budget(start_daemon):
    daemon = await start_daemon(message_rate=1, message_burst=3)
    blocks = entries(6)
    for e in blocks:
        daemon.hub.publish(e)
    client = await rpc_client(daemon)
    since = {"since": {"number": hex(blocks[0].height), "hash": blocks[0].hash}}
    # Every log of five mainnet blocks: well over 3 x 64 KiB.  The first replay on a fresh connection
    # always goes through (it costs the whole burst, no more); a second one a second later cannot.
    request = {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["logs", {}, since]}
    assert "result" in await ask(client, "eth_subscribe", request["params"], 1)
    daemon.clock.advance(1.0)
    client.send_json(dict(request, id=2))
    closed = client.closed
    closed.addTimeout(5, _reactor())
    code, reason = await closed
    assert code == 1008 and "a replay of" in reason, (code, reason)


@pytest.mark.needs_node
@pytest_twisted.ensureDeferred
async def test_a_nodes_own_error_reaches_the_client_as_it_gave_it(start_daemon, anvil, node_client):
    from explorerd.jsonrpc import RPCError
    from tests.contracts import Contracts, transfer

    daemon = await start_daemon(rpc_url=anvil.url)
    contracts = await Contracts.deploy(node_client)
    await publish_anvil_blocks(daemon, node_client)
    call = dict(contracts.revertTx([transfer("0x" + "aa" * 20, "0x" + "bb" * 20, 1)]))
    with pytest.raises(RPCError) as raised:
        await node_client.call("eth_call", [call, "latest"])
    client = await rpc_client(daemon)
    answer = await ask(client, "eth_call", [call, "latest"], "revert")
    error = {"code": raised.value.code, "message": raised.value.message}
    if raised.value.data is not None:
        error["data"] = raised.value.data
    assert answer == {"jsonrpc": "2.0", "id": "revert", "error": error}
    # And a call that works: the node's result.
    ok = dict(contracts.emitTx([]))
    assert (await ask(client, "eth_call", [ok], "ok"))["result"] == await node_client.call("eth_call", [ok, "latest"])
    await client.close()


@pytest_twisted.ensureDeferred
async def test_connections_that_come_and_go_leave_nothing_behind(start_daemon):
    import gc
    import weakref

    from tests.conftest import eventually

    daemon = await start_daemon()
    subscriptions = daemon.service.rpcService.subscriptions
    gone = []
    for i in range(20):
        client = await rpc_client(daemon)
        await subscribe(client, "newHeads", request_id=1)
        await subscribe(client, "logs", {"address": WETH}, request_id=2)
        (server_side,) = daemon.hub._clients.values()
        gone.append((weakref.ref(server_side), weakref.ref(server_side.protocol)))
        del server_side
        if i == 10:
            daemon.hub.publish(entries(1)[0])
        await client.close()
        await eventually(lambda: daemon.hub.clientCount == 0, what="the client to leave")
    gc.collect()
    assert [(c(), p()) for c, p in gone] == [(None, None)] * 20
    assert subscriptions.count("newHeads") == subscriptions.count("logs") == 0
    assert not subscriptions._groups and not subscriptions._logs_by_address


@pytest.mark.parametrize("setting", [137, 0x89])
@pytest_twisted.ensureDeferred
async def test_the_chain_id_setting_answers_without_a_node(start_daemon, setting):
    daemon = await start_daemon(source="wamp", wamp_router="ws://127.0.0.1:9/ws", chain_id=setting)
    client = await rpc_client(daemon)
    assert (await ask(client, "eth_chainId", [], 1))["result"] == "0x89"
    assert (await ask(client, "net_version", [], 2))["result"] == "137"
    await client.close()


def test_the_chain_id_setting_reads_decimal_or_hex():
    from explorerd.config import Config, ConfigError

    assert Config.load({"EXPLORERD_CHAIN_ID": "0x89"}, {}).chain_id == 137
    assert Config.load({}, {"chain-id": "10"}).chain_id == 10
    assert Config.load({}, {}).chain_id == 0
    for bad in ("-1", "0", "mainnet", "0xzz"):
        with pytest.raises(ConfigError) as e:
            Config.load({"EXPLORERD_CHAIN_ID": bad}, {})
        assert "EXPLORERD_CHAIN_ID" in str(e.value)


@pytest_twisted.ensureDeferred
async def test_http_post_behind_a_trusted_proxy_budgets_each_forwarded_address(start_daemon):
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    daemon = await start_daemon(message_rate=1, message_burst=2, trusted_proxies=1)
    pool = HTTPConnectionPool(_reactor(), persistent=False)
    http = treq.client.HTTPClient(Agent(_reactor(), pool=pool))
    url = f"http://127.0.0.1:{daemon.port}/v1/rpc"
    request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "web3_clientVersion"}).encode()

    async def status(address):
        response = await http.post(url, data=request, headers={"X-Forwarded-For": f"203.0.113.9, {address}"})
        await response.content()
        return response.code

    assert [await status("198.51.100.1") for _ in range(3)] == [200, 200, 429]
    assert await status("198.51.100.2") == 200  # another client behind the same proxy


@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_in_an_id_or_a_method_is_echoed_escaped(start_daemon):
    daemon = await start_daemon()
    client = await rpc_client(daemon)
    client.sendMessage(b'{"jsonrpc":"2.0","id":"\\ud800","method":"web3_clientVersion"}')
    answer = await client.next()
    assert answer["id"] == "\ud800" and "result" in answer
    client.sendMessage(b'{"jsonrpc":"2.0","id":2,"method":"x\\udfff"}')
    answer = await client.next()
    assert answer["id"] == 2 and answer["error"]["code"] == -32601
    await client.close()
