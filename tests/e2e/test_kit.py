"""The prototyping kit through the real server: tendril.router (404, 405
and Allow, HEAD, parameters, wildcards, mounts, middleware), cookies both
ways, CORS preflights, and the HTTP client's Set-Cookie list."""
import os
import re
import subprocess
import tempfile

from harness import BIN, ServerTestCase, Server, TestCase, get, main, request, STATS_FILES, assert_nothing_left

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

APP = r'''
local http = require "tendril.http"
local url = require "tendril.url"
local new_router = require("tendril.router").new

local router, api = new_router(), new_router()
local order = {}

router:use(require("tendril.cors"){ origins = { "https://app.example" }, headers = { "Content-Type" },
    max_age = 600 })
router:use(function(req, res, next)
    order = { "outer" }
    res:header("X-Outer", "1")
    if req.headers["x-block"] then
        return 403, nil, "blocked by middleware\n"
    end
    return next()
end)
api:use(function(req, res, next)
    order[#order + 1] = "api"
    return next()
end)

router:get("/stats", function() return require("stats_line")() end)
router:get("/order", function() return table.concat(order, ",") end)
router:get("/users/me", function() return "static me" end)
router:get("/users/:id", function(req) return "user [" .. req.params.id .. "]" end)
router:put("/users/:id", function(req) return "put " .. req.params.id end)
router:get("/files/*path", function(req) return "file [" .. req.params.path .. "]" end)
router:get("/head", function(req, res)
    res:header("X-Method", req.method)
    return "a body HEAD must not carry\n"
end)
router:get("/cookies", function(req)
    local names = {}
    for k, v in pairs(req.cookies) do names[#names + 1] = k .. "=" .. v end
    table.sort(names)
    return table.concat(names, "&")
end)
router:post("/login", function(req, res)
    res:cookie("session", "abc123", { path = "/", http_only = true, same_site = "Lax", max_age = 60 })
    res:cookie("theme", url.encode("dark blue"))
    return "welcome"
end)
router:get("/bad-return", function(req, res)
    return 99
end)
router:get("/bad-cookie", function(req, res)
    res:cookie("bad name", "x")
    return "unreachable"
end)
router:get("/client", function(req)
    local r, err = http.get("http://127.0.0.1:" .. req.query.port .. "/multi")
    if not r then return 502, nil, err end
    local sc = r.headers["set-cookie"]
    return type(sc) .. " " .. #sc .. " " .. table.concat(sc, " | ") .. " / x-dup=" .. r.headers["x-dup"]
end)
router:get("/multi", function(req, res)
    res:cookie("a", "1", { expires = 0 })
    res:cookie("b", "2")
    res:header("X-Dup", { "p", "q" })
    return "two cookies"
end)

api:get("/", function() return "api root" end)
api:get("/order", function() return table.concat(order, ",") end)
api:get("/items/:n", function(req) return "item " .. req.params.n .. " of " .. req.params.shop end)
router:mount("/shops/:shop", api)

return router
'''


