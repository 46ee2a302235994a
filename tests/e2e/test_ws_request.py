"""The request around a WebSocket: what a handler can still read of its
request after the upgrade, and what ends with it."""
import signal
import socket
import struct
import subprocess
import textwrap
import time

from harness import Server, ServerTestCase, TestCase, connect, deadline, get, main, poll
from tlsfixture import SYSTEM_PYTHON
from wsproto import BINARY, CLOSE, WsClient, close_payload, frame


class RequestAfterUpgradeTest(ServerTestCase):
    APP = """
        local websocket = require "tendril.websocket"
        local tendril = require "tendril"
        local seen = tendril.keep("seen")
        return function(req, res)
            if req.path == "/seen" then
                return tostring(seen.text)
            end
            local cookie = req.path == "/early" and req.headers.cookie or nil
            local ws = websocket.upgrade(req, res)
            if not ws then return end
            local ok, err = pcall(function() return req.headers end)
            seen.text = table.concat({ req.method, req.path, req.scheme, tostring(req.remote_addr),
                tostring(cookie), tostring(ok), tostring(err) }, " ")
            ws:send("ready")
            ws:recv()
        end
    """

    def test_connection_fields_stay_and_headers_say_why_not(self):
        c = WsClient.open(self.port, "/late", headers={"Cookie": "a=1"})
        self.assertEqual(c.read_frame().fields(), (True, 0, 0x1, b"ready"))
        text = get(self.port, "/seen").body.decode()
        self.assertRegex(text, r"^GET /late http 127\.0\.0\.1 nil false .*app\.lua:\d+: req\.headers: the "
                               r"request's head is gone after websocket\.upgrade \(read the headers before it\)$")
        c.send(frame(0x8, b"\x03\xe8"))
        self.assertEqual(c.read_close(), 1000)
        c.close()

    def test_headers_read_before_the_upgrade_stay(self):
        c = WsClient.open(self.port, "/early", headers={"Cookie": "a=1"})
        self.assertEqual(c.read_frame().fields(), (True, 0, 0x1, b"ready"))
        self.assertTrue(poll(lambda: "a=1 true" in get(self.port, "/seen").body.decode(), 5))
        c.close()


# ---- found in review: each was a defect before its fix ----


class StatsTest(ServerTestCase):
    """tendril.stats() counts the WebSockets open, apart from HTTP
    connections."""

    APP = """
        local websocket = require "tendril.websocket"
        local tendril = require "tendril"
        return function(req, res)
            if req.path == "/stats" then
                local s = tendril.stats()
                return s.websockets .. " " .. s.connections
            end
            local ws = websocket.upgrade(req, res)
            if ws then ws:recv() end
        end
    """

    def test_websockets_counted(self):
        self.assertEqual(get(self.port, "/stats").body, b"0 1")
        clients = [WsClient.open(self.port, "/") for _ in range(3)]
        self.assertEqual(get(self.port, "/stats").body, b"3 1")
        for c in clients:
            c.send(frame(CLOSE, close_payload(1000)))
            self.assertEqual(c.read_close(), 1000)
            c.close()
        self.assertTrue(poll(lambda: get(self.port, "/stats").body == b"0 1", 5), get(self.port, "/stats").body)


