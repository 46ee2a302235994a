"""WebSockets end to end (tendril.websocket): the opening handshake and its
refusals, a protocol suite after the sections of the Autobahn test suite
(framing, pings and pongs, reserved bits, opcodes, fragmentation, UTF-8,
limits, closing) driven over raw sockets, Python's `websockets` library as
a peer (run by Debian's interpreter), the timers (recv timeout, idle
timeout, pings), a handler's end and its threads, SIGTERM, and the client,
websocket.connect, against tendril itself, `websockets` and a raw server.

The handlers tell what they saw through /report?id=ID: each WebSocket
route stores a line under its request's id."""
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time

from harness import (STATS_FILES, Reader, Server, ServerTestCase, TestCase, assert_nothing_left, connect, deadline,
                     get, main, poll, request)
from tlsfixture import SYSTEM_PYTHON, Pki
from wsproto import (BINARY, CLOSE, CONT, PING, PONG, TEXT, WsClient, accept_for, close_payload, frame,
                     handshake_request, mask, new_key, send_bytewise)

MIB = 1024 * 1024

APP = r'''
local tendril = require "tendril"
local websocket = require "tendril.websocket"
local bus = require "tendril.bus"
local stats_line = require "stats_line"

local reports = {}
local function report(req, line)
    reports[req.query.id or "-"] = line
end

-- Echoes every message until the end, then reports how recv ended.
local function echo(ws, req)
    while true do
        local data, kind, code, reason = ws:recv()
        if not data then
            report(req, string.format("%s %s %s", tostring(kind), tostring(code), tostring(reason)))
            return
        end
        local ok, err = ws:send(data, kind)
        if not ok then
            report(req, "send: " .. tostring(err))
            return
        end
    end
end

local function upgrade(req, res, opts)
    local ws, err = websocket.upgrade(req, res, opts)
    if not ws then
        report(req, "refused: " .. tostring(err))
    end
    return ws
end

local routes = {}

-- The protocol suite's peer: no pings of its own, and a long close
-- timeout, so that a connection the server fails must end at once rather
-- than when a close timeout passes.
routes["/echo"] = function(req, res)
    local ws = upgrade(req, res, { ping_interval = false, close_timeout = 30 })
    if ws then echo(ws, req) end
end

-- The handler waits before it upgrades: what the client sent meanwhile
-- waits for it.
routes["/late-upgrade"] = function(req, res)
    tendril.sleep(0.3)
    local ws = upgrade(req, res, { ping_interval = false })
    if ws then echo(ws, req) end
end

-- Every option at its default.
routes["/default"] = function(req, res)
    local ws = upgrade(req, res)
    if ws then echo(ws, req) end
end

routes["/small"] = function(req, res)
    local ws = upgrade(req, res, { max_message_bytes = 1000, ping_interval = false })
    if ws then echo(ws, req) end
end

routes["/proto"] = function(req, res)
    local ws = upgrade(req, res, { protocols = { "superchat", "chat" } })
    if ws then
        ws:send("protocol=" .. tostring(ws.protocol))
        echo(ws, req)
    end
end

routes["/origin"] = function(req, res)
    local ws = upgrade(req, res, { origins = { "https://good.example", "http://also.example" } })
    if ws then echo(ws, req) end
end

-- recv with a timeout: the socket stays usable after it.
routes["/timeout"] = function(req, res)
    local ws = upgrade(req, res, { ping_interval = false })
    if not ws then return end
    local data, err = ws:recv(0.3)
    ws:send("first recv: " .. tostring(data) .. " " .. tostring(err))
    echo(ws, req)
end

routes["/idle"] = function(req, res)
    local ws = upgrade(req, res, { idle_timeout = tonumber(req.query.s or "0.5"), ping_interval = false })
    if ws then echo(ws, req) end
end

routes["/ping"] = function(req, res)
    local ws = upgrade(req, res, { ping_interval = 0.3 })
    if ws then echo(ws, req) end
end

-- One message, an answer, and the handler returns.
routes["/once"] = function(req, res)
    local ws = upgrade(req, res, { ping_interval = false })
    if not ws then return end
    local data = ws:recv()
    ws:send("bye " .. tostring(data))
end

-- The server starts the closing handshake after the first message.
routes["/server-close"] = function(req, res)
    local ws = upgrade(req, res, { ping_interval = false, close_timeout = tonumber(req.query.ct or "5") })
    if not ws then return end
    local data = ws:recv()
    ws:send("closing after " .. tostring(data))
    local ok, err = ws:close(4001, "done")
    local d2, e2 = ws:recv()
    report(req, string.format("close=%s %s; recv after=%s %s", tostring(ok), tostring(err), tostring(d2),
        tostring(e2)))
end

-- Threads spawned by the handler, waiting when the WebSocket ends.
routes["/threads"] = function(req, res)
    local ws = upgrade(req, res, { ping_interval = false })
    if not ws then return end
    local got = {}
    tendril.spawn(function()
        local ok, err = tendril.sleep(60)
        got.sleep = tostring(ok) .. " " .. tostring(err)
    end)
    tendril.spawn(function()
        local sub = bus.subscribe("ws-test-nothing-" .. (req.query.id or "-"))
        local m, err = sub:recv()
        got.sub = tostring(m) .. " " .. tostring(err)
    end)
    ws:send("ready")
    if req.query.handler == "sleep" then
        local ok, err = tendril.sleep(60)
        got.handler = "sleep " .. tostring(ok) .. " " .. tostring(err)
    else
        local data, kind, code = ws:recv()
        got.handler = "recv " .. tostring(data) .. " " .. tostring(kind) .. " " .. tostring(code)
    end
    -- The threads saw the end too: report once they have.
    tendril.spawn_detached(function()
        for _ = 1, 500 do
            if got.sleep and got.sub then break end
            tendril.sleep(0.01)
        end
        report(req, string.format("handler=%s; sleep=%s; sub=%s", got.handler, tostring(got.sleep),
            tostring(got.sub)))
    end)
end

-- The handler returns at once; its thread waits on.
routes["/spawn-return"] = function(req, res)
    local ws = upgrade(req, res, { ping_interval = false })
    if not ws then return end
    tendril.spawn(function()
        local ok, err = tendril.sleep(120) -- longer than the test waits, even under sanitizers
        local s1, s2 = ws:send("from the thread")
        report(req, "sleep=" .. tostring(ok) .. " " .. tostring(err) .. " send=" .. tostring(s1) .. " " ..
            tostring(s2))
    end)
    ws:send("ready")
end

-- A second task that calls recv while one waits raises.
routes["/two-recv"] = function(req, res)
    local ws = upgrade(req, res, { ping_interval = false })
    if not ws then return end
    local waiting = false
    local t = tendril.spawn(function()
        waiting = true
        local data = ws:recv()
        ws:send("thread got " .. tostring(data))
    end)
    while not waiting do tendril.sleep(0.01) end
    tendril.sleep(0.05)
    local ok, err = pcall(ws.recv, ws, 1)
    ws:send("second recv: " .. tostring(ok) .. " " .. tostring(err))
    t:join(10)
    echo(ws, req)
end

-- Sends n messages of size bytes as fast as send allows.
routes["/flood"] = function(req, res)
    local ws = upgrade(req, res, { ping_interval = false })
    if not ws then return end
    local n, size = tonumber(req.query.n), tonumber(req.query.size)
    local sent = 0
    for i = 1, n do
        local piece = string.format("%08d", i)
        local ok = ws:send(string.rep(piece, size / 8), "binary")
        if not ok then break end
        sent = sent + 1
    end
    report(req, "sent " .. sent)
    if sent == n then echo(ws, req) end
end

-- The handler pings first (the client sees the ping, the handler no pong).
routes["/handler-ping"] = function(req, res)
    local ws = upgrade(req, res, { ping_interval = false })
    if not ws then return end
    local ok, err = ws:ping("from the handler")
    ws:send("ping=" .. tostring(ok) .. " " .. tostring(err))
    echo(ws, req)
end

-- After the end, send and ping answer nil, "closed".
routes["/after-end"] = function(req, res)
    local ws = upgrade(req, res, { ping_interval = false })
    if not ws then return end
    local data, kind, code
    repeat
        data, kind, code = ws:recv()
    until not data
    local s1, s2 = ws:send("too late")
    local p1, p2 = ws:ping("too late")
    report(req, string.format("recv=%s %s send=%s %s ping=%s %s", tostring(kind), tostring(code), tostring(s1),
        tostring(s2), tostring(p1), tostring(p2)))
end

-- A handler that reads late: the client is slowed by TCP meanwhile.
routes["/late-reader"] = function(req, res)
    local ws = upgrade(req, res, { ping_interval = false })
    if not ws then return end
    while not reports["go-" .. req.query.id] do tendril.sleep(0.02) end
    local n, bytes = 0, 0
    while true do
        local data = ws:recv()
        if not data or data == "end" then break end
        n, bytes = n + 1, bytes + #data
    end
    ws:send(string.format("got %d messages, %d bytes", n, bytes))
    echo(ws, req)
end

routes["/go"] = function(req)
    reports["go-" .. req.query.id] = true
    return "ok"
end

-- websocket.connect from a handler: ?url=...; runs a short exchange and
-- answers what it saw.
routes["/client"] = function(req)
    local q = req.query
    local opts = { timeout = tonumber(q.timeout or "10"), ping_interval = false }
    if q.protocols then
        opts.protocols = {}
        for p in q.protocols:gmatch("[^,]+") do opts.protocols[#opts.protocols + 1] = p end
    end
    if q.origin then opts.origin = q.origin end
    if q.header then opts.headers = { ["X-Test"] = q.header } end
    if q.max then opts.max_message_bytes = tonumber(q.max) end
    if q.ca then opts.ca_file = q.ca end
    local ws, err = websocket.connect(q.url, opts)
    if not ws then
        return "connect: nil " .. tostring(err)
    end
    local out = { "protocol=" .. tostring(ws.protocol) }
    if q.first then -- the peer speaks first
        local d, k, code = ws:recv(10)
        out[#out + 1] = "first=" .. tostring(k) .. ":" .. tostring(d or code)
        if not d then
            return table.concat(out, " ")
        end
    end
    local text = q.text or "hello from tendril"
    local ok, serr = ws:send(text)
    local d, k, code = ws:recv(10)
    out[#out + 1] = "send=" .. tostring(ok or serr) .. " echo=" .. tostring(k) .. ":" ..
        (d and (#d > 60 and (#d .. " bytes") or d) or tostring(code))
    if d then
        local bin = string.rep("\0\1\2\255", 50000)
        ws:send(bin, "binary")
        local d2, k2 = ws:recv(10)
        out[#out + 1] = "binary=" .. tostring(k2) .. ":" .. tostring(d2 == bin)
        out[#out + 1] = "close=" .. tostring(ws:close(4002, "client done"))
    end
    local d3, e3, c3 = ws:recv(1)
    out[#out + 1] = "after=" .. tostring(d3) .. " " .. tostring(e3) .. " " .. tostring(c3)
    return table.concat(out, " ")
end

-- A client that reads ?n messages and tells whether they came in order
-- (each starts with its number, "%05d").
routes["/client-count"] = function(req)
    local ws, err = websocket.connect(req.query.url, { ping_interval = false, timeout = 10 })
    if not ws then return "connect: " .. tostring(err) end
    local n, bytes, bad = tonumber(req.query.n), 0, nil
    for i = 1, n do
        local d, k, code = ws:recv(10)
        if not d then
            bad = bad or string.format("message %d: %s %s", i, tostring(k), tostring(code))
            break
        end
        if d:sub(1, 5) ~= string.format("%05d", i) then
            bad = bad or string.format("message %d starts with %q", i, d:sub(1, 5))
        end
        bytes = bytes + #d
    end
    ws:close()
    return bad or string.format("%d messages in order, %d bytes", n, bytes)
end

-- A client WebSocket waiting in recv (for SIGTERM).
routes["/client-wait"] = function(req)
    local ws, err = websocket.connect(req.query.url, { ping_interval = false })
    if not ws then return "connect: " .. tostring(err) end
    report(req, "connected")
    local d, k, code, reason = ws:recv()
    return "recv " .. tostring(d) .. " " .. tostring(k) .. " " .. tostring(code) .. " " .. tostring(reason)
end

routes["/report"] = function(req)
    return tostring(reports[req.query.id])
end

routes["/stats"] = function()
    return stats_line()
end

return function(req, res)
    local route = routes[req.path]
    if route then
        return route(req, res)
    end
    return 404, {}, "no route\n"
end
'''

