"""
Contracts that emit event logs, and one whose calls revert, deployed on an
anvil that a test started (L{tests.anvil.Anvil} or L{tests.anvil.blocking_anvil}).

Hand-written EVM bytecode, so no compiler is needed: the listings below are
the source, one instruction a line with its offset and, where it helps, the
stack after it (top of the stack on the right).

Both contracts run the same small interpreter over their calldata, a list of
records, each asking for one log::

    calldata = record*                 (no records: no logs)
    record   = n      (32-byte word)   number of topics, 0..4
               L      (32-byte word)   length of the data in bytes
               topic0 .. topic(n-1)    (32-byte words)
               data   (L bytes, zero-padded to a multiple of 32)

For each record it copies the data to memory and runs C{LOGn}; logs come out
in record order. At the end the B{Emitter} returns (status 1) and the
B{Reverter} reverts (status 0), which discards every log it made, so a
reverted transaction's receipt has no logs and C{eth_getLogs} never shows
them. L{encodeLogs} builds the calldata; L{Log} and L{transfer} describe the
logs.

L{Contracts} deploys both with C{eth_sendTransaction} from anvil's unlocked
dev accounts (creation transactions, so their receipts carry
C{contractAddress}), sends calls that emit or revert, mines, and replaces the
last blocks with C{anvil_reorg}. L{fetchBlock} reads one block's receipts
and logs back three ways (C{eth_getTransactionReceipt}, C{eth_getBlockReceipts},
C{eth_getLogs}) for comparison.

The C{rpc} these take is anything with C{call(method, params)} returning a
Deferred that fires with the JSON-RPC C{result}: L{explorerd.jsonrpc.JSONRPCClient}
under pytest-twisted, or L{BlockingRPC} in plain synchronous code (there, run
each coroutine with L{runBlocking}).

anvil must mine only on request (C{Anvil(reactor, no_mining=True)}): sends
queue transactions, L{Contracts.mine} seals them into one block, so a test
decides exactly which transactions share a block.

anvil 1.7.1 facts this relies on (checked against it):
  - C{eth_sendTransaction} without C{gas} estimates it, but when the estimate
    fails (a call that reverts) it silently uses the whole block gas limit
    (30M): such a transaction fits only into a block nothing else used gas
    in yet, so it lands a block later than the test meant. We always send an
    explicit C{gas} (L{gasFor}).
  - C{anvil_reorg [depth, [[tx, offset], ...]]} takes transaction objects
    (C{from} an unlocked account; anvil fills in nonce, fees and, if absent,
    gas, starting from the state at the fork point) or raw signed
    transactions (hex), puts each into the replacement block C{offset}
    (0 = the first replaced block) in list order, keeps the height and
    answers C{null}. It silently I{drops} a transaction it cannot include
    (e.g. a wrong nonce), so L{Contracts.reorg} checks that each one landed.
    It numbers one sender's transaction objects in block order from its
    nonce at the fork point, ignoring that sender's raw transactions: so in
    one reorg, keep each sender to objects only or raw only.
    The replaced blocks' transactions are gone: not re-queued, their
    receipts C{null}.
"""

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from twisted.internet import defer
from twisted.python.failure import Failure

from explorerd.jsonrpc import RPCError, RPCHTTPError, RPCProtocolError, RPCUnavailable
from tests.anvil import DEV_ACCOUNTS

# keccak256("Transfer(address,address,uint256)"), the ERC-20/721 Transfer event.
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"

