-- The public runtime module: local tendril = require "tendril"
local core = require "tendril.core"
local trace = require "tendril.traceback"
local generation = require "tendril.generation"
local owned = require "tendril.owned"

local select, tostring, type, error, concat, unpack = select, tostring, type, error, table.concat, unpack
local setmetatable, xpcall, pcall, pairs, next = setmetatable, xpcall, pcall, pairs, next
local getinfo = debug.getinfo
local find, format, floor, ipairs = string.find, string.format, math.floor, ipairs
local log_message = core.log
local event_new, event_wait, event_set = core.event_new, core.event_wait, core.event_set

local _M = { _VERSION = "0.1.0" }

-- Seconds a blocking-looking call waits when the caller gives no timeout.
local DEFAULT_TIMEOUT = 60

--- Suspends the calling coroutine for `seconds`; other requests go on.
_M.sleep = core.sleep

--- Seconds since the epoch, as a float, read once per loop turn.
_M.now = core.now

--- Writes the arguments (joined by tostring, no separator) to the error log
--- at `level`: "debug", "info", "notice", "warn", "error" or "crit". The
--- line names the caller's file:line.
local LEVELS = { debug = true, info = true, notice = true, warn = true, error = true, crit = true,
    warning = true, err = true }

function _M.log(level, ...)
    if not LEVELS[level] then
        error("tendril.log: unknown level '" .. tostring(level) .. "' (debug, info, notice, warn, error, crit)", 2)
    end
    local n = select("#", ...)
    local parts = { ... }
    for i = 1, n do
        parts[i] = tostring(parts[i])
    end
    local info = getinfo(2, "Sl")
    local where = info and info.currentline > 0 and (info.short_src .. ":" .. info.currentline .. ": ") or ""
    log_message(level, where .. concat(parts, "", 1, n))
end

---------------------------------------------------------------- threads

local thread = {}
thread.__index = thread

local function pack(...)
    return { n = select("#", ...), ... }
end

local function run_thread(th, gen, fn, ...)
    if gen then
        generation.pin(core.task_coroutine(), gen)
    end
    local res = pack(xpcall(fn, trace.handler, ...))
    owned.release(core.task_coroutine())
    if gen then
        generation.unpin(gen)
    end
    if not res[1] then
        log_message("error", "tendril.spawn: a thread failed: " .. tostring(res[2]))
        -- join reports the message, not the whole traceback
        res[2] = tostring(res[2]):match("^[^\n]*")
    end
    th._results = res
    event_set(th._done)
end

local function spawn(core_spawn, fname, fn, ...)
    if type(fn) ~= "function" then
        error(fname .. ": expected a function, got " .. type(fn), 3)
    end
    local th = setmetatable({ _done = event_new() }, thread)
    -- The thread runs the code of its spawner's generation.
    core_spawn(run_thread, th, generation.of_caller(), fn, ...)
    return th
end

--- Runs fn(...) in a new light thread (a coroutine of its own). It starts
--- when the caller next waits or returns, and an error in it is logged,
--- never fatal. Spawned in a request, it shares the request's fate until
--- the response is finished: if the client goes away or the request's
--- deadline passes first, its waits fail too ("closed", "timeout"); after
--- that it runs on, detached.
function _M.spawn(fn, ...)
    local th = spawn(core.spawn, "tendril.spawn", fn, ...)
    return th
end

--- Like tendril.spawn, but detached at once: the request's fate is not
--- the thread's.
function _M.spawn_detached(fn, ...)
    local th = spawn(core.spawn_detached, "tendril.spawn_detached", fn, ...)
    return th
end

--- Waits for the thread: true, its results; or false, err (its error, or
--- "timeout", which leaves it running).
function thread:join(timeout)
    if timeout ~= nil and type(timeout) ~= "number" then
        error("thread:join: expected a timeout in seconds, got " .. type(timeout), 2)
    end
    if not self._results then
        local ok, err = event_wait(self._done, timeout or DEFAULT_TIMEOUT)
        if not ok then
            return false, err
        end
    end
    local r = self._results
    if r[1] then
        return true, unpack(r, 2, r.n)
    end
    return false, r[2]
end

--- True once the thread has ended.
function thread:done()
    return self._results ~= nil
end

---------------------------------------------------------------- DNS

