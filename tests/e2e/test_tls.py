"""TLS end to end: the server speaks it (--tls-cert, --tls-key, --tls-port)
to curl, openssl s_client, Python's ssl and requests; it picks certificates
by SNI, refuses TLS 1.0 and 1.1, offers http/1.1 by ALPN, resumes sessions,
rereads renewed certificates on reload; handlers see req.scheme and req.tls;
tendril's own client (tendril.http, tendril.tcp) verifies what it talks to.
Every certificate is made at test time (tlsfixture.Pki)."""
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from harness import (BIN, SANITIZED, SLOW, Reader, Server, TestCase, burst, connect, deadline, get, main, poll,
                     recv_until_close)
from tlsfixture import OPENSSL, SYSTEM_PYTHON, Pki, must, openssl, peer_der, peer_serial, tls_connect

LOCAL_SANS = ["DNS:localhost", "IP:127.0.0.1"]

# The server side: what a handler sees of the connection.
INFO_APP = r'''
local tendril = require "tendril"
return function(req)
    local p = req.path
    if p == "/slow" then
        tendril.sleep(tonumber(req.query.s))
        return "slept"
    elseif p == "/redirect" then
        return 302, { Location = req.query.to }, ""
    elseif p == "/big" then
        return string.rep("0123456789abcdef", tonumber(req.query.n) / 16)
    elseif p == "/echo" then
        local body, err = req:body()
        return body or err
    elseif p == "/tls" then
        local t = req.tls
        if t == nil then return "scheme=" .. tostring(req.scheme) .. " tls=nil" end
        return string.format("scheme=%s version=%s cipher=%s server_name=%s", tostring(req.scheme),
                             tostring(t.version), tostring(t.cipher), tostring(t.server_name))
    end
    return "hello " .. tostring(req.scheme)
end
'''

ERROR_LINE = re.compile(r"^\S+ \S+ \[(warn|error|crit)\] .*$", re.M)
INFO_LINE = re.compile(r"^\S+ \S+ \[info\] .*$", re.M)


def curl(*args, timeout=30):
    return subprocess.run(["curl", "-sS", "--max-time", "%g" % deadline(timeout)] + list(args),
                          capture_output=True, timeout=deadline(timeout) + 10)


def s_client(port, *args, input="", timeout=20):
    """openssl s_client to 127.0.0.1:port; returns (exit status, stdout and stderr)."""
    r = openssl("s_client", "-connect", "127.0.0.1:%d" % port, *args, input=input, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def negotiated(out):
    """The protocol an s_client run negotiated. Its session block says it
    ("Protocol  : TLSv1.1"); a TLS 1.3 run that ended before any ticket
    came prints no session, but its "New, TLSv1.3," line is the protocol
    (before 1.3 that line names the cipher's version instead)."""
    m = re.search(r"^\s*Protocol\s*: (\S+)$", out, re.M) or re.search(r"^New, (TLSv1\.3), ", out, re.M)
    return m and m.group(1)


def tls_request(port, target="/", server_name="localhost", ca=None, method="GET", body=None, headers=None,
                **kw):
    """One request on a new TLS connection; returns (Response, Reader).
    The caller closes rd.sock."""
    s = tls_connect(port, server_name, ca, **kw)
    hdrs = {"Host": server_name or "127.0.0.1"}
    hdrs.update(headers or {})
    if body is not None:
        hdrs["Content-Length"] = str(len(body))
    head = "%s %s HTTP/1.1\r\n" % (method, target) + "".join("%s: %s\r\n" % kv for kv in hdrs.items()) + "\r\n"
    s.sendall(head.encode() + (body or b""))
    rd = Reader(s)
    return rd.response(), rd


def tls_get(port, target="/", **kw):
    r, rd = tls_request(port, target, **kw)
    rd.sock.close()
    return r


def send_request(sock, target="/", host="localhost"):
    sock.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host)).encode())


def tls_recv_all(s, timeout=10):
    """Reads a TLS connection until the peer ends it (with or without a
    close_notify: this is not what the tests check)."""
    s.settimeout(deadline(timeout))
    data = b""
    while True:
        try:
            b = s.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError):
            return data
        if not b:
            return data
        data += b


def new_log(srv, mark):
    return srv.stderr()[mark:]


def kill(*servers):
    """Ends servers a failed setup left running (a clean stop is the test's)."""
    for srv in servers:
        if srv is not None and srv.proc is not None and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


