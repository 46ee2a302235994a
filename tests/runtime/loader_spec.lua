-- require may wait and loads a module once; the app's modules belong to a
-- generation, and a request keeps the generation it started with.
local tendril = require "tendril"
local fs = require "tendril.fs"
local testing = require "tendril.testing"

-- A fresh directory with these files in it.
local function project(files)
    local dir = os.tmpname()
    os.remove(dir)
    assert(fs.mkdir(dir))
    for name, text in pairs(files) do
        assert(fs.write(dir .. "/" .. name, text))
    end
    return dir
end

local function remove(dir, files)
    for name in pairs(files) do
        os.remove(dir .. "/" .. name)
    end
    os.remove(dir)
end

describe("require", function()
    local files = {
        ["slowmod_spec_fixture.lua"] = [[
            local tendril = require "tendril"
            slow_loads = (slow_loads or 0) + 1
            tendril.sleep(0.2)
            return { loads = slow_loads }
        ]],
        ["badmod_spec_fixture.lua"] = [[
            bad_attempts = (bad_attempts or 0) + 1
            error("boom " .. bad_attempts)
        ]],
    }
    local dir, saved_path

    before_each(function()
        dir = project(files)
        saved_path = package.path
        package.path = dir .. "/?.lua;" .. package.path
    end)

    after_each(function()
        package.path = saved_path
        remove(dir, files)
    end)

    it("may wait, and loads a module once for every coroutine that asks", function()
        local threads = {}
        for i = 1, 3 do
            threads[i] = tendril.spawn(function()
                return require("slowmod_spec_fixture").loads
            end)
        end
        for i = 1, 3 do
            assert.are.same({ true, 1 }, { threads[i]:join() })
        end
    end)

    it("does not keep a failed load", function()
        local ok1, e1 = pcall(require, "badmod_spec_fixture")
        local ok2, e2 = pcall(require, "badmod_spec_fixture")
        assert.is_false(ok1)
        assert.matches("boom 1", e1)
        assert.is_false(ok2)
        assert.matches("boom 2", e2)
        local ok3, e3 = pcall(require, "nosuchmod_spec_fixture")
        assert.is_false(ok3)
        assert.matches("module 'nosuchmod_spec_fixture' not found", e3)
    end)
end)

describe("generations", function()
    local files = {
        ["app.lua"] = [[
            local tendril = require "tendril"
            local greeting = require "greeting"
            return function(req)
                if req.path == "/slow" then
                    tendril.sleep(0.3)
                    -- required again after the next generation loaded
                    return require("greeting").text .. " (then " .. greeting.text .. ")"
                end
                return greeting.text
            end
        ]],
        ["greeting.lua"] = 'return { text = "one" }',
    }

    it("load the app's modules afresh; a request keeps the generation it began in", function()
        local dir = project(files)
        local app = testing.app(dir .. "/app.lua")
        assert.are.equal("one", assert(app:get("/")).body)
        local slow = tendril.spawn(function()
            return assert(app:get("/slow")).body
        end)
        tendril.sleep(0.1) -- the slow request runs in the first generation
        assert(fs.write(dir .. "/greeting.lua", 'return { text = "two" }'))
        app:close()
        app = testing.app(dir .. "/app.lua")
        assert.are.equal("two", assert(app:get("/")).body)
        assert.are.same({ true, "one (then one)" }, { slow:join() })
        app:close()
        remove(dir, files)
    end)

    it("refuse an app that does not load, naming its line", function()
        local dir = project({ ["app.lua"] = "local x = = 1" })
        local ok, err = pcall(testing.app, dir .. "/app.lua")
        assert.is_false(ok)
        assert.matches("app%.lua:1:", err)
        remove(dir, { ["app.lua"] = true })
    end)
end)
