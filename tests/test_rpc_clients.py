"""
The Ethereum libraries people use, unchanged, against /v1/rpc on a real anvil:
ethers v6 (WebSocketProvider), viem (webSocket transport) and web3.py
(AsyncWeb3 + WebSocketProvider).  Each runs as its own process
(tests/node/rpc-*.mjs, tests/node/rpc_web3.py) and prints one JSON line per
event it saw.

Everything goes the live path: anvil mines, explorerd's live-tail fetches
each block with its receipts and publishes it; the logs are real events of a
real contract on that anvil.
"""

import importlib.util
import json
import os
import shutil
import signal
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.defer import DeferredQueue

from explorerd.jsonrpc import JSONRPCClient
from tests.anvil import DEV_ACCOUNTS, Anvil
from tests.conftest import eventually
from tests.contracts import Contracts, transfer

NODE_DIR = os.path.join(os.path.dirname(__file__), "node")


def _have(module):
    if module == "web3":
        # Looked up, not imported: importing web3 raises the recursion limit for this
        # whole process, and a test of deeply nested JSON then overflows the C stack.
        return importlib.util.find_spec("web3") is not None
    return shutil.which("node") is not None and os.path.isdir(os.path.join(NODE_DIR, "node_modules", module))


CLIENTS = {
    "ethers": ["node", os.path.join(NODE_DIR, "rpc-ethers.mjs")],
    "viem": ["node", os.path.join(NODE_DIR, "rpc-viem.mjs")],
    "web3py": [sys.executable, os.path.join(NODE_DIR, "rpc_web3.py")],
}
NEEDS = {"ethers": "ethers", "viem": "viem", "web3py": "web3"}

pytestmark = [pytest.mark.needs_node]


def _reactor():
    from twisted.internet import reactor

    return reactor


class ClientProcess(protocol.ProcessProtocol):
    """One library's driver: its JSON lines in a queue, its end as a Deferred."""

    def __init__(self, name, args):
        self.name = name
        self.lines = DeferredQueue()
        self.errors = []
        self.ended = defer.Deferred()
        self._partial = b""
        argv = list(CLIENTS[name]) + [str(a) for a in args]
        argv[0] = shutil.which(argv[0]) or argv[0]
        self.transport = _reactor().spawnProcess(self, argv[0], argv, env=dict(os.environ), path=NODE_DIR)

    def outReceived(self, data):
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if line.strip():
                try:
                    self.lines.put(json.loads(line))
                except ValueError:
                    self.errors.append(line.decode("utf-8", "replace"))

    def errReceived(self, data):
        self.errors.append(data.decode("utf-8", "replace"))

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)

    async def next(self, timeout=20.0):
        d = self.lines.get()
        d.addTimeout(timeout, _reactor())
        try:
            return await d
        except defer.TimeoutError:
            raise AssertionError(f"{self.name} said nothing for {timeout}s; stderr: {''.join(self.errors)[-2000:]}")

    async def until(self, event):
        got = []
        while True:
            line = await self.next()
            if line["event"] == "error":
                raise AssertionError(f"{self.name}: {line['message']}")
            if line["event"] == event:
                return got
            got.append(line)

    async def finish(self, timeout=20.0):
        d = self.ended
        d.addTimeout(timeout, _reactor())
        try:
            return await d
        except defer.TimeoutError:
            self.transport.signalProcess(signal.SIGKILL)
            raise AssertionError(f"{self.name} did not exit; stderr: {''.join(self.errors)[-2000:]}")


@pytest_twisted.async_yield_fixture
async def chain(no_leaks):
    """A fresh anvil that mines only on request, and a JSON-RPC client of it."""
    reactor = _reactor()
    node = await Anvil(reactor, no_mining=True).start()
    rpc = JSONRPCClient(reactor, node.url, timeout=5.0)
    yield node, rpc
    await rpc.close()
    await node.stop()


def clients():
    return [pytest.param(name, marks=pytest.mark.skipif(not _have(NEEDS[name]), reason=f"{NEEDS[name]} not installed"))
            for name in CLIENTS]


@pytest.mark.parametrize("name", clients())
@pytest_twisted.ensureDeferred
async def test_every_mined_block_reaches_the_library_in_order(start_daemon, chain, name):
    node, rpc = chain
    daemon = await start_daemon(with_tail=True, rpc_url=node.url)
    tail = daemon.service.tail
    await tail.whenIdle()
    subscriptions = daemon.service.rpcService.subscriptions
    client = ClientProcess(name, [f"ws://127.0.0.1:{daemon.port}/v1/rpc", "blocks", 7])
    first = await client.next()
    assert first == {"event": "chainId", "chainId": node.chain_id}
    await eventually(lambda: subscriptions.count("newHeads") == 1, timeout=20, what=f"{name} to subscribe")
    # Mined one at a time, then three between two polls: explorerd sends each of them.
    for batch in (1, 1, 1, 1, 3):
        for _ in range(batch):
            await rpc.call("evm_mine", [])
        assert await tail.poll()
    got = [line for line in await client.until("done") if line["event"] == "block"]
    head = await rpc.blockNumber()
    assert [line["number"] for line in got] == list(range(head - 6, head + 1))
    if "hash" in got[0]:
        blocks = [await rpc.getBlockByNumber(n, False) for n in range(head - 6, head + 1)]
        assert [line["hash"] for line in got] == [b["hash"] for b in blocks]
    assert await client.finish() == 0
    await eventually(lambda: subscriptions.count("newHeads") == 0, what="the subscription to go")


