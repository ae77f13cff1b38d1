"""
The wire shape of blocks, transactions and logs, from the node's JSON-RPC shape.

Clients get integers as JSON numbers, wei as decimal strings (they exceed
2**53, which JavaScript cannot hold exactly) and hashes, addresses and data
as lowercase 0x-hex.  A block that lacks a field we publish, or whose
receipts or logs are not its own, is refused here, before anything reaches
a client, so no client ever sees half a block or someone else's receipts.

A field that comes from a receipt is C{null} when the node gave no receipt
(C{--receipts logs} or C{off}, or a node without C{eth_getBlockReceipts}).
"""

import json
import re

from autobahn.websocket.protocol import PreparedMessage


class InvalidBlock(ValueError):
    """The node gave us a block, transaction, receipt or log we cannot publish."""


_HASH, _ADDRESS = 32, 20
# The one check of hex data: int(x, 16) would also take '_', '+', '-' and spaces.
_HEX = re.compile(r"0x[0-9a-f]*\Z")
_QUANTITY = re.compile(r"0[xX][0-9a-fA-F]{1,64}\Z")


def _quantity(obj, key, what, nullable=False):
    value = obj.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not _QUANTITY.match(value):
        raise InvalidBlock(f"{what} field {key!r} is not a hex quantity: {value!r:.80}")
    return int(value, 16)


def _wei(obj, key, what):
    """A nullable quantity of wei, as a decimal string."""
    value = _quantity(obj, key, what, nullable=True)
    return None if value is None else str(value)


def _hexdata(obj, key, what, size, nullable=False):
    """0x-hex of exactly C{size} bytes, lowercased."""
    value = obj.get(key)
    if value is None and nullable:
        return None
    if isinstance(value, str) and len(value) == 2 + 2 * size:
        value = value.lower()
        if _HEX.match(value):
            return value
    raise InvalidBlock(f"{what} field {key!r} is not a {size}-byte 0x-hex value: {value!r:.80}")


def _bytes(obj, key, what, default=None):
    """0x-hex data of any length (call data, log data), lowercased."""
    value = obj.get(key, default)
    if isinstance(value, str) and len(value) % 2 == 0:
        value = value.lower()
        if _HEX.match(value):
            return value
    raise InvalidBlock(f"{what} field {key!r} is not 0x-hex data: {value!r:.80}")


def block_data(block):
    """The C{data} of a C{newBlock} message, from the node's block (or header)."""
    if not isinstance(block, dict):
        raise InvalidBlock(f"block is not an object: {block!r:.80}")
    txs = block.get("transactions")
    if not isinstance(txs, list):
        raise InvalidBlock("block has no transactions list")
    gas_used = _quantity(block, "gasUsed", "block")
    base_fee = _quantity(block, "baseFeePerGas", "block", nullable=True)
    return {
        "height": _quantity(block, "number", "block"),
        "hash": _hexdata(block, "hash", "block", _HASH),
        "parent_hash": _hexdata(block, "parentHash", "block", _HASH),
        "tx_count": len(txs),
        "timestamp": _quantity(block, "timestamp", "block"),
        "miner": _hexdata(block, "miner", "block", _ADDRESS),
        "gas_used": gas_used,
        "gas_limit": _quantity(block, "gasLimit", "block"),
        "base_fee_per_gas": None if base_fee is None else str(base_fee),
        "size": _quantity(block, "size", "block", nullable=True),
        "burnt_fees_wei": None if base_fee is None else str(base_fee * gas_used),
    }


