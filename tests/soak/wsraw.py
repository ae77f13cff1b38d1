"""
Bare-socket WebSocket pieces for storms and stalls: an opening handshake on a plain asyncio
socket (with a chosen source address, receive buffer and MSS), masked client frames, a small
frame reader.  What no WebSocket library lets a test do: be thousands of cheap handshakes a
second, or a client whose receive window stays closed.
"""

import asyncio
import base64
import json
import os
import socket
import struct

REQUEST = ("GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")


def request(port):
    return REQUEST.format(port=port, key=base64.b64encode(os.urandom(16)).decode()).encode()


def frame(payload, opcode=0x1, fin=True):
    """A masked client frame."""
    if isinstance(payload, str):
        payload = payload.encode()
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def text(message):
    return frame(json.dumps(message))


def close(code=1000):
    return frame(struct.pack("!H", code), opcode=0x8)


def raw_socket(source=None, rcvbuf=None, mss=None):
    """A non-blocking TCP socket, bound to ``source`` (an address in 127.0.0.0/8) if given."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if mss:
        # The MSS we announce is the one the server sends with: on loopback it would be ~64 KiB,
        # and the server's kernel send buffer starts at ~20 MSS.  A LAN-sized MSS makes a stalled
        # reader look like it does on a real network.
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
    if source:
        s.bind((source, 0))
    s.setblocking(False)
    return s


async def open_socket(port, source=None, rcvbuf=None, mss=None, timeout=10):
    s = raw_socket(source, rcvbuf, mss)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), timeout)
    except BaseException:
        s.close()
        raise
    return s


async def read_head(s, timeout=10):
    """Read an HTTP response head; returns (status, head bytes, bytes after it)."""
    loop = asyncio.get_running_loop()
    buf = b""
    async with asyncio.timeout(timeout):
        while b"\r\n\r\n" not in buf:
            chunk = await loop.sock_recv(s, 4096)
            if not chunk:
                raise ConnectionError(f"closed before the response head ({buf[:60]!r})")
            buf += chunk
            if len(buf) > 65536:
                raise ConnectionError("response head too long")
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    return status, head, rest


async def handshake(port, source=None, rcvbuf=None, mss=None, timeout=10):
    """Open a socket and upgrade it: (socket, status, bytes already read past the head)."""
    s = await open_socket(port, source, rcvbuf, mss, timeout)
    try:
        await asyncio.get_running_loop().sock_sendall(s, request(port))
        status, _, rest = await read_head(s, timeout)
    except BaseException:
        s.close()
        raise
    return s, status, rest


class FrameReader:
    """Server frames (unmasked) from a byte stream: (opcode, payload) tuples."""

    def __init__(self, data=b""):
        self.buf = bytearray(data)

    def feed(self, data):
        self.buf += data

    def frames(self):
        out = []
        while len(self.buf) >= 2:
            b0, b1 = self.buf[0], self.buf[1]
            n, i = b1 & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    break
                n, i = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    break
                n, i = struct.unpack("!Q", self.buf[2:10])[0], 10
            if len(self.buf) < i + n:
                break
            out.append((b0 & 0x0F, bytes(self.buf[i:i + n])))
            del self.buf[:i + n]
        return out


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
