"""Origin, per-IP rate limit, connection cap and message size: each refused as a user would see it."""

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from explorerd.admission import OriginPolicy, RateLimiter, client_ip
from tests.clients import connect, handshake_status, in_thread
from tests.conftest import eventually
from tests.metricvalues import sample


@pytest_twisted.ensureDeferred
async def test_disallowed_origin_gets_403_before_the_upgrade(start_daemon):
    daemon = await start_daemon(cors_origins=("https://explorer.example", "https://*.example.org"))
    assert await in_thread(handshake_status, daemon.url, origin="https://evil.example") == 403
    assert await in_thread(handshake_status, daemon.url, origin="https://explorer.example") == 101
    assert await in_thread(handshake_status, daemon.url, origin="https://app.example.org") == 101
    assert await in_thread(handshake_status, daemon.url) == 101, "non-browser clients send no Origin"
    assert sample(daemon.hub.metrics.registry, "explorer_websocket_connections_refused_total", reason="origin") == 1
    await eventually(lambda: daemon.hub.connectionCount == 0)


@pytest_twisted.ensureDeferred
async def test_too_many_new_connections_from_one_ip_get_429(start_daemon):
    daemon = await start_daemon(rate_limit=3)
    statuses = [await in_thread(handshake_status, daemon.url) for _ in range(5)]
    assert statuses == [101, 101, 101, 429, 429]
    daemon.clock.advance(20)  # a minute's rate is 3, so 20 s buys one more
    assert await in_thread(handshake_status, daemon.url) == 101
    assert await in_thread(handshake_status, daemon.url) == 429
    await eventually(lambda: daemon.hub.connectionCount == 0)


