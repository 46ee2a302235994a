"""Drives the real tendril binary for end-to-end tests.

TENDRIL_BIN names the binary (ctest sets it); TENDRIL_SANITIZED=1 marks a
sanitizer build, where every deadline is three times longer and stderr is
checked for sanitizer reports when the server stops.
"""
import os
import re
import select
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
import unittest
import warnings

BIN = os.environ.get("TENDRIL_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "tendril")
SANITIZED = os.environ.get("TENDRIL_SANITIZED") == "1"
SLOW = 3.0 if SANITIZED else 1.0

# `listening on http://HOST:PORT`, or https:// for a TLS listener.
LISTENING = re.compile(r"^listening on (https?)://.+:(\d+)$")

SANITIZER_REPORT = re.compile(
    r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: (Address|Undefined|Leak)")


def deadline(seconds):
    """A generous bound for a correctness check, longer under sanitizers."""
    return seconds * SLOW


def poll(check, timeout, interval=0.02):
    """Calls check() until it returns a true value or timeout passes."""
    end = time.monotonic() + deadline(timeout)
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            return value
        time.sleep(interval)


class Server:
    """One tendril process serving an app. Use as a context manager."""

    def __init__(self, app=None, app_path=None, args=(), env=None, files=None, cwd=None, leftovers_ok=False,
                 prefix=()):
        self.dir = tempfile.mkdtemp(prefix="tendril-e2e-")
        for name, text in (files or {}).items():
            path = os.path.join(self.dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(textwrap.dedent(text))
        if app is not None:
            app_path = os.path.join(self.dir, "app.lua")
            with open(app_path, "w") as f:
                f.write(textwrap.dedent(app))
        self.app_path = app_path
        self.args = list(args)
        self.prefix = list(prefix)  # runs the server under a command (prlimit ...)
        # Whether the test leaves work running at exit on purpose (a
        # shutdown that cuts requests off, a thread still sleeping).
        self.leftovers_ok = leftovers_ok
        self.env = dict(os.environ, **(env or {}))
        self.cwd = cwd
        self.proc = None
        self.port = None      # the plain HTTP listener's port
        self.tls_port = None  # the TLS listener's (--tls-cert), see start()
        self.exit_code = None
        self.stdout_path = os.path.join(self.dir, "stdout")
        self.stderr_path = os.path.join(self.dir, "stderr")

    def start(self):
        cmd = self.prefix + [BIN, "serve", self.app_path, "--port", "0"] + self.args
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=self.env, cwd=self.cwd)
        ports = poll(self._listening_ports, 10)
        if not ports:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not start: %s" % self.stderr())
        self.port = ports.get("http")
        self.tls_port = ports.get("https")
        return self

    def _expected_schemes(self):
        """The listeners the arguments ask for: with --tls-cert the --port
        listener speaks TLS, unless --tls-port gives TLS its own."""
        if "--tls-cert" not in self.args:
            return {"http"}
        return {"http", "https"} if "--tls-port" in self.args else {"https"}

    def _listening_ports(self):
        """{scheme: port} once every expected `listening on` line is out."""
        if self.proc.poll() is not None:
            raise AssertionError("server exited with %s: %s" % (self.proc.returncode, self.stderr()))
        ports = {}
        with open(self.stdout_path) as f:
            for line in f:
                m = LISTENING.match(line)
                if m and line.endswith("\n"):
                    ports.setdefault(m.group(1), int(m.group(2)))
        return ports if set(ports) >= self._expected_schemes() else None

    def stdout(self):
        with open(self.stdout_path, errors="replace") as f:
            return f.read()

    def stderr(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=15):
        self.exit_code = self.proc.wait(timeout=deadline(timeout))
        return self.exit_code

    def stop(self, timeout=15):
        """SIGTERM, wait, and check that nothing was reported by sanitizers
        and, after a clean drain, that nothing was left behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.wait(timeout)
        self.assert_clean()
        if code == 0 and not self.leftovers_ok:
            self.assert_nothing_left_at_exit()
        return code

    def assert_nothing_left_at_exit(self):
        """The server's last words: no wait still pending, every coroutine
        anchored exactly once, every libuv handle closed."""
        err = self.stderr()
        for line in err.splitlines():
            if "still pending were cancelled" in line or "teardown:" in line:
                raise AssertionError("left behind at exit: " + line)

    def assert_clean(self):
        err = self.stderr()
        m = SANITIZER_REPORT.search(err)
        if m:
            raise AssertionError("sanitizer report in stderr:\n" + err[-6000:])

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    def open_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if self.proc and self.proc.poll() is None:
            if exc_type is None:
                code = self.stop()
                if code != 0:
                    raise AssertionError("server exited with %d: %s" % (code, self.stderr()[-3000:]))
            else:
                self.proc.kill()
                self.proc.wait()
        return False


def connect(port, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=deadline(timeout))
    return s


def recv_until_close(s, timeout=10):
    """Reads until the peer closes; returns the bytes."""
    s.settimeout(deadline(timeout))
    chunks = []
    while True:
        try:
            b = s.recv(65536)
        except ConnectionResetError:
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def raw(port, data, timeout=10):
    """Sends bytes, half-closes nothing, reads until the server closes."""
    with connect(port, timeout) as s:
        s.sendall(data)
        return recv_until_close(s, timeout)


class Response:
    def __init__(self, status, reason, version, headers, body):
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers  # list of (lower-name, value)
        self.body = body

    def header(self, name):
        name = name.lower()
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    def header_list(self, name):
        return [v for k, v in self.headers if k == name.lower()]


class Reader:
    """Reads HTTP responses one at a time from a socket (keep-alive aware)."""

    def __init__(self, sock, timeout=10):
        self.sock = sock
        self.buf = bytearray()
        self.sock.settimeout(deadline(timeout))

    def _fill(self):
        b = self.sock.recv(65536)
        if not b:
            raise EOFError("connection closed")
        self.buf += b

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        i = self.buf.index(b"\r\n")
        line = bytes(self.buf[:i])
        del self.buf[:i + 2]
        return line

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def response(self, head_request=False):
        status_line = self._line().decode()
        version, status, reason = (status_line.split(" ", 2) + [""])[:3]
        headers = []
        while True:
            line = self._line()
            if not line:
                break
            k, v = line.decode().split(":", 1)
            headers.append((k.strip().lower(), v.strip()))
        r = Response(int(status), reason, version, headers, b"")
        code = int(status)
        if head_request or code < 200 or code in (204, 304):
            return r
        te = r.header("transfer-encoding")
        cl = r.header("content-length")
        if te and "chunked" in te.lower():
            body = bytearray()
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                body += self._take(size)
                self._take(2)
            r.body = bytes(body)
        elif cl is not None:
            r.body = self._take(int(cl))
        else:
            try:
                while True:
                    self._fill()
            except EOFError:
                pass
            r.body, self.buf = bytes(self.buf), bytearray()
        return r

    def closed(self, timeout=5):
        """True when the server closes the connection within timeout."""
        self.sock.settimeout(deadline(timeout))
        try:
            while True:
                b = self.sock.recv(65536)
                if not b:
                    return True
                self.buf += b
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def request(port, method="GET", target="/", headers=None, body=None, version="1.1", timeout=10):
    """One request on a new connection; returns (Response, Reader)."""
    s = connect(port, timeout)
    hdrs = {"Host": "localhost"}
    hdrs.update(headers or {})
    if body is not None and "Content-Length" not in hdrs and "Transfer-Encoding" not in hdrs:
        hdrs["Content-Length"] = str(len(body))
    head = "%s %s HTTP/%s\r\n" % (method, target, version)
    head += "".join("%s: %s\r\n" % kv for kv in hdrs.items()) + "\r\n"
    s.sendall(head.encode() + (body or b""))
    rd = Reader(s, timeout)
    return rd.response(head_request=(method == "HEAD")), rd


def get(port, target="/", **kw):
    r, rd = request(port, target=target, **kw)
    rd.sock.close()
    return r


def burst(port, target, n, timeout=60):
    """n clients at once, one GET of target each on its own connection
    (Connection: close); the bodies, or the repr of what went wrong."""
    results = [None] * n

    def one(i):
        try:
            s = connect(port, timeout=timeout)
            s.sendall(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            results[i] = Reader(s, timeout=timeout).response().body
            s.close()
        except Exception as e:  # noqa: BLE001 - the caller asserts on it
            results[i] = repr(e).encode()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class TestCase(unittest.TestCase):
    maxDiff = None


class ServerTestCase(TestCase):
    """One server for the whole class: APP (and ARGS, FILES, ENV) name it;
    it must stop with exit code 0 and leave nothing behind."""
    APP = None
    ARGS = ()
    FILES = None
    ENV = None
    LEFTOVERS_OK = False

    @classmethod
    def setUpClass(cls):
        cls.server = Server(cls.APP, args=cls.ARGS, files=cls.FILES, env=cls.ENV,
                            leftovers_ok=cls.LEFTOVERS_OK).start()
        cls.port = cls.server.port

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        assert code == 0, "exit %d: %s" % (code, cls.server.stderr()[-3000:])


# A module for apps that want to prove nothing is left behind: put it in
# FILES and answer a route with require("stats_line")().
STATS_FILES = {"stats_line.lua": """
return function()
    local s = require("tendril").stats()
    return string.format("requests=%d waits=%d tasks=%d pooled=%d anchored=%d",
        s.requests, s.waits, s.tasks, s.pooled, s.anchored)
end
"""}


def assert_nothing_left(test, port, target="/stats", timeout=10):
    """Once traffic stopped: no request but the one asking, no wait, and
    every coroutine the runtime holds is anchored and back in the pool."""
    def settled():
        body = get(port, target).body.decode()
        vals = {k: int(v) for k, v in (kv.split("=") for kv in body.split())}
        return vals if vals["requests"] == 1 and vals["waits"] == 0 else None
    vals = poll(settled, timeout)
    test.assertTrue(vals, "requests or waits were left behind")
    test.assertEqual(vals["tasks"], vals["anchored"])
    # Only the asking request's own task is out of the pool.
    test.assertEqual(vals["tasks"], vals["pooled"] + 1)


def main():
    # Tests close what matters; unclosed-socket warnings are noise here.
    unittest.main(verbosity=2, warnings="ignore")