# The Emitter's runtime code. Records are read at p; q is the next record.
EMITTER_RUNTIME = bytes.fromhex(
    "6000"  # 00  PUSH1 0x00         [p]  p = offset of the next record in calldata
    "5b"    # 02  JUMPDEST           loop: [p]
    "80"    # 03  DUP1               [p p]
    "36"    # 04  CALLDATASIZE       [p p size]
    "11"    # 05  GT                 [p size>p]
    "600d"  # 06  PUSH1 0x0d (body)
    "57"    # 08  JUMPI              [p]  another record? go to body
    "6000"  # 09  PUSH1 0x00         [p 0]  no more records: finish with no output
    "80"    # 0b  DUP1               [p 0 0]
    "f3"    # 0c  RETURN             success, no output (the Reverter has REVERT here)
    "5b"    # 0d  JUMPDEST           body: [p]
    "80"    # 0e  DUP1               [p p]
    "35"    # 0f  CALLDATALOAD       [p n]  n = number of topics (word 0 of the record)
    "81"    # 10  DUP2               [p n p]
    "6020"  # 11  PUSH1 0x20
    "01"    # 13  ADD                [p n p+32]
    "35"    # 14  CALLDATALOAD       [p n L]  L = data length in bytes (word 1)
    "81"    # 15  DUP2               [p n L n]
    "6005"  # 16  PUSH1 0x05
    "1b"    # 18  SHL                [p n L 32n]
    "83"    # 19  DUP4               [p n L 32n p]
    "6040"  # 1a  PUSH1 0x40
    "01"    # 1c  ADD                [p n L 32n p+64]  topics start at p+64
    "01"    # 1d  ADD                [p n L d]  d = p+64+32n: the data
    "81"    # 1e  DUP2               [p n L d L]
    "81"    # 1f  DUP2               [p n L d L d]
    "6000"  # 20  PUSH1 0x00         [p n L d L d 0]
    "37"    # 22  CALLDATACOPY       [p n L d]  memory[0:L] = calldata[d:d+L]
    "81"    # 23  DUP2               [p n L d L]
    "601f"  # 24  PUSH1 0x1f
    "01"    # 26  ADD                [p n L d L+31]
    "6005"  # 27  PUSH1 0x05
    "1c"    # 29  SHR
    "6005"  # 2a  PUSH1 0x05
    "1b"    # 2c  SHL                [p n L d ceil32(L)]
    "01"    # 2d  ADD                [p n L q]  q = next record
    "92"    # 2e  SWAP3              [q n L p]
    "82"    # 2f  DUP3               [q n L p n]
    "15"    # 30  ISZERO
    "6051"  # 31  PUSH1 0x51 (log0)
    "57"    # 33  JUMPI              [q n L p]  n == 0
    "82"    # 34  DUP3               [q n L p n]
    "6001"  # 35  PUSH1 0x01
    "14"    # 37  EQ
    "605c"  # 38  PUSH1 0x5c (log1)
    "57"    # 3a  JUMPI              [q n L p]  n == 1
    "82"    # 3b  DUP3               [q n L p n]
    "6002"  # 3c  PUSH1 0x02
    "14"    # 3e  EQ
    "606c"  # 3f  PUSH1 0x6c (log2)
    "57"    # 41  JUMPI              [q n L p]  n == 2
    "82"    # 42  DUP3               [q n L p n]
    "6003"  # 43  PUSH1 0x03
    "14"    # 45  EQ
    "6081"  # 46  PUSH1 0x81 (log3)
    "57"    # 48  JUMPI              [q n L p]  n == 3
    "82"    # 49  DUP3               [q n L p n]
    "6004"  # 4a  PUSH1 0x04
    "14"    # 4c  EQ
    "609b"  # 4d  PUSH1 0x9b (log4)
    "57"    # 4f  JUMPI              [q n L p]  n == 4
    "fe"    # 50  INVALID            n > 4: fail (the encoder never sends this)
    "5b"    # 51  JUMPDEST           log0: [q n L p]
    "81"    # 52  DUP2               [q n L p L]
    "6000"  # 53  PUSH1 0x00
    "a0"    # 55  LOG0               [q n L p]  LOG0(memory[0:L])
    "50"    # 56  POP
    "50"    # 57  POP
    "50"    # 58  POP                [q]
    "6002"  # 59  PUSH1 0x02 (loop)
    "56"    # 5b  JUMP               [q]  next record
    "5b"    # 5c  JUMPDEST           log1: [q n L p]
    "80"    # 5d  DUP1
    "6040"  # 5e  PUSH1 0x40
    "01"    # 60  ADD
    "35"    # 61  CALLDATALOAD       [q n L p t0]  t0 = word 2
    "82"    # 62  DUP3               [q n L p t0 L]
    "6000"  # 63  PUSH1 0x00
    "a1"    # 65  LOG1               [q n L p]  LOG1(memory[0:L], t0)
    "50"    # 66  POP
    "50"    # 67  POP
    "50"    # 68  POP                [q]
    "6002"  # 69  PUSH1 0x02 (loop)
    "56"    # 6b  JUMP               [q]  next record
    "5b"    # 6c  JUMPDEST           log2: [q n L p]
    "80"    # 6d  DUP1
    "6060"  # 6e  PUSH1 0x60
    "01"    # 70  ADD
    "35"    # 71  CALLDATALOAD       [q n L p t1]  t1 = word 3
    "81"    # 72  DUP2
    "6040"  # 73  PUSH1 0x40
    "01"    # 75  ADD
    "35"    # 76  CALLDATALOAD       [q n L p t1 t0]  t0 = word 2
    "83"    # 77  DUP4               [q n L p t1 t0 L]
    "6000"  # 78  PUSH1 0x00
    "a2"    # 7a  LOG2               [q n L p]  LOG2(memory[0:L], t0, t1)
    "50"    # 7b  POP
    "50"    # 7c  POP
    "50"    # 7d  POP                [q]
    "6002"  # 7e  PUSH1 0x02 (loop)
    "56"    # 80  JUMP               [q]  next record
    "5b"    # 81  JUMPDEST           log3: [q n L p]
    "80"    # 82  DUP1
    "6080"  # 83  PUSH1 0x80
    "01"    # 85  ADD
    "35"    # 86  CALLDATALOAD       [q n L p t2]  t2 = word 4
    "81"    # 87  DUP2
    "6060"  # 88  PUSH1 0x60
    "01"    # 8a  ADD
    "35"    # 8b  CALLDATALOAD       [q n L p t2 t1]  t1 = word 3
    "82"    # 8c  DUP3
    "6040"  # 8d  PUSH1 0x40
    "01"    # 8f  ADD
    "35"    # 90  CALLDATALOAD       [q n L p t2 t1 t0]  t0 = word 2
    "84"    # 91  DUP5               [q n L p t2 t1 t0 L]
    "6000"  # 92  PUSH1 0x00
    "a3"    # 94  LOG3               [q n L p]  LOG3(memory[0:L], t0, t1, t2)
    "50"    # 95  POP
    "50"    # 96  POP
    "50"    # 97  POP                [q]
    "6002"  # 98  PUSH1 0x02 (loop)
    "56"    # 9a  JUMP               [q]  next record
    "5b"    # 9b  JUMPDEST           log4: [q n L p]
    "80"    # 9c  DUP1
    "60a0"  # 9d  PUSH1 0xa0
    "01"    # 9f  ADD
    "35"    # a0  CALLDATALOAD       [q n L p t3]  t3 = word 5
    "81"    # a1  DUP2
    "6080"  # a2  PUSH1 0x80
    "01"    # a4  ADD
    "35"    # a5  CALLDATALOAD       [q n L p t3 t2]  t2 = word 4
    "82"    # a6  DUP3
    "6060"  # a7  PUSH1 0x60
    "01"    # a9  ADD
    "35"    # aa  CALLDATALOAD       [q n L p t3 t2 t1]  t1 = word 3
    "83"    # ab  DUP4
    "6040"  # ac  PUSH1 0x40
    "01"    # ae  ADD
    "35"    # af  CALLDATALOAD       [q n L p t3 t2 t1 t0]  t0 = word 2
    "85"    # b0  DUP6               [q n L p t3 t2 t1 t0 L]
    "6000"  # b1  PUSH1 0x00
    "a4"    # b3  LOG4               [q n L p]  LOG4(memory[0:L], t0, t1, t2, t3)
    "50"    # b4  POP
    "50"    # b5  POP
    "50"    # b6  POP                [q]
    "6002"  # b7  PUSH1 0x02 (loop)
    "56"    # b9  JUMP               [q]  next record
)

