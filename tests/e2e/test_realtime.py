"""Server-Sent Events (tendril.sse) and the in-process bus (tendril.bus)
end to end: event streams read by curl (headers, multi-line data, ids,
retry, comments, keepalive, Last-Event-ID, a client that leaves, fields
that would break the framing), streams and --request-timeout, SIGTERM
ending streams; the bus (publish counts, fan-out to SSE clients and
WebSockets, overflow, close, timeout) also across a hot reload; and a
reload with many WebSockets open: none closes, each keeps its code."""
import os
import resource
import signal
import subprocess
import threading
import time

from harness import (STATS_FILES, Reader, Server, ServerTestCase, TestCase, assert_nothing_left, connect,
                     deadline, get, main, poll)
from wsproto import CLOSE, TEXT, WsClient, close_payload, frame

APP = r'''
local tendril = require "tendril"
local sse = require "tendril.sse"
local bus = require "tendril.bus"
local websocket = require "tendril.websocket"
local stats_line = require "stats_line"

local VERSION = "v1"
local reports = tendril.keep("reports", {})
local function report(req, line)
    reports[req.query.id or "-"] = line
end

local routes = {}

routes["/events"] = function(req, res)
    local stream = sse.open(req, res)
    stream:send{ data = "one" }
    stream:send{ event = "greeting", id = "7", data = "line1\nline2\r\nline3\rline4" }
    stream:send{ retry = 2500 }
    stream:comment("a comment\nsecond line")
    stream:send{ data = "" }
    stream:send{ data = 42, id = 8 }
    stream:send{ data = "last" }
end

routes["/keepalive"] = function(req, res)
    local stream = sse.open(req, res, { keepalive = 0.2 })
    local ok = tendril.sleep(1.1)
    stream:send{ data = "done after sleep=" .. tostring(ok) }
end

routes["/last-id"] = function(req, res)
    local stream = sse.open(req, res)
    stream:send{ data = "last_id=" .. tostring(stream.last_id) }
end

-- Sends until the client has left, then reports how send ended (the
-- sleep between sends ends early once the client has left: then the next
-- send tells).
routes["/forever"] = function(req, res)
    local stream = sse.open(req, res)
    local i = 0
    while true do
        i = i + 1
        local ok, err = stream:send{ id = i, data = "tick " .. i }
        if not ok then
            report(req, "send=" .. tostring(ok) .. " " .. tostring(err))
            return
        end
        tendril.sleep(0.05)
    end
end

routes["/bad-fields"] = function(req, res)
    local stream = sse.open(req, res)
    local cases = {
        { "event LF", { event = "a\nb", data = "x" } },
        { "event CR", { event = "a\rb", data = "x" } },
        { "id LF", { id = "1\n2", data = "x" } },
        { "id CR", { id = "1\r2", data = "x" } },
    }
    for _, c in ipairs(cases) do
        local ok, err = pcall(stream.send, stream, c[2])
        stream:send{ event = "result", data = c[1] .. ": " .. tostring(ok) .. " " .. tostring(err) }
    end
end

-- Streams for longer than --request-timeout (the class with that option).
routes["/long"] = function(req, res)
    local stream = sse.open(req, res)
    for i = 1, 6 do
        local ok, err = tendril.sleep(0.3)
        stream:send{ data = "event " .. i .. " sleep=" .. tostring(ok) .. " " .. tostring(err) }
    end
end

routes["/slow"] = function()
    local ok, err = tendril.sleep(3)
    return "sleep=" .. tostring(ok) .. " " .. tostring(err)
end

-- An SSE subscriber: "subscribed" first, then each message as an event,
-- until a message "quit".
routes["/sub"] = function(req, res)
    local sub = bus.subscribe(req.query.topic)
    local stream = sse.open(req, res)
    stream:send{ data = "subscribed" }
    while true do
        local m, err = sub:recv()
        if not m then
            stream:send{ event = "end", data = tostring(err) }
            return
        end
        stream:send{ data = VERSION .. " got " .. tostring(m) }
        if m == "quit" or m:find(":quit$") then
            return
        end
    end
end

-- The same over a WebSocket.
routes["/ws-sub"] = function(req, res)
    local ws = websocket.upgrade(req, res, { ping_interval = false })
    if not ws then return end
    local sub = bus.subscribe(req.query.topic)
    ws:send("subscribed")
    while true do
        local m = sub:recv()
        if not m or not ws:send(VERSION .. " got " .. tostring(m)) then
            return
        end
    end
end

routes["/pub"] = function(req)
    local msg = req.query.msg
    if req.query.tag then msg = VERSION .. ":" .. msg end
    return tostring(bus.publish(req.query.topic, msg))
end

-- A WebSocket echo that names its code's version.
routes["/ws"] = function(req, res)
    local ws = websocket.upgrade(req, res, { ping_interval = false })
    if not ws then return end
    while true do
        local data, kind = ws:recv()
        if not data then return end
        ws:send(VERSION .. ":" .. data, kind)
    end
end

-- The bus inside one handler: what publish and recv answer.
routes["/bus"] = function(req)
    local id = req.query.id
    local out = {}
    local function add(...)
        local t = { ... }
        for i = 1, select("#", ...) do t[i] = tostring(t[i]) end
        out[#out + 1] = table.concat(t, " ")
    end
    local what = req.query.case
    if what == "counts" then
        add("none", bus.publish("nobody-" .. id, "x"))
        local a, b = bus.subscribe("t-" .. id), bus.subscribe("t-" .. id)
        local other = bus.subscribe("other-" .. id)
        add("two", bus.publish("t-" .. id, "m1"))
        add("a", a:recv(1))
        add("b", b:recv(1))
        add("other", other:recv(0.05))
        local tbl = { n = 5 }
        bus.publish("t-" .. id, tbl)
        add("table", a:recv(1) == tbl, b:recv(1) == tbl)
        a:close()
        add("after close", bus.publish("t-" .. id, "m2"))
        add("a closed", a:recv(1))
        add("b", b:recv(1))
    elseif what == "overflow" then
        local sub = bus.subscribe("o-" .. id, { max_queue = 3 })
        local counts = {}
        for i = 1, 5 do counts[i] = tostring(bus.publish("o-" .. id, "m" .. i)) end
        add("counts", table.concat(counts, ","))
        local got = {}
        for _ = 1, 5 do
            local m, err = sub:recv(0.1)
            got[#got + 1] = tostring(m or err)
            if not m then break end
        end
        add("recv", table.concat(got, ","))
        add("again", sub:recv(0.1))
    elseif what == "one-of-two" then
        -- A fast subscriber beside a slow one: only the slow one is dropped.
        local fast = bus.subscribe("two-" .. id, { max_queue = 2 })
        local slow = bus.subscribe("two-" .. id, { max_queue = 2 })
        local counts, got = {}, {}
        for i = 1, 5 do
            counts[i] = tostring(bus.publish("two-" .. id, "m" .. i))
            got[i] = tostring(fast:recv(0.1))
        end
        add("counts", table.concat(counts, ","))
        add("fast", table.concat(got, ","))
        local m, err
        for _ = 1, 3 do -- what was queued may come first; then the end
            m, err = slow:recv(0.1)
            if not m then break end
        end
        add("slow", err)
    elseif what == "full" then
        local sub = bus.subscribe("f-" .. id, { max_queue = 3 })
        for i = 1, 3 do bus.publish("f-" .. id, "m" .. i) end
        add("recv", sub:recv(0.1), sub:recv(0.1), sub:recv(0.1))
        add("then", sub:recv(0.05))
        add("more", bus.publish("f-" .. id, "m4"), sub:recv(0.1))
    elseif what == "default-max" then
        local sub = bus.subscribe("d-" .. id)
        local reached = 0
        for i = 1, 1000 do reached = reached + bus.publish("d-" .. id, i) end
        add("1000 reached", reached)
        add("1001st", bus.publish("d-" .. id, 1001))
        local n, m, err = 0, nil, nil
        repeat
            m, err = sub:recv(0.1)
            if m then n = n + 1 end
        until not m or n > 1001
        add("then", err)
    elseif what == "close-wakes" then
        local sub = bus.subscribe("c-" .. id)
        local t = tendril.spawn(function() return sub:recv() end)
        tendril.sleep(0.05)
        add("close", sub:close())
        add("waiter", t:join(5))
        add("after", sub:recv(1))
        add("publish", bus.publish("c-" .. id, "x"))
    elseif what == "timeout" then
        local sub = bus.subscribe("to-" .. id)
        add("first", sub:recv(0.1))
        add("publish", bus.publish("to-" .. id, "late"))
        add("second", sub:recv(0.1))
    end
    return table.concat(out, "\n")
end

-- A subscriber with keepalive comments, waiting in sub:recv.
routes["/ka-sub"] = function(req, res)
    local sub = bus.subscribe(req.query.topic)
    local stream = sse.open(req, res, { keepalive = 0.1 })
    stream:send{ data = "subscribed" }
    local m, err = sub:recv()
    report(req, "recv=" .. tostring(m) .. " " .. tostring(err))
end

routes["/gen"] = function() return tostring(tendril.generation()) end
routes["/version"] = function() return VERSION end
routes["/report"] = function(req) return tostring(reports[req.query.id]) end
routes["/stats"] = function() return stats_line() end

return function(req, res)
    local route = routes[req.path]
    if route then
        return route(req, res)
    end
    return 404, {}, "no route\n"
end
'''


