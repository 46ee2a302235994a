-- tendril test: busted inside the runtime (app.c runs it as a script).
--
-- Debian's lua-busted does the rest: its command line, output handlers
-- and exit status. Two things are tendril's: every `it` (with its
-- before_each and after_each) runs in a task of its own, so specs may wait
-- (http.get, sleep, tcp.connect, threads, servers); and a test whose body
-- leaves something behind fails with an error naming what: a thread it
-- spawned still running (the body leads a scope of its own, which its
-- threads share), a client socket it opened still open (not closed, not
-- back in a pool). What its before_each started is not its own; a server's
-- sessions (tcp.listen, testing.app) are not the test's threads. Leftovers
-- get a few loop turns to end first.
-- tcp.listen listeners have no close yet: the run ends when busted does,
-- whatever specs left running.
local tendril = require "tendril"
local core = require "tendril.core"
local tcp = require "tendril.tcp"

local type, pcall, error, ipairs, loadstring, format = type, pcall, error, ipairs, loadstring, string.format
local scope_open, scope_census, scope_close = core.task_scope_open, core.task_scope_census, core.task_scope_close
local open_sockets = tcp._open_count

local _M = {}

-- A test that runs longer than this is reported and left behind.
_M.TEST_TIMEOUT = 300

-- What a test's body left behind (sockets: the count open before it), or
-- nil.
local function leftovers(sockets)
    local threads, waits = scope_census()
    local open = open_sockets() - sockets
    -- A thread that ends now, or a socket whose close is under way.
    for _ = 1, 3 do
        if threads == 0 and open <= 0 then
            return nil
        end
        tendril.sleep(0.001)
        threads, waits = scope_census()
        open = open_sockets() - sockets
    end
    local parts = {}
    if threads > 0 then
        parts[#parts + 1] = format("%d thread(s) running (%d waiting)", threads, waits)
    end
    if open > 0 then
        parts[#parts + 1] = format("%d socket(s) open", open)
    end
    if #parts == 0 then
        return nil
    end
    return "the test left " .. table.concat(parts, " and ") .. ": join the threads a test spawns and "
        .. "close the sockets it opens"
end

-- busted.core, with its `it` executor run in a task of its own.
local function patched_core(make_core)
    return function(...)
        local busted = make_core(...)
        local register = busted.register
        busted.register = function(descriptor, executor, attributes)
            if descriptor == "it" and type(executor) == "function" then
                local inner = executor
                executor = function(element)
                    -- The body's leftovers are the test's error, so that
                    -- every output handler reports it as the test's own.
                    local body = element.run
                    element.run = function(...)
                        local sockets = open_sockets()
                        scope_open()
                        body(...)
                        local left = leftovers(sockets)
                        -- What is left runs on, detached.
                        scope_close()
                        if left then
                            -- Named at the test's own line, not this one.
                            local at = element.trace or {}
                            error(format("%s:%s: %s", at.short_src or "?", at.currentline or "?", left), 0)
                        end
                    end
                    local th = tendril.spawn_detached(inner, element)
                    local ok, err = th:join(_M.TEST_TIMEOUT)
                    element.run = body
                    if not ok then
                        busted.publish({ "error", "it" }, element, busted.context.parent(element),
                            err == "timeout" and format("the test ran past %d s", _M.TEST_TIMEOUT) or tostring(err),
                            "")
                    end
                end
            end
            return register(descriptor, executor, attributes)
        end
        return busted
    end
end

local function is_dir(path)
    local st = require("tendril.fs").stat(path)
    return st and st.type == "directory"
end

--- Runs busted with args (a command line, as `busted` takes it); the exit
--- status: 0 when every test passed.
function _M.run(args)
    -- A path given is one that exists (an option's value, "-o TAP", is not).
    local fs = require "tendril.fs"
    local paths = false
    for _, a in ipairs(args) do
        if a:sub(1, 1) ~= "-" and fs.stat(a) then
            paths = true
        end
    end
    -- busted's default is spec/; a project laid out as tendril is has
    -- tests/spec/.
    if not paths and not is_dir("spec") and is_dir("tests/spec") then
        args[#args + 1] = "tests/spec"
    end
    package.loaded["busted.core"] = patched_core(require "busted.core")
    _G.arg = args
    args[0] = "tendril test"
    -- busted ends a failed run with error() (its way of exiting non-zero
    -- under Lua 5.1) unless it runs standalone: that error is the status.
    -- Called from a chunk named as the command: busted names itself after
    -- its caller's file, and would os.exit (no teardown) without one.
    local call = loadstring("local runner, options = ... return runner(options)", "@tendril test")
    local ok, err = pcall(call, require "busted.runner", { standalone = false })
    if ok then
        return 0
    end
    if err ~= nil then
        error(err, 0)
    end
    return 1
end

return _M
