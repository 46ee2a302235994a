-- The server's request and response objects (lua/tendril/server.lua), as
-- a handler sees them, through the real HTTP stack of tendril.testing.
local tendril = require "tendril"
local fs = require "tendril.fs"
local http = require "tendril.http"
local testing = require "tendril.testing"

-- Serves handler for the test's body, then closes it.
local function with_app(handler, body)
    local app = testing.app(handler)
    local ok, err = pcall(body, app)
    app:close()
    if not ok then
        error(err, 0)
    end
end

-- The error f raises, or "no error".
local function raised(f)
    local ok, err = pcall(f)
    return ok and "no error" or tostring(err)
end

describe("req", function()
    it("has the request line, the peer and the query", function()
        with_app(function(req)
            local keys = {}
            for k, v in pairs(req.query) do
                keys[#keys + 1] = k .. "=" .. (type(v) == "table" and table.concat(v, ",") or v)
            end
            table.sort(keys)
            return string.format("%s %s %s %s %s %s", req.method, req.target, req.path, req.version,
                req.remote_addr, table.concat(keys, "&"))
        end, function(app)
            assert.are.equal("GET /qu%65ry?a=1&b=x+y%21&a=2&flag&e= /query 1.1 127.0.0.1 a=1,2&b=x y!&e=&flag=",
                assert(app:get("/qu%65ry?a=1&b=x+y%21&a=2&flag&e=")).body)
        end)
    end)

    it("has headers by lower-case name", function()
        with_app(function(req)
            return req.headers["x-case"] .. "|" .. tostring(req.headers["X-Case"])
        end, function(app)
            assert.are.equal("Mixed|nil", assert(app:get("/", { headers = { ["X-CASE"] = "Mixed" } })).body)
        end)
    end)

    it("reads the body whole or in pieces", function()
        with_app(function(req)
            if req.path == "/whole" then
                return req:body()
            end
            local pieces = {}
            while true do
                local piece, err = req:read(1000)
                assert(not err, err)
                if not piece then
                    break
                end
                pieces[#pieces + 1] = #piece
            end
            return table.concat(pieces, ",")
        end, function(app)
            assert.are.equal("payload", assert(app:post("/whole", "payload")).body)
            local big = string.rep("x", 2500)
            assert.are.equal("1000,1000,500", assert(app:post("/pieces", big)).body)
        end)
    end)
end)

describe("a handler's answer", function()
    it("takes every return form", function()
        with_app(function(req)
            local p = req.path
            if p == "/status" then
                return 204
            elseif p == "/full" then
                return 404, { ["X-Why"] = "missing" }, "nope"
            elseif p == "/nothing" then
                return
            elseif p == "/array" then
                return 200, { ["X-A"] = "1" }, { "a", { "b", { "c" } }, "d" }
            end
            return { "x", "y" }
        end, function(app)
            local r = assert(app:get("/status"))
            assert.are.same({ 204, nil, "" }, { r.status, r.headers["content-length"], r.body })
            r = assert(app:get("/full"))
            assert.are.same({ 404, "missing", "nope" }, { r.status, r.headers["x-why"], r.body })
            r = assert(app:get("/nothing"))
            assert.are.same({ 200, "0", "" }, { r.status, r.headers["content-length"], r.body })
            r = assert(app:get("/array"))
            assert.are.same({ 200, "1", "abcd" }, { r.status, r.headers["x-a"], r.body })
            assert.are.equal("xy", assert(app:get("/")).body)
        end)
    end)

    it("streams with res:write, and res:finish ends it", function()
        with_app(function(req, res)
            if req.path == "/finish" then
                res:status(201)
                res:header("Content-Type", "application/json")
                res:finish('{"ok":true}')
                return "ignored"
            end
            res:header("X-A", "1")
            res:header("x-a", "2") -- replaces
            for i = 1, 3 do
                assert(res:write("chunk" .. i .. ";"))
            end
        end, function(app)
            local r = assert(app:get("/"))
            assert.are.same({ "chunked", "2", "chunk1;chunk2;chunk3;" },
                { r.headers["transfer-encoding"], r.headers["x-a"], r.body })
            r = assert(app:get("/finish"))
            assert.are.same({ 201, "application/json", '{"ok":true}' },
                { r.status, r.headers["content-type"], r.body })
        end)
    end)

    it("raises at the handler's line for a status, header or length it cannot send", function()
        local errors
        with_app(function(_, res)
            errors = {
                raised(function() res:status(101) end),
                raised(function() res:status("200") end),
                raised(function() res:header("X-Bad", "a\r\nInjected: 1") end),
                raised(function() res:header("Bad Name", "v") end),
                raised(function() res:header("Content-Length", " 5") end),
                raised(function() res:header("Content-Length", { "5", "10" }) end),
                raised(function() res:status(201) end),
                raised(function()
                    res:header("content-length", 7)
                    res:header("Content-Length", nil)
                end),
            }
            res:header("Content-Length", "3")
            errors[#errors + 1] = raised(function() res:write("12345") end)
            errors[#errors + 1] = raised(function() res:finish("hello") end)
            res:header("Content-Length", nil)
            return "still answers"
        end, function(app)
            assert.are.equal("still answers", assert(app:get("/")).body)
        end)
        local expected = {
            "res:status: expected an integer status from 200 to 599, got 101",
            "res:status: expected an integer status from 200 to 599, got 200",
            "res:header: the value of 'X-Bad' holds CR, LF or NUL",
            "res:header: 'Bad Name' is not a valid header name",
            "res:header: Content-Length takes one number of bytes, not ' 5'",
            "res:header: Content-Length takes one number of bytes, not a list",
            false, -- what a handler may do: no error
            false,
            "res:write: the body would pass the Content-Length set for it",
            "res:finish: the body would pass the Content-Length set for it",
        }
        for i, text in ipairs(expected) do
            if text then
                assert.are.equal("server_spec.lua:", errors[i]:match("server_spec%.lua:"), errors[i])
                assert.are.equal(text, errors[i]:match("^%S+:%d+: (.*)$"))
            else
                assert.are.equal("no error", errors[i])
            end
        end
    end)
end)

describe("the library's misuse errors", function()
    it("name the caller's line and the cause", function()
        local got = {
            raised(function() tendril.sleep(-1) end),
            raised(function() tendril.sleep(0 / 0) end),
            raised(function() tendril.sleep(math.huge) end),
            raised(function() fs.read("/etc/hostname\0.txt") end),
            raised(function() tendril.run({ "echo", "a\0b" }) end),
            raised(function() tendril.resolve("localhost\0evil") end),
            raised(function() http.request({ url = "http://127.0.0.1:1/", timeout = "x" }) end),
        }
        local expected = {
            "tendril%.sleep: expected a finite number of seconds >= 0",
            "tendril%.sleep: expected a finite number of seconds >= 0",
            "tendril%.sleep: expected a finite number of seconds >= 0",
            "fs%.read: the path holds a NUL byte$",
            "tendril%.run: argument 2 holds a NUL byte$",
            "tendril%.resolve: the host name holds a NUL byte$",
            "http%.request: expected timeout to be a finite number >= 0, got x$",
        }
        for i, pattern in ipairs(expected) do
            assert.matches("^%S*server_spec%.lua:%d+: " .. pattern, got[i])
        end
    end)

    it("of tendril.testing name the spec's line", function()
        with_app(function() return "x" end, function(app)
            assert.matches("^%S*server_spec%.lua:%d+: app:post: http%.request: expected body to be a string",
                raised(function() return app:post("/", {}) end))
            assert.matches("^%S*server_spec%.lua:%d+: app:get: the path must start with '/'",
                raised(function() return app:get("x") end))
        end)
    end)
end)