def parse_sse(text):
    """Events as the HTML standard reads them: a list of dicts (data
    lines joined with LF); comments are dropped and collected aside."""
    events, comments, cur = [], [], {}
    for line in text.split("\n"):
        if line == "":
            if cur:
                events.append(cur)
            cur = {}
            continue
        if line.startswith(":"):
            comments.append(line)
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            cur["data"] = cur["data"] + "\n" + value if "data" in cur else value
        else:
            cur[name] = value
    return events, comments


class Curl:
    """curl -sN on a URL in the background; its output collected as it
    comes."""

    def __init__(self, url, *args, timeout=60):
        self.proc = subprocess.Popen(["curl", "-sN", "-D", "-", "--max-time", "%g" % deadline(timeout)] +
                                     list(args) + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buf = b""
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self):
        while True:
            b = self.proc.stdout.read1(65536)
            if not b:
                return
            with self.lock:
                self.buf += b

    def text(self):
        with self.lock:
            return self.buf.decode(errors="replace")

    def body(self):
        return self.text().split("\r\n\r\n", 1)[1] if "\r\n\r\n" in self.text() else ""

    def wait_for(self, needle, timeout=10):
        return poll(lambda: needle in self.body(), timeout)

    def finish(self, timeout=30):
        """curl's exit status, once it has ended."""
        code = self.proc.wait(deadline(timeout))
        self.thread.join(deadline(10))
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def curl(url, *args, timeout=30):
    r = subprocess.run(["curl", "-sN", "-D", "-", "--max-time", "%g" % deadline(timeout)] + list(args) + [url],
                       capture_output=True, timeout=deadline(timeout) + 10)
    text = r.stdout.decode(errors="replace")
    head, _, body = text.partition("\r\n\r\n")
    return r.returncode, head, body