def tx_data(tx, position, block_height, block_hash, receipt=None, log_count=None):
    """
    C{(data, input)}: the C{data} of a C{newTx} message, and the
    transaction's call data (sent only to clients that ask for it).

    C{block_hash} and C{block_height} are the block's own: Polygon's
    state-sync pseudo-transactions have been seen carrying a sibling block's
    hash, and a client wants to know which block it came in.  C{receipt} is
    the node's receipt of this transaction (checked to be its own), or
    C{None}; C{log_count} counts its logs when only the logs are known.
    """
    if not isinstance(tx, dict):
        raise InvalidBlock(f"transaction {position} is not an object (was the block fetched without full transactions?)")
    what = f"transaction {position}"
    index = tx.get("transactionIndex")
    tx_hash = _hexdata(tx, "hash", what, _HASH)
    call = _bytes(tx, "input", what, default="0x")
    gas_price = _quantity(tx, "gasPrice", what, nullable=True)
    status = gas_used = fee = contract = None
    if receipt is not None:
        where = f"receipt {position}"
        if not isinstance(receipt, dict):
            raise InvalidBlock(f"{where} is not an object: {receipt!r:.80}")
        if _hexdata(receipt, "transactionHash", where, _HASH) != tx_hash:
            raise InvalidBlock(f"{where} is for transaction {receipt.get('transactionHash')}, not {tx_hash}")
        if _hexdata(receipt, "blockHash", where, _HASH) != block_hash:
            raise InvalidBlock(f"{where} is from block {receipt.get('blockHash')}, not {block_hash}")
        status = _quantity(receipt, "status", where, nullable=True)  # pre-Byzantium: a state root
        gas_used = _quantity(receipt, "gasUsed", where)
        effective = _quantity(receipt, "effectiveGasPrice", where, nullable=True)
        if effective is not None:
            gas_price = effective
        if gas_price is not None:
            fee = str(gas_used * gas_price)
        contract = _hexdata(receipt, "contractAddress", where, _ADDRESS, nullable=True)
        logs = receipt.get("logs")
        if not isinstance(logs, list):
            raise InvalidBlock(f"{where} has no logs list")
        log_count = len(logs)
    data = {
        "hash": tx_hash,
        "from_addr": _hexdata(tx, "from", what, _ADDRESS),
        "to_addr": _hexdata(tx, "to", what, _ADDRESS, nullable=True),
        "value_wei": str(_quantity(tx, "value", what)),
        "block_height": block_height,
        "block_hash": block_hash,
        "tx_index": position if index is None else _quantity(tx, "transactionIndex", what),
        "nonce": _quantity(tx, "nonce", what),
        "gas": _quantity(tx, "gas", what),
        "type": _quantity(tx, "type", what, nullable=True) or 0,
        "gas_price_wei": None if gas_price is None else str(gas_price),
        "max_fee_per_gas_wei": _wei(tx, "maxFeePerGas", what),
        "max_priority_fee_per_gas_wei": _wei(tx, "maxPriorityFeePerGas", what),
        "method_id": call[:10] if len(call) >= 10 else None,
        "input_size": (len(call) - 2) // 2,
        "status": status,
        "gas_used": gas_used,
        "fee_wei": fee,
        "contract_address": contract,
        "log_count": log_count,
    }
    return data, call


def log_data(log, what, block_hash, tx_hashes):
    """One log in the wire shape, checked to belong to the block (C{tx_hashes}: its transactions' hashes)."""
    if not isinstance(log, dict):
        raise InvalidBlock(f"{what} is not an object: {log!r:.80}")
    if _hexdata(log, "blockHash", what, _HASH) != block_hash:
        raise InvalidBlock(f"{what} is from block {log.get('blockHash')}, not {block_hash}")
    tx_hash = _hexdata(log, "transactionHash", what, _HASH)
    if tx_hash not in tx_hashes:
        raise InvalidBlock(f"{what} is for transaction {tx_hash}, which is not in block {block_hash}")
    topics = log.get("topics")
    if not isinstance(topics, list) or len(topics) > 4:
        raise InvalidBlock(f"{what} field 'topics' is not a list of at most 4 topics: {topics!r:.80}")
    return {
        "address": _hexdata(log, "address", what, _ADDRESS),
        "topics": [_hexdata({"topic": t}, "topic", what, _HASH) for t in topics],
        "data": _bytes(log, "data", what),
        "tx_hash": tx_hash,
        # As the node gives it: a Polygon state-sync transaction's own
        # transactionIndex has been seen to differ from its position.
        "tx_index": _quantity(log, "transactionIndex", what),
        "log_index": _quantity(log, "logIndex", what),
    }