_RETURN, _REVERT, _END = 0xF3, 0xFD, 0x0C
assert EMITTER_RUNTIME[_END] == _RETURN

# The Reverter: the same code with REVERT(0,0) instead of RETURN(0,0) at 0x0c.
REVERTER_RUNTIME = EMITTER_RUNTIME[:_END] + bytes([_REVERT]) + EMITTER_RUNTIME[_END + 1 :]


def creationCode(runtime):
    """
    Init code that deploys C{runtime} (at most 255 bytes) unchanged.

    The constructor only copies the code after it into memory and returns it.
    """
    if not 0 < len(runtime) < 256:
        raise ValueError(f"runtime must be 1..255 bytes, got {len(runtime)}")
    prefix = bytes([0x60, len(runtime)]) + bytes.fromhex(
        #           00  PUSH1 len          [len]
        "80"    #   02  DUP1               [len len]
        "600b"  #   03  PUSH1 0x0b         [len len 11]  the runtime follows these 11 bytes
        "6000"  #   05  PUSH1 0x00         [len len 11 0]
        "39"    #   07  CODECOPY           [len]  memory[0:len] = code[11:11+len]
        "6000"  #   08  PUSH1 0x00         [len 0]
        "f3"    #   0a  RETURN             the deployed code is memory[0:len]
    )
    return prefix + runtime


