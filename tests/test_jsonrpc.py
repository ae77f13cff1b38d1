"""
explorerd.jsonrpc against a real anvil and against small misbehaving
twisted.web servers on 127.0.0.1.

No sleeps: every wait is a Deferred. The autouse ``no_leaks`` fixture fails a
test that leaves a delayed call, a reader/writer or a server connection
behind (pytest-twisted does not check this itself).
"""

import json

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.task import Clock, deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import directlyProvides, implementer, providedBy

from explorerd.jsonrpc import (
    PIECEMEAL_BYTES,
    JSONRPCClient,
    RPCError,
    RPCFailure,
    RPCHTTPError,
    RPCProtocolError,
    RPCTimeout,
    RPCUnavailable,
    decodePiecemeal,
)
from tests.anvil import DEV_ACCOUNTS, Anvil
from tests.serving import TrackingFactory


# Fixtures -------------------------------------------------------------------


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


@pytest_twisted.async_yield_fixture(autouse=True)
async def no_leaks(reactor):
    """Fail the test if it left timers, sockets or pipes behind."""
    calls = set(reactor.getDelayedCalls())
    readers = set(reactor.getReaders())
    writers = set(reactor.getWriters())
    yield
    # One reactor turn: abortConnection() delivers connectionLost via
    # callLater(0); that is a transient, not a leak. pytest-twisted's own
    # callLater(0) that runs the next teardown step is not ours either.
    await deferLater(reactor, 0, lambda: None)
    leftCalls = [
        c
        for c in reactor.getDelayedCalls()
        if c not in calls and getattr(c.func, "__module__", "") != "pytest_twisted"
    ]
    leftReaders = [r for r in reactor.getReaders() if r not in readers]
    leftWriters = [w for w in reactor.getWriters() if w not in writers]
    assert not leftCalls, f"leaked delayed calls: {leftCalls}"
    assert not leftReaders, f"leaked readers: {leftReaders}"
    assert not leftWriters, f"leaked writers: {leftWriters}"


@pytest_twisted.async_yield_fixture
async def node(reactor):
    """A fresh anvil that mines only on request (deterministic heights)."""
    anvil = await Anvil(reactor, no_mining=True).start()
    yield anvil
    await anvil.stop()


@pytest_twisted.async_yield_fixture
async def rpc(reactor, node):
    client = JSONRPCClient(reactor, node.url, timeout=5.0)
    yield client
    await client.close()


class _Handler(Resource):
    """POST -> ``respond(request, parsed_json_or_None)``; keeps requests."""

    isLeaf = True

    def __init__(self, respond):
        super().__init__()
        self.respond = respond
        self.requests = []

    def render_POST(self, request):
        raw = request.content.read()
        self.requests.append(request)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        return self.respond(request, body)


class _Server:
    def __init__(self, port, tracker, handler, scheme):
        self.port = port
        self.tracker = tracker
        self.handler = handler
        host = port.getHost()
        self.url = f"{scheme}://127.0.0.1:{host.port}/"


@pytest_twisted.async_yield_fixture
async def serve(reactor):
    """``await serve(respond)`` starts a loopback HTTP(S) JSON-RPC stub."""
    servers = []

    async def start(respond, tls=None):
        handler = _Handler(respond)
        tracker = TrackingFactory(Site(handler, reactor=reactor))
        if tls is None:
            endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        else:
            endpoint = SSL4ServerEndpoint(reactor, 0, tls.options(), interface="127.0.0.1")
        port = await endpoint.listen(tracker)
        server = _Server(port, tracker, handler, "https" if tls else "http")
        servers.append(server)
        return server

    yield start
    for server in servers:
        idle = server.tracker.whenIdle()
        idle.addTimeout(5, reactor)
        try:
            await idle
        except defer.TimeoutError:
            pytest.fail(f"server connections still open: {server.tracker.protocols}")
        finally:
            await server.port.stopListening()


