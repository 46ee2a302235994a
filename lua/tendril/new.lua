-- tendril new DIR: a starting project (app.lua with a router, a module of
-- its own, a spec with tendril.testing, .luacheckrc, a README of three
-- commands). Run by app.c as a script, like tendril test.
local fs = require "tendril.fs"

local _M = {}

local FILES = {}

FILES["app.lua"] = [[
-- The app: tendril serve app.lua, then http://127.0.0.1:8080/
local router = require("tendril.router").new()
local greet = require "greet"

router:get("/", function()
    return "hello from tendril\n"
end)

router:get("/hello/:name", function(req, res)
    return res:json({ greeting = greet.hello(req.params.name) })
end)

router:post("/echo", function(req, res)
    local value, err = req:json()
    if value == nil then
        return res:json({ error = err }, 400)
    end
    return res:json(value)
end)

return router
]]

FILES["greet.lua"] = [[
-- A module of the app: its files are reloaded with it.
local _M = {}

function _M.hello(name)
    return "hello, " .. name
end

return _M
]]

FILES["spec/app_spec.lua"] = [[
-- tendril test: each it runs in a task of its own, so it may wait.
local testing = require "tendril.testing"
local json = require "tendril.json"

describe("the app", function()
    local app
    setup(function()
        app = testing.app("app.lua")
    end)
    teardown(function()
        app:close()
    end)

    it("answers /", function()
        local res = assert(app:get("/"))
        assert.are.equal(200, res.status)
        assert.are.equal("hello from tendril\n", res.body)
    end)

    it("greets by name", function()
        local res = assert(app:get("/hello/ann"))
        assert.are.same({ greeting = "hello, ann" }, json.decode(res.body))
    end)

    it("echoes JSON and refuses what is not", function()
        local headers = { ["Content-Type"] = "application/json" }
        local res = assert(app:post("/echo", '{"n":1}', { headers = headers }))
        assert.are.same({ n = 1 }, json.decode(res.body))
        res = assert(app:post("/echo", "{nope", { headers = headers }))
        assert.are.equal(400, res.status)
    end)
end)
]]

FILES[".luacheckrc"] = [[
std = "luajit"
files["spec"] = { std = "+busted" }
max_line_length = 120
]]

FILES["README.md"] = [[
# %s

A tendril app: `app.lua` answers, `greet.lua` is one of its modules,
`spec/` holds its specs.

```sh
tendril serve app.lua                          # http://127.0.0.1:8080/, reloads on save
tendril test                                   # the specs in spec/
wrk -t1 -c50 -d5s http://127.0.0.1:8080/       # how fast (while it serves)
```
]]

local ORDER = { "app.lua", "greet.lua", "spec/app_spec.lua", ".luacheckrc", "README.md" }

local function fail(msg)
    io.stderr:write("tendril new: ", msg, "\n")
    return 1
end

--- Writes the project into dir (made if missing, refused if it holds
--- anything); the exit status.
function _M.run(args)
    local dir = args[1]
    if not dir or dir == "" or args[2] then
        return fail("usage: tendril new DIR")
    end
    local st = fs.stat(dir)
    if st and st.type ~= "directory" then
        return fail(dir .. " exists and is not a directory")
    end
    if st then
        for _, name in ipairs(ORDER) do
            if fs.stat(dir .. "/" .. name) then
                return fail(dir .. "/" .. name .. " exists already: nothing was written")
            end
        end
    end
    -- The directory and its parents, then spec/.
    local path = dir:sub(1, 1) == "/" and "" or "."
    for part in dir:gmatch("[^/]+") do
        path = path .. "/" .. part
        local ok, err = fs.mkdir(path)
        if not ok then
            return fail("cannot make " .. path .. ": " .. tostring(err))
        end
    end
    local ok, err = fs.mkdir(dir .. "/spec")
    if not ok then
        return fail("cannot make " .. dir .. "/spec: " .. tostring(err))
    end
    local name = dir:gsub("/+$", ""):match("[^/]*$")
    for _, file in ipairs(ORDER) do
        local text = file == "README.md" and FILES[file]:format(name) or FILES[file]
        ok, err = fs.write(dir .. "/" .. file, text)
        if not ok then
            return fail("cannot write " .. dir .. "/" .. file .. ": " .. tostring(err))
        end
    end
    print("made " .. dir .. ": cd " .. dir .. " && tendril test && tendril serve app.lua")
    return 0
end

return _M
