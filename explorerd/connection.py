"""
What every explorerd WebSocket connection does as a hub client, raw or WAMP.

Mixed into an Autobahn server protocol whose factory has C{hub} and
C{metrics}: pongs to the hub's pings are its sign of life for the sweep, and
the connection leaves the hub before either side's close frame goes out, so
no data frame ever follows a close frame; the slot is given back when the
connection is gone.
"""

import math
from types import FunctionType

from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol

from explorerd import parsecost
from explorerd.admission import TokenBucket

log = Logger()

# An answer counts against the message budget as one message per this many
# bytes it writes: a reply, an error or a pong is under 200 bytes, so even
# charged like this an answer buys far more bytes per token than any other
# message.  At the default 20 a second a loop of them gets at most 1.25 MiB/s.
BYTES_PER_MESSAGE = 64 * 1024

# A subscription's filters count as one message per this many addresses and
# topics they hold: checking and indexing them costs ~1 us each here (a
# 1,000-address filter ~0.9 ms, the largest, 6,000 entries, ~8 ms), where a
# small message costs ~45 us, frame included.  At most a burst: a loop of the
# largest costs ~2.7 ms of CPU a second (one every 3 s), not the ~160 ms it
# cost at one token each.
FILTER_ENTRIES_PER_MESSAGE = 40

# Closes Autobahn makes for what the client sent, as counted in explorer_websocket_errors_total.
_PROTOCOL_ERRORS = {1002: "protocol_error", 1007: "invalid_utf8", 1009: "message_too_big"}


