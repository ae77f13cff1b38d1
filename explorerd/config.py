"""
Typed, validated settings from the environment and twistd options.

Every setting has one row in L{SETTINGS}: its environment variable, its
command-line option, its default, its parser and what it does.  The README's
settings table is written from the same rows (L{settings_table}; a test
keeps the two identical).  Options win over the
environment; a bad value from either stops start-up with a message that names
the setting and the value.
"""

import dataclasses
import re
import typing


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names both."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text) -> float:
    """C{"500ms"}, C{"30s"}, C{"1m"}, C{"2h"} or plain seconds C{"1.5"} → float seconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError("expected a duration such as 500ms, 30s or 1m")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def parse_size(text) -> int:
    """Bytes, with an optional KiB/MiB suffix (C{"1MiB"}, C{"64KiB"}, C{"1024"})."""
    m = re.match(r"^\s*(\d+)\s*(B|KiB|MiB|KB|MB|k|K|M)?\s*$", str(text))
    if not m:
        raise ValueError("expected a size in bytes such as 1024, 64KiB or 1MiB")
    unit = {None: 1, "B": 1, "k": 1024, "K": 1024, "KiB": 1024, "KB": 1024,
            "M": 1 << 20, "MiB": 1 << 20, "MB": 1 << 20}[m.group(2)]
    return int(m.group(1)) * unit


def parse_int(text) -> int:
    text = str(text).strip()
    if not re.match(r"^[+-]?\d+$", text):
        raise ValueError("expected a whole number")
    return int(text)


def parse_origins(text) -> tuple:
    """Comma-separated origins; C{*} allows every origin."""
    origins = [o.strip().rstrip("/").lower() for o in str(text).split(",") if o.strip()]
    if not origins:
        raise ValueError("expected '*' or a comma-separated list of origins")
    for origin in origins:
        if origin != "*" and not re.match(r"^(https?|null)(://[^/\s]+)?$", origin):
            raise ValueError(
                f"origin {origin!r} is not of the form scheme://host[:port] "
                "(wildcards like https://*.example.com are allowed)"
            )
    return tuple(origins)


def parse_url(text) -> str:
    """An http(s) or ws(s) node URL, or empty for the embedded replay node."""
    from urllib.parse import urlsplit

    text = str(text).strip()
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ValueError("expected an http(s):// or ws(s):// URL of a JSON-RPC node")
    _checkPort(parts)
    return text


def _checkPort(parts):
    """Read a URL's port: reading it is what makes C{urlsplit} check it is a number from 0 to 65535."""
    try:
        return parts.port
    except ValueError as e:
        raise ValueError(str(e)) from None


def _wsURL(text, what):
    """A ws:// or wss:// URL, or empty for none; C{what} says what it is for, in the error."""
    from urllib.parse import urlsplit

    text = str(text).strip()
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"expected a ws:// or wss:// URL of {what}")
    _checkPort(parts)
    return text


def parse_node_ws_url(text) -> str:
    """A ws:// or wss:// URL of a node's WebSocket JSON-RPC, or empty for none."""
    return _wsURL(text, "the node's WebSocket JSON-RPC, e.g. ws://127.0.0.1:8546")


def parse_switch(text) -> bool:
    """C{on} or C{off} (also C{true}/C{false}, C{yes}/C{no}, C{1}/C{0})."""
    text = str(text).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise ValueError("expected on or off")


def parse_path(text) -> str:
    return str(text).strip()


def parse_directory(text) -> str:
    """An existing directory, or empty."""
    import os

    text = str(text).strip()
    if text and not os.path.isdir(text):
        raise ValueError(f"no directory {os.path.abspath(text)!r}")
    return text


_URI = re.compile(r"^[^\s.#]+(\.[^\s.#]+)*$")


def parse_uri(text) -> str:
    """A WAMP URI such as C{explorer} or C{com.example.realm}."""
    text = str(text).strip()
    if not _URI.match(text):
        raise ValueError("expected a WAMP URI such as explorer or com.example.explorer")
    return text


