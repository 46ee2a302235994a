-- What ends with the task that made it: local owned = require "tendril.owned"
--
-- owned.add(obj) ties obj to the running task (a request's handler, a
-- spawned thread, a tcp.listen session); when the task's function returns
-- or raises, its runner calls owned.release(co) and every object tied to
-- it gets obj:close().
-- A bus subscription made by a handler so ends with the handler, at once,
-- not whenever the collector finds it unreachable.
local core = require "tendril.core"

local task_coroutine = core.task_coroutine

local _M = {}

-- coroutine -> set of objects; weak, so a coroutine that is gone takes
-- its list along.
local lists = setmetatable({}, { __mode = "k" })
-- object -> the coroutine whose list holds it, for remove. Weak values
-- too: LuaJIT has no ephemerons, and a strong co here would keep alive
-- (through lists[co] -> obj) a task's coroutine that ended unreleased.
local owners = setmetatable({}, { __mode = "kv" })
-- Tasks with a list now (at most: a list a coroutine took with it when it
-- was collected is counted still): the request driver asks for a release
-- only then, one field read per request instead of a call.
_M.tasks = 0

--- Ties obj (anything with a close method) to the running task; outside a
--- task (a module's top level) it is left alone.
function _M.add(obj)
    local co = task_coroutine()
    if not co then
        return
    end
    local list = lists[co]
    if not list then
        list = {}
        lists[co] = list
        _M.tasks = _M.tasks + 1
    end
    list[obj] = true
    owners[obj] = co
end

--- Unties obj (closed or given back before its task ended): a long-lived
--- task that takes and gives back again and again keeps no list of them.
function _M.remove(obj)
    local co = owners[obj]
    if co then
        owners[obj] = nil
        local list = lists[co]
        if list then
            list[obj] = nil
        end
    end
end

--- How many objects are tied to the running task (for tests).
function _M.count()
    local list = lists[task_coroutine() or false]
    local n = 0
    for _ in pairs(list or {}) do
        n = n + 1
    end
    return n
end

--- The task running on co has ended: close what it made.
function _M.release(co)
    local list = lists[co]
    if not list then
        return
    end
    lists[co] = nil
    _M.tasks = _M.tasks - 1
    for obj in pairs(list) do
        owners[obj] = nil
        obj:close()
    end
end

return _M