@pytest_twisted.async_yield_fixture
async def client(reactor, serve):
    """``client(url, **kw)`` makes clients that are closed at teardown."""
    made = []

    def make(url, reactor=reactor, **kw):
        c = JSONRPCClient(reactor, url, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


def _reply(request, obj, code=200):
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(obj).encode()


def _ok(request, body):
    """A well-behaved stub: every request's result is its method name."""
    if isinstance(body, list):
        return _reply(request, [{"jsonrpc": "2.0", "id": b["id"], "result": b["method"]} for b in body])
    return _reply(request, {"jsonrpc": "2.0", "id": body["id"], "result": "0x2a"})


async def _fails(d, exc_type):
    """Await ``d`` and return the exception, which must be ``exc_type``."""
    try:
        result = await d
    except exc_type as e:
        return e
    pytest.fail(f"expected {exc_type.__name__}, got result {result!r}")


# Against a real anvil --------------------------------------------------------


@pytest.mark.needs_node  # anvil from tests/node
@pytest_twisted.ensureDeferred
async def test_block_number_and_chain_id(rpc, node):
    assert await rpc.blockNumber() == 0
    assert await rpc.chainId() == 31337 == node.chain_id
    await rpc.call("evm_mine")
    await rpc.call("evm_mine", [{"timestamp": None, "blocks": 2}])
    assert await rpc.blockNumber() == 3


@pytest.mark.needs_node  # anvil from tests/node
@pytest_twisted.ensureDeferred
async def test_anvil_options(reactor):
    anvil = await Anvil(reactor, chain_id=4242, extra_args=["--accounts", "2"]).start()
    c = JSONRPCClient(reactor, anvil.url, timeout=5.0)
    try:
        assert await c.chainId() == 4242
        assert len(await c.call("eth_accounts")) == 2
    finally:
        await c.close()
        await anvil.stop()
    assert not anvil.running
    await anvil.stop()  # idempotent


@pytest.mark.needs_node  # anvil from tests/node
@pytest_twisted.ensureDeferred
async def test_get_block_after_evm_mine(rpc):
    await rpc.call("evm_mine")
    block = await rpc.getBlockByNumber(1)
    assert int(block["number"], 16) == 1
    assert block["transactions"] == []
    assert await rpc.getBlockByHash(block["hash"]) == block
    assert await rpc.getBlockByNumber("latest") == block
    genesis = await rpc.getBlockByNumber(0)
    assert block["parentHash"] == genesis["hash"]
    assert await rpc.getBlockByNumber(99) is None
    assert await rpc.getBlockByHash("0x" + "ab" * 32) is None


@pytest.mark.needs_node  # anvil from tests/node
@pytest_twisted.ensureDeferred
async def test_get_block_with_transaction(rpc):
    sender, receiver = DEV_ACCOUNTS
    txHash = await rpc.call(
        "eth_sendTransaction", [{"from": sender, "to": receiver, "value": hex(12345)}]
    )
    assert await rpc.getBlockByNumber("latest") == await rpc.getBlockByNumber(0)
    await rpc.call("evm_mine")

    block = await rpc.getBlockByNumber(1, full=True)
    (tx,) = block["transactions"]
    assert tx["hash"] == txHash
    assert tx["from"].lower() == sender
    assert tx["to"].lower() == receiver
    assert int(tx["value"], 16) == 12345
    assert int(tx["blockNumber"], 16) == 1
    assert tx["blockHash"] == block["hash"]

    light = await rpc.getBlockByHash(block["hash"], full=False)
    assert light["transactions"] == [txHash]


@pytest.mark.needs_node  # anvil from tests/node
@pytest_twisted.ensureDeferred
async def test_batch_of_many_blocks(rpc):
    await rpc.call("anvil_mine", [hex(64)])
    assert await rpc.blockNumber() == 64
    blocks = await rpc.getBlocksByNumber(list(range(65)) + [1000], full=True)
    assert blocks[-1] is None
    blocks = blocks[:-1]
    assert [int(b["number"], 16) for b in blocks] == list(range(65))
    for parent, child in zip(blocks, blocks[1:]):
        assert child["parentHash"] == parent["hash"]
    assert await rpc.getBlocksByNumber([]) == []
    mixed = await rpc.batch([("eth_chainId", []), ("eth_blockNumber", ())])
    assert mixed == ["0x7a69", "0x40"]


@pytest.mark.needs_node  # anvil from tests/node
@pytest_twisted.ensureDeferred
async def test_block_receipts_and_logs(rpc):
    sender, receiver = DEV_ACCOUNTS
    txHash = await rpc.call("eth_sendTransaction", [{"from": sender, "to": receiver, "value": hex(1)}])
    await rpc.call("evm_mine")
    block = await rpc.getBlockByNumber(1, full=False)
    (receipt,) = await rpc.getBlockReceipts(block["hash"])
    assert (receipt["transactionHash"], receipt["blockHash"]) == (txHash, block["hash"])
    assert receipt["status"] == "0x1" and receipt["logs"] == []
    assert await rpc.getBlockReceipts("0x" + "ab" * 32) is None
    assert await rpc.getLogs({"blockHash": block["hash"]}) == []
    assert await rpc.getLogs({"fromBlock": "0x0", "toBlock": "latest"}) == []
    e = await _fails(rpc.getLogs({"blockHash": "0x" + "ab" * 32}), RPCError)
    assert e.method == "eth_getLogs"
    with pytest.raises(TypeError):
        rpc.getLogs(block["hash"])
    many = await rpc.batch([("eth_getBlockReceipts", [block["hash"]]), ("eth_getLogs", [{"blockHash": block["hash"]}])])
    assert many == [[receipt], []]


@pytest_twisted.ensureDeferred
async def test_json_rpc_error_names_method(rpc):
    e = await _fails(rpc.call("explorerd_noSuchMethod", []), RPCError)
    assert e.method == "explorerd_noSuchMethod"
    assert e.code == -32601
    assert "explorerd_noSuchMethod" in str(e)
    assert e.index is None

    batch = rpc.batch([("eth_chainId", []), ("explorerd_noSuchMethod", []), ("eth_blockNumber", [])])
    e = await _fails(batch, RPCError)
    assert (e.method, e.code, e.index) == ("explorerd_noSuchMethod", -32601, 1)
    assert isinstance(e, RPCFailure)


# Against misbehaving loopback servers ---------------------------------------


@pytest_twisted.ensureDeferred
async def test_http_500(serve, client):
    server = await serve(lambda request, body: _reply(request, {"oops": 1}, code=500))
    e = await _fails(client(server.url).blockNumber(), RPCHTTPError)
    assert (e.method, e.status) == ("eth_blockNumber", 500)
    assert b"oops" in e.body


def _garbage(request, body):
    return b"<html>this is not JSON</html>"


def _wrong_id(request, body):
    return _reply(request, {"jsonrpc": "2.0", "id": body["id"] + 1, "result": "0x1"})


def _no_result(request, body):
    return _reply(request, {"jsonrpc": "2.0", "id": body["id"]})


def _not_hex(request, body):
    return _reply(request, {"jsonrpc": "2.0", "id": body["id"], "result": 12})


@pytest.mark.parametrize("respond", [_garbage, _wrong_id, _no_result, _not_hex])
@pytest_twisted.ensureDeferred
async def test_protocol_errors(serve, client, respond):
    server = await serve(respond)
    e = await _fails(client(server.url).blockNumber(), RPCProtocolError)
    assert e.method == "eth_blockNumber"


@pytest_twisted.ensureDeferred
async def test_batch_matched_by_id_not_order(serve, client):
    def reversed_ok(request, body):
        items = [{"jsonrpc": "2.0", "id": b["id"], "result": b["params"][0]} for b in body]
        return _reply(request, items[::-1])

    server = await serve(reversed_ok)
    c = client(server.url)
    assert await c.batch([("echo", [n]) for n in range(10)]) == list(range(10))


@pytest_twisted.ensureDeferred
async def test_a_large_batch_answer_is_decoded_piecemeal_with_the_reactor_running_between(
        reactor, serve, client):
    """A catch-up batch of mainnet blocks is tens of MB of JSON: not one json.loads on the reactor."""
    big = {"transactions": ["0x" + "ab" * 32] * 2000, "logsBloom": "0x" + "00" * 256}  # ~140 KB

    def blocks(request, body):
        items = [{"jsonrpc": "2.0", "id": b["id"], "result": dict(big, number=b["params"][0])} for b in body]
        return json.dumps(items, indent=1).encode()  # whitespace everywhere JSON allows it

    server = await serve(blocks)
    answers = await client(server.url).batch([("eth_getBlockByNumber", [hex(n)]) for n in range(60)])
    assert [a["number"] for a in answers] == [hex(n) for n in range(60)]
    assert all(a["transactions"] == big["transactions"] for a in answers)
    body = json.dumps(answers).encode()
    assert len(body) > 4 * PIECEMEAL_BYTES
    # Decoding it does not finish in one reactor turn, and gives what json.loads gives.
    decoding = defer.ensureDeferred(decodePiecemeal(reactor, body))
    assert not decoding.called
    assert await decoding == json.loads(body)


@pytest.mark.parametrize("text", ["[]", " [ ] ", "[1]", "[1, [2, {\"a\": [3]}], \"x\", null]\n",
                                  "\t[\n{\"k\": \"v\"} ,\r\n 2 ]  ", "{\"not\": \"an array\"}", "7"])
@pytest_twisted.ensureDeferred
async def test_piecemeal_decoding_is_json_loads(reactor, text):
    assert await decodePiecemeal(reactor, text.encode()) == json.loads(text)


@pytest.mark.parametrize("text", ["[", "[1,", "[1 2]", "[1]]", "[1] x", "[,1]", "[1,]", "", "\xff"])
@pytest_twisted.ensureDeferred
async def test_piecemeal_decoding_refuses_what_json_loads_refuses(reactor, text):
    with pytest.raises(ValueError):
        json.loads(text.encode("latin-1"))
    with pytest.raises(ValueError):
        await decodePiecemeal(reactor, text.encode("latin-1"))


@pytest_twisted.ensureDeferred
async def test_batch_can_return_the_errors_of_items_in_their_place(serve, client):
    def odd_fails(request, body):
        if not isinstance(body, list):
            return _reply(request, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "no"}})
        return _reply(request, [
            {"jsonrpc": "2.0", "id": b["id"], "result": b["params"][0]} if b["params"][0] % 2 == 0
            else {"jsonrpc": "2.0", "id": b["id"], "error": {"code": 4444, "message": "pruned"}}
            for b in body])

    server = await serve(odd_fails)
    c = client(server.url)
    answers = await c.batch([("eth_getLogs", [n]) for n in range(4)], returnErrors=True)
    assert answers[0::2] == [0, 2]
    assert [(e.method, e.code, e.message, e.index) for e in answers[1::2]] == [
        ("eth_getLogs", 4444, "pruned", 1), ("eth_getLogs", 4444, "pruned", 3)]
    assert all(isinstance(e, RPCError) for e in answers[1::2])
    e = await _fails(c.batch([("eth_getLogs", [n]) for n in range(4)]), RPCError)  # by default, it fails
    assert (e.code, e.index) == (4444, 1)


