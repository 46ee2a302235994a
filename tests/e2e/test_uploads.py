"""Bodies read in pieces through the real server: req:read() and
req:parts() (part:read, part:save), per-route body limits (router option
and req:set_max_body_bytes), the hold of a body over its limit (no read,
no 100 Continue, 413 when read, Connection: close when left), a 200 MB
multipart upload saved to disk with flat memory, pieces outside the
request's deadline, and the misuse of mixing whole and piecewise reads."""
import hashlib
import json
import os
import re
import subprocess
import tempfile
import threading
import time

from harness import SANITIZED, SLOW, Reader, Server, ServerTestCase, TestCase, connect, main, poll, request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

APP = r'''
local router = require("tendril.router").new()
local sleep = require("tendril").sleep

-- The body in pieces: how many bytes, how many pieces, the largest.
local function count(req, res, max)
    local n, pieces, largest = 0, 0, 0
    while true do
        local p, err = req:read(max)
        if not p then
            if err then return 400, nil, err end
            break
        end
        n, pieces = n + #p, pieces + 1
        if #p > largest then largest = #p end
    end
    return res:json({ bytes = n, pieces = pieces, largest = largest })
end

router:post("/read", function(req, res) return count(req, res) end)
router:post("/read100", function(req, res) return count(req, res, 100) end)
router:post("/late", { max_body_bytes = 64 * 2^20 }, function(req, res)
    sleep(tonumber(req.query.wait))
    return count(req, res)
end)
router:post("/big", { max_body_bytes = 300 * 2^20 }, function(req, res)
    req:deadline(nil)
    local out = {}
    for part, err in req:parts() do
        if not part then return 400, nil, err end
        if part.filename then
            local n, serr = part:save(req.query.dir .. "/" .. part.name)
            if not n then return 500, nil, serr end
            out[#out + 1] = { name = part.name, filename = part.filename, bytes = n,
                              type = part.content_type }
        else
            local pieces = {}
            while true do
                local p, rerr = part:read()
                if not p then
                    if rerr then return 400, nil, rerr end
                    break
                end
                pieces[#pieces + 1] = p
            end
            out[#out + 1] = { name = part.name, value = table.concat(pieces) }
        end
    end
    return res:json(out)
end)
router:post("/first-only", { max_body_bytes = 16 * 2^20 }, function(req, res)
    local next_part = req:parts()
    local part = next_part()
    local second = next_part()
    return res:json({ first = part.name, second = second and second.name, third = next_part() ~= nil })
end)
router:post("/small", { max_body_bytes = 1000 }, function(req, res)
    local b, err = req:body()
    if not b then return 499, nil, err end
    return "got " .. #b
end)
router:post("/raise", function(req, res)
    req:set_max_body_bytes(tonumber(req.query.to))
    return count(req, res)
end)
router:post("/ignore", function() return "ignored\n" end)
-- What the last sleeper's sleep returned, for the tests of a client that
-- leaves while its body is held.
local slept = {}
router:post("/sleep", function(req)
    if req.query.limit then req:set_max_body_bytes(tonumber(req.query.limit)) end
    local t0 = require("tendril").now()
    local ok, err = sleep(5)
    slept.last = string.format("%s %s %.1f", tostring(ok), tostring(err), require("tendril").now() - t0)
    return "slept\n"
end)
router:get("/slept", function() return slept.last or "-" end)
router:post("/after-finish", function(req, res)
    res:finish("finished\n")
    local r, err = req:set_max_body_bytes(10)
    slept.last = tostring(r) .. " " .. tostring(err)
end)
-- Two readers of one body: the handler and a thread it spawned.
router:post("/two-readers", function(req, res)
    local other = require("tendril").spawn(function()
        local n = 0
        while true do
            local p = req:read()
            if not p then return n end
            n = n + #p
        end
    end)
    local n = 0
    while true do
        local p = req:read()
        if not p then break end
        n = n + #p
    end
    local _, m = other:join()
    return string.format("%d %s", n + m, tostring(n > 0 or m > 0))
end)
router:post("/whole", function(req, res)
    local b, err = req:body()
    if not b then return 499, nil, err end
    return "got " .. #b
end)
router:post("/deadline", function(req, res)
    req:deadline(0.5)
    return count(req, res)
end)
router:post("/mix/:how", function(req, res)
    local how = req.params.how
    if how == "read-then-body" then
        req:read(10)
        req:body()
    elseif how == "body-then-read" then
        req:body()
        req:read()
    elseif how == "read-then-limit" then
        req:read(10)
        req:set_max_body_bytes(10)
    elseif how == "read-then-form" then
        req:read(10)
        req:form()
    end
    return "unreached"
end)
return router
'''

