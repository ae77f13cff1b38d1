"""
What a block still owes its clients after its newBlock pass: their
transactions and logs, written in slices of the reactor's time.

At 10,000 clients that take every transaction as its own frame (~190
frames, ~70 KB a block) one block is ~700 MB of C{send()}; on 2 cores that
took 1.6 s, longer than the block time, and written in one go it held the
reactor past the next block: that block's newBlock waited behind it for
everyone, and the lag grew with every block.  Written in slices, the next
block's newBlock pass runs when the block comes, and the clients the
previous block has not reached by then are the ones this server cannot
serve at this rate: L{Owed.shed} hands them to the hub, which closes them
(1013, try again later, naming where to resume) instead of letting every
client fall behind.

Each client's share is kept on the client (C{client.owed}), so anything
else written to it first pays what it is owed (L{Owed.pay}): a client's
frames always arrive in the order they were published.
"""

import time
from collections import deque

# Longest one slice writes before the reactor gets a turn (and the next block its chance).
SLICE_SECONDS = 0.01
# A block whose publish began this long before the next block came and whose
# rest has not reached every client yet is overload: those not reached are
# shed.  Sooner, it is finished first: blocks that come together (a catch-up
# after a node outage, a batch of the live-tail) all go to everyone, in
# order, as before.
SHED_AFTER = 0.5
_CHECK_EVERY = 16


class Owed:
    """
    The unfinished rest of the newest block: clients in the order the
    passes reached them, each with its C{client.owed} list of
    C{(payload, counts)}.

    @param clock: an L{IReactorTime}; a slice that runs out of time goes on
        in C{clock.callLater(0, ...)}, after the reactor's I/O.
    @param send: C{send(client, owed)}: the hub's write of a client's
        C{[(payload, counts), ...]}, under the slow-client policy.
    @param done: C{done(entry, seconds)}, told when every client was paid.
    """

    def __init__(self, clock, send, done, slice_seconds=SLICE_SECONDS):
        self.clock = clock
        self._send = send
        self._done = done
        self.slice_seconds = slice_seconds
        self.entry = None
        self._clients = deque()
        self._started = None
        self._call = None

    def __len__(self):
        return len(self._clients)

    def age(self):
        """Seconds since the publish of the unfinished rest's block began; 0 when there is none."""
        return 0.0 if self.entry is None else time.perf_counter() - self._started

    def begin(self, entry, started):
        """
        Start collecting what C{entry} owes (the previous block's rest was
        shed or paid); its publish began at C{started} (C{time.perf_counter()}).
        """
        self.entry = entry
        self._started = started

    def owe(self, client, payload, counts):
        if not payload or client.hub is None:
            return
        if client.owed is None:
            client.owed = []
            self._clients.append(client)
        client.owed.append((payload, counts))

    def pay(self, client):
        """Write what C{client} is owed now (before anything else is written to it)."""
        owed, client.owed = client.owed, None
        if owed and client.hub is not None:
            self._send(client, owed)

    def forget(self, client):
        client.owed = None

    def run(self):
        """Pay clients in order for one slice; go on in the next reactor turn if time ran out."""
        self._call = None
        clients = self._clients
        deadline = time.perf_counter() + self.slice_seconds
        n = 0
        while clients:
            client = clients.popleft()
            if client.owed:
                self.pay(client)
            n += 1
            if n % _CHECK_EVERY == 0 and time.perf_counter() > deadline:
                break
        if clients:
            self._call = self.clock.callLater(0, self.run)
        else:
            self._finished()

    def shed(self):
        """
        The clients still owed (the server could not reach them before the
        next block), in the order they would have been paid; forgotten here.
        """
        self._cancel()
        shed = [client for client in self._clients if client.owed and client.hub is not None]
        for client in self._clients:
            client.owed = None
        self._clients.clear()
        self.entry = None
        return shed

    def finish(self):
        """Pay everyone now (the hub is stopping)."""
        self._cancel()
        while self._clients:
            client = self._clients.popleft()
            if client.owed:
                self.pay(client)
        if self.entry is not None:
            self._finished()

    def _finished(self):
        entry, self.entry = self.entry, None
        if entry is not None:
            self._done(entry, time.perf_counter() - self._started)

    def _cancel(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
