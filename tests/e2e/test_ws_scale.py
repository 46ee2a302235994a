"""WebSockets at scale: 10,000 idle WebSockets held by one server, each
under a bound of its memory (see BYTES_PER_CONN), and one message
published on the bus reaching every one of them within seconds.

The clients are asyncio streams in this process, with the handshake and the
(masked) client frames done by hand: the test's python3 cannot import the
websockets library.

As in test_memory.py, the bound on resident memory is asserted against the
Release build only: AddressSanitizer's quarantine and redzones keep freed
and padded memory resident (about 8 KB a WebSocket there). The sanitizer
build opens as many connections (10,000 take about 7 s there too) and
asserts the rest: every handshake, every delivery, nothing left behind.
And as in test_memory.py's idle-connection test, the collector runs without
pause, so that the handshakes' garbage (up to the live heap again, with the
default pause) is not counted as the connections' cost.
TENDRIL_WS_SCALE_CONNS sets the count by hand (to see how the cost per
connection moves with it)."""
import asyncio
import base64
import hashlib
import os
import resource
import struct
import sys
import time

from harness import (SANITIZED, STATS_FILES, ServerTestCase, assert_nothing_left, deadline, get, main, poll)

CONNS = int(os.environ.get("TENDRIL_WS_SCALE_CONNS") or 0) or 10000
# The bound, Release only. Issue 10 asks for under 2 KiB a WebSocket; the
# server does not meet that yet: 2.7 KB at 10,000 (3.5 KB when this test was
# written). Where it goes (docs/design.md, "A WebSocket's path"): the
# handler's coroutine (about 940 B: the driver, serve, xpcall and the
# handler need more than LuaJIT's first 47 stack slots, so the stack has
# doubled once, and the collector shrinks a stack only below a quarter
# used), req (280 B), res (180 B) and the WebSocket's userdata (330 B) in
# Lua; the connection (376 B, libuv's handle 248 of it) and the task
# (224 B) in C; malloc's overhead. Under 2 KiB needs a request driver that
# keeps less per waiting request. Until then this bound keeps what was won
# from being lost.
BYTES_PER_CONN = 3072
OPENING_AT_ONCE = 500
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MESSAGE = b"to-everyone-once"

APP = r'''
collectgarbage("setpause", 100)
local websocket = require "tendril.websocket"
local bus = require "tendril.bus"
local stats_line = require "stats_line"

local open, waiting = 0, 0

return function(req, res)
    local p = req.path
    if p == "/ws" then
        local ws = websocket.upgrade(req, res)
        if not ws then
            return
        end
        open = open + 1
        -- Idle: the handler waits in ws:recv (no timeout) until the
        -- client asks it to subscribe.
        waiting = waiting + 1
        local data = ws:recv()
        waiting = waiting - 1
        if data == "subscribe" then
            local sub = bus.subscribe("all")
            ws:send("subscribed")
            -- Then it waits in sub:recv and sends what it gets.
            local m = sub:recv()
            if m then
                ws:send(m)
            end
            sub:close()
            ws:recv() -- the client's close
        end
        open = open - 1
        return
    elseif p == "/counts" then
        return string.format("open=%d waiting=%d subscribers=%d", open, waiting, bus.count("all"))
    elseif p == "/publish" then
        return tostring(bus.publish("all", req.query.m))
    elseif p == "/gc" then
        collectgarbage("collect")
        return "collected"
    elseif p == "/stats" then
        return stats_line()
    end
    return "ok"
end
'''


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# Raised before the server starts: it inherits the limit, and its
# connection budget follows it.
FD_LIMIT = raise_fd_limit()


