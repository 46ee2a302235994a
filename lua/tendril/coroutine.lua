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
local error, type, setmetatable = error, type, setmetatable

local _M = {}

-- Coroutines suspended in a tendril call, until its results come down: only
-- the relay that passed the wait up may resume them.
local in_call = setmetatable({}, { __mode = "k" })

-- The call's results (this coroutine's resume values) go down to co.
local function down(co, ...)
    in_call[co] = nil
    return co_resume(co, ...)
end

local function relay(co, ok, ...)
    if ok and task_waiting() then
        -- A tendril call is waiting inside co: wait with it, then pass the
        -- results down.
        in_call[co] = true
        return relay(co, down(co, co_yield()))
    end
    return ok, ...
end

local function resume(co, ...)
    if type(co) ~= "thread" then
        error("bad argument #1 to 'resume' (coroutine expected, got " .. type(co) .. ")", 2)
    end
    if in_call[co] then
        -- Resuming it would hand the tendril call someone else's values and
        -- leave its own results with nobody to take them.
        error("coroutine.resume: the coroutine is waiting in a tendril call (a sleep, a read, ...); " ..
            "only what it waits for resumes it", 2)
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