class RealtimeCase(ServerTestCase):
    APP = APP
    FILES = STATS_FILES

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def curl(self, path, *args, **kw):
        c = Curl(self.url(path), *args, **kw)
        self.addCleanup(c.kill)
        return c

    def report(self, rid, timeout=10):
        def reported():
            body = get(self.port, "/report?id=" + rid).body.decode()
            return body if body != "nil" else None
        return poll(reported, timeout)

    def publish(self, topic, msg, tag=False):
        q = "/pub?topic=%s&msg=%s" % (topic, msg) + ("&tag=1" if tag else "")
        return int(get(self.port, q).body)


# -------------------------------------------------------------- SSE


class SseTest(RealtimeCase):
    def test_headers_and_events(self):
        code, head, body = curl(self.url("/events"))
        self.assertEqual(code, 0, "curl saw a properly ended stream")
        lines = head.split("\r\n")
        self.assertEqual(lines[0], "HTTP/1.1 200 OK")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        self.assertEqual(headers["content-type"], "text/event-stream")
        self.assertEqual(headers["cache-control"], "no-cache")
        events, comments = parse_sse(body)
        self.assertEqual(events, [
            {"data": "one"},
            {"event": "greeting", "id": "7", "data": "line1\nline2\nline3\nline4"},
            {"retry": "2500"},
            {"data": ""},
            {"data": "42", "id": "8"},
            {"data": "last"},
        ])
        # Multi-line data: one data: line per line, no bare CR left in it.
        self.assertIn("data: line1\ndata: line2\ndata: line3\ndata: line4\n", body)
        self.assertNotIn("\r", body)
        # The comment: every line of it is a comment line.
        self.assertEqual([c for c in comments if "comment" in c or "second" in c],
                         [": a comment", ": second line"])
        self.assertTrue(body.endswith("\n\n"))

    def test_stream_is_chunked_and_ends_cleanly(self):
        s = connect(self.port)
        self.addCleanup(s.close)
        s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        rd = Reader(s)
        r = rd.response()  # reads the chunked body to its last chunk
        self.assertEqual(r.status, 200)
        self.assertIn("chunked", r.header("transfer-encoding"))
        self.assertTrue(r.body.decode().endswith("data: last\n\n"))
        # The connection serves the next request.
        s.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(rd.response().body, b"v1")

    def test_keepalive_comments_arrive(self):
        c = self.curl("/keepalive")
        self.assertTrue(c.wait_for("data: done", 10), c.text())
        self.assertEqual(c.finish(), 0)
        events, comments = parse_sse(c.body())
        self.assertEqual(events, [{"data": "done after sleep=true"}])
        # 1.1 s at one comment each 0.2 s.
        self.assertGreaterEqual(len(comments), 3, c.body())
        self.assertTrue(all(cm.startswith(":") for cm in comments))
        # The keepalive thread ends with the handler.
        assert_nothing_left(self, self.port)

    def test_keepalive_comments_arrive_while_the_handler_waits(self):
        c = self.curl("/keepalive")
        self.assertTrue(poll(lambda: c.body().count(":") >= 2, 5), c.text())
        self.assertNotIn("data:", c.body(), "comments came only after the handler's event")
        self.assertEqual(c.finish(), 0)

    def test_http_1_0_stream_ends_with_the_connection(self):
        code, head, body = curl(self.url("/events"), "--http1.0")
        self.assertEqual(code, 0)
        self.assertNotIn("chunked", head.lower())
        self.assertEqual(parse_sse(body)[0][-1], {"data": "last"})

    def test_client_leaving_a_keepalive_subscriber(self):
        """The handler waits in sub:recv, its keepalive thread writes
        comments: the client leaving ends both."""
        s = connect(self.port)
        s.sendall(b"GET /ka-sub?topic=ka&id=ka HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(deadline(10))
        got = b""
        while got.count(b":\n\n") < 2:  # two keepalive comments
            b = s.recv(4096)
            self.assertTrue(b)
            got += b
        self.assertIn(b"data: subscribed\n\n", got)
        s.close()
        self.assertEqual(self.report("ka"), "recv=nil closed")
        assert_nothing_left(self, self.port)

    def test_last_event_id(self):
        _, _, body = curl(self.url("/last-id"), "-H", "Last-Event-ID: 41")
        self.assertEqual(parse_sse(body)[0], [{"data": "last_id=41"}])
        _, _, body = curl(self.url("/last-id"))
        self.assertEqual(parse_sse(body)[0], [{"data": "last_id=nil"}])

    def test_send_after_the_client_left_returns_closed(self):
        s = connect(self.port)
        s.sendall(b"GET /forever?id=left HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(deadline(10))
        got = b""
        while b"tick 2" not in got:
            b = s.recv(4096)
            self.assertTrue(b)
            got += b
        s.close()
        self.assertEqual(self.report("left"), "send=nil closed")

    def test_curl_leaving_ends_the_handler(self):
        c = self.curl("/forever?id=curl-left")
        self.assertTrue(c.wait_for("tick 3"), c.text())
        c.kill()
        self.assertEqual(self.report("curl-left"), "send=nil closed")

    def test_cr_or_lf_in_event_or_id_raises(self):
        code, _, body = curl(self.url("/bad-fields"))
        self.assertEqual(code, 0)
        events, _ = parse_sse(body)
        self.assertEqual([e["event"] for e in events], ["result"] * 4, body)
        for e, name in zip(events, ["event LF", "event CR", "id LF", "id CR"]):
            self.assertRegex(e["data"], r"^%s: false .*(CR|LF)" % name)
        # Nothing of the refused events reached the stream.
        self.assertNotIn("data: x", body)
        self.assertNotIn("id: 1", body)


class SseRequestTimeoutTest(RealtimeCase):
    ARGS = ["--request-timeout", "1"]

    def test_stream_outlives_the_request_timeout(self):
        # The deadline does apply to an ordinary request...
        self.assertEqual(get(self.port, "/slow", timeout=20).body, b"sleep=nil timeout")
        # ...and not to an event stream: 1.8 s of events, each wait whole.
        code, _, body = curl(self.url("/long"))
        self.assertEqual(code, 0)
        events, _ = parse_sse(body)
        self.assertEqual(events, [{"data": "event %d sleep=true nil" % i} for i in range(1, 7)])


class SseShutdownTest(TestCase):
    def test_sigterm_ends_streams_and_exits_0(self):
        with Server(APP, files=STATS_FILES) as srv:
            url = "http://127.0.0.1:%d" % srv.port
            streams = [Curl(url + "/forever?id=t%d" % i) for i in range(3)]
            subscriber = Curl(url + "/sub?topic=shutdown")
            for c in streams + [subscriber]:
                self.addCleanup(c.kill)
            ws = WsClient.open(srv.port, "/ws-sub?topic=shutdown")
            self.addCleanup(ws.close)
            self.assertEqual(ws.read_message(), (TEXT, b"subscribed"))
            for c in streams:
                self.assertTrue(c.wait_for("tick 2"), c.text())
            self.assertTrue(subscriber.wait_for("data: subscribed"), subscriber.text())
            srv.signal(signal.SIGTERM)
            for c in streams + [subscriber]:
                # 0, not 18 (transfer closed with outstanding read data):
                # the chunked body got its last chunk.
                self.assertEqual(c.finish(), 0, c.text()[-500:])
            for c in streams:
                self.assertTrue(c.body().endswith("\n\n"), c.body()[-200:])
            f = ws.read_frame()
            self.assertEqual((f.opcode, f.code), (CLOSE, 1001))
            ws.send(frame(CLOSE, close_payload(1001)))
            self.assertTrue(ws.closed(10))
            self.assertEqual(srv.wait(), 0, srv.stderr()[-3000:])
            srv.assert_clean()
            srv.assert_nothing_left_at_exit()


# -------------------------------------------------------------- bus


class BusTest(RealtimeCase):
    def bus_case(self, case):
        r = get(self.port, "/bus?case=%s&id=%s" % (case, case))
        self.assertEqual(r.status, 200, r.body)
        return r.body.decode().split("\n")

    def test_publish_counts_and_delivery(self):
        self.assertEqual(self.bus_case("counts"), [
            "none 0",
            "two 2",
            "a m1",
            "b m1",
            "other nil timeout",
            "table true true",
            "after close 1",
            "a closed nil closed",
            "b m2",
        ])

    def test_overflow(self):
        # Dropped at the 4th: publish no longer reaches it, and its recv
        # ends in "overflow" (whether or not what was queued comes first).
        out = self.bus_case("overflow")
        self.assertEqual(out[0], "counts 1,1,1,0,0")
        self.assertRegex(out[1], r"^recv (m1,(m2,(m3,)?)?)?overflow$")
        self.assertEqual(out[2:], ["again nil overflow"])

    def test_overflow_drops_only_the_slow_subscriber(self):
        self.assertEqual(self.bus_case("one-of-two"), [
            "counts 2,2,1,1,1",
            "fast m1,m2,m3,m4,m5",
            "slow overflow",
        ])

    def test_max_queue_messages_may_wait(self):
        self.assertEqual(self.bus_case("full"), [
            "recv m1 m2 m3",
            "then nil timeout",
            "more 1 m4",
        ])

    def test_default_max_queue_is_1000(self):
        self.assertEqual(self.bus_case("default-max"), [
            "1000 reached 1000",
            "1001st 0",
            "then overflow",
        ])

    def test_close_wakes_a_waiting_recv(self):
        self.assertEqual(self.bus_case("close-wakes"), [
            "close true",
            "waiter true nil closed",
            "after nil closed",
            "publish 0",
        ])

    def test_recv_timeout_leaves_it_usable(self):
        self.assertEqual(self.bus_case("timeout"), [
            "first nil timeout",
            "publish 1",
            "second late",
        ])

    def test_fan_out_to_sse_clients(self):
        clients = [self.curl("/sub?topic=fan") for _ in range(4)]
        for c in clients:
            self.assertTrue(c.wait_for("data: subscribed"), c.text())
        self.assertEqual([self.publish("fan", m) for m in ("a", "b", "c", "quit")], [4, 4, 4, 4])
        for c in clients:
            self.assertEqual(c.finish(), 0)
            events, _ = parse_sse(c.body())
            self.assertEqual([e["data"] for e in events], ["subscribed", "v1 got a", "v1 got b", "v1 got c",
                                                           "v1 got quit"])

    def test_a_subscription_ends_with_the_request_that_made_it(self):
        """Once the handlers that subscribed have returned (their streams
        ended), nobody is subscribed: publish reaches 0."""
        clients = [self.curl("/sub?topic=ended") for _ in range(3)]
        for c in clients:
            self.assertTrue(c.wait_for("data: subscribed"), c.text())
        self.assertEqual(self.publish("ended", "quit"), 3)
        for c in clients:
            self.assertEqual(c.finish(), 0)
            self.assertIn("data: v1 got quit", c.body())
        # (Polled: a few publishes later is still right; never is not.)
        counts = []

        def nobody():
            counts.append(self.publish("ended", "nobody-listens"))
            return counts[-1] == 0
        self.assertTrue(poll(nobody, 5, interval=0.1), "publish kept reaching %s" % sorted(set(counts)))

    def test_fan_out_to_websockets(self):
        clients = []
        for _ in range(5):
            c = WsClient.open(self.port, "/ws-sub?topic=wsfan")
            self.addCleanup(c.close)
            self.assertEqual(c.read_message(), (TEXT, b"subscribed"))
            clients.append(c)
        self.assertEqual(self.publish("wsfan", "hello"), 5)
        self.assertEqual(self.publish("wsfan", "again"), 5)
        for c in clients:
            self.assertEqual(c.read_message(), (TEXT, b"v1 got hello"))
            self.assertEqual(c.read_message(), (TEXT, b"v1 got again"))
        # A WebSocket that leaves leaves the topic.
        clients[0].send(frame(CLOSE, close_payload(1000)))
        self.assertEqual(clients[0].read_frame().opcode, CLOSE)
        self.assertTrue(poll(lambda: self.publish("wsfan", "ping") == 4, 10))
        for c in clients[1:]:
            c.send(frame(CLOSE, close_payload(1000)))

    def test_nothing_left_after_subscribers_go(self):
        c = self.curl("/sub?topic=gone")
        self.assertTrue(c.wait_for("data: subscribed"), c.text())
        c.kill()
        # The subscriber's handler waits in sub:recv: the client leaving ends it.
        assert_nothing_left(self, self.port)


# -------------------------------------------------------------- reloads


class ReloadTest(TestCase):
    """A server whose app file the test rewrites (v1 -> v2)."""

    def start(self, args=()):
        self.srv = Server(APP, files=STATS_FILES, args=list(args))
        self.srv.start()
        self.port = self.srv.port
        self.addCleanup(lambda: self.srv.proc.poll() is None and self.srv.proc.kill())

    def reload_to_v2(self):
        with open(self.srv.app_path) as f:
            text = f.read()
        tmp = self.srv.app_path + ".tmp~"
        with open(tmp, "w") as f:
            f.write(text.replace('local VERSION = "v1"', 'local VERSION = "v2"'))
        os.rename(tmp, self.srv.app_path)
        self.assertTrue(poll(lambda: get(self.port, "/gen").body == b"2", 10), self.srv.stderr()[-2000:])
        self.assertEqual(get(self.port, "/version").body, b"v2")

    def stop(self):
        self.assertEqual(self.srv.stop(), 0, self.srv.stderr()[-3000:])

    def test_subscription_made_before_a_reload_gets_what_the_new_code_publishes(self):
        self.start()
        c = Curl("http://127.0.0.1:%d/sub?topic=gen" % self.port)
        self.addCleanup(c.kill)
        self.assertTrue(c.wait_for("data: subscribed"), c.text())
        self.assertEqual(self.publish("gen", "before"), 1)
        self.assertTrue(c.wait_for("v1 got v1:before"), c.text())
        self.reload_to_v2()
        ws = WsClient.open(self.port, "/ws-sub?topic=gen")  # a v2 subscriber beside it
        self.addCleanup(ws.close)
        self.assertEqual(ws.read_message(), (TEXT, b"subscribed"))
        self.assertEqual(self.publish("gen", "after"), 2)
        self.assertTrue(c.wait_for("v1 got v2:after"), c.text())
        self.assertEqual(ws.read_message(), (TEXT, b"v2 got v2:after"))
        self.assertEqual(self.publish("gen", "quit"), 2)
        self.assertEqual(ws.read_message(), (TEXT, b"v2 got v2:quit"))
        self.assertEqual(c.finish(), 0)
        self.assertEqual([e["data"] for e in parse_sse(c.body())[0]],
                         ["subscribed", "v1 got v1:before", "v1 got v2:after", "v1 got v2:quit"])
        ws.send(frame(CLOSE, close_payload(1000)))
        self.assertEqual(ws.read_frame().opcode, CLOSE)
        self.stop()

    def publish(self, topic, msg):
        return int(get(self.port, "/pub?topic=%s&msg=%s&tag=1" % (topic, msg)).body)

    def test_sighup_reload_keeps_an_sse_stream(self):
        self.start(["--no-watch"])
        c = Curl("http://127.0.0.1:%d/forever?id=hup" % self.port)
        self.addCleanup(c.kill)
        self.assertTrue(c.wait_for("tick 2"), c.text())
        with open(self.srv.app_path) as f:
            text = f.read()
        with open(self.srv.app_path, "w") as f:
            f.write(text.replace('local VERSION = "v1"', 'local VERSION = "v2"'))
        self.srv.signal(signal.SIGHUP)
        self.assertTrue(poll(lambda: get(self.port, "/version").body == b"v2", 10))
        n = int(c.body().rsplit("tick ", 1)[1].split("\n")[0])
        self.assertTrue(c.wait_for("tick %d" % (n + 5)), "the stream stopped at the reload")
        self.assertEqual(get(self.port, "/report?id=hup").body, b"nil")
        self.assertEqual(c.proc.poll(), None)
        c.kill()
        self.assertEqual(self_report(self.port, "hup"), "send=nil closed")
        self.stop()

    def test_reload_with_many_open_websockets(self):
        # 1000 connections, in the sanitizer build too (about 3 s in either).
        n = 1000
        need = 2 * n + 200
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
        self.assertGreaterEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], need,
                                "the open-file limit cannot hold %d connections" % n)
        self.start()
        started = time.monotonic()
        old = []
        for i in range(n):
            c = WsClient.open(self.port, "/ws")
            self.addCleanup(c.close)
            old.append(c)
        for i, c in enumerate(old):
            c.send(frame(TEXT, b"before %d" % i))
        for i, c in enumerate(old):
            self.assertEqual(c.read_message(), (TEXT, b"v1:before %d" % i))
        self.reload_to_v2()
        new = []
        for i in range(20):
            c = WsClient.open(self.port, "/ws")
            self.addCleanup(c.close)
            new.append(c)
            c.send(frame(TEXT, b"new %d" % i))
            self.assertEqual(c.read_message(), (TEXT, b"v2:new %d" % i))
        # None of the old ones closed; each answers with the code it began on.
        for i, c in enumerate(old):
            c.send(frame(TEXT, b"after %d" % i))
        for i, c in enumerate(old):
            self.assertEqual(c.read_message(), (TEXT, b"v1:after %d" % i), "connection %d" % i)
        # They end as usual.
        for c in old + new:
            c.send(frame(CLOSE, close_payload(1000)))
        for c in old + new:
            f = c.read_frame()
            self.assertEqual((f.opcode, f.code), (CLOSE, 1000))
            self.assertTrue(c.closed(10))
        self.assertLess(time.monotonic() - started, deadline(60))
        self.stop()


def self_report(port, rid, timeout=10):
    def reported():
        body = get(port, "/report?id=" + rid).body.decode()
        return body if body != "nil" else None
    return poll(reported, timeout)


if __name__ == "__main__":
    main()
