"""Bad input gets a clear answer and never stops the server serving others."""
import socket
import time

from harness import ServerTestCase, Reader, Server, TestCase, connect, deadline, get, main, poll, raw

APP = r'''
local tendril = require "tendril"
return function(req, res)
    if req.path == "/echo" then
        local body, err = req:body()
        if not body then
            tendril.log("warn", "body failed: ", err)
            return 499, nil, err
        end
        return body
    end
    return "ok"
end
'''

ARGS = ["--max-header-bytes", "2048", "--max-body-bytes", "1000",
        "--header-timeout", "1", "--body-timeout", "1", "--keepalive-timeout", "1"]


def status_of(out):
    return int(out.split(b" ", 2)[1]) if out.startswith(b"HTTP/1.1 ") else None


class BadInputTest(ServerTestCase):
    APP = APP
    ARGS = ARGS

    def tearDown(self):
        # Whatever the test sent, the server still serves a normal request.
        self.assertEqual(get(self.port, "/").body, b"ok")

    def assertRejected(self, data, status=400):
        out = raw(self.port, data)
        self.assertEqual(status_of(out), status, out)
        self.assertIn(b"Connection: close\r\n", out)
        return out

    def test_garbage(self):
        self.assertRejected(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")

    def test_bad_method_and_version(self):
        self.assertRejected(b"GE T / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertRejected(b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505)

    def test_space_before_colon(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n")
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\nX-A\t: 1\r\n\r\n")

    def test_missing_or_repeated_host(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nX: y\r\n\r\n")
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        out = raw(self.port, b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(status_of(out), 200, "HTTP/1.0 needs no Host")

    def test_obsolete_line_folding(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n")
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: one\r\n\ttwo\r\n\r\n")

    def test_folding_split_across_packets(self):
        with connect(self.port) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: one\r\n")
            time.sleep(0.05)
            s.sendall(b" two\r\n\r\n")
            self.assertEqual(status_of(Reader(s).sock.recv(4096)), 400)

    def test_content_length_with_transfer_encoding(self):
        self.assertRejected(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        self.assertRejected(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                            b"Content-Length: 5\r\n\r\n0\r\n\r\n")

    def test_bad_content_length(self):
        self.assertRejected(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        self.assertRejected(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")

    def test_bad_chunk(self):
        out = raw(self.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        # The handler started with the head; its body read fails and the
        # connection is answered with 400 or the handler's own error.
        self.assertIn(status_of(out), (400, 499), out)

    def test_head_too_large(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n", 431)
        self.assertRejected(b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431)

    def test_many_small_headers_too_large(self):
        hdrs = b"".join(b"X-%d: 1\r\n" % i for i in range(400))
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\n" + hdrs + b"\r\n", 431)

    def test_content_length_over_limit_is_413_without_reading(self):
        with connect(self.port) as s:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            r = Reader(s).response()
            self.assertEqual(r.status, 413)
            self.assertEqual(r.header("connection"), "close")

    def test_chunked_body_over_limit(self):
        chunk = b"%x\r\n%s\r\n" % (600, b"c" * 600)
        out = raw(self.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + chunk * 3 + b"0\r\n\r\n")
        self.assertIn(status_of(out), (413, 499), out)
        if status_of(out) == 499:
            self.assertTrue(out.endswith(b"too large"), out)

    def test_slow_head_gets_408(self):
        with connect(self.port) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            start = time.monotonic()
            r = Reader(s, timeout=10).response()
            self.assertEqual(r.status, 408)
            self.assertLess(time.monotonic() - start, deadline(5))

    def test_slowloris_trickle_still_times_out(self):
        with connect(self.port) as s:
            s.sendall(b"GET / HTTP/1.1\r\n")
            start = time.monotonic()
            got = b""
            s.settimeout(0.2)
            while time.monotonic() - start < deadline(5):
                try:
                    s.sendall(b"X: y\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    break
                try:
                    b = s.recv(4096)
                    if not b:
                        break
                    got += b
                except OSError:
                    pass
            self.assertTrue(got.startswith(b"HTTP/1.1 408"), got)

    def test_slow_body_gets_timeout(self):
        with connect(self.port) as s:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            r = Reader(s, timeout=10).response()
            # The handler saw nil, "timeout" and answered; or the server did.
            self.assertIn(r.status, (408, 499))
            if r.status == 499:
                self.assertEqual(r.body, b"timeout")
        # The handler learns it as the server answers: poll for its line.
        self.assertTrue(poll(lambda: "body failed: timeout" in self.server.stderr(), 5), self.server.stderr())

    def test_idle_keepalive_is_closed(self):
        with connect(self.port) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            rd = Reader(s)
            self.assertEqual(rd.response().status, 200)
            start = time.monotonic()
            self.assertTrue(rd.closed(timeout=5))
            self.assertGreater(time.monotonic() - start, 0.5)

    def test_silent_connection_is_closed_without_answer(self):
        with connect(self.port) as s:
            rd = Reader(s)
            self.assertTrue(rd.closed(timeout=5))
            self.assertEqual(rd.buf, b"")

    def test_nul_and_control_bytes_in_header(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n")
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n")

    def test_mutated_requests_never_hurt_the_server(self):
        # A small fuzzer: valid requests with bytes flipped, cut, repeated
        # or shuffled. Whatever the server answers, it must keep serving.
        import random
        rnd = random.Random(1234)
        seeds = [
            b"GET /echo?a=1 HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\r\n",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        ]
        for i in range(400):
            data = bytearray(rnd.choice(seeds) * rnd.randint(1, 3))
            for _ in range(rnd.randint(1, 6)):
                op = rnd.random()
                pos = rnd.randrange(len(data))
                if op < 0.4:
                    data[pos] = rnd.randrange(256)
                elif op < 0.6:
                    del data[pos:pos + rnd.randint(1, 8)]
                elif op < 0.8:
                    data[pos:pos] = bytes(rnd.choice(b" :\r\n\t\x00a0-;") for _ in range(rnd.randint(1, 4)))
                else:
                    data = data[:pos]
                if not data:
                    data = bytearray(b"G")
            with connect(self.port) as s:
                try:
                    s.sendall(bytes(data))
                    s.shutdown(socket.SHUT_WR) if i % 3 == 0 else None
                    s.settimeout(0.05)
                    s.recv(65536)
                except OSError:
                    pass
        self.assertEqual(get(self.port, "/").body, b"ok")

    def test_bare_lf(self):
        self.assertRejected(b"GET / HTTP/1.1\nHost: x\n\n")


if __name__ == "__main__":
    main()
