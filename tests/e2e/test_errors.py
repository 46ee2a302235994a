"""Script errors and vanishing clients: a clear answer, a log line with the
script's file:line, and the next request is served normally."""
import re
import socket
import time

from harness import STATS_FILES, Reader, ServerTestCase, assert_nothing_left, connect, get, main, poll, raw

APP = r'''
local tendril, stats_line = require "tendril", require "stats_line"
local function helper(x)
    return x.field            -- line 4
end
return function(req, res)
    local p = req.path
    if p == "/raise" then
        error("boom")         -- line 9
    elseif p == "/raise-after-yield" then
        tendril.sleep(0.01)
        helper(nil)           -- line 12
    elseif p == "/raise-after-head" then
        res:write("partial")
        tendril.sleep(0.01)
        error("late")         -- line 16
    elseif p == "/bad-return" then
        return { name = "a table" }
    elseif p == "/stray-yield" then
        coroutine.yield()
    elseif p == "/bad-header" then
        res:header("X-Evil", "a\r\nInjected: yes")
        return "unreachable"
    elseif p == "/abandoned" then
        tendril.sleep(0.3)
        local ok, err = res:write("too late")
        tendril.log("warn", "abandoned write: ", ok, " ", err)
        local body, berr = req:body()
        tendril.log("warn", "abandoned body: ", body, " ", berr)
        return
    elseif p == "/log" then
        tendril.log("info", "hello ", 42, " ", nil, " ", true)
        return "logged"
    elseif p == "/bad-log-level" then
        tendril.log("loud", "x")
    elseif p == "/stats" then
        return stats_line()
    end
    return "fine"
end
'''


class ErrorsTest(ServerTestCase):
    APP = APP
    FILES = STATS_FILES

    def log_has(self, pattern):
        return poll(lambda: re.search(pattern, self.server.stderr()), 5)

    def test_raise_gives_500_and_keeps_the_connection(self):
        s = connect(self.port)
        rd = Reader(s)
        s.sendall(b"GET /raise HTTP/1.1\r\nHost: x\r\n\r\n")
        r = rd.response()
        self.assertEqual(r.status, 500)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(rd.response().body, b"fine")
        s.close()
        self.assertTrue(self.log_has(r"\[error\] GET /raise: \S*app\.lua:9: boom\nstack traceback:"))

    def test_raise_after_yield_names_the_line(self):
        self.assertEqual(get(self.port, "/raise-after-yield").status, 500)
        self.assertTrue(self.log_has(r"GET /raise-after-yield: \S*app\.lua:4: attempt to index local 'x'"))

    def test_raise_after_head_closes_the_connection(self):
        out = raw(self.port, b"GET /raise-after-head HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK"), out)
        self.assertIn(b"partial", out)
        self.assertFalse(out.endswith(b"0\r\n\r\n"), "a failed response must not look complete")
        self.assertTrue(self.log_has(r"app\.lua:16: late"))

    def test_bad_return_value(self):
        self.assertEqual(get(self.port, "/bad-return").status, 500)
        self.assertTrue(self.log_has(r"GET /bad-return: \S*app\.lua:\d+: the handler returned a body that is "
                                     r"a table without array items"))

    def test_stray_yield(self):
        self.assertEqual(get(self.port, "/stray-yield").status, 500)
        self.assertTrue(self.log_has(r"coroutine\.yield outside"))

    def test_header_injection_is_refused(self):
        r = get(self.port, "/bad-header")
        self.assertEqual(r.status, 500)
        self.assertIsNone(r.header("injected"))
        self.assertTrue(self.log_has(r"GET /bad-header: .*CR, LF or NUL"))

    def test_client_gone_mid_request(self):
        s = connect(self.port)
        s.sendall(b"GET /abandoned HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.05)
        s.close()
        self.assertTrue(self.log_has(r"abandoned write: nil closed"))
        self.assertTrue(self.log_has(r"abandoned body: nil closed"))
        self.assertEqual(get(self.port, "/").body, b"fine")

    def test_log_names_file_and_line(self):
        self.assertEqual(get(self.port, "/log").body, b"logged")
        self.assertTrue(self.log_has(r"\[info\] \S*app\.lua:32: hello 42 nil true"))

    def test_unknown_log_level_raises(self):
        self.assertEqual(get(self.port, "/bad-log-level").status, 500)
        self.assertTrue(self.log_has(r"tendril\.log: unknown level 'loud'"))

    def test_zz_nothing_left_behind(self):
        # Runs last (alphabetical): every earlier request has ended.
        assert_nothing_left(self, self.port)


if __name__ == "__main__":
    main()