# -------------------------------------------------------------- helpers

_ids = iter(range(1, 1 << 30))


def new_id(tag="c"):
    return "%s%d" % (tag, next(_ids))


UTF8_VALID = [
    ("ascii", b"Hello-\x00-\x7f"),
    ("kosme", "\u03ba\u1f79\u03c3\u03bc\u03b5".encode()),
    ("boundaries", b"\xc2\x80 \xdf\xbf \xe0\xa0\x80 \xef\xbf\xbf \xf0\x90\x80\x80 \xf4\x8f\xbf\xbf"),
    ("around_surrogates", b"\xed\x9f\xbf \xee\x80\x80"),
    ("noncharacters", b"\xef\xbf\xbe \xef\xb7\x90"),
    ("emoji", "\U0001F600 \u00e9t\u00e9 \u4e2d\u6587".encode()),
]

UTF8_INVALID = [
    ("overlong_2", b"\xc0\xaf"),
    ("overlong_2_max", b"\xc1\xbf"),
    ("overlong_3", b"\xe0\x80\xaf"),
    ("overlong_3_max", b"\xe0\x9f\xbf"),
    ("overlong_4", b"\xf0\x80\x80\xaf"),
    ("overlong_4_max", b"\xf0\x8f\xbf\xbf"),
    ("overlong_nul", b"\xc0\x80"),
    ("surrogate_low", b"\xed\xa0\x80"),
    ("surrogate_high", b"\xed\xbf\xbf"),
    ("surrogate_pair_cesu", b"\xed\xa0\xbd\xed\xb8\x80"),
    ("above_10ffff", b"\xf4\x90\x80\x80"),
    ("lead_f5", b"\xf5\x80\x80\x80"),
    ("five_bytes", b"\xf8\x88\x80\x80\x80"),
    ("six_bytes", b"\xfc\x84\x80\x80\x80\x80"),
    ("byte_fe", b"\xfe"),
    ("byte_ff", b"\xff"),
    ("lone_continuation", b"a\x80b"),
    ("lead_then_ascii", b"\xc2A"),
    ("truncated_2", b"ab\xc2"),
    ("truncated_3", b"ab\xe2\x82"),
    ("truncated_4", b"ab\xf0\x9f\x98"),
    ("kosme_then_surrogate", b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"),
]

# Close codes a client may send (echoed) and those it may not (1002).
CLOSE_VALID = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
CLOSE_INVALID = [0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999, 5000, 65535]


class WsTestCase(ServerTestCase):
    APP = APP
    FILES = STATS_FILES

    def open(self, path="/echo", tag="c", **kw):
        """A raw client on path?id=ID; returns (client, id)."""
        cid = new_id(tag)
        sep = "&" if "?" in path else "?"
        c = WsClient.open(self.port, path + sep + "id=" + cid, **kw)
        self.addCleanup(c.close)
        return c, cid

    def report(self, cid, timeout=10):
        """What the handler of connection cid reported, once it has."""
        def reported():
            body = get(self.port, "/report?id=" + cid).body.decode()
            return body if body != "nil" else None
        return poll(reported, timeout)

    def assert_report(self, cid, expected, timeout=10):
        self.assertEqual(self.report(cid, timeout), expected)

    def expect_close(self, c, code, reason=None, timeout=10):
        """The next frame is a close with code, then the connection ends
        (the client has not answered it)."""
        f = c.read_frame(timeout)
        self.assertEqual(f.opcode, CLOSE, "expected a close frame with %s, got %r" % (code, f))
        self.assertEqual(f.code, code, "close frame %r" % f)
        if reason is not None:
            self.assertEqual(f.reason, reason)
        self.assertTrue(c.closed(5), "the TCP connection did not end after the close frame")
        return f

    def echo_ok(self, c, opcode, payload):
        c.send(frame(opcode, payload))
        self.assertEqual(c.read_message(), (opcode, payload))

    def violation(self, frames, code, before=(), path="/echo", handler_code=True):
        """Sends frames (after which the server must fail the connection):
        expects the frames `before` ((opcode, payload) pairs), then a close
        with code, then the end of the connection; and the handler's recv
        to have returned nil, "closed", code."""
        c, cid = self.open(path)
        c.send(b"".join(frames))
        for op, payload in before:
            f = c.read_frame()
            self.assertEqual((f.opcode, f.payload), (op, payload))
        self.expect_close(c, code)
        if handler_code:
            self.assertRegex(self.report(cid), r"^closed %d " % code)


def _add_cases(cls, cases):
    """cases: name -> function(self); each becomes test_<name>."""
    for name, fn in cases.items():
        fn.__name__ = "test_" + name
        setattr(cls, "test_" + name, fn)
    return cls


# -------------------------------------------------------------- handshake


class HandshakeTest(WsTestCase):
    def handshake(self, path="/echo", headers=None, method="GET", version="1.1"):
        """A handshake request on path?id=ID; returns (Response, id)."""
        cid = new_id("h")
        req = handshake_request(path + "?id=" + cid, headers, method=method, version=version)
        s = connect(self.port)
        try:
            s.sendall(req)
            r = Reader(s).response()
        finally:
            s.close()
        return r, cid

    def test_accept_value_of_rfc_example(self):
        s = connect(self.port)
        self.addCleanup(s.close)
        s.sendall(handshake_request("/echo?id=rfc", {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}))
        r = Reader(s).response()
        self.assertEqual(r.status, 101)
        self.assertEqual(r.header("sec-websocket-accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        self.assertEqual(r.header("upgrade").lower(), "websocket")
        self.assertIn("upgrade", r.header("connection").lower())
        self.assertIsNone(r.header("sec-websocket-protocol"))
        self.assertIsNone(r.header("sec-websocket-extensions"))

    def test_header_tokens_in_lists_and_any_case(self):
        c, _ = self.open(headers={"Upgrade": "WebSocket", "Connection": "keep-alive, Upgrade"})
        self.echo_ok(c, TEXT, b"tokens")

    def refused(self, status, **kw):
        r, cid = self.handshake(**kw)
        self.assertEqual(r.status, status, r.body)
        self.assertIsNone(r.header("sec-websocket-accept"))
        line = self.report(cid)
        self.assertRegex(line, r"^refused: \S", "the handler saw nil, reason")
        return r, line

    def test_missing_key_is_400(self):
        self.refused(400, headers={"Sec-WebSocket-Key": None})

    def test_key_not_16_bytes_is_400(self):
        import base64
        self.refused(400, headers={"Sec-WebSocket-Key": base64.b64encode(b"0123456789").decode()})

    def test_key_not_base64_is_400(self):
        self.refused(400, headers={"Sec-WebSocket-Key": "!!!!!!!!!!!!!!!!!!!!!!=="})

    def test_post_is_400(self):
        self.refused(400, method="POST", headers={"Content-Length": "0"})

    def test_http_1_0_is_400(self):
        self.refused(400, version="1.0")

    def test_missing_upgrade_is_400(self):
        self.refused(400, headers={"Upgrade": None})

    def test_upgrade_other_protocol_is_400(self):
        self.refused(400, headers={"Upgrade": "h2c"})

    def test_missing_connection_upgrade_is_400(self):
        self.refused(400, headers={"Connection": "keep-alive"})

    def test_version_8_is_426_with_version_13(self):
        r, _ = self.refused(426, headers={"Sec-WebSocket-Version": "8"})
        self.assertEqual(r.header("sec-websocket-version"), "13")

    def test_missing_version_is_refused(self):
        r, cid = self.handshake(headers={"Sec-WebSocket-Version": None})
        self.assertIn(r.status, (400, 426))
        if r.status == 426:
            self.assertEqual(r.header("sec-websocket-version"), "13")
        self.assertRegex(self.report(cid), r"^refused: \S")

    def test_refused_connection_serves_no_frames(self):
        """After a refusal nothing is a WebSocket: a frame sent anyway is not
        echoed (the connection answers it as HTTP or closes)."""
        cid = new_id("h")
        s = connect(self.port)
        self.addCleanup(s.close)
        s.sendall(handshake_request("/echo?id=" + cid, {"Sec-WebSocket-Version": "8"}))
        rd = Reader(s)
        self.assertEqual(rd.response().status, 426)
        s.sendall(frame(TEXT, b"GET / HTTP/1.1\r\n\r\n"))
        self.assertTrue(rd.closed(10))
        got = bytes(rd.buf)
        self.assertTrue(got == b"" or got.startswith(b"HTTP/1.1 4"), got[:80])

    def test_disallowed_origin_is_403(self):
        r, line = self.refused(403, path="/origin", headers={"Origin": "https://evil.example"})
        self.assertIn("evil.example", line)

    def test_allowed_origins(self):
        for origin in ("https://good.example", "http://also.example"):
            c, _ = self.open("/origin", headers={"Origin": origin})
            self.echo_ok(c, TEXT, origin.encode())

    def test_subprotocol_first_offered_that_the_server_speaks(self):
        # The client's order decides: it offers chat before superchat.
        c, _ = self.open("/proto", headers={"Sec-WebSocket-Protocol": "v1.unknown, chat, superchat"})
        self.assertEqual(c.response.header("sec-websocket-protocol"), "chat")
        self.assertEqual(c.read_message(), (TEXT, b"protocol=chat"))
        c2, _ = self.open("/proto", headers={"Sec-WebSocket-Protocol": "superchat"})
        self.assertEqual(c2.response.header("sec-websocket-protocol"), "superchat")
        self.assertEqual(c2.read_message(), (TEXT, b"protocol=superchat"))

    def test_subprotocol_offered_over_several_headers(self):
        c, _ = self.open("/proto", headers={"Sec-WebSocket-Protocol": "x, y", "sec-websocket-protocol": "chat"})
        self.assertEqual(c.response.header("sec-websocket-protocol"), "chat")
        self.assertEqual(c.read_message(), (TEXT, b"protocol=chat"))

    def test_no_common_subprotocol(self):
        c, _ = self.open("/proto", headers={"Sec-WebSocket-Protocol": "mqtt, wamp"})
        self.assertIsNone(c.response.header("sec-websocket-protocol"))
        self.assertEqual(c.read_message(), (TEXT, b"protocol=nil"))
        c2, _ = self.open("/proto")
        self.assertIsNone(c2.response.header("sec-websocket-protocol"))
        self.assertEqual(c2.read_message(), (TEXT, b"protocol=nil"))

    def test_extensions_are_not_accepted(self):
        c, _ = self.open(headers={"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"})
        self.assertIsNone(c.response.header("sec-websocket-extensions"))
        self.echo_ok(c, TEXT, b"uncompressed")

    def test_plain_requests_still_served_beside(self):
        self.assertEqual(get(self.port, "/nothing").status, 404)
        r, _ = request(self.port, target="/report?id=none")
        self.assertEqual(r.body, b"nil")


# -------------------------------------------------------------- framing (Autobahn 1.x) and limits


class FramingTest(WsTestCase):
    SIZES = [0, 1, 125, 126, 127, 128, 65535, 65536, 65537, 256 * 1024, MIB]

    @staticmethod
    def text_of(n):
        unit = "tendril \u00e9\u4e2d!".encode()  # 14 bytes, valid UTF-8 whole
        data = unit * (n // len(unit)) + b"x" * (n % len(unit))
        assert len(data) == n
        return data

    def test_echo_text_0_bytes_to_1_mib(self):
        c, _ = self.open("/default")
        for n in self.SIZES:
            data = self.text_of(n)
            c.send(frame(TEXT, data))
            self.assertEqual(c.read_message(timeout=30), (TEXT, data), "size %d" % n)

    def test_echo_binary_0_bytes_to_1_mib(self):
        c, _ = self.open("/default")
        for n in self.SIZES:
            data = os.urandom(n)
            c.send(frame(BINARY, data))
            self.assertEqual(c.read_message(timeout=30), (BINARY, data), "size %d" % n)

    def test_many_messages_in_one_write_answered_in_order(self):
        c, _ = self.open()
        msgs = [("m%d" % i).encode() * (i % 7) for i in range(200)]
        c.send(b"".join(frame(TEXT if i % 2 else BINARY, m) for i, m in enumerate(msgs)))
        for i, m in enumerate(msgs):
            self.assertEqual(c.read_message(), (TEXT if i % 2 else BINARY, m))

    def test_frame_cut_into_single_bytes(self):
        c, _ = self.open()
        send_bytewise(c.sock, frame(TEXT, "byte by byte \u00e9".encode()))
        self.assertEqual(c.read_message(), (TEXT, "byte by byte \u00e9".encode()))
        # A 64-bit length header byte by byte, then its payload in small pieces.
        data = os.urandom(70000)
        f = frame(BINARY, data)
        send_bytewise(c.sock, f[:14])
        for i in range(14, len(f), 997):
            c.sock.sendall(f[i:i + 997])
        self.assertEqual(c.read_message(), (BINARY, data))

    def test_handshake_and_frames_byte_by_byte(self):
        cid = new_id()
        key = new_key()
        s = connect(self.port)
        self.addCleanup(s.close)
        send_bytewise(s, handshake_request("/echo?id=" + cid, key=key) + frame(TEXT, b"slowly"))
        rd = Reader(s)
        r = rd.response()
        self.assertEqual(r.status, 101)
        self.assertEqual(r.header("sec-websocket-accept"), accept_for(key))
        self.assertEqual(WsClient(s, rd, r).read_message(), (TEXT, b"slowly"))

    def test_frames_pipelined_behind_the_handshake(self):
        pipelined = frame(TEXT, b"early one") + frame(BINARY, b"\x00early two") + frame(PING, b"early ping")
        c, _ = self.open(pipelined=pipelined)
        got = [c.read_frame() for _ in range(3)]
        # The pong may overtake the echoes; the echoes keep their order.
        self.assertEqual([(f.opcode, f.payload) for f in got if f.opcode != PONG],
                         [(TEXT, b"early one"), (BINARY, b"\x00early two")])
        self.assertEqual([(f.opcode, f.payload) for f in got if f.opcode == PONG], [(PONG, b"early ping")])

    def test_a_megabyte_pipelined_behind_the_handshake(self):
        for path in ("/echo", "/late-upgrade"):
            msgs = [os.urandom(10000) for _ in range(100)] + [os.urandom(200000)]
            c, _ = self.open(path, pipelined=b"".join(frame(BINARY, m) for m in msgs))
            for i, m in enumerate(msgs):
                self.assertEqual(c.read_message(), (BINARY, m), "%s message %d" % (path, i))

    def test_frames_written_right_behind_the_handshake_keep_their_order(self):
        """The handshake with the first frames, the rest in writes that
        follow at once (as a client that does not wait for the 101 does):
        every message comes back, in order. Twenty times: whatever arrives
        while the connection switches to WebSocket must come after what
        came with the handshake."""
        for trial in range(20):
            msgs = [os.urandom(1000) for _ in range(200)]
            data = b"".join(frame(BINARY, m) for m in msgs)
            key = new_key()
            s = connect(self.port)
            self.addCleanup(s.close)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(handshake_request("/echo", key=key) + data[:5000])
            for i in range(5000, len(data), 5000):
                s.sendall(data[i:i + 5000])
            rd = Reader(s)
            r = rd.response()
            self.assertEqual((r.status, r.header("sec-websocket-accept")), (101, accept_for(key)))
            c = WsClient(s, rd, r)
            for i, m in enumerate(msgs):
                self.assertEqual(c.read_message(), (BINARY, m), "trial %d, message %d" % (trial, i))
            s.close()

    def test_close_pipelined_behind_the_handshake(self):
        c, cid = self.open(pipelined=frame(CLOSE, close_payload(1000, "at once")))
        self.expect_close(c, 1000)
        self.assert_report(cid, "closed 1000 at once")

    def test_upgrade_after_a_request_on_the_same_connection(self):
        s = connect(self.port)
        self.addCleanup(s.close)
        rd = Reader(s)
        s.sendall(b"GET /report?id=none HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(rd.response().body, b"nil")
        key = new_key()
        s.sendall(handshake_request("/echo", key=key))
        r = rd.response()
        self.assertEqual((r.status, r.header("sec-websocket-accept")), (101, accept_for(key)))
        c = WsClient(s, rd, r)
        self.echo_ok(c, TEXT, b"on a kept-alive connection")

    def test_upgrade_pipelined_behind_a_request(self):
        s = connect(self.port)
        self.addCleanup(s.close)
        key = new_key()
        s.sendall(b"GET /report?id=none HTTP/1.1\r\nHost: x\r\n\r\n" + handshake_request("/echo", key=key) +
                  frame(TEXT, b"right behind"))
        rd = Reader(s)
        self.assertEqual(rd.response().body, b"nil")
        r = rd.response()
        self.assertEqual((r.status, r.header("sec-websocket-accept")), (101, accept_for(key)))
        self.assertEqual(WsClient(s, rd, r).read_message(), (TEXT, b"right behind"))

    def test_server_frames_are_unmasked(self):
        c, _ = self.open()
        c.send(frame(TEXT, b"look"))
        f = c.read_frame()  # read_frame refuses a masked frame
        self.assertEqual((f.rsv, f.opcode, f.payload), (0, TEXT, b"look"))

    def test_a_client_mask_of_zero_is_still_a_mask(self):
        c, _ = self.open()
        c.send(frame(TEXT, b"zero key", mask_key=b"\0\0\0\0"))
        self.assertEqual(c.read_message(), (TEXT, b"zero key"))

    def test_non_minimal_16_bit_length(self):
        self.violation([frame(TEXT, b"abc", length_form=16)], 1002)

    def test_non_minimal_16_bit_length_125(self):
        self.violation([frame(BINARY, b"a" * 125, length_form=16)], 1002)

    def test_non_minimal_64_bit_length(self):
        self.violation([frame(BINARY, b"b" * 200, length_form=64)], 1002)

    def test_non_minimal_64_bit_length_65535(self):
        self.violation([frame(BINARY, b"b" * 65535, length_form=64)], 1002)

    def test_64_bit_length_with_top_bit_set(self):
        c, cid = self.open()
        c.send(bytes([0x82, 0xFF]) + (1 << 63 | 5).to_bytes(8, "big") + b"\0\0\0\0" + b"hello")
        f = c.read_frame()
        self.assertEqual(f.opcode, CLOSE)
        # An impossible length: a protocol error (1009 would also say "too big").
        self.assertIn(f.code, (1002, 1009))
        self.assertTrue(c.closed(5))

    def test_unmasked_client_frame(self):
        self.violation([frame(TEXT, b"not masked", masked=False)], 1002)

    def test_unmasked_client_frame_after_a_good_one(self):
        c, cid = self.open()
        self.echo_ok(c, TEXT, b"fine")
        c.send(frame(BINARY, b"", masked=False))
        self.expect_close(c, 1002)

    def test_unmasked_ping(self):
        self.violation([frame(PING, b"p", masked=False)], 1002)

    def test_unmasked_close(self):
        self.violation([frame(CLOSE, close_payload(1000), masked=False)], 1002)

    # Limits (Autobahn 9.x, bounded by max_message_bytes).
    def test_message_of_exactly_the_limit(self):
        c, _ = self.open("/small")
        self.echo_ok(c, TEXT, b"a" * 1000)
        self.echo_ok(c, BINARY, b"\xff" * 1000)

    def test_fragmented_message_of_exactly_the_limit(self):
        c, _ = self.open("/small")
        c.send(frame(TEXT, b"a" * 600, fin=False) + frame(CONT, b"b" * 400))
        self.assertEqual(c.read_message(), (TEXT, b"a" * 600 + b"b" * 400))

    def test_message_over_the_limit_is_1009(self):
        self.violation([frame(TEXT, b"a" * 1001)], 1009, path="/small")

    def test_fragmented_message_over_the_limit_is_1009(self):
        frames = [frame(BINARY, b"x" * 400, fin=False), frame(CONT, b"y" * 400, fin=False),
                  frame(CONT, b"z" * 201, fin=True)]
        self.violation(frames, 1009, path="/small")

    def test_limit_is_checked_before_the_payload_comes(self):
        """A frame header announcing more than the limit is refused without
        waiting for (or buffering) its payload."""
        c, cid = self.open("/small")
        c.send(frame(BINARY, b"", length=10 * MIB, length_form=64)[:14])
        self.expect_close(c, 1009)

    def test_default_limit_is_1_mib(self):
        c, _ = self.open("/default")
        self.echo_ok(c, BINARY, b"\x01" * MIB)
        c.send(frame(BINARY, b"\x02" * (MIB + 1)))
        self.expect_close(c, 1009)

    def test_default_limit_across_fragments(self):
        frames = [frame(TEXT, b"a" * (MIB // 2), fin=False), frame(CONT, b"b" * (MIB // 2), fin=False),
                  frame(CONT, b"c", fin=True)]
        self.violation(frames, 1009, path="/default")

    def test_a_late_reader_slows_the_client_down(self):
        """While the handler does not read, the server stops reading too:
        a client sending 64 MiB is held back by TCP (its sends block), the
        server does not buffer it; then the handler gets every message."""
        c, cid = self.open("/late-reader")
        piece = b"m" * (MIB - 16)
        count = 64
        done = threading.Event()
        errors = []

        def send_all():
            try:
                for i in range(count):
                    c.send(frame(BINARY, piece))
                c.send(frame(TEXT, b"end"))
            except OSError as e:
                errors.append(e)
            done.set()
        rss0 = self.server.rss_kib()
        t = threading.Thread(target=send_all, daemon=True)
        t.start()
        # What the sender manages to hand over without the handler reading:
        # kernel buffers and about one message in the server, not 64 MiB.
        self.assertFalse(done.wait(deadline(1.5)), "the server took 64 MiB that nobody read")
        grown = self.server.rss_kib() - rss0
        self.assertLess(grown, 24 * 1024, "the server's memory grew by %d KiB" % grown)
        get(self.port, "/go?id=" + cid)
        self.assertTrue(done.wait(deadline(60)))
        self.assertEqual(errors, [])
        self.assertEqual(c.read_message(timeout=30), (TEXT, b"got %d messages, %d bytes" % (count, count * len(piece))))

    def test_send_waits_under_back_pressure(self):
        """The handler sends 48 MiB to a client that does not read for a
        while; everything arrives, in order, and the server did not buffer
        it all."""
        n, size = 48, MIB
        c, cid = self.open("/flood?n=%d&size=%d" % (n, size))
        time.sleep(deadline(0.5))  # the client reads nothing for a while: the server must hold back
        for i in range(1, n + 1):
            op, data = c.read_message(timeout=30)
            self.assertEqual(op, BINARY)
            self.assertEqual(len(data), size)
            self.assertEqual(data[:8], b"%08d" % i)
            self.assertEqual(data[-8:], b"%08d" % i)
            if i == 2:
                self.assertIsNone(self.report(cid, timeout=0.05), "the handler sent it all before the client read")
        self.assertEqual(self.report(cid), "sent %d" % n)
        c.send(frame(CLOSE, close_payload(1000)))
        self.expect_close(c, 1000)


# -------------------------------------------------------------- pings and pongs (Autobahn 2.x)


class PingTest(WsTestCase):
    def pong_for(self, payload, bytewise=False):
        c, _ = self.open()
        f = frame(PING, payload)
        if bytewise:
            send_bytewise(c.sock, f)
        else:
            c.send(f)
        got = c.read_frame()
        self.assertEqual((got.opcode, got.payload), (PONG, payload))
        self.assertTrue(got.fin)
        return c

    def test_ping_empty(self):
        self.pong_for(b"")

    def test_ping_text_payload(self):
        self.pong_for(b"Hello, world!")

    def test_ping_binary_payload(self):
        self.pong_for(bytes([0x00, 0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0x00, 0xFF]))

    def test_ping_125_bytes(self):
        self.pong_for(bytes(range(125)))

    def test_ping_125_bytes_byte_by_byte(self):
        self.pong_for(b"\xfe" * 125, bytewise=True)

    def test_ping_126_bytes_is_1002(self):
        self.violation([frame(PING, b"x" * 126)], 1002)

    def test_ping_with_16_bit_length_is_1002(self):
        self.violation([frame(PING, b"x" * 10, length_form=16)], 1002)

    def test_unsolicited_pong_is_ignored(self):
        c, _ = self.open()
        c.send(frame(PONG, b"") + frame(PONG, b"unsolicited") + frame(TEXT, b"after pongs"))
        self.assertEqual(c.read_message(), (TEXT, b"after pongs"))

    def test_pong_then_ping(self):
        c, _ = self.open()
        c.send(frame(PONG, b"pong first") + frame(PING, b"then ping"))
        f = c.read_frame()
        self.assertEqual((f.opcode, f.payload), (PONG, b"then ping"))

    def test_ten_pings_ten_pongs_in_order(self):
        c, _ = self.open()
        c.send(b"".join(frame(PING, b"ping %d" % i) for i in range(10)))
        for i in range(10):
            f = c.read_frame()
            self.assertEqual((f.opcode, f.payload), (PONG, b"ping %d" % i))

    def test_pings_are_not_messages(self):
        """The handler never sees a ping: only the text after them comes
        back."""
        c, _ = self.open()
        c.send(frame(PING, b"a") + frame(PING, b"b") + frame(TEXT, b"only me"))
        got = [c.read_frame() for _ in range(3)]
        self.assertEqual([(f.opcode, f.payload) for f in got],
                         [(PONG, b"a"), (PONG, b"b"), (TEXT, b"only me")])

    def test_ws_ping_from_the_handler(self):
        c, _ = self.open("/handler-ping")
        f = c.read_frame()
        self.assertEqual((f.opcode, f.payload), (PING, b"from the handler"))
        self.assertEqual(c.read_message(), (TEXT, b"ping=true nil"))
        c.send(frame(PONG, b"from the handler"))
        self.echo_ok(c, TEXT, b"the pong was not a message")

    def test_ping_answered_while_the_handler_waits_in_recv(self):
        c, _ = self.open("/echo")
        self.echo_ok(c, TEXT, b"the handler is in recv now")
        c.send(frame(PING, b"while recv waits"))
        f = c.read_frame()
        self.assertEqual((f.opcode, f.payload), (PONG, b"while recv waits"))


# -------------------------------------------------------------- reserved bits (3.x) and opcodes (4.x)


def _rsv_cases():
    cases = {}
    for rsv in range(1, 8):
        def on_text(self, rsv=rsv):
            c, cid = self.open()
            self.echo_ok(c, TEXT, b"small first")
            c.send(frame(TEXT, b"with rsv", rsv=rsv))
            self.expect_close(c, 1002)
            self.assertRegex(self.report(cid), r"^closed 1002 ")
        cases["rsv%d_on_text" % rsv] = on_text
    cases["rsv1_on_binary"] = lambda self: self.violation([frame(BINARY, b"\x00\xff", rsv=4)], 1002)
    cases["rsv2_on_ping"] = lambda self: self.violation([frame(PING, b"ping", rsv=2)], 1002)
    cases["rsv3_on_pong"] = lambda self: self.violation([frame(PONG, b"", rsv=1)], 1002)
    cases["rsv1_on_close"] = lambda self: self.violation([frame(CLOSE, close_payload(1000), rsv=4)], 1002)
    cases["rsv_on_continuation"] = lambda self: self.violation(
        [frame(TEXT, b"a", fin=False), frame(CONT, b"b", rsv=2)], 1002)
    cases["rsv_on_a_frame_after_a_ping"] = lambda self: self.violation(
        [frame(PING, b"p"), frame(TEXT, b"x", rsv=7)], 1002, before=[(PONG, b"p")])
    return cases


def _opcode_cases():
    cases = {}
    for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF):
        def reserved(self, op=op):
            c, cid = self.open()
            self.echo_ok(c, TEXT, b"before")
            c.send(frame(op, b"reserved" if op < 8 else b""))
            self.expect_close(c, 1002)
            self.assertRegex(self.report(cid), r"^closed 1002 ")
        cases["reserved_opcode_%x" % op] = reserved
    cases["reserved_opcode_after_a_ping"] = lambda self: self.violation(
        [frame(PING, b"x"), frame(0xB, b"y")], 1002, before=[(PONG, b"x")])
    return cases


class ReservedBitsTest(WsTestCase):
    pass


class OpcodeTest(WsTestCase):
    pass


_add_cases(ReservedBitsTest, _rsv_cases())
_add_cases(OpcodeTest, _opcode_cases())


# -------------------------------------------------------------- fragmentation (5.x)


class FragmentationTest(WsTestCase):
    def test_text_in_two_fragments(self):
        c, _ = self.open()
        c.send(frame(TEXT, b"Hello, ", fin=False) + frame(CONT, b"World!"))
        self.assertEqual(c.read_message(), (TEXT, b"Hello, World!"))

    def test_fragments_in_separate_writes(self):
        c, _ = self.open()
        c.send(frame(TEXT, b"frag1 ", fin=False))
        c.send(frame(CONT, b"frag2 ", fin=False))
        c.send(frame(CONT, b"frag3"))
        self.assertEqual(c.read_message(), (TEXT, b"frag1 frag2 frag3"))

    def test_binary_in_1000_fragments(self):
        c, _ = self.open()
        pieces = [os.urandom(37) for _ in range(1000)]
        frames = [frame(BINARY if i == 0 else CONT, p, fin=(i == 999)) for i, p in enumerate(pieces)]
        c.send(b"".join(frames))
        self.assertEqual(c.read_message(), (BINARY, b"".join(pieces)))

    def test_empty_fragments(self):
        c, _ = self.open()
        c.send(frame(TEXT, b"", fin=False) + frame(CONT, b"", fin=False) + frame(CONT, b"abc", fin=False) +
               frame(CONT, b""))
        self.assertEqual(c.read_message(), (TEXT, b"abc"))
        c.send(frame(BINARY, b"", fin=False) + frame(CONT, b""))
        self.assertEqual(c.read_message(), (BINARY, b""))

    def test_pings_between_fragments(self):
        c, _ = self.open()
        c.send(frame(TEXT, b"fragment1", fin=False) + frame(PING, b"ping one") +
               frame(CONT, b"fragment2", fin=False) + frame(PING, b"ping two") + frame(CONT, b"fragment3"))
        got = [c.read_frame() for _ in range(3)]
        self.assertEqual([(f.opcode, f.payload) for f in got],
                         [(PONG, b"ping one"), (PONG, b"ping two"), (TEXT, b"fragment1fragment2fragment3")])

    def test_pings_between_fragments_in_separate_writes(self):
        c, _ = self.open()
        c.send(frame(BINARY, b"\x01", fin=False))
        c.send(frame(PING, b"mid"))
        f = c.read_frame()
        self.assertEqual((f.opcode, f.payload), (PONG, b"mid"), "the pong does not wait for the message's end")
        c.send(frame(PONG, b"unsolicited"))
        c.send(frame(CONT, b"\x02"))
        self.assertEqual(c.read_message(), (BINARY, b"\x01\x02"))

    def test_fragmented_ping_is_1002(self):
        self.violation([frame(PING, b"frag", fin=False), frame(CONT, b"ment")], 1002)

    def test_fragmented_pong_is_1002(self):
        self.violation([frame(PONG, b"frag", fin=False), frame(CONT, b"ment")], 1002)

    def test_fragmented_close_is_1002(self):
        self.violation([frame(CLOSE, close_payload(1000), fin=False)], 1002)

    def test_continuation_without_a_start_is_1002(self):
        self.violation([frame(CONT, b"orphan")], 1002)

    def test_unfinished_continuation_without_a_start_is_1002(self):
        self.violation([frame(CONT, b"orphan", fin=False)], 1002)

    def test_continuation_after_a_finished_message_is_1002(self):
        c, cid = self.open()
        self.echo_ok(c, TEXT, b"done")
        c.send(frame(CONT, b"more"))
        self.expect_close(c, 1002)

    def test_new_text_inside_a_fragmented_message_is_1002(self):
        self.violation([frame(TEXT, b"one", fin=False), frame(TEXT, b"two")], 1002)

    def test_new_binary_inside_a_fragmented_text_is_1002(self):
        self.violation([frame(TEXT, b"one", fin=False), frame(BINARY, b"two", fin=False)], 1002)

    def test_close_inside_a_fragmented_message_is_honoured(self):
        c, cid = self.open()
        c.send(frame(TEXT, b"never finished", fin=False) + frame(CLOSE, close_payload(1000, "mid message")))
        self.expect_close(c, 1000)
        self.assert_report(cid, "closed 1000 mid message")


# -------------------------------------------------------------- UTF-8 (6.x)


def _utf8_cases():
    cases = {}
    for name, data in UTF8_VALID:
        def valid(self, data=data):
            c, _ = self.open()
            self.echo_ok(c, TEXT, data)

        def valid_split(self, data=data):
            # Cut at every byte: the validator keeps its state across
            # fragments.
            c, _ = self.open()
            for i in range(len(data) + 1):
                c.send(frame(TEXT, data[:i], fin=False) + frame(CONT, data[i:]))
                self.assertEqual(c.read_message(), (TEXT, data), "cut at %d" % i)

        def valid_bytewise_fragments(self, data=data):
            c, _ = self.open()
            frames = [frame(TEXT if i == 0 else CONT, data[i:i + 1], fin=(i == len(data) - 1))
                      for i in range(len(data))]
            c.send(b"".join(frames))
            self.assertEqual(c.read_message(), (TEXT, data))
        cases["valid_utf8_" + name] = valid
        cases["valid_utf8_split_anywhere_" + name] = valid_split
        cases["valid_utf8_one_byte_fragments_" + name] = valid_bytewise_fragments

    for name, data in UTF8_INVALID:
        def invalid(self, data=data):
            self.violation([frame(TEXT, data)], 1007)

        def invalid_split(self, data=data):
            # The bad sequence straddles a fragment boundary.
            cut = max(1, len(data) - 2)
            self.violation([frame(TEXT, data[:cut], fin=False), frame(CONT, data[cut:])], 1007)

        def invalid_in_close_reason(self, data=data):
            self.violation([frame(CLOSE, close_payload(1000, data))], 1007)
        cases["invalid_utf8_" + name] = invalid
        cases["invalid_utf8_across_fragments_" + name] = invalid_split
        cases["invalid_utf8_in_close_reason_" + name] = invalid_in_close_reason

    def binary_is_not_checked(self):
        c, _ = self.open()
        for _, data in UTF8_INVALID:
            self.echo_ok(c, BINARY, data)
    cases["binary_messages_are_not_utf8_checked"] = binary_is_not_checked

    def invalid_after_valid_fragments(self):
        self.violation([frame(TEXT, "\u03ba\u1f79".encode(), fin=False), frame(CONT, b"\xce\xbc", fin=False),
                        frame(CONT, b"\xed\xa0\x80"), frame(CONT, b"never")], 1007)
    cases["invalid_utf8_in_a_later_fragment"] = invalid_after_valid_fragments

    def fail_fast(self):
        # Autobahn 6.4: an invalid sequence in the first fragment is enough;
        # the rest of the message never comes.
        self.violation([frame(TEXT, "\u03ba\u1f79".encode() + b"\xf4\x90\x80\x80", fin=False)], 1007)
    cases["invalid_utf8_fails_before_the_message_ends"] = fail_fast

    def truncated_at_the_message_end(self):
        self.violation([frame(TEXT, b"ok \xf0\x9f", fin=False), frame(CONT, b"\x98", fin=False),
                        frame(CONT, b"")], 1007)
    cases["utf8_sequence_cut_by_the_message_end"] = truncated_at_the_message_end

    def good_then_bad(self):
        c, cid = self.open()
        self.echo_ok(c, TEXT, "\u00e9".encode())
        c.send(frame(TEXT, b"\xe9"))
        self.expect_close(c, 1007)
        self.assertRegex(self.report(cid), r"^closed 1007 ")
    cases["valid_text_then_latin1"] = good_then_bad
    return cases


class Utf8Test(WsTestCase):
    pass


_add_cases(Utf8Test, _utf8_cases())


# -------------------------------------------------------------- closing (7.x)


def _close_code_cases():
    cases = {}
    for code in CLOSE_VALID:
        def valid(self, code=code):
            c, cid = self.open()
            c.send(frame(CLOSE, close_payload(code, "reason %d" % code)))
            self.expect_close(c, code)
            self.assert_report(cid, "closed %d reason %d" % (code, code))
        cases["close_code_%d_is_echoed" % code] = valid
    for code in CLOSE_INVALID:
        def invalid(self, code=code):
            self.violation([frame(CLOSE, close_payload(code))], 1002)
        cases["close_code_%d_is_1002" % code] = invalid
    return cases


class ClosingTest(WsTestCase):
    def test_close_1000_echoed_and_server_ends_tcp(self):
        c, cid = self.open()
        self.echo_ok(c, TEXT, b"before closing")
        c.send(frame(CLOSE, close_payload(1000)))
        self.expect_close(c, 1000)  # the server closes TCP without the client's help
        self.assert_report(cid, "closed 1000 ")

    def test_close_with_reason(self):
        c, cid = self.open()
        c.send(frame(CLOSE, close_payload(4000, "bye \u00e9")))
        self.expect_close(c, 4000)
        self.assert_report(cid, "closed 4000 bye \u00e9")

    def test_close_without_payload_is_1005_for_the_handler(self):
        c, cid = self.open()
        c.send(frame(CLOSE, b""))
        f = c.read_frame()
        self.assertEqual(f.opcode, CLOSE)
        self.assertIn(f.payload, (b"", close_payload(1000)), "an empty close is answered empty or with 1000")
        self.assertTrue(c.closed(5))
        self.assert_report(cid, "closed 1005 ")

    def test_close_with_125_byte_payload(self):
        c, cid = self.open()
        reason = "r" * 123
        c.send(frame(CLOSE, close_payload(1000, reason)))
        self.expect_close(c, 1000)
        self.assert_report(cid, "closed 1000 " + reason)

    def test_close_with_126_byte_payload_is_1002(self):
        self.violation([frame(CLOSE, close_payload(1000, "r" * 124))], 1002)

    def test_close_with_1_byte_payload_is_1002(self):
        self.violation([frame(CLOSE, b"\x03")], 1002)

    def test_nothing_after_the_close_is_answered(self):
        c, cid = self.open()
        c.send(frame(CLOSE, close_payload(1000)) + frame(TEXT, b"too late") + frame(PING, b"too late"))
        self.expect_close(c, 1000)
        self.assertEqual(bytes(c.rd.buf), b"", "frames after the close were answered")
        self.assert_report(cid, "closed 1000 ")

    def test_second_close_is_not_answered(self):
        c, _ = self.open()
        c.send(frame(CLOSE, close_payload(1000)) + frame(CLOSE, close_payload(1001)))
        self.expect_close(c, 1000)
        self.assertEqual(bytes(c.rd.buf), b"")

    def test_send_and_ping_after_the_end_return_closed(self):
        c, cid = self.open("/after-end")
        c.send(frame(CLOSE, close_payload(3001, "x")))
        self.expect_close(c, 3001)
        self.assert_report(cid, "recv=closed 3001 send=nil closed ping=nil closed")

    def test_send_after_a_drop_returns_closed(self):
        c, cid = self.open("/after-end")
        c.close()
        self.assert_report(cid, "recv=closed 1006 send=nil closed ping=nil closed")

    def test_tcp_drop_without_close_is_1006(self):
        c, cid = self.open()
        self.echo_ok(c, TEXT, b"then gone")
        c.close()
        self.assert_report(cid, "closed 1006 ")

    def test_half_close_without_close_frame_is_1006(self):
        c, cid = self.open()
        self.echo_ok(c, TEXT, b"then half-closed")
        c.sock.shutdown(socket.SHUT_WR)
        self.assertTrue(c.closed(10))
        self.assert_report(cid, "closed 1006 ")

    def test_handler_return_closes_with_1000(self):
        c, cid = self.open("/once")
        c.send(frame(TEXT, b"one"))
        self.assertEqual(c.read_message(), (TEXT, b"bye one"))
        f = c.read_frame()
        self.assertEqual((f.opcode, f.code), (CLOSE, 1000))
        c.send(frame(CLOSE, close_payload(1000)))
        self.assertTrue(c.closed(10))

    def test_server_close_handshake(self):
        c, cid = self.open("/server-close")
        c.send(frame(TEXT, b"x"))
        self.assertEqual(c.read_message(), (TEXT, b"closing after x"))
        f = c.read_frame()
        self.assertEqual((f.opcode, f.code, f.reason), (CLOSE, 4001, b"done"))
        self.assertIsNone(self.report(cid, timeout=0.3), "ws:close returned before the client's close")
        c.send(frame(CLOSE, close_payload(4001)))
        self.assertTrue(c.closed(10))
        self.assertRegex(self.report(cid), r"^close=true nil; recv after=nil closed$")

    def test_server_close_gives_up_after_close_timeout(self):
        c, cid = self.open("/server-close?ct=0.5")
        c.send(frame(TEXT, b"y"))
        self.assertEqual(c.read_message(), (TEXT, b"closing after y"))
        start = time.monotonic()
        f = c.read_frame()
        self.assertEqual((f.opcode, f.code), (CLOSE, 4001))
        # The client never answers: the server ends the connection itself.
        self.assertTrue(c.closed(10))
        self.assertGreater(time.monotonic() - start, 0.3)
        self.assertRegex(self.report(cid), r"^close=true nil; recv after=nil closed$")

    def test_messages_during_server_close_are_dropped(self):
        c, cid = self.open("/server-close")
        c.send(frame(TEXT, b"z"))
        self.assertEqual(c.read_message(), (TEXT, b"closing after z"))
        f = c.read_frame()
        self.assertEqual(f.opcode, CLOSE)
        c.send(frame(TEXT, b"late") + frame(CLOSE, close_payload(1000)))
        self.assertTrue(c.closed(10))
        self.assertEqual(bytes(c.rd.buf), b"")
        self.assertRegex(self.report(cid), r"^close=true nil; recv after=nil closed$")


_add_cases(ClosingTest, _close_code_cases())


# -------------------------------------------------------------- timers, threads, one reader


class TimersTest(WsTestCase):
    def test_recv_timeout_leaves_the_socket_usable(self):
        c, cid = self.open("/timeout")
        start = time.monotonic()
        self.assertEqual(c.read_message(), (TEXT, b"first recv: nil timeout"))
        self.assertGreater(time.monotonic() - start, 0.25)
        self.echo_ok(c, TEXT, b"still there")
        self.echo_ok(c, BINARY, b"\x00still")
        c.send(frame(CLOSE, close_payload(1000)))
        self.expect_close(c, 1000)
        self.assert_report(cid, "closed 1000 ")

    def test_idle_timeout_closes_a_silent_client(self):
        c, cid = self.open("/idle?s=0.5")
        start = time.monotonic()
        f = c.read_frame(timeout=10)
        elapsed = time.monotonic() - start
        self.assertEqual(f.opcode, CLOSE)
        self.assertGreater(elapsed, 0.4, "closed before the idle timeout")
        self.assertTrue(c.closed(5))
        self.assertRegex(self.report(cid), r"^closed \d+ ")

    def test_idle_timeout_spares_a_client_that_talks(self):
        c, _ = self.open("/idle?s=%g" % deadline(1.0))
        end = time.monotonic() + deadline(2.5)
        n = 0
        while time.monotonic() < end:  # pacing, not synchronisation: a message each fifth of the timeout
            self.echo_ok(c, TEXT, b"alive %d" % n)
            n += 1
            time.sleep(deadline(0.2))
        self.echo_ok(c, TEXT, b"still alive")
        f = c.read_frame(timeout=10)  # and once silent, it goes
        self.assertEqual(f.opcode, CLOSE)

    def test_ping_interval_pings_a_silent_client(self):
        c, cid = self.open("/ping")
        start = time.monotonic()
        f = c.read_frame(timeout=10)
        self.assertEqual(f.opcode, PING)
        self.assertGreater(time.monotonic() - start, 0.2)
        # Answered, it goes on: more pings, no close.
        for _ in range(3):
            c.send(frame(PONG, f.payload))
            f = c.read_frame(timeout=10)
            self.assertEqual(f.opcode, PING)
        c.send(frame(PONG, f.payload) + frame(TEXT, b"kept alive by pongs"))
        while True:  # another ping may come before the echo
            f = c.read_frame(timeout=10)
            if f.opcode != PING:
                break
            c.send(frame(PONG, f.payload))
        self.assertEqual((f.opcode, f.payload), (TEXT, b"kept alive by pongs"))

    def test_ping_interval_closes_a_client_that_never_answers(self):
        c, cid = self.open("/ping")
        f = c.read_frame(timeout=10)
        self.assertEqual(f.opcode, PING)
        frames = [f]
        while True:  # the ping goes unanswered: a close comes, then the end
            f = c.read_frame(timeout=10)
            frames.append(f)
            if f.opcode == CLOSE or len(frames) > 5:
                break
        self.assertEqual(f.opcode, CLOSE, frames)
        self.assertTrue(c.closed(5))
        self.assertRegex(self.report(cid), r"^closed \d+ ")

    def test_ping_interval_off(self):
        c, _ = self.open("/echo")  # ping_interval = false
        with self.assertRaises(socket.timeout):
            c.read_frame(timeout=1.0)
        self.echo_ok(c, TEXT, b"no pings came")

    def test_threads_share_the_websocket_fate_on_close(self):
        c, cid = self.open("/threads")
        self.assertEqual(c.read_message(), (TEXT, b"ready"))
        c.send(frame(CLOSE, close_payload(1000)))
        self.expect_close(c, 1000)
        self.assert_report(cid, "handler=recv nil closed 1000; sleep=nil closed; sub=nil closed")

    def test_threads_share_the_websocket_fate_on_drop(self):
        c, cid = self.open("/threads")
        self.assertEqual(c.read_message(), (TEXT, b"ready"))
        c.close()
        self.assert_report(cid, "handler=recv nil closed 1006; sleep=nil closed; sub=nil closed")

    def test_waits_of_a_handler_not_in_recv_end_with_the_websocket(self):
        c, cid = self.open("/threads?handler=sleep")
        self.assertEqual(c.read_message(), (TEXT, b"ready"))
        c.send(frame(CLOSE, close_payload(1000)))
        self.expect_close(c, 1000)
        self.assert_report(cid, "handler=sleep nil closed; sleep=nil closed; sub=nil closed")

    def test_a_second_recv_raises(self):
        c, cid = self.open("/two-recv")
        op, data = c.read_message()
        self.assertEqual(op, TEXT)
        self.assertRegex(data.decode(), r"^second recv: false .+")
        c.send(frame(TEXT, b"for the thread"))
        self.assertEqual(c.read_message(), (TEXT, b"thread got for the thread"))
        self.echo_ok(c, TEXT, b"then the handler")


# -------------------------------------------------------------- Python's websockets library as the client

WS_CLIENT = r'''
import asyncio, json, sys
import websockets

async def main(mode, url):
    out = {}
    if mode == "echo":
        async with websockets.connect(url, max_size=None, ping_interval=None) as ws:
            sizes = [0, 1, 125, 126, 65535, 65536, 1 << 20]
            ok = []
            for n in sizes:
                text = ("\u00e9" * (n // 2)) + ("x" * (n % 2))
                await ws.send(text)
                ok.append(await ws.recv() == text)
                data = bytes(i % 251 for i in range(n))
                await ws.send(data)
                ok.append(await ws.recv() == data)
            out["echo"] = ok
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, 10)
            out["pong"] = True
            await ws.close(4000, "bye")
            out["close"] = [ws.close_code, ws.close_reason]
    elif mode == "server-close":
        async with websockets.connect(url, ping_interval=None) as ws:
            await ws.send("x")
            out["first"] = await ws.recv()
            try:
                await ws.recv()
                out["second"] = "a message"
            except websockets.ConnectionClosed as e:
                out["closed"] = [ws.close_code, ws.close_reason]
    elif mode == "handler-returns":
        async with websockets.connect(url, ping_interval=None) as ws:
            await ws.send("one")
            out["first"] = await ws.recv()
            try:
                await ws.recv()
            except websockets.ConnectionClosed:
                out["closed"] = [ws.close_code, ws.close_reason]
    elif mode == "subprotocol":
        async with websockets.connect(url, subprotocols=["chat", "superchat"], ping_interval=None) as ws:
            out["subprotocol"] = ws.subprotocol
            out["first"] = await ws.recv()
    elif mode == "ping-interval":
        # The library answers the server's pings by itself: alive after 2 s.
        async with websockets.connect(url, ping_interval=None) as ws:
            await asyncio.sleep(float(sys.argv[3]))
            await ws.send("still here")
            out["echo"] = await ws.recv()
    elif mode == "too-big":
        async with websockets.connect(url, ping_interval=None, max_size=None) as ws:
            await ws.send(b"x" * 1001)
            try:
                await ws.recv()
            except websockets.ConnectionClosed:
                out["closed"] = [ws.close_code, ws.close_reason]
    elif mode == "sigterm":
        async with websockets.connect(url, ping_interval=None) as ws:
            await ws.send("hello")
            out["first"] = await ws.recv()
            print("READY", flush=True)
            try:
                await asyncio.wait_for(ws.recv(), 60)
            except websockets.ConnectionClosed:
                out["closed"] = [ws.close_code, ws.close_reason]
    elif mode == "concurrent":
        # n clients at once, 30 messages each (text and binary, 0 to 70000
        # bytes), then a normal close.
        import random

        async def one(i):
            rnd = random.Random(i)
            async with websockets.connect(url, max_size=None, ping_interval=None) as ws:
                for j in range(30):
                    n = rnd.choice([0, 1, 100, 5000, 70000])
                    if j % 2:
                        m = (bytes(rnd.getrandbits(8) for _ in range(256)) * (n // 256 + 1))[:n]
                    else:
                        m = ("c%d-%d;" % (i, j) * (n // 4 + 1))[:n]
                    await ws.send(m)
                    if await ws.recv() != m:
                        return "mismatch %d %d" % (i, j)
                await ws.close()
                return ws.close_code
        res = await asyncio.gather(*[one(i) for i in range(int(sys.argv[3]))], return_exceptions=True)
        out["closed_1000"] = sum(1 for r in res if r == 1000)
        out["other"] = [repr(r) for r in res if r != 1000][:5]
    print(json.dumps(out), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
'''


def run_ws_client(mode, url, *extra, timeout=60):
    r = subprocess.run([SYSTEM_PYTHON, "-c", WS_CLIENT, mode, url] + list(extra), capture_output=True, text=True,
                       timeout=deadline(timeout))
    if r.returncode != 0:
        raise AssertionError("websockets client failed (%d): %s" % (r.returncode, r.stderr[-3000:]))
    return json.loads(r.stdout.strip().splitlines()[-1])


class WebsocketsLibraryTest(WsTestCase):
    def url(self, path):
        return "ws://127.0.0.1:%d%s" % (self.port, path)

    def test_echo_ping_and_close(self):
        cid = new_id("lib")
        out = run_ws_client("echo", self.url("/default?id=" + cid))
        self.assertEqual(out["echo"], [True] * 14)
        self.assertTrue(out["pong"])
        self.assertEqual(out["close"][0], 4000, "the server echoes the client's close code")
        self.assert_report(cid, "closed 4000 bye")

    def test_server_initiated_close(self):
        cid = new_id("lib")
        out = run_ws_client("server-close", self.url("/server-close?id=" + cid))
        self.assertEqual(out["first"], "closing after x")
        self.assertEqual(out["closed"], [4001, "done"])
        self.assertRegex(self.report(cid), r"^close=true nil; recv after=nil closed$")

    def test_handler_return_is_1000(self):
        out = run_ws_client("handler-returns", self.url("/once"))
        self.assertEqual(out["first"], "bye one")
        self.assertEqual(out["closed"][0], 1000)

    def test_subprotocol(self):
        out = run_ws_client("subprotocol", self.url("/proto"))
        self.assertEqual(out["subprotocol"], "chat")
        self.assertEqual(out["first"], "protocol=chat")

    def test_pings_answered_by_the_library_keep_it_alive(self):
        out = run_ws_client("ping-interval", self.url("/ping"), "%g" % deadline(2))
        self.assertEqual(out["echo"], "still here")

    def test_200_concurrent_clients(self):
        out = run_ws_client("concurrent", self.url("/default"), "200", timeout=120)
        self.assertEqual(out, {"closed_1000": 200, "other": []})
        assert_nothing_left(self, self.port)

    def test_too_big_is_1009(self):
        cid = new_id("lib")
        out = run_ws_client("too-big", self.url("/small?id=" + cid))
        self.assertEqual(out["closed"][0], 1009)
        self.assertRegex(self.report(cid), r"^closed 1009 ")


# -------------------------------------------------------------- the client: websocket.connect

WS_SERVER = r'''
import asyncio, http, json, os, signal, sys
import websockets

signal.alarm(int(sys.argv[1]))  # bounded whatever happens

async def handler(ws, path):
    if path == "/pinger":
        pong = await ws.ping(b"from the server")
        await asyncio.wait_for(pong, 10)
        await ws.send("pong came")
    elif path == "/fragments":
        await ws.send(["frag1 ", "frag2 ", "frag3"])
    if path.startswith("/info"):
        h = ws.request_headers
        await ws.send(json.dumps({"subprotocol": ws.subprotocol, "origin": h.get("Origin"),
                                  "x_test": h.get("X-Test"), "host": h.get("Host"), "path": path}))
    try:
        async for m in ws:
            await ws.send(m)
    except websockets.ConnectionClosed:
        pass
    print("closed %s %s %r" % (path, ws.close_code, ws.close_reason), flush=True)

async def process_request(path, headers):
    if path == "/deny":
        return http.HTTPStatus.FORBIDDEN, [("Content-Type", "text/plain")], b"denied\n"
    return None

async def main():
    async with websockets.serve(handler, "127.0.0.1", 0, subprotocols=["beta", "alpha"],
                                process_request=process_request, max_size=None, ping_interval=None) as srv:
        print("PORT %d" % srv.sockets[0].getsockname()[1], flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)

asyncio.run(main())
os._exit(0)
'''


class RawWsServer:
    """A one-connection WebSocket server in this process, to look at the
    client's bytes: it records each frame's mask bit and key."""

    def __init__(self, accept_value=None, extra_headers="", first=b"", with_101=False):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.lsock.settimeout(deadline(20))
        self.port = self.lsock.getsockname()[1]
        self.accept_value = accept_value
        self.extra_headers = extra_headers
        self.first = first  # bytes sent right after the 101
        self.with_101 = with_101  # in the same write as the 101
        self.frames = []  # (masked, key, opcode, payload)
        self.request = None
        self.error = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            s, _ = self.lsock.accept()
            s.settimeout(deadline(20))
            buf = b""
            while b"\r\n\r\n" not in buf:
                b = s.recv(4096)
                if not b:
                    return
                buf += b
            head, buf = buf.split(b"\r\n\r\n", 1)
            self.request = head.decode()
            key = [ln.split(":", 1)[1].strip() for ln in self.request.split("\r\n")
                   if ln.lower().startswith("sec-websocket-key:")][0]
            head = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Accept: %s\r\n%s\r\n" % (self.accept_value or accept_for(key),
                                                           self.extra_headers)).encode()
            if self.with_101:
                s.sendall(head + self.first)
                self.first = b""
            else:
                s.sendall(head)
            if self.accept_value:
                s.close()
                return
            s.sendall(self.first)

            def take(n):
                nonlocal buf
                while len(buf) < n:
                    b = s.recv(65536)
                    if not b:
                        raise EOFError
                    buf += b
                d, buf = buf[:n], buf[n:]
                return d
            while True:
                b0, b1 = take(2)
                n = b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(take(2), "big")
                elif n == 127:
                    n = int.from_bytes(take(8), "big")
                masked = bool(b1 & 0x80)
                key = take(4) if masked else None
                payload = take(n)
                if masked:
                    payload = mask(payload, key)
                op = b0 & 0x0F
                self.frames.append((masked, key, op, payload))
                if op in (TEXT, BINARY):
                    s.sendall(frame(op, payload, masked=False))
                elif op == CLOSE:
                    s.sendall(frame(CLOSE, payload[:2], masked=False))
                    s.close()
                    return
        except Exception as e:  # noqa: BLE001 - the test asserts on it
            self.error = e

    def close(self):
        self.lsock.close()
        self.thread.join(deadline(20))


class ClientTest(WsTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.peer = subprocess.Popen([SYSTEM_PYTHON, "-c", WS_SERVER, str(int(deadline(600)))],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = cls.peer.stdout.readline()
        if not line.startswith("PORT "):
            cls.peer.kill()
            raise AssertionError("websockets server did not start: %s %s" % (line, cls.peer.stderr.read()))
        cls.peer_port = int(line.split()[1])
        cls.peer_lines = queue.Queue()

        def pump():
            for ln in cls.peer.stdout:
                cls.peer_lines.put(ln.strip())
        threading.Thread(target=pump, daemon=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.peer.stdin.close()
        try:
            cls.peer.wait(deadline(20))
        except subprocess.TimeoutExpired:
            cls.peer.kill()
            cls.peer.wait()
        super().tearDownClass()

    def client(self, url, **q):
        from urllib.parse import urlencode
        q["url"] = url
        r = get(self.port, "/client?" + urlencode(q), timeout=60)
        self.assertEqual(r.status, 200, r.body)
        return r.body.decode()

    def peer_line(self):
        """The websockets server's next line (what it saw of a connection)."""
        try:
            return self.peer_lines.get(timeout=deadline(10))
        except queue.Empty:
            return None

    def test_to_tendril_itself(self):
        cid = new_id("cl")
        out = self.client("ws://127.0.0.1:%d/echo?id=%s" % (self.port, cid))
        self.assertEqual(out, "protocol=nil send=true echo=text:hello from tendril binary=binary:true close=true "
                              "after=nil closed 4002")
        self.assert_report(cid, "closed 4002 client done")

    def test_to_tendril_with_subprotocols(self):
        out = self.client("ws://127.0.0.1:%d/proto" % self.port, protocols="mqtt,chat", first="1")
        self.assertTrue(out.startswith("protocol=chat first=text:protocol=chat send=true echo=text:hello"), out)

    def test_client_limit_is_1009(self):
        cid = new_id("cl")
        out = self.client("ws://127.0.0.1:%d/echo?id=%s" % (self.port, cid), max="100", text="y" * 200)
        self.assertEqual(out, "protocol=nil send=true echo=closed:1009 after=nil closed 1009")
        self.assertRegex(self.report(cid), r"^closed 1009 ")

    def test_to_websockets_server(self):
        out = self.client("ws://127.0.0.1:%d/echo" % self.peer_port)
        self.assertEqual(out, "protocol=nil send=true echo=text:hello from tendril binary=binary:true close=true "
                              "after=nil closed 4002")
        self.assertEqual(self.peer_line(), "closed /echo 4002 'client done'")

    def test_to_websockets_server_headers_origin_subprotocol(self):
        out = self.client("ws://127.0.0.1:%d/info?a=1" % self.peer_port, protocols="gamma,alpha",
                          origin="https://app.example", header="hdr-value", first="1")
        self.assertTrue(out.startswith("protocol=alpha first=text:"), out)
        info = json.loads(out.split("first=text:", 1)[1].split(" send=", 1)[0])
        self.assertEqual(info, {"subprotocol": "alpha", "origin": "https://app.example", "x_test": "hdr-value",
                                "host": "127.0.0.1:%d" % self.peer_port, "path": "/info?a=1"})
        self.assertIn("close=true", out)
        self.assertEqual(self.peer_line(), "closed /info?a=1 4002 'client done'")

    def test_client_answers_pings(self):
        out = self.client("ws://127.0.0.1:%d/pinger" % self.peer_port, first="1")
        self.assertTrue(out.startswith("protocol=nil first=text:pong came send=true echo=text:hello"), out)
        self.assertEqual(self.peer_line(), "closed /pinger 4002 'client done'")

    def test_client_reassembles_fragments(self):
        out = self.client("ws://127.0.0.1:%d/fragments" % self.peer_port, first="1")
        self.assertTrue(out.startswith("protocol=nil first=text:frag1 frag2 frag3 send=true"), out)
        self.assertEqual(self.peer_line(), "closed /fragments 4002 'client done'")

    def test_client_fails_on_invalid_utf8_with_1007(self):
        srv = RawWsServer(first=frame(TEXT, b"bad \xc0\xaf", masked=False))
        self.addCleanup(srv.close)
        out = self.client("ws://127.0.0.1:%d/raw" % srv.port, first="1")
        self.assertEqual(out, "protocol=nil first=closed:1007")
        srv.thread.join(deadline(20))
        self.assertEqual([(op, m, p[:2]) for m, _, op, p in srv.frames], [(CLOSE, True, b"\x03\xef")])

    def test_client_fails_on_a_masked_server_frame_with_1002(self):
        srv = RawWsServer(first=frame(TEXT, b"masked by a server"))
        self.addCleanup(srv.close)
        out = self.client("ws://127.0.0.1:%d/raw" % srv.port, first="1")
        self.assertEqual(out, "protocol=nil first=closed:1002")
        srv.thread.join(deadline(20))
        self.assertEqual([(op, m, p[:2]) for m, _, op, p in srv.frames], [(CLOSE, True, b"\x03\xea")])

    def test_client_sees_the_server_close_code(self):
        srv = RawWsServer(first=frame(CLOSE, close_payload(4321, "server says bye"), masked=False))
        self.addCleanup(srv.close)
        out = self.client("ws://127.0.0.1:%d/raw" % srv.port, first="1")
        self.assertEqual(out, "protocol=nil first=closed:4321")
        srv.thread.join(deadline(20))
        self.assertEqual([(op, m, p[:2]) for m, _, op, p in srv.frames], [(CLOSE, True, b"\x10\xe1")])

    def test_client_frames_right_behind_the_101_keep_their_order(self):
        """A server that sends its first frames at once, in the write of its
        101 or right after it: the client gets every message, in order."""
        from urllib.parse import urlencode
        for trial in range(10):
            msgs = [b"%05d" % i + os.urandom(995) for i in range(1, 201)]
            srv = RawWsServer(first=b"".join(frame(BINARY, m, masked=False) for m in msgs), with_101=trial % 2 == 0)
            self.addCleanup(srv.close)
            body = get(self.port, "/client-count?" + urlencode({"url": "ws://127.0.0.1:%d/raw" % srv.port,
                                                                  "n": 200}), timeout=60).body.decode()
            self.assertEqual(body, "200 messages in order, 200000 bytes", "trial %d" % trial)
            srv.close()

    def test_refused_handshake_returns_nil_err(self):
        out = self.client("ws://127.0.0.1:%d/deny" % self.peer_port)
        self.assertRegex(out, r"^connect: nil websocket handshake: .*403")

    def test_plain_http_route_returns_nil_err(self):
        out = self.client("ws://127.0.0.1:%d/report?id=x" % self.port)
        self.assertRegex(out, r"^connect: nil websocket handshake: .*200")

    def test_tendril_refusal_returns_nil_err(self):
        out = self.client("ws://127.0.0.1:%d/origin" % self.port, origin="https://evil.example")
        self.assertRegex(out, r"^connect: nil websocket handshake: .*403")

    def test_nothing_listening_returns_nil_err(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        out = self.client("ws://127.0.0.1:%d/" % port)
        self.assertRegex(out, r"^connect: nil \S")

    def test_client_frames_are_masked_with_fresh_keys(self):
        srv = RawWsServer()
        self.addCleanup(srv.close)
        out = self.client("ws://127.0.0.1:%d/raw" % srv.port)
        self.assertEqual(out, "protocol=nil send=true echo=text:hello from tendril binary=binary:true close=true "
                              "after=nil closed 4002")
        srv.thread.join(deadline(20))
        self.assertIsNone(srv.error)
        self.assertRegex(srv.request, r"^GET /raw HTTP/1\.1\r\n")
        self.assertEqual([(op, m) for m, _, op, _ in srv.frames], [(TEXT, True), (BINARY, True), (CLOSE, True)])
        self.assertEqual(srv.frames[0][3], b"hello from tendril")
        self.assertEqual(srv.frames[2][3], close_payload(4002, "client done"))
        keys = [k for _, k, _, _ in srv.frames]
        self.assertEqual(len(set(keys)), 3, "masking keys repeat: %r" % keys)

    def test_handshake_timeout_returns_nil_err(self):
        lsock = socket.socket()
        self.addCleanup(lsock.close)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)  # accepts (in the kernel), never answers
        start = time.monotonic()
        out = self.client("ws://127.0.0.1:%d/silent" % lsock.getsockname()[1], timeout="0.5")
        self.assertRegex(out, r"^connect: nil websocket handshake: .*timeout")
        self.assertLess(time.monotonic() - start, deadline(10))

    def test_wrong_accept_value_returns_nil_err(self):
        srv = RawWsServer(accept_value="AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        self.addCleanup(srv.close)
        out = self.client("ws://127.0.0.1:%d/raw" % srv.port)
        self.assertRegex(out, r"^connect: nil websocket handshake: .*Accept")

    def test_subprotocol_not_offered_returns_nil_err(self):
        srv = RawWsServer(extra_headers="Sec-WebSocket-Protocol: sneaky\r\n")
        self.addCleanup(srv.close)
        out = self.client("ws://127.0.0.1:%d/raw" % srv.port, protocols="chat")
        self.assertRegex(out, r"^connect: nil websocket handshake: .*subprotocol")


class WssClientTest(TestCase):
    """wss://: websocket.connect over TLS to tendril's own TLS listener."""

    def test_wss_to_tendril(self):
        pki = Pki()
        self.addCleanup(pki.close)
        with Server(APP, files=STATS_FILES, args=["--tls-port", "0", "--tls-cert", pki.localhost.cert,
                                                   "--tls-key", pki.localhost.key]) as srv:
            from urllib.parse import urlencode
            q = urlencode({"url": "wss://localhost:%d/echo?id=wss" % srv.tls_port, "ca": pki.ca})
            r = get(srv.port, "/client?" + q, timeout=60)
            self.assertEqual(r.body.decode(), "protocol=nil send=true echo=text:hello from tendril "
                                              "binary=binary:true close=true after=nil closed 4002")
            self.assertEqual(get(srv.port, "/report?id=wss").body, b"closed 4002 client done")
            # Without the CA the certificate is refused.
            q = urlencode({"url": "wss://localhost:%d/echo" % srv.tls_port})
            self.assertRegex(get(srv.port, "/client?" + q, timeout=60).body.decode(), r"^connect: nil .*verif")


# -------------------------------------------------------------- shutdown, and nothing left behind


class ShutdownTest(TestCase):
    def test_sigterm_sends_1001_and_exits_0(self):
        with Server(APP, files=STATS_FILES) as srv:
            clients = []
            for i in range(5):
                c = WsClient.open(srv.port, "/default?id=t%d" % i)
                self.addCleanup(c.close)
                c.send(frame(TEXT, b"hi"))
                self.assertEqual(c.read_message(), (TEXT, b"hi"))
                clients.append(c)
            srv.signal(signal.SIGTERM)
            for c in clients:
                f = c.read_frame()
                self.assertEqual((f.opcode, f.code, f.reason), (CLOSE, 1001, b"server shutting down"))
                c.send(frame(CLOSE, close_payload(1001)))
                self.assertTrue(c.closed(10))
            self.assertEqual(srv.wait(), 0, srv.stderr()[-3000:])
            srv.assert_clean()
            srv.assert_nothing_left_at_exit()

    def test_sigterm_with_a_client_that_never_answers(self):
        with Server(APP, files=STATS_FILES) as srv:
            c = WsClient.open(srv.port, "/default?id=mute")
            self.addCleanup(c.close)
            self.echo_ok_raw(c)
            start = time.monotonic()
            srv.signal(signal.SIGTERM)
            f = c.read_frame()
            self.assertEqual((f.opcode, f.code), (CLOSE, 1001))
            self.assertTrue(c.closed(15))
            self.assertEqual(srv.wait(), 0, srv.stderr()[-3000:])
            self.assertLess(time.monotonic() - start, deadline(10))
            srv.assert_clean()
            srv.assert_nothing_left_at_exit()

    def echo_ok_raw(self, c):
        c.send(frame(TEXT, b"x"))
        self.assertEqual(c.read_message(), (TEXT, b"x"))

    def test_sigterm_seen_by_websockets_and_threads(self):
        with Server(APP, files=STATS_FILES) as srv:
            p = subprocess.Popen([SYSTEM_PYTHON, "-c", WS_CLIENT, "sigterm",
                                  "ws://127.0.0.1:%d/default" % srv.port], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            self.addCleanup(lambda: p.poll() is None and p.kill())
            self.assertEqual(p.stdout.readline().strip(), "READY")
            t = WsClient.open(srv.port, "/threads?id=term")
            self.addCleanup(t.close)
            self.assertEqual(t.read_message(), (TEXT, b"ready"))
            srv.signal(signal.SIGTERM)
            out, err = p.communicate(timeout=deadline(30))
            self.assertEqual(p.returncode, 0, err)
            self.assertEqual(json.loads(out.strip().splitlines()[-1]),
                             {"first": "hello", "closed": [1001, "server shutting down"]})
            f = t.read_frame()
            self.assertEqual((f.opcode, f.code), (CLOSE, 1001))
            t.send(frame(CLOSE, close_payload(1001)))
            self.assertTrue(t.closed(10))
            self.assertEqual(srv.wait(), 0, srv.stderr()[-3000:])
            srv.assert_clean()
            srv.assert_nothing_left_at_exit()


class ThreadAfterHandlerTest(TestCase):
    """Its own server: a thread left waiting would fail the teardown of a
    shared one."""

    def test_threads_share_the_websocket_fate_after_the_handler_returned(self):
        """The handler returns (close 1000); when the closing handshake is
        over, the thread it spawned sees its sleep end with nil, "closed"."""
        with Server(APP, files=STATS_FILES) as srv:
            c = WsClient.open(srv.port, "/spawn-return?id=sr")
            self.addCleanup(c.close)
            self.assertEqual(c.read_message(), (TEXT, b"ready"))
            f = c.read_frame()
            self.assertEqual((f.opcode, f.code), (CLOSE, 1000))
            c.send(frame(CLOSE, close_payload(1000)))
            self.assertTrue(c.closed(10))

            def reported():
                body = get(srv.port, "/report?id=sr").body
                return body if body != b"nil" else None
            self.assertEqual(poll(reported, 10), b"sleep=nil closed send=nil closed",
                             "the thread still waits after its WebSocket ended")


class MemoryBoundsTest(WsTestCase):
    """A client that sends without reading what comes back is slowed down
    by TCP: the server does not buffer answers without bound."""

    def flood(self, c, chunk, count):
        """Sends chunk up to count times; how many went before the sends
        blocked (count when they never did)."""
        c.sock.settimeout(deadline(3))
        for i in range(count):
            try:
                c.sock.sendall(chunk)
            except socket.timeout:
                return i
        return count

    def test_echo_flood_without_reading(self):
        c, _ = self.open("/echo")
        rss0 = self.server.rss_kib()
        sent = self.flood(c, frame(BINARY, b"e" * (256 * 1024)), 200)  # 50 MiB
        grown = self.server.rss_kib() - rss0
        self.assertLess(sent, 200, "50 MiB of echoes went to a client that reads nothing")
        self.assertLess(grown, 24 * 1024, "the server grew by %d KiB" % grown)

    def test_ping_flood_without_reading_pongs(self):
        """400,000 pings (52 MB, each owed a pong) from a client that reads
        nothing: the pongs must not pile up in the server."""
        c, _ = self.open("/echo")
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        rss0 = self.server.rss_kib()
        sent = self.flood(c, frame(PING, b"p" * 125) * 1000, 400)
        grown = self.server.rss_kib() - rss0
        self.assertLess(grown, 24 * 1024, "the server grew by %d KiB after %d000 pings" % (grown, sent))
        self.assertLess(sent, 400, "52 MB of pings were taken from a client that reads no pong")

    def test_client_leaving_while_the_handler_waits_to_send(self):
        c, cid = self.open("/flood?n=200&size=%d" % MIB)
        op, data = c.read_message(timeout=30)
        self.assertEqual((op, data[:8]), (BINARY, b"00000001"))
        c.close()
        line = self.report(cid, timeout=20)
        self.assertRegex(line, r"^sent \d+$")
        self.assertLess(int(line.split()[1]), 200)
        assert_nothing_left(self, self.port)


class HttpTimeoutsTest(WsTestCase):
    """The HTTP timers (request, keep-alive, header) stop applying once the
    connection is a WebSocket: a recv without a timeout waits as long as
    the connection lives."""
    ARGS = ["--request-timeout", "1", "--keepalive-timeout", "1", "--header-timeout", "1"]

    def test_a_quiet_websocket_outlives_the_http_timeouts(self):
        c, cid = self.open("/echo")
        # Waiting past them is the point: nothing to poll for.
        with self.assertRaises(socket.timeout):
            c.read_frame(timeout=2.5)
        self.echo_ok(c, TEXT, b"still here")
        self.assertEqual(get(self.port, "/report?id=" + cid).body, b"nil", "the handler's recv ended")
        c.send(frame(CLOSE, close_payload(1000)))
        self.expect_close(c, 1000)
        self.assert_report(cid, "closed 1000 ")


class ClientShutdownTest(TestCase):
    def test_sigterm_closes_client_websockets_with_1001(self):
        """A handler's websocket.connect session is a WebSocket too: SIGTERM
        closes it with 1001 and the server exits 0."""
        peer = subprocess.Popen([SYSTEM_PYTHON, "-c", WS_SERVER, str(int(deadline(120)))], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: peer.poll() is None and peer.kill())
        line = peer.stdout.readline()
        self.assertTrue(line.startswith("PORT "), peer.stderr.read() if not line else line)
        url = "ws://127.0.0.1:%d/echo" % int(line.split()[1])
        with Server(APP, files=STATS_FILES) as srv:
            answer = {}

            def call():
                from urllib.parse import urlencode
                try:
                    answer["body"] = get(srv.port, "/client-wait?" + urlencode({"id": "cw", "url": url}),
                                         timeout=60).body
                except Exception as e:  # noqa: BLE001 - asserted below
                    answer["body"] = repr(e)
            t = threading.Thread(target=call)
            t.start()
            self.assertTrue(poll(lambda: get(srv.port, "/report?id=cw").body == b"connected", 10))
            srv.signal(signal.SIGTERM)
            t.join(deadline(30))
            self.assertEqual(answer.get("body"), b"recv nil closed 1001 server shutting down")
            self.assertEqual(srv.wait(), 0, srv.stderr()[-3000:])
            srv.assert_clean()
            srv.assert_nothing_left_at_exit()
        peer.stdin.close()
        self.assertEqual(peer.stdout.readline().strip(), "closed /echo 1001 'server shutting down'")
        peer.wait(deadline(20))


class NothingLeftTest(WsTestCase):
    def test_every_kind_of_end_leaves_nothing(self):
        ends = []
        for i in range(8):
            c, _ = self.open("/threads" if i % 2 else "/echo")
            if i % 2:
                self.assertEqual(c.read_message(), (TEXT, b"ready"))
            else:
                self.echo_ok(c, TEXT, b"x")
            kind = i % 4
            if kind == 0:
                c.send(frame(CLOSE, close_payload(1000)))
            elif kind == 1:
                c.close()
            elif kind == 2:
                c.send(frame(TEXT, b"\xff"))
            else:
                c.send(frame(9, b"x" * 200))
            ends.append(c)
        for c in ends:
            if c.sock.fileno() != -1:
                self.assertTrue(c.closed(10))
        c, _ = self.open("/once")
        c.send(frame(TEXT, b"last"))
        self.assertEqual(c.read_message(), (TEXT, b"bye last"))
        self.assertEqual(c.read_frame().opcode, CLOSE)
        c.close()
        assert_nothing_left(self, self.port)


if __name__ == "__main__":
    main()