@pytest.mark.parametrize("name", clients())
@pytest_twisted.ensureDeferred
async def test_contract_events_reach_the_library_as_the_node_logged_them(start_daemon, chain, name):
    node, rpc = chain
    daemon = await start_daemon(with_tail=True, rpc_url=node.url)
    tail = daemon.service.tail
    await tail.whenIdle()
    contracts = await Contracts.deploy(rpc)
    assert await tail.poll()
    published = await rpc.blockNumber()
    subscriptions = daemon.service.rpcService.subscriptions
    client = ClientProcess(name, [f"ws://127.0.0.1:{daemon.port}/v1/rpc", "logs", 3, contracts.emitter])
    assert (await client.next())["event"] == "chainId"
    if name == "ethers":  # getBalance and call, forwarded to the node
        reads = await client.next()
        balance = await rpc.call("eth_getBalance", [DEV_ACCOUNTS[0], "latest"])
        assert reads == {"event": "reads", "balance": str(int(balance, 16)), "call": "0x"}
    await eventually(lambda: subscriptions.count("logs") == 1, timeout=20, what=f"{name} to subscribe")
    alice, bob = DEV_ACCOUNTS
    # Two transfers in one block, one more in the next, and a call that reverts (no logs).
    hashes = [await contracts.emit([transfer(alice, bob, 5), transfer(bob, alice, 7)])]
    await contracts.revert([transfer(alice, bob, 1)])
    await contracts.mine()
    assert await tail.poll()
    hashes.append(await contracts.emit([transfer(alice, bob, 11)]))
    await contracts.mine()
    assert await tail.poll()
    got = [line for line in await client.until("done") if line["event"] == "log"]
    logs = await rpc.call("eth_getLogs", [{"fromBlock": hex(published + 1), "toBlock": "latest",
                                           "address": contracts.emitter}])
    assert len(logs) == 3
    assert [line["transactionHash"] for line in got] == [log["transactionHash"] for log in logs]
    assert [line["blockNumber"] for line in got] == [int(log["blockNumber"], 16) for log in logs]
    assert [line["logIndex"] for line in got] == [int(log["logIndex"], 16) for log in logs]
    if "value" in got[0]:  # the library decoded the event with its ABI
        assert [(line["from"], line["to"], line["value"]) for line in got] == [
            (alice, bob, "5"), (bob, alice, "7"), (alice, bob, "11")]
    else:
        assert [(line["topics"], line["data"]) for line in got] == [(log["topics"], log["data"]) for log in logs]
    assert await client.finish() == 0


def readme_examples():
    """The README's ethers, viem and web3.py examples, exactly as written there."""
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    section = readme[readme.index("## Ethereum JSON-RPC (`/v1/rpc`)"):]
    section = section[:section.index("\n## ")]
    blocks = section.split("```")[1::2]
    examples = {}
    for block in blocks:
        language, code = block.split("\n", 1)
        name = "web3py" if language == "python" else code.split(":", 1)[0].strip("/ ").split()[0]
        examples[name] = (language, code)
    return examples


@pytest.mark.parametrize("name", clients())
@pytest_twisted.ensureDeferred
async def test_the_readme_examples_work_as_written(start_daemon, chain, name, tmp_path):
    node, rpc = chain
    language, code = readme_examples()[{"ethers": "ethers", "viem": "viem", "web3py": "web3py"}[name]]
    daemon = await start_daemon(with_tail=True, rpc_url=node.url)
    tail = daemon.service.tail
    await tail.whenIdle()
    code = code.replace("ws://127.0.0.1:8080/v1/rpc", f"ws://127.0.0.1:{daemon.port}/v1/rpc")
    if language == "python":
        path = tmp_path / "blocks.py"
        argv = [sys.executable, "-u", str(path)]
    else:
        path = os.path.join(NODE_DIR, f".readme-{name}.mjs")  # beside node_modules, to import from it
        argv = [shutil.which("node"), path]
    with open(path, "w", encoding="utf-8") as f:
        f.write(code)
    lines = DeferredQueue()
    ended = defer.Deferred()

    class Output(protocol.ProcessProtocol):
        partial = b""

        def outReceived(self, data):
            *done, self.partial = (self.partial + data).split(b"\n")
            for line in done:
                lines.put(line.decode())

        def processEnded(self, reason):
            ended.callback(None)

    process = _reactor().spawnProcess(Output(), argv[0], argv, env=dict(os.environ), path=NODE_DIR)
    try:
        async def line():
            d = lines.get()
            d.addTimeout(20, _reactor())
            return await d

        assert (await line()).split()[1] in (str(node.chain_id), f"{node.chain_id}n")
        subscriptions = daemon.service.rpcService.subscriptions
        await eventually(lambda: subscriptions.count("newHeads") == 1, timeout=20, what="the example to subscribe")
        for _ in range(3):
            await rpc.call("evm_mine", [])
            assert await tail.poll()
        head = await rpc.blockNumber()
        got = [(await line()).split()[:2] for _ in range(3)]
        assert [int(number.rstrip("n")) for _, number in got] == [head - 2, head - 1, head]
    finally:
        process.signalProcess(signal.SIGTERM)
        await ended
        if language != "python":
            os.unlink(path)


