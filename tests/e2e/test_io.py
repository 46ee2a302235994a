"""Synchronous-looking I/O inside handlers: the HTTP client, TCP, DNS,
files, processes, light threads, yieldable require and coroutines."""
import os
import re
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from harness import BIN, Server, TestCase, burst, connect, deadline, get, main, poll
from upstream import Upstream

APP = r'''
local tendril = require "tendril"
local http = require "tendril.http"
local tcp = require "tendril.tcp"
local fs = require "tendril.fs"
local UP = os.getenv("UP")
local UP2 = os.getenv("UP2")

local echo_port = assert(tcp.listen("127.0.0.1", 0, function(sock)
    while true do
        local line, err = sock:receive("*l")
        if not line then return end
        if line == "quit" then sock:send("bye\n") return end
        sock:send(line .. "\n")
    end
end))

local function show(res, err)
    if not res then return "error: " .. tostring(err) end
    return res.status .. " " .. tostring(res.body)
end

local routes = {}
function routes.get(req) return show(http.get(UP .. req.query.p, { timeout = tonumber(req.query.t) })) end
function routes.redirect(req)
    return show(http.request{ url = UP .. "/redirect?n=" .. req.query.n .. "&code=" .. (req.query.code or "302"),
                              method = req.query.m, max_redirects = tonumber(req.query.max) })
end
function routes.post()
    return show(http.request{ method = "POST", url = UP .. "/echo", body = "payload", headers = { ["X-Test"] = "yes" } })
end
function routes.refused(req)
    return show(http.get("http://127.0.0.1:" .. req.query.port .. "/", { timeout = 5 }))
end
function routes.badurl()
    local a, e1 = http.get("ftp://x/")
    local b, e2 = http.get("not a url")
    return tostring(a) .. " " .. e1 .. " | " .. tostring(b) .. " " .. e2
end
function routes.stream()
    local res = assert(http.get(UP .. "/big", { stream = true }))
    local n, pieces = 0, 0
    while true do
        local piece, err = res:read()
        if not piece then assert(not err, err) break end
        n, pieces = n + #piece, pieces + 1
    end
    return n .. " bytes in " .. (pieces > 1 and "pieces" or "one piece")
end
function routes.burst() return show(http.get(UP2 .. "/")) end
function routes.echo()
    local s = assert(tcp.connect("localhost", echo_port))
    assert(s:send("ping\n"))
    local a = s:receive("*l")
    s:send("abc\n")
    local b = s:receive(2)
    local c = s:receive("*l")
    s:send("quit\n")
    local d = s:receive("*l")
    local e, err, partial = s:receive("*l")
    s:close()
    return table.concat({ a, b, c, d, tostring(e), err, partial }, "|")
end
function routes.receive_all()
    local s = assert(tcp.connect("127.0.0.1", echo_port))
    s:send("x\nquit\n")
    local all = s:receive("*a")
    return all
end
function routes.tcp_timeout()
    local s = assert(tcp.connect("127.0.0.1", echo_port, { read_timeout = 0.2 }))
    local t0 = tendril.now()
    local data, err, partial = s:receive("*l")
    s:close()
    return tostring(data) .. " " .. err .. " '" .. partial .. "' " .. string.format("%.1f", tendril.now() - t0)
end
function routes.dual_stack()
    -- a name whose first address has no server: the next one is tried
    local real = tendril.resolve
    tendril.resolve = function(name)
        if name == "dual.test" then return { "::1", "127.0.0.1" } end
        return real(name)
    end
    local s, err = tcp.connect("dual.test", echo_port, { timeout = 2 })
    tendril.resolve = real
    if not s then return "error: " .. err end
    s:send("dual\n")
    local l = s:receive("*l")
    s:close()
    return l
end
function routes.resolve()
    local a = tendril.resolve("localhost")
    local b, err = tendril.resolve("no-such-host.invalid")
    return table.concat(a, ",") .. " | " .. tostring(b) .. " " .. tostring(err)
end
function routes.fs(req)
    local path = req.query.dir .. "/f.txt"
    assert(fs.write(path, "contents\n"))
    local data = fs.read(path)
    local st = fs.stat(path)
    local d = fs.stat(req.query.dir)
    local _, e1 = fs.read(req.query.dir .. "/missing")
    local _, e2 = fs.write("/proc/version/x", "y")
    return table.concat({ data, st.size, st.type, d.type, e1, tostring(e2), tostring(st.mtime > 1e9) }, "|")
end
function routes.run()
    local r = assert(tendril.run({ "sh", "-c", "read x; echo out:$x; echo err >&2; exit 3" }, { input = "in\n" }))
    local k = assert(tendril.run({ "sh", "-c", "kill -TERM $$" }))
    local t, terr = tendril.run({ "sh", "-c", "sleep 30 & sleep 30" }, { timeout = 0.3 })
    local m, merr = tendril.run({ "no-such-program-xyz" })
    return table.concat({ r.status, r.stdout, r.stderr, tostring(k.signal), tostring(t), terr, tostring(m), merr }, "|")
end
function routes.spawn()
    local t0 = tendril.now()
    local threads = {}
    for i = 1, 3 do
        threads[i] = tendril.spawn(function(x) tendril.sleep(1) return x, x * 10 end, i)
    end
    local out = {}
    for i = 1, 3 do
        local ok, a, b = threads[i]:join()
        out[#out + 1] = tostring(ok) .. a .. "," .. b
    end
    return table.concat(out, " ") .. string.format(" in %.2f", tendril.now() - t0)
end
function routes.spawn_errors()
    local th = tendril.spawn(function() tendril.sleep(0.01) error("thread boom") end)
    local ok, err = th:join()
    local slow = tendril.spawn(function() tendril.sleep(0.5) tendril.log("warn", "slow thread done") end)
    local ok2, err2 = slow:join(0.1)
    return tostring(ok) .. " " .. err .. " | " .. tostring(ok2) .. " " .. err2
end
function routes.background()
    tendril.spawn(function()
        tendril.sleep(0.2)
        tendril.log("warn", "background work done")
    end)
    return "answered first"
end
function routes.wrap()
    local gen = coroutine.wrap(function()
        for i = 1, 3 do
            tendril.sleep(0.01)
            coroutine.yield(i)
        end
        return "end"
    end)
    local co = coroutine.create(function(a)
        local b = coroutine.yield(a + 1)
        tendril.sleep(0.01)
        local r = http.get(UP .. "/hello")
        return b .. ":" .. r.body
    end)
    local _, first = coroutine.resume(co, 1)
    local ok, last = coroutine.resume(co, "x")
    return table.concat({ gen(), gen(), gen(), gen(), first, tostring(ok), last, coroutine.status(co) }, " ")
end
function routes.sort_yield()
    local t = { 3, 1, 2 }
    local ok, err = pcall(table.sort, t, function(a, b) tendril.sleep(0) return a < b end)
    local ok2, err2 = pcall(string.gsub, "abc", "%w", function() tendril.sleep(0) end)
    return tostring(ok) .. " " .. err .. " | " .. tostring(ok2) .. " " .. err2
end
function routes.gc_yield()
    local msg = "finalizer did not run"
    local p = newproxy(true)
    getmetatable(p).__gc = function()
        local ok, err = pcall(tendril.sleep, 0.01)
        msg = tostring(ok) .. " " .. err
    end
    p = nil -- luacheck: ignore 311
    collectgarbage("collect")
    return msg
end
function routes.pcall_yield()
    local ok, v = pcall(function() tendril.sleep(0.01) return "through pcall" end)
    local mt = setmetatable({}, { __index = function(_, k) tendril.sleep(0.01) return k .. "!" end })
    return tostring(ok) .. " " .. v .. " " .. mt.meta
end
function routes.require_slow()
    local m = require "slowmod"
    return m.value .. " loads=" .. m.loads()
end
function routes.require_bad()
    local ok1, e1 = pcall(require, "badmod")
    local ok2, e2 = pcall(require, "badmod")
    local ok3, e3 = pcall(require, "nosuchmod")
    return table.concat({ tostring(ok1), e1:match("boom %d"), tostring(ok2), e2:match("boom %d"),
                          tostring(ok3), tostring(e3:find("not found") ~= nil) }, " ")
end
function routes.fds() return tostring(tendril.stats().waits) end
function routes.run_grandchild()
    -- the direct child exits at once; a grandchild keeps its stdout open
    local t0 = tendril.now()
    local r, err = tendril.run({ "sh", "-c", "sleep 10 & echo started" }, { timeout = 1 })
    return string.format("%s %s %.1f", tostring(r), tostring(err), tendril.now() - t0)
end
function routes.inject(req)
    local w = req.query.w
    local ok, err = pcall(function()
        -- (no tail calls: the error names this line)
        local r
        if w == "value" then
            r = http.request{ url = UP .. "/echo", headers = { ["X-Test"] = "yes\r\nX-Injected: 1" } }
        elseif w == "name" then
            r = http.request{ url = UP .. "/echo", headers = { ["X-Test\r\nX-Injected"] = "1" } }
        elseif w == "nul" then
            r = http.get(UP .. "/echo", { headers = { ["X-Test"] = "a\0b" } })
        elseif w == "method" then
            r = http.request{ url = UP .. "/echo", method = "GET /x HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET" }
        end
        if r then return r end
        local res, e = http.get(UP .. "/echo HTTP/1.1\r\nX-Injected: 1\r\n")
        error(tostring(res) .. " " .. tostring(e), 0)
    end)
    return tostring(ok) .. " " .. tostring(err)
end
function routes.dns_raise()
    -- A lookup that raises (it cannot yield in a sort comparator) must not
    -- leave its name pending: the next lookup would wait for the timeout.
    local ok = pcall(table.sort, { 1, 2 }, function(a, b) tendril.resolve("127.9") return a < b end)
    local t0 = tendril.now()
    local addrs, err = tendril.resolve("127.9")
    return string.format("%s %s %s %.1f", tostring(ok), addrs and addrs[1] or "nil", tostring(err),
                         tendril.now() - t0)
end
function routes.dns_bound()
    -- 2000 names that resolve (numeric forms getaddrinfo accepts)
    for i = 1, 2000 do
        assert(tendril.resolve(string.format("127.%d.%d", math.floor(i / 256), i % 256)))
    end
    return tostring(tendril.stats().dns_cached)
end

return function(req, res)
    local route = routes[req.path:sub(2)]
    if not route then return 404, nil, "no route" end
    return route(req, res)
end
'''

