"""
The raw WebSocket protocol at C{/v1/stream}.

Wire protocol (JSON text frames)::

    client → server
      {"action": "subscribe",   "channels": ["newBlocks", "newTxs", "logs"]}
          optional: "since": {"height": H, "hash": "0x…"}   resume after the block held
                    "batch": true         newTxs as one {"type": "newTxs"} frame per block
                    "hashes_only": true   newTx data reduced to hash, block and index
                    "input": true         newTx data with the call data ("input")
                    "filter": {"addresses": ["0x…", …]}   only txs from/to these (≤ 1000)
                    "logs": {"address": …, "topics": […]}  which logs (eth_getLogs' filter)
      {"action": "unsubscribe", "channels": ["newBlocks"]}
      {"action": "ping"}

    server → client
      {"type": "subscribed",   "channels": [...]}   the client's channels after the change
      {"type": "unsubscribed", "channels": [...]}
      {"type": "pong"}
      {"type": "newBlock", "data": {"height", "hash", "parent_hash", "tx_count",
                                    "timestamp", "miner", "gas_used", "gas_limit",
                                    "base_fee_per_gas", "size", "burnt_fees_wei", "log_count"}}
      {"type": "newTx",    "data": {"hash", "from_addr", "to_addr", "value_wei",
                                    "block_height", "block_hash", "tx_index", "nonce",
                                    "gas", "type", "gas_price_wei", "max_fee_per_gas_wei",
                                    "max_priority_fee_per_gas_wei", "method_id",
                                    "input_size", "status", "gas_used", "fee_wei",
                                    "contract_address", "log_count"}}
      {"type": "newTxs",   "data": {"block_height", "block_hash", "txs": [...] | "hashes": [...]}}
      {"type": "logs",     "data": {"block_height", "block_hash", "removed",
                                    "logs": [{"address", "topics", "data", "tx_hash",
                                              "tx_index", "log_index"}, ...]}}
      {"type": "reorg",    "data": {"depth", "common_ancestor": {"height", "hash"},
                                    "removed": [{"height", "hash"}, ...]}}
      {"type": "error", "error": {"code": "...", "message": "..."}}

A C{logs} subscriber gets one message per block with a matching log; after
a C{reorg}, the logs of each removed block it had been sent again with
C{"removed": true}, newest block first, then the new branch.

Error codes: C{invalid_json}, C{invalid_message}, C{unknown_action},
C{unknown_channel}, C{binary_not_supported}, C{logs_unavailable},
C{history_unavailable} (with
C{oldest_height}; also when C{since} names a block we hold at another
height).  An error never disconnects;
valid channels in a message that also names unknown ones are applied, and
the client gets the error and then the C{subscribed} answer.

Close codes: 1001 server shutting down, 1008 too slow (queue full or not
reading) or over the message budget, 1009 message too big, 1007 invalid UTF-8.

The message budget is a token bucket per connection (C{message_rate} a
second, bursts of C{message_burst}).  A message costs one token, or
more by what parsing it costs (L{explorerd.parsecost}: one per 8 KiB and
per 128 JSON values, counted before it is parsed; one that would cost more
than a burst is closed with 1009 unparsed).  A subscribe with filters
costs one per L{FILTER_ENTRIES_PER_MESSAGE} addresses and topics in them,
and one with C{since} one per L{BYTES_PER_MESSAGE} of frames its replay
writes (what the subscribe paid to be parsed included, at least one),
filters and replay together at most the whole burst, so that one full subscribe on a fresh connection always goes
through while a loop of them is closed like any flood.  The cost is known
before anything is applied or sent (L{History.replay_size}); a filter or
replay the budget cannot pay is not applied or sent.

Close codes also: 1008 C{no subscription within …s} for a connection that
held no subscription for C{subscribe_timeout} (L{explorerd.idle}).
"""

import json

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.logger import Logger

from explorerd import events, parsecost
from explorerd.connection import HubConnection, configured_protocol
from explorerd.hub import CHANNELS, TxOptions
from explorerd.logfilter import LogFilter

MAX_FILTER_ADDRESSES = 1000


_SHOWN = 5  # unknown channel names echoed back in an error, at most


def _short(value, limit=64):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


log = Logger()


def _since(value):
    """A valid C{since} as C{{"height": int, "hash": str}}, or None."""
    if not isinstance(value, dict):
        return None
    try:
        return events.since(value.get("height"), value.get("hash"))
    except ValueError:
        return None