MB = 1 << 20


def chunked(data, size=7000):
    out = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size))
    return out + b"0\r\n\r\n"


class UploadTest(ServerTestCase):
    APP = APP
    ARGS = ["--max-body-bytes", str(MB), "--body-timeout", "2"]
    LEFTOVERS_OK = False

    def post(self, target, body, headers=None, timeout=30):
        r, rd = request(self.port, "POST", target, headers=headers, body=body, timeout=timeout)
        rd.sock.close()
        return r

    def test_read_in_pieces_content_length_and_chunked(self):
        data = os.urandom(3 * MB)  # past --max-body-bytes: a route may not read it whole, but it is not held
        r = self.post("/raise?to=%d" % (4 * MB), data)
        self.assertEqual(r.status, 200, r.body)
        v = json.loads(r.body)
        self.assertEqual(v["bytes"], len(data))
        self.assertGreater(v["pieces"], 1)
        self.assertLessEqual(v["largest"], 65536)
        r = self.post("/raise?to=%d" % (4 * MB), chunked(data), {"Transfer-Encoding": "chunked"})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(json.loads(r.body)["bytes"], len(data))

    def test_read_max_and_empty_body(self):
        r = self.post("/read100", b"x" * 1050)
        v = json.loads(r.body)
        self.assertEqual((v["bytes"], v["largest"]), (1050, 100))
        self.assertGreaterEqual(v["pieces"], 11)
        r = self.post("/read", b"")
        self.assertEqual(json.loads(r.body), {"bytes": 0, "pieces": 0, "largest": 0})

    def test_route_limit_raises_and_lowers_the_global_one(self):
        # The global limit (1 MiB) refuses 3 MiB; a route's own admits it.
        body = b"y" * (3 * MB)
        self.assertEqual(self.post("/whole", body).status, 413)
        self.assertEqual(self.post("/read", body).status, 413)
        boundary = "b0undary"
        mp = ("--%s\r\nContent-Disposition: form-data; name=\"f\"; filename=\"y.bin\"\r\n\r\n" % boundary).encode() \
            + body + ("\r\n--%s--\r\n" % boundary).encode()
        with tempfile.TemporaryDirectory() as d:
            r = self.post("/big?dir=" + d, mp, {"Content-Type": "multipart/form-data; boundary=" + boundary})
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(json.loads(r.body), [{"name": "f", "filename": "y.bin", "bytes": len(body)}])
        # A route's lower limit refuses what the global one allows.
        self.assertEqual(self.post("/small", b"z" * 999).body, b"got 999")
        r = self.post("/small", b"z" * 1001)
        self.assertEqual(r.status, 413)
        self.assertEqual(r.header("connection"), "close")
        r = self.post("/small", chunked(b"z" * 5000, 600), {"Transfer-Encoding": "chunked"})
        self.assertEqual(r.status, 413)

    def test_held_body_is_not_read_and_gets_no_100_continue(self):
        with connect(self.port) as s:
            s.sendall(b"POST /whole HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
                      % (5 * MB))
            r = Reader(s).response()
            self.assertEqual(r.status, 413)  # straight away: no 100 Continue before it
            self.assertTrue(Reader(s).closed())
        # Raised by the route: 100 Continue, then the body is read.
        with connect(self.port) as s:
            s.sendall(b"POST /raise?to=%d HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
                      % (6 * MB, 5 * MB))
            rd = Reader(s, timeout=30)
            self.assertEqual(rd.response().status, 100)
            s.sendall(b"q" * (5 * MB))
            r = rd.response()
            self.assertEqual((r.status, json.loads(r.body)["bytes"]), (200, 5 * MB))

    def test_held_body_left_unread_ends_the_connection(self):
        with connect(self.port) as s:
            s.sendall(b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (5 * MB) + b"a" * 1000)
            rd = Reader(s)
            r = rd.response()
            self.assertEqual((r.status, r.body), (200, b"ignored\n"))
            self.assertEqual(r.header("connection"), "close")
            self.assertTrue(rd.closed())
        # Under the limit, an unread body is discarded and the connection goes on.
        with connect(self.port) as s:
            s.sendall(b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" + b"a" * 200000
                      + b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            rd = Reader(s)
            self.assertEqual(rd.response().body, b"ignored\n")
            self.assertEqual(json.loads(rd.response().body)["bytes"], 3)

    def test_a_client_leaving_a_held_body_ends_its_request(self):
        # Held over the limit (nothing read), and paused past the window
        # (the handler not reading yet): either way the client's leaving is
        # seen at once, not when the handler next reads.
        for target, sent in (("/sleep", 1000), ("/sleep?limit=%d" % (8 * MB), 300000)):
            with connect(self.port) as s:
                s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (target.encode(), 5 * MB)
                          + b"h" * sent)
                time.sleep(0.3)
            got = poll(lambda: (lambda b: b if b.startswith(b"nil closed") else None)(
                self.get_text("/slept")), 3 * SLOW)
            self.assertTrue(got, "the sleep did not end when the client left: %r" % self.get_text("/slept"))
            self.assertLess(float(got.split()[2]), 2.5 * SLOW)
            self.post("/read", b"reset")  # the next case starts afresh

    def test_two_readers_share_the_pieces(self):
        with connect(self.port) as s:
            s.sendall(b"POST /two-readers HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            time.sleep(0.3)
            s.sendall(b"12345")
            time.sleep(0.3)
            s.sendall(b"67890")
            r = Reader(s).response()
            self.assertEqual((r.status, r.body), (200, b"10 true"))
        self.assertEqual(self.post("/read", b"still serving").status, 200)

    def test_pipelined_after_a_body_that_filled_the_window_as_it_ended(self):
        # The read that completes the first body also fills the window: the
        # pipelined request behind it must still be read.
        with connect(self.port) as s:
            s.sendall(b"POST /late?wait=0.5 HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n" + b"a" * 60000)
            time.sleep(0.2)
            s.sendall(b"a" * 10000 + b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"b" * 1000)
            time.sleep(1.0)
            s.sendall(b"b" * 4000)
            rd = Reader(s)
            self.assertEqual(json.loads(rd.response().body)["bytes"], 70000)
            r = rd.response()
            self.assertEqual((r.status, json.loads(r.body)["bytes"]), (200, 5000), r.body)

    def test_a_huge_limit_is_no_limit(self):
        for to in ("1e20", "1e300", "18446744073709551616"):
            r = self.post("/raise?to=" + to, b"12345")
            self.assertEqual((r.status, json.loads(r.body)["bytes"]), (200, 5), to)

    def test_100_continue_waits_for_the_handler(self):
        # Under the global limit but over the route's: 413, no 100 first.
        with connect(self.port) as s:
            s.sendall(b"POST /small HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
            r = Reader(s).response()
            self.assertEqual(r.status, 413)
        with connect(self.port) as s:
            s.sendall(b"POST /small HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n")
            rd = Reader(s)
            self.assertEqual(rd.response().status, 100)
            s.sendall(b"c" * 100)
            self.assertEqual(rd.response().body, b"got 100")
        # A handler that never reads: its answer, no 100, and the
        # connection ends (the body was never sent).
        with connect(self.port) as s:
            s.sendall(b"POST /ignore HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n")
            rd = Reader(s)
            r = rd.response()
            self.assertEqual((r.status, r.header("connection")), (200, "close"))
            self.assertTrue(rd.closed())

    def test_setting_a_limit_after_the_answer_says_closed(self):
        self.assertEqual(self.post("/after-finish", b"x").body, b"finished\n")
        self.assertTrue(poll(lambda: self.get_text("/slept") == b"nil closed", 5))

    def get_text(self, target):
        r, rd = request(self.port, "GET", target)
        rd.sock.close()
        return r.body

    def test_pipelined_after_a_body_read_in_pieces(self):
        data = os.urandom(300000)
        with connect(self.port) as s:
            s.sendall(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(data) + data
                      + b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            rd = Reader(s)
            self.assertEqual(json.loads(rd.response().body)["bytes"], len(data))
            self.assertEqual(json.loads(rd.response().body)["bytes"], 5)

    def test_a_late_reader_holds_back_the_client(self):
        # The handler waits before reading: what the client sends meanwhile
        # stays in the kernel, not in the server (a window of 64 KiB).
        size = 48 * MB
        before = self.server.rss_kib()
        s = connect(self.port, timeout=60)
        sent = [0]
        peak = [before]

        def send():
            s.sendall(b"POST /late?wait=%g HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (1.0 * SLOW, size))
            block = b"w" * MB
            for _ in range(size // MB):
                s.sendall(block)
                sent[0] += MB

        t = threading.Thread(target=send)
        t.start()
        time.sleep(0.8 * SLOW)
        peak[0] = max(peak[0], self.server.rss_kib())
        self.assertLess(sent[0], 24 * MB, "the client sent %d bytes while nobody read" % sent[0])
        r = Reader(s, timeout=60).response()
        t.join(60)
        s.close()
        self.assertEqual((r.status, json.loads(r.body)["bytes"]), (200, size))
        if not SANITIZED:
            self.assertLess(peak[0] - before, 10 * 1024)

    def test_pieces_are_outside_the_request_deadline(self):
        # A slow, steady upload (2 s) past a 0.5 s deadline: read in
        # pieces, it completes (the body timeout bounds each pause).
        with connect(self.port) as s:
            s.sendall(b"POST /deadline HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            for i in range(10):
                time.sleep(0.2)
                s.sendall(b"%d" % i)
            r = Reader(s).response()
            self.assertEqual((r.status, json.loads(r.body)["bytes"]), (200, 10))

    def test_body_timeout_while_reading_pieces(self):
        with connect(self.port) as s:
            s.sendall(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            r = Reader(s, timeout=15).response()
            self.assertEqual((r.status, r.body), (400, b"timeout"))

    def test_parts_fields_files_and_skipping(self):
        boundary = "XyZ"
        payload = os.urandom(200000)
        body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n"
                b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n" + payload + b"\r\n"
                b"--XyZ\r\nContent-Disposition: form-data; name=\"empty\"; filename=\"e\"\r\n\r\n\r\n"
                b"--XyZ--\r\n")
        with tempfile.TemporaryDirectory() as d:
            r = self.post("/big?dir=" + d, body, {"Content-Type": "multipart/form-data; boundary=" + boundary})
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(json.loads(r.body), [
                {"name": "title", "value": "hello"},
                {"name": "f", "filename": "a.bin", "bytes": len(payload), "type": "application/octet-stream"},
                {"name": "empty", "filename": "e", "bytes": 0},
            ])
            with open(os.path.join(d, "f"), "rb") as f:
                self.assertEqual(f.read(), payload)
            self.assertEqual(os.path.getsize(os.path.join(d, "empty")), 0)
        # Moving on skips the rest of a part; the loop ends after the last.
        r = self.post("/first-only", body, {"Content-Type": "multipart/form-data; boundary=" + boundary})
        self.assertEqual(json.loads(r.body), {"first": "title", "second": "f", "third": True})

    def test_parts_errors(self):
        r = self.post("/big?dir=/nonexistent", b"{}", {"Content-Type": "application/json"})
        self.assertEqual((r.status, r.body), (400, b"not a form"))
        r = self.post("/big?dir=/tmp", b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated",
                      {"Content-Type": "multipart/form-data; boundary=XyZ"})
        self.assertEqual((r.status, r.body), (400, b"bad multipart: the body ends before its final boundary"))
        r = self.post("/big?dir=/tmp", b"no boundary at all", {"Content-Type": "multipart/form-data; boundary=XyZ"})
        self.assertEqual((r.status, r.body), (400, b"bad multipart: no boundary in the body"))
        body = b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\r\n\r\nabc\r\n--XyZ--\r\n"
        r = self.post("/big?dir=/nonexistent/dir", body, {"Content-Type": "multipart/form-data; boundary=XyZ"})
        self.assertEqual((r.status, r.body), (500, b"no such file or directory"))

    def test_mixing_whole_and_pieces_raises_at_the_caller(self):
        cases = {
            "read-then-body": "req:body: the body is being read in pieces",
            "body-then-read": "req:read: the body was read whole already",
            "read-then-limit": "req:set_max_body_bytes: the body is being read already",
            "read-then-form": "req:form: the body is being read in pieces",
        }
        for how, msg in cases.items():
            r = self.post("/mix/" + how, b"0123456789abcdef",
                          {"Content-Type": "application/x-www-form-urlencoded"})
            self.assertEqual(r.status, 500, how)
            log = self.server.stderr()
            self.assertIn(msg, log)
        self.assertRegex(self.server.stderr(), r"app\.lua:\d+: req:body: the body is being read in pieces")


class ReadmeUploadTest(TestCase):
    def test_the_readme_uploads_block(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            text = f.read()
        section = text[text.index("### Uploads"):]
        block = re.search(r"```lua\n(.*?)```", section, re.S).group(1)
        app = 'local router = require("tendril.router").new()\n' + block + "return router\n"
        payload = os.urandom(3 * MB)  # past the default --max-body-bytes
        with tempfile.NamedTemporaryFile() as f, Server(app) as srv:
            f.write(payload)
            f.flush()
            out = subprocess.run(["curl", "-s", "-F", "a=x", "-F", "f=@%s;filename=p.bin" % f.name,
                                  "http://127.0.0.1:%d/upload" % srv.port], capture_output=True, timeout=60)
            self.assertEqual(json.loads(out.stdout), [{"name": "p.bin", "bytes": len(payload)}])
            try:
                with open("/tmp/upload-0", "rb") as saved:
                    self.assertEqual(saved.read(), payload)
            finally:
                os.unlink("/tmp/upload-0")


class BigUploadTest(ServerTestCase):
    """The issue's proof: a 200 MB multipart upload saved to disk, RSS
    growing by less than 10 MB (Release build: the sanitizer's quarantine
    keeps freed memory resident)."""
    APP = APP
    ARGS = ["--max-body-bytes", str(MB)]

    def test_200_mb_upload_saved_with_flat_memory(self):
        size = 200 * 1000 * 1000
        boundary = b"----tendril-upload-7f3a"
        head = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nbig one\r\n--" + boundary
                + b"\r\nContent-Disposition: form-data; name=\"blob\"; filename=\"blob.bin\"\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n")
        tail = b"\r\n--" + boundary + b"--\r\n"
        block = os.urandom(MB)
        digest = hashlib.sha256()
        with tempfile.TemporaryDirectory() as d:
            before = self.server.rss_kib()
            peak = [before]
            done = threading.Event()

            def sample():
                while not done.is_set():
                    peak[0] = max(peak[0], self.server.rss_kib())
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample)
            sampler.start()
            s = connect(self.port, timeout=120 * SLOW)
            try:
                s.sendall(b"POST /big?dir=%s HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=%s\r\n"
                          b"Content-Length: %d\r\n\r\n" % (d.encode(), boundary, len(head) + size + len(tail)) + head)
                left, i = size, 0
                while left > 0:
                    # Each block differs (its index first): pieces out of order would show.
                    piece = (i.to_bytes(8, "big") + block[8:])[:left]
                    digest.update(piece)
                    s.sendall(piece)
                    left -= len(piece)
                    i += 1
                s.sendall(tail)
                r = Reader(s, timeout=120 * SLOW).response()
            finally:
                done.set()
                sampler.join()
                s.close()
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(json.loads(r.body), [
                {"name": "note", "value": "big one"},
                {"name": "blob", "filename": "blob.bin", "bytes": size, "type": "application/octet-stream"},
            ])
            saved = hashlib.sha256()
            with open(os.path.join(d, "blob"), "rb") as f:
                for chunk in iter(lambda: f.read(MB), b""):
                    saved.update(chunk)
            self.assertEqual(saved.hexdigest(), digest.hexdigest())
            grown = peak[0] - before
            print("200 MB upload: RSS %d KiB before, %d KiB at most (+%d KiB)" % (before, peak[0], grown))
            if not SANITIZED:
                self.assertLess(grown, 10 * 1024)


if __name__ == "__main__":
    main()