-- Answers are kept this long: getaddrinfo gives no TTL, and a short cache
-- keeps a burst of lookups off libuv's small thread pool.
local DNS_CACHE_SECONDS = 30
-- Names kept at most: a service that talks to many hosts must not grow
-- without bound.
local DNS_CACHE_MAX = 1024
local dns_cache = {}    -- name -> { addresses, expires }
local dns_cached = 0
local dns_pending = {}  -- name -> { event, result, err }

local function dns_remember(name, addrs, expires)
    if not dns_cache[name] then
        if dns_cached >= DNS_CACHE_MAX then
            -- Drop what expired; if everything is fresh, drop any one.
            local now = core.now()
            for k, v in pairs(dns_cache) do
                if v[2] <= now then
                    dns_cache[k] = nil
                    dns_cached = dns_cached - 1
                end
            end
            if dns_cached >= DNS_CACHE_MAX then
                dns_cache[next(dns_cache)] = nil
                dns_cached = dns_cached - 1
            end
        end
        dns_cached = dns_cached + 1
    end
    dns_cache[name] = { addrs, expires }
end

local function is_ip(name)
    return name:find("^%d+%.%d+%.%d+%.%d+$") ~= nil or name:find(":", 1, true) ~= nil
end

--- The addresses of `name` (honouring /etc/hosts), as a list of strings;
--- nil, err on failure. A literal address is returned as it is.
function _M.resolve(name)
    if type(name) ~= "string" then
        error("tendril.resolve: expected a host name, got " .. type(name), 2)
    end
    if find(name, "\0", 1, true) then
        error("tendril.resolve: the host name holds a NUL byte", 2)
    end
    if is_ip(name) then
        return { name }
    end
    local now = core.now()
    local hit = dns_cache[name]
    if hit and hit[2] > now then
        return hit[1]
    end
    local p = dns_pending[name]
    if p then
        local ok, err = event_wait(p.event, DEFAULT_TIMEOUT)
        if not ok then
            return nil, err
        end
        if p.retry then
            -- The lookup ended for a reason of its caller's (its request
            -- went away, or it raised): not an answer about the name.
            return _M.resolve(name)
        end
        return p.result, p.err
    end
    p = { event = event_new() }
    dns_pending[name] = p
    -- Whatever happens (the lookup may raise: called where it cannot
    -- wait, out of memory), the name is pending no more.
    local ok, addrs, err = pcall(core.resolve, name)
    dns_pending[name] = nil
    if not ok then
        p.retry = true
        event_set(p.event)
        error(addrs, 0)
    end
    p.result, p.err = addrs, err
    -- "closed" and "timeout" are this caller's request ending (getaddrinfo
    -- has neither): the waiters look again themselves.
    p.retry = err == "closed" or err == "timeout"
    event_set(p.event)
    if addrs then
        dns_remember(name, addrs, now + DNS_CACHE_SECONDS)
    end
    return addrs, err
end

--- Counters of the running server: connections, requests in flight, the
--- coroutines the runtime holds (tasks alive, pooled, waiting) and the
--- names in the DNS cache.
function _M.stats()
    local s = core.vm_stats()
    local h = core.http_stats()
    s.connections = h.connections
    s.requests = h.requests
    s.websockets = core.ws_count()
    s.dns_cached = dns_cached
    return s
end

