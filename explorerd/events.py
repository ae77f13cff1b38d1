"""
The wire shape of blocks and transactions, from the node's JSON-RPC shape.

Clients get integers as JSON numbers, wei as decimal strings (they exceed
2**53, which JavaScript cannot hold exactly) and hashes and addresses as
lowercase 0x-hex.  A block that lacks a field we publish is refused here,
before anything reaches a client, so no client ever sees half a block.
"""

import json
import re

from autobahn.websocket.protocol import PreparedMessage


class InvalidBlock(ValueError):
    """The node gave us a block or transaction we cannot publish."""


_HASH, _ADDRESS = 32, 20
# The one check of hex data: int(x, 16) would also take '_', '+', '-' and spaces.
_HEX = re.compile(r"0x[0-9a-f]*\Z")
_QUANTITY = re.compile(r"0[xX][0-9a-fA-F]{1,64}\Z")


def _quantity(obj, key, what):
    value = obj.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if not isinstance(value, str) or not _QUANTITY.match(value):
        raise InvalidBlock(f"{what} field {key!r} is not a hex quantity: {value!r:.80}")
    return int(value, 16)


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


def block_data(block):
    """The C{data} of a C{newBlock} message, from the node's block (or header)."""
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


def tx_data(tx, position, block_height, block_hash):
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
        "block_height": block_height,
        "block_hash": block_hash,
        "tx_index": position if index is None else _quantity(tx, "transactionIndex", what),
    }


def node_block(block):
    """
    C{(block_data, [tx_data, ...])} of a whole block as the node gives it
    (full transactions), or L{InvalidBlock}: every field of every
    transaction is checked before any of it can be published.
    """
    data = block_data(block)
    height, block_hash = data["height"], data["hash"]
    return data, [tx_data(tx, i, height, block_hash) for i, tx in enumerate(block["transactions"])]


def _int(obj, key, what):
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidBlock(f"{what} field {key!r} is not an integer >= 0: {value!r:.80}")
    return value


def _decimal(obj, key, what):
    value = obj.get(key)
    if not isinstance(value, str) or not value.isdigit() or not value.isascii():
        raise InvalidBlock(f"{what} field {key!r} is not a decimal string: {value!r:.80}")
    return value


def wire_block(data, txs):
    """
    C{(block_data, [tx_data, ...])} checked and copied from the wire shape
    explorerd publishes (an edge's input, from the router), or
    L{InvalidBlock}: an edge publishes exactly what a tail would have, or
    nothing.  Fields we do not publish are dropped.
    """
    if not isinstance(data, dict) or not isinstance(txs, list):
        raise InvalidBlock("not a block as explorerd publishes it")
    block = {
        "height": _int(data, "height", "block"),
        "hash": _hexdata(data, "hash", "block", _HASH),
        "parent_hash": _hexdata(data, "parent_hash", "block", _HASH),
        "tx_count": _int(data, "tx_count", "block"),
        "timestamp": _int(data, "timestamp", "block"),
        "miner": _hexdata(data, "miner", "block", _ADDRESS),
        "gas_used": _int(data, "gas_used", "block"),
    }
    if len(txs) != block["tx_count"]:
        raise InvalidBlock(f"block {block['height']} says {block['tx_count']} transactions, {len(txs)} came")
    checked = []
    for position, tx in enumerate(txs):
        what = f"transaction {position}"
        if not isinstance(tx, dict):
            raise InvalidBlock(f"{what} is not an object")
        if tx.get("block_hash") != block["hash"] or tx.get("block_height") != block["height"]:
            raise InvalidBlock(f"{what} {tx.get('hash')!r:.80} is not from block {block['hash']}")
        checked.append({
            "hash": _hexdata(tx, "hash", what, _HASH),
            "from_addr": _hexdata(tx, "from_addr", what, _ADDRESS),
            "to_addr": _hexdata(tx, "to_addr", what, _ADDRESS, nullable=True),
            "value_wei": _decimal(tx, "value_wei", what),
            "block_height": block["height"],
            "block_hash": block["hash"],
            "tx_index": _int(tx, "tx_index", what),
        })
    return block, checked


def address(value):
    """A 20-byte 0x-hex address, lowercased, or C{ValueError}."""
    return _hexdata({"address": value}, "address", "filter", _ADDRESS)


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
