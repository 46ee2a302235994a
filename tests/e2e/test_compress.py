"""tendril.compress through the real server: gzip per Accept-Encoding
(q-values), types, min_size, HEAD, 304, 206, already-encoded bodies,
streamed res:write decompressing to the whole body, Vary and
Content-Length."""
import gzip
import zlib

from harness import ServerTestCase, connect, main, request

BIG = "tendril " * 400  # 3200 bytes, compressible

APP = r'''
local router = require("tendril.router").new()
router:use(require("tendril.compress"){ min_size = 1024 })
local BIG = string.rep("tendril ", 400)
router:get("/text", function() return BIG end)
router:get("/small", function() return "tiny" end)
router:get("/json", function(req, res) return res:json({ s = BIG }) end)
router:get("/png", function(req, res) res:header("Content-Type", "image/png") return BIG end)
router:get("/status", function() return 201, { ["Content-Type"] = "text/html" }, BIG end)
router:get("/encoded", function() return 200, { ["Content-Type"] = "text/plain", ["Content-Encoding"] = "br" }, BIG end)
router:get("/304", function() return 304, { ["Content-Type"] = "text/plain" } end)
router:get("/206", function() return 206, { ["Content-Type"] = "text/plain", ["Content-Range"] = "bytes 0-3199/9999" }, BIG end)
router:get("/etag", function(req, res) res:header("ETag", '"abc"') return BIG end)
router:get("/length", function(req, res)
    res:header("Content-Type", "text/plain"):header("Content-Length", #BIG)
    res:finish(BIG)
end)
router:get("/stream", function(req, res)
    res:header("Content-Type", "text/event-stream")
    for i = 1, 50 do
        assert(res:write("event " .. i .. " " .. BIG:sub(1, i * 10) .. "\n"))
    end
    res:finish("end\n")
end)
router:get("/stream-return", function(req, res)
    res:header("Content-Type", "text/plain")
    res:write("first ")
    return "last"
end)
router:get("/stream-nothing", function(req, res)
    res:header("Content-Type", "text/plain")
    res:write(BIG)
end)
-- 300 KB that deflate barely shrinks: output spans many zlib rounds.
local function noise(n, seed)
    local t, x = {}, seed
    for i = 1, n do
        x = (x * 1103515245 + 12345) % 2147483648
        t[i] = string.char(33 + math.floor(x / 65536) % 90)
    end
    return table.concat(t)
end
local NOISE = noise(300000, 7)
router:get("/noise", function() return NOISE end)
router:get("/noise-stream", function(req, res)
    res:header("Content-Type", "text/plain")
    for i = 1, #NOISE, 70000 do
        res:write(NOISE:sub(i, i + 69999))
    end
    res:finish()
end)
router:get("/slow", function(req, res)
    res:header("Content-Type", "text/event-stream")
    res:write("data: first\n\n")
    require("tendril").sleep(1)
    res:finish("data: last\n\n")
end)
router:get("/raise", function(req, res)
    res:header("Content-Type", "text/plain")
    res:write(BIG)
    error("mid-stream")
end)
-- A mounted router with its own compress: the body is gzipped once.
local sub = require("tendril.router").new()
sub:use(require("tendril.compress")())
sub:get("/text", function() return BIG end)
router:mount("/sub", sub)
return router
'''


def fetch(port, target, ae="gzip", method="GET"):
    headers = {"Accept-Encoding": ae} if ae is not None else {}
    r, rd = request(port, method, target, headers=headers)
    rd.sock.close()
    return r


