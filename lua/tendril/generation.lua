-- Code generations, for hot reload.
--
-- A generation is one run of the app's top level with its own copy of the
-- app's modules (those loaded from the app's directory tree). New requests
-- use the current generation; a request, a spawned thread or a tcp.listen
-- connection keeps the generation it started with (it is "pinned") and
-- releases it when it ends. A generation that is no longer current retires
-- when its last user leaves, and a full garbage collection frees its code.
--
-- Each generation records the exact source text it loaded, so a change
-- counts only when a loaded file's content differs, and the runtime's own
-- modules and third-party ones outside the app's directory are never
-- reloaded. The C side (core/reload.c) watches the directories this module
-- names, debounces, and calls load() in a task of its own.
local core = require "tendril.core"
local trace = require "tendril.traceback"

local type, pairs, setmetatable, xpcall, error, tostring = type, pairs, setmetatable, xpcall, error, tostring
local open, loadstring, collectgarbage = io.open, loadstring, collectgarbage
local sub, match = string.sub, string.match
local task_coroutine = core.task_coroutine

local _M = {}

local current        -- the generation new requests use
local committed = 0  -- generations that loaded successfully
local gen_of = setmetatable({}, { __mode = "k" }) -- task coroutine -> its generation
local app_path, app_dir -- absolute
local last_sources = {} -- path -> content, of the last load attempt
local last_failed = false
local kept = {}
local watch -- defined below, used by read_source
local watched = {} -- directory -> true, as last told to core.watch_dirs

_M.app_module_names = {} -- modules ever loaded from the app's tree

function _M.set_app(path, dir)
    app_path, app_dir = path, dir
end

function _M.current()
    return current
end

function _M.number()
    return committed
end

--- The generation of the running task, or nil (runtime code at boot).
function _M.of_caller()
    local co = task_coroutine()
    return co and gen_of[co]
end

--- A task starts running code of `gen` (the caller is the task's coroutine).
function _M.pin(co, gen)
    gen_of[co] = gen
    gen.users = gen.users + 1
end

local function retire(gen)
    gen.handler, gen.loaded, gen.sources = nil, nil, nil
    gen.retired = true
    -- Its code is garbage now: collect it while nobody waits. Compiled
    -- traces anchor the prototypes they start in, so flush them first.
    jit.flush()
    collectgarbage("collect")
end

--- The task that pinned `gen` ended.
function _M.unpin(gen)
    local n = gen.users - 1
    gen.users = n
    if n == 0 and gen ~= current and gen.committed and not gen.retired then
        retire(gen)
    end
end

--- Whether path (absolute) lies in the app's directory tree.
function _M.is_app_file(path)
    return app_dir ~= nil and sub(path, 1, #app_dir + 1) == app_dir .. "/"
end

--- Reads an app source file for gen, remembering its text. nil, err on failure.
function _M.read_source(gen, path)
    local f, err = open(path, "rb")
    if not f then
        return nil, err
    end
    local text = f:read("*a")
    f:close()
    gen.sources[path] = text
    -- A module the running generation loads late (inside a handler) may
    -- live in a directory nobody watches yet.
    if gen == current then
        local dir = match(path, "^(.*)/[^/]*$")
        if dir and not watched[dir] then
            watch()
        end
    end
    return text
end

--- tendril.keep: the table named `name`, the same one in every generation.
function _M.keep(name, init)
    local v = kept[name]
    if v == nil then
        if type(init) == "function" then
            v = init()
        elseif init == nil then
            v = {}
        else
            v = init
        end
        if v == nil then
            error("tendril.keep: the init function for '" .. tostring(name) .. "' returned nothing", 3)
        end
        kept[name] = v
    end
    return v
end

local function directories()
    local dirs, seen = {}, {}
    local function add(d)
        if d and not seen[d] then
            seen[d] = true
            dirs[#dirs + 1] = d
        end
    end
    add(app_dir)
    for path in pairs(last_sources) do
        add(match(path, "^(.*)/[^/]*$"))
    end
    if current and current.sources then
        for path in pairs(current.sources) do
            add(match(path, "^(.*)/[^/]*$"))
        end
    end
    return dirs
end

-- Tells the C side which directories hold files that matter.
watch = function()
    local dirs = directories()
    watched = {}
    for i = 1, #dirs do
        watched[dirs[i]] = true
    end
    if core.watch_dirs then -- not under tendril run and test
        core.watch_dirs(dirs)
    end
end

--- Runs the app's top level as a new generation, in the calling task.
--- Returns true, number on success; false, message (one line) on failure.
function _M.load()
    local gen = { users = 0, loaded = {}, sources = {}, committed = false }
    local co = task_coroutine()
    _M.pin(co, gen)
    core.listeners_begin()
    local ok, res = xpcall(function()
        local text, err = _M.read_source(gen, app_path)
        if not text then
            error("cannot open " .. err, 0)
        end
        local chunk
        chunk, err = loadstring(text, "@" .. app_path)
        if not chunk then
            error(err, 0)
        end
        local handler = chunk()
        -- A callable table (a tendril.router) is a handler too.
        local mt = type(handler) == "table" and getmetatable(handler)
        if type(handler) ~= "function" and not (mt and mt.__call) then
            error(app_path .. " did not return a handler function (it returned " ..
                (handler == nil and "nothing" or type(handler)) .. ")", 0)
        end
        return handler
    end, trace.handler)
    last_sources = gen.sources
    if not ok then
        core.listeners_discard()
        last_failed = true
        gen.users = gen.users - 1 -- never current: threads it spawned just finish
        watch()
        return false, match(tostring(res), "^[^\n]*")
    end
    core.listeners_commit()
    committed = committed + 1
    gen.number = committed
    gen.handler = res
    gen.committed = true
    local old = current
    current = gen
    for name, m in pairs(gen.loaded) do
        package.loaded[name] = m
    end
    last_failed = false
    _M.unpin(gen) -- the loading task is done with it
    watch()
    if old and old.users == 0 and not old.retired then
        retire(old)
    end
    return true, committed
end

--- Makes handler (a function or callable table) the current generation's,
--- without a file (tendril.testing serving a function). Its number.
function _M.install(handler)
    committed = committed + 1
    local old = current
    current = { users = 0, loaded = {}, sources = {}, committed = true, number = committed, handler = handler }
    if old and old.users == 0 and not old.retired then
        retire(old)
    end
    return committed
end

--- Given files that changed on disk, whether a reload is due: a file of
--- the last attempt whose content differs, or, after a failed attempt, any
--- Lua file (it may be the missing module).
function _M.changed(paths)
    for i = 1, #paths do
        local path = paths[i]
        local old = last_sources[path]
        if old then
            local f = open(path, "rb")
            local text = f and f:read("*a")
            if f then
                f:close()
            end
            if text ~= old then
                return true
            end
        elseif last_failed and sub(path, -4) == ".lua" then
            return true
        end
    end
    return false
end

return _M
