"""HTTP/1.1 behaviour of the real binary: keep-alive, pipelining, HEAD,
bodies. (The request and response objects as a handler sees them are in
tests/runtime/server_spec.lua.)"""
import subprocess

from harness import ServerTestCase, Reader, connect, get, main, raw, request

APP = r'''
local tendril = require "tendril"
return function(req, res)
    local p = req.path
    if p == "/" then
        return "hello world\n"
    elseif p == "/info" then
        return string.format("method=%s target=%s path=%s version=%s remote=%s",
            req.method, req.target, req.path, req.version, req.remote_addr)
    elseif p == "/headers" then
        return (req.headers["x-multi"] or "none") .. "|" .. (req.headers["x-case"] or "none")
    elseif p == "/echo" then
        local body, err = req:body()
        if not body then return 400, {}, "no body: " .. err end
        return 200, { ["Content-Type"] = "application/octet-stream", ["X-Length"] = #body }, body
    elseif p == "/stream" then
        res:header("X-Multi", { "a", "b" })
        for i = 1, 3 do assert(res:write("chunk" .. i .. ";")) end
        return
    elseif p == "/sleep" then
        tendril.sleep(tonumber(req.query.s) or 0.1)
        return "slept " .. req.path
    elseif p == "/big" then
        return string.rep("x", 3 * 1024 * 1024)
    end
    return 404, nil, "not found"
end
'''


class HttpTest(ServerTestCase):
    APP = APP

    def test_hello_has_date_server_type_and_length(self):
        r = get(self.port, "/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"hello world\n")
        self.assertEqual(r.header("content-type"), "text/plain")
        self.assertEqual(r.header("content-length"), "12")
        self.assertEqual(r.header("server"), "tendril")
        self.assertRegex(r.header("date"), r"^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$")

    def test_repeated_headers_joined_and_names_lower_case(self):
        s = connect(self.port)
        s.sendall(b"GET /headers HTTP/1.1\r\nHost: x\r\nX-Multi: one\r\nx-multi: two\r\nX-CASE: Mixed  \r\n\r\n")
        r = Reader(s).response()
        self.assertEqual(r.body, b"one, two|Mixed")
        s.close()

    def test_keep_alive_serves_many_requests_on_one_connection(self):
        s = connect(self.port)
        rd = Reader(s)
        for i in range(20):
            s.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
            r = rd.response()
            self.assertEqual(r.status, 200)
            self.assertIsNone(r.header("connection"))
        s.close()

    def test_http10_keep_alive_is_explicit(self):
        s = connect(self.port)
        rd = Reader(s)
        for _ in range(3):
            s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r = rd.response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("connection"), "keep-alive")
        s.close()

    def test_http10_without_keep_alive_closes(self):
        out = raw(self.port, b"GET / HTTP/1.0\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertIn(b"Connection: close\r\n", out)
        self.assertTrue(out.endswith(b"hello world\n"))

    def test_http10_stream_is_close_delimited(self):
        out = raw(self.port, b"GET /stream HTTP/1.0\r\n\r\n")
        head, body = out.split(b"\r\n\r\n", 1)
        self.assertNotIn(b"chunked", head)
        self.assertNotIn(b"Content-Length", head)
        self.assertEqual(body, b"chunk1;chunk2;chunk3;")

    def test_connection_close_is_honoured(self):
        out = raw(self.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertIn(b"Connection: close\r\n", out)
        self.assertTrue(out.endswith(b"hello world\n"))

    def test_pipelined_requests_answered_in_order(self):
        s = connect(self.port)
        reqs = b"".join(b"GET /sleep?s=0.0%d HTTP/1.1\r\nHost: x\r\n\r\nGET /info?n=%d HTTP/1.1\r\nHost: x\r\n\r\n"
                        % (5 - i % 5, i) for i in range(5))
        s.sendall(reqs)
        rd = Reader(s)
        for i in range(5):
            self.assertEqual(rd.response().body, b"slept /sleep")
            self.assertIn(b"target=/info?n=%d " % i, rd.response().body)
        s.close()

    def test_pipelined_in_one_packet_with_close(self):
        out = raw(self.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3 +
                  b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(out.count(b"HTTP/1.1 200 OK"), 4)
        self.assertTrue(out.rstrip().endswith(b"remote=127.0.0.1"))

    def test_head_has_length_but_no_body(self):
        s = connect(self.port)
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /info HTTP/1.1\r\nHost: x\r\n\r\n")
        rd = Reader(s)
        r = rd.response(head_request=True)
        self.assertEqual(r.header("content-length"), "12")
        r2 = rd.response()
        self.assertTrue(r2.body.startswith(b"method=GET"), r2.body)
        s.close()

    def test_content_length_body(self):
        r, rd = request(self.port, "POST", "/echo", body=b"x" * 100000)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("x-length"), "100000")
        self.assertEqual(r.body, b"x" * 100000)
        rd.sock.close()

    def test_chunked_body_is_decoded(self):
        s = connect(self.port)
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
        r = Reader(s).response()
        self.assertEqual(r.body, b"hello world")
        s.close()

    def test_body_arriving_slowly_is_waited_for(self):
        s = connect(self.port)
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        import time
        time.sleep(0.2)
        s.sendall(b"world")
        r = Reader(s).response()
        self.assertEqual(r.body, b"helloworld")
        s.close()

    def test_expect_100_continue(self):
        s = connect(self.port)
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        rd = Reader(s)
        r = rd.response()
        self.assertEqual(r.status, 100)
        s.sendall(b"data")
        r = rd.response()
        self.assertEqual((r.status, r.body), (200, b"data"))
        s.close()

    def test_curl_expect_100_continue(self):
        out = subprocess.run(["curl", "-s", "-H", "Expect: 100-continue", "--data-binary", "@-",
                              "http://127.0.0.1:%d/echo" % self.port],
                             input=b"y" * 5000, capture_output=True, timeout=20)
        self.assertEqual(out.stdout, b"y" * 5000)

    def test_streamed_response_is_chunked_with_repeated_header(self):
        r = get(self.port, "/stream")
        self.assertEqual(r.header("transfer-encoding"), "chunked")
        self.assertEqual(r.header_list("x-multi"), ["a", "b"])
        self.assertEqual(r.body, b"chunk1;chunk2;chunk3;")

    def test_large_response(self):
        r = get(self.port, "/big")
        self.assertEqual(len(r.body), 3 * 1024 * 1024)

    def test_upgrade_request_served_as_normal(self):
        s = connect(self.port)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                  b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
        rd = Reader(s)
        self.assertEqual(rd.response().body, b"hello world\n")
        self.assertTrue(rd.response().body.startswith(b"method=GET"))
        s.close()

    def test_curl_keepalive_reuse(self):
        url = "http://127.0.0.1:%d/" % self.port
        out = subprocess.run(["curl", "-sv", url, url, url], capture_output=True, timeout=20)
        self.assertEqual(out.stdout, b"hello world\n" * 3)
        self.assertIn(b"Re-using existing connection", out.stderr)


if __name__ == "__main__":
    main()