# Logs and calldata ------------------------------------------------------------


def _bytesOf(value, what):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value[:2] in ("0x", "0X"):
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            pass
    raise ValueError(f"{what} must be bytes or 0x-prefixed hex, got {value!r}")


def word(value):
    """
    One 32-byte topic as JSON-RPC shows it (C{0x} and 64 lower-case hex digits).

    C{value} is an int (0 <= value < 2**256) or bytes / C{0x}-hex of at most
    32 bytes, left-padded with zeros: an address becomes the topic an indexed
    C{address} parameter gives.
    """
    if isinstance(value, bool):
        raise ValueError(f"a topic must be an int, bytes or hex, not {value!r}")
    if isinstance(value, int):
        if not 0 <= value < 2**256:
            raise ValueError(f"a topic must fit in 32 bytes, got {value}")
        raw = value.to_bytes(32, "big")
    else:
        raw = _bytesOf(value, "a topic")
        if len(raw) > 32:
            raise ValueError(f"a topic must be at most 32 bytes, got {len(raw)}")
    return "0x" + raw.rjust(32, b"\0").hex()


@dataclass(frozen=True)
class Log:
    """
    One log for the Emitter (or Reverter) to make: 0..4 topics and data.

    Topics are normalised with L{word}, data to bytes (C{0x}-hex accepted).
    """

    topics: tuple = ()
    data: bytes = b""

    def __post_init__(self):
        if isinstance(self.topics, (str, bytes, bytearray, int)):
            raise TypeError(f"topics is a sequence of topics, got {self.topics!r}")
        topics = tuple(word(t) for t in self.topics)
        if len(topics) > 4:
            raise ValueError(f"a log has at most 4 topics (LOG0..LOG4), got {len(topics)}")
        object.__setattr__(self, "topics", topics)
        object.__setattr__(self, "data", _bytesOf(self.data, "log data"))

    def expectedAt(self, address):
        """This log as the node reports it, in the fields L{logFields} keeps."""
        return {"address": address.lower(), "topics": list(self.topics), "data": "0x" + self.data.hex()}


def transfer(sender, recipient, amount):
    """An ERC-20 C{Transfer(from, to, value)}: both addresses indexed, the amount as data."""
    return Log((TRANSFER_TOPIC, sender, recipient), amount.to_bytes(32, "big"))


def logFields(rpcLog):
    """
    The part of a node's log that says what was logged (C{address},
    C{topics}, C{data}), without where (block, transaction, index).
    """
    return {"address": rpcLog["address"], "topics": rpcLog["topics"], "data": rpcLog["data"]}