class HandlerAfterTheEndTest(ServerTestCase):
    APP = """
        local websocket = require "tendril.websocket"
        local tendril = require "tendril"
        local seen = tendril.keep("seen")
        return function(req, res)
            if req.path == "/seen" then
                return tostring(seen.text)
            end
            if req.path == "/body" then
                local ws, err = websocket.upgrade(req, res)
                seen.text = tostring(ws) .. " " .. tostring(err)
                return
            end
            if req.path == "/bad-reason" then
                local ws = websocket.upgrade(req, res)
                local ok, err = pcall(function() ws:close(1000, "\\255") end)
                seen.text = tostring(ok) .. " " .. tostring(err)
                return
            end
            if req.path == "/raise" then
                local ws = websocket.upgrade(req, res)
                error("handler trouble")
            end
            local ws = websocket.upgrade(req, res)
            local data, why, code = ws:recv()
            -- After a clean end the handler's own waits still work (only
            -- the threads it spawned end with the WebSocket).
            local slept, err = tendril.sleep(0.01)
            seen.text = table.concat({ tostring(why), tostring(code), tostring(slept), tostring(err) }, " ")
        end
    """

    def test_the_handler_waits_after_its_websocket_ended(self):
        c = WsClient.open(self.port, "/")
        c.send(frame(CLOSE, close_payload(1000)))
        self.assertEqual(c.read_close(), 1000)
        self.assertTrue(poll(lambda: get(self.port, "/seen").body == b"closed 1000 true nil", 5),
                        get(self.port, "/seen").body)

    def test_a_handshake_with_a_body_is_answered_400(self):
        with connect(self.port) as s:
            s.sendall(b"GET /body HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                      b"Content-Length: 10\r\n\r\nhalf")
            head = s.recv(4096)
        self.assertTrue(head.startswith(b"HTTP/1.1 400 "), head)
        self.assertIn(b"a request body", head)
        self.assertTrue(poll(lambda: get(self.port, "/seen").body.startswith(b"nil "), 5))

    def test_a_close_reason_must_be_utf8(self):
        c = WsClient.open(self.port, "/bad-reason")
        self.assertTrue(poll(lambda: b"UTF-8" in get(self.port, "/seen").body, 5))
        self.assertRegex(get(self.port, "/seen").body.decode(),
                         r"^false .*app\.lua:\d+: ws:close: the reason is a UTF-8 string of at most 123 bytes$")
        c.close()

    def test_a_handler_that_raises_closes_with_1011(self):
        c = WsClient.open(self.port, "/raise")
        f = c.read_frame()
        self.assertEqual((f.opcode, f.code, f.reason), (CLOSE, 1011, b"handler error"))
        c.send(frame(CLOSE, close_payload(1011)))
        self.assertTrue(c.closed(5))
        c.close()


class LateShutdownTest(TestCase):
    """SIGTERM while a handler has not yet upgraded or opened its stream."""

    APP = """
        local websocket = require "tendril.websocket"
        local sse = require "tendril.sse"
        local tendril = require "tendril"
        return function(req, res)
            tendril.sleep(0.5)
            if req.path == "/sse" then
                local stream = sse.open(req, res)
                while stream:send{ data = "x" } do tendril.sleep(0.1) end
                return
            end
            local ws = websocket.upgrade(req, res)
            if ws then ws:recv() end
        end
    """

    def test_an_upgrade_after_sigterm_gets_1001(self):
        with Server(self.APP) as srv:
            c_sock = connect(srv.port)
            c_sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            time.sleep(0.1)
            srv.signal(signal.SIGTERM)
            data = b""
            c_sock.settimeout(deadline(10))
            while b"server shutting down" not in data:
                b = c_sock.recv(4096)
                if not b:
                    break
                data += b
            self.assertIn(b" 101 ", data.split(b"\r\n")[0])
            self.assertIn(b"\x88\x16\x03\xe9server shutting down", data)
            c_sock.sendall(frame(CLOSE, close_payload(1001)))
            self.assertEqual(srv.wait(), 0, srv.stderr()[-2000:])
            c_sock.close()

    def test_a_stream_opened_after_sigterm_ends(self):
        with Server(self.APP) as srv:
            curl = subprocess.Popen(["curl", "-sN", "--max-time", str(deadline(20)),
                                     "http://127.0.0.1:%d/sse" % srv.port], stdout=subprocess.PIPE)
            time.sleep(0.1)
            srv.signal(signal.SIGTERM)
            self.assertEqual(curl.wait(timeout=deadline(20)), 0)
            self.assertEqual(srv.wait(), 0, srv.stderr()[-2000:])


class DrainWithADeadPeerTest(TestCase):
    """SIGTERM closes many WebSockets (more than the 64 whose output may
    wait for the turn's end) while one of them, reset by its peer, fails
    when written to. The walk over them once kept a pointer to the next
    across a close that could end it, and spun for ever (a review found
    it when a stream's handler had written to them all just before); this
    is the case without that timing."""

    APP = """
        local websocket = require "tendril.websocket"
        local tendril = require "tendril"
        return function(req, res)
            local ws = websocket.upgrade(req, res, { max_message_bytes = 1024, ping_interval = false })
            if not ws then return end
            if req.query.stuck then
                tendril.sleep(1000) -- never reads: its queue fills, reading stops
                return
            end
            while ws:recv() do end
        end
    """

    def test_sigterm_with_a_reset_peer_among_many(self):
        with Server(self.APP, leftovers_ok=True) as srv:
            clients = [WsClient.open(srv.port, "/?stuck=1" if i == 1 else "/") for i in range(140)]
            stuck = clients[1].sock
            for _ in range(10):
                stuck.sendall(frame(BINARY, b"x" * 600))
            time.sleep(0.3)
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stuck.close()
            time.sleep(0.2)
            srv.signal(signal.SIGTERM)
            for i, c in enumerate(clients):
                if i != 1:
                    self.assertEqual(c.read_close(), 1001)
            self.assertIn(srv.wait(), (0, 1), srv.stderr()[-2000:])
            for c in clients:
                c.close()


class OwnedBySessionTest(ServerTestCase):
    """A bus subscription made in a tcp.listen session ends with it."""

    APP = """
        local tcp = require "tendril.tcp"
        local bus = require "tendril.bus"
        local port = tonumber(os.getenv("SESSION_PORT"))
        assert(tcp.listen("127.0.0.1", port, function(sock)
            bus.subscribe("sessions")
            sock:send("subscribed\\n")
            sock:receive()
        end))
        return function(req, res)
            return tostring(bus.publish("sessions", "x"))
        end
    """

    @classmethod
    def setUpClass(cls):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            cls.session_port = s.getsockname()[1]
        cls.ENV = {"SESSION_PORT": str(cls.session_port)}
        super().setUpClass()

    def test_subscriptions_end_with_the_session(self):
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", self.session_port)) as s:
                s.settimeout(deadline(5))
                self.assertEqual(s.recv(100), b"subscribed\n")
                self.assertEqual(get(self.port, "/").body, b"1")
                s.sendall(b"bye\n")
                s.shutdown(socket.SHUT_WR)
                s.recv(100)
            self.assertTrue(poll(lambda: get(self.port, "/").body == b"0", 5))


class ClientCompressionAnswerTest(ServerTestCase):
    """A server may bound its own window (server_max_window_bits) even
    when the client did not ask: tendril's client accepts it."""

    APP = """
        local websocket = require "tendril.websocket"
        return function(req, res)
            local ws, err = websocket.connect("ws://127.0.0.1:" .. req.query.port .. "/", { compress = true })
            if not ws then return "connect: " .. tostring(err) end
            local big = string.rep("bounded window ", 1000)
            ws:send(big)
            local got = ws:recv(10)
            ws:close()
            return tostring(got == big)
        end
    """

    PEER = textwrap.dedent('''
        import asyncio, sys, websockets
        from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
        async def echo(ws, path=None):
            async for m in ws:
                await ws.send(m)
        async def main():
            factory = ServerPerMessageDeflateFactory(server_max_window_bits=10, server_no_context_takeover=True,
                                                     client_no_context_takeover=True)
            async with websockets.serve(echo, "127.0.0.1", 0, extensions=[factory], compression=None) as srv:
                print(srv.sockets[0].getsockname()[1], flush=True)
                await asyncio.sleep(float(sys.argv[1]))
        asyncio.run(main())
    ''')

    def test_server_max_window_bits_in_the_answer(self):
        peer = subprocess.Popen([SYSTEM_PYTHON, "-c", self.PEER, str(deadline(60))], stdout=subprocess.PIPE, text=True)
        try:
            port = int(peer.stdout.readline())
            self.assertEqual(get(self.port, "/?port=%d" % port).body, b"true")
        finally:
            peer.kill()
            peer.wait()


if __name__ == "__main__":
    main()