class HubConnection:
    _explorer_client = None
    _explorer_ip = None
    _explorer_budget = None
    # What the message being handled paid in advance beyond its first token
    # (its parse cost): its filters, batch or answer draw on it first.
    _explorer_credit = 0

    def _withinBudget(self, hub, cost=1.0):
        """
        A L{TokenBucket} per connection: C{message_rate} messages a second in
        bursts of C{message_burst}.  One client flooding us with requests
        costs everyone CPU; past its budget it is closed, with the reason.
        Takes C{cost} tokens if there are that many; else takes none.
        """
        rate, burst = self.factory.messageRate, self.factory.messageBurst
        if not rate:
            return True
        now = hub.clock.seconds()
        if self._explorer_budget is None:
            self._explorer_budget = TokenBucket(burst, now)
        return self._explorer_budget.take(now, rate, burst, cost)

    def _payForMessage(self, client, payload, values):
        """
        Charge a message by what parsing it will cost (L{parsecost}: one
        message per 8 KiB and per 128 C{values(payload)}), before it is
        parsed: True, or False after closing the client.  What it paid
        beyond one message is credit that the same message's filters,
        batch or answer draw on first.  A message that counts as more than
        a burst could never be paid: it is closed with 1009, unparsed.
        """
        self._explorer_credit = 0
        factory = self.factory
        if not factory.messageRate:
            return True
        burst = factory.messageBurst
        cost, what = parsecost.cost(payload, values, burst)
        if cost > burst:
            most = int(burst)
            self._overBudget(client, f"message too big to parse: {what}; at most "
                                     f"{most * parsecost.BYTES_PER_MESSAGE} bytes and "
                                     f"{most * parsecost.VALUES_PER_MESSAGE} values", code=1009)
            return False
        if not self._withinBudget(client.hub, cost):
            counts = "" if cost == 1 else f"a message of {what} counts as {cost}; "
            self._overBudget(client, f"too many messages: {counts}{self._budgetText()}")
            return False
        self._explorer_credit = cost - 1
        return True

    def _takeMore(self, hub, n):
        """
        Take C{n} tokens beyond the one the message being handled paid,
        from its credit first: True, or False (and none taken).
        """
        credit = self._explorer_credit
        if n <= credit:
            self._explorer_credit = credit - n
            return True
        if self._withinBudget(hub, n - credit):
            self._explorer_credit = 0
            return True
        return False

    def _payForBytes(self, client, size, what, cap=None):
        """
        Charge an answer of C{size} bytes (a replay, a WAMP call's result)
        to the budget before any of it is written: one message per
        L{BYTES_PER_MESSAGE}, the request's own token included, at most the
        whole burst, so one full answer on a fresh connection always goes
        through while a loop of them is closed like any flood (C{cap}: at
        most that, where the connection's first messages cost more than
        one).  Closes the client and answers False when the budget cannot pay.
        """
        cost = math.ceil(size / BYTES_PER_MESSAGE)
        return self._payFor(client, cost, f"{what} of {size / 1048576:.1f} MiB", cap) is not None

    def _payForFilter(self, client, entries):
        """
        Charge a subscription's filters (C{entries} addresses and topics)
        before they are applied: one message per L{FILTER_ENTRIES_PER_MESSAGE},
        the request's own token included, at most the whole burst.  Returns
        the tokens taken besides the request's own (what a replay that
        follows may cost less), or C{None} when the budget cannot pay and
        the client is being closed.
        """
        cost = math.ceil(entries / FILTER_ENTRIES_PER_MESSAGE)
        return self._payFor(client, cost, f"a filter of {entries} addresses and topics")

    def _payFor(self, client, cost, what, cap=None):
        """
        Take C{cost} messages' worth of tokens (at least one, at most C{cap},
        by default the burst), the one the request paid included: the number
        taken besides it, or C{None} after closing the client.
        """
        if client.hub is None:
            return None  # closed meanwhile (earlier in its batch)
        if not self.factory.messageRate:
            return 0
        cap = self.factory.messageBurst if cap is None else cap
        cost = min(cap, max(1, cost))
        if self._takeMore(client.hub, cost - 1):  # the request paid its own token
            return cost - 1
        self._overBudget(client, f"too many messages: {what} counts as {cost:g}; {self._budgetText()}")
        return None

    def _budgetText(self):
        return f"the budget is {self.factory.messageRate:g} a second, bursts of {self.factory.messageBurst:g}"

    def _overBudget(self, client, reason, code=1008):
        """
        Close a client that went over its budget (or sent a message too big
        to parse, C{code} 1009), and stop reading from it:
        a flooder has usually sent far more than it was allowed before the
        close reaches it, and parsing all that (~45 us a frame, seconds of
        CPU for a few megabytes) would cost everyone else what the budget
        is there to save.  Its close frame goes out followed by our FIN, so
        the client sees the 1008 and its reason at once; its answer, behind
        what it flooded us with, is not read, and the connection is dropped
        at the close timeout.
        """
        log.info("client {client} from {peer} exceeded its message budget: {reason}",
                 client=client.id, peer=client.peer, reason=reason)
        # A 1009 is counted as message_too_big as it goes out.
        client.hub.close(client, code, reason, "message_budget" if code == 1008 else None)
        # Nor what is already read: the rest of this read (up to 64 KiB, some
        # 2,700 pipelined pings) is Autobahn's buffer, parsed after we return.
        self.data = b""
        transport = self.transport
        if transport is not None and not transport.disconnecting:
            # Not under TLS: it has no half-close of its own (the TCP one
            # would cut it short), and with its reads paused the close
            # frame did not reach the client.  There the rest of the flood
            # is read and dropped by Autobahn (we are closing) until the
            # client closes or the close timeout.
            if not isinstance(transport, TLSMemoryBIOProtocol):
                transport.pauseProducing()
                transport.loseWriteConnection()

    def onPong(self, payload):
        client = self._explorer_client
        if client is not None and client.hub is not None:
            client.hub.pong(client, payload)

    def onCloseFrame(self, code, reasonRaw):
        self._leaveHub(f"client closed the connection (code {code})")
        return super().onCloseFrame(code, reasonRaw)

    def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False):
        if not isReply and code in _PROTOCOL_ERRORS:
            self.factory.metrics.errors.labels(_PROTOCOL_ERRORS[code]).inc()
        self._leaveHub(f"closing with code {code}")
        return super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)

    def onClose(self, wasClean, code, reason):
        self._leaveHub(f"connection closed ({'clean' if wasClean else 'not clean'}, code {code}: {reason})")
        self.factory.hub.slots.release(self)

    def beginClose(self, code, reason):
        """
        Start the close handshake with C{code} (any code: Autobahn's
        C{sendClose} refuses 1001 and 1008); if the peer does not finish it
        within the shutdown timeout, the hub's sweep aborts the connection.
        """
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)
        if self.state != self.STATE_CLOSED:
            self.factory.hub.slots.closing(self)

    def _leaveHub(self, reason):
        client = self._explorer_client
        if client is not None and client.hub is not None:
            client.hub.detach(client, reason)


def configured_protocol(factory):
    """
    A subclass of C{factory.protocol} that carries the factory's protocol
    options as class attributes, for C{factory.protocol} to become.

    Autobahn copies some 30 options from the factory onto every connection
    and pretty-prints them for a debug line that is formatted whether or
    not anyone logs it: ~370 µs and ~2 KiB per connection, a quarter of a
    handshake's CPU, spent again on every refused one.  With the options on
    the class and nothing listed to copy, a connection reads them from the
    class (and can still override one for itself).
    """
    base = factory.protocol
    options = {}
    for name in base.CONFIG_ATTRS:
        value = getattr(factory, name)
        # A plain function as a class attribute would become a method.
        options[name] = staticmethod(value) if isinstance(value, FunctionType) else value
    return type(base.__name__, (base,), {"CONFIG_ATTRS": (), "__module__": base.__module__, **options})
