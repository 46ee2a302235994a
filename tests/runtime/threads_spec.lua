-- Light threads, and the coroutine relay: a script's own coroutines may
-- wait inside a task; a yield C cannot pass on is a clear error.
local tendril = require "tendril"
local testing = require "tendril.testing"

describe("tendril.spawn", function()
    it("runs threads side by side and joins their results", function()
        local t0 = tendril.now()
        local threads = {}
        for i = 1, 3 do
            threads[i] = tendril.spawn(function(x)
                tendril.sleep(0.5)
                return x, x * 10
            end, i)
        end
        for i = 1, 3 do
            assert.are.same({ true, i, i * 10 }, { threads[i]:join() })
        end
        local took = tendril.now() - t0
        -- About one sleep, not three (timers keep to the millisecond).
        assert.is_true(took >= 0.499 and took < 1.2, took)
    end)

    it("returns a thread's error, and times out a join without ending the thread", function()
        local th = tendril.spawn(function()
            tendril.sleep(0.01)
            error("thread boom")
        end)
        local ok, err = th:join()
        assert.is_false(ok)
        assert.matches("threads_spec%.lua:%d+: thread boom$", err)
        local slow = tendril.spawn(function()
            tendril.sleep(0.3)
            return "late"
        end)
        assert.are.same({ false, "timeout" }, { slow:join(0.05) })
        assert.is_false(slow:done())
        assert.are.same({ true, "late" }, { slow:join() })
        assert.is_true(slow:done())
    end)

    it("runs a request's thread on after the answer", function()
        local done = false
        local app = testing.app(function()
            tendril.spawn(function()
                tendril.sleep(0.5)
                done = true
            end)
            return "answered first"
        end)
        assert.are.equal("answered first", assert(app:get("/")).body)
        assert.is_false(done)
        local t0 = tendril.now()
        while not done and tendril.now() - t0 < 5 do
            tendril.sleep(0.05)
        end
        assert.is_true(done)
        app:close()
    end)
end)

describe("timers", function()
    it("keep the loop serving while threads sleep briefly between bursts of work", function()
        -- A timer started late in a long turn must not make the timers
        -- phase run for ever (moving the loop's clock inside it did).
        local function spin(s)
            local t0 = os.clock()
            while os.clock() - t0 < s do
            end
        end
        local app = testing.app(function() return "pong" end)
        local threads = {}
        for i = 1, 2 do
            threads[i] = tendril.spawn(function()
                local t0 = tendril.now()
                while tendril.now() - t0 < 0.6 do
                    spin(0.003)
                    tendril.sleep(0.001)
                end
            end)
        end
        tendril.sleep(0.05)
        local t0 = tendril.now()
        assert.are.equal("pong", assert(app:get("/")).body)
        local took = tendril.now() - t0
        assert.is_true(took < 0.4, took)
        for i = 1, 2 do
            assert(threads[i]:join())
        end
        app:close()
    end)

    it("last at least as long as asked, even started late in a long turn", function()
        local t0 = tendril.now()
        local clock0 = os.clock()
        while os.clock() - clock0 < 0.05 do
        end
        tendril.sleep(0.1)
        local took = tendril.now() - t0
        assert.is_true(took >= 0.149, took)
    end)
end)

describe("the coroutine relay", function()
    it("lets a script's coroutines wait, as generators and as resumed ones", function()
        local gen = coroutine.wrap(function()
            for i = 1, 3 do
                tendril.sleep(0.01)
                coroutine.yield(i)
            end
            return "end"
        end)
        assert.are.same({ 1, 2, 3, "end" }, { gen(), gen(), gen(), gen() })
        local app = testing.app(function() return "from the app" end)
        local co = coroutine.create(function(a)
            local b = coroutine.yield(a + 1)
            tendril.sleep(0.01)
            local res = assert(require("tendril.http").get(app.url .. "/"))
            return b .. ":" .. res.body
        end)
        assert.are.same({ true, 2 }, { coroutine.resume(co, 1) })
        assert.are.same({ true, "x:from the app" }, { coroutine.resume(co, "x") })
        assert.are.equal("dead", coroutine.status(co))
        app:close()
    end)

    it("waits through pcall and metamethods", function()
        local ok, v = pcall(function()
            tendril.sleep(0.01)
            return "through pcall"
        end)
        assert.are.same({ true, "through pcall" }, { ok, v })
        local mt = setmetatable({}, { __index = function(_, k)
            tendril.sleep(0.01)
            return k .. "!"
        end })
        assert.are.equal("meta!", mt.meta)
    end)

    it("says where a wait cannot yield across C", function()
        local ok, err = pcall(table.sort, { 3, 1, 2 }, function(a, b)
            tendril.sleep(0)
            return a < b
        end)
        assert.is_false(ok)
        assert.matches("threads_spec%.lua:%d+: tendril%.sleep: cannot yield across a C call", err)
        ok, err = pcall(string.gsub, "abc", "%w", function()
            tendril.sleep(0)
        end)
        assert.is_false(ok)
        assert.matches("threads_spec%.lua:%d+: tendril%.sleep: cannot yield across a C call", err)
    end)

    it("refuses a wait in a finalizer", function()
        local msg = "finalizer did not run"
        local p = newproxy(true)
        getmetatable(p).__gc = function()
            local ok, err = pcall(tendril.sleep, 0.01)
            msg = tostring(ok) .. " " .. err
        end
        p = nil -- luacheck: ignore 311
        collectgarbage("collect")
        assert.are.equal("false tendril.sleep: cannot yield across a C call "
            .. "(a metamethod, iterator or callback run by C)", msg)
    end)

    it("does not let another resume a coroutine that waits in a tendril call", function()
        local co = coroutine.create(function()
            local ok, err = tendril.sleep(0.3)
            return "slept " .. tostring(ok) .. " " .. tostring(err)
        end)
        local th = tendril.spawn(function()
            return coroutine.resume(co)
        end)
        tendril.sleep(0.05) -- the thread waits in its sleep now
        local ok, err = pcall(coroutine.resume, co, "intruder")
        assert.is_false(ok)
        assert.matches("coroutine%.resume: the coroutine is waiting in a tendril call", err)
        assert.are.same({ true, true, "slept true nil" }, { th:join() })
    end)
end)