@pytest_twisted.ensureDeferred
async def test_batch_refused_as_a_whole_fails_even_when_returning_item_errors(serve, client):
    server = await serve(lambda request, body: _reply(
        request, {"jsonrpc": "2.0", "id": None, "error": {"code": -32601, "message": "no batches"}}))
    e = await _fails(client(server.url).batch([("a", []), ("b", [])], returnErrors=True), RPCError)
    assert (e.method, e.code) == ("batch[a,b]", -32601)


@pytest.mark.parametrize("method, result", [
    ("getBlockReceipts", {"not": "a list"}), ("getBlockReceipts", "0x1"), ("getLogs", None), ("getLogs", {}),
])
@pytest_twisted.ensureDeferred
async def test_receipts_and_logs_of_the_wrong_type_are_protocol_errors(serve, client, method, result):
    server = await serve(lambda request, body: _reply(request, {"jsonrpc": "2.0", "id": body["id"], "result": result}))
    c = client(server.url)
    arg = "0x" + "ab" * 32 if method == "getBlockReceipts" else {"blockHash": "0x" + "ab" * 32}
    e = await _fails(getattr(c, method)(arg), RPCProtocolError)
    assert e.method == {"getBlockReceipts": "eth_getBlockReceipts", "getLogs": "eth_getLogs"}[method]


