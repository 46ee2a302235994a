-- tendril.router: matching, precedence, parameters, 404/405/HEAD,
-- middleware order and mounts, driven with plain req/res tables.
-- luacheck: ignore 212 (handlers take req, res, next whether they use them)
local router_mod = require "tendril.router"

-- What the router answers for method and path: status, headers, body (a
-- route's own return values pass through as they are).
local function call(r, method, path)
    local req, res = { method = method, path = path }, {}
    return r(req, res), req
end

local function answer(r, method, path)
    local req = { method = method, path = path }
    return { r(req, {}) }, req
end

describe("tendril.router", function()
    local r
    before_each(function()
        r = router_mod.new()
    end)

    describe("matching", function()
        it("matches literal paths and nothing else", function()
            r:get("/", function() return "root" end)
            r:get("/a/b", function() return "ab" end)
            assert.are.equal("root", call(r, "GET", "/"))
            assert.are.equal("ab", call(r, "GET", "/a/b"))
            assert.are.equal(404, call(r, "GET", "/a"))
            assert.are.equal(404, call(r, "GET", "/a/b/c"))
        end)

        it("gives parameters in req.params", function()
            r:get("/users/:id/posts/:post", function(req) return req.params.id .. "," .. req.params.post end)
            local body, req = call(r, "GET", "/users/42/posts/x y")
            assert.are.equal("42,x y", body)
            assert.are.same({ id = "42", post = "x y" }, req.params)
        end)

        it("never matches a parameter with an empty segment", function()
            r:get("/users/:id", function() return "user" end)
            assert.are.equal(404, call(r, "GET", "/users/"))
            assert.are.equal(404, call(r, "GET", "/users"))
        end)

        it("gives the rest of the path to a final wildcard, empty after a trailing slash", function()
            r:get("/files/*path", function(req) return "[" .. req.params.path .. "]" end)
            assert.are.equal("[a/b/c.txt]", call(r, "GET", "/files/a/b/c.txt"))
            assert.are.equal("[x]", call(r, "GET", "/files/x"))
            assert.are.equal("[]", call(r, "GET", "/files/"))
            assert.are.equal(404, call(r, "GET", "/files"))
        end)

        it("tells /a from /a/", function()
            r:get("/a", function() return "a" end)
            r:get("/b/", function() return "b/" end)
            assert.are.equal("a", call(r, "GET", "/a"))
            assert.are.equal(404, call(r, "GET", "/a/"))
            assert.are.equal("b/", call(r, "GET", "/b/"))
            assert.are.equal(404, call(r, "GET", "/b"))
        end)
    end)

    describe("precedence", function()
        it("prefers literal over parameter over wildcard whatever the order", function()
            r:get("/u/*rest", function() return "wild" end)
            r:get("/u/:id", function() return "param" end)
            r:get("/u/me", function() return "static" end)
            assert.are.equal("static", call(r, "GET", "/u/me"))
            assert.are.equal("param", call(r, "GET", "/u/7"))
            assert.are.equal("wild", call(r, "GET", "/u/7/x"))
        end)

        it("backtracks from a literal branch that dead-ends to a parameter", function()
            r:get("/a/b/c", function() return "abc" end)
            r:get("/a/:x/d", function(req) return "x=" .. req.params.x end)
            assert.are.equal("abc", call(r, "GET", "/a/b/c"))
            assert.are.equal("x=b", call(r, "GET", "/a/b/d"))
        end)

        it("backtracks to a wildcard when parameters dead-end, with the right values", function()
            r:get("/a/:x/:y/end", function() return "params" end)
            r:get("/a/*rest", function(req) return "rest=" .. req.params.rest end)
            assert.are.equal("rest=1/2/no", call(r, "GET", "/a/1/2/no"))
        end)

        it("backtracks when the literal branch lacks the method", function()
            r:post("/items/new", function() return "post new" end)
            r:get("/items/:id", function(req) return "get " .. req.params.id end)
            assert.are.equal("get new", call(r, "GET", "/items/new"))
            assert.are.equal("post new", call(r, "POST", "/items/new"))
        end)
    end)

    describe("methods", function()
        it("answers 405 with Allow listing the methods, HEAD with GET", function()
            r:get("/x", function() return "" end)
            r:post("/x", function() return "" end)
            local a = answer(r, "DELETE", "/x")
            assert.are.equal(405, a[1])
            assert.are.equal("GET, HEAD, POST", a[2].Allow)
        end)

        it("lists OPTIONS only when declared, and methods from every matching route", function()
            r:put("/x/:id", function() return "" end)
            r:options("/x/1", function() return "" end)
            local a = answer(r, "GET", "/x/1")
            assert.are.equal(405, a[1])
            assert.are.equal("OPTIONS, PUT", a[2].Allow)
            assert.are.equal("PUT", answer(r, "GET", "/x/2")[2].Allow)
        end)

        it("serves HEAD from the GET route unless HEAD is declared", function()
            r:get("/g", function(req) return "get:" .. req.method end)
            r:get("/h", function() return "get" end)
            r:route("HEAD", "/h", function() return "head" end)
            assert.are.equal("get:HEAD", call(r, "HEAD", "/g"))
            assert.are.equal("head", call(r, "HEAD", "/h"))
        end)

        it("takes a list of methods in route, and any takes every method", function()
            r:route({ "GET", "POST" }, "/m", function(req) return req.method end)
            r:any("/any", function(req) return "any " .. req.method end)
            assert.are.equal("POST", call(r, "POST", "/m"))
            assert.are.equal(405, call(r, "PUT", "/m"))
            assert.are.equal("any PURGE", call(r, "PURGE", "/any"))
        end)

        it("passes a route's status, headers and body through", function()
            r:post("/c", function() return 201, { ["X-A"] = "1" }, "made" end)
            assert.are.same({ 201, { ["X-A"] = "1" }, "made" }, answer(r, "POST", "/c"))
        end)
    end)

    describe("declaring", function()
        it("raises on a duplicate route, naming it, at the caller's line", function()
            r:get("/u/:id", function() end)
            local ok, err = pcall(function() r:get("/u/:name", function() end) end)
            assert.is_false(ok)
            assert.matches("router_spec.lua:%d+: router:get: GET /u/:name is declared already", err)
            r:post("/u/:name", function() end) -- another method is fine
        end)

        it("raises on bad patterns and handlers", function()
            assert.matches("router_spec.lua:%d+: router:get: expected a pattern starting with '/', got nope",
                select(2, pcall(function() r:get("nope", function() end) end)))
            assert.matches("router_spec.lua:%d+: router:use: expected a handler function, got string",
                select(2, pcall(function() r:use("x") end)))
            assert.matches("must be the last segment", select(2, pcall(r.get, r, "/*a/b", function() end)))
            assert.matches("appears twice", select(2, pcall(r.get, r, "/:a/:a", function() end)))
            assert.matches("needs a name", select(2, pcall(r.get, r, "/:", function() end)))
            assert.matches("expected a handler function, got nil", select(2, pcall(r.get, r, "/z")))
            assert.matches("router:route: 'G T' is not a method", select(2, pcall(r.route, r, "G T", "/z", print)))
            assert.matches("router:mount: expected a router", select(2, pcall(r.mount, r, "/z", {})))
        end)
    end)

    describe("route options", function()
        it("sets the route's body limit before the middleware runs", function()
            local log = {}
            local function req_of(path)
                return { method = "POST", path = path, set_max_body_bytes = function(self, n)
                    log[#log + 1] = "limit " .. n
                    return self
                end }
            end
            r:use(function(req, res, nxt) log[#log + 1] = "mw" ; return nxt() end)
            r:post("/up", { max_body_bytes = 5000 }, function() log[#log + 1] = "route" ; return "ok" end)
            r:post("/plain", function() log[#log + 1] = "plain" ; return "ok" end)
            assert.equal("ok", r(req_of("/up"), {}))
            assert.same({ "limit 5000", "mw", "route" }, log)
            log = {}
            assert.equal("ok", r(req_of("/plain"), {}))
            assert.same({ "mw", "plain" }, log)
        end)

        it("raises on unknown options and bad limits at the caller's line", function()
            assert.matches(
                "router_spec.lua:%d+: router:post: unknown route option 'max_body' %(known: max_body_bytes%)",
                select(2, pcall(function() r:post("/a", { max_body = 1 }, print) end)))
            assert.matches("router_spec.lua:%d+: router:any: max_body_bytes must be a number of bytes >= 0, got %-1",
                select(2, pcall(function() r:any("/a", { max_body_bytes = -1 }, print) end)))
            assert.matches("router:route: expected the route's options as a table, got string",
                select(2, pcall(r.route, r, "GET", "/a", "x", print)))
        end)
    end)

    describe("middleware", function()
        it("runs in order of use, around the route, for 404s too", function()
            local log = {}
            r:use(function(req, res, nxt)
                log[#log + 1] = "a"
                local x = nxt()
                log[#log + 1] = "a-after"
                return x
            end)
            r:use(function(req, res, nxt) log[#log + 1] = "b" ; return nxt() end)
            r:get("/", function() log[#log + 1] = "route" ; return "ok" end)
            assert.are.equal("ok", call(r, "GET", "/"))
            assert.are.same({ "a", "b", "route", "a-after" }, log)
            log = {}
            assert.are.equal(404, call(r, "GET", "/missing"))
            assert.are.same({ "a", "b", "a-after" }, log)
        end)

        it("ends the request when next is not called: its return is the answer", function()
            local reached = false
            r:use(function() return 401, { ["WWW-Authenticate"] = "Basic" }, "who?" end)
            r:get("/", function() reached = true ; return "secret" end)
            assert.are.same({ 401, { ["WWW-Authenticate"] = "Basic" }, "who?" }, answer(r, "GET", "/"))
            assert.is_false(reached)
        end)

        it("passes the route's answer on when it calls next and returns nothing", function()
            r:use(function(req, res, nxt) nxt() end)
            r:get("/", function() return 202, nil, "inner" end)
            assert.are.same({ 202, nil, "inner" }, answer(r, "GET", "/"))
        end)

        it("sees req.params before the route", function()
            local seen
            r:use(function(req, res, nxt) seen = req.params.id ; return nxt() end)
            r:get("/p/:id", function() return "" end)
            call(r, "GET", "/p/9")
            assert.are.equal("9", seen)
        end)

        it("tells the server whose answer it is (res._handler), for its error messages", function()
            local route = function() return "r" end
            local gate = function(req, res, nxt) if req.path == "/no" then return 403 end return nxt() end
            local pass = function(req, res, nxt) return nxt() end
            r:use(pass)
            r:use(gate)
            r:get("/", route)
            r:get("/no", route)
            local res = {}
            r({ method = "GET", path = "/" }, res)
            assert.are.equal(route, res._handler)
            res = {}
            r({ method = "GET", path = "/no" }, res)
            assert.are.equal(gate, res._handler)
        end)

        it("raises when next is called twice", function()
            r:use(function(req, res, nxt) nxt() ; nxt() end)
            r:get("/", function() return "" end)
            assert.has_error(function() call(r, "GET", "/") end)
        end)
    end)

    describe("mount", function()
        it("serves another router's routes under a prefix, its middleware after the parent's", function()
            local log = {}
            local api = router_mod.new()
            api:use(function(req, res, nxt) log[#log + 1] = "api" ; return nxt() end)
            api:get("/", function() return "api root" end)
            api:get("/users/:id", function(req) return "user " .. req.params.id end)
            r:use(function(req, res, nxt) log[#log + 1] = "top" ; return nxt() end)
            r:get("/", function() return "top root" end)
            r:mount("/api", api)
            assert.are.equal("user 5", call(r, "GET", "/api/users/5"))
            assert.are.same({ "top", "api" }, log)
            assert.are.equal("api root", call(r, "GET", "/api"))
            assert.are.equal("api root", call(r, "GET", "/api/"))
            assert.are.equal("top root", call(r, "GET", "/"))
            log = {}
            assert.are.equal(404, call(r, "GET", "/api/nope"))
            assert.are.same({ "top" }, log)
            assert.are.equal("GET, HEAD", answer(r, "POST", "/api/users/1")[2].Allow)
        end)

        it("mounts at / and still matches nothing for a target that is not a path", function()
            local sub = router_mod.new()
            sub:any("/", function() return "sub root" end)
            r:mount("/", sub)
            assert.are.equal("sub root", call(r, "GET", "/"))
            assert.are.equal(404, call(r, "OPTIONS", "*"))
        end)

        it("gives prefix parameters to the mounted routes, and the parent's literals win", function()
            local sub = router_mod.new()
            sub:get("/posts/:post", function(req) return req.params.user .. "/" .. req.params.post end)
            r:get("/u/:user/posts/top", function() return "parent" end)
            r:mount("/u/:user", sub)
            assert.are.equal("ann/7", call(r, "GET", "/u/ann/posts/7"))
            assert.are.equal("parent", call(r, "GET", "/u/ann/posts/top"))
        end)
    end)

    it("costs the same with many routes (a tree, not a list)", function()
        for i = 1, 1000 do
            r:get("/r" .. i .. "/:id", function() return "r" .. i end)
        end
        assert.are.equal("r1000", call(r, "GET", "/r1000/x"))
        assert.are.equal("r1", call(r, "GET", "/r1/x"))
    end)
end)
