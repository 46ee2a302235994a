"""A raw WebSocket client for the tests: the handshake by hand, frames built
and read byte for byte, so a test can send what no library would."""
import base64
import hashlib
import os
import socket
import struct

from harness import deadline

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_of(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def frame(opcode, payload=b"", fin=True, rsv=0, mask=True, length_bytes=None):
    """One frame; rsv as a 3-bit number (RSV1 is 4); length_bytes forces a
    length encoding (2 or 8) to test the minimal-encoding rule."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if length_bytes == 2 or (length_bytes is None and 126 <= n <= 0xFFFF):
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    elif length_bytes == 8 or (length_bytes is None and n > 0xFFFF):
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    else:
        head += bytes([mbit | n])
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


class Client:
    def __init__(self, port, path="/ws", headers=None, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=deadline(timeout))
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % port, "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"]
        lines += ["%s: %s" % kv for kv in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            b = self.sock.recv(4096)
            if not b:
                raise AssertionError("closed during the handshake: %r" % self.buf)
            self.buf += b
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *hl = head.decode().split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {}
        for line in hl:
            k, v = line.split(":", 1)
            self.headers[k.strip().lower()] = v.strip()
        if self.status == 101:
            assert self.headers["sec-websocket-accept"] == accept_of(key), self.headers

    def send(self, data):
        self.sock.sendall(data)

    def _need(self, n):
        while len(self.buf) < n:
            b = self.sock.recv(65536)
            if not b:
                raise EOFError("closed with %d of %d bytes" % (len(self.buf), n))
            self.buf += b
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self):
        """(fin, rsv, opcode, payload) of the server's next frame."""
        b0, b1 = self._need(2)
        assert not b1 & 0x80, "a server's frames are not masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._need(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._need(8))[0]
        return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, self._need(n)

    def close_code(self):
        """Reads until the server's close frame: its code (None without
        one), after checking that the connection then ends."""
        while True:
            fin, rsv, op, payload = self.read_frame()
            if op == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.sock.settimeout(deadline(5))
                try:
                    rest = self.sock.recv(1)
                except ConnectionResetError:
                    rest = b""
                assert rest == b"", "data after the close frame: %r" % rest
                return code

    def close(self):
        self.sock.close()
