"""Faults inside Lua end the task that met them, never the server: memory
that runs out (--lua-memory-limit, or the system's) and code that never
yields (the stall guard speaks while it lasts; signals still stop it)."""
import os
import re
import signal
import threading
import time

from harness import SANITIZED, Reader, Server, TestCase, connect, get, main, poll

SLOW = 3 if SANITIZED else 1

APP = r'''
local tendril = require "tendril"
local function grow()                      -- line 3
    local t, i = {}, 0
    while true do i = i + 1; t[i] = {i, tostring(i)} end   -- line 5
end
local function grow_interpreted()
    local t, i = {}, 0
    while true do i = i + 1; t[i] = {i, tostring(i)} end   -- line 9
end
jit.off(grow_interpreted)
return function(req)
    local p = req.path
    if p == "/grow" then
        grow()
    elseif p == "/grow-interpreted" then
        grow_interpreted()
    elseif p == "/grow-string" then
        local s = "x"
        while true do s = s .. s end
    elseif p == "/thread" then
        local th = tendril.spawn(grow_interpreted)
        local ok, err = th:join()
        return "thread: " .. tostring(ok) .. " " .. tostring(err) .. "\n"
    elseif p == "/caught" then
        local ok, err = pcall(grow_interpreted)
        return "caught: " .. tostring(err) .. "\n"
    elseif p == "/grow-yield" then
        local t, i = {}, 0
        while true do
            i = i + 1; t[i] = {i, tostring(i)}
            if i % 100000 == 0 then tendril.sleep(0) end
        end
    elseif p == "/light" then
        local parts = {}
        for i = 1, 10 do tendril.sleep(0.02); parts[i] = string.rep("a", 1000) end
        return table.concat(parts)
    elseif p == "/memory" then
        return tostring(require("tendril.core").vm_stats().memory)
    end
    return "ok\n"
end
'''

LIMIT = 64 << 20