def _tx_options(message):
    """C{(TxOptions or None, problem or None)} from a subscribe message's newTxs options."""
    batch, hashes_only, flt = message.get("batch"), message.get("hashes_only"), message.get("filter")
    call = message.get("input")
    if batch is None and hashes_only is None and flt is None and call is None:
        return None, None
    for name, value in (("batch", batch), ("hashes_only", hashes_only), ("input", call)):
        if value is not None and not isinstance(value, bool):
            return None, f'"{name}" must be true or false'
    addresses = None
    if flt is not None:
        raw = flt.get("addresses") if isinstance(flt, dict) else None
        if not isinstance(raw, list) or not raw or len(raw) > MAX_FILTER_ADDRESSES:
            return None, (f'"filter" must be {{"addresses": [...]}} with 1 to {MAX_FILTER_ADDRESSES} '
                          "addresses")
        addresses = set()
        for a in raw:
            try:
                addresses.add(events.address(a))
            except ValueError:
                return None, f"filter address {_short(a)!r} is not a 20-byte 0x-hex address"
    return TxOptions(batch=bool(batch), hashes_only=bool(hashes_only), addresses=addresses, input=bool(call)), None


def _describe(options):
    described = {}
    if options.batch:
        described["batch"] = True
    if options.hashes_only:
        described["hashes_only"] = True
    if options.input and not options.hashes_only:
        described["input"] = True
    if options.addresses:
        described["filter"] = {"addresses": len(options.addresses)}
    return described


class StreamProtocol(HubConnection, WebSocketServerProtocol):
    """One raw WebSocket client."""

    def onConnect(self, request):
        self._explorer_ip = self.factory.admission.admit(self, request)
        return None

    def onOpen(self):
        hub = self.factory.hub
        self._explorer_client = hub.attach(self, self._explorer_ip, "websocket")
        log.info("client {client} connected from {peer}",
                      client=self._explorer_client.id, peer=self._explorer_ip)

    def onMessage(self, payload, isBinary):
        client = self._explorer_client
        if client is None or client.hub is None:
            return
        self.factory.metrics.messages_received.inc()
        # Paid for by what parsing it costs, before it is parsed (a binary
        # frame is not parsed: its size only).
        if not self._payForMessage(client, payload, parsecost.no_values if isBinary else parsecost.json_values):
            return
        try:
            self._received(client.hub, client, payload, isBinary)
        finally:
            self._explorer_credit = 0  # a resume that waits for the history pays anew

    def _received(self, hub, client, payload, isBinary):
        if isBinary:
            return self._error(client, "binary_not_supported", "send JSON text frames, not binary")
        try:
            message = json.loads(payload)
        except (ValueError, RecursionError):
            return self._error(client, "invalid_json", "message is not valid JSON")
        if not isinstance(message, dict):
            return self._error(client, "invalid_message", "message must be a JSON object")
        action = message.get("action")
        if not isinstance(action, str):
            return self._error(client, "invalid_message", 'message needs an "action" string')
        handler = self._actions.get(action)
        if handler is None:
            return self._error(client, "unknown_action",
                               f"unknown action {_short(action)!r}; expected subscribe, unsubscribe or ping")
        handler(self, hub, client, message)

    def _subscribe(self, hub, client, message):
        since = message.get("since")
        if since is not None:
            since = _since(since)
            if since is None:
                return self._error(client, "invalid_message",
                                   '"since" must be {"height": <block number>, "hash": "0x<64 hex digits>"}')
            # After a restart the live-tail gives the hub its history back
            # before it publishes anything: a resume waits for that (its
            # subscribe deadline starting again meanwhile).
            hub.madeRequest(client)
            return hub.whenResumable(lambda: self._subscribeNow(hub, client, message, since))
        self._subscribeNow(hub, client, message, None)

    def _subscribeNow(self, hub, client, message, since):
        if client.hub is None:
            return  # gone while it waited
        options, problem = _tx_options(message)
        if problem:
            return self._error(client, "invalid_message", problem)
        log_filter = None
        if message.get("logs") is not None:
            try:
                log_filter = LogFilter.parse(message["logs"])
            except ValueError as e:
                return self._error(client, "invalid_message", str(e))
        entries = (len(options.addresses) if options is not None and options.addresses else 0) + \
            (log_filter.size if log_filter is not None else 0)
        paid = self._payForFilter(client, entries)
        if paid is None:
            return
        channels = self._changeChannels(hub, client, message, "subscribed", options, log_filter)
        if channels is None:
            return
        answer = {"type": "subscribed", "channels": channels}
        if "newTxs" in channels and options is not None:
            answer.update(_describe(options))
        if "logs" in channels and log_filter is not None and not log_filter.everything:
            answer["logs"] = log_filter.describe()
        if since is None:
            return hub.sendTo(client, answer)

        def announce(n):
            hub.sendTo(client, dict(answer, replayed=n))

        history = hub.history
        status, known, _ = history.resume(since["height"], since["hash"])
        if status == "ok":
            if not self._payForReplay(hub, client, known["height"], paid):
                return
            if hub.replay(client, since, announce) is not None:
                return
        if status == "mismatch":
            # Which half of a contradictory since is right?  A guess could
            # double or skip blocks: the client fills the gap as for any other.
            why = (f"that hash is block {known['height']} here, not {since['height']} "
                   "(send the height and hash of the same block)")
        else:
            why = "it is older than the history kept, or not a block this server published"
        oldest = history.oldest
        self._error(client, "history_unavailable",
                    f"cannot resume after block {since['height']} {since['hash']}: {why}; live data follows",
                    oldest_height=None if oldest is None else oldest.height)
        announce(0)

    def _payForReplay(self, hub, client, height, paid=0):
        """
        Charge a replay of everything above C{height} to the client's
        budget, before any of it is written (the hub writes it in this same
        reactor turn); close the client instead if the budget cannot pay.
        The subscribe's filter and its replay together cost at most a
        burst (C{paid}: what the filter took besides the subscribe's token).
        """
        blocks = "newBlocks" in client.channels
        mode = client.tx_options.mode if "newTxs" in client.channels else None
        size = hub.history.replay_size(height, blocks, mode, "logs" in client.channels)
        return self._payForBytes(client, size, "a replay", cap=max(1, self.factory.messageBurst - paid))

    def _unsubscribe(self, hub, client, message):
        for key in ("since", "batch", "filter", "hashes_only", "input", "logs"):
            if message.get(key) is not None:
                return self._error(client, "invalid_message", f'"{key}" belongs to subscribe')
        channels = self._changeChannels(hub, client, message, "unsubscribed", None)
        if channels is not None:
            hub.sendTo(client, {"type": "unsubscribed", "channels": channels})

    def _changeChannels(self, hub, client, message, answer, options, log_filter=None):
        """Apply a (un)subscription; returns the client's channels after it, or None."""
        channels = message.get("channels")
        if not isinstance(channels, list) or not channels:
            return self._error(client, "invalid_message", '"channels" must be a non-empty list of channel names')
        known, unknown = [], []
        for name in channels:
            (known if isinstance(name, str) and name in CHANNELS else unknown).append(name)
        if unknown:
            shown = ", ".join(repr(_short(u)) for u in unknown[:_SHOWN])
            more = f" and {len(unknown) - _SHOWN} more" if len(unknown) > _SHOWN else ""
            self._error(client, "unknown_channel",
                        f"unknown channel {shown}{more}; channels are {', '.join(CHANNELS)}")
            if not known:
                return
        if options is not None and "newTxs" not in known:
            return self._error(client, "invalid_message",
                               '"batch", "filter", "hashes_only" and "input" apply to the newTxs channel')
        if log_filter is not None and "logs" not in known:
            return self._error(client, "invalid_message", '"logs" (a filter) applies to the logs channel')
        if answer == "subscribed" and "logs" in known and not self.factory.logsAvailable:
            self._error(client, "logs_unavailable",
                        "this server does not fetch logs (EXPLORERD_RECEIPTS=off); the logs channel is off")
            known.remove("logs")
            if not known:
                return
        if answer == "subscribed":
            now = hub.subscribe(client, known, options, log_filter)
        else:
            now = hub.unsubscribe(client, known)
        log.info("client {client} {answer} {channels}", client=client.id, answer=answer, channels=now)
        return now

    def _ping(self, hub, client, message):
        hub.sendTo(client, {"type": "pong"})

    _actions = {"subscribe": _subscribe, "unsubscribe": _unsubscribe, "ping": _ping}

    def _error(self, client, code, text, **details):
        self.factory.metrics.errors.labels(code).inc()
        log.info("client {client} error {code}: {text}", client=client.id, code=code, text=text)
        client.hub.sendTo(client, {"type": "error", "error": {"code": code, "message": text, **details}})


