"""
What parsing a client's message costs, known before it is parsed.

A small message costs ~45 us of CPU, frame included, and that is what one
token of the message budget stands for.  Parsing a big one can cost a
thousand times more: C{json.loads} takes ~80-126 ms for a mebibyte of
C{[[],[],...]} (a list each three bytes, and the garbage collector runs
over them), ~14 ms for one of C{[1,1,...]} or of 4,299-digit integers;
Autobahn's WAMP JSON decoder (Python's pure-Python scanner, so that it can
decode binary strings) ~300 ms for C{[1,1,...]}, MessagePack and CBOR
~240 ms for a mebibyte of one-byte empty arrays.  Charged one token each,
twenty such messages a second from one connection kept a core busy.

So a message counts as one message per L{BYTES_PER_MESSAGE} of it and one
per L{VALUES_PER_MESSAGE} values in it, whichever is more.  Values are
counted at C speed (~0.3 ms a mebibyte): in JSON each C{,} C{[} and C{{}
(strings included: an overcount no real client comes near), in a binary
format every byte (each byte of MessagePack or CBOR can be a value).  Per
message counted, the worst shapes measured here cost ~30-120 us to parse.

The largest message a client needs, a C{/v1/stream} subscribe with 6,000
addresses and topics (~420 KB of JSON), counts as ~52 at the default
sizes, within a burst; a message that counts as more than a burst could
never be paid for and is refused unparsed.
"""

import math

BYTES_PER_MESSAGE = 8 * 1024
VALUES_PER_MESSAGE = 128


def json_values(payload):
    """The values a JSON C{payload} may hold, over-counted: each C{,} C{[} and C{{}."""
    return len(payload) - len(payload.translate(None, b",[{"))


def byte_values(payload):
    """The values a MessagePack or CBOR C{payload} may hold: one a byte."""
    return len(payload)


def no_values(payload):
    """For a payload that is refused without being parsed."""
    return 0


def cost(payload, values, most):
    """
    C{(messages, what)}: what parsing C{payload} counts as (at least 1), and
    its size in words for a close reason.  Over C{most} by its size alone,
    its values are not counted.
    """
    size = len(payload)
    n = max(1, math.ceil(size / BYTES_PER_MESSAGE))
    if n > most:
        return n, f"{size} bytes"
    count = values(payload)
    return max(n, math.ceil(count / VALUES_PER_MESSAGE)), f"{size} bytes, {count} values"
