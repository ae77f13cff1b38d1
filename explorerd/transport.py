"""
The TCP transport explorerd's listener hands out: sized buffers, a bound
on what the kernel holds unsent, and writes that go straight to the socket
when nothing is waiting.
"""

import socket
from errno import EAGAIN, EINTR, ENOBUFS, EWOULDBLOCK

from twisted.internet import main, tcp
from twisted.internet.interfaces import IReadDescriptor
from twisted.protocols.policies import ProtocolWrapper
from twisted.logger import Logger

_RETRY_LATER = (EWOULDBLOCK, EAGAIN, EINTR, ENOBUFS)

# Linux and macOS; None where the platform has no such option.
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", None)

log = Logger()

# Most bytes one readiness event reads from a client, however small the read size.
READ_PER_EVENT = 65536


class SizedServer(tcp.Server):
    """
    A TCP connection with the configured buffer sizes, that writes through.

    Twisted uses one attribute, C{bufferSize}, both as the size of a socket
    read and as the unsent-bytes mark at which it pauses a producer;
    explorerd sets them apart: C{WEBSOCKET_READ_BUFFER_SIZE} and
    C{WEBSOCKET_WRITE_BUFFER_SIZE}.

    Twisted buffers every write until the reactor reports the socket
    writable: two C{epoll_ctl} calls and a reactor pass per client per
    broadcast.  When nothing is waiting in our buffer, we C{send()} at once
    instead, and only what the kernel does not take is buffered the usual
    way (which also pauses a streaming producer, as before).  A fan-out to
    10,000 clients becomes 10,000 C{send()} calls in one pass.
    """

    readSize = 65536
    unsentLimit = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.unsentLimit:
            limitUnsent(self.socket, self.unsentLimit)

    def _nothingWaiting(self):
        """Whether a write can go straight to the socket: nothing buffered, and the connection open."""
        return (self.offset == len(self.dataBuffer) and not self._tempDataLen
                and self.connected and not self.disconnecting and not self._writeDisconnected)

    def write(self, data):
        if data and self._nothingWaiting():
            try:
                sent = self.socket.send(data)
            except OSError as e:
                # A real error is found again, and reported, by the buffered path.
                sent = 0 if e.args[0] in _RETRY_LATER else -1
            if sent == len(data):
                return
            if sent > 0 and len(data) - sent > self.bufferSize:
                # The rest waits, and we will be paused: keep the payload
                # itself (one broadcast's bytes, shared with every other
                # client) and where we are in it, not a copy of the rest per
                # client that stopped reading.
                self.dataBuffer, self.offset = data, sent
                self._maybePauseProducer()
                self.startWriting()
                return
            if sent > 0:
                data = data[sent:]
        super().write(data)

    def writeSequence(self, iovec):
        """
        Several payloads in one C{sendmsg()} when nothing is waiting (a
        block's transactions and its read probe): one system call, and no
        copy of the shared payloads into one per client.
        """
        if iovec and self._nothingWaiting():
            try:
                sent = self.socket.sendmsg(iovec)
            except OSError as e:
                sent = 0 if e.args[0] in _RETRY_LATER else -1
            if sent >= 0:
                for i, data in enumerate(iovec):
                    if sent >= len(data):
                        sent -= len(data)
                        continue
                    # As in write(): keep the shared payload and where we are in it.
                    self.dataBuffer, self.offset = data, sent
                    rest = iovec[i + 1:]
                    if rest:
                        super().writeSequence(rest)
                    else:
                        self._maybePauseProducer()
                        self.startWriting()
                    return
                return
        super().writeSequence(iovec)

    def doRead(self):
        """
        Read what is there in C{recv()}s of at most C{readSize}, up to
        C{READ_PER_EVENT} bytes, and hand it over at once: with the 1 KiB
        default, one reactor pass and one parse per KiB made a client
        sending a 1 MiB message (to be refused with 1009) cost six times
        the CPU, and twenty of them at once took 0.75 s instead of 0.12 s.
        """
        size = self.readSize
        chunks = []
        total = 0
        end = None
        while True:
            try:
                data = self.socket.recv(size)
            except OSError as se:
                if se.args[0] not in (EWOULDBLOCK, EAGAIN, EINTR):
                    end = main.CONNECTION_LOST
                break
            if not data:
                end = main.CONNECTION_DONE
                break
            chunks.append(data)
            total += len(data)
            if len(data) < size or total >= READ_PER_EVENT:
                break
        if chunks:
            result = self._dataReceived(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            if result is not None or self.disconnected or self.disconnecting:
                return result
        return end


def limitUnsent(sock, limit):
    """
    Let the kernel hold at most about C{limit} bytes of C{sock}'s that it
    has not sent yet (C{TCP_NOTSENT_LOWAT}): past that, C{send()} takes no
    more and Twisted pauses the producer.  Unlike a smaller C{SO_SNDBUF},
    it leaves the bytes in flight (what a long fast link needs) to the
    kernel's autotuning; a peer that stops reading closes its window, so
    what we hold for it is about C{limit}, not megabytes.
    """
    if TCP_NOTSENT_LOWAT is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, limit)
    except OSError as e:
        # Not TCP after all, or an old kernel: the connection works as before.
        log.debug("could not limit unsent bytes: {error}", error=e)


def readPending(transport):
    """
    Read now what a connection's peer has sent and the reactor has not read
    yet (through TLS if the transport is), as the reactor would.  The end
    of the connection, if that is what is there, is left for the reactor to
    find again on its next turn.
    """
    while not IReadDescriptor.providedBy(transport):
        if not isinstance(transport, ProtocolWrapper):
            return
        transport = transport.transport
    if transport.connected and not transport.disconnecting:
        transport.doRead()


def sized_server(read_size, write_size, unsent_limit=0):
    return type("SizedServer", (SizedServer,),
                {"readSize": read_size, "bufferSize": write_size, "unsentLimit": unsent_limit})


