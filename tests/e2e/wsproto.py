"""A WebSocket (RFC 6455) client over a raw socket, for tests that must
send what a well-behaved library never would: unmasked frames, reserved
bits, bad lengths, invalid UTF-8, frames cut into single bytes.

frame() builds one frame; WsClient does the opening handshake and reads
the server's frames one at a time (checking that they are unmasked)."""
import base64
import hashlib
import os
import socket
import struct

from harness import Reader, connect, deadline

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def new_key():
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key):
    """The Sec-WebSocket-Accept a server owes for key."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def mask(payload, key):
    """payload XOR the 4-byte key repeated (masking and unmasking alike)."""
    n = len(payload)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def frame(opcode, payload=b"", fin=True, rsv=0, masked=True, length_form=None, length=None, mask_key=None):
    """One frame. rsv: the three reserved bits as a number 0..7 (4 is
    RSV1). length_form: 7, 16 or 64 to force an encoding of the length
    (minimal by default); length: a length field that lies."""
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length is None else length
    form = length_form or (7 if n < 126 else 16 if n < 65536 else 64)
    mbit = 0x80 if masked else 0
    if form == 7:
        head = bytes([b0, mbit | n])
    elif form == 16:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if masked:
        key = mask_key or os.urandom(4)
        return head + key + mask(payload, key)
    return head + payload


def close_payload(code=None, reason=b""):
    if isinstance(reason, str):
        reason = reason.encode()
    return b"" if code is None else struct.pack("!H", code) + reason


class Frame:
    def __init__(self, fin, rsv, opcode, payload, masked):
        self.fin, self.rsv, self.opcode, self.payload, self.masked = fin, rsv, opcode, payload, masked

    @property
    def code(self):
        """A close frame's code (None when it has none)."""
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def reason(self):
        return self.payload[2:]

    def fields(self):
        """(fin, rsv, opcode, payload), for comparing a frame whole."""
        return self.fin, self.rsv, self.opcode, self.payload

    def __repr__(self):
        p = self.payload if len(self.payload) <= 40 else self.payload[:40] + b"..."
        return "Frame(fin=%d rsv=%d op=%#x len=%d %r)" % (self.fin, self.rsv, self.opcode, len(self.payload), p)


def handshake_request(path="/", headers=None, key=None, method="GET", version="1.1"):
    hdrs = {"Host": "localhost", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": key or new_key(), "Sec-WebSocket-Version": "13"}
    for k, v in (headers or {}).items():
        if v is None:
            hdrs.pop(k, None)
        else:
            hdrs[k] = v
    head = "%s %s HTTP/%s\r\n" % (method, path, version)
    return (head + "".join("%s: %s\r\n" % kv for kv in hdrs.items()) + "\r\n").encode()


class WsClient:
    """A raw client. open() completes the handshake (asserting 101 and the
    accept value); then send frames with send(frame(...)) and read the
    server's with read_frame()."""

    def __init__(self, sock, reader, response):
        self.sock = sock
        self.rd = reader  # its buf holds what came after the 101's head
        self.response = response

    @classmethod
    def open(cls, port, path="/", headers=None, pipelined=b"", timeout=10, check=True):
        key = new_key()
        s = connect(port, timeout)
        s.sendall(handshake_request(path, headers, key) + pipelined)
        rd = Reader(s, timeout)
        r = rd.response()
        if check:
            if r.status != 101:
                s.close()
                raise AssertionError("handshake answered %d %r: %r" % (r.status, r.headers, r.body))
            if r.header("sec-websocket-accept") != accept_for(key):
                s.close()
                raise AssertionError("wrong Sec-WebSocket-Accept: %r" % r.headers)
        return cls(s, rd, r)

    def send(self, data):
        self.sock.sendall(data)

    def send_msg(self, opcode, payload=b""):
        self.send(frame(opcode, payload))

    def _take(self, n):
        while len(self.rd.buf) < n:
            b = self.sock.recv(65536)
            if not b:
                raise EOFError("connection closed after %d of %d bytes" % (len(self.rd.buf), n))
            self.rd.buf += b
        data = bytes(self.rd.buf[:n])
        del self.rd.buf[:n]
        return data

    def read_frame(self, timeout=10):
        """The next frame from the server. EOFError if the connection ends
        first, socket.timeout if none comes in time."""
        self.sock.settimeout(deadline(timeout))
        try:
            b0, b1 = self._take(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._take(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._take(8))[0]
            masked = bool(b1 & 0x80)
            if masked:
                self._take(4)  # a server must not mask: refused below
            payload = self._take(n)
        except ConnectionResetError as e:
            raise EOFError("connection reset") from e
        if masked:
            raise AssertionError("the server sent a masked frame")
        return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, payload, masked)

    def read_message(self, timeout=10):
        """The next data message, reassembled: (opcode, payload). Answers
        nothing; fails on a control frame."""
        f = self.read_frame(timeout)
        op, data = f.opcode, f.payload
        while not f.fin:
            f = self.read_frame(timeout)
            if f.opcode != CONT:
                raise AssertionError("expected a continuation, got %r" % f)
            data += f.payload
        return op, data

    def read_close(self, timeout=10):
        """Reads up to the server's close frame (skipping anything before
        it) and returns its code (None for an empty close), after checking
        that the server then ends the TCP connection."""
        while True:
            f = self.read_frame(timeout)
            if f.opcode == CLOSE:
                assert self.closed(5), "the TCP connection did not end after the close frame"
                return f.code

    def closed(self, timeout=5):
        """True when the server ends the TCP connection within timeout
        (anything it sends meanwhile is kept in the buffer)."""
        return self.rd.closed(timeout)

    def close(self):
        self.sock.close()


def send_bytewise(sock, data):
    """Sends data one byte per write (TCP_NODELAY: one segment each)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        sock.sendall(data[i:i + 1])