def encodeLogs(logs):
    """The calldata (C{0x}-hex) that makes either contract emit C{logs}, in order."""
    out = bytearray()
    for log in logs:
        if not isinstance(log, Log):
            raise TypeError(f"expected a Log, got {log!r}")
        out += len(log.topics).to_bytes(32, "big")
        out += len(log.data).to_bytes(32, "big")
        for topic in log.topics:
            out += bytes.fromhex(topic[2:])
        out += log.data + b"\0" * (-len(log.data) % 32)
    return "0x" + out.hex()


def gasFor(logs):
    """
    A gas limit that surely covers one call emitting C{logs}, and not much more.

    Per transaction 21,000 plus calldata at the EIP-7623 floor price (up to
    40 a byte); per log 375 + 375 a topic + 8 a data byte, the copy and
    memory (under 4 a byte for small logs, quadratic beyond), and the
    interpreter's few dozen instructions. Rounded up generously: anvil
    refunds what is not used, but the block gas limit (30M) caps how many
    transactions share a block.
    """
    calldataBytes = sum(64 + 32 * len(log.topics) + len(log.data) + 31 for log in logs)
    gas = 50_000 + 40 * calldataBytes
    for log in logs:
        words = (len(log.data) + 31) // 32
        gas += 2_000 + 375 * len(log.topics) + 16 * len(log.data) + words * words // 512
    return gas


# Driving the contracts on anvil ---------------------------------------------------


class ReorgError(Exception):
    """An C{anvil_reorg} did not make the blocks that were asked for."""