FILES = {
    "slowmod.lua": '''
        local tendril = require "tendril"
        counter = (counter or 0) + 1
        tendril.sleep(0.3)
        local n = counter
        return { value = "slow module", loads = function() return n end }
    ''',
    "badmod.lua": '''
        attempts = (attempts or 0) + 1
        error("boom " .. attempts)
    ''',
}


class IoTest(TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        cls.up2 = Server("return function() return 'upstream two' end\n").start()
        cls.server = Server(APP, files=FILES, env={"UP": cls.up.url,
                                                   "UP2": "http://127.0.0.1:%d" % cls.up2.port}).start()
        cls.port = cls.server.port

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        cls.up2.stop()
        cls.up.close()
        assert code == 0, cls.server.stderr()

    def body(self, target):
        return get(self.port, target).body.decode()

    def test_get_and_keepalive_reuse(self):
        before = self.up.connections
        for _ in range(5):
            self.assertEqual(self.body("/get?p=/hello"), "200 hello from upstream")
        self.assertEqual(self.up.connections - before, 1, "five GETs should share one pooled connection")

    def test_post_with_headers(self):
        self.assertEqual(self.body("/post"), "200 POST yes payload")

    def test_chunked_and_close_delimited_bodies(self):
        self.assertEqual(self.body("/get?p=/chunked"), "200 part1part2")
        self.assertEqual(self.body("/get?p=/close-delimited"), "200 until the end")

    def test_streaming_a_large_body(self):
        self.assertEqual(self.body("/stream"), "%d bytes in pieces" % (5 * 1024 * 1024))

    def test_redirects_are_opt_in(self):
        self.assertEqual(self.body("/redirect?n=2"), "302 ")
        self.assertEqual(self.body("/redirect?n=2&max=5"), "200 landed GET")
        self.assertEqual(self.body("/redirect?n=3&max=2"), "302 ")
        self.assertEqual(self.body("/redirect?n=1&max=1&code=307&m=POST"), "200 landed POST")
        self.assertEqual(self.body("/redirect?n=1&max=1&code=303&m=POST"), "200 landed GET")

    def test_connection_refused(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.assertEqual(self.body("/refused?port=%d" % port), "error: connection refused")

    def test_bad_urls(self):
        self.assertEqual(self.body("/badurl"), "nil unsupported scheme ftp (http and https only) | nil invalid url")

    def test_read_timeout(self):
        start = time.monotonic()
        self.assertEqual(self.body("/get?p=/slow%3Fs=3&t=0.3"), "error: timeout")
        self.assertLess(time.monotonic() - start, deadline(2.5))

    def test_upstream_closing_mid_body(self):
        self.assertEqual(self.body("/get?p=/cut"), "error: closed")

    def test_stale_pooled_connection_is_retried_once(self):
        before = self.up.connections
        self.assertEqual(self.body("/get?p=/once"), "200 hello from upstream")
        # The pooled connection is closed by the upstream as the second
        # request arrives; the client retries on a new one.
        self.assertEqual(self.body("/get?p=/once"), "200 hello from upstream")
        self.assertEqual(self.up.connections - before, 2)

    def test_the_retry_takes_a_new_connection_not_another_pooled_one(self):
        # Idle connections often die together (the server's keep-alive
        # timeout): two pooled connections, both stale; the retry must not
        # take the second.
        # Two at once: the pool then holds (at least) two connections that
        # have served a request, which /once closes.
        with ThreadPoolExecutor(2) as pool:
            slow = list(pool.map(lambda _: self.body("/get?p=/slow%3Fs=0.3"), range(2)))
        self.assertEqual(slow, ["200 slow"] * 2)
        before = self.up.connections
        self.assertEqual(self.body("/get?p=/once"), "200 hello from upstream")
        self.assertEqual(self.up.connections - before, 1)

    def test_tcp_echo_patterns(self):
        self.assertEqual(self.body("/echo"), "ping|ab|c|bye|nil|closed|")

    def test_tcp_receive_all(self):
        self.assertEqual(self.body("/receive_all"), "x\nbye\n")

    def test_tcp_read_timeout_returns_partial(self):
        self.assertEqual(self.body("/tcp_timeout"), "nil timeout '' 0.2")

    def test_connect_tries_each_address(self):
        self.assertEqual(self.body("/dual_stack"), "dual")

    def test_resolve(self):
        text = self.body("/resolve")
        addrs, failure = text.split(" | ")
        self.assertTrue(set(addrs.split(",")) & {"127.0.0.1", "::1"}, addrs)
        self.assertEqual(failure, "nil host not found")

    def test_files(self):
        d = tempfile.mkdtemp()
        self.assertEqual(self.body("/fs?dir=" + d),
                         "contents\n|9|file|directory|no such file or directory|not a directory|true")

    def test_processes(self):
        start = time.monotonic()
        self.assertEqual(self.body("/run"), "3|out:in\n|err\n|15|nil|timeout|nil|no such file or directory")
        self.assertLess(time.monotonic() - start, deadline(5))

    def test_run_timeout_covers_grandchildren(self):
        # Finding 4: the timeout ended with the direct child, so a grandchild
        # holding stdout made the call last as long as it lived.
        start = time.monotonic()
        self.assertEqual(self.body("/run_grandchild"), "nil timeout 1.0")
        self.assertLess(time.monotonic() - start, deadline(3))

    def test_client_refuses_header_injection(self):
        # Finding 7: the client wrote names, values, the method and the
        # target as they came; CR or LF added headers or requests upstream.
        before = self.up.connections
        self.assertRegex(self.body("/inject?w=value"),
                         r"^false \S*app\.lua:\d+: http\.request: header 'X-Test': its value holds CR, LF or NUL$")
        self.assertRegex(self.body("/inject?w=nul"),
                         r"^false \S*app\.lua:\d+: http\.get: header 'X-Test': its value holds CR, LF or NUL$")
        self.assertRegex(self.body("/inject?w=name"),
                         r"^false \S*app\.lua:\d+: http\.request: header 'X-Test\\r\\nX-Injected': "
                         r"not a valid header name$")
        self.assertRegex(self.body("/inject?w=method"),
                         r"^false \S*app\.lua:\d+: http\.request: method 'GET /x HTTP/1\.1\\r\\n.*': "
                         r"not a valid method$")
        self.assertEqual(self.body("/inject?w=target"), "false nil invalid url")
        self.assertEqual(self.up.connections, before, "nothing may reach the upstream")

    def test_dns_lookup_that_raises_leaves_nothing_pending(self):
        # Finding 8: a lookup that raised left its name pending for ever, and
        # every later lookup of it waited for the full timeout.
        self.assertEqual(self.body("/dns_raise"), "false 127.0.0.9 nil 0.0")

    def test_dns_cache_is_bounded(self):
        self.assertEqual(self.body("/dns_bound"), "1024")

    def test_three_spawned_sleeps_take_one_second(self):
        text = self.body("/spawn")
        m = re.match(r"^true1,10 true2,20 true3,30 in ([\d.]+)$", text)
        self.assertTrue(m, text)
        # About one second, not three: a generous bound for a busy machine.
        self.assertLess(float(m.group(1)), deadline(2.5))
        self.assertGreaterEqual(float(m.group(1)), 0.99)

    def test_thread_errors_and_join_timeout(self):
        text = self.body("/spawn_errors")
        self.assertRegex(text, r"^false \S*app\.lua:\d+: thread boom \| false timeout$")
        self.assertTrue(poll(lambda: "tendril.spawn: a thread failed" in self.server.stderr(), 5))
        # The join timed out; the thread ran on and ended.
        self.assertTrue(poll(lambda: "slow thread done" in self.server.stderr(), 5))

    def test_thread_outlives_request(self):
        self.assertEqual(self.body("/background"), "answered first")
        self.assertTrue(poll(lambda: "background work done" in self.server.stderr(), 5))

    def test_yield_inside_script_coroutines(self):
        self.assertEqual(self.body("/wrap"), "1 2 3 end 2 true x:hello from upstream dead")

    def test_yield_across_c_boundary_is_a_clear_error(self):
        text = self.body("/sort_yield")
        self.assertRegex(text, r"^false \S*app\.lua:\d+: tendril\.sleep: cannot yield across a C call.* \| "
                               r"false \S*app\.lua:\d+: tendril\.sleep: cannot yield across a C call")

    def test_yield_in_a_finalizer_is_a_clear_error(self):
        self.assertEqual(self.body("/gc_yield"), "false tendril.sleep: cannot yield across a C call "
                                                 "(a metamethod, iterator or callback run by C)")

    def test_yield_through_pcall_and_metamethods(self):
        self.assertEqual(self.body("/pcall_yield"), "true through pcall meta!")

    def test_require_may_yield_and_loads_once(self):
        results = []
        threads = [threading.Thread(target=lambda: results.append(self.body("/require_slow"))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results, ["slow module loads=1"] * 3)

    def test_failed_require_is_not_cached(self):
        self.assertEqual(self.body("/require_bad"), "false boom 1 false boom 2 false true")

    def test_thousand_concurrent_upstream_gets(self):
        fds_before = self.server.open_fds()
        n = 1000
        results = burst(self.port, "/burst", n)
        failures = [r for r in results if r != b"200 upstream two"]
        self.assertEqual(failures, [], "%d of %d failed" % (len(failures), n))
        # Once the burst is over the upstream pool keeps at most 64 idle
        # connections; everything else is closed.
        self.assertTrue(poll(lambda: self.server.open_fds() <= fds_before + 64, 10),
                        "%d fds before, %d after" % (fds_before, self.server.open_fds()))


if __name__ == "__main__":
    main()