@pytest_twisted.ensureDeferred
async def test_batch_missing_item(serve, client):
    def drop_last(request, body):
        return _reply(request, [{"jsonrpc": "2.0", "id": b["id"], "result": 1} for b in body[:-1]])

    server = await serve(drop_last)
    e = await _fails(client(server.url).batch([("a", []), ("b", [])]), RPCProtocolError)
    assert e.method == "b"


class _TimersOn:
    """
    The reactor, with its timers on C{clock}: a client's deadline is the
    test's to advance, while its connections are real.
    """

    def __init__(self, reactor, clock):
        directlyProvides(self, providedBy(reactor))
        self._reactor = reactor
        self._clock = clock

    def callLater(self, *args, **kwargs):
        return self._clock.callLater(*args, **kwargs)

    def seconds(self):
        return self._clock.seconds()

    def __getattr__(self, name):
        return getattr(self._reactor, name)


@pytest_twisted.ensureDeferred
async def test_timeout_when_server_never_answers(reactor, serve, client):
    arrived = defer.Deferred()

    def hang(request, body):
        if not arrived.called:
            arrived.callback(None)
        return NOT_DONE_YET

    server = await serve(hang)
    clock = Clock()
    c = client(server.url, timeout=0.3, reactor=_TimersOn(reactor, clock))
    d = c.chainId()
    settled = []
    d.addBoth(lambda result: settled.append(result) or result)
    await arrived.addTimeout(5, reactor)  # it did reach the server
    clock.advance(0.299)
    assert settled == [], "settled before its deadline"
    clock.advance(0.001)
    e = await _fails(d, RPCTimeout)
    assert isinstance(e, RPCUnavailable)
    assert e.method == "eth_chainId" and e.timeout == 0.3
    assert len(server.handler.requests) == 1