class CompressTest(ServerTestCase):
    APP = APP

    def gz(self, r, text):
        self.assertEqual(r.header("content-encoding"), "gzip")
        self.assertIn("Accept-Encoding", r.header("vary") or "")
        self.assertEqual(gzip.decompress(r.body).decode(), text)
        cl = r.header("content-length")
        if cl is not None:
            self.assertEqual(int(cl), len(r.body))

    def plain(self, r, text=None):
        self.assertIsNone(r.header("content-encoding"))
        if text is not None:
            self.assertEqual(r.body.decode(), text)

    def test_returned_body_gzipped(self):
        r = fetch(self.port, "/text")
        self.assertEqual(r.status, 200)
        self.gz(r, BIG)
        self.assertLess(len(r.body), 200)

    def test_accept_encoding_q_values(self):
        for ae in ["gzip", "deflate, gzip;q=0.5", "*", "br;q=1, *;q=0.1", "GZIP"]:
            self.gz(fetch(self.port, "/text", ae), BIG)
        for ae in [None, "", "identity", "gzip;q=0", "br", "*;q=0", "gzip;q=0, *"]:
            r = fetch(self.port, "/text", ae)
            self.plain(r, BIG)
            self.assertEqual(r.header("vary"), "Accept-Encoding", ae)

    def test_types_and_min_size(self):
        self.plain(fetch(self.port, "/small"), "tiny")
        r = fetch(self.port, "/png")
        self.plain(r, BIG)
        self.assertIsNone(r.header("vary"))
        r = fetch(self.port, "/json")
        self.assertEqual(r.header("content-type"), "application/json")
        self.gz(r, '{"s":"%s"}' % BIG)
        r = fetch(self.port, "/status")
        self.assertEqual(r.status, 201)
        self.gz(r, BIG)

    def test_never_compressed(self):
        r = fetch(self.port, "/text", method="HEAD")
        self.assertEqual(r.status, 200)
        self.plain(r)
        self.assertEqual(r.body, b"")
        r = fetch(self.port, "/encoded")
        self.assertEqual(r.header("content-encoding"), "br")
        self.assertEqual(r.body.decode(), BIG)
        self.assertEqual(fetch(self.port, "/304").status, 304)
        self.plain(fetch(self.port, "/304"))
        r = fetch(self.port, "/206")
        self.assertEqual(r.status, 206)
        self.plain(r, BIG)

    def test_mounted_compress_gzips_once(self):
        self.gz(fetch(self.port, "/sub/text"), BIG)

    def test_length_and_etag(self):
        r = fetch(self.port, "/length")
        self.gz(r, BIG)
        r = fetch(self.port, "/length", None)
        self.assertEqual(int(r.header("content-length")), len(BIG))
        r = fetch(self.port, "/etag")
        self.assertEqual(r.header("etag"), 'W/"abc"')
        self.assertEqual(fetch(self.port, "/etag", None).header("etag"), '"abc"')

    def test_streamed_writes(self):
        r = fetch(self.port, "/stream")
        want = "".join("event %d %s\n" % (i, BIG[:i * 10]) for i in range(1, 51)) + "end\n"
        self.assertIsNone(r.header("content-length"))
        self.gz(r, want)
        # Each write is flushed: a decoder fed the body so far has output.
        d = zlib.decompressobj(31)
        self.assertEqual(d.decompress(r.body).decode(), want)
        self.gz(fetch(self.port, "/stream-return"), "first last")
        self.gz(fetch(self.port, "/stream-nothing"), BIG)
        self.plain(fetch(self.port, "/stream", None))


    def test_large_bodies_and_errors(self):
        a = fetch(self.port, "/noise")
        self.assertEqual(a.header("content-encoding"), "gzip")
        self.assertEqual(int(a.header("content-length")), len(a.body))
        text = gzip.decompress(a.body)
        self.assertEqual(len(text), 300000)
        b = fetch(self.port, "/noise-stream")
        self.assertEqual(gzip.decompress(b.body), text)
        # A handler that raises mid-stream: the connection ends, the zlib
        # stream is collected (the sanitizer's leak check), the server goes on.
        r, rd = request(self.port, "GET", "/raise", headers={"Accept-Encoding": "gzip"})
        rd.sock.close()
        self.gz(fetch(self.port, "/text"), BIG)


    def test_each_write_arrives_decodable(self):
        # The first event must decompress before the handler finishes (a
        # second later): each write is flushed, not held in zlib's window.
        with connect(self.port) as s:
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
            s.settimeout(0.8)
            got, d, text = b"", zlib.decompressobj(31), b""
            while b"first" not in text:
                got += s.recv(65536)
                head, sep, rest = got.partition(b"\r\n\r\n")
                if not sep:
                    continue
                self.assertIn(b"content-encoding: gzip", head.lower())
                # Chunked framing: size line, data, CRLF; complete chunks only.
                data, d, text = b"", zlib.decompressobj(31), b""
                while True:
                    line, crlf, after = rest.partition(b"\r\n")
                    if not crlf:
                        break
                    size = int(line, 16)
                    if len(after) < size + 2 or size == 0:
                        break
                    data += after[:size]
                    rest = after[size + 2:]
                text = d.decompress(data)
            self.assertEqual(text, b"data: first\n\n")


if __name__ == "__main__":
    main()