class Contracts:
    """
    The Emitter and the Reverter, deployed on one anvil.

    Make one with C{await Contracts.deploy(rpc)}. C{emit}/C{revert} queue a
    call and fire with its transaction hash; C{mine} seals everything queued
    into one block. C{emitTx}/C{revertTx} build the same calls as transaction
    objects, for L{Contracts.reorg} or for a test's own C{eth_sendTransaction}.

    @ivar emitter: the Emitter's address.
    @ivar reverter: the Reverter's address.
    @ivar deployTxs: the two creation transactions' hashes (Emitter, Reverter),
        both mined in block C{deployBlock}.
    """

    def __init__(self, rpc, emitter, reverter, deployTxs, deployBlock, sender=DEV_ACCOUNTS[0]):
        self.rpc = rpc
        self.emitter = emitter
        self.reverter = reverter
        self.deployTxs = deployTxs
        self.deployBlock = deployBlock
        self.sender = sender

    def __repr__(self):
        return f"<Contracts emitter={self.emitter} reverter={self.reverter}>"

    @classmethod
    async def deploy(cls, rpc, sender=DEV_ACCOUNTS[0]):
        """
        Deploy both contracts in one new block, from the unlocked C{sender}.

        Refuses an anvil that automines: each send would make its own block
        (and, with automine, may return before that block exists).
        """
        if await rpc.call("anvil_getAutomine", []):
            raise ValueError(
                "Contracts needs an anvil that mines only on request: start it with "
                "no_mining=True (--no-mining) or call evm_setAutomine [false] first"
            )
        hashes = []
        for runtime in (EMITTER_RUNTIME, REVERTER_RUNTIME):
            tx = {"from": sender, "data": "0x" + creationCode(runtime).hex(), "gas": hex(200_000)}
            hashes.append(await rpc.call("eth_sendTransaction", [tx]))
        block = await _mine(rpc)
        addresses = []
        for txHash in hashes:
            receipt = await rpc.call("eth_getTransactionReceipt", [txHash])
            if receipt is None or receipt["status"] != "0x1" or not receipt["contractAddress"]:
                raise RuntimeError(f"deployment {txHash} failed: {receipt!r}")
            addresses.append(receipt["contractAddress"])
        return cls(rpc, addresses[0], addresses[1], tuple(hashes), block, sender)

    # Transactions ----------------------------------------------------------

    def emitTx(self, logs, sender=None, gas=None):
        """The transaction object of a call that makes the Emitter emit C{logs}."""
        return self._call(self.emitter, logs, sender, gas)

    def revertTx(self, logs=(), sender=None, gas=None):
        """The transaction object of a call that makes the Reverter emit C{logs}, then revert."""
        return self._call(self.reverter, logs, sender, gas)

    def _call(self, to, logs, sender, gas):
        logs = list(logs)
        return {
            "from": sender or self.sender,
            "to": to,
            "data": encodeLogs(logs),
            "gas": hex(gasFor(logs) if gas is None else gas),
        }

    async def send(self, tx):
        """C{eth_sendTransaction}; fires with the transaction hash (not yet mined)."""
        return await self.rpc.call("eth_sendTransaction", [tx])

    async def emit(self, logs, sender=None):
        """Queue a call that emits C{logs}; fires with its hash."""
        return await self.send(self.emitTx(logs, sender))

    async def revert(self, logs=(), sender=None):
        """Queue a call that emits C{logs} and then reverts (status 0, no logs); fires with its hash."""
        return await self.send(self.revertTx(logs, sender))

    async def mine(self):
        """Mine one block with every queued transaction; fires with its number."""
        return await _mine(self.rpc)

    async def sign(self, tx):
        """
        C{tx} signed by its (unlocked) C{from} account, as raw hex for
        C{anvil_reorg}. Give a C{nonce} valid at the fork point (anvil
        fills in the sender's I{current} nonce otherwise), and send nothing
        else from that account in the same reorg but raw transactions with
        the following nonces.
        """
        return await self.rpc.call("eth_signTransaction", [tx])

    # Reorgs -------------------------------------------------------------------

    async def reorg(self, depth, replacements):
        """
        Replace the last C{depth} blocks with as many new ones holding
        C{replacements}, C{[(tx, offset), ...]}: C{tx} a transaction object
        (such as L{emitTx}) or raw signed hex (L{sign}); C{offset} the
        replacement block it goes into, 0 for the oldest.

        Fires with the new transactions' hashes, in the order given. Fails
        with L{ReorgError} if anvil left one out (it does so silently).
        """
        replacements = [(tx, offset) for tx, offset in replacements]
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"reorg depth must be an int >= 1, got {depth!r}")
        for tx, offset in replacements:
            if not isinstance(offset, int) or not 0 <= offset < depth:
                raise ValueError(f"offset must be in 0..{depth - 1} for a depth-{depth} reorg, got {offset!r}")
            if not isinstance(tx, (dict, str)):
                raise TypeError(f"a replacement is a transaction object or raw signed hex, got {tx!r}")
        await self.rpc.call("anvil_reorg", [depth, [[tx, offset] for tx, offset in replacements]])
        head = int(await self.rpc.call("eth_blockNumber", []), 16)
        first = head - depth + 1
        blocks = [await self.rpc.call("eth_getBlockByNumber", [hex(first + i), True]) for i in range(depth)]
        taken = set()
        hashes = []
        for index, (tx, offset) in enumerate(replacements):
            if isinstance(tx, str):
                wanted = await self.rpc.call("web3_sha3", [tx])  # a tx hash is keccak256(raw)
                found = [t for t in blocks[offset]["transactions"] if t["hash"] == wanted]
            else:
                found = [t for t in blocks[offset]["transactions"] if _sameCall(tx, t)]
            found = [t["hash"] for t in found if t["hash"] not in taken]
            if not found:
                raise ReorgError(
                    f"anvil_reorg dropped replacement #{index} (for block {first + offset}): {tx!r}; "
                    "anvil leaves out, without an error, a transaction it cannot include "
                    "(a wrong nonce, too little gas or balance)"
                )
            taken.add(found[0])
            hashes.append(found[0])
        return hashes


def _sameCall(tx, mined):
    """Whether the mined transaction C{mined} is the transaction object C{tx}."""
    to = tx.get("to")
    return (
        mined["from"] == tx["from"].lower()
        and mined["to"] == (to.lower() if to else None)
        and mined["input"] == tx.get("data", tx.get("input", "0x")).lower()
    )