class PyServer:
    """A small threaded server on 127.0.0.1 made with Python's ssl module.
    mode "http": TLS, then one HTTP answer, "python-ssl VERSION SNI";
    "hold": accepts and never says a word (a handshake that never ends);
    "starttls": a line protocol, `220 hello`, STARTTLS -> `220 go`, then
    TLS, PING -> `PONG VERSION SNI`."""

    def __init__(self, cert=None, mode="http", versions=None):
        self.mode = mode
        self.names = []
        self.ctx = None
        if cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert.cert, cert.key)
            ctx.sni_callback = self._sni
            if versions:  # a permissive control server (old protocols)
                ctx.set_ciphers("DEFAULT@SECLEVEL=0")
                ctx.minimum_version, ctx.maximum_version = versions
            self.ctx = ctx
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.held = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _sni(self, sslsock, name, ctx):
        self.names.append(name)
        sslsock.sni_name = name

    def _accept(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.mode == "hold":
                self.held.append(c)
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _line(s):
        data = b""
        while not data.endswith(b"\n") and len(data) < 4096:
            b = s.recv(1)
            if not b:
                break
            data += b
        return data.decode(errors="replace").strip()

    def _serve(self, c):
        s = None
        try:
            c.settimeout(deadline(10))
            if self.mode == "starttls":
                c.sendall(b"220 hello\n")
                if self._line(c) != "STARTTLS":
                    c.sendall(b"500 what\n")
                    return
                c.sendall(b"220 go\n")
            s = self.ctx.wrap_socket(c, server_side=True)
            sni = getattr(s, "sni_name", None)
            if self.mode == "starttls":
                if self._line(s) == "PING":
                    s.sendall(("PONG %s %s\n" % (s.version(), sni)).encode())
                return
            head = b""
            while b"\r\n\r\n" not in head:
                b = s.recv(65536)
                if not b:
                    return
                head += b
            body = ("python-ssl %s %s" % (s.version(), sni)).encode()
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        except (OSError, ValueError):
            pass  # a client that gave up or refused us: what the tests want
        finally:
            if s is not None:
                s.close()
            c.close()

    def close(self):
        self.stopping.set()
        self.sock.close()
        self.thread.join(deadline(5))
        for c in self.held:
            c.close()


class PkiTestCase(TestCase):
    """A test class with its own throwaway CA and certificates."""

    @classmethod
    def setUpClass(cls):
        cls.pki = Pki()

    @classmethod
    def tearDownClass(cls):
        cls.pki.close()


class ServeTest(PkiTestCase):
    """One server with a plain and a TLS listener, two certificates."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        p = cls.pki
        cls.server = Server(INFO_APP, args=["--tls-port", "0", "--header-timeout", "2",
                                            "--tls-cert", p.localhost.cert, "--tls-key", p.localhost.key,
                                            "--tls-cert", p.other.cert, "--tls-key", p.other.key]).start()
        cls.port = cls.server.port
        cls.tls_port = cls.server.tls_port

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        super().tearDownClass()
        assert code == 0, "exit %d: %s" % (code, cls.server.stderr()[-3000:])

    def curl_tls(self, path="/", name="localhost", *args):
        url = "https://%s:%d%s" % (name, self.tls_port, path)
        return curl("--cacert", self.pki.ca, "--resolve", "%s:%d:127.0.0.1" % (name, self.tls_port), *args, url)

    def test_listening_lines_name_both_listeners(self):
        out = self.server.stdout()
        self.assertIn("listening on http://127.0.0.1:%d\n" % self.port, out)
        self.assertIn("listening on https://127.0.0.1:%d\n" % self.tls_port, out)
        self.assertNotEqual(self.port, self.tls_port)
        self.assertNotIn(0, (self.port, self.tls_port))

    def test_curl_over_both_listeners(self):
        r = self.curl_tls("/")
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, b"hello https", b""))
        r = curl("--cacert", self.pki.ca, "https://127.0.0.1:%d/" % self.tls_port)  # the IP address SAN
        self.assertEqual((r.returncode, r.stdout), (0, b"hello https"), r.stderr)
        r = curl("http://127.0.0.1:%d/" % self.port)
        self.assertEqual((r.returncode, r.stdout), (0, b"hello http"), r.stderr)

    def test_python_ssl_keepalive_and_tls13_by_default(self):
        r, rd = tls_request(self.tls_port, "/", ca=self.pki.ca)
        with rd.sock:
            self.assertEqual((r.status, r.body), (200, b"hello https"))
            self.assertEqual(rd.sock.version(), "TLSv1.3")
            for _ in range(3):  # the same connection serves on
                send_request(rd.sock, "/tls")
                r = rd.response()
                self.assertEqual(r.status, 200)
                self.assertTrue(r.body.startswith(b"scheme=https version=TLSv1.3 "), r.body)

    def test_tls12_is_served(self):
        r, rd = tls_request(self.tls_port, "/", ca=self.pki.ca, version=ssl.TLSVersion.TLSv1_2)
        with rd.sock:
            self.assertEqual(rd.sock.version(), "TLSv1.2")
            self.assertEqual((r.status, r.body), (200, b"hello https"))

    def test_python_requests(self):
        script = textwrap.dedent('''
            import sys, requests
            with requests.Session() as s:
                for _ in range(2):
                    r = s.get(sys.argv[1], verify=sys.argv[2], timeout=30)
                    print(r.status_code, r.text)
        ''')
        r = subprocess.run([SYSTEM_PYTHON, "-c", script, "https://localhost:%d/tls" % self.tls_port, self.pki.ca],
                           capture_output=True, text=True, timeout=deadline(60))
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 2, r.stdout)
        for line in lines:
            self.assertRegex(line, r"^200 scheme=https version=TLSv1\.3 cipher=\S+ server_name=localhost$")

    def test_sni_picks_the_certificate_and_the_first_is_the_default(self):
        p = self.pki
        self.assertEqual(peer_der(self.tls_port, "other.test"), p.other.der())
        self.assertEqual(peer_der(self.tls_port, "localhost"), p.localhost.der())
        self.assertEqual(peer_der(self.tls_port, None), p.localhost.der(), "no SNI: the first pair")
        self.assertEqual(peer_der(self.tls_port, "unknown.test"), p.localhost.der(), "unknown name: the first")
        code, out = s_client(self.tls_port, "-servername", "other.test", "-CAfile", p.ca,
                             "-verify_hostname", "other.test")
        self.assertEqual(code, 0, out)
        self.assertRegex(out, r"subject=CN ?= ?other\.test")
        self.assertIn("Verify return code: 0 (ok)", out)
        r = self.curl_tls("/tls", "other.test")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout.decode(), r"^scheme=https version=TLSv1\.3 cipher=\S+ server_name=other\.test$")

    def test_tls10_and_tls11_are_refused(self):
        # The client is able: a permissive Python server speaks both to it.
        weak = ["-cipher", "DEFAULT@SECLEVEL=0"]
        control = PyServer(self.pki.localhost, versions=(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1))
        try:
            for flag, name in (("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")):
                code, out = s_client(control.port, flag, *weak)
                self.assertEqual(code, 0, out)
                self.assertEqual(negotiated(out), name, out)
        finally:
            control.close()
        for flag in ("-tls1", "-tls1_1"):
            code, out = s_client(self.tls_port, flag, *weak, "-servername", "localhost")
            self.assertNotEqual(code, 0, out)
            self.assertNotRegex(out, r"Cipher is (?!\(NONE\))")
        for flag, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            code, out = s_client(self.tls_port, flag, "-servername", "localhost", "-CAfile", self.pki.ca)
            self.assertEqual(code, 0, out)
            self.assertEqual(negotiated(out), name, out)
            self.assertIn("Verify return code: 0 (ok)", out)
        # The server still serves.
        self.assertEqual(tls_get(self.tls_port, ca=self.pki.ca).body, b"hello https")

    def test_alpn_gives_http11(self):
        code, out = s_client(self.tls_port, "-alpn", "h2,http/1.1", "-servername", "localhost")
        self.assertEqual(code, 0, out)
        self.assertIn("ALPN protocol: http/1.1", out)
        r, rd = tls_request(self.tls_port, "/", ca=self.pki.ca, alpn=["h2", "http/1.1"])
        with rd.sock:
            self.assertEqual(rd.sock.selected_alpn_protocol(), "http/1.1")
            self.assertEqual((r.version, r.status, r.body), ("HTTP/1.1", 200, b"hello https"))
        r = self.curl_tls("/", "localhost", "--http2", "-w", " %{http_version}")
        self.assertEqual((r.returncode, r.stdout), (0, b"hello https 1.1"), r.stderr)

    def assert_resumes(self, *version):
        sess = os.path.join(self.pki.dir, "session-%s" % "-".join(version or ("default",)))
        req = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        # -ign_eof: wait for the answer (and the tickets that come with it).
        common = ["-servername", "localhost", "-CAfile", self.pki.ca, "-ign_eof"] + list(version)
        code, out = s_client(self.tls_port, *common, "-sess_out", sess, input=req)
        self.assertEqual(code, 0, out)
        self.assertIn("hello https", out)
        self.assertRegex(out, r"\nNew, TLSv1\.[23]")
        self.assertIn("TLS session ticket:", out, "no session ticket was issued")
        code, out = s_client(self.tls_port, *common, "-sess_in", sess, input=req)
        self.assertEqual(code, 0, out)
        self.assertRegex(out, r"\nReused, TLSv1\.[23]")
        self.assertIn("hello https", out)

    def test_session_resumption_tls13(self):
        self.assert_resumes()

    def test_session_resumption_tls12(self):
        self.assert_resumes("-tls1_2")

    def test_plain_http_to_the_tls_port_gets_400_and_close(self):
        with connect(self.tls_port) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            rd = Reader(s)
            r = rd.response()
            self.assertEqual(r.status, 400)
            self.assertRegex(r.version, r"^HTTP/1\.[01]$")
            text = r.body.decode().rstrip("\r\n")
            self.assertTrue(text, "no explanation")
            self.assertNotIn("\n", text, "more than one line")
            self.assertRegex(text, r"(?i)tls|https|ssl")
            self.assertTrue(rd.closed(), "the connection stays open")
        self.assertEqual(tls_get(self.tls_port, ca=self.pki.ca).body, b"hello https")

    def test_req_scheme_and_req_tls(self):
        self.assertEqual(get(self.port, "/tls").body, b"scheme=http tls=nil")
        for version, name in ((ssl.TLSVersion.TLSv1_3, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")):
            r, rd = tls_request(self.tls_port, "/tls", ca=self.pki.ca, version=version)
            with rd.sock:
                cipher = rd.sock.cipher()[0]  # OpenSSL's name
                self.assertEqual(r.body.decode(), "scheme=https version=%s cipher=%s server_name=localhost"
                                 % (name, cipher))
        # By address: no SNI, so no server_name.
        r, rd = tls_request(self.tls_port, "/tls", server_name="127.0.0.1", ca=self.pki.ca)
        with rd.sock:
            self.assertEqual(r.body.decode(), "scheme=https version=TLSv1.3 cipher=%s server_name=nil"
                             % rd.sock.cipher()[0])
        r = tls_get(self.tls_port, "/tls", server_name="other.test", ca=self.pki.ca)
        self.assertRegex(r.body.decode(), r"^scheme=https version=TLSv1\.3 cipher=\S+ server_name=other\.test$")

    def test_large_bodies_both_ways(self):
        n = 4 << 20
        r = self.curl_tls("/big?n=%d" % n)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout), n)
        self.assertEqual(r.stdout, b"0123456789abcdef" * (n // 16))
        body = os.urandom(300000).hex().encode()[:600000]
        r, rd = tls_request(self.tls_port, "/echo", ca=self.pki.ca, method="POST", body=body)
        with rd.sock:
            self.assertEqual((r.status, len(r.body)), (200, len(body)))
            self.assertEqual(r.body, body)

    def test_handshake_failures_are_logged_at_info(self):
        mark = len(self.server.stderr())
        bad = 0
        for _ in range(3):
            # An old protocol.
            code, out = s_client(self.tls_port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
            self.assertNotEqual(code, 0, out)
            # A client that does not trust the certificate (it sends an alert).
            with self.assertRaises(ssl.SSLError):
                tls_connect(self.tls_port, "localhost", ca=self.pki.selfsigned.cert).close()
            # Garbage where a ClientHello belongs.
            with connect(self.tls_port) as s:
                s.sendall(b"\x16\x03\x01\x00\x20" + b"\xff" * 32)
                recv_until_close(s)
            bad += 3
        self.assertTrue(poll(lambda: INFO_LINE.search(new_log(self.server, mark)), 5),
                        "no info line for %d failed handshakes:\n%s" % (bad, new_log(self.server, mark)))
        self.assertEqual(tls_get(self.tls_port, ca=self.pki.ca).body, b"hello https")
        time.sleep(0.3)
        self.assertEqual(ERROR_LINE.findall(new_log(self.server, mark)), [], new_log(self.server, mark))

    def assert_closed_within_header_timeout(self, s, sender=None):
        start = time.monotonic()
        end = start + deadline(2) + 3
        s.settimeout(0.25)
        closed = False
        while not closed and time.monotonic() < end:
            if sender:
                try:
                    sender(s)
                except OSError:
                    closed = True
                    break
            try:
                closed = s.recv(4096) == b""
            except socket.timeout:
                pass
            except OSError:
                closed = True
        took = time.monotonic() - start
        self.assertTrue(closed, "still open after %.1f s (--header-timeout 2)" % took)
        self.assertGreater(took, 1.5, "closed long before the timeout")

    def test_silent_client_is_closed_within_header_timeout(self):
        with connect(self.tls_port) as s:
            self.assert_closed_within_header_timeout(s)

    def test_half_a_client_hello_is_closed_within_header_timeout(self):
        with connect(self.tls_port) as s:
            # A handshake record announcing 512 bytes, and only 7 of them.
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00")
            self.assert_closed_within_header_timeout(s)

    def test_trickled_client_hello_is_closed_within_header_timeout(self):
        with connect(self.tls_port) as s:
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            self.assert_closed_within_header_timeout(s, sender=lambda sock: sock.sendall(b"\x00"))


class TlsOnlyTest(PkiTestCase):
    def test_tls_cert_without_tls_port_makes_the_port_speak_tls(self):
        p = self.pki
        with Server(INFO_APP, args=["--tls-cert", p.localhost.cert, "--tls-key", p.localhost.key]) as srv:
            self.assertRegex(srv.stdout(), r"^listening on https://127\.0\.0\.1:%d\n" % srv.tls_port)
            self.assertNotIn("listening on http://", srv.stdout())
            r = curl("--cacert", p.ca, "https://127.0.0.1:%d/" % srv.tls_port)
            self.assertEqual((r.returncode, r.stdout), (0, b"hello https"), r.stderr)
            with connect(srv.tls_port) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                self.assertEqual(Reader(s).response().status, 400)


class WssTest(PkiTestCase):
    """WebSockets over TLS: the server's TLS port upgrades as the plain one
    does; tendril's client speaks wss:// (verifying), as does Python's
    websockets."""

    APP = """
        local websocket = require "tendril.websocket"
        return function(req, res)
            if req.path == "/client" then
                local ws, err = websocket.connect("wss://localhost:" .. req.query.port .. "/ws",
                    { ca_file = req.query.ca, compress = true })
                if not ws then return "connect: " .. tostring(err) end
                local big = string.rep("over tls ", 20000)
                local out = {}
                for _, m in ipairs({ "hello", big }) do
                    ws:send(m)
                    local got = ws:recv(10)
                    out[#out + 1] = tostring(got == m)
                end
                out[#out + 1] = tostring(ws:close())
                return table.concat(out, " ")
            elseif req.path == "/untrusted" then
                local ws, err = websocket.connect("wss://localhost:" .. req.query.port .. "/ws")
                return tostring(ws) .. " " .. tostring(err)
            end
            local ws = websocket.upgrade(req, res, { compress = true })
            if not ws then return end
            while true do
                local data, kind = ws:recv()
                if not data then return end
                ws:send(req.scheme .. ":" .. data, kind)
            end
        end
    """

    def test_wss_both_ways(self):
        p = self.pki
        app = self.APP.replace('ws:send(req.scheme .. ":" .. data, kind)', "ws:send(data, kind)")
        with Server(app, args=["--tls-port", "0", "--tls-cert", p.localhost.cert, "--tls-key", p.localhost.key]) as srv:
            r = get(srv.port, "/client?port=%d&ca=%s" % (srv.tls_port, p.ca))
            self.assertEqual(r.body, b"true true true")
            r = get(srv.port, "/untrusted?port=%d" % srv.tls_port)
            self.assertRegex(r.body.decode(), r"^nil tls: certificate verify failed")

    def test_python_websockets_over_tls(self):
        p = self.pki
        with Server(self.APP, args=["--tls-port", "0", "--tls-cert", p.localhost.cert,
                                     "--tls-key", p.localhost.key]) as srv:
            script = textwrap.dedent('''
                import asyncio, ssl, sys, websockets
                async def main():
                    ctx = ssl.create_default_context(cafile=sys.argv[2])
                    async with websockets.connect(sys.argv[1], ssl=ctx, max_size=None) as ws:
                        for m in ["hi", "x" * 300000]:
                            await ws.send(m)
                            r = await ws.recv()
                            print(len(r), r == "https:" + m)
                asyncio.run(main())
            ''')
            r = subprocess.run([SYSTEM_PYTHON, "-c", script, "wss://localhost:%d/ws" % srv.tls_port, p.ca],
                               capture_output=True, text=True, timeout=deadline(60))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout.split(), ["8", "True", "300006", "True"])


class StartFailureTest(PkiTestCase):
    def serve(self, *tls_args):
        d = tempfile.mkdtemp(prefix="tendril-tls-start-")
        app = os.path.join(d, "app.lua")
        with open(app, "w") as f:
            f.write(INFO_APP)
        return subprocess.run([BIN, "serve", app, "--port", "0"] + list(tls_args), capture_output=True,
                              text=True, timeout=deadline(20))

    def assert_one_line(self, r, *must_name, pattern=None):
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertNotIn("listening", r.stdout)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertTrue(any(name in lines[0] for name in must_name), "%r names none of %s" % (lines[0], must_name))
        if pattern:
            self.assertRegex(lines[0], pattern)

    def test_missing_certificate(self):
        missing = os.path.join(self.pki.dir, "no-such.crt")
        r = self.serve("--tls-cert", missing, "--tls-key", self.pki.localhost.key)
        self.assert_one_line(r, missing)

    def test_missing_key(self):
        missing = os.path.join(self.pki.dir, "no-such.key")
        r = self.serve("--tls-cert", self.pki.localhost.cert, "--tls-key", missing)
        self.assert_one_line(r, missing)

    def test_unreadable_certificate_and_key(self):
        garbage = os.path.join(self.pki.dir, "garbage.pem")
        with open(garbage, "w") as f:
            f.write("this is not PEM\n")
        r = self.serve("--tls-cert", garbage, "--tls-key", self.pki.localhost.key)
        self.assert_one_line(r, garbage)
        r = self.serve("--tls-cert", self.pki.localhost.cert, "--tls-key", garbage)
        self.assert_one_line(r, garbage)
        r = self.serve("--tls-cert", self.pki.dir, "--tls-key", self.pki.localhost.key)  # a directory
        self.assert_one_line(r, self.pki.dir, pattern="directory")

    def test_encrypted_key(self):
        # OpenSSL would ask for the passphrase on the terminal (and block
        # the loop at a reload): refused with one line instead.
        enc = os.path.join(self.pki.dir, "encrypted.key")
        must(openssl("pkey", "-in", self.pki.localhost.key, "-aes256", "-passout", "pass:secret", "-out", enc))
        r = self.serve("--tls-cert", self.pki.localhost.cert, "--tls-key", enc)
        self.assert_one_line(r, enc, pattern="encrypted")

    def test_key_that_does_not_match(self):
        p = self.pki
        r = self.serve("--tls-cert", p.localhost.cert, "--tls-key", p.other.key)
        self.assert_one_line(r, p.localhost.cert, p.other.key, pattern=r"(?i)match")
        # In a second pair too.
        r = self.serve("--tls-port", "0", "--tls-cert", p.localhost.cert, "--tls-key", p.localhost.key,
                       "--tls-cert", p.other.cert, "--tls-key", p.localhost.key)
        self.assert_one_line(r, p.other.cert, p.localhost.key, pattern=r"(?i)match")


class RenewalTest(PkiTestCase):
    """Certificates replaced on disk are reread by a reload."""

    def setUp(self):
        self.srv = Server(INFO_APP, args=["--tls-port", "0", "--keepalive-timeout", "60"])
        self.cert = os.path.join(self.srv.dir, "server.crt")
        self.key = os.path.join(self.srv.dir, "server.key")
        self.pki.localhost.install(self.cert, self.key)
        self.srv.args += ["--tls-cert", self.cert, "--tls-key", self.key]
        self.srv.start()
        self.addCleanup(kill, self.srv)
        self.assertEqual(peer_serial(self.srv.tls_port, "localhost"), self.pki.localhost.serial)

    def tearDown(self):
        self.assertEqual(self.srv.stop(), 0, self.srv.stderr()[-3000:])

    def open_connection(self):
        r, rd = tls_request(self.srv.tls_port, "/", ca=self.pki.ca)
        self.assertEqual(r.body, b"hello https")
        return rd

    def assert_still_works(self, rd):
        for _ in range(2):
            send_request(rd.sock)
            r = rd.response()
            self.assertEqual((r.status, r.body), (200, b"hello https"))

    def assert_serial(self, serial):
        self.assertEqual(peer_serial(self.srv.tls_port, "localhost"), serial)

    def new_serial_seen(self, serial):
        return poll(lambda: peer_serial(self.srv.tls_port, "localhost") == serial, 5, interval=0.05)

    def test_sighup_serves_a_renewed_certificate_and_open_connections_go_on(self):
        rd = self.open_connection()
        with rd.sock:
            renewed = self.pki.issue("localhost", LOCAL_SANS, tag="renewed")
            renewed.install(self.cert, self.key)
            self.srv.signal(signal.SIGHUP)
            self.assertTrue(self.new_serial_seen(renewed.serial), "the renewed certificate is not served")
            self.assert_still_works(rd)
        # It verifies, and the plain listener did not notice.
        self.assertEqual(tls_get(self.srv.tls_port, ca=self.pki.ca).body, b"hello https")
        self.assertEqual(get(self.srv.port, "/").body, b"hello http")

    def test_an_app_edit_rereads_the_certificates(self):
        renewed = self.pki.issue("localhost", LOCAL_SANS, tag="renewed")
        renewed.install(self.cert, self.key)
        with open(self.srv.app_path, "w") as f:
            f.write(INFO_APP.replace('"hello "', '"edited "'))
        self.assertTrue(poll(lambda: get(self.srv.port, "/").body == b"edited http", 5), self.srv.stderr())
        self.assertTrue(self.new_serial_seen(renewed.serial), "the reload kept the old certificate")

    def test_a_bad_renewal_keeps_the_old_certificate_and_logs_why(self):
        rd = self.open_connection()
        with rd.sock:
            old = self.pki.localhost.serial
            garbage = os.path.join(self.pki.dir, "garbage.crt")
            with open(garbage, "w") as f:
                f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
            renewed = self.pki.issue("localhost", LOCAL_SANS, tag="renewed")
            mismatched = self.pki.issue("localhost", LOCAL_SANS, tag="mismatched")
            for cert, key in ((garbage, self.pki.localhost.key), (renewed.cert, mismatched.key)):
                mark = len(self.srv.stderr())
                for src, dst in ((key, self.key), (cert, self.cert)):
                    with open(src, "rb") as a, open(dst + ".new", "wb") as b:
                        b.write(a.read())
                    os.rename(dst + ".new", dst)
                self.srv.signal(signal.SIGHUP)
                self.assertTrue(poll(lambda: re.search(r"\[(warn|error|crit)\] .*(?i:cert|key|tls)",
                                                       new_log(self.srv, mark)), 5),
                                "nothing logged about the bad certificate:\n" + new_log(self.srv, mark))
                for _ in range(3):
                    self.assert_serial(old)
                self.assertEqual(tls_get(self.srv.tls_port, ca=self.pki.ca).body, b"hello https")
                self.assert_still_works(rd)
            # A good renewal after the bad ones is taken.
            renewed.install(self.cert, self.key)
            self.srv.signal(signal.SIGHUP)
            self.assertTrue(self.new_serial_seen(renewed.serial))
            self.assert_still_works(rd)


# The client side: tendril.http and tendril.tcp in handlers.
CLIENT_APP = r'''
local tendril = require "tendril"
local http = require "tendril.http"
local tcp = require "tendril.tcp"
local CA, UP = os.getenv("CA"), os.getenv("UP")

local echo_port = assert(tcp.listen("127.0.0.1", 0, function(sock)
    local line = sock:receive("*l")
    if line then sock:send("tls echo: " .. line .. "\n") end
end, { tls = { cert = os.getenv("CERT"), key = os.getenv("KEY") } }))

local function show(res, err)
    if not res then return "nil " .. tostring(err) end
    return res.status .. " " .. tostring(res.body)
end

local function opts(q)
    local o = {}
    if q.ca == "1" then o.ca_file = CA end
    if q.verify == "0" then o.verify = false end
    if q.t then o.timeout = tonumber(q.t) end
    if q.max then o.max_redirects = tonumber(q.max) end
    if q.cafile then o.ca_file = q.cafile end
    if q.alpn then o.alpn = q.alpn end
    return o
end

local routes = {}
function routes.get(req)
    return show(http.get(req.query.url, opts(req.query)))
end
function routes.tcp(req)
    local q = req.query
    local o = opts(q)
    o.tls, o.server_name = true, q.sn
    local s, err = tcp.connect(q.host or "127.0.0.1", tonumber(q.port), o)
    if not s then return "nil " .. tostring(err) end
    assert(s:send("GET /tls HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    local all, _, partial = s:receive("*a")
    s:close()
    return tostring((all or partial):match("\r\n\r\n(.*)$"))
end
function routes.echo_port() return tostring(echo_port) end
function routes.tcp_echo()
    local s, err = tcp.connect("127.0.0.1", echo_port, { tls = true, server_name = "localhost", ca_file = CA })
    if not s then return "nil " .. tostring(err) end
    s:send("hello\n")
    local line, rerr = s:receive("*l")
    s:close()
    return line or ("nil " .. tostring(rerr))
end
function routes.starttls(req)
    local q = req.query
    local s = assert(tcp.connect("127.0.0.1", tonumber(q.port), { timeout = tonumber(q.t) }))
    local l1 = s:receive("*l")
    s:send("STARTTLS\n")
    local l2 = s:receive("*l")
    local o = opts(q)
    o.server_name = q.sn
    o.timeout = nil
    local ok, err = s:starttls(o)
    if not ok then
        s:close()
        return table.concat({ tostring(l1), tostring(l2), tostring(ok), tostring(err) }, "|")
    end
    s:send("PING\n")
    local l3, rerr = s:receive("*l")
    s:close()
    return table.concat({ tostring(l1), tostring(l2), tostring(ok), tostring(l3 or rerr) }, "|")
end
function routes.burst(req)
    return show(http.get(UP .. "/slow?s=" .. req.query.s, { ca_file = CA }))
end
function routes.fanout(req)
    -- n GETs at once from one handler, each in its own thread
    local n, threads, counts, out = tonumber(req.query.n), {}, {}, {}
    for i = 1, n do
        threads[i] = tendril.spawn(function()
            local res, err = http.get(UP .. "/slow?s=" .. req.query.s, { ca_file = CA })
            return res and (res.status .. " " .. res.body) or err
        end)
    end
    for i = 1, n do
        local ok, v = threads[i]:join()
        local k = ok and tostring(v) or ("raised " .. tostring(v))
        counts[k] = (counts[k] or 0) + 1
    end
    for k, c in pairs(counts) do out[#out + 1] = c .. " x " .. k end
    table.sort(out)
    return table.concat(out, ", ")
end

return function(req)
    local route = routes[req.path:sub(2)]
    if not route then return 404, nil, "no route" end
    return route(req)
end
'''


TCP_TLS_APP = r'''
local tcp = require "tendril.tcp"
-- The result is not asserted: a reload whose certificate is bad must
-- leave the listener serving with the old one.
local port, err = tcp.listen("127.0.0.1", tonumber(os.getenv("TCP_PORT")), function(sock)
    sock:send("echo " .. tostring(sock:receive()) .. "\n")
end, { tls = { cert = os.getenv("CERT"), key = os.getenv("KEY") } })
if not port then
    io.stderr:write("tcp.listen: ", err, "\n")
end
return function() return "ok" end
'''


class TcpListenRenewalTest(PkiTestCase):
    def test_a_bad_certificate_at_reload_keeps_the_listener_and_the_old_one(self):
        p = self.pki
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            tcp_port = probe.getsockname()[1]
        srv = Server(TCP_TLS_APP)
        cert, key = os.path.join(srv.dir, "s.crt"), os.path.join(srv.dir, "s.key")
        p.localhost.install(cert, key)
        srv.env = dict(srv.env or {}, TCP_PORT=str(tcp_port), CERT=cert, KEY=key)
        srv.start()
        self.addCleanup(kill, srv)

        def echo():
            with tls_connect(tcp_port, ca=p.ca) as s:
                s.sendall(b"hi\n")
                return s.recv(100)

        self.assertEqual(echo(), b"echo hi\n")
        with open(key, "w") as f, open(p.other.key) as other:
            f.write(other.read())  # the wrong key for the certificate
        srv.proc.send_signal(signal.SIGHUP)
        self.assertTrue(poll(lambda: "does not match" in srv.stderr(), 5), srv.stderr()[-2000:])
        self.assertEqual(echo(), b"echo hi\n")
        self.assertEqual(peer_serial(tcp_port, "localhost"), p.localhost.serial)
        self.assertEqual(srv.stop(), 0, srv.stderr()[-3000:])


class ClientTest(PkiTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        p = cls.pki
        cls.py_ok = PyServer(p.localhost)
        cls.py_self = PyServer(p.selfsigned)
        cls.py_wrong = PyServer(p.client)    # valid, for client.test
        cls.py_other = PyServer(p.other)     # valid, for other.test, no IP
        cls.py_starttls = PyServer(p.localhost, mode="starttls")
        cls.py_starttls_self = PyServer(p.selfsigned, mode="starttls")
        cls.up = Server(INFO_APP, args=["--tls-port", "0", "--tls-cert", p.localhost.cert,
                                        "--tls-key", p.localhost.key])
        cls.server = None
        try:
            cls.up.start()
            cls.server = Server(CLIENT_APP, env={"CA": p.ca, "CERT": p.localhost.cert, "KEY": p.localhost.key,
                                                 "UP": "https://localhost:%d" % cls.up.tls_port}).start()
        except BaseException:
            kill(cls.up)
            cls.close_python_servers()
            raise
        cls.port = cls.server.port

    @classmethod
    def close_python_servers(cls):
        for s in (cls.py_ok, cls.py_self, cls.py_wrong, cls.py_other, cls.py_starttls, cls.py_starttls_self):
            s.close()

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        up_code = cls.up.stop()
        cls.close_python_servers()
        super().tearDownClass()
        assert code == 0, "exit %d: %s" % (code, cls.server.stderr()[-3000:])
        assert up_code == 0, "upstream exit %d: %s" % (up_code, cls.up.stderr()[-3000:])

    def body(self, target, timeout=30):
        return get(self.port, target, timeout=timeout).body.decode()

    def fetch(self, url, **q):
        return self.body("/get?url=" + quote(url, safe="") + "".join("&%s=%s" % kv for kv in q.items()))

    def test_get_from_a_tendril_tls_server(self):
        t = self.up.tls_port
        self.assertRegex(self.fetch("https://localhost:%d/tls" % t, ca=1),
                         r"^200 scheme=https version=TLSv1\.3 cipher=\S+ server_name=localhost$")
        # By address: the IP address SAN is checked.
        self.assertRegex(self.fetch("https://127.0.0.1:%d/tls" % t, ca=1), r"^200 scheme=https version=TLSv1\.3 ")

    def test_no_sni_for_an_ip_address(self):
        # RFC 6066: a literal address is not a HostName.
        self.assertRegex(self.fetch("https://127.0.0.1:%d/tls" % self.up.tls_port, ca=1),
                         r"^200 scheme=https .* server_name=nil$")
        self.assertEqual(self.fetch("https://127.0.0.1:%d/" % self.py_ok.port, ca=1),
                         "200 python-ssl TLSv1.3 None")

    def test_get_from_a_python_ssl_server_sends_sni(self):
        before = len(self.py_ok.names)
        self.assertEqual(self.fetch("https://localhost:%d/" % self.py_ok.port, ca=1),
                         "200 python-ssl TLSv1.3 localhost")
        self.assertEqual(self.py_ok.names[before:], ["localhost"])

    def test_system_store_does_not_know_the_test_ca(self):
        self.assertEqual(self.fetch("https://localhost:%d/" % self.py_ok.port),
                         "nil tls: certificate verify failed: unable to get local issuer certificate")

    def test_self_signed_is_refused(self):
        url = "https://localhost:%d/" % self.py_self.port
        self.assertEqual(self.fetch(url, ca=1), "nil tls: certificate verify failed: self-signed certificate")
        self.assertEqual(self.fetch(url), "nil tls: certificate verify failed: self-signed certificate")

    def test_host_name_mismatch(self):
        self.assertEqual(self.fetch("https://localhost:%d/" % self.py_wrong.port, ca=1),
                         "nil tls: host name mismatch")
        # An address that is not among the certificate's names.
        self.assertEqual(self.fetch("https://127.0.0.1:%d/" % self.py_other.port, ca=1),
                         "nil tls: host name mismatch")

    def test_https_to_a_plain_port_says_so(self):
        self.assertEqual(self.fetch("https://127.0.0.1:%d/" % self.up.port, ca=1),
                         "nil tls: wrong version number (the server does not seem to speak TLS)")

    def test_an_empty_server_name_is_misuse(self):
        # An empty name would verify the chain and no name at all.
        r = get(self.port, "/tcp?port=%d&sn=&ca=1" % self.up.tls_port, timeout=30)
        self.assertEqual(r.status, 500)
        self.assertTrue(poll(lambda: 'tcp.connect: server_name must be a host name, got ""' in self.server.stderr(),
                             deadline(5)), self.server.stderr()[-2000:])

    def test_verify_false_opts_out(self):
        self.assertEqual(self.fetch("https://localhost:%d/" % self.py_self.port, verify=0),
                         "200 python-ssl TLSv1.3 localhost")
        self.assertEqual(self.fetch("https://localhost:%d/" % self.py_wrong.port, verify=0),
                         "200 python-ssl TLSv1.3 localhost")

    def test_redirect_from_http_to_https(self):
        to = "https://localhost:%d/tls" % self.up.tls_port
        url = "http://127.0.0.1:%d/redirect?to=%s" % (self.up.port, quote(to, safe=""))
        self.assertRegex(self.fetch(url, ca=1, max=1), r"^200 scheme=https version=TLSv1\.3 .*server_name=localhost$")
        self.assertEqual(self.fetch(url, ca=1), "302 ", "redirects stay opt-in")

    def test_tcp_connect_with_tls(self):
        t = self.up.tls_port
        self.assertRegex(self.body("/tcp?port=%d&sn=localhost&ca=1" % t),
                         r"^scheme=https version=TLSv1\.3 cipher=\S+ server_name=localhost$")
        # server_name is the name sent and verified.
        self.assertRegex(self.body("/tcp?port=%d&sn=other.test&verify=0" % t), r" server_name=other\.test$")
        self.assertEqual(self.body("/tcp?port=%d&sn=other.test&ca=1" % self.py_other.port),
                         "python-ssl TLSv1.3 other.test")
        self.assertEqual(self.body("/tcp?port=%d&sn=localhost&ca=1" % self.py_self.port),
                         "nil tls: certificate verify failed: self-signed certificate")
        self.assertEqual(self.body("/tcp?port=%d&sn=localhost&ca=1" % self.py_wrong.port),
                         "nil tls: host name mismatch")
        # No server_name: the host is the name (here an address, in the SAN).
        self.assertRegex(self.body("/tcp?port=%d&ca=1" % t), r"^scheme=https version=TLSv1\.3 ")

    def test_tcp_listen_with_tls(self):
        self.assertEqual(self.body("/tcp_echo"), "tls echo: hello")
        port = int(self.body("/echo_port"))
        with tls_connect(port, "localhost", self.pki.ca) as s:
            self.assertEqual(s.version(), "TLSv1.3")
            s.sendall(b"from python\n")
            self.assertEqual(tls_recv_all(s), b"tls echo: from python\n")
        with connect(port) as s:  # in clear: no echo
            s.sendall(b"hello\n")
            try:
                got = recv_until_close(s)
            except OSError:
                got = b""
            self.assertNotIn(b"tls echo", got)

    def test_starttls(self):
        p = self.py_starttls.port
        self.assertEqual(self.body("/starttls?port=%d&sn=localhost&ca=1" % p),
                         "220 hello|220 go|true|PONG TLSv1.3 localhost")
        self.assertEqual(self.body("/starttls?port=%d&sn=other.test&ca=1" % p),
                         "220 hello|220 go|nil|tls: host name mismatch")
        s = self.py_starttls_self.port
        self.assertEqual(self.body("/starttls?port=%d&sn=localhost&ca=1" % s),
                         "220 hello|220 go|nil|tls: certificate verify failed: self-signed certificate")
        self.assertEqual(self.body("/starttls?port=%d&sn=localhost&verify=0" % s),
                         "220 hello|220 go|true|PONG TLSv1.3 localhost")

    # 1000 GETs at once (fewer under the sanitizers, where each is slower);
    # the upstream holds each answer a moment so that they overlap.
    BURST = 200 if SANITIZED else 1000

    def assert_descriptors_back(self, fds_before, up_fds_before):
        # The client pool keeps at most 64 idle connections (and the
        # upstream their other ends); everything else is closed.
        self.assertTrue(poll(lambda: self.server.open_fds() <= fds_before + 64, 10),
                        "%d fds before, %d after" % (fds_before, self.server.open_fds()))
        self.assertTrue(poll(lambda: self.up.open_fds() <= up_fds_before + 64, 10),
                        "upstream: %d fds before, %d after" % (up_fds_before, self.up.open_fds()))

    def test_concurrent_https_gets_from_one_handler_leave_no_descriptor(self):
        fds_before, up_fds_before = self.server.open_fds(), self.up.open_fds()
        n = self.BURST
        self.assertEqual(self.body("/fanout?n=%d&s=0.5" % n, timeout=120), "%d x 200 slept" % n)
        self.assert_descriptors_back(fds_before, up_fds_before)

    def test_concurrent_https_gets_one_per_request_leave_no_descriptor(self):
        fds_before, up_fds_before = self.server.open_fds(), self.up.open_fds()
        n = self.BURST
        results = burst(self.port, "/burst?s=0.3", n, timeout=120)
        failures = [r for r in results if r != b"200 slept"]
        self.assertEqual(failures[:5], [], "%d of %d failed" % (len(failures), n))
        self.assert_descriptors_back(fds_before, up_fds_before)


BIG_APP = r'''
local big = string.rep("0123456789abcdef", 1024 * 1024) -- 16 MiB
return function(req)
    return big
end
'''


class SlowReaderTest(PkiTestCase):
    """A large body to HTTPS clients that do not read yet: it is encrypted
    a slice at a time as each client reads, so memory does not grow by a
    copy of the body per client, and the loop never waits for a whole
    body's encryption."""

    def test_large_bodies_to_slow_readers(self):
        p = self.pki
        server = Server(BIG_APP, args=["--tls-port", "0", "--tls-cert", p.localhost.cert, "--tls-key",
                                       p.localhost.key, "--stall-warn-ms", str(int(100 * SLOW))]).start()
        self.addCleanup(kill, server)
        before = server.rss_kib()
        clients = []
        for _ in range(6):
            s = tls_connect(server.tls_port, ca=p.ca)
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            s.recv(1)  # the answer has started
            clients.append(s)
        time.sleep(1)
        grown = server.rss_kib() - before
        if not SANITIZED:
            # Whole copies would be 6 x 16 MiB (and as much again of ciphertext).
            self.assertLess(grown, 24 * 1024, "RSS grew by %d KiB" % grown)
        for s in clients:
            got = 1
            while True:
                data = s.recv(1 << 20)
                got += len(data)
                if not data or got >= 16 * 1024 * 1024 + 64:
                    break
            self.assertGreater(got, 16 * 1024 * 1024)
            s.close()
        self.assertEqual(server.stop(), 0, server.stderr()[-3000:])
        self.assertNotIn("stall: GET", server.stderr())


class TrustStoreTest(PkiTestCase):
    """The system's trust store takes tens of milliseconds to load: the
    first verifying calls wait for it on a worker thread, not on the loop,
    so the stall guard has nothing to say, and calls that come meanwhile
    share the one load."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.py_ok = PyServer(cls.pki.localhost)

    @classmethod
    def tearDownClass(cls):
        cls.py_ok.close()
        super().tearDownClass()

    def test_the_first_verifying_calls_do_not_stall_the_loop(self):
        p = self.pki
        server = Server(CLIENT_APP, args=["--stall-warn-ms", str(int(20 * SLOW))],
                        env={"CA": p.ca, "CERT": p.localhost.cert, "KEY": p.localhost.key,
                             "UP": "https://localhost:1"}).start()
        self.addCleanup(kill, server)
        url = "/get?url=" + quote("https://localhost:%d/" % self.py_ok.port, safe="")
        with ThreadPoolExecutor(5) as pool:
            bodies = list(pool.map(lambda _: get(server.port, url, timeout=30).body.decode(), range(5)))
        self.assertEqual(bodies, ["nil tls: certificate verify failed: unable to get local issuer certificate"] * 5)
        self.assertEqual(server.stop(), 0, server.stderr()[-3000:])
        # The requests' own: loading the app's top level may stall a
        # loaded machine's sanitizer build (81 ms once), which is not what
        # this asks.
        self.assertNotIn("stall: GET", server.stderr())


class ClientResumptionTest(PkiTestCase):
    """A new connection to a server the process spoke to resumes the last
    session (a ticket): openssl s_server -www reports it per connection,
    and closes each after its answer, so every GET is a new connection."""

    def s_server(self, *args):
        p = self.pki
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        s_server = subprocess.Popen([OPENSSL, "s_server", "-www", "-accept", str(port), "-cert", p.localhost.cert,
                                     "-key", p.localhost.key] + list(args),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(s_server.wait)
        self.addCleanup(s_server.kill)
        self.assertTrue(poll(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 5))
        server = Server(CLIENT_APP, env={"CA": p.ca, "CERT": p.localhost.cert, "KEY": p.localhost.key,
                                         "UP": "https://localhost:1"}).start()
        self.addCleanup(kill, server)
        return port, server

    def test_options_that_differ_never_share_a_session(self):
        # A session made without verifying must not serve a connection that
        # verifies, however its options are spelled (a key made by gluing
        # the fields with "|" once let these two meet).
        port, server = self.s_server()
        unverified = get(server.port, "/tcp?port=%d&sn=localhost&verify=0&cafile=1&alpn=%%7C" % port,
                         timeout=30).body.decode()
        self.assertIn("New, TLSv1.3", unverified)
        verified = get(server.port, "/tcp?port=%d&sn=localhost%%7C0" % port, timeout=30).body.decode()
        self.assertRegex(verified, r"^nil tls: ")
        self.assertEqual(server.stop(), 0, server.stderr()[-3000:])

    def fetch_three(self, *version):
        port, server = self.s_server(*version)
        url = "/get?url=" + quote("https://localhost:%d/" % port, safe="") + "&ca=1"
        pages = [get(server.port, url, timeout=30).body.decode() for _ in range(3)]
        self.assertEqual(server.stop(), 0, server.stderr()[-3000:])
        return [re.search(r"\n(New|Reused), (TLSv1\.[23])", page).groups() for page in pages]

    def test_tls13_tickets(self):
        self.assertEqual(self.fetch_three(), [("New", "TLSv1.3"), ("Reused", "TLSv1.3"), ("Reused", "TLSv1.3")])

    def test_tls12(self):
        self.assertEqual(self.fetch_three("-tls1_2"),
                         [("New", "TLSv1.2"), ("Reused", "TLSv1.2"), ("Reused", "TLSv1.2")])


class ClientTimeoutTest(PkiTestCase):
    """A server that accepts and never answers the handshake: the client's
    timeout ends the wait. (A tendril per test: these are the calls whose
    wait a timer ends in the middle of a handshake.)"""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.py_hold = PyServer(mode="hold")

    @classmethod
    def tearDownClass(cls):
        cls.py_hold.close()
        super().tearDownClass()

    def setUp(self):
        p = self.pki
        self.server = Server(CLIENT_APP, env={"CA": p.ca, "CERT": p.localhost.cert, "KEY": p.localhost.key,
                                              "UP": "https://localhost:1"}).start()
        self.addCleanup(kill, self.server)
        self.port = self.server.port

    def assert_alive(self):
        code = self.server.proc.poll()
        self.assertIsNone(code, "the server died (exit %s): %s" % (code, self.server.stderr()[-3000:]))

    def tearDown(self):
        # The server lives on, serves, and stops cleanly.
        self.assert_alive()
        self.assertEqual(get(self.port, "/echo_port").status, 200)
        self.assertEqual(self.server.stop(), 0, self.server.stderr()[-3000:])

    def body(self, target):
        try:
            return get(self.port, target, timeout=30).body.decode()
        except (OSError, EOFError):
            time.sleep(0.2)
            self.assert_alive()
            raise

    def test_http_get_handshake_timeout(self):
        url = quote("https://127.0.0.1:%d/" % self.py_hold.port, safe="")
        for _ in range(2):
            start = time.monotonic()
            self.assertEqual(self.body("/get?url=%s&ca=1&t=0.5" % url), "nil timeout")
            took = time.monotonic() - start
            self.assertLess(took, deadline(3))
            self.assertGreater(took, 0.45)

    def test_tcp_connect_tls_handshake_timeout(self):
        for _ in range(2):
            start = time.monotonic()
            self.assertEqual(self.body("/tcp?port=%d&sn=localhost&ca=1&t=0.5" % self.py_hold.port), "nil timeout")
            took = time.monotonic() - start
            self.assertLess(took, deadline(3))
            self.assertGreater(took, 0.45)


if __name__ == "__main__":
    main()
