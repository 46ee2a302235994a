"""Script mistakes get a clear answer at the script's own line: statuses,
bodies, Content-Length, finished responses, bad arguments."""
import re

from harness import Reader, ServerTestCase, connect, get, main, poll, raw

APP = r'''
local tendril = require "tendril"
local fs = require "tendril.fs"
local http = require "tendril.http"
local routes = {}
local function try(f)
    local ok, err = pcall(f)
    return (ok and "no error" or tostring(err)) .. "\n"
end
routes["/status-42"] = function() return 42 end
routes["/status-1000"] = function() return 1000 end
routes["/status-100"] = function() return 100 end
routes["/status-float"] = function() return 200.5 end
routes["/res-status"] = function(req, res)
    return try(function() res:status(101) end) .. try(function() res:status("200") end)
        .. try(function() res:status(201) end)
end
routes["/array"] = function() return 200, { ["X-A"] = "1" }, { "a", { "b", { "c" } }, "d" } end
routes["/array-body"] = function() return { "x", "y" } end
routes["/bad-body"] = function() return 200, nil, true end
routes["/string-then-status"] = function() return "hello", 201 end
routes["/short"] = function(req, res)
    res:header("Content-Length", "10")
    res:write("12345")
    res:finish()                                      -- short finish
end
routes["/long"] = function(req, res)
    res:header("Content-Length", "3")
    local err = try(function() res:write("12345") end)
    res:header("Content-Length", nil)
    return err
end
routes["/long-write"] = function(req, res)
    res:header("Content-Length", "3")
    res:write("12345")                                -- long write
end
routes["/caught-finish"] = function(req, res)
    res:header("Content-Length", "3")
    local err = try(function() res:finish("hello") end)
    res:header("Content-Length", nil)
    return "after: " .. err
end
routes["/bad-length"] = function(req, res)
    return try(function() res:header("Content-Length", " 5") end)
        .. try(function() res:header("Content-Length", { "5", "10" }) end)
        .. try(function() res:header("content-length", 7) res:header("Content-Length", nil) end)
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
routes["/bad-header"] = function(req, res)
    return try(function() res:header("X-Bad", "a\r\nInjected: 1") end)
        .. try(function() res:header("Bad Name", "v") end)
end
routes["/sleep"] = function()
    return try(function() tendril.sleep(-1) end) .. try(function() tendril.sleep(0 / 0) end)
        .. try(function() tendril.sleep(math.huge) end)
end
routes["/nul"] = function()
    return try(function() fs.read("/etc/hostname\0.txt") end)
        .. try(function() tendril.run({ "echo", "a\0b" }) end)
        .. try(function() tendril.resolve("localhost\0evil") end)
end
routes["/http-timeout"] = function()
    return try(function() http.request({ url = "http://127.0.0.1:1/", timeout = "x" }) end)
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
        body = get(self.port, "/res-status").body.decode()
        self.assertRegex(body, r"^\S*app\.lua:(\d+): res:status: expected an integer status from 200 to 599, got 101\n"
                               r"\S*app\.lua:\d+: res:status: expected an integer status from 200 to 599, got 200\n"
                               r"no error\n$")

    def test_array_bodies(self):
        r = get(self.port, "/array")
        self.assertEqual((r.status, r.body, r.header("x-a")), (200, b"abcd", "1"))
        self.assertEqual(get(self.port, "/array-body").body, b"xy")

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
        r = get(self.port, "/long")
        self.assertRegex(r.body.decode(), r"app\.lua:\d+: res:write: the body would pass the Content-Length set for it")
        self.assertEqual(get(self.port, "/long-write").status, 500)
        self.assertTrue(self.log_has(r"GET /long-write: \S*app\.lua:%d: res:write: the body would pass"
                                     % line_of("long write")))

    def test_a_caught_error_still_lets_the_handler_answer(self):
        r = get(self.port, "/caught-finish")
        self.assertEqual(r.status, 200)
        self.assertRegex(r.body.decode(), r"^after: \S*app\.lua:\d+: res:finish: the body would pass the "
                                          r"Content-Length set for it\n$")
        body = get(self.port, "/bad-length").body.decode()
        self.assertRegex(body, r"^\S*app\.lua:\d+: res:header: Content-Length takes one number of bytes, not ' 5'\n"
                               r"\S*app\.lua:\d+: res:header: Content-Length takes one number of bytes, not a list\n"
                               r"no error\n$")

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

    def test_bad_header_names_the_header(self):
        body = get(self.port, "/bad-header").body.decode()
        self.assertRegex(body, r"^\S*app\.lua:\d+: res:header: the value of 'X-Bad' holds CR, LF or NUL\n"
                               r"\S*app\.lua:\d+: res:header: 'Bad Name' is not a valid header name\n$")

    def test_sleep_refuses_nonsense(self):
        body = get(self.port, "/sleep").body.decode()
        self.assertEqual(len(re.findall(r"app\.lua:\d+: tendril\.sleep: expected a finite number of seconds >= 0",
                                        body)), 3, body)

    def test_nul_in_c_strings_raises(self):
        body = get(self.port, "/nul").body.decode()
        self.assertRegex(body, r"^\S*app\.lua:\d+: fs\.read: the path holds a NUL byte\n"
                               r"\S*app\.lua:\d+: tendril\.run: argument 2 holds a NUL byte\n"
                               r"\S*app\.lua:\d+: tendril\.resolve: the host name holds a NUL byte\n$")

    def test_library_misuse_points_at_the_caller(self):
        body = get(self.port, "/http-timeout").body.decode()
        self.assertRegex(body, r"^\S*app\.lua:\d+: http\.request: expected timeout to be a finite number >= 0, "
                               r"got x\n$")

    def test_error_values_that_are_not_strings(self):
        self.assertEqual(get(self.port, "/error-table").status, 500)
        self.assertTrue(self.log_has(r"GET /error-table: \(error object is a table value\)"))
        self.assertEqual(get(self.port, "/error-tostring").status, 500)
        self.assertTrue(self.log_has(r"GET /error-tostring: custom!"))


if __name__ == "__main__":
    main()
