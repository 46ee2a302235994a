-- A require that may yield. LuaJIT's require is a C function, so a module
-- whose top level does I/O (connects, sleeps) could not load inside a
-- request. This one walks package.loaders itself: a module loads once, a
-- second coroutine asking for a module that is still loading waits for it,
-- and a failed load is not cached (the next require tries again).
local core = require "tendril.core"

local loaded, loaders = package.loaded, package.loaders
local event_new, event_wait, event_set = core.event_new, core.event_wait, core.event_set
local running = coroutine.running
local type, tostring, error, pcall, concat = type, tostring, error, pcall, table.concat

local _M = {}

local loading = {} -- name -> { event = ..., co = the loading coroutine }

-- How long a require waits for another coroutine's load of the same module.
local WAIT_SECONDS = 60

local function require(name)
    if type(name) == "number" then
        name = tostring(name)
    elseif type(name) ~= "string" then
        error("bad argument #1 to 'require' (string expected, got " .. type(name) .. ")", 2)
    end
    local m = loaded[name]
    if m ~= nil then
        return m
    end
    local busy = loading[name]
    if busy then
        if busy.co == running() then
            error("loop or previous error loading module '" .. name .. "'", 2)
        end
        local ok, err = event_wait(busy.event, WAIT_SECONDS)
        if not ok then
            error("module '" .. name .. "' is still loading in another coroutine (" .. err .. ")", 2)
        end
        m = loaded[name]
        if m == nil then
            error("module '" .. name .. "' failed to load in another coroutine", 2)
        end
        return m
    end
    local notes = {}
    for i = 1, #loaders do
        local loader, extra = loaders[i](name)
        if type(loader) == "function" then
            local mark = { event = event_new(), co = running() }
            loading[name] = mark
            local ok, result = pcall(loader, name, extra)
            loading[name] = nil
            event_set(mark.event)
            if not ok then
                error(result, 0)
            end
            if result ~= nil then
                loaded[name] = result
            elseif loaded[name] == nil then
                loaded[name] = true
            end
            return loaded[name]
        elseif type(loader) == "string" then
            notes[#notes + 1] = loader
        end
    end
    error("module '" .. name .. "' not found:" .. concat(notes), 2)
end

_M.require = require

--- Replaces the global require.
function _M.install()
    _G.require = require
end

return _M