class OutOfMemoryTest(TestCase):
    def serve(self, **kw):
        return Server(APP, args=["--lua-memory-limit", "64m"], **kw)

    def assert_serves(self, srv):
        for _ in range(3):
            r = get(srv.port, "/")
            self.assertEqual((r.status, r.body), (200, b"ok\n"))

    def test_a_handler_that_runs_out_gets_a_500_and_the_server_lives(self):
        with self.serve() as srv:
            for path in ("/grow", "/grow-interpreted", "/grow-string", "/grow", "/grow-interpreted"):
                r = get(srv.port, path, timeout=60)
                self.assertEqual(r.status, 500, path)
                self.assert_serves(srv)
            # Its garbage was collected: the state is back near its start.
            self.assertLess(int(get(srv.port, "/memory").body), 16 << 20)
            log = srv.stderr()
            self.assertNotIn("unprotected", log)
            # Logged with the request; interpreted code with file:line.
            self.assertRegex(log, r"\[error\] GET /grow-interpreted: \S*app\.lua:9: not enough memory "
                                  r"\(--lua-memory-limit 64 MiB reached\)")
            self.assertEqual(len(re.findall(r"\[error\] GET /grow(-string)?: (\S+: )?not enough memory", log)), 3, log)
            self.assertEqual(log.count("[warn] memory: Lua ran out of memory (--lua-memory-limit %d)" % LIMIT), 5,
                             log)
        self.assertEqual(srv.exit_code, 0)

    def test_a_warm_server_and_traces_that_yield(self):
        # Compiled traces, warm from many requests, meet the limit while
        # other requests wait: LuaJIT 2.1-20230119 crashed (SIGSEGV) when
        # an allocation failed on a trace; the limit is met at an
        # interpreted instruction instead.
        with self.serve() as srv:
            for _ in range(60):
                self.assertEqual(get(srv.port, "/").body, b"ok\n")
            self.assertEqual(get(srv.port, "/grow-yield", timeout=60).status, 500)
            self.assert_serves(srv)
            results = []

            def one(path):
                results.append((path, get(srv.port, path, timeout=60).status))

            threads = [threading.Thread(target=one, args=("/light",)) for _ in range(30)]
            threads += [threading.Thread(target=one, args=("/grow-yield",)) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual(sorted(results), sorted([("/grow-yield", 500)] * 2 + [("/light", 200)] * 30))
            self.assert_serves(srv)

    def test_a_thread_and_a_caught_error(self):
        with self.serve() as srv:
            r = get(srv.port, "/thread", timeout=60)
            self.assertEqual(r.status, 200)
            self.assertRegex(r.body.decode(), r"^thread: false \S*app\.lua:9: not enough memory")
            self.assert_serves(srv)
            r = get(srv.port, "/caught", timeout=60)
            self.assertEqual(r.status, 200)
            self.assertRegex(r.body.decode(), r"^caught: \S*app\.lua:9: not enough memory")
            self.assert_serves(srv)

    def test_a_reload_that_runs_out_keeps_the_old_generation(self):
        with self.serve() as srv:
            self.assert_serves(srv)
            with open(os.path.join(srv.dir, "app.lua"), "w") as f:
                f.write('local t = {} for i = 1, 1e9 do t[i] = tostring(i) end\nreturn function() return "new" end\n')
            self.assertTrue(poll(lambda: "not enough memory" in srv.stderr(), 30 * SLOW), srv.stderr())
            self.assert_serves(srv)
            self.assertRegex(srv.stderr(), r"app\.lua:1: not enough memory")

    if not SANITIZED:
        # Without --lua-memory-limit malloc itself fails, under an
        # address-space limit (prlimit --as). Only the plain build can run
        # under one: the sanitizers reserve terabytes of address space, and
        # their RSS-based limits refuse every malloc until the RSS falls,
        # which freed memory in their quarantine never lets it do.
        def test_without_a_limit_the_system_refusal_is_survived(self):
            with Server(APP, prefix=["prlimit", "--as=%d" % (256 << 20), "--"]) as srv:
                r = get(srv.port, "/grow-interpreted", timeout=60)
                self.assertEqual(r.status, 500)
                self.assert_serves(srv)
                # Located when the failing allocation fits in the freed
                # reserve; a larger one (an array doubling) fails plain.
                self.assertRegex(srv.stderr(), r"GET /grow-interpreted: (\S+app\.lua:9: not enough memory \(the "
                                               r"system refused more\)|not enough memory \(the system refused memory; "
                                               r"no line\))")
                self.assertIn("[warn] memory: the system refused Lua memory", srv.stderr())

FD_APP = r'''
local tendril = require "tendril"
local tcp = require "tendril.tcp"
return function(req)
    if req.path == "/hold" then
        tendril.sleep(0.3)
        return "held"
    elseif req.path == "/connect-many" then
        local socks, err = {}, nil
        for i = 1, 500 do
            local s, e = tcp.connect("127.0.0.1", tonumber(req.query.port), { pool = false })
            if not s then err = e break end
            socks[i] = s
        end
        for _, s in ipairs(socks) do s:close() end
        return tostring(err)
    end
    return "ok"
end
'''


class DescriptorsTest(TestCase):
    def hold_many(self, srv, n):
        """n clients at once, each holding its connection 0.3 s: every one
        gets its answer (none is reset)."""
        socks = [connect(srv.port, timeout=60) for _ in range(n)]
        for s in socks:
            s.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        bodies = [Reader(s, timeout=60).response().body for s in socks]
        for s in socks:
            s.close()
        self.assertEqual(bodies, [b"held"] * n)

    def test_out_of_descriptors_pauses_accepting(self):
        # --max-connections above what 64 descriptors allow: accept meets
        # EMFILE. The clients wait in the backlog instead of being closed.
        with Server(FD_APP, args=["--max-connections", "1000"], prefix=["prlimit", "--nofile=64", "--"]) as srv:
            self.hold_many(srv, 120)
            episodes = srv.stderr().count("[warn] accept: Too many open files")
            self.assertGreaterEqual(episodes, 1, srv.stderr())
            self.assertLess(episodes, 30, srv.stderr())
            self.assertEqual(get(srv.port, "/").body, b"ok")

    def test_the_default_limit_keeps_a_reserve(self):
        with Server(FD_APP, prefix=["prlimit", "--nofile=128", "--"]) as srv:
            self.hold_many(srv, 120)
            self.assertNotIn("Too many open files", srv.stderr())

    def test_connect_past_the_limit_says_so(self):
        with Server(FD_APP, prefix=["prlimit", "--nofile=64", "--"]) as srv:
            r = get(srv.port, "/connect-many?port=%d" % srv.port, timeout=30)
            self.assertEqual(r.body, b"too many open files")
            self.assertEqual(get(srv.port, "/").body, b"ok")


class OperationsTest(TestCase):
    def test_sigusr1_reopens_the_logs_and_print_is_line_buffered(self):
        app = '''
            local tendril = require "tendril"
            return function(req)
                print("printed " .. req.path)
                tendril.log("notice", "logged ", req.path)
                return "ok"
            end
        '''
        srv = Server(app)
        err_log = os.path.join(srv.dir, "error.log")
        acc_log = os.path.join(srv.dir, "access.log")
        srv.args += ["--error-log", err_log, "--access-log", acc_log]
        with srv:
            self.assertEqual(get(srv.port, "/one").body, b"ok")
            # print reaches the pipe while the server runs, not at exit.
            self.assertTrue(poll(lambda: "printed /one" in srv.stdout(), 5), srv.stdout())
            os.rename(err_log, err_log + ".1")
            os.rename(acc_log, acc_log + ".1")
            srv.signal(signal.SIGUSR1)
            self.assertTrue(poll(lambda: os.path.exists(err_log) and "log files reopened" in open(err_log).read(), 5))
            self.assertEqual(get(srv.port, "/two").body, b"ok")
            self.assertTrue(poll(lambda: os.path.exists(acc_log) and "/two" in open(acc_log).read(), 5))
            self.assertIn("logged /two", open(err_log).read())
            self.assertNotIn("/two", open(acc_log + ".1").read())
            self.assertIn("/one", open(acc_log + ".1").read())
            self.assertIn("logged /one", open(err_log + ".1").read())
        self.assertEqual(srv.exit_code, 0)


if __name__ == "__main__":
    main()
