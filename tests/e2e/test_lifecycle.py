"""Starting, configuring and stopping the real binary."""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time

from harness import BIN, SLOW, Reader, Server, TestCase, connect, deadline, get, main, poll, request

HELLO = 'return function() return "hi" end\n'


def run_cli(*args, app=None, timeout=20):
    d = tempfile.mkdtemp(prefix="tendril-cli-")
    argv = [BIN] + list(args)
    if app is not None:
        path = os.path.join(d, "app.lua")
        with open(path, "w") as f:
            f.write(textwrap.dedent(app))
        argv = [a.replace("APP", path) for a in argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=deadline(timeout))


class CliTest(TestCase):
    def test_version_and_help(self):
        r = run_cli("--version")
        self.assertEqual((r.returncode, r.stdout), (0, "tendril 0.1.0\n"))
        r = run_cli("--help")
        self.assertEqual(r.returncode, 0)
        for flag in ["--host", "--port", "--access-log", "--error-log", "--max-header-bytes",
                     "--max-body-bytes", "--max-connections", "--header-timeout", "--body-timeout",
                     "--keepalive-timeout", "--shutdown-timeout", "--send-timeout", "--stall-warn-ms",
                     "--no-watch", "--no-timings"]:
            self.assertIn(flag, r.stdout)
        self.assertEqual(run_cli("serve", "--help").returncode, 0)

    def test_usage_errors(self):
        for args in [(), ("run",), ("serve",), ("serve", "x.lua", "--port", "70000"),
                     ("serve", "x.lua", "--bogus", "1"), ("serve", "x.lua", "--header-timeout", "-1"),
                     ("serve", "x.lua", "--port")]:
            r = run_cli(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertTrue(r.stderr.startswith("tendril: "), r.stderr)

    def assertOneLineFailure(self, r, pattern):
        self.assertNotEqual(r.returncode, 0)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertRegex(lines[0], pattern)
        self.assertNotIn("listening", r.stdout)

    def test_missing_script(self):
        r = run_cli("serve", "/nonexistent/app.lua", "--port", "0")
        self.assertOneLineFailure(r, r"^tendril: cannot open /nonexistent/app\.lua")

    def test_syntax_error_names_file_and_line(self):
        r = run_cli("serve", "APP", "--port", "0", app="local x = 1\nlocal y = = 2\nreturn function() end\n")
        self.assertOneLineFailure(r, r"^tendril: \S*app\.lua:2: unexpected symbol near '='")

    def test_no_handler_returned(self):
        r = run_cli("serve", "APP", "--port", "0", app="local x = 1\n")
        self.assertOneLineFailure(r, r"did not return a handler function \(it returned nothing\)")
        r = run_cli("serve", "APP", "--port", "0", app="return 42\n")
        self.assertOneLineFailure(r, r"it returned number")

    def test_top_level_error(self):
        r = run_cli("serve", "APP", "--port", "0", app="local t = nil\nreturn t.x\n")
        self.assertOneLineFailure(r, r"^tendril: \S*app\.lua:2: attempt to index local 't'")

    def test_port_in_use(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            port = s.getsockname()[1]
            r = run_cli("serve", "APP", "--port", str(port), app=HELLO)
            self.assertOneLineFailure(r, r"^tendril: cannot listen on 127\.0\.0\.1 port %d: address already in use"
                                      % port)


class StartupTest(TestCase):
    def test_top_level_may_yield_and_require_neighbours(self):
        app = '''
            local tendril = require "tendril"
            local helper = require "helper"
            local cjson = require "cjson"
            tendril.sleep(0.05)
            local started = tendril.now()
            return function(req)
                return cjson.encode({ msg = helper.greet(req.query.name), started = started > 0 })
            end
        '''
        files = {"helper.lua": 'return { greet = function(n) return "hello " .. n end }\n'}
        with Server(app, files=files, cwd="/") as srv:
            body = get(srv.port, "/?name=bob").body.decode()
            self.assertIn('"msg":"hello bob"', body)
            self.assertIn('"started":true', body)

    def test_listening_line_and_host(self):
        with Server(HELLO, args=["--host", "127.0.0.1"]) as srv:
            self.assertRegex(srv.stdout(), r"^listening on http://127\.0\.0\.1:\d+\n")

    def test_ipv6_host(self):
        try:
            socket.socket(socket.AF_INET6).bind(("::1", 0))
        except OSError:
            self.skipTest("no IPv6 loopback here")
        with Server(HELLO, args=["--host", "::1"]) as srv:
            self.assertRegex(srv.stdout(), r"^listening on http://\[::1\]:\d+\n")
            with socket.create_connection(("::1", srv.port)) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                self.assertEqual(Reader(s).response().body, b"hi")

    def test_open_file_limit_raised(self):
        with Server(HELLO) as srv:
            with open("/proc/%d/limits" % srv.proc.pid) as f:
                line = next(l for l in f if l.startswith("Max open files"))
            soft, hard = line.split()[3:5]
            self.assertEqual(soft, hard)

    def test_access_log_common_log_format(self):
        d = tempfile.mkdtemp()
        path = os.path.join(d, "access.log")
        with Server(HELLO, args=["--access-log", path]) as srv:
            get(srv.port, '/a?b="c"')
            raw_bad = socket.create_connection(("127.0.0.1", srv.port))
            raw_bad.sendall(b"GET / HTTP/1.1\r\n\r\n")
            Reader(raw_bad).response()
            raw_bad.close()
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 2, lines)
        clf = r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "%s" %d %s$'
        self.assertRegex(lines[0], clf % (r'GET /a\?b=\\x22c\\x22 HTTP/1\.1', 200, "2"))
        self.assertRegex(lines[1], clf % (r'GET / HTTP/1\.1', 400, r"\d+"))

    def test_access_log_combined_and_json(self):
        d = tempfile.mkdtemp()
        combined = os.path.join(d, "combined.log")
        with Server(SLOW_APP, args=["--access-log", combined, "--access-log-format", "combined"]) as srv:
            get(srv.port, "/", headers={"Referer": "http://a.example/", "User-Agent": 'probe "1"'})
            get(srv.port, "/")
        with open(combined) as f:
            lines = f.read().splitlines()
        clf = r'^127\.0\.0\.1 - - \[[^]]+\] "GET / HTTP/1\.1" 200 5 '
        self.assertRegex(lines[0], clf + r'"http://a\.example/" "probe \\x221\\x22"$')
        self.assertRegex(lines[1], clf + r'"-" "-"$')
        path = os.path.join(d, "access.json")
        with Server(SLOW_APP, args=["--access-log", path, "--access-log-format", "json"]) as srv:
            get(srv.port, "/slow?s=0.3", headers={"User-Agent": "caf\xe9 \"x\"\\"})
            r, rd = request(srv.port, "HEAD", "/")
            rd.sock.close()
            self.assertEqual(r.header("content-length"), "5")
            raw_bad = socket.create_connection(("127.0.0.1", srv.port))
            raw_bad.sendall(b"GET / HTTP/1.1\r\n\r\n")
            Reader(raw_bad).response()
            raw_bad.close()
        with open(path) as f:
            entries = [json.loads(line) for line in f.read().splitlines()]
        self.assertEqual(len(entries), 3, entries)
        # A HEAD's body is counted to frame its head, but none was sent.
        self.assertEqual((entries.pop(1)["bytes"]), 0)
        e = entries[0]
        self.assertRegex(e.pop("time"), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        t = e.pop("request_time")
        self.assertTrue(0.28 <= t < 3, t)
        timings = e.pop("timings")
        self.assertEqual(e.pop("upstream_time"), 0)
        self.assertTrue(0.28 <= timings.pop("sleep") < 3, timings)
        self.assertTrue(0 < timings.pop("lua") < 0.1, timings)
        self.assertEqual(timings, {k: 0 for k in ["http", "tcp", "fs", "dns", "run", "body", "ws", "db", "other"]})
        self.assertEqual(e, {"remote": "127.0.0.1", "method": "GET", "target": "/slow?s=0.3", "version": "1.1",
                             "status": 200, "bytes": 4, "referer": None, "user_agent": 'caf\u00c3\u00a9 "x"\\',
                             "worker": 1})
        self.assertEqual((entries[1]["status"], entries[1]["target"]), (400, "/"))

    def test_access_log_time_breakdown(self):
        # The proof: a handler that sleeps 100 ms and makes one
        # upstream call of 50 ms shows about that much of each in its line.
        upstream = Server(SLOW_APP).start()
        path = os.path.join(tempfile.mkdtemp(), "access.json")
        app = textwrap.dedent('''
            local tendril = require "tendril"
            local http = require "tendril.http"
            return function(req)
                tendril.sleep(0.1)
                local res = assert(http.get("http://127.0.0.1:%d/slow?s=0.05"))
                local t = req:timings()
                return string.format("%%s %%.3f %%.3f", res.body, t.sleep, t.http)
            end
        ''' % upstream.port)
        try:
            with Server(app, args=["--access-log", path, "--access-log-format", "json"]) as srv:
                r = get(srv.port, "/")
                body, sleep, waited = r.body.decode().split()
                self.assertEqual(body, "done")
                # req:timings(), asked in the handler, has what was done so far.
                self.assertTrue(0.095 <= float(sleep) < 0.1 + 0.2 * SLOW, sleep)
                self.assertTrue(0.045 <= float(waited) < 0.05 + 0.2 * SLOW, waited)
        finally:
            upstream.stop()
        with open(path) as f:
            e = json.loads(f.read().splitlines()[0])
        t = e["timings"]
        self.assertTrue(0.095 <= t["sleep"] < 0.1 + 0.2 * SLOW, e)
        self.assertTrue(0.045 <= t["http"] < 0.05 + 0.2 * SLOW, e)
        self.assertEqual(e["upstream_time"], t["http"])
        self.assertTrue(0 < t["lua"] < 0.05 * SLOW, e)
        self.assertEqual([k for k in t if k not in ("sleep", "http", "lua") and t[k] != 0], [], e)
        # The parts are within the whole (both from the same clock; the
        # log's figures are rounded to the microsecond).
        self.assertTrue(t["lua"] + t["sleep"] + t["http"] <= e["request_time"] + 0.00001, e)

    def test_the_breakdown_of_an_answer_the_server_made(self):
        # A handler that raised (500) or whose body is refused (413): the
        # run that ended the request is counted before its line.
        path = os.path.join(tempfile.mkdtemp(), "access.json")
        app = textwrap.dedent('''
            local function spin(s) local t0 = os.clock() while os.clock() - t0 < s do end end
            return function(req)
                spin(0.05)
                if req.path == "/raise" then error("boom") end
                return req:body()
            end
        ''')
        with Server(app, args=["--access-log", path, "--access-log-format", "json",
                               "--max-body-bytes", "10"]) as srv:
            self.assertEqual(get(srv.port, "/raise").status, 500)
            self.assertEqual(get(srv.port, "/body", method="POST", body=b"x" * 100).status, 413)
        with open(path) as f:
            entries = [json.loads(line) for line in f.read().splitlines()]
        self.assertEqual([e["status"] for e in entries], [500, 413])
        for e in entries:
            self.assertTrue(0.045 <= e["timings"]["lua"] <= e["request_time"], e)

    def test_a_request_cut_off_is_logged_as_499(self):
        path = os.path.join(tempfile.mkdtemp(), "access.json")
        with Server(SLOW_APP, args=["--access-log", path, "--access-log-format", "json"]) as srv:
            s = connect(srv.port)
            s.sendall(b"GET /slow?s=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.2)
            s.close()
            self.assertTrue(poll(lambda: os.path.getsize(path) > 0, 10))
        with open(path) as f:
            e = json.loads(f.read().splitlines()[0])
        self.assertEqual((e["status"], e["bytes"], e["target"]), (499, 0, "/slow?s=1"))
        # Its wait so far is in it, though the sleep had not ended.
        self.assertTrue(0.15 <= e["timings"]["sleep"] <= e["request_time"] < 1, e)

    def test_no_timings(self):
        path = os.path.join(tempfile.mkdtemp(), "access.json")
        app = SLOW_APP.replace('return "done"', 'return tostring(req:timings().sleep)')
        with Server(app, args=["--access-log", path, "--access-log-format", "json", "--no-timings"]) as srv:
            self.assertEqual(get(srv.port, "/slow?s=0.05").body, b"0")
        with open(path) as f:
            e = json.loads(f.read())
        self.assertEqual(set(e["timings"].values()), {0}, e)
        self.assertEqual(e["upstream_time"], 0)

    def test_access_log_format_refused(self):
        r = subprocess.run([BIN, "serve", "app.lua", "--access-log-format", "xml"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--access-log-format takes common, combined or json, not 'xml'", r.stderr)

    def test_access_log_to_stdout(self):
        with Server(HELLO, args=["--access-log", "-"]) as srv:
            get(srv.port, "/x")
            self.assertTrue(poll(lambda: '"GET /x HTTP/1.1" 200 2' in srv.stdout(), 5))

    def test_error_log_file(self):
        d = tempfile.mkdtemp()
        path = os.path.join(d, "error.log")
        app = 'return function() require("tendril").log("warn", "to the file") return "ok" end\n'
        with Server(app, args=["--error-log", path]) as srv:
            get(srv.port, "/")
            self.assertTrue(poll(lambda: "[warn]" in open(path).read(), 5))
        self.assertIn("to the file", open(path).read())
        self.assertNotIn("to the file", srv.stderr())


SLOW_APP = r'''
local tendril = require "tendril"
return function(req)
    if req.path == "/slow" then
        tendril.sleep(tonumber(req.query.s))
        return "done"
    end
    return "quick"
end
'''


class ShutdownTest(TestCase):
    def test_sigterm_drains_in_flight_requests(self):
        srv = Server(SLOW_APP).start()
        idle = connect(srv.port)
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        idle_rd = Reader(idle)
        self.assertEqual(idle_rd.response().body, b"quick")
        busy = connect(srv.port)
        busy.sendall(b"GET /slow?s=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        srv.signal(signal.SIGTERM)
        # The idle keep-alive connection is closed at once.
        self.assertTrue(idle_rd.closed(timeout=1))
        # New connections are refused.
        self.assertTrue(poll(lambda: self._refused(srv.port), 2))
        # The in-flight request finishes, told that the connection closes.
        r = Reader(busy).response()
        self.assertEqual((r.status, r.body, r.header("connection")), (200, b"done", "close"))
        self.assertEqual(srv.wait(), 0)
        srv.assert_clean()

    @staticmethod
    def _refused(port):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return False
        except OSError:
            return True

    def test_sigint_with_nothing_in_flight(self):
        srv = Server(SLOW_APP).start()
        self.assertEqual(get(srv.port, "/").body, b"quick")
        srv.signal(signal.SIGINT)
        self.assertEqual(srv.wait(), 0)
        srv.assert_clean()

    def test_shutdown_timeout_cuts_requests_off(self):
        srv = Server(SLOW_APP, args=["--shutdown-timeout", "0.5"]).start()
        busy = connect(srv.port)
        busy.sendall(b"GET /slow?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        start = time.monotonic()
        srv.signal(signal.SIGTERM)
        self.assertEqual(srv.wait(), 1)
        self.assertLess(time.monotonic() - start, deadline(5))
        self.assertIn("shutdown timeout", srv.stderr())
        srv.assert_clean()


TCP_APP = r'''
local tendril = require "tendril"
local tcp = require "tendril.tcp"
local port = assert(tcp.listen("127.0.0.1", 0, function(sock)
    local line = sock:receive("*l")
    tendril.sleep(tonumber(line))
    sock:send("after " .. line .. "\n")
end))
return function() return tostring(port) end
'''


class TcpShutdownTest(TestCase):
    def test_tcp_sessions_are_drained_like_requests(self):
        srv = Server(TCP_APP).start()
        port = int(get(srv.port, "/").body)
        c = socket.create_connection(("127.0.0.1", port), timeout=deadline(10))
        c.sendall(b"1\n")
        time.sleep(0.2)
        srv.signal(signal.SIGTERM)
        self.assertEqual(c.recv(100), b"after 1\n")
        c.close()
        self.assertEqual(srv.wait(), 0)
        srv.assert_clean()

    def test_a_session_that_never_ends_is_cut_at_the_timeout(self):
        srv = Server(TCP_APP, args=["--shutdown-timeout", "0.5"]).start()
        port = int(get(srv.port, "/").body)
        c = socket.create_connection(("127.0.0.1", port), timeout=deadline(10))
        c.sendall(b"60\n")
        time.sleep(0.2)
        srv.signal(signal.SIGTERM)
        self.assertEqual(srv.wait(), 1)
        self.assertIn("tcp.listen session", srv.stderr())
        c.close()
        srv.assert_clean()


class LimitsTest(TestCase):
    def test_max_connections_makes_others_wait(self):
        with Server(SLOW_APP, args=["--max-connections", "2"]) as srv:
            a, b = connect(srv.port), connect(srv.port)
            for s in (a, b):
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                self.assertEqual(Reader(s).response().body, b"quick")
            c = connect(srv.port)  # the kernel's backlog accepts it
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            c.settimeout(0.5)
            with self.assertRaises(socket.timeout):
                c.recv(100)
            a.close()
            self.assertEqual(Reader(c).response().body, b"quick")
            b.close()
            c.close()


if __name__ == "__main__":
    main()