def parse_ws_url(text) -> str:
    """A ws:// or wss:// URL of a WAMP router, or empty for none."""
    return _wsURL(text, "a WAMP router, e.g. ws://127.0.0.1:8088/ws")


def parse_text(text) -> str:
    return str(text).strip()


def parse_source(text) -> str:
    text = str(text).strip().lower()
    if text not in SOURCES:
        raise ValueError(f"expected one of {', '.join(SOURCES)}")
    return text


SOURCES = ("node", "wamp")
RECEIPTS = ("auto", "block", "logs", "off")


def parse_receipts(text) -> str:
    text = str(text).strip().lower()
    if text not in RECEIPTS:
        raise ValueError(f"expected one of {', '.join(RECEIPTS)}")
    return text


# JSON-RPC methods /v1/rpc never sends a node: they sign, send, or change or read its internals.
RPC_REFUSED_PREFIXES = ("admin_", "debug_", "personal_", "miner_", "txpool_", "anvil_", "evm_", "hardhat_",
                        "eth_sign")
RPC_REFUSED_METHODS = ("eth_sendTransaction", "eth_accounts")
_METHOD = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}\Z")


def rpc_refused(method):
    """Whether /v1/rpc refuses C{method} whatever the settings (see L{RPC_REFUSED_PREFIXES})."""
    return method in RPC_REFUSED_METHODS or method.startswith(RPC_REFUSED_PREFIXES)


def parse_methods(text) -> tuple:
    """A comma list of JSON-RPC method names that may be forwarded to the node."""
    methods = []
    for name in str(text).split(","):
        name = name.strip()
        if not name:
            continue
        if not _METHOD.match(name):
            raise ValueError(f"{name[:70]!r} is not a JSON-RPC method name")
        if rpc_refused(name):
            raise ValueError(f"{name} is never forwarded: it signs, sends or changes a node's state")
        methods.append(name)
    return tuple(dict.fromkeys(methods))


def parse_chain_id(text) -> int:
    """An EIP-155 chain id (decimal or 0x-hex), or 0 for none given."""
    text = str(text).strip().lower()
    if not text:
        return 0
    try:
        value = int(text, 16) if text.startswith("0x") else parse_int(text)
    except ValueError:
        raise ValueError("expected a chain id, such as 1 or 0x1") from None
    if value <= 0:
        raise ValueError("a chain id is a positive number")
    return value


_ENDPOINT_EXAMPLE = "a Twisted endpoint string such as tcp:8080:interface=127.0.0.1"


class _ListenRecorder:
    """
    Stands in for the reactor while an endpoint string is checked: the
    endpoint is parsed, and its C{listen} asks us, so nothing listens and
    the global reactor is never touched.
    """

    def __init__(self):
        self.ports = []

    def listenTCP(self, port, factory, backlog=50, interface=""):
        self.ports.append(port)

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        self.ports.append(port)


def parse_endpoint(text) -> str:
    """
    A Twisted server endpoint string, checked the way the listener will
    read it (C{serverFromString}), so that a typo stops start-up before
    anything else starts: an unknown type, a port that is not a number or
    not 0-65535, an unknown argument, a TLS key file that cannot be read.
    """
    from twisted.internet import endpoints

    text = str(text).strip()
    if not text:
        raise ValueError(f"expected {_ENDPOINT_EXAMPLE}")
    recorder = _ListenRecorder()
    try:
        endpoint = endpoints.serverFromString(recorder, text)
    except Exception as e:  # endpoint parsers (plugins too) raise all kinds
        raise ValueError(f"not a usable endpoint ({_describe(e)}); expected {_ENDPOINT_EXAMPLE}") from None
    if isinstance(endpoint, (endpoints.TCP4ServerEndpoint, endpoints.TCP6ServerEndpoint,
                             endpoints.SSL4ServerEndpoint)):
        endpoint.listen(None)
        for port in recorder.ports:
            if not 0 <= port <= 65535:
                raise ValueError(f"port {port} is not between 0 and 65535 (0 picks a free one)")
    return text


def _describe(error):
    """An endpoint parser's complaint, without the name of its private function."""
    text = re.sub(r"^_?\w+\(\) ", "", str(error))
    return f"wrong arguments: {text}" if isinstance(error, TypeError) else text