def node_block(block, receipts=None, logs=None):
    """
    C{(block_data, [tx_data, ...], [log_data, ...] or None, [input, ...])}
    of a whole block as the node gives it (full transactions), with its
    receipts (C{eth_getBlockReceipts}, whose logs are the block's logs) or
    only its logs (C{eth_getLogs} by block hash), or neither (logs C{None}:
    unknown).  Raises L{InvalidBlock} if anything is missing or belongs to
    another block: every field is checked before any of it can be published.
    """
    data = block_data(block)
    height, block_hash = data["height"], data["hash"]
    txs = block["transactions"]
    if receipts is not None:
        if not isinstance(receipts, list) or len(receipts) != len(txs):
            n = len(receipts) if isinstance(receipts, list) else receipts
            raise InvalidBlock(f"block {height} has {len(txs)} transactions but {n!r:.40} receipts came")
        logs = [log for receipt in receipts if isinstance(receipt, dict) for log in receipt.get("logs") or ()]
    elif logs is not None and not isinstance(logs, list):
        raise InvalidBlock(f"the logs of block {height} are not a list: {logs!r:.80}")
    counts = None
    if receipts is None and logs is not None:
        counts = {}
        for log in logs:
            tx_hash = log.get("transactionHash") if isinstance(log, dict) else None
            if isinstance(tx_hash, str):
                counts[tx_hash.lower()] = counts.get(tx_hash.lower(), 0) + 1
    txs_data, inputs = [], []
    for i, tx in enumerate(txs):
        receipt = receipts[i] if receipts is not None else None
        tx_d, call = tx_data(tx, i, height, block_hash, receipt)
        if counts is not None:
            tx_d["log_count"] = counts.get(tx_d["hash"], 0)
        txs_data.append(tx_d)
        inputs.append(call)
    logs_data = None
    if logs is not None:
        tx_hashes = {tx["hash"] for tx in txs_data}
        logs_data = [log_data(log, f"log {i} of block {height}", block_hash, tx_hashes)
                     for i, log in enumerate(logs)]
    return data, txs_data, logs_data, inputs


# What geth leaves out of a newHeads header.
_NOT_IN_HEADER = frozenset(("transactions", "uncles", "size", "totalDifficulty", "withdrawals"))


def node_header(block):
    """The block's header as the node gave it, in geth's C{newHeads} shape (checked by L{node_block})."""
    return {k: v for k, v in block.items() if k not in _NOT_IN_HEADER}


def node_extras(block):
    """
    What a block has besides its header and transactions, as the node gave
    it (C{uncles}, C{size}, ...): with the header and the transaction
    hashes, the block as C{eth_getBlockByHash(hash, false)} answers it.
    """
    return {k: v for k, v in block.items() if k in _NOT_IN_HEADER and k != "transactions"}


# The wire shape, field by field: what an edge checks of what a router brings.

def _int(obj, key, what, nullable=False):
    value = obj.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidBlock(f"{what} field {key!r} is not an integer >= 0: {value!r:.80}")
    return value


def _decimal(obj, key, what, nullable=False):
    value = obj.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value.isdigit() or not value.isascii():
        raise InvalidBlock(f"{what} field {key!r} is not a decimal string: {value!r:.80}")
    return value


def _hash(obj, key, what, nullable=False):
    return _hexdata(obj, key, what, _HASH, nullable)


def _address(obj, key, what, nullable=False):
    return _hexdata(obj, key, what, _ADDRESS, nullable)


def _topics(obj, key, what, nullable=False):
    topics = obj.get(key)
    if not isinstance(topics, list) or len(topics) > 4:
        raise InvalidBlock(f"{what} field {key!r} is not a list of at most 4 topics: {topics!r:.80}")
    return [_hexdata({"topic": t}, "topic", what, _HASH) for t in topics]


def _data(obj, key, what, nullable=False):
    return _bytes(obj, key, what)


def _method(obj, key, what, nullable=False):
    return _hexdata(obj, key, what, 4, nullable=True)


# name -> (check, nullable)
BLOCK_FIELDS = {
    "height": (_int, False), "hash": (_hash, False), "parent_hash": (_hash, False),
    "tx_count": (_int, False), "timestamp": (_int, False), "miner": (_address, False),
    "gas_used": (_int, False), "gas_limit": (_int, False), "base_fee_per_gas": (_decimal, True),
    "size": (_int, True), "burnt_fees_wei": (_decimal, True), "log_count": (_int, True),
}
TX_FIELDS = {
    "hash": (_hash, False), "from_addr": (_address, False), "to_addr": (_address, True),
    "value_wei": (_decimal, False), "block_height": (_int, False), "block_hash": (_hash, False),
    "tx_index": (_int, False), "nonce": (_int, False), "gas": (_int, False), "type": (_int, False),
    "gas_price_wei": (_decimal, True), "max_fee_per_gas_wei": (_decimal, True),
    "max_priority_fee_per_gas_wei": (_decimal, True), "method_id": (_method, True),
    "input_size": (_int, False), "status": (_int, True), "gas_used": (_int, True),
    "fee_wei": (_decimal, True), "contract_address": (_address, True), "log_count": (_int, True),
}
LOG_FIELDS = {
    "address": (_address, False), "topics": (_topics, False), "data": (_data, False),
    "tx_hash": (_hash, False), "tx_index": (_int, False), "log_index": (_int, False),
}


