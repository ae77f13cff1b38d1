"""
The TCP transport explorerd's listener hands out: sized buffers, and writes
that go straight to the socket when nothing is waiting.
"""

from errno import EAGAIN, EINTR, ENOBUFS, EWOULDBLOCK

from twisted.internet import main, tcp

_RETRY_LATER = (EWOULDBLOCK, EAGAIN, EINTR, ENOBUFS)

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

    def write(self, data):
        if (self.offset == len(self.dataBuffer) and not self._tempDataLen and data
                and self.connected and not self.disconnecting and not self._writeDisconnected):
            try:
                sent = self.socket.send(data)
            except OSError as e:
                # A real error is found again, and reported, by the buffered path.
                sent = 0 if e.args[0] in _RETRY_LATER else -1
            if sent == len(data):
                return
            if sent > 0:
                data = data[sent:]
        super().write(data)

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


def sized_server(read_size, write_size):
    return type("SizedServer", (SizedServer,), {"readSize": read_size, "bufferSize": write_size})