class KitTest(ServerTestCase):
    APP = APP
    FILES = STATS_FILES

    def test_params_precedence_and_wildcard(self):
        self.assertEqual(get(self.port, "/users/me").body, b"static me")
        self.assertEqual(get(self.port, "/users/42").body, b"user [42]")
        # Parameters come decoded (req.path is).
        self.assertEqual(get(self.port, "/users/a%20b").body, b"user [a b]")
        self.assertEqual(get(self.port, "/files/a/b/c.txt").body, b"file [a/b/c.txt]")
        self.assertEqual(get(self.port, "/files/").body, b"file []")
        self.assertEqual(get(self.port, "/files").status, 404)

    def test_404_and_405_with_allow(self):
        r = get(self.port, "/nowhere")
        self.assertEqual((r.status, r.body), (404, b"not found\n"))
        self.assertEqual(get(self.port, "/users/42/").status, 404)  # trailing slash is another path
        r, rd = request(self.port, "DELETE", "/users/42")
        rd.sock.close()
        self.assertEqual(r.status, 405)
        self.assertEqual(r.header("allow"), "GET, HEAD, PUT")
        # The middleware ran for the 405 too.
        self.assertEqual(r.header("x-outer"), "1")
        r, rd = request(self.port, "PUT", "/users/7")
        rd.sock.close()
        self.assertEqual(r.body, b"put 7")

    def test_head_is_served_by_get_without_a_body(self):
        r, rd = request(self.port, "HEAD", "/head")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("x-method"), "HEAD")
        self.assertEqual(r.header("content-length"), str(len("a body HEAD must not carry\n")))
        self.assertEqual(r.body, b"")
        # The connection is still in step: the next answer is the next request's.
        rd.sock.sendall(b"GET /users/me HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(rd.response().body, b"static me")
        rd.sock.close()

    def test_middleware_order_and_ending_early(self):
        r = get(self.port, "/shops/s1/items/3")
        self.assertEqual(r.body, b"item 3 of s1")
        self.assertEqual(get(self.port, "/order").body, b"outer")
        get(self.port, "/shops/s1/items/3")
        r = get(self.port, "/shops/s1/")
        self.assertEqual(r.body, b"api root")
        self.assertEqual(get(self.port, "/shops/s1").body, b"api root")
        r = get(self.port, "/users/me", headers={"X-Block": "1"})
        self.assertEqual((r.status, r.body), (403, b"blocked by middleware\n"))

    def test_mounted_middleware_runs_after_the_parents(self):
        r = get(self.port, "/shops/x/order")
        self.assertEqual((r.body, r.header("x-outer")), (b"outer,api", "1"))

    def test_cookies_in_and_out(self):
        r, rd = request(self.port, "POST", "/login", body=b"")
        rd.sock.close()
        self.assertEqual(r.header_list("set-cookie"),
                         ["session=abc123; Path=/; Max-Age=60; HttpOnly; SameSite=Lax", "theme=dark%20blue"])
        r = get(self.port, "/cookies", headers={"Cookie": "session=abc123; theme=dark%20blue; session=late"})
        self.assertEqual(r.body, b"session=abc123&theme=dark%20blue")

    def test_a_bad_cookie_name_is_a_500_naming_the_line(self):
        r = get(self.port, "/bad-cookie")
        self.assertEqual(r.status, 500)
        self.assertRegex(self.server.stderr(), r"app\.lua:\d+: res:cookie: 'bad name' is not a valid cookie name")

    def test_a_routes_bad_return_names_the_routes_line(self):
        r = get(self.port, "/bad-return")
        self.assertEqual(r.status, 500)
        line = APP[:APP.index('router:get("/bad-return"')].count("\n") + 1
        self.assertIn("app.lua:%d: the handler returned status 99" % line, self.server.stderr())

    def test_the_client_returns_set_cookie_as_a_list(self):
        r = get(self.port, "/client?port=%d" % self.port)
        self.assertEqual(r.body.decode(), "table 2 a=1; Expires=Thu, 01 Jan 1970 00:00:00 GMT | b=2 / x-dup=p, q")

    def test_cors_preflight_and_simple_request(self):
        r, rd = request(self.port, "OPTIONS", "/users/1", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type"})
        rd.sock.close()
        self.assertEqual(r.status, 204)
        self.assertEqual(r.header("access-control-allow-origin"), "https://app.example")
        self.assertEqual(r.header("access-control-allow-methods"), "GET, HEAD, PUT, PATCH, POST, DELETE")
        self.assertEqual(r.header("access-control-allow-headers"), "Content-Type")
        self.assertEqual(r.header("access-control-max-age"), "600")
        self.assertEqual(r.header("vary"), "Origin")
        r = get(self.port, "/users/1", headers={"Origin": "https://app.example"})
        self.assertEqual((r.body, r.header("access-control-allow-origin")), (b"user [1]", "https://app.example"))
        # Another origin: no CORS headers, and its preflight meets the router (405: no OPTIONS route).
        r, rd = request(self.port, "OPTIONS", "/users/1", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"})
        rd.sock.close()
        self.assertEqual(r.status, 405)
        self.assertIsNone(r.header("access-control-allow-origin"))

    def test_zz_nothing_left(self):
        assert_nothing_left(self, self.port)


class HandlerCheckTest(TestCase):
    def run_app(self, text):
        d = tempfile.mkdtemp(prefix="tendril-kit-")
        path = os.path.join(d, "app.lua")
        with open(path, "w") as f:
            f.write(text)
        return subprocess.run([BIN, "serve", path, "--port", "0"], capture_output=True, text=True, timeout=20)

    def test_a_plain_table_is_still_refused(self):
        r = self.run_app("return {}\n")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("did not return a handler function (it returned table)", r.stderr)

    def test_a_callable_table_serves_and_its_errors_name_its_code(self):
        app = ('return setmetatable({}, { __call = function(self, req, res)\n'
               '    if req.path == "/bad" then return 99 end\n'
               '    return "called " .. req.path\nend })\n')
        with Server(app) as srv:
            self.assertEqual(get(srv.port, "/x").body, b"called /x")
            self.assertEqual(get(srv.port, "/bad").status, 500)
        self.assertRegex(srv.stderr(), r"app\.lua:1: the handler returned status 99")


class ReadmeApiTest(TestCase):
    def test_the_readme_building_an_api_block(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            text = f.read()
        block = next(b for b in re.findall(r"```lua\n(.*?)```", text, re.S) if "tendril.router" in b)
        with Server(block) as srv:
            p = srv.port
            self.assertEqual(get(p, "/v1/todos").body, b"write the README\n")
            self.assertEqual(get(p, "/v1/todos/1").body, b"write the README\n")
            self.assertEqual(get(p, "/v1/todos/9").status, 404)
            r, rd = request(p, "POST", "/v1/todos", body=b"buy milk")
            rd.sock.close()
            self.assertEqual((r.status, r.body), (401, b"log in first\n"))
            r, rd = request(p, "POST", "/login", body=b"")
            rd.sock.close()
            cookie = r.header("set-cookie")
            self.assertEqual(cookie, "session=s3cret; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax")
            r, rd = request(p, "POST", "/v1/todos", body=b"buy milk", headers={"Cookie": cookie.split(";")[0]})
            rd.sock.close()
            self.assertEqual((r.status, r.header("location")), (201, "/v1/todos/2"))
            self.assertEqual(get(p, "/v1/todos").body, b"write the README\nbuy milk\n")
            r, rd = request(p, "DELETE", "/v1/todos", headers={"Cookie": cookie.split(";")[0]})
            rd.sock.close()
            self.assertEqual((r.status, r.header("allow")), (405, "GET, HEAD, POST"))
            r, rd = request(p, "OPTIONS", "/v1/todos", headers={
                "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
            rd.sock.close()
            self.assertEqual((r.status, r.header("access-control-allow-origin"),
                              r.header("access-control-allow-credentials")), (204, "https://app.example", "true"))


if __name__ == "__main__":
    main()
