"""Script mistakes get a clear answer at the script's own line, as the
client and the log see it: statuses, bodies, Content-Length, finished
responses. (What a handler catches itself is in tests/runtime/server_spec.lua.)"""
import re

from harness import Reader, ServerTestCase, connect, get, main, poll

APP = r'''
local tendril = require "tendril"
local routes = {}
local function try(f)
    local ok, err = pcall(f)
    return (ok and "no error" or tostring(err)) .. "\n"
end
routes["/status-42"] = function() return 42 end
routes["/status-1000"] = function() return 1000 end
routes["/status-100"] = function() return 100 end
routes["/status-float"] = function() return 200.5 end
routes["/bad-body"] = function() return 200, nil, true end
routes["/string-then-status"] = function() return "hello", 201 end
routes["/short"] = function(req, res)
    res:header("Content-Length", "10")
    res:write("12345")
    res:finish()                                      -- short finish
end
routes["/long-write"] = function(req, res)
    res:header("Content-Length", "3")
    res:write("12345")                                -- long write
end
routes["/raise-after-write"] = function(req, res)
    res:write("partial")
    error("late")
end
routes["/write-after-finish"] = function(req, res)
    res:finish("done")
    local a = try(function() res:write("more") end)
    local b = try(function() res:finish() end)
    tendril.log("notice", "after finish: ", a, b)
end
routes["/error-table"] = function() error({ code = 1 }) end
routes["/error-tostring"] = function() error(setmetatable({}, { __tostring = function() return "custom!" end })) end
return function(req, res)
    local f = routes[req.path]
    if f then return f(req, res) end
    return "ok"
end
'''


def line_of(marker):
    """The line of the app that holds marker (textwrap.dedent keeps lines)."""
    return [i for i, text in enumerate(APP.split("\n"), 1) if marker in text][0]


class ResponsesTest(ServerTestCase):
    APP = APP

    def log_has(self, pattern):
        return poll(lambda: re.search(pattern, self.server.stderr()), 5)

    def test_statuses_outside_200_to_599_raise(self):
        for path, bad in (("/status-42", "42"), ("/status-1000", "1000"), ("/status-100", "100"),
                          ("/status-float", "200.5")):
            r = get(self.port, path)
            self.assertEqual(r.status, 500, path)
            self.assertTrue(self.log_has(r"GET %s: \S*app\.lua:\d+: the handler returned status %s "
                                         r"\(a final status is an integer from 200 to 599\)" % (path, re.escape(bad))),
                            self.server.stderr())

    def test_other_bodies_and_forms_raise(self):
        self.assertEqual(get(self.port, "/bad-body").status, 500)
        self.assertTrue(self.log_has(r"GET /bad-body: \S*app\.lua:\d+: the handler returned a body that is a boolean "
                                     r"\(return nothing, a body, or status\[, headers\[, body\]\]"))
        self.assertEqual(get(self.port, "/string-then-status").status, 500)
        self.assertTrue(self.log_has(r"GET /string-then-status: \S*app\.lua:\d+: the handler returned a body and "
                                     r"then more values"))

    def test_content_length_short_closes_the_connection(self):
        s = connect(self.port)
        s.sendall(b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n")
        rd = Reader(s)
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
        s.close()
        self.assertTrue(got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"\r\n\r\n12345"), got)
        self.assertTrue(self.log_has(r"\S*app\.lua:%d: the response ended after 5 of the 10 bytes its "
                                     r"Content-Length announced; the connection is closed" % line_of("short finish")),
                        self.server.stderr())
        del rd

    def test_content_length_long_raises_at_the_write(self):
        self.assertEqual(get(self.port, "/long-write").status, 500)
        self.assertTrue(self.log_has(r"GET /long-write: \S*app\.lua:%d: res:write: the body would pass"
                                     % line_of("long write")))

    def test_raise_before_any_byte_left_is_a_500(self):
        s = connect(self.port)
        rd = Reader(s)
        s.sendall(b"GET /raise-after-write HTTP/1.1\r\nHost: x\r\n\r\n")
        r = rd.response()
        self.assertEqual(r.status, 500)
        self.assertNotIn(b"partial", r.body)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(rd.response().body, b"ok")
        s.close()

    def test_write_or_finish_after_finish_raises(self):
        self.assertEqual(get(self.port, "/write-after-finish").body, b"done")
        self.assertTrue(self.log_has(r"after finish: \S*app\.lua:\d+: res:write: the response was finished already\n"
                                     r"\S*app\.lua:\d+: res:finish: the response was finished already"),
                        self.server.stderr())

    def test_error_values_that_are_not_strings(self):
        self.assertEqual(get(self.port, "/error-table").status, 500)
        self.assertTrue(self.log_has(r"GET /error-table: \(error object is a table value\)"))
        self.assertEqual(get(self.port, "/error-tostring").status, 500)
        self.assertTrue(self.log_has(r"GET /error-tostring: custom!"))


if __name__ == "__main__":
    main()
