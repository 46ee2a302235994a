"""Request framing (RFC 9112) and decoded paths: what llhttp 8.1 lets
through is refused before any handler runs."""
import socket
import threading
import time

from harness import (SANITIZED, Reader, Server, ServerTestCase, connect, deadline, get, main, poll, raw,
                     request)

APP = r'''
local tendril = require "tendril"
local runs = tendril.keep("runs", { n = 0 })
return function(req, res)
    if req.path == "/runs" then
        return tostring(runs.n)
    end
    runs.n = runs.n + 1
    if req.path == "/echo" then
        local body, err = req:body()
        if not body then
            return 499, nil, "body: " .. tostring(err)
        end
        return "got " .. #body
    elseif req.path == "/ignore" then
        return "ignored"
    elseif req.path == "/headers" then
        return req.headers["x-rep"] .. "|" .. tostring(req.headers.host)
    elseif req.path == "/upstream-twice" then
        local http = require "tendril.http"
        local url = "http://127.0.0.1:" .. req.query.port .. "/"
        local a, err = http.get(url)
        if not a then return "first: " .. err end
        local b, err2 = http.get(url)
        if not b then return "second: " .. err2 end
        return a.status .. " [" .. a.body .. "] " .. b.status .. " [" .. b.body .. "]"
    end
    return "path=" .. req.path .. " target=" .. req.target .. " host=" .. tostring(req.headers.host)
end
'''

ARGS = ["--max-body-bytes", "2000000", "--body-timeout", "1", "--header-timeout", "2"]


def status_of(out):
    return int(out.split(b" ", 2)[1]) if out.startswith(b"HTTP/1.") else None