@pytest.mark.parametrize("name", clients())
@pytest_twisted.ensureDeferred
async def test_after_a_reorg_the_library_sees_the_removed_logs_then_the_new_ones(start_daemon, chain, name):
    node, rpc = chain
    a, b, c = ("0x" + ch * 40 for ch in "abc")
    daemon = await start_daemon(with_tail=True, rpc_url=node.url)
    tail = daemon.service.tail
    await tail.whenIdle()
    contracts = await Contracts.deploy(rpc)
    assert await tail.poll()
    subscriptions = daemon.service.rpcService.subscriptions
    # ethers hands its contract listeners no removed logs (it drops them itself): it sees 3.
    expected = 3 if name == "ethers" else 5
    client = ClientProcess(name, [f"ws://127.0.0.1:{daemon.port}/v1/rpc", "logs", expected, contracts.emitter])
    assert (await client.next())["event"] == "chainId"
    if name == "ethers":
        assert (await client.next())["event"] == "reads"
    await eventually(lambda: subscriptions.count("logs") == 1, timeout=20, what=f"{name} to subscribe")
    old = []
    for log in (transfer(a, b, 1), transfer(b, c, 2)):
        old.append(await contracts.emit([log]))
        await contracts.mine()
        assert await tail.poll()
    await contracts.reorg(2, [(contracts.emitTx([transfer(a, c, 3)]), 0)])
    assert await tail.poll()
    got = [line for line in await client.until("done") if line["event"] == "log"]
    head = await rpc.blockNumber()
    (new,) = await rpc.call("eth_getLogs", [{"fromBlock": hex(head - 1), "toBlock": hex(head)}])
    want = [(old[0], False), (old[1], False), (old[0], True), (old[1], True), (new["transactionHash"], False)]
    if name == "ethers":
        want = [w for w in want if not w[1]]
    assert [(line["transactionHash"], line["removed"]) for line in got] == want
    assert await client.finish() == 0


@pytest.mark.parametrize("name", [p for p in clients() if p.values[0] == "ethers"])
@pytest_twisted.ensureDeferred
async def test_an_http_provider_works_through_post(start_daemon, chain, name):
    node, rpc = chain
    daemon = await start_daemon(with_tail=True, rpc_url=node.url)
    tail = daemon.service.tail
    await tail.whenIdle()
    contracts = await Contracts.deploy(rpc)
    assert await tail.poll()
    client = ClientProcess(name, [f"http://127.0.0.1:{daemon.port}/v1/rpc", "http", 0, contracts.emitter])
    assert await client.next() == {"event": "chainId", "chainId": node.chain_id}
    reads = await client.next()
    head = await rpc.getBlockByNumber("latest", False)
    balance = await rpc.call("eth_getBalance", [DEV_ACCOUNTS[0], "latest"])
    assert reads == {"event": "reads", "number": int(head["number"], 16), "balance": str(int(balance, 16)),
                     "call": "0x", "hash": head["hash"]}
    assert await client.until("done") == []
    assert await client.finish() == 0


@pytest.mark.parametrize("name", clients())
@pytest_twisted.ensureDeferred
async def test_an_edge_without_a_node_serves_the_library_its_blocks(start_daemon, name):
    from explorerd.history import Entry
    from tests.chaindata import mainnet_run

    daemon = await start_daemon(source="wamp", wamp_router="ws://127.0.0.1:9/ws", chain_id=1)
    subscriptions = daemon.service.rpcService.subscriptions
    client = ClientProcess(name, [f"ws://127.0.0.1:{daemon.port}/v1/rpc", "blocks", 3])
    assert await client.next() == {"event": "chainId", "chainId": 1}
    await eventually(lambda: subscriptions.count("newHeads") == 1, timeout=20, what=f"{name} to subscribe")
    blocks = mainnet_run()[:3]
    for block in blocks:  # what an edge's router brings: explorerd's wire shape, no node header
        node_entry = Entry.fromNode(block)
        daemon.hub.publish(Entry.fromWire(node_entry.data, node_entry.txs_data))
    got = [line for line in await client.until("done") if line["event"] == "block"]
    assert [line["number"] for line in got] == [int(b["number"], 16) for b in blocks]
    assert await client.finish() == 0