@dataclasses.dataclass(frozen=True)
class Setting:
    """
    One setting: its L{Config} attribute, environment variable, option,
    default (as text, parsed like any other value), parser, least value
    and README text.  A C{secret} one is left out of C{repr(config)}.
    """

    name: str
    env: str
    option: str
    default: str
    parse: object
    minimum: float
    doc: str
    secret: bool = False

    @property
    def kind(self):
        """What C{parse} returns (its annotation): the type of the L{Config} attribute."""
        return typing.get_type_hints(self.parse).get("return", object)


SETTINGS = (
    Setting("listen", "WEBSOCKET_LISTEN", "listen", "tcp:8080:interface=127.0.0.1:backlog=1024",
            parse_endpoint, None,
            "Twisted endpoint string the HTTP/WebSocket server listens on "
            "(`ssl:8443:privateKey=key.pem:certKey=cert.pem` serves `wss://`)."),
    Setting("max_connections", "WEBSOCKET_MAX_CONNECTIONS", "max-connections", "1000",
            parse_int, 1,
            "Most concurrent WebSocket connections (handshakes in progress included); "
            "more are refused with HTTP 503."),
    Setting("ping_interval", "WEBSOCKET_PING_INTERVAL", "ping-interval", "30s",
            parse_duration, 0.01,
            "How often the hub's single sweep pings every client."),
    Setting("pong_timeout", "WEBSOCKET_PONG_TIMEOUT", "pong-timeout", "60s",
            parse_duration, 0.01,
            "A client that has not answered our pings for this long is dropped: only a pong to one of "
            "the hub's pings counts (it comes once the client has read everything sent before it), "
            "not its own pings or messages."),
    Setting("write_deadline", "WEBSOCKET_WRITE_DEADLINE", "write-deadline", "10s",
            parse_duration, 0.01,
            "A client whose transport stays paused (not reading) this long, or for whom a broadcast has "
            "waited this long in explorerd's queue (it reads, but slower than the chain goes), is "
            "disconnected as too slow."),
    Setting("send_queue", "WEBSOCKET_SEND_QUEUE", "send-queue", "256",
            parse_int, 1,
            "Broadcasts held for a client while its transport is paused (a block, or one block's "
            "transactions, counts as one); one more disconnects it as too slow."),
    Setting("read_buffer_size", "WEBSOCKET_READ_BUFFER_SIZE", "read-buffer-size", "1024",
            parse_size, 1,
            "Most bytes read from a client socket in one recv() call (TCP listeners)."),
    Setting("write_buffer_size", "WEBSOCKET_WRITE_BUFFER_SIZE", "write-buffer-size", "1024",
            parse_size, 1,
            "Unsent bytes a connection's transport may hold before it pauses the client "
            "(Twisted's `bufferSize`); the hub then queues for that client instead of writing."),
    Setting("unsent_limit", "WEBSOCKET_UNSENT_LIMIT", "unsent-limit", "128KiB",
            parse_size, 0,
            "Bytes the kernel may hold for a connection that it has not yet sent (`TCP_NOTSENT_LOWAT`; "
            "bytes in flight are left to the kernel's autotuning, so long fast links keep their "
            "throughput). Past it the transport holds the rest, pauses the client and the write deadline "
            "runs: a client that stops reading holds about this much of the server's kernel memory and "
            "is closed as too slow within seconds, where Linux would otherwise buffer up to 4 MiB for it "
            "first. 0 leaves it to the kernel (`net.ipv4.tcp_notsent_lowat`)."),
    Setting("max_message_size", "WEBSOCKET_MAX_MESSAGE_SIZE", "max-message-size", "1MiB",
            parse_size, 1,
            "Largest inbound frame or message; a larger one closes the connection with 1009."),
    Setting("rate_limit", "WEBSOCKET_RATE_LIMIT", "rate-limit", "10",
            parse_int, 0,
            "New connections allowed per minute per client IP (token bucket, bursts up to the "
            "same number); more are refused with HTTP 429. 0 turns the limit off."),
    Setting("max_connections_per_ip", "WEBSOCKET_MAX_CONNECTIONS_PER_IP", "max-connections-per-ip", "100",
            parse_int, 0,
            "Most connections open at once from one client IP, unfinished HTTP requests included; "
            "more are refused with HTTP 429. Counted by socket address, and by the forwarded address "
            "for WebSockets behind trusted proxies. 0 turns the limit off."),
    Setting("message_rate", "WEBSOCKET_MESSAGE_RATE", "message-rate", "20",
            parse_int, 0,
            "Messages a client may send per second (token bucket, bursts of WEBSOCKET_MESSAGE_BURST); "
            "past it the client is closed with 1008. A message counts as at least one per 8 KiB and one "
            "per 128 values it holds, counted before it is parsed (more than a burst: closed with 1009, "
            "unparsed); a `since` replay as one message per 64 KiB it sends, at most a whole burst. "
            "0 turns the budget off."),
    Setting("message_burst", "WEBSOCKET_MESSAGE_BURST", "message-burst", "60",
            parse_int, 1,
            "The burst of messages a client may send at once before its budget applies."),
    Setting("rate_limit_ips", "WEBSOCKET_RATE_LIMIT_IPS", "rate-limit-ips", "100000",
            parse_int, 1,
            "Most client IPs the rate limiter remembers at once; it forgets the least recently seen."),
    Setting("trusted_proxies", "WEBSOCKET_TRUSTED_PROXIES", "trusted-proxies", "0",
            parse_int, 0,
            "Number of reverse proxies in front of explorerd whose `X-Forwarded-For` is trusted; "
            "0 uses the socket's peer address."),
    Setting("handshake_timeout", "WEBSOCKET_HANDSHAKE_TIMEOUT", "handshake-timeout", "10s",
            parse_duration, 0.01,
            "A connection that has not sent a complete HTTP request (or upgrade) in this time "
            "from connecting is dropped, however slowly it keeps sending."),
    Setting("subscribe_timeout", "WEBSOCKET_SUBSCRIBE_TIMEOUT", "subscribe-timeout", "30s",
            parse_duration, 0,
            "A WebSocket (`/v1/stream`, `/v1/wamp`, `/v1/rpc`) that holds no subscription for this long "
            "is closed with 1008, reason `no subscription within 30s`: counted from connecting, from "
            "its last request (a WAMP CALL, a JSON-RPC method other than `net_version`, `eth_chainId` "
            "and `web3_clientVersion`) and from giving up its last subscription. Pings, the client's "
            "or ours, do not count. 0 turns it off."),
    Setting("shutdown_timeout", "WEBSOCKET_SHUTDOWN_TIMEOUT", "shutdown-timeout", "5s",
            parse_duration, 0,
            "On SIGTERM, how long to wait for clients to answer the 1001 close before exiting."),
    Setting("history_blocks", "EXPLORERD_HISTORY_BLOCKS", "history-blocks", "256",
            parse_int, 1,
            "Recent blocks (with their transactions) kept for clients that resume with `since`."),
    Setting("rpc_url", "EXPLORERD_RPC_URL", "rpc-url", "",
            parse_url, None,
            "JSON-RPC node to tail: http(s), or ws(s) for calls and push over one WebSocket "
            "endpoint. Empty: start the embedded replay node of "
            "real recorded blocks on 127.0.0.1 and tail that. On an edge (`--source wamp`), which reads "
            "blocks from its router, the node `/v1/rpc` forwards calls to (empty: none)."),
    Setting("rpc_ws_url", "EXPLORERD_RPC_WS_URL", "rpc-ws-url", "",
            parse_node_ws_url, None,
            "The node's WebSocket JSON-RPC (ws or wss; anvil and the replay node serve it on their HTTP "
            "port), for push: the live-tail subscribes to `newHeads` and fetches each block the moment "
            "the node announces it (calls stay on `--rpc-url`; polling goes on as the safety net). "
            "Empty: push from `--rpc-url` if that is ws(s), from the embedded replay node without one, "
            "else polling only."),
    Setting("rpc_ws_silence", "EXPLORERD_RPC_WS_SILENCE", "rpc-ws-silence", "60s",
            parse_duration, 0.01,
            "With push: a subscription that announces no block for this long is taken for dead and "
            "renewed (set it to a few block times)."),
    Setting("rpc_timeout", "EXPLORERD_RPC_TIMEOUT", "rpc-timeout", "10s",
            parse_duration, 0.01,
            "Deadline for each JSON-RPC call, body included."),
    Setting("poll_interval", "EXPLORERD_POLL_INTERVAL", "poll-interval", "1s",
            parse_duration, 0.01,
            "How often the live-tail asks the node for its head."),
    Setting("adaptive_polling", "EXPLORERD_ADAPTIVE_POLLING", "adaptive-polling", "on",
            parse_switch, None,
            "Besides every EXPLORERD_POLL_INTERVAL, poll when the next block is due (the last block's "
            "timestamp plus the chain's block time, the median interval of the last 16 blocks), then "
            "every quarter EXPLORERD_POLL_INTERVAL while it is late, for up to half a block time: "
            "blocks come sooner from nodes that cannot push, for a few more `eth_blockNumber` calls "
            "per block; not while the node pushes (`--rpc-ws-url`). `off`: the fixed interval only."),
    Setting("rpc_retry", "EXPLORERD_RPC_RETRY", "rpc-retry", "30s",
            parse_duration, 0.01,
            "Longest wait between the live-tail's attempts while the node fails (exponential backoff "
            "with jitter from EXPLORERD_POLL_INTERVAL; a retry comes at the next poll after it)."),
    Setting("rpc_batch_size", "EXPLORERD_RPC_BATCH_SIZE", "rpc-batch-size", "50",
            parse_int, 1,
            "Blocks fetched per JSON-RPC batch while catching up."),
    Setting("rpc_batch_max", "EXPLORERD_RPC_BATCH_MAX", "rpc-batch-max", "100",
            parse_int, 1,
            "Most requests in one JSON-RPC batch a `/v1/rpc` client may send; a larger batch is "
            "answered with one -32600 error."),
    Setting("chain_id", "EXPLORERD_CHAIN_ID", "chain-id", "",
            parse_chain_id, None,
            "The chain id `/v1/rpc` answers `eth_chainId` and `net_version` with (libraries such as ethers "
            "ask for it on connecting). Empty: the node's, asked once; an edge without `--rpc-url` needs it."),
    Setting("rpc_forward", "EXPLORERD_RPC_FORWARD", "rpc-forward",
            "eth_call,eth_estimateGas,eth_getBalance,eth_getTransactionCount,eth_getCode,eth_getStorageAt,"
            "eth_gasPrice,eth_maxPriorityFeePerGas,eth_feeHistory,eth_getTransactionByHash,"
            "eth_getTransactionReceipt,eth_getBlockReceipts,eth_getLogs,eth_sendRawTransaction",
            parse_methods, None,
            "JSON-RPC methods `/v1/rpc` forwards to the node (comma list; empty: none). Methods that sign, "
            "send or change state (`admin_*`, `debug_*`, `personal_*`, `miner_*`, `txpool_*`, `anvil_*`, "
            "`evm_*`, `hardhat_*`, `eth_sign*`, `eth_sendTransaction`, `eth_accounts`) are refused here."),
    Setting("rpc_forward_concurrency", "EXPLORERD_RPC_FORWARD_CONCURRENCY", "rpc-forward-concurrency", "8",
            parse_int, 1,
            "Calls of `/v1/rpc` clients in flight to the node at once, all clients together (its own "
            "connections, apart from the live-tail's); more wait in order. Each connection has at most 16."),
    Setting("rpc_pin_latest", "EXPLORERD_RPC_PIN_LATEST", "rpc-pin-latest", "on",
            parse_switch, None,
            "`on`: a forwarded call whose block is `latest` (or absent) reads the block explorerd last "
            "announced (EIP-1898 `{\"blockHash\": ...}`), so a client reacting to `newHeads` reads that "
            "block's state; `off`: as sent."),
    Setting("rpc_max_subscriptions", "EXPLORERD_RPC_MAX_SUBSCRIPTIONS", "rpc-max-subscriptions", "64",
            parse_int, 1,
            "Most `eth_subscribe` subscriptions one `/v1/rpc` connection may hold; one more is answered "
            "-32005 and the connection stays."),
    Setting("rpc_getlogs_range", "EXPLORERD_RPC_GETLOGS_RANGE", "rpc-getlogs-range", "1000",
            parse_int, 1,
            "Most blocks one forwarded `eth_getLogs` may span; a wider range is answered -32602."),
    Setting("max_catchup", "EXPLORERD_MAX_CATCHUP", "max-catchup", "1000",
            parse_int, 1,
            "Most blocks published to catch up (after a restart or an outage); further behind, "
            "the tail jumps to the head with a logged warning."),
    Setting("max_reorg_depth", "EXPLORERD_MAX_REORG_DEPTH", "max-reorg-depth", "64",
            parse_int, 1,
            "How far back the tail walks to find the common ancestor of a reorg."),
    Setting("max_lag", "EXPLORERD_MAX_LAG", "max-lag", "10",
            parse_int, 0,
            "Blocks behind the node's head after which /healthz says degraded."),
    Setting("state_dir", "EXPLORERD_STATE_DIR", "state-dir", "explorerd-state",
            parse_path, None,
            "Directory (relative to the working directory) where the last published blocks are "
            "kept, so a restart resumes where it stopped. Empty: keep nothing."),
    Setting("web_root", "EXPLORERD_WEB_ROOT", "web-root", "",
            parse_directory, None,
            "Directory served at `/` (the dashboard). Empty: the dashboard installed with explorerd "
            "(`web/`)."),
    Setting("replay_block_time", "EXPLORERD_REPLAY_BLOCK_TIME", "replay-block-time", "2s",
            parse_duration, 0.01,
            "With no --rpc-url: how often the embedded replay node produces a block."),
    Setting("receipts", "EXPLORERD_RECEIPTS", "receipts", "auto",
            parse_receipts, None,
            "How the live-tail gets each block's receipts and logs: `auto` asks `eth_getBlockReceipts` "
            "and, if the node does not have it (method not found / invalid params), falls back for the "
            "rest of the run to `eth_getLogs` by block hash (logs only: receipt fields are then null); "
            "`block` requires `eth_getBlockReceipts`; `logs` only uses `eth_getLogs`; `off` fetches "
            "neither (no `logs` channel: subscribing to it gets `logs_unavailable`)."),
    Setting("source", "EXPLORERD_SOURCE", "source", "node",
            parse_source, None,
            "Where blocks come from: `node` tails a JSON-RPC node (`--rpc-url`, or the embedded replay "
            "node); `wamp` makes this an edge that subscribes to the topics of the router at "
            "`--wamp-router` and serves them to its own clients."),
    Setting("wamp_realm", "EXPLORERD_WAMP_REALM", "wamp-realm", "explorer",
            parse_uri, None,
            "Realm of the WAMP broker at `/v1/wamp`; a HELLO for another realm gets ABORT "
            "`wamp.error.no_such_realm`."),
    Setting("wamp_max_subscriptions", "EXPLORERD_WAMP_MAX_SUBSCRIPTIONS", "wamp-max-subscriptions", "8",
            parse_int, 1,
            "Most subscriptions one `/v1/wamp` session may hold (exact, prefix and wildcard together; "
            "subscribing again to one it holds is free); one more gets ERROR "
            "`explorer.error.too_many_subscriptions` and the session stays. A session gets an event once "
            "per subscription that matches it, so this also bounds how many copies of a topic's events "
            "one session can ask for."),
    Setting("wamp_router", "EXPLORERD_WAMP_ROUTER", "wamp-router", "",
            parse_ws_url, None,
            "A WAMP router (Crossbar.io) to join as a client, e.g. `ws://127.0.0.1:8088/ws`. With "
            "`--source node` every block, transaction and reorg is also published there; with "
            "`--source wamp` they are read from there. Empty: no router."),
    Setting("wamp_router_realm", "EXPLORERD_WAMP_ROUTER_REALM", "wamp-router-realm", "explorer",
            parse_uri, None,
            "Realm to join on `--wamp-router`."),
    Setting("wamp_router_authid", "EXPLORERD_WAMP_ROUTER_AUTHID", "wamp-router-authid", "explorerd",
            parse_text, None,
            "Authentication ID for ticket authentication on `--wamp-router`."),
    Setting("wamp_router_ticket", "EXPLORERD_WAMP_ROUTER_TICKET", "wamp-router-ticket", "",
            parse_text, None,
            "Ticket (shared secret) for `--wamp-router`; empty joins anonymously. Prefer the "
            "environment variable: options are visible in the process list.",
            secret=True),
    Setting("wamp_router_retry", "EXPLORERD_WAMP_ROUTER_RETRY", "wamp-router-retry", "10s",
            parse_duration, 0.01,
            "Longest wait between attempts to reconnect to `--wamp-router` (exponential backoff "
            "with jitter from 0.25 s)."),
    Setting("cors_origins", "API_CORS_ORIGINS", "cors-origins", "*",
            parse_origins, None,
            "Origins allowed to open a WebSocket (comma list, `*` for all); others get HTTP 403. "
            "Clients that send no Origin header (non-browsers) are always allowed."),
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


def settings_table():
    """The README's settings table (Markdown), one row per setting, in L{SETTINGS} order."""
    rows = ["| variable | option | default | what it does |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(empty)"
        rows.append(f"| `{s.env}` | `--{s.option}` | {default} | {s.doc} |")
    return "\n".join(rows) + "\n"


def _fieldsFromSettings(cls):
    """
    Make C{cls} a frozen dataclass with one field per row of L{SETTINGS},
    in their order: a setting is declared once, there.
    """
    cls.__annotations__ = {s.name: s.kind for s in SETTINGS}
    for s in SETTINGS:
        if s.secret:
            setattr(cls, s.name, dataclasses.field(repr=False))
    return dataclasses.dataclass(frozen=True)(cls)


@_fieldsFromSettings
class Config:
    """
    The daemon's settings, one attribute per L{Setting} (C{config.listen},
    C{config.max_connections}, ...), parsed and checked.
    """

    @classmethod
    def load(cls, environ=None, options=None):
        """
        Build a config from defaults, then C{environ}, then C{options}
        (a mapping of option name → string, C{None} meaning "not given").
        """
        environ = {} if environ is None else environ
        options = {} if options is None else options
        values = {}
        for s in SETTINGS:
            raw, source = s.default, "default"
            if environ.get(s.env) not in (None, ""):
                raw, source = environ[s.env], s.env
            if options.get(s.option) is not None:
                raw, source = options[s.option], "--" + s.option
            values[s.name] = _parse(s, raw, source)
        config = cls(**values)
        config.check()
        return config

    def check(self):
        """Settings that only make sense together; raises L{ConfigError}."""
        if self.rpc_ws_url and not self.rpc_url:
            raise ConfigError("invalid EXPLORERD_RPC_WS_URL: push needs the node's HTTP JSON-RPC too "
                              "(EXPLORERD_RPC_URL, --rpc-url http://host:port) for its calls")
        if self.source == "wamp" and not self.wamp_router:
            raise ConfigError("invalid EXPLORERD_SOURCE='wamp': an edge needs EXPLORERD_WAMP_ROUTER "
                              "(--wamp-router ws://host:port/path) to read blocks from")

    @classmethod
    def defaults(cls, **overrides):
        """Defaults with some values replaced; for tests and embedding."""
        config = cls.load({}, {})
        return config.replace(**overrides)

    def replace(self, **changes):
        """A copy with some values replaced (not parsed or checked: for tests and embedding)."""
        return dataclasses.replace(self, **changes)


def _parse(setting, raw, source):
    where = setting.env if source in ("default", setting.env) else source
    try:
        value = setting.parse(raw)
    except ValueError as e:
        raise ConfigError(f"invalid {where}={raw!r}: {e}") from None
    if setting.minimum is not None and value < setting.minimum:
        raise ConfigError(f"invalid {where}={raw!r}: must be at least {setting.minimum:g}")
    return value


if __name__ == "__main__":
    print(settings_table(), end="")  # python -m explorerd.config: the README's table