class StreamFactory(WebSocketServerFactory):
    """Builds L{StreamProtocol}s that share one hub, admission policy and metrics."""

    protocol = StreamProtocol

    def __init__(self, hub, admission, metrics, config, url=None):
        super().__init__(url)
        self.hub = hub
        self.admission = admission
        self.metrics = metrics
        # An edge serves what its router brings; a tail, what it fetches.
        self.logsAvailable = config.source == "wamp" or config.receipts != "off"
        apply_limits(self, config)


def apply_limits(factory, config):
    """The Autobahn options and limits every explorerd WebSocket factory shares."""
    factory.messageRate = float(config.message_rate)
    factory.messageBurst = float(config.message_burst)
    factory.setProtocolOptions(
        maxFramePayloadSize=config.max_message_size,
        maxMessagePayloadSize=config.max_message_size,
        # Send 1009 and friends as close frames instead of dropping the TCP.
        failByDrop=False,
        # The hub's sweep pings everyone; no per-connection timers.
        autoPingInterval=0,
        openHandshakeTimeout=config.handshake_timeout,
        closeHandshakeTimeout=config.shutdown_timeout,
        trustXForwardedFor=config.trusted_proxies,
        # Origins are checked by our admission policy (with a 403).
        allowedOrigins=["*"],
        allowNullOrigin=True,
        perMessageCompressionAccept=lambda offers: None,
    )
    factory.protocol = configured_protocol(factory)
