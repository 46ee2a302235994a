-- A require that may yield, and that knows the app's generations.
--
-- LuaJIT's require is a C function, so a module whose top level does I/O
-- (connects, sleeps) could not load inside a request. This one walks
-- package.loaders itself: a module loads once, a second coroutine asking
-- for a module that is still loading waits for it, and a failed load is not
-- cached (the next require tries again).
--
-- Modules found in the app's own directory tree belong to a generation
-- (see tendril.generation): each generation loads them afresh, and a
-- require from code of an older generation still gets that generation's.
local core = require "tendril.core"
local generation = require "tendril.generation"

local loaded, loaders = package.loaded, package.loaders
local searchpath = package.searchpath
local event_new, event_wait, event_set = core.event_new, core.event_wait, core.event_set
local running = coroutine.running
local type, tostring, error, pcall, concat, loadstring = type, tostring, error, pcall, table.concat, loadstring
local setmetatable = setmetatable
local app_names = generation.app_module_names

local _M = {}

-- How long a require waits for another coroutine's load of the same module.
local WAIT_SECONDS = 60

local loading = setmetatable({}, { __mode = "k" }) -- table of modules -> name -> { event, co }

local function wait_for(busy, name)
    if busy.co == running() then
        error("loop or previous error loading module '" .. name .. "'", 3)
    end
    local ok, err = event_wait(busy.event, WAIT_SECONDS)
    if not ok then
        error("module '" .. name .. "' is still loading in another coroutine (" .. err .. ")", 3)
    end
end

-- Runs loader under the busy mark of (modules, name); returns the module.
local function run_loader(modules, name, loader, extra)
    local busy = loading[modules]
    if not busy then
        busy = {}
        loading[modules] = busy
    end
    local mark = { event = event_new(), co = running() }
    busy[name] = mark
    local ok, result = pcall(loader, name, extra)
    busy[name] = nil
    event_set(mark.event)
    if not ok then
        error(result, 0)
    end
    if result ~= nil then
        modules[name] = result
    elseif modules[name] == nil then
        modules[name] = true
    end
    return modules[name]
end

-- An app module: read and compiled here, so the generation records the
-- exact text it runs.
local function app_loader(gen, path)
    return function(name)
        local text, err = generation.read_source(gen, path)
        if not text then
            error("cannot read module '" .. name .. "': " .. err, 0)
        end
        local chunk
        chunk, err = loadstring(text, "@" .. path)
        if not chunk then
            error(err, 0) -- "path:line: message"
        end
        return chunk(name)
    end
end

local function require(name)
    if type(name) == "number" then
        name = tostring(name)
    elseif type(name) ~= "string" then
        error("bad argument #1 to 'require' (string expected, got " .. type(name) .. ")", 2)
    end
    local gen = generation.of_caller()
    local modules = loaded
    if gen and gen.loaded then
        local m = gen.loaded[name]
        if m ~= nil then
            return m
        end
        if app_names[name] then
            modules = gen.loaded
        end
    end
    if modules == loaded then
        local m = loaded[name]
        if m ~= nil then
            return m
        end
    end
    local busy = loading[modules] and loading[modules][name]
    if busy then
        wait_for(busy, name)
        local m = modules[name]
        if m == nil then
            -- It failed there (maybe only because that coroutine's request
            -- ended); a failure is not cached: try here, and see why.
            m = require(name)
        end
        return m
    end
    if gen and gen.loaded then
        local path = searchpath(name, package.path)
        if path and generation.is_app_file(path) then
            app_names[name] = true
            return run_loader(gen.loaded, name, app_loader(gen, path))
        end
    end
    local notes = {}
    for i = 1, #loaders do
        local loader, extra = loaders[i](name)
        if type(loader) == "function" then
            return run_loader(loaded, name, loader, extra)
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