def _fields(obj, table, what):
    if not isinstance(obj, dict):
        raise InvalidBlock(f"{what} is not an object")
    return {name: check(obj, name, what, nullable) for name, (check, nullable) in table.items()}


def wire_block(data, txs, logs=None):
    """
    C{(block_data, [tx_data, ...], [log_data, ...] or None, None)} checked
    and copied from the wire shape explorerd publishes (an edge's input,
    from the router), or L{InvalidBlock}: an edge publishes exactly what a
    tail would have, or nothing.  Fields we do not publish are dropped; call
    data does not travel through the router (an edge has none).
    """
    if not isinstance(txs, list):
        raise InvalidBlock("not a block as explorerd publishes it")
    block = _fields(data, BLOCK_FIELDS, "block")
    if len(txs) != block["tx_count"]:
        raise InvalidBlock(f"block {block['height']} says {block['tx_count']} transactions, {len(txs)} came")
    checked = []
    for position, tx in enumerate(txs):
        tx = _fields(tx, TX_FIELDS, f"transaction {position}")
        if tx["block_hash"] != block["hash"] or tx["block_height"] != block["height"]:
            raise InvalidBlock(f"transaction {tx['hash']} is not from block {block['hash']}")
        checked.append(tx)
    if (logs is None) != (block["log_count"] is None):
        raise InvalidBlock(f"block {block['height']} says {block['log_count']} logs, "
                           f"{'none' if logs is None else len(logs)} came")
    if logs is not None:
        if not isinstance(logs, list) or len(logs) != block["log_count"]:
            raise InvalidBlock(f"block {block['height']} says {block['log_count']} logs, {len(logs)} came")
        tx_hashes = {tx["hash"] for tx in checked}
        logs = [_fields(log, LOG_FIELDS, f"log {i}") for i, log in enumerate(logs)]
        for log in logs:
            if log["tx_hash"] not in tx_hashes:
                raise InvalidBlock(f"log {log['log_index']} is for transaction {log['tx_hash']}, "
                                   f"which is not in block {block['hash']}")
    return block, checked, logs, None


def address(value):
    """A 20-byte 0x-hex address, lowercased, or C{ValueError}."""
    return _hexdata({"address": value}, "address", "filter", _ADDRESS)


def topic(value):
    """A 32-byte 0x-hex topic, lowercased, or C{ValueError}."""
    return _hexdata({"topic": value}, "topic", "filter", _HASH)


def since(height, block_hash):
    """
    C{{"height", "hash"}} of the block a resuming client holds, or
    C{ValueError} saying what is wrong with it.
    """
    if not isinstance(height, int) or isinstance(height, bool) or height < 0:
        raise ValueError("height must be a block number (an integer >= 0)")
    try:
        return {"height": height, "hash": _hexdata({"hash": block_hash}, "hash", "since", _HASH)}
    except InvalidBlock:
        raise ValueError('hash must be "0x" followed by 64 hex digits') from None


def encode(message):
    """One compact UTF-8 JSON encoding, done once per event for every client."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def frame(payload, binary=False):
    """One WebSocket message holding C{payload}, framed once, as a server (unmasked, uncompressed)."""
    return PreparedMessage(payload, binary, False, True).payloadHybi


def tx_hash_data(tx):
    """A C{newTx} for clients that asked for C{hashes_only}."""
    return {"hash": tx["hash"], "block_height": tx["block_height"], "block_hash": tx["block_hash"],
            "tx_index": tx["tx_index"]}


def batch_data(block, txs, hashes_only=False):
    """The C{data} of a C{newTxs} message: one block's transactions in one frame."""
    data = {"block_height": block["height"], "block_hash": block["hash"]}
    if hashes_only:
        data["hashes"] = [tx["hash"] for tx in txs]
    else:
        data["txs"] = txs
    return data


def logs_data(block, logs, removed=False):
    """The C{data} of a C{logs} message: a block's logs that match a filter."""
    return {"block_height": block["height"], "block_hash": block["hash"], "removed": removed, "logs": logs}