-- The text of one metric: HELP and TYPE, then its samples.
local function metric(out, name, kind, help, samples)
    out[#out + 1] = "# HELP " .. name .. " " .. help
    out[#out + 1] = "# TYPE " .. name .. " " .. kind
    for i = 1, #samples do
        out[#out + 1] = samples[i]
    end
end

-- A number as Prometheus writes it: integers without a decimal point.
local function num(v)
    if v == floor(v) and v < 2 ^ 53 then
        return format("%d", v)
    end
    return format("%.6g", v)
end

--- This process's counters in Prometheus' text format (version 0.0.4),
--- every name prefixed tendril_ and every sample labelled with its worker.
--- Serve it as is: res:header("Content-Type", "text/plain; version=0.0.4").
function _M.metrics()
    local w = format('worker="%d"', core.worker_id)
    local s, h, c = core.vm_stats(), core.http_stats(), core.http_counts()
    local out = {}
    local classes = {}
    for i, name in ipairs({ "other", "1xx", "2xx", "3xx", "4xx", "5xx" }) do
        classes[i] = format('tendril_requests_total{%s,class="%s"} %s', w, name, num(c.classes[i]))
    end
    metric(out, "tendril_requests_total", "counter", "Requests answered (or cut off), by status class.", classes)
    local buckets, total = {}, 0
    for i = 1, #c.buckets do
        total = total + c.buckets[i]
        local le = c.bounds[i] and num(c.bounds[i] / 1000) or "+Inf"
        buckets[i] = format('tendril_request_duration_seconds_bucket{%s,le="%s"} %s', w, le, num(total))
    end
    buckets[#buckets + 1] = format("tendril_request_duration_seconds_sum{%s} %s", w, num(c.sum))
    buckets[#buckets + 1] = format("tendril_request_duration_seconds_count{%s} %s", w, num(total))
    metric(out, "tendril_request_duration_seconds", "histogram",
        "Time from a request's first byte to its answer's end.", buckets)
    local function gauge(name, kind, help, v)
        metric(out, name, kind, help, { format("%s{%s} %s", name, w, num(v)) })
    end
    gauge("tendril_connections", "gauge", "Open HTTP connections.", h.connections)
    gauge("tendril_requests_in_flight", "gauge", "Requests whose answer has not ended.", h.requests)
    gauge("tendril_websockets", "gauge", "Open WebSockets.", core.ws_count())
    gauge("tendril_tasks", "gauge", "Tasks alive (requests, threads, sessions), the pool aside.", s.tasks - s.pooled)
    gauge("tendril_waits", "gauge", "Tasks waiting (on I/O, a timer, a thread).", s.waits)
    gauge("tendril_reloads_total", "counter", "Generations of the app loaded after the first.",
        math.max(generation.number() - 1, 0))
    gauge("tendril_stalls_total", "counter", "Resumes that held the event loop past --stall-warn-ms.", s.stalls)
    gauge("tendril_lua_memory_bytes", "gauge", "Bytes the Lua state holds.", s.memory)
    out[#out + 1] = ""
    return concat(out, "\n")
end

---------------------------------------------------------------- processes

--- Runs argv (a list: program, then arguments; the program is looked up on
--- PATH) and returns { status =, signal =, stdout =, stderr = }, or nil, err.
--- opts: input (fed to stdin), timeout (seconds, default 60: the child's
--- process group is killed), cwd.
function _M.run(argv, opts)
    if type(argv) ~= "table" or type(argv[1]) ~= "string" then
        error("tendril.run: expected a list of strings, the program first", 2)
    end
    for i = 1, #argv do
        if type(argv[i]) ~= "string" then
            error("tendril.run: argument " .. i .. " is a " .. type(argv[i]) .. ", not a string", 2)
        elseif find(argv[i], "\0", 1, true) then
            error("tendril.run: argument " .. i .. " holds a NUL byte", 2)
        end
    end
    opts = opts or {}
    if opts.cwd ~= nil and (type(opts.cwd) ~= "string" or find(opts.cwd, "\0", 1, true)) then
        error("tendril.run: opts.cwd must be a path without NUL bytes", 2)
    end
    if opts.input ~= nil and type(opts.input) ~= "string" then
        error("tendril.run: opts.input must be a string", 2)
    end
    local timeout = opts.timeout
    if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0 or timeout == math.huge) then
        error("tendril.run: opts.timeout must be a finite number of seconds >= 0, got " .. tostring(timeout), 2)
    end
    return core.run(argv, opts.input, timeout or DEFAULT_TIMEOUT, opts.cwd)
end

---------------------------------------------------------------- reload

--- The table named `name`, the same in every generation of the app: the
--- one home for state that must survive a reload. The first call makes it
--- from `init` (a table, or a function returning the value; default {}).
function _M.keep(name, init)
    if type(name) ~= "string" then
        error("tendril.keep: expected a name, got " .. type(name), 2)
    end
    return generation.keep(name, init)
end

--- The number of the generation serving new requests (1 at start).
function _M.generation()
    return generation.number()
end

---------------------------------------------------------------- workers

local worker_id, worker_count = core.worker_id, core.worker_count

--- This worker's number, 1 to worker_count() (a replacement takes the
--- number of the worker it replaces); 1 without --workers.
function _M.worker_id()
    return worker_id
end

--- The number of workers (--workers; 1 without it).
function _M.worker_count()
    return worker_count
end

_M.DEFAULT_TIMEOUT = DEFAULT_TIMEOUT

return _M
