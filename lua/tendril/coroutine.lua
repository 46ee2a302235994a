-- Coroutines the script creates may call tendril's yielding functions.
--
-- Such a call suspends the innermost coroutine with the task marked as
-- waiting. coroutine.resume, replaced here, notices that the coroutine it
-- resumed yielded for tendril rather than for the script, yields its own
-- coroutine in turn (up to the task, which the event loop then parks), and
-- when the task is woken hands the results back down by resuming the inner
-- coroutine with them. The script's own coroutine.yield values still reach
-- the script's resume.
local core = require "tendril.core"

local co_create, co_resume, co_yield = coroutine.create, coroutine.resume, coroutine.yield
local task_waiting, relay_mark = core.task_waiting, core.relay_mark
local error, type = error, type

local _M = {}

local function relay(co, ok, ...)
    if ok and task_waiting() then
        -- A tendril call is waiting inside co: wait with it, then pass the
        -- results (this coroutine's resume values) down to it.
        return relay(co, co_resume(co, co_yield()))
    end
    return ok, ...
end

local function resume(co, ...)
    if type(co) ~= "thread" then
        error("bad argument #1 to 'resume' (coroutine expected, got " .. type(co) .. ")", 2)
    end
    relay_mark(co)
    return relay(co, co_resume(co, ...))
end

local function unwrap(ok, ...)
    if ok then
        return ...
    end
    error((...), 0)
end

local function wrap(f)
    local co = co_create(f)
    return function(...)
        return unwrap(resume(co, ...))
    end
end

--- Replaces coroutine.resume and coroutine.wrap for every script.
function _M.install()
    coroutine.resume = resume -- luacheck: ignore 122
    coroutine.wrap = wrap -- luacheck: ignore 122
end

return _M