class FramingTest(ServerTestCase):
    APP = APP
    ARGS = ARGS

    def runs(self):
        return int(get(self.port, "/runs").body)

    def assertRefused(self, data, status):
        before = self.runs()
        out = raw(self.port, data)
        self.assertEqual(status_of(out), status, out)
        self.assertIn(b"Connection: close\r\n", out)
        # Exactly one answer, and no handler ran.
        self.assertEqual(out.count(b"HTTP/1."), 1, out)
        self.assertEqual(self.runs(), before)

    def test_transfer_codings_other_than_chunked(self):
        for te in (b"gzip", b"identity", b"xchunked", b"gzip, chunked", b"chunked;x=1;", b"deflate"):
            want = 400 if b";" in te else 501
            self.assertRefused(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + te +
                               b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n", want)
        for te in (b",,,,", b"chunked, chunked", b"chunked, gzip", b"\"chunked\"", b"", b" ", b"\t", b"chunked\t",
                   b", chunked \t"):
            self.assertRefused(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + te +
                               b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400)
        # Chunked in HTTP/1.0 is faulty framing.
        self.assertRefused(b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400)
        # The real thing, spelled in any case, with empty list elements.
        for te in (b"chunked", b"Chunked", b", chunked"):
            out = raw(self.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + te +
                      b"\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            self.assertTrue(out.startswith(b"HTTP/1.1 200") and out.endswith(b"got 5"), out)

    def test_bytes_after_chunk_data_must_be_crlf(self):
        before = self.runs()
        out = raw(self.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhelloXX0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(status_of(out), (400, 499), out)
        self.assertNotIn(b"path=/smuggled", out)
        self.assertEqual(self.runs(), before + 1)
        # Split between the two bytes, across reads.
        with connect(self.port) as s:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r")
            time.sleep(0.1)
            s.sendall(b"Z0\r\n\r\n")
            out = Reader(s).response()
            self.assertIn(out.status, (400, 499))

    def test_decoded_paths(self):
        self.assertRefused(b"GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n", 400)
        # %00 in the query is the handler's business.
        self.assertEqual(get(self.port, "/q?x=%00").status, 200)
        r = get(self.port, "/a/../b/./c/%2e%2e/d")
        self.assertEqual(r.body, b"path=/b/d target=/a/../b/./c/%2e%2e/d host=localhost")
        r = get(self.port, "/../../etc/passwd")
        self.assertTrue(r.body.startswith(b"path=/etc/passwd "), r.body)
        out = raw(self.port, b"GET http://other.example:81/x/../y?z=1 HTTP/1.1\r\nHost: x\r\n"
                  b"Connection: close\r\n\r\n")
        self.assertTrue(out.endswith(b"path=/y target=http://other.example:81/x/../y?z=1 host=other.example:81"),
                        out)

    def test_absolute_form_targets_are_http_with_a_host(self):
        for target in (b"http://u:p@evil/x", b"http:///x", b"ftp://h/x", b"a://b://c", b"x"):
            self.assertRefused(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400)

    def test_connect_is_not_served(self):
        self.assertRefused(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405)

    def test_body_timeout_is_between_reads(self):
        # 40 KB in 2 s, one piece every 0.1 s: never 1 s without a byte.
        with connect(self.port, timeout=30) as s:
            total = 40000
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total)
            piece = b"x" * 2000
            for _ in range(total // len(piece)):
                time.sleep(0.1)
                s.sendall(piece)
            r = Reader(s, timeout=10).response()
            self.assertEqual((r.status, r.body), (200, b"got 40000"))

    def test_after_a_body_timeout_the_answer_closes(self):
        with connect(self.port) as s:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            rd = Reader(s, timeout=10)
            r = rd.response()
            self.assertEqual((r.status, r.body), (499, b"body: timeout"))
            self.assertEqual(r.header("connection"), "close")
            self.assertTrue(rd.closed(timeout=5))
            self.assertEqual(rd.buf, b"")

    def test_no_unsolicited_408_after_an_answer(self):
        # The handler answers without reading; the body stalls: the
        # connection closes quietly, with the one answer only.
        with connect(self.port) as s:
            s.sendall(b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")
            rd = Reader(s, timeout=10)
            r = rd.response()
            self.assertEqual((r.status, r.body), (200, b"ignored"))
            self.assertTrue(rd.closed(timeout=deadline(5)))
            self.assertEqual(rd.buf, b"")

    def test_unread_body_is_drained_and_the_connection_reused(self):
        with connect(self.port) as s:
            s.sendall(b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            rd = Reader(s, timeout=10)
            self.assertEqual(rd.response().body, b"ignored")
            s.sendall(b"y" * 100000 + b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(rd.response().body, b"path=/plain target=/plain host=x")

    def test_repeated_headers_are_joined_in_one_pass(self):
        r = get(self.port, "/headers", headers={"X-Rep": "a"})
        self.assertEqual(r.body, b"a|localhost")
        head = b"GET /headers HTTP/1.1\r\nHost: h\r\nX-Rep: 1\r\nOther: z\r\nX-Rep: 2\r\nX-REP: 3\r\n" \
               b"Connection: close\r\n\r\n"
        self.assertTrue(raw(self.port, head).endswith(b"1, 2, 3|h"))


    def test_a_cr_must_be_followed_by_lf(self):
        # llhttp 8.1 ends a line at a CR followed by any byte.
        self.assertRefused(b"GET / HTTP/1.1\r\nHost: a\r\n\rXGET /y HTTP/1.1\r\nHost: a\r\n\r\n", 400)
        self.assertRefused(b"GET / HTTP/1.1\r\nHost: a\rX-Y: 1\r\n\r\n", 400)
        before = self.runs()
        for framing in (b"5\rXhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n\rX",
                        b"5\r\nhello\r\n0\r\nT: 1\rX\r\n\r\n"):
            out = raw(self.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + framing)
            self.assertIn(status_of(out), (400, 499), out)
            self.assertNotIn(b"got 5", out)
        # A CR inside the body's data is data.
        out = raw(self.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked"
                  b"\r\n\r\n3\r\na\rb\r\n0\r\n\r\n")
        self.assertTrue(out.endswith(b"got 3"), out)
        # The refused heads ran no handler; the chunked ones ran /echo.
        self.assertEqual(self.runs(), before + 4)

    def test_white_space_inside_a_field_name(self):
        self.assertRefused(b"GET / HTTP/1.1\r\nHost: a\r\nA B: c\r\n\r\n", 400)
        out = raw(self.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\nA B: c\r\n\r\n")
        self.assertIn(status_of(out), (400, 499), out)

    def test_connection_close_in_trailers_ends_the_connection(self):
        with connect(self.port) as s:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"0\r\nConnection: close\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
            rd = Reader(s, timeout=10)
            r = rd.response()
            self.assertEqual(r.body, b"got 0")
            self.assertTrue(rd.closed(timeout=5))
            self.assertEqual(rd.buf, b"")

    def upstream_once(self, answers):
        """A raw upstream: one connection; the n-th request gets answers[n]."""
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(4)

        def serve():
            c, _ = ls.accept()
            c.settimeout(10)
            buf = b""
            try:
                for a in answers:
                    while b"\r\n\r\n" not in buf:
                        buf += c.recv(65536)
                    buf = buf.split(b"\r\n\r\n", 1)[1]
                    c.sendall(a)
                time.sleep(0.5)
            except OSError:
                pass
            c.close()
            ls.close()

        threading.Thread(target=serve, daemon=True).start()
        return ls.getsockname()[1]

    def test_client_reads_no_body_for_1xx_204_304(self):
        port = self.upstream_once([b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                                   b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
        self.assertEqual(get(self.port, "/upstream-twice?port=%d" % port).body, b"204 [] 200 [ok]")
        port = self.upstream_once([b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\n\r\n"
                                   b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                                   b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"])
        self.assertEqual(get(self.port, "/upstream-twice?port=%d" % port).body, b"200 [ok] 304 []")


class ManyRepeatsTest(ServerTestCase):
    APP = APP
    ARGS = ["--max-header-bytes", "2000000"]

    def test_a_megabyte_of_repeats_is_quick(self):
        n = 150000
        head = b"GET /headers HTTP/1.1\r\nHost: h\r\n" + b"X-Rep: v\r\n" * n + b"Connection: close\r\n\r\n"
        start = time.monotonic()
        out = raw(self.port, head, timeout=30)
        took = time.monotonic() - start
        self.assertTrue(out.endswith(b"v, " * (n - 1) + b"v|h"), out[-200:])
        # Liveness, not speed: one concatenation per header took 4.9 s
        # here, one pass 0.1 s.
        self.assertLess(took, deadline(1.5))


if __name__ == "__main__":
    main()
