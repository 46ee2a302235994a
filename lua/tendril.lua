-- The public runtime module: local tendril = require "tendril"
local core = require "tendril.core"

local select, tostring, concat = select, tostring, table.concat
local getinfo = debug.getinfo
local log_message = core.log

local _M = { _VERSION = "0.1.0" }

--- Suspends the calling coroutine for `seconds`; other requests go on.
_M.sleep = core.sleep

--- Seconds since the epoch, as a float, read once per loop turn.
_M.now = core.now

--- Writes the arguments (joined by tostring, no separator) to the error log
--- at `level`: "debug", "info", "notice", "warn", "error" or "crit". The
--- line names the caller's file:line.
function _M.log(level, ...)
    local n = select("#", ...)
    local parts = { ... }
    for i = 1, n do
        parts[i] = tostring(parts[i])
    end
    local info = getinfo(2, "Sl")
    local where = info and info.currentline > 0 and (info.short_src .. ":" .. info.currentline .. ": ") or ""
    log_message(level, where .. concat(parts, "", 1, n))
end

--- Counters of the running server: connections, requests in flight, and
--- the coroutines the runtime holds (tasks alive, pooled, waiting).
function _M.stats()
    local s = core.vm_stats()
    local h = core.http_stats()
    s.connections = h.connections
    s.requests = h.requests
    return s
end

return _M
