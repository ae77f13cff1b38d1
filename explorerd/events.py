"""
The wire shape of blocks and transactions, from the node's JSON-RPC shape.

Clients get integers as JSON numbers, wei as decimal strings (they exceed
2**53, which JavaScript cannot hold exactly) and hashes and addresses as
lowercase 0x-hex.  A block that lacks a field we publish is refused here,
before anything reaches a client, so no client ever sees half a block.
"""

import json


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


def _hexdata(obj, key, what, nullable=False):
    value = obj.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value.startswith(("0x", "0X")):
        raise InvalidBlock(f"{what} field {key!r} is not 0x-hex: {value!r:.80}")
    value = value.lower()
    try:
        int(value[2:] or "0", 16)
    except ValueError:
        raise InvalidBlock(f"{what} field {key!r} is not 0x-hex: {value!r:.80}") from None
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
        "hash": _hexdata(block, "hash", "block"),
        "parent_hash": _hexdata(block, "parentHash", "block"),
        "tx_count": len(txs),
        "timestamp": _quantity(block, "timestamp", "block"),
        "miner": _hexdata(block, "miner", "block"),
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
        "hash": _hexdata(tx, "hash", what),
        "from_addr": _hexdata(tx, "from", what),
        "to_addr": _hexdata(tx, "to", what, nullable=True),
        "value_wei": str(_quantity(tx, "value", what)),
        "block_height": _quantity(block, "number", "block"),
        "block_hash": _hexdata(block, "hash", "block"),
        "tx_index": position if index is None else _quantity(tx, "transactionIndex", what),
    }


def encode(message):
    """One compact UTF-8 JSON encoding, done once per event for every client."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
