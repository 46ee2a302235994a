-- tendril.owned: what ends with the task that made it.
local tendril = require "tendril"
local core = require "tendril.core"
local owned = require "tendril.owned"

describe("tendril.owned", function()
    it("closes what a task made when it ends, and forgets what was given back", function()
        local closed = {}
        local function thing(name)
            return { close = function() closed[#closed + 1] = name end }
        end
        assert(tendril.spawn(function()
            local kept, given_back = thing("kept"), thing("given back")
            owned.add(kept)
            owned.add(given_back)
            assert.are.equal(2, owned.count())
            owned.remove(given_back)
            assert.are.equal(1, owned.count())
        end):join())
        assert.are.same({ "kept" }, closed)
    end)

    it("lets a task that ended without a release be collected", function()
        local seen = setmetatable({}, { __mode = "k" })
        -- A raw runtime task: nothing calls owned.release for it.
        core.spawn_detached(function()
            seen[coroutine.running()] = true
            owned.add({ close = function() end })
        end)
        tendril.sleep(0.01)
        collectgarbage()
        collectgarbage()
        assert.is_nil(next(seen))
    end)
end)
