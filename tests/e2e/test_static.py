"""tendril.static through the real server: types, ETag/Last-Modified and
304, ranges (206, 416), index.html, HEAD, .gz twins, a traversal catalogue
that must all be 404, a slow reader beside other clients, TLS, and a large
file with flat memory (Release build only)."""
import gzip
import os
import shutil
import socket
import subprocess
import tempfile
import time

from harness import SANITIZED, Server, TestCase, connect, deadline, get, main, poll, request
from tlsfixture import Pki

APP = r'''
local router = require("tendril.router").new()
local static = require "tendril.static"
local root = os.getenv("STATIC_ROOT")
router:get("/assets/*path", static(root))
router:get("/follow/*path", static(root, { follow_symlinks = true }))
router:get("/hidden/*path", static(root, { hidden = true }))
router:get("/list/*path", static(root, { listing = true }))
router:get("/one", function(req, res) return res:sendfile(root .. "/a.txt", { offset = 2, length = 3 }) end)
return router
'''


def curl(*args, timeout=30):
    return subprocess.run(["curl", "-sS", "--max-time", "%g" % deadline(timeout)] + list(args),
                          capture_output=True, timeout=deadline(timeout) + 10)


class StaticTest(TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="tendril-static-")
        cls.outside = tempfile.mkdtemp(prefix="tendril-outside-")
        r = cls.root
        cls.write("a.txt", b"hello static\n")
        cls.write("style.css", b"body{}\n")
        cls.write("blob.unknownext", b"\x00\x01")
        cls.write("img.png", b"\x89PNG....")
        cls.write("dir/index.html", b"<h1>index</h1>\n")
        cls.write("empty/x.txt", b"x")
        cls.write(".secret", b"hidden\n")
        cls.write("app.js", b"console.log('plain')\n" * 50)
        with open(os.path.join(r, "app.js.gz"), "wb") as f:
            f.write(gzip.compress(b"console.log('plain')\n" * 50))
        cls.big = os.urandom(3 * 1024 * 1024 + 17)
        cls.write("big.bin", cls.big)
        with open(os.path.join(cls.outside, "secret.txt"), "wb") as f:
            f.write(b"outside\n")
        os.symlink(os.path.join(cls.outside, "secret.txt"), os.path.join(r, "link-out.txt"))
        os.symlink(os.path.join(r, "a.txt"), os.path.join(r, "link-in.txt"))
        # Relative links, which openat2 resolves itself (absolute ones take
        # the open-then-check path): one climbing out, one staying in.
        os.symlink(os.path.relpath(os.path.join(cls.outside, "secret.txt"), os.path.join(r, "dir")),
                   os.path.join(r, "dir", "rel-out.txt"))
        os.symlink("../a.txt", os.path.join(r, "dir", "rel-in.txt"))
        subprocess.run(["truncate", "-s", "200M", os.path.join(r, "sparse.bin")], check=True)
        cls.pki = Pki()
        p = cls.pki
        cls.server = Server(APP, env={"STATIC_ROOT": r}, args=["--tls-port", "0", "--tls-cert", p.localhost.cert,
                                                               "--tls-key", p.localhost.key]).start()
        cls.port = cls.server.port

    @classmethod
    def write(cls, name, data):
        path = os.path.join(cls.root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        cls.pki.close()
        shutil.rmtree(cls.root)
        shutil.rmtree(cls.outside)
        assert code == 0, "exit %d: %s" % (code, cls.server.stderr()[-3000:])

    def test_types(self):
        for path, ctype in [("a.txt", "text/plain; charset=utf-8"), ("style.css", "text/css; charset=utf-8"),
                            ("img.png", "image/png"), ("blob.unknownext", "application/octet-stream")]:
            r = get(self.port, "/assets/" + path)
            self.assertEqual(r.status, 200, path)
            self.assertEqual(r.header("content-type"), ctype)

    def test_body_and_length(self):
        r = get(self.port, "/assets/a.txt")
        self.assertEqual(r.body, b"hello static\n")
        self.assertEqual(r.header("content-length"), "13")
        self.assertEqual(r.header("accept-ranges"), "bytes")

    def test_big_file_whole(self):
        r = get(self.port, "/assets/big.bin", timeout=30)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, self.big)

    def test_res_sendfile_part(self):
        self.assertEqual(get(self.port, "/one").body, b"llo")

    def test_etag_and_304(self):
        r = get(self.port, "/assets/a.txt")
        etag, lm = r.header("etag"), r.header("last-modified")
        self.assertTrue(etag.startswith('"'))
        self.assertTrue(lm.endswith("GMT"))
        r2 = get(self.port, "/assets/a.txt", headers={"If-None-Match": etag})
        self.assertEqual(r2.status, 304)
        self.assertEqual(r2.body, b"")
        self.assertEqual(r2.header("etag"), etag)
        self.assertEqual(get(self.port, "/assets/a.txt", headers={"If-None-Match": '"other"'}).status, 200)
        self.assertEqual(get(self.port, "/assets/a.txt", headers={"If-Modified-Since": lm}).status, 304)
        self.assertEqual(get(self.port, "/assets/a.txt",
                             headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status, 200)
        out = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "If-None-Match: " + etag,
                   "http://127.0.0.1:%d/assets/a.txt" % self.port)
        self.assertEqual(out.stdout, b"304")

    def test_ranges(self):
        r = get(self.port, "/assets/a.txt", headers={"Range": "bytes=0-4"})
        self.assertEqual((r.status, r.body), (206, b"hello"))
        self.assertEqual(r.header("content-range"), "bytes 0-4/13")
        r = get(self.port, "/assets/a.txt", headers={"Range": "bytes=6-"})
        self.assertEqual((r.status, r.body), (206, b"static\n"))
        r = get(self.port, "/assets/a.txt", headers={"Range": "bytes=-7"})
        self.assertEqual((r.status, r.body), (206, b"static\n"))
        r = get(self.port, "/assets/a.txt", headers={"Range": "bytes=5-100"})
        self.assertEqual(r.header("content-range"), "bytes 5-12/13")
        r = get(self.port, "/assets/a.txt", headers={"Range": "bytes=13-"})
        self.assertEqual((r.status, r.reason), (416, "Range Not Satisfiable"))
        self.assertEqual(r.header("content-range"), "bytes */13")
        r = get(self.port, "/assets/a.txt", headers={"Range": "bytes=0-1,3-4"})
        self.assertEqual((r.status, r.body), (200, b"hello static\n"))
        r = get(self.port, "/assets/big.bin", headers={"Range": "bytes=1000000-2999999"}, timeout=30)
        self.assertEqual((r.status, r.body), (206, self.big[1000000:3000000]))
        out = curl("-s", "-r", "1-3", "http://127.0.0.1:%d/assets/a.txt" % self.port)
        self.assertEqual(out.stdout, b"ell")

    def test_index_and_no_listing(self):
        r = get(self.port, "/assets/dir/")
        self.assertEqual((r.status, r.body), (200, b"<h1>index</h1>\n"))
        self.assertEqual(r.header("content-type"), "text/html; charset=utf-8")
        self.assertEqual(get(self.port, "/assets/empty/").status, 404)

    def test_listing_when_asked(self):
        # A directory with its index still serves the index.
        self.assertEqual(get(self.port, "/list/dir/").body, b"<h1>index</h1>\n")
        # Without one: the entries, names escaped, links encoded, no hidden ones.
        self.write("empty/a <b>&.txt", b"x")
        try:
            r = get(self.port, "/list/empty/")
            self.assertEqual((r.status, r.header("content-type")), (200, "text/html; charset=utf-8"))
            self.assertIn(b"<title>Index of /list/empty/</title>", r.body)
            self.assertIn(b'<li><a href="a%20%3Cb%3E%26.txt">a &lt;b&gt;&amp;.txt</a></li>', r.body)
            self.assertIn(b'<li><a href="x.txt">x.txt</a></li>', r.body)
            self.assertIn(b'<li><a href="../">../</a></li>', r.body)
            root = get(self.port, "/list/").body
            self.assertIn(b'<a href="dir/">dir/</a>', root)
            self.assertNotIn(b".secret", root)
            # Relative links need the trailing slash.
            r = get(self.port, "/list/empty")
            self.assertEqual((r.status, r.header("location")), (301, "/list/empty/"))
            # Confined as files are: no listing of a directory outside.
            os.symlink(self.outside, os.path.join(self.root, "outdir"))
            self.assertEqual(get(self.port, "/list/outdir/").status, 404)
        finally:
            os.unlink(os.path.join(self.root, "empty", "a <b>&.txt"))
            if os.path.islink(os.path.join(self.root, "outdir")):
                os.unlink(os.path.join(self.root, "outdir"))

    def test_head(self):
        r, rd = request(self.port, method="HEAD", target="/assets/big.bin")
        rd.sock.close()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("content-length"), str(len(self.big)))
        self.assertEqual(r.body, b"")
        # The connection stays usable: the next answer is not body bytes.
        s = connect(self.port)
        s.sendall(b"HEAD /assets/a.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /assets/a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        data = s.recv(65536)
        s.close()
        self.assertEqual(data.count(b"HTTP/1.1 200"), 2)
        self.assertTrue(data.endswith(b"hello static\n"))

    def test_gzip_twin(self):
        r = get(self.port, "/assets/app.js", headers={"Accept-Encoding": "gzip, deflate"})
        self.assertEqual(r.header("content-encoding"), "gzip")
        self.assertEqual(r.header("vary"), "Accept-Encoding")
        self.assertEqual(r.header("content-type"), "text/javascript; charset=utf-8")
        self.assertEqual(gzip.decompress(r.body), b"console.log('plain')\n" * 50)
        r = get(self.port, "/assets/app.js")
        self.assertIsNone(r.header("content-encoding"))
        self.assertEqual(r.body, b"console.log('plain')\n" * 50)
        r = get(self.port, "/assets/app.js", headers={"Accept-Encoding": "gzip;q=0"})
        self.assertIsNone(r.header("content-encoding"))

    def test_traversal_catalogue(self):
        bad = ["/assets/../a.txt", "/assets/%2e%2e/%2e%2e/etc/passwd", "/assets/..%2fetc%2fpasswd",
               "/assets/dir%2findex.html", "/assets/dir%2Findex.html", "/assets/..\\..\\etc\\passwd",
               "/assets/dir\\index.html", "/assets/%5c..%5cetc", "/assets/link-out.txt", "/assets/a.txt%00.png",
               "/assets/.secret", "/assets/%2esecret", "/assets/dir/../.secret", "/assets/../../../../etc/passwd",
               "/assets/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/assets/nope.txt", "/assets/dir/..%00/a.txt",
               "/assets/dir/rel-out.txt"]
        for target in bad:
            s = connect(self.port)
            s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target).encode())
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
            s.close()
            status = data.split(b" ", 2)[1] if data else b"none"
            self.assertIn(status, (b"404", b"400"), target)
            self.assertNotIn(b"root:", data, target)
            self.assertNotIn(b"outside", data, target)
        self.assertEqual(get(self.port, "/assets/link-in.txt").status, 200)
        self.assertEqual(get(self.port, "/assets/dir/rel-in.txt").body, get(self.port, "/assets/a.txt").body)
        self.assertEqual(get(self.port, "/follow/dir/rel-out.txt").body, b"outside\n")
        self.assertEqual(get(self.port, "/follow/link-out.txt").body, b"outside\n")
        self.assertEqual(get(self.port, "/hidden/.secret").body, b"hidden\n")
        self.assertEqual(get(self.port, "/assets/a.txt", method="POST", body=b"").status, 405)

    def test_slow_reader_does_not_block_others(self):
        s = socket.create_connection(("127.0.0.1", self.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /assets/sparse.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(100)
        t0 = time.monotonic()
        for _ in range(20):
            self.assertEqual(get(self.port, "/assets/a.txt").status, 200)
        self.assertLess(time.monotonic() - t0, 5)
        s.close()

    def test_tls_download(self):
        tls = self.server.tls_port
        out = curl("--cacert", self.pki.ca, "--resolve", "localhost:%d:127.0.0.1" % tls, "-o", "-",
                   "https://localhost:%d/assets/big.bin" % tls, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, self.big)
        out = curl("--cacert", self.pki.ca, "--resolve", "localhost:%d:127.0.0.1" % tls, "-r", "100-199",
                   "https://localhost:%d/assets/big.bin" % tls)
        self.assertEqual(out.stdout, self.big[100:200])

    def test_large_sparse_file_flat_memory(self):
        before = self.server.rss_kib()
        out = curl("-o", "/dev/null", "-w", "%{size_download}", "http://127.0.0.1:%d/assets/sparse.bin" % self.port,
                   timeout=120)
        self.assertEqual(out.stdout, b"209715200")
        grown = self.server.rss_kib() - before
        if not SANITIZED:
            self.assertLess(grown, 10 * 1024, "RSS grew by %d KiB" % grown)


SHRINK_APP = r'''
local core = require "tendril.core"
local fs = require "tendril.fs"
local tendril = require "tendril"
local root = os.getenv("STATIC_ROOT")
local static = require("tendril.static")(root)
return function(req, res)
    if req.path == "/shrink" then
        local path = root .. "/shrinking.bin"
        assert(fs.write(path, string.rep("s", 1024 * 1024)))
        local file = core.file_open(path)
        assert(fs.write(path, "short"))
        local ok, err = res:sendfile(file, { length = 1024 * 1024, size = 1024 * 1024 })
        core.file_close(file)
        tendril.log("notice", "shrink: " .. tostring(ok) .. " " .. tostring(err))
        return
    end
    return static(req, res)
end
'''


class StaticTimeoutTest(TestCase):
    """A reader that stops is cut off by the send timeout; a slow, steady
    one outlasts the request's deadline; a file that shrinks mid-send ends
    its connection; the server carries on."""

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="tendril-static-")
        subprocess.run(["truncate", "-s", "64M", os.path.join(cls.root, "sparse.bin")], check=True)
        with open(os.path.join(cls.root, "a.txt"), "wb") as f:
            f.write(b"a\n")
        cls.steady = os.urandom(1536 * 1024)
        with open(os.path.join(cls.root, "steady.bin"), "wb") as f:
            f.write(cls.steady)
        cls.server = Server(SHRINK_APP, env={"STATIC_ROOT": cls.root},
                            args=["--send-timeout", "1", "--request-timeout", "1"]).start()
        cls.port = cls.server.port

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        shutil.rmtree(cls.root)
        assert code == 0, "exit %d: %s" % (code, cls.server.stderr()[-3000:])

    def open_files(self):
        """The server's descriptors of the file the stalled reader asks for."""
        d = "/proc/%d/fd" % self.server.proc.pid
        n = 0
        for fd in os.listdir(d):
            try:
                n += os.readlink(os.path.join(d, fd)) == os.path.join(self.root, "sparse.bin")
            except OSError:
                pass
        return n

    def server_side_open(self, client_port):
        """Whether the server still holds its end of the client's connection."""
        out = subprocess.run(["ss", "-tnH", "state", "established", "( sport = :%d and dport = :%d )"
                              % (self.port, client_port)], capture_output=True, text=True).stdout
        return out.strip() != ""

    def test_stalled_reader_is_disconnected(self):
        s = socket.create_connection(("127.0.0.1", self.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /sparse.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(100)
        client_port = s.getsockname()[1]
        time.sleep(0.3)
        self.assertEqual(self.open_files(), 1)
        self.assertTrue(self.server_side_open(client_port))
        # Taking nothing for longer than the send timeout: the server
        # closes its socket and the file (the kernel may still deliver
        # what its send buffer holds, slowly: not read here).
        self.assertTrue(poll(lambda: self.open_files() == 0 and not self.server_side_open(client_port), 5))
        s.close()
        self.assertEqual(get(self.port, "/a.txt").body, b"a\n")

    def test_a_download_outlasts_the_request_deadline(self):
        # 1.5 MiB taken 32 KiB at most every 0.05 s: at least 2.4 s, past
        # the 1 s deadline, never idle as long as the 1 s send timeout.
        s = socket.create_connection(("127.0.0.1", self.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(b"GET /steady.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        s.settimeout(10)
        data = b""
        start = time.monotonic()
        while True:
            b = s.recv(32768)
            if not b:
                break
            data += b
            time.sleep(0.05)
        s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b"200 OK", head)
        self.assertEqual(body, self.steady)
        self.assertGreater(time.monotonic() - start, 2.0)

    def test_file_that_shrinks_ends_the_connection(self):
        s = connect(self.port)
        s.sendall(b"GET /shrink HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        s.settimeout(10)
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        s.close()
        self.assertIn(b"Content-Length: 1048576", data)
        self.assertLess(len(data), 1048576)
        self.assertEqual(get(self.port, "/a.txt").body, b"a\n")


if __name__ == "__main__":
    main()
