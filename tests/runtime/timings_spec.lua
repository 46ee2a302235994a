-- req:timings(): a request's time by where it went, counted by the runtime
-- for every task of the request.
local tendril = require "tendril"
local fs = require "tendril.fs"
local tcp = require "tendril.tcp"
local testing = require "tendril.testing"

describe("req:timings()", function()
    local app, seen
    local path = os.tmpname()

    before_each(function()
        seen = nil
        app = testing.app(function(req)
            if req.path == "/hello" then
                return "hello"
            end
            assert(fs.write(path, "x"))
            assert(fs.read(path))
            assert(tendril.run({ "true" }))
            -- A name no other spec asks for: not in the cache yet.
            assert(tendril.resolve("127.200." .. math.random(1, 60000)))
            local s = assert(tcp.connect("127.0.0.1", app.port))
            assert(s:send("GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
            assert(s:receive("*a"))
            s:close()
            -- A thread's wait counts too; waiting for it is "other".
            local th = tendril.spawn(function() tendril.sleep(0.02) end)
            assert(th:join())
            tendril.sleep(0.03)
            seen = req:timings()
            return "ok"
        end)
    end)

    after_each(function()
        app:close()
        os.remove(path)
    end)

    it("accounts each kind of wait, and the time in Lua", function()
        local res = assert(app:get("/"))
        assert.are.equal("ok", res.body)
        local t = seen
        assert.is_true(t.sleep >= 0.045 and t.sleep < 1, "sleep " .. t.sleep)
        assert.is_true(t.other >= 0.015 and t.other < 1, "other " .. t.other)
        for _, kind in ipairs({ "fs", "run", "tcp", "dns", "lua" }) do
            assert.is_true(t[kind] > 0 and t[kind] < 1, kind .. " " .. t[kind])
        end
        assert.are.equal(0, t.http)
        assert.are.equal(0, t.ws)
        assert.is_true(t.total >= 0.05 and t.total < 2, "total " .. t.total)
    end)

    it("counts tendril.http's waits as http, not tcp", function()
        app:close()
        local upstream = testing.app(function(req)
            if req.path == "/hello" then
                tendril.sleep(0.03)
                return "hello"
            end
            local res = assert(require("tendril.http").get(app.url .. "/hello"))
            seen = req:timings()
            return res.body
        end)
        app = upstream
        assert.are.equal("hello", assert(app:get("/")).body)
        assert.is_true(seen.http >= 0.025 and seen.http < 1, "http " .. seen.http)
        assert.are.equal(0, seen.tcp)
    end)

    it("is nil, closed once the request is over", function()
        local kept
        app:close()
        app = testing.app(function(req)
            kept = req
            return "x"
        end)
        assert(app:get("/"))
        local t, err = kept:timings()
        assert.is_nil(t)
        assert.are.equal("closed", err)
    end)
end)