def raw_upgrade(port, path="/v1/stream"):
    """One upgrade request on a plain socket: (status line, body)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                  % path.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if data.startswith(b"HTTP/1.1 101"):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), body.decode()


@pytest_twisted.ensureDeferred
async def test_a_storm_past_the_rate_limit_is_refused_before_any_websocket_is_built(start_daemon):
    daemon = await start_daemon(rate_limit=2)
    built = []
    for factory in (daemon.service.streamFactory, daemon.service.wampFactory):
        original = factory.buildProtocol
        factory.buildProtocol = lambda addr, original=original: built.append(addr) or original(addr)
    port = daemon.service.address.port
    answers = [await in_thread(raw_upgrade, port) for _ in range(3)]
    assert [status for status, _ in answers] == ["HTTP/1.1 101 Switching Protocols"] * 2 + [
        "HTTP/1.1 429 Too Many Requests"]
    assert answers[2][1] == "too many new connections from your address; try again in a minute\n"
    assert len(built) == 2, "a refusal costs no protocol, no handshake"
    for path in ("/v1/stream", "/v1/wamp", "/v1/stream?x=1"):
        status, body = await in_thread(raw_upgrade, port, path)
        assert status == "HTTP/1.1 429 Too Many Requests"
        assert body == "too many new connections from your address; try again in a minute\n"
    assert len(built) == 2
    assert sample(daemon.hub.metrics.registry, "explorer_websocket_connections_refused_total", reason="rate_limit") == 4
    # The same address may still read /healthz and /metrics.
    import treq

    response = await treq.get(f"http://127.0.0.1:{port}/healthz", persistent=False)
    assert response.code == 200
    await response.content()
    daemon.clock.advance(30)  # a minute's rate is 2: one more
    assert (await in_thread(raw_upgrade, port))[0] == "HTTP/1.1 101 Switching Protocols"
    await eventually(lambda: daemon.hub.connectionCount == 0)


@pytest_twisted.ensureDeferred
async def test_behind_a_trusted_proxy_the_forwarded_address_is_limited(start_daemon):
    daemon = await start_daemon(rate_limit=1, trusted_proxies=1)
    a = {"X-Forwarded-For": "203.0.113.7"}
    b = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}
    assert await in_thread(handshake_status, daemon.url, headers=a) == 101
    assert await in_thread(handshake_status, daemon.url, headers=a) == 429
    assert await in_thread(handshake_status, daemon.url, headers=b) == 101
    # A client cannot pick its own address: only the last (proxy-added) entry counts.
    spoofed = {"X-Forwarded-For": "1.2.3.4, 203.0.113.9"}
    assert await in_thread(handshake_status, daemon.url, headers=spoofed) == 429
    await eventually(lambda: daemon.hub.connectionCount == 0)


@pytest_twisted.ensureDeferred
async def test_without_trusted_proxies_x_forwarded_for_is_ignored(start_daemon):
    daemon = await start_daemon(rate_limit=1)
    assert await in_thread(handshake_status, daemon.url, headers={"X-Forwarded-For": "203.0.113.7"}) == 101
    assert await in_thread(handshake_status, daemon.url, headers={"X-Forwarded-For": "203.0.113.8"}) == 429
    await eventually(lambda: daemon.hub.connectionCount == 0)


@pytest_twisted.ensureDeferred
async def test_connection_cap_gets_503_and_frees_up(start_daemon):
    daemon = await start_daemon(max_connections=3)
    clients = [await connect(daemon.url) for _ in range(3)]
    assert await in_thread(handshake_status, daemon.url) == 503
    await clients[0].close()
    await eventually(lambda: daemon.hub.connectionCount == 2, what="the slot to be released")
    assert await in_thread(handshake_status, daemon.url) == 101
    assert sample(daemon.hub.metrics.registry, "explorer_websocket_connections_refused_total", reason="capacity") == 1
    for c in clients[1:]:
        await c.close()


@pytest_twisted.ensureDeferred
async def test_a_message_over_1_mib_closes_with_1009(start_daemon):
    # A burst that pays for parsing a whole MiB (128 messages' worth).
    daemon = await start_daemon(message_burst=130)
    ok = await connect(daemon.url)
    ok.sendMessage(b" " * (1 << 20))  # exactly 1 MiB: allowed (and not JSON)
    assert (await ok.next(timeout=20))["error"]["code"] == "invalid_json"

    big = await connect(daemon.url)
    big.sendMessage(b" " * ((1 << 20) + 1))
    code, reason = await big.closed
    assert code == 1009

    fragmented = await connect(daemon.url)
    fragmented.sendMessage(b" " * (700 * 1024 * 2), fragmentSize=700 * 1024)
    code, reason = await fragmented.closed
    assert code == 1009
    assert sample(daemon.hub.metrics.registry, "explorer_websocket_errors_total", type="message_too_big") == 2
    assert await ok.request({"action": "ping"}) == {"type": "pong"}
    await ok.close()


@pytest_twisted.ensureDeferred
async def test_configured_message_size_is_enforced(start_daemon):
    daemon = await start_daemon(max_message_size=1024)
    client = await connect(daemon.url)
    client.send_json({"action": "subscribe", "channels": ["newBlocks"] * 200})
    code, _ = await client.closed
    assert code == 1009


def test_rate_limiter_memory_stays_bounded():
    clock = Clock()
    limiter = RateLimiter(clock, per_minute=10, max_ips=1000)
    for i in range(200_000):
        assert limiter.allow(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        if i % 1000 == 0:
            clock.advance(0.01)
    assert len(limiter) <= 1000
    # Once their buckets refill, quiet addresses are forgotten as new ones arrive.
    clock.advance(120)
    for i in range(600):
        limiter.allow(f"192.0.2.{i % 250}")
    assert len(limiter) <= 260


def test_rate_limiter_refills_over_time():
    clock = Clock()
    limiter = RateLimiter(clock, per_minute=2)
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow("b")
    clock.advance(30)
    assert limiter.allow("a") and not limiter.allow("a")
    assert RateLimiter(clock, per_minute=0).allow("anyone")


@pytest.mark.parametrize("origin, allowed", [
    ("https://explorer.example", True),
    ("https://EXPLORER.example/", True),
    ("http://explorer.example", False),
    ("https://explorer.example:8443", False),
    ("https://a.b.example.org", True),
    ("https://example.org", False),
    ("null", False),
    (None, True),
])
def test_origin_policy(origin, allowed):
    policy = OriginPolicy(("https://explorer.example", "https://*.b.example.org", "https://*.example.org"))
    assert policy.allows(origin) is allowed


@pytest.mark.parametrize("peer, ip", [
    ("tcp4:127.0.0.1:5000", "127.0.0.1"),
    ("tcp6:::1:5000", "::1"),
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("203.0.113.7:443", "203.0.113.7"),
])
def test_client_ip(peer, ip):
    assert client_ip(peer) == ip


@pytest_twisted.ensureDeferred
async def test_wss_from_an_ssl_endpoint_string(start_daemon, tmp_path):
    import ssl

    from tests.tls import self_signed_pem

    pem = tmp_path / "server.pem"
    pem.write_bytes(self_signed_pem())
    daemon = await start_daemon(listen=f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}")
    url = daemon.url.replace("ws://", "wss://")

    def talk():
        from websockets.sync.client import connect as ws_connect

        context = ssl.create_default_context(cafile=str(pem))
        with ws_connect(url, ssl=context, compression=None, open_timeout=10) as ws:
            ws.send('{"action":"subscribe","channels":["newBlocks"]}')
            subscribed = ws.recv(timeout=10)
            ws.send('{"action":"ping"}')
            return subscribed, ws.recv(timeout=10)

    def flood():
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect as ws_connect

        context = ssl.create_default_context(cafile=str(pem))
        with ws_connect(url, ssl=context, compression=None, open_timeout=10, close_timeout=1) as ws:
            try:
                for _ in range(200):
                    ws.send('{"action":"ping"}')
                while True:
                    ws.recv(timeout=10)
            except ConnectionClosed as e:
                return e.rcvd.code, e.rcvd.reason

    subscribed, pong = await in_thread(talk)
    assert subscribed == '{"type":"subscribed","channels":["newBlocks"]}'
    assert pong == '{"type":"pong"}'
    # Over TLS too a flooder gets its 1008 and its reason.
    code, reason = await in_thread(flood)
    assert code == 1008 and reason.startswith("too many messages")
    daemon.clock.advance(daemon.service.config.shutdown_timeout + 1)
    await eventually(lambda: daemon.hub.connectionCount == 0)


def _open_raw(port, source="127.0.0.1"):
    import socket

    s = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    s.setblocking(False)
    return s


def _closed_by_server(s):
    try:
        return s.recv(100) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest_twisted.ensureDeferred
async def test_slowloris_connections_count_against_the_cap_and_are_dropped_in_time(start_daemon):
    daemon = await start_daemon(max_connections=3, handshake_timeout=10)
    trickle = [_open_raw(daemon.port) for _ in range(3)]
    await eventually(lambda: daemon.hub.connectionCount == 3, what="three pending connections")
    for s in trickle:
        s.send(b"GET /v1/str")  # a request head that never finishes
    assert await in_thread(handshake_status, daemon.url) == 503
    for _ in range(4):  # keep trickling: the deadline counts from connecting, not from the last byte
        daemon.clock.advance(2.5)
        for s in trickle:
            s.send(b"e")
    daemon.clock.advance(2.5)
    await eventually(lambda: all(_closed_by_server(s) for s in trickle), what="slow requests dropped")
    assert daemon.hub.connectionCount == 0
    assert sample(daemon.hub.metrics.registry, "explorer_websocket_errors_total", type="handshake_timeout") == 3
    assert await in_thread(handshake_status, daemon.url) == 101
    for s in trickle:
        s.close()
    await eventually(lambda: daemon.hub.connectionCount == 0)


@pytest_twisted.ensureDeferred
async def test_connections_per_ip_count_unfinished_requests(start_daemon):
    daemon = await start_daemon(max_connections_per_ip=2)
    idle = [_open_raw(daemon.port) for _ in range(2)]
    await eventually(lambda: daemon.hub.connectionCount == 2)
    assert await in_thread(handshake_status, daemon.url) == 429

    def from_another_address():
        import socket

        from websockets.sync.client import connect as ws_connect

        sock = socket.create_connection(("127.0.0.1", daemon.port), source_address=("127.0.0.2", 0))
        with ws_connect(daemon.url, sock=sock, compression=None, open_timeout=5):
            return True

    assert await in_thread(from_another_address), "another address has its own allowance"
    for s in idle:
        s.close()
    await eventually(lambda: daemon.hub.connectionCount == 0)
    clients = [await connect(daemon.url) for _ in range(2)]
    assert await in_thread(handshake_status, daemon.url) == 429, "open WebSockets count too"
    assert sample(daemon.hub.metrics.registry, "explorer_websocket_connections_refused_total", reason="ip_capacity") >= 2
    for c in clients:
        await c.close()


@pytest_twisted.ensureDeferred
async def test_the_daemons_own_pages_may_connect_whatever_the_origin_list(start_daemon):
    daemon = await start_daemon(cors_origins=("https://explorer.example",))
    own = f"http://127.0.0.1:{daemon.port}"
    assert await in_thread(handshake_status, daemon.url, origin=own) == 101
    assert await in_thread(handshake_status, daemon.url, origin="http://127.0.0.1:1") == 403
    await eventually(lambda: daemon.hub.connectionCount == 0)


@pytest_twisted.ensureDeferred
async def test_over_tls_a_refused_address_is_closed_at_accept_before_any_tls_work(start_daemon, tmp_path):
    # A TLS handshake costs ~1.5 ms of server CPU; a rate-limited address used to get one before
    # its 429. Now its connection is closed as it is accepted: it never even gets a ServerHello.
    import socket
    import ssl

    from tests.tls import self_signed_pem

    pem = tmp_path / "server.pem"
    pem.write_bytes(self_signed_pem())
    daemon = await start_daemon(listen=f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}", rate_limit=2)
    url = daemon.url.replace("ws://", "wss://")

    def handshake(source="127.0.0.1"):
        from websockets.sync.client import connect as ws_connect

        context = ssl.create_default_context(cafile=str(pem))
        sock = socket.create_connection(("127.0.0.1", daemon.port), source_address=(source, 0))
        with ws_connect(url, sock=sock, ssl=context, compression=None, open_timeout=10) as ws:
            ws.send('{"action":"ping"}')
            return ws.recv(timeout=10)

    def refused():
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
            try:
                return sock.recv(1)  # a TLS server would wait for our ClientHello
            except ConnectionResetError:
                return b""

    for _ in range(2):  # the address's two connections a minute
        assert await in_thread(handshake) == '{"type":"pong"}'
    assert await in_thread(refused) == b""
    registry = daemon.service.metrics.registry
    assert sample(registry, "explorer_connections_refused_at_accept_total") == 1
    assert sample(registry, "explorer_websocket_connections_refused_total", reason="rate_limit") == 1
    # Another address is served as before.
    assert await in_thread(handshake, "127.0.0.2") == '{"type":"pong"}'
    daemon.clock.advance(daemon.service.config.shutdown_timeout + 1)


@pytest_twisted.ensureDeferred
async def test_over_tls_bare_handshakes_count_against_the_rate_limit(start_daemon, tmp_path):
    # A handshake with no request after it took no token: an address could make the server do
    # handshakes (~1.5 ms of CPU each) as fast as it liked. Now each counts as a new connection,
    # however many are in flight at once; plain HTTPS requests still do not.
    import socket
    import ssl

    from tests.tls import self_signed_pem

    pem = tmp_path / "server.pem"
    pem.write_bytes(self_signed_pem())
    daemon = await start_daemon(listen=f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}", rate_limit=3)
    context = ssl.create_default_context(cafile=str(pem))

    def bare_handshake(source="127.0.0.1"):
        """True if the TLS handshake completed; False if the server closed the connection first."""
        sock = socket.create_connection(("127.0.0.1", daemon.port), source_address=(source, 0), timeout=10)
        try:
            with context.wrap_socket(sock, server_hostname="127.0.0.1"):
                return True
        except (ssl.SSLError, ConnectionResetError, OSError):
            return False

    def https_get(path="/healthz"):
        import urllib.request

        with urllib.request.urlopen(f"https://127.0.0.1:{daemon.port}{path}", context=context, timeout=10) as r:
            return r.status

    registry = daemon.service.metrics.registry
    for _ in range(5):  # requests give their token back
        assert await in_thread(https_get) == 200
    for n in range(3):  # the address's three connections a minute
        assert await in_thread(bare_handshake)
    assert not await in_thread(bare_handshake)
    assert sample(registry, "explorer_connections_refused_at_accept_total") == 1
    assert await in_thread(bare_handshake, "127.0.0.2"), "another address is not limited"
    # Twenty seconds later the address has a new connection's worth again.
    daemon.clock.advance(20)
    assert await in_thread(bare_handshake)
    await eventually(lambda: daemon.hub.slots.count == 0, what="the connections to be gone")


@pytest_twisted.ensureDeferred
async def test_a_request_whose_body_trickles_in_is_dropped_at_the_handshake_timeout(start_daemon):
    # Every byte of a body resets twisted.web's idle timer: only the deadline from connecting,
    # which now covers the whole request, body included, ends it.
    import socket

    daemon = await start_daemon(handshake_timeout=2)
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
    hub = daemon.hub
    for _ in range(4):  # a byte of body every half second: never idle, never done
        sock.sendall(b"x")
        await eventually(lambda: hub.slots.count == 1, what="the connection to hold its slot")
        daemon.clock.advance(0.5)
    sock.sendall(b"x")
    daemon.clock.advance(0.5)  # two seconds from connecting: the handshake timeout
    await eventually(lambda: hub.slots.count == 0, what="the slow body to be dropped")

    def closed():
        sock.settimeout(5)
        try:
            return sock.recv(100)
        except ConnectionResetError:
            return b""

    assert await in_thread(closed) == b""
    sock.close()
    assert sample(daemon.service.metrics.registry, "explorer_websocket_errors_total", type="handshake_timeout") == 1


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(600)) + b"\r\n",
    # Request smuggling: a length and a chunked encoding at once, or two lengths that disagree.
    b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
], ids=["20-KiB-header", "600-headers", "length-and-chunked", "two-lengths"])
@pytest_twisted.ensureDeferred
async def test_an_oversized_or_ambiguous_request_is_refused_and_closed(start_daemon, request_bytes):
    import socket

    daemon = await start_daemon()

    def send():
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
            sock.sendall(request_bytes)
            answer = b""
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                answer += chunk
            return answer

    answer = await in_thread(send)
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")), answer[:80]
    assert b'"status"' not in answer  # nothing was served
    await eventually(lambda: daemon.hub.slots.count == 0, what="the connection to be gone")


class FileLimits:
    """A process's open-file limits, as C{resource.getrlimit}/C{setrlimit} see them."""

    def __init__(self, soft, hard, refuse=False):
        self.soft, self.hard, self.refuse = soft, hard, refuse

    def get(self, which):
        return self.soft, self.hard

    def set(self, which, limits):
        if self.refuse:
            raise ValueError("not allowed")
        self.soft, self.hard = limits


def test_the_open_file_limit_is_raised_for_max_connections():
    from explorerd.filelimit import RESERVE, ensureFiles

    limits = FileLimits(1024, 1048576)
    assert ensureFiles(20000, limits.get, limits.set) is None
    assert limits.soft == 20000 + RESERVE and limits.hard == 1048576
    roomy = FileLimits(65536, 65536)
    assert ensureFiles(1000, roomy.get, roomy.set) is None and roomy.soft == 65536


def test_too_few_open_files_for_max_connections_is_said_with_what_to_do():
    from explorerd.filelimit import ensureFiles

    limits = FileLimits(1024, 20000)
    warning = ensureFiles(30000, limits.get, limits.set)
    assert limits.soft == 20000, "raised as far as the hard limit goes"
    assert warning.startswith("WEBSOCKET_MAX_CONNECTIONS is 30000, but this process may open only 20000 files")
    assert "at most 19936" in warning and "ulimit -n" in warning

    stuck = FileLimits(1024, 4096, refuse=True)
    assert "may open only 1024 files" in ensureFiles(2000, stuck.get, stuck.set)
