-- tendril.pool, the bounded pool both database clients use, with stand-in
-- connections (tables).
local tendril = require "tendril"
local pool = require "tendril.pool"

local function usable()
    return true
end

local closed = {}
local function close(conn)
    closed[#closed + 1] = conn
end

describe("tendril.pool", function()
    before_each(function()
        closed = {}
    end)

    it("gives room up to its size, then waits for a connection to come back", function()
        local p = pool.new()
        assert.is_false(p:take(2, 1, usable, close))
        assert.is_false(p:take(2, 1, usable, close))
        local t0 = tendril.now()
        assert.are.same({ nil, "timeout" }, { p:take(2, 0.2, usable, close) })
        local waited = tendril.now() - t0
        assert.is_true(waited >= 0.18, waited)
        local conn = {}
        local th = tendril.spawn(function()
            return p:take(2, 5, usable, close)
        end)
        tendril.sleep(0.01)
        p:give(conn)
        local ok, got = th:join()
        assert.is_true(ok)
        assert.are.equal(conn, got)
        assert.are.same({ open = 2, idle = 0, waiting = 0 }, p:counts())
    end)

    it("keeps a waiter waiting when another task took the room a closed connection left", function()
        local p = pool.new()
        assert.is_false(p:take(1, 1, usable, close))
        local th = tendril.spawn(function()
            local t0 = tendril.now()
            local conn, err = p:take(1, 1, usable, close)
            return conn, err, tendril.now() - t0
        end)
        tendril.sleep(0.01)
        -- The holder's connection ends (the waiter is woken), and before
        -- the waiter runs, this task takes the room.
        p:closed()
        assert.is_false(p:take(1, 1, usable, close))
        tendril.sleep(0.05)
        local conn = {}
        p:give(conn)
        local ok, got, err, waited = th:join()
        assert.is_true(ok)
        assert.are.equal(conn, got, err)
        assert.is_true(waited < 0.9, waited)
    end)

    it("keeps a woken waiter first in line when another task took the room", function()
        local p = pool.new()
        assert.is_false(p:take(1, 1, usable, close))
        local order = {}
        local function waiter(name)
            return tendril.spawn(function()
                local conn = p:take(1, 2, usable, close)
                order[#order + 1] = name
                return conn
            end)
        end
        local first = waiter("first")
        tendril.sleep(0.01)
        local second = waiter("second")
        tendril.sleep(0.01)
        p:closed() -- wakes the first; this task takes the room before it runs
        assert.is_false(p:take(1, 1, usable, close))
        tendril.sleep(0.01)
        local a, b = {}, {}
        p:give(a)
        p:give(b)
        assert.are.same({ true, a }, { first:join() })
        assert.are.same({ true, b }, { second:join() })
        assert.are.same({ "first", "second" }, order)
    end)

    it("waits no longer than its timeout in all, however often it is woken", function()
        local p = pool.new()
        assert.is_false(p:take(1, 1, usable, close))
        local th = tendril.spawn(function()
            local t0 = tendril.now()
            local conn, err = p:take(1, 0.3, usable, close)
            return conn, err, tendril.now() - t0
        end)
        for _ = 1, 5 do
            tendril.sleep(0.04)
            p:closed()
            assert.is_false(p:take(1, 1, usable, close))
        end
        local ok, conn, err, waited = th:join()
        assert.are.same({ true, nil, "timeout" }, { ok, conn, err })
        assert.is_true(waited >= 0.28 and waited < 0.6, waited)
    end)

    it("closes its oldest idle connection once stale, even when its newest ones are in use", function()
        local p = pool.new()
        local old, new = { name = "old" }, { name = "new" }
        assert.is_false(p:take(3, 1, usable, close))
        assert.is_false(p:take(3, 1, usable, close))
        p:give(old)
        p:give(new)
        local function stale(conn)
            return conn == old
        end
        assert.are.equal(new, p:take(3, 1, usable, close, stale))
        assert.are.same({ old }, closed)
        assert.are.same({ open = 1, idle = 0, waiting = 0 }, p:counts())
    end)

    it("closes an idle connection it may not use and counts it gone", function()
        local p = pool.new()
        local dead = {}
        assert.is_false(p:take(1, 1, usable, close))
        p:give(dead)
        assert.is_false(p:take(1, 1, function(c) return c ~= dead end, close))
        assert.are.same({ dead }, closed)
        assert.are.same({ open = 1, idle = 0, waiting = 0 }, p:counts())
    end)
end)