@pytest_twisted.ensureDeferred
async def test_timeout_when_body_stalls(reactor, serve, client):
    def half_a_body(request, body):
        request.setHeader(b"content-length", b"1000")
        request.write(b'{"jsonrpc": "2.0", ')
        return NOT_DONE_YET

    server = await serve(half_a_body)
    e = await _fails(client(server.url, timeout=0.3).blockNumber(), RPCTimeout)
    assert e.method == "eth_blockNumber"


@pytest_twisted.ensureDeferred
async def test_connection_refused(reactor):
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        WrappingFactory(Site(Resource()))
    )
    number = port.getHost().port
    await port.stopListening()
    c = JSONRPCClient(reactor, f"http://127.0.0.1:{number}/", timeout=2.0)
    try:
        e = await _fails(c.blockNumber(), RPCUnavailable)
        assert not isinstance(e, RPCTimeout)
        assert e.method == "eth_blockNumber"
        assert "ConnectionRefused" in str(e)
    finally:
        await c.close()


@pytest_twisted.ensureDeferred
async def test_close_fails_calls_in_flight(serve, client):
    server = await serve(lambda request, body: NOT_DONE_YET)
    c = client(server.url, timeout=30)
    pending = c.blockNumber()
    await c.close()
    e = await _fails(pending, RPCUnavailable)
    assert "closed" in str(e)
    e = await _fails(c.chainId(), RPCUnavailable)
    assert e.method == "eth_chainId"
    await c.close()


@pytest_twisted.ensureDeferred
async def test_keep_alive_reuses_one_connection(serve, client):
    server = await serve(_ok)
    c = client(server.url)
    for _ in range(5):
        assert await c.blockNumber() == 42
    assert await c.batch([("x", []), ("y", [])]) == ["x", "y"]
    assert server.tracker.accepted == 1


# HTTPS ------------------------------------------------------------------------

from tests.tls import self_signed as _self_signed  # noqa: E402


@implementer(IPolicyForHTTPS)
class _TrustOnly:
    def __init__(self, cert):
        self.cert = cert

    def creatorForNetloc(self, hostname, port):
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.cert)


# Twisted's CertificateOptions still hands pyOpenSSL objects to pyOpenSSL.
@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_https(serve, client):
    cert = _self_signed()
    server = await serve(_ok, tls=cert)
    assert server.url.startswith("https://")
    trusting = client(server.url, tlsPolicy=_TrustOnly(cert))
    assert await trusting.blockNumber() == 42
    # Default policy: the self-signed certificate is rejected, as it should be.
    strict = client(server.url, tlsPolicy=BrowserLikePolicyForHTTPS())
    e = await _fails(strict.blockNumber(), RPCUnavailable)
    assert not isinstance(e, RPCTimeout)


def test_bad_arguments(reactor):
    with pytest.raises(ValueError):
        JSONRPCClient(reactor, "ws://127.0.0.1:8545")
    with pytest.raises(ValueError):
        JSONRPCClient(reactor, "http://127.0.0.1:8545", timeout=0)
    c = JSONRPCClient(reactor, "http://127.0.0.1:8545")
    with pytest.raises(ValueError):
        c.getBlockByNumber(-1)
    with pytest.raises(ValueError):
        c.getBlockByNumber("newest")
    with pytest.raises(TypeError):
        c.getBlockByNumber(True)
