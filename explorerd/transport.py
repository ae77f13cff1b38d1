"""
The TCP transport explorerd's listener hands out: sized buffers, and writes
that go straight to the socket when nothing is waiting.
"""

from errno import EAGAIN, EINTR, ENOBUFS, EWOULDBLOCK

from twisted.internet import main, tcp

_RETRY_LATER = (EWOULDBLOCK, EAGAIN, EINTR, ENOBUFS)


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
        try:
            data = self.socket.recv(self.readSize)
        except OSError as se:
            if se.args[0] == EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        return self._dataReceived(data)


def sized_server(read_size, write_size):
    return type("SizedServer", (SizedServer,), {"readSize": read_size, "bufferSize": write_size})


