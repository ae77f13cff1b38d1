"""
The wire shape of blocks and transactions, from the node's JSON-RPC shape.

Clients get integers as JSON numbers, wei as decimal strings (they exceed
2**53, which JavaScript cannot hold exactly) and hashes and addresses as
lowercase 0x-hex.  A block that lacks a field we publish is refused here,
before anything reaches a client, so no client ever sees half a block.
"""

import json

from autobahn.websocket.protocol import PreparedMessage


class InvalidBlock(ValueError):
    """The node gave us a block or transaction we cannot publish."""


def _quantity(obj, key, what):
    value = obj.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if not isinstance(value, str) or not value.startswith(("0x", "0X")):
        raise InvalidBlock(f"{what} field {key!r} is not a hex quantity: {value!r:.80}")
    try:
        return int(value, 16)
    except ValueError:
        raise InvalidBlock(f"{what} field {key!r} is not a hex quantity: {value!r:.80}") from None


_HASH, _ADDRESS = 32, 20


def _hexdata(obj, key, what, size, nullable=False):
    """0x-hex of exactly C{size} bytes, lowercased."""
    value = obj.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, str) or len(value) != 2 + 2 * size or not value.startswith(("0x", "0X")):
        raise InvalidBlock(f"{what} field {key!r} is not a {size}-byte 0x-hex value: {value!r:.80}")
    value = value.lower()
    try:
        int(value[2:], 16)
    except ValueError:
        raise InvalidBlock(f"{what} field {key!r} is not a {size}-byte 0x-hex value: {value!r:.80}") from None
    return value


def block_data(block):
    """The C{data} of a C{newBlock} message."""
    if not isinstance(block, dict):
        raise InvalidBlock(f"block is not an object: {block!r:.80}")
    txs = block.get("transactions")
    if not isinstance(txs, list):
        raise InvalidBlock("block has no transactions list")
    return {
        "height": _quantity(block, "number", "block"),
        "hash": _hexdata(block, "hash", "block", _HASH),
        "parent_hash": _hexdata(block, "parentHash", "block", _HASH),
        "tx_count": len(txs),
        "timestamp": _quantity(block, "timestamp", "block"),
        "miner": _hexdata(block, "miner", "block", _ADDRESS),
        "gas_used": _quantity(block, "gasUsed", "block"),
    }


def tx_data(block, tx, position):
    """
    The C{data} of a C{newTx} message.

    C{block_hash} and C{block_height} are the block's own: Polygon's
    state-sync pseudo-transactions have been seen carrying a sibling block's
    hash, and a client wants to know which block it came in.
    """
    if not isinstance(tx, dict):
        raise InvalidBlock(f"transaction {position} is not an object (was the block fetched without full transactions?)")
    what = f"transaction {position}"
    index = tx.get("transactionIndex")
    return {
        "hash": _hexdata(tx, "hash", what, _HASH),
        "from_addr": _hexdata(tx, "from", what, _ADDRESS),
        "to_addr": _hexdata(tx, "to", what, _ADDRESS, nullable=True),
        "value_wei": str(_quantity(tx, "value", what)),
        "block_height": _quantity(block, "number", "block"),
        "block_hash": _hexdata(block, "hash", "block", _HASH),
        "tx_index": position if index is None else _quantity(tx, "transactionIndex", what),
    }


def encode(message):
    """One compact UTF-8 JSON encoding, done once per event for every client."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def frame(payload):
    """Frame a UTF-8 text payload once, as a server (unmasked, uncompressed)."""
    return PreparedMessage(payload, False, False, True).payloadHybi


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