async def _mine(rpc):
    await rpc.call("evm_mine", [])
    return int(await rpc.call("eth_blockNumber", []), 16)


# Reading receipts and logs back ---------------------------------------------------


@dataclass(frozen=True)
class FetchedBlock:
    """
    One block's receipts and logs as anvil reports them, three ways, for
    comparing with each other and with what explorerd publishes.

    @ivar block: C{eth_getBlockByNumber(number, false)} (transaction hashes).
    @ivar receipts: C{eth_getTransactionReceipt} of each transaction, in block order.
    @ivar blockReceipts: C{eth_getBlockReceipts(block hash)}.
    @ivar logs: C{eth_getLogs({"blockHash": block hash})}.
    """

    block: dict
    receipts: list
    blockReceipts: list
    logs: list

    @property
    def receiptLogs(self):
        """The logs of all the receipts, in block order (what C{logs} should equal)."""
        return [log for receipt in self.receipts for log in receipt["logs"]]


async def fetchBlock(rpc, number):
    """
    Fetch block C{number} (int or tag) and its receipts and logs into a
    L{FetchedBlock}, or None if there is no such block.

    Receipts and logs are asked for by the block's I{hash}, so a reorg in
    between gives an error or C{null}, never a mix of two blocks.
    """
    block = await rpc.call("eth_getBlockByNumber", [hex(number) if isinstance(number, int) else number, False])
    if block is None:
        return None
    receipts = [await rpc.call("eth_getTransactionReceipt", [h]) for h in block["transactions"]]
    blockReceipts = await rpc.call("eth_getBlockReceipts", [block["hash"]])
    logs = await rpc.call("eth_getLogs", [{"blockHash": block["hash"]}])
    return FetchedBlock(block, receipts, blockReceipts, logs)


async def fetchLogs(rpc, fromBlock, toBlock, **criteria):
    """C{eth_getLogs} over blocks C{fromBlock}..C{toBlock} (ints or tags), plus C{address}/C{topics}."""

    def tag(n):
        return hex(n) if isinstance(n, int) else n

    query = {"fromBlock": tag(fromBlock), "toBlock": tag(toBlock), **criteria}
    return await rpc.call("eth_getLogs", [query])


# Plain synchronous use ----------------------------------------------------------


class BlockingRPC:
    """
    JSON-RPC over blocking HTTP, for code without a running reactor (with
    L{tests.anvil.blocking_anvil}). C{call} returns an already-fired
    Deferred, so the coroutines above finish at once under L{runBlocking}.
    Errors are explorerd.jsonrpc's, as with L{JSONRPCClient}.
    """

    def __init__(self, url, timeout=10.0):
        self.url = url
        self.timeout = timeout
        self._ids = 0

    def call(self, method, params=()):
        self._ids += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._ids, "method": method, "params": list(params)})
        request = urllib.request.Request(
            self.url, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as e:
            return defer.fail(RPCHTTPError(method, e.code, e.read()))
        except OSError as e:
            return defer.fail(RPCUnavailable(method, repr(e)))
        except ValueError as e:
            return defer.fail(RPCProtocolError(method, f"not JSON: {e}"))
        if not isinstance(answer, dict):
            return defer.fail(RPCProtocolError(method, f"not a JSON-RPC response: {answer!r}"))
        error = answer.get("error")
        if error is not None:
            return defer.fail(RPCError(method, error.get("code"), error.get("message"), error.get("data")))
        if "result" not in answer:
            return defer.fail(RPCProtocolError(method, f"no result in {answer!r}"))
        return defer.succeed(answer["result"])


def runBlocking(coroutine):
    """
    The result of one of this module's coroutines driven by a L{BlockingRPC}:
    C{runBlocking(Contracts.deploy(BlockingRPC(node.url)))}.
    """
    outcome = []
    defer.ensureDeferred(coroutine).addBoth(outcome.append)
    if not outcome:
        raise RuntimeError("the coroutine waited for something: runBlocking needs a BlockingRPC")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]