def client_frame(payload, opcode=0x1):
    """One final, masked client frame (RFC 6455 5.2, 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


async def read_frame(reader, writer):
    """The next data frame from the server: (opcode, payload). Pings are
    answered with pongs and skipped; server frames are never masked."""
    while True:
        b0, b1 = await reader.readexactly(2)
        if b1 & 0x80:
            raise AssertionError("a masked frame from the server")
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await reader.readexactly(8))[0]
        payload = await reader.readexactly(n)
        opcode = b0 & 0x0F
        if opcode == 0x9:  # ping
            writer.write(client_frame(payload, 0xA))
            continue
        if opcode == 0xA:  # an unsolicited pong
            continue
        if not b0 & 0x80:
            raise AssertionError("a fragmented message; this test sends short ones")
        return opcode, payload


async def ws_open(port, path="/ws"):
    """A TCP connection and the opening handshake: (reader, writer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        key = base64.b64encode(os.urandom(16))
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101 "):
            raise AssertionError("handshake answered %r" % lines[0])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        if fields.get("sec-websocket-accept") != accept:
            raise AssertionError("a wrong Sec-WebSocket-Accept: %r" % fields.get("sec-websocket-accept"))
        return reader, writer
    except BaseException:
        writer.close()
        raise


async def open_many(port, n):
    sem = asyncio.Semaphore(OPENING_AT_ONCE)

    async def one():
        async with sem:
            return await asyncio.wait_for(ws_open(port), deadline(30))

    results = await asyncio.gather(*[one() for _ in range(n)], return_exceptions=True)
    conns = [r for r in results if not isinstance(r, BaseException)]
    failures = [r for r in results if isinstance(r, BaseException)]
    return conns, failures


async def close_all(conns):
    for _, w in conns:
        try:
            w.write(client_frame(struct.pack("!H", 1000), 0x8))
        except (OSError, RuntimeError):
            pass
    await asyncio.sleep(0)
    for _, w in conns:
        w.close()
    await asyncio.gather(*[w.wait_closed() for _, w in conns], return_exceptions=True)


def log(text):
    print("test_ws_scale: " + text, file=sys.stderr, flush=True)


class WebSocketScaleTest(ServerTestCase):
    APP = APP
    FILES = STATS_FILES
    ARGS = ("--max-connections", str(CONNS + 64))

    def counts(self):
        body = get(self.port, "/counts").body.decode()
        return {k: int(v) for k, v in (kv.split("=") for kv in body.split())}

    def rss(self):
        return self.server.rss_kib() * 1024

    def test_ten_thousand_idle_websockets_then_one_broadcast(self):
        self.assertGreaterEqual(FD_LIMIT, CONNS + 1024,
                                "RLIMIT_NOFILE's hard limit (%d) is too low for %d connections" % (FD_LIMIT, CONNS))
        asyncio.run(self.scenario(CONNS))
        assert_nothing_left(self, self.port, timeout=30)

    async def scenario(self, n):
        # Warm up once (the handshake's code, the JIT, the bus), then a
        # baseline: the first connections' one-off costs are not theirs.
        conns, failures = await open_many(self.port, 10)
        self.assertEqual(failures, [])
        await close_all(conns)
        self.assertTrue(poll(lambda: self.counts()["open"] == 0, 10))
        get(self.port, "/gc")
        before = self.rss()

        t0 = time.monotonic()
        conns, failures = await open_many(self.port, n)
        opened_s = time.monotonic() - t0
        try:
            self.assertEqual(len(failures), 0, "%d of %d handshakes failed, the first: %r"
                             % (len(failures), n, failures[:1]))
            self.assertTrue(poll(lambda: self.counts()["waiting"] == n, 30),
                            "handlers waiting in ws:recv: %r" % self.counts())
            get(self.port, "/gc")  # the handshakes' garbage is not the connections'
            held = self.rss()
            per_conn = (held - before) / n
            log("%d WebSockets opened in %.1f s; resident %.1f MB -> %.1f MB: %.0f bytes each%s"
                % (n, opened_s, before / 1e6, held / 1e6, per_conn, " (sanitizer build: not asserted)"
                   if SANITIZED else ""))

            # Every handler moves on to the bus: it subscribes and waits in
            # sub:recv.
            for _, w in conns:
                w.write(client_frame(b"subscribe"))

            async def subscribed(r, w):
                return await asyncio.wait_for(read_frame(r, w), deadline(60))

            acks = await asyncio.gather(*[subscribed(r, w) for r, w in conns], return_exceptions=True)
            self.assertEqual(sum(1 for a in acks if a == (1, b"subscribed")), n,
                             "not every handler subscribed: %r" % [a for a in acks if a != (1, b"subscribed")][:3])
            log("subscribed: resident %.1f MB (%.0f bytes a connection above the baseline)"
                % (self.rss() / 1e6, (self.rss() - before) / n))

            # One message published to all of them arrives at every client,
            # in seconds (the bound is generous; minutes would fail it).
            t0 = time.monotonic()
            reached = int(get(self.port, "/publish?m=" + MESSAGE.decode()).body)
            self.assertEqual(reached, n)

            async def delivered(r, w):
                return await asyncio.wait_for(read_frame(r, w), deadline(30))

            got = await asyncio.gather(*[delivered(r, w) for r, w in conns], return_exceptions=True)
            took = time.monotonic() - t0
            arrived = sum(1 for g in got if g == (1, MESSAGE))
            log("one message published to %d subscribers reached %d clients in %.2f s" % (reached, arrived, took))
            self.assertEqual(arrived, n, "the first misses: %r" % [g for g in got if g != (1, MESSAGE)][:3])
            self.assertLess(took, deadline(30))
            if not SANITIZED:
                self.assertLess(per_conn, BYTES_PER_CONN, "an idle WebSocket costs the server %.0f bytes" % per_conn)
        finally:
            await close_all(conns)
        self.assertTrue(poll(lambda: self.counts()["open"] == 0, 30), "left open: %r" % self.counts())


if __name__ == "__main__":
    main()
