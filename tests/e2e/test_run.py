"""tendril run: a script in a task with the waiting API, arg as luajit sets
it, the exit status it returns (or 1 and a traceback), waiting for the
threads and listeners it started, -e, SIGINT, and the parallel-fetch
example against a real upstream."""
import os
import signal
import socket
import subprocess
import tempfile
import time

from harness import BIN, SANITIZED, TestCase, deadline, main
from upstream import Upstream

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
ENV = dict(os.environ)


def run(args, timeout=30, **kw):
    return subprocess.run([BIN, "run"] + args, capture_output=True, text=True, timeout=deadline(timeout), env=ENV,
                          **kw)


def clean(stderr):
    """What a sanitizer build adds on exit, if anything, is not the script's."""
    return "AddressSanitizer" not in stderr and "LeakSanitizer" not in stderr and "teardown:" not in stderr


class RunTest(TestCase):
    def script(self, text):
        f = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False, dir=tempfile.gettempdir())
        f.write(text)
        f.close()
        self.addCleanup(os.unlink, f.name)
        return f.name

    def test_arg_and_varargs_as_luajit_sets_them(self):
        path = self.script('print(arg[0], #arg, arg[1], arg[2], select("#", ...), ...)\n')
        r = run([path, "one", "--two"])
        self.assertEqual((r.returncode, r.stdout), (0, "%s\t2\tone\t--two\t2\tone\t--two\n" % path), r.stderr)
        self.assertTrue(clean(r.stderr), r.stderr)

    def test_exit_status_is_the_returned_integer(self):
        for text, code in (("return 3", 3), ("return", 0), ("return 'not a number'", 0), ("return 256 + 7", 7)):
            r = run([self.script(text + "\n")])
            self.assertEqual(r.returncode, code, (text, r.stderr))

    def test_an_error_exits_1_with_the_traceback(self):
        path = self.script('local function inner()\n  local t = nil\n  return t.field\nend\nprint("before")\n'
                           'inner()\nprint("never")\n')
        r = run([path])
        self.assertEqual((r.returncode, r.stdout), (1, "before\n"))
        self.assertIn("%s:3: attempt to index local 't' (a nil value)" % path, r.stderr)
        self.assertIn("stack traceback:", r.stderr)
        self.assertIn("%s:6" % path, r.stderr)

    def test_a_script_that_does_not_load(self):
        r = run([self.script("this is not lua\n")])
        self.assertEqual(r.returncode, 1)
        self.assertIn("'=' expected near 'is'", r.stderr)
        r = run(["/nonexistent/script.lua"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot open /nonexistent/script.lua", r.stderr)

    def test_dash_e(self):
        r = run(["-e", "local t = require('tendril') t.sleep(0.05) print(1 + 1, ...) return 4", "x"])
        self.assertEqual((r.returncode, r.stdout), (4, "2\tx\n"), r.stderr)
        r = run(["-e", "error('boom')"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("(command line):1: boom", r.stderr)

    def test_usage(self):
        for args, msg in (([], "missing the script"), (["-e"], "-e needs the code"),
                          (["--port", "1"], "unknown option '--port' for run")):
            r = run(args)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(msg, r.stderr)

    def test_waits_for_the_threads_it_started(self):
        path = self.script('local t = require "tendril"\n'
                           't.spawn(function() t.sleep(0.3) print("thread") end)\n'
                           't.spawn_detached(function() t.sleep(0.2) print("detached") end)\n'
                           'print("main")\n')
        start = time.monotonic()
        r = run([path])
        self.assertEqual((r.returncode, r.stdout), (0, "main\ndetached\nthread\n"), r.stderr)
        self.assertGreaterEqual(time.monotonic() - start, 0.3)
        self.assertTrue(clean(r.stderr), r.stderr)

    def test_a_listener_keeps_it_running_until_sigint(self):
        path = self.script(
            'local tcp = require "tendril.tcp"\n'
            'local port = tcp.listen("127.0.0.1", 0, function(sock)\n'
            '  local line = sock:receive("*l")\n'
            '  sock:send("echo " .. tostring(line) .. "\\n")\n'
            'end)\n'
            'print(port)\n')
        p = subprocess.Popen([BIN, "run", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        try:
            port = int(p.stdout.readline())
            with socket.create_connection(("127.0.0.1", port), timeout=deadline(5)) as s:
                s.sendall(b"hi\n")
                self.assertEqual(s.recv(100), b"echo hi\n")
            time.sleep(0.2)
            self.assertIsNone(p.poll(), "a script with a listener exited")
            p.send_signal(signal.SIGINT)
            self.assertEqual(p.wait(timeout=deadline(5)), 128 + signal.SIGINT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()

    def test_listening_twice_on_one_port_says_in_use(self):
        p = subprocess.Popen([BIN, "run", "-e", "local tcp = require 'tendril.tcp'\n"
                              "local port = assert(tcp.listen('127.0.0.1', 0, function() end))\n"
                              "print(tcp.listen('127.0.0.1', port, function() end))\n"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        try:
            self.assertEqual(p.stdout.readline(), "nil\taddress in use\n")
        finally:
            p.send_signal(signal.SIGTERM)  # the first listener keeps it running
            self.assertEqual(p.wait(timeout=deadline(5)), 128 + signal.SIGTERM)
            p.stdout.close()
            p.stderr.close()

    def test_sigterm_stops_a_sleeping_script_at_once(self):
        p = subprocess.Popen([BIN, "run", "-e", "require('tendril').sleep(30) print('never')"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        time.sleep(0.3 * (3 if SANITIZED else 1))
        start = time.monotonic()
        p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=deadline(5))
        out, err = p.communicate()
        self.assertEqual((code, out), (128 + signal.SIGTERM, ""))
        self.assertLess(time.monotonic() - start, deadline(2))
        self.assertTrue(clean(err), err)

    def test_fetch_parallel_example(self):
        up = Upstream()
        try:
            urls = [up.url + "/slow?s=1", up.url + "/hello", up.url + "/slow?s=1"]
            start = time.monotonic()
            r = run([os.path.join(ROOT, "examples", "fetch-parallel.lua")] + urls)
            elapsed = time.monotonic() - start
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout.splitlines(), ["200\t4 bytes\t" + urls[0],
                                                     "200\t19 bytes\t" + urls[1],
                                                     "200\t4 bytes\t" + urls[2]])
            # Two one-second answers, together.
            self.assertLess(elapsed, deadline(1.9))
            r = run([os.path.join(ROOT, "examples", "fetch-parallel.lua"), up.url + "/hello",
                     "http://127.0.0.1:1/"])
            self.assertEqual(r.returncode, 1)
            self.assertIn("failed\tconnection refused\thttp://127.0.0.1:1/", r.stdout)
        finally:
            up.close()


if __name__ == "__main__":
    main()
