-- Redis on the event loop: local redis = require "tendril.redis"
--
--   local r, err = redis.connect("redis://:secret@127.0.0.1:6379/0")
--   r:set("k", "v", "EX", 10)            -- "OK"
--   local v = r:get("k")                 -- "v"; nil when missing
--   local n, err = r:incr("k")           -- nil, "ERR value is not an integer ..."
--   r:release()
--
-- RESP over tendril's sockets, in Lua (docs/benchmarks.md has the
-- measurements). Every command is a method (its name in any case);
-- r:call(name, ...) sends any. Replies: status and bulk strings as
-- strings, integers as numbers, arrays as tables; a missing value is nil
-- for a command and redis.null inside an array; an error reply is nil,
-- "ERR ..." for a command and { false, "ERR ..." } inside a pipeline's or a
-- transaction's replies; a failed connection is nil, "closed" or
-- "timeout" (the next call connects again).
--
-- Connections, per server, database and credentials:
-- - One shared connection carries the plain commands of every task: the
--   commands tasks send in one loop turn leave in one write, and one
--   reader task hands each reply to its caller, in order (as ioredis's
--   auto-pipelining does). A caller that stops waiting (its timeout, its
--   request gone) leaves its reply to be dropped.
-- - What needs a connection of its own (a transaction, a subscription, a
--   blocking command such as BLPOP, SELECT) takes one from a bounded pool
--   (pool_size, in use or idle; connect waits for one to come back, up to
--   the timeout) and keeps it until r:release(), r:close() or the end of
--   the task that made r; it goes back to the pool only when it is clean
--   (no reply pending, not subscribed, no transaction open), else it is
--   closed.
local core = require "tendril.core"
local tcp = require "tendril.tcp"
local owned = require "tendril.owned"
local raise = require "tendril.misuse"
local new_pool = require("tendril.pool").new
local url_mod = require "tendril.url"
local number_text = require("tendril.wire").number

local type, tostring, tonumber, error, select, setmetatable = type, tostring, tonumber, error, select, setmetatable
local concat, pairs, ipairs = table.concat, pairs, ipairs
local sub, byte, upper, lower, format, match = string.sub, string.byte, string.upper, string.lower, string.format,
    string.match
local open_socket = tcp._open
local sock_pool, sock_unpool, sock_usable = core.sock_pool, core.sock_unpool, core.sock_usable
local event_new, event_wait, event_set = core.event_new, core.event_wait, core.event_set
local sock_queue, spawn_daemon = core.sock_queue, core.spawn_daemon
local task_coroutine = core.task_coroutine

local _M = {}

--- Stands for a missing value inside an array reply: json.null, so that
--- a reply encodes with it as null.
_M.null = require("tendril.json").null
local null = _M.null

local DEFAULTS = { host = "127.0.0.1", port = 6379, db = 0, timeout = 10, pool_size = 64, idle_timeout = 60 }

-- Replies a shared connection may owe at once, and bytes of commands it
-- may hold unsent: past either a call fails with nil, "busy" rather than
-- queue without bound (a server that stopped reading).
local MAX_PENDING = 65536
local MAX_UNSENT = 64 * 1024 * 1024
-- A bulk string's length at most (Redis's own bound, proto-max-bulk-len):
-- a longer one is a broken or hostile peer, not a value to allocate.
local MAX_BULK = 512 * 1024 * 1024

-- Commands after which a connection is not what its pool's key says.
local STATEFUL = { SELECT = true, AUTH = true, HELLO = true, CLIENT = true, MONITOR = true, RESET = true,
    QUIT = true }

-- Commands that need a connection of their own.
local EXCLUSIVE = {}
for name in ("MULTI EXEC DISCARD WATCH UNWATCH SUBSCRIBE PSUBSCRIBE SSUBSCRIBE UNSUBSCRIBE PUNSUBSCRIBE "
    .. "SUNSUBSCRIBE SELECT AUTH HELLO RESET QUIT MONITOR CLIENT BLPOP BRPOP BRPOPLPUSH BLMOVE BLMPOP BZPOPMIN "
    .. "BZPOPMAX BZMPOP XREAD XREADGROUP WAIT WAITAOF"):gmatch("%S+") do
    EXCLUSIVE[name] = true
end

-- Blocking commands, by where their time to block is: the last argument
-- or the first, in seconds, or in milliseconds; XREAD's after BLOCK. A
-- connection waits that long beyond its timeout for their reply.
local BLOCKING = { BLPOP = "last", BRPOP = "last", BRPOPLPUSH = "last", BLMOVE = "last", BZPOPMIN = "last",
    BZPOPMAX = "last", BLMPOP = "first", BZMPOP = "first", WAIT = "last_ms", WAITAOF = "last_ms",
    XREAD = "option_ms", XREADGROUP = "option_ms" }
local FOREVER = 365 * 86400

-- How long cmd may block the server's reply (seconds; FOREVER for 0), or nil.
local function block_time(cmd, ...)
    local where = BLOCKING[cmd]
    if not where then
        return nil
    end
    local n, v = select("#", ...), nil
    if where == "option_ms" then
        -- The options before STREAMS, each with its arguments (a group or
        -- a stream may be named "block").
        local i = 1
        while i < n do
            local a = select(i, ...)
            a = type(a) == "string" and upper(a) or ""
            if a == "STREAMS" then
                break
            elseif a == "BLOCK" then
                v = tonumber((select(i + 1, ...)))
                break
            end
            i = i + (a == "GROUP" and 3 or a == "COUNT" and 2 or 1)
        end
        if v == nil then
            return nil -- XREAD without BLOCK does not block
        end
    else
        v = tonumber((select(where == "first" and 1 or n, ...)))
    end
    if not v or v < 0 then
        return nil -- the server says what is wrong
    end
    if v == 0 then
        return FOREVER
    end
    return (where == "last_ms" or where == "option_ms") and v / 1000 or v
end

-- ---- the protocol ----

-- A command in RESP: an array of bulk strings.
local function encode(buf, n, name, ...)
    local count = select("#", ...)
    n = n + 1
    buf[n] = "*" .. (count + 1) .. "\r\n$" .. #name .. "\r\n" .. name .. "\r\n"
    for i = 1, count do
        local v = select(i, ...)
        local t = type(v)
        if t == "number" then
            -- Integers whole (tostring gives 14 digits: 1e15 would lose some).
            v = number_text(v)
        elseif t ~= "string" then
            return nil, i, t
        end
        n = n + 1
        buf[n] = "$" .. #v .. "\r\n" .. v .. "\r\n"
    end
    return n
end

local read_reply

-- The array of count replies; inside it a missing value is null and an
-- error is { false, message }.
local function read_array(sock, count)
    local out = {}
    for i = 1, count do
        local v, err, kind = read_reply(sock)
        if kind == "io" then
            return nil, err, "io"
        end
        if v == nil then
            v = err and { false, err } or null
        end
        out[i] = v
    end
    return out
end

-- value | nil (missing) | nil, message (error reply) | nil, err, "io"
function read_reply(sock)
    local line, err = sock:receive("*l")
    if not line then
        return nil, err, "io"
    end
    local prefix, rest = byte(line), sub(line, 2)
    if prefix == 36 then -- $ bulk string
        local len = tonumber(rest)
        if not len or len > MAX_BULK then
            return nil, "protocol error: bad bulk length", "io"
        end
        if len < 0 then
            return nil
        end
        local data
        data, err = sock:receive(len + 2)
        if not data then
            return nil, err, "io"
        end
        return sub(data, 1, len)
    elseif prefix == 43 then -- + status
        return rest
    elseif prefix == 58 then -- : integer
        local n = tonumber(rest)
        if n and (n >= 2 ^ 53 or n <= -2 ^ 53) and format("%d", n) ~= rest then
            return rest -- past a double's exact integers: the text, as tendril.pg gives int8
        end
        return n
    elseif prefix == 45 then -- - error
        return nil, rest
    elseif prefix == 42 then -- * array
        local count = tonumber(rest)
        if not count then
            return nil, "protocol error: bad array length", "io"
        end
        if count < 0 then
            return nil
        end
        return read_array(sock, count)
    end
    return nil, "protocol error: unexpected reply " .. format("%q", sub(line, 1, 40)), "io"
end

-- ---- pools ----

-- key -> a tendril.pool of the dedicated connections (sockets), with the
-- shared connection (mux) and the server's name (server) beside them.
local pools = {}

local function pool_of(o)
    local p = pools[o.key]
    if not p then
        p = new_pool()
        p.server = o.host .. ":" .. o.port .. "/" .. o.db
        p.park = function(s)
            sock_pool(s, p.idle_timeout)
        end
        pools[o.key] = p
    end
    p.idle_timeout = o.idle_timeout
    return p
end

-- Options from a URL (redis://[[user]:password@]host[:port][/db],
-- rediss:// for TLS) or a table; the pool's key.
local function parse_options(spec, extra)
    local o = {}
    if type(spec) == "string" then
        local scheme, rest = match(spec, "^(rediss?)://(.*)$")
        if not scheme then
            raise("redis.connect: expected a redis:// or rediss:// URL, got " .. format("%q", spec))
        end
        local auth, hostport, path = match(rest, "^([^@/]*)@([^/]*)(.*)$")
        if not auth then
            hostport, path = match(rest, "^([^/]*)(.*)$")
        end
        if auth then
            local user, pass = match(auth, "^([^:]*):(.*)$")
            if user then
                o.username = user ~= "" and url_mod.decode_component(user) or nil
                o.password = url_mod.decode_component(pass)
            else
                o.password = url_mod.decode_component(auth)
            end
        end
        local host, port = match(hostport, "^%[(.+)%]:?(%d*)$")
        if not host then
            host, port = match(hostport, "^([^:]*):?(%d*)$")
        end
        if not host then
            raise("redis.connect: expected host[:port] in the URL, got " .. format("%q", hostport))
        end
        o.host = host ~= "" and host or nil
        o.port = tonumber(port)
        local db = match(path, "^/(%d+)$")
        if path ~= "" and path ~= "/" and not db then
            raise("redis.connect: the URL's path is a database number, got " .. format("%q", path))
        end
        o.db = tonumber(db)
        o.tls = scheme == "rediss" or nil
    elseif type(spec) == "table" then
        for k, v in pairs(spec) do
            o[k] = v
        end
    elseif spec ~= nil then
        raise("redis.connect: expected a URL or an options table, got " .. type(spec))
    end
    if extra ~= nil then
        if type(extra) ~= "table" then
            raise("redis.connect: expected an options table, got " .. type(extra))
        end
        for k, v in pairs(extra) do
            o[k] = v
        end
    end
    for k, v in pairs(DEFAULTS) do
        if o[k] == nil then
            o[k] = v
        end
    end
    for _, k in ipairs({ "port", "db", "timeout", "pool_size", "idle_timeout" }) do
        local v = o[k]
        if type(v) ~= "number" or v < 0 or v ~= v then
            raise("redis.connect: " .. k .. " must be a number >= 0, got " .. tostring(v))
        end
    end
    if o.pool_size < 1 then
        raise("redis.connect: pool_size must be at least 1")
    end
    if o.timeout == 0 then
        raise("redis.connect: timeout must be more than 0 seconds")
    end
    for _, k in ipairs({ "host", "password", "username", "server_name", "ca_file" }) do
        if o[k] ~= nil and type(o[k]) ~= "string" then
            raise("redis.connect: " .. k .. " must be a string, got " .. type(o[k]))
        end
    end
    local function field(s)
        s = s or ""
        return #s .. ":" .. s
    end
    o.key = field(o.host) .. o.port .. "/" .. o.db .. "|" .. field(o.username) .. field(o.password)
        .. (o.tls and ("|tls|" .. field(o.server_name) .. field(o.ca_file) .. tostring(o.verify ~= false)) or "")
    o.socket_opts = { timeout = o.timeout, verify = o.verify, ca_file = o.ca_file }
    return o
end

-- Parsed options by URL (bounded): connect is called once a request.
local option_cache, cached = {}, 0

local function options(spec, extra)
    if extra == nil and type(spec) == "string" then
        local o = option_cache[spec]
        if not o then
            o = parse_options(spec)
            if cached >= 64 then
                option_cache, cached = {}, 0
            end
            option_cache[spec], cached = o, cached + 1
        end
        return o
    end
    return parse_options(spec, extra)
end

-- A new connection, authenticated and on its database: sock | nil, err.
local function dial(o)
    local sock, err = open_socket(o.host, o.port, o.socket_opts, o.tls and true or false, o.server_name, nil, true)
    if not sock then
        return nil, err
    end
    -- Its end is the library's care (the shared one's, or a dedicated
    -- one's given back at its task's end): not a test's leftover.
    tcp._shared(sock)
    local buf, n, count = {}, 0, 0
    if o.password then
        if o.username then
            n = encode(buf, n, "AUTH", o.username, o.password)
        else
            n = encode(buf, n, "AUTH", o.password)
        end
        count = count + 1
    end
    if o.db ~= 0 then
        n = encode(buf, n, "SELECT", o.db)
        count = count + 1
    end
    -- A PING last, in the same write: a server that takes connections but
    -- does not answer (or is not Redis) fails here, within the timeout,
    -- not at every command after.
    n = encode(buf, n, "PING")
    count = count + 1
    local ok
    ok, err = sock:send(concat(buf, "", 1, n))
    -- The first error is the answer (a wrong password, however the rest
    -- goes).
    local v
    for _ = 1, ok and count or 0 do
        v, err = read_reply(sock)
        if v == nil and err then
            break
        end
    end
    if not ok or err then
        sock:close()
        return nil, err
    end
    if v ~= "PONG" then
        sock:close()
        return nil, "protocol error: not a Redis server (PING answered " .. format("%q", tostring(v)) .. ")"
    end
    return sock
end

-- ---- the shared connection ----

-- mux = { sock, waiters = FIFO { event, n (replies), value, err },
-- head, tail, reading, broken, dialing (an event) }

-- Fails every caller still waiting and ends the connection.
local function mux_fail(mux, err)
    mux.broken = true
    mux.sock:close()
    for i = mux.head, mux.tail do
        local w = mux.waiters[i]
        mux.waiters[i] = nil
        if w then
            w.err = err
            event_set(w.event)
        end
    end
    mux.head, mux.tail = 1, 0
end

-- The reader: hands each reply to its caller, in order, while any is owed.
local function mux_read_loop(mux)
    local sock, waiters = mux.sock, mux.waiters
    while mux.head <= mux.tail and not mux.broken do
        local w = waiters[mux.head]
        local v, e, kind
        if w.n then
            v, e, kind = read_array(sock, w.n)
        else
            v, e, kind = read_reply(sock)
        end
        if kind == "io" then
            mux_fail(mux, e)
            break
        end
        waiters[mux.head] = nil
        mux.head = mux.head + 1
        w.value, w.err = v, e
        event_set(w.event)
    end
end

-- A raise in the reader (out of Lua memory for a large reply) must not
-- leave the connection owing replies no one reads: it fails them all.
local function mux_read(mux)
    local ok, err = pcall(mux_read_loop, mux)
    if not ok and not mux.broken then
        mux_fail(mux, "closed")
        core.log("error", "tendril.redis: the shared connection's reader failed: " .. tostring(err))
    end
    mux.reading = false
end

-- The pool's shared connection, dialled if need be: mux | nil, err.
-- Dials the shared connection, in a task of its own (detached: no
-- request's end or deadline cuts the dial short for the others waiting),
-- and tells its waiters.
local function mux_dial(p, mux, o)
    local dialed, sock, err = pcall(dial, o)
    if not dialed then
        core.log("error", "tendril.redis: connecting failed: " .. tostring(sock))
        sock, err = nil, "closed"
    end
    if sock then
        mux.sock = sock
        mux.read_timeout = o.timeout
    else
        mux.failed = err
        if p.mux == mux then
            p.mux = nil
        end
    end
    local dialing = mux.dialing
    mux.dialing = nil
    event_set(dialing)
end

-- The pool's shared connection, dialled if need be (one dial at a time,
-- however many callers wait; its outcome is theirs): mux | nil, err.
local function mux_of(p, o)
    local mux = p.mux
    if not mux or mux.broken then
        mux = { waiters = {}, head = 1, tail = 0, dialing = event_new() }
        p.mux = mux
        -- (A runtime service: it ends at the shutdown, once requests are
        -- drained, and does not keep a finished `tendril run` going.)
        spawn_daemon(mux_dial, p, mux, o)
    end
    if mux.dialing then
        -- (A hair past the dial's own timeout: its outcome, not this wait's
        -- end, answers the caller.)
        local ok, err = event_wait(mux.dialing, o.timeout + 0.1)
        if not ok then
            return nil, err
        end
    end
    if mux.failed then
        return nil, mux.failed
    end
    return mux
end

-- Sends payload (n replies: an array of them; nil: one) on the shared
-- connection and waits for the reply.
local function mux_call(c, payload, n)
    local o = c._opts
    local mux, err = mux_of(c._pool, o)
    if not mux then
        return nil, err
    end
    if mux.tail - mux.head + 1 >= MAX_PENDING then
        return nil, "busy"
    end
    local ok, why
    ok, err, why = sock_queue(mux.sock, payload, MAX_UNSENT)
    if not ok and not why and err ~= "busy" then
        -- It died idle (a server restarted): nothing was sent, so the call
        -- goes on a new one.
        mux_fail(mux, err)
        mux, err = mux_of(c._pool, o)
        if not mux then
            return nil, err
        end
        ok, err, why = sock_queue(mux.sock, payload, MAX_UNSENT)
        if not ok and not why and err ~= "busy" then
            mux_fail(mux, err)
        end
    end
    if not ok then
        -- (busy; or the caller's request is over: nothing was sent)
        return nil, err
    end
    local w = { event = event_new(), n = n }
    mux.tail = mux.tail + 1
    mux.waiters[mux.tail] = w
    if o.timeout > mux.read_timeout then
        -- The reader waits as long as the most patient caller: a handle
        -- with a short timeout gives up on its own (its event), without
        -- failing the others' replies.
        mux.read_timeout = o.timeout
        mux.sock:settimeout(o.timeout)
    end
    if not mux.reading then
        mux.reading = true
        spawn_daemon(mux_read, mux)
    end
    ok, err = event_wait(w.event, o.timeout, "db")
    if not ok then
        -- The reply, when it comes, goes nowhere.
        return nil, err
    end
    return w.value, w.err
end

-- ---- dedicated connections ----

local Conn = {}
local conn_mt = {}

-- The state that makes a connection unfit for the pool (or nil: clean).
local function dirty(c)
    return c._broken or c._subscribed or c._multi or c._watching or c._dirty
end

-- Gives back c's dedicated connection, if it has one.
local function hand_back(c)
    local sock, p = c._sock, c._pool
    c._sock = nil
    if not sock then
        return
    end
    owned.remove(c._owned)
    local unfit = dirty(c) or not sock_usable(sock)
    -- The handle starts afresh (an exclusive command takes a connection
    -- again); a subscription it had is over, and recv says so.
    c._sub_over = c._subscribed
    c._broken, c._subscribed, c._multi, c._watching, c._dirty = nil, nil, nil, nil, nil
    c._topics, c._inbox, c._holder = nil, nil, nil
    if unfit then
        sock:close()
        p:closed()
        return
    end
    -- Idle, its socket is watched by C for its end and its idle timeout.
    p:give(sock, p.park)
end

local function unpool(s)
    return sock_unpool(s)
end

local function close_socket(s)
    s:close()
end

-- c's dedicated connection (taken now if it has none): true | nil, err.
-- It goes back (or is closed) when the task that took it ends, if r has
-- not given it back.
local function take(c)
    if c._sock then
        return true
    end
    local o, p = c._opts, c._pool
    local sock, err = p:take(o.pool_size, o.timeout, unpool, close_socket)
    if sock == nil then
        return nil, err
    end
    if not sock then
        -- (The pool counts it already: a raise in the dial gives the
        -- place back, then goes on.)
        local dialed
        dialed, sock, err = pcall(dial, o)
        if not dialed or not sock then
            p:closed()
            if not dialed then
                error(sock, 0)
            end
            return nil, err
        end
    end
    c._sock = sock
    c._broken, c._subscribed, c._multi, c._watching, c._dirty = nil, nil, nil, nil, nil
    c._topics, c._inbox, c._sub_over = nil, nil, nil
    c._owned = c._owned or { close = function() hand_back(c) end }
    c._holder = task_coroutine()
    owned.add(c._owned)
    return true
end

-- Reconnects a dedicated connection whose socket died while it was clean.
local function revive(c)
    local sock = c._sock
    if not c._broken and sock_usable(sock) then
        return true
    end
    if c._subscribed or c._multi then
        return nil, "closed"
    end
    sock:close()
    local s, err = dial(c._opts)
    if not s then
        -- It stays counted: the handle holds its place until given back.
        c._broken = true
        c._sock = sock
        return nil, err
    end
    c._sock, c._broken = s, nil
    return true
end

-- Sends payload on c's dedicated connection and reads its reply (n:
-- that many, as an array); block: seconds the server may hold the reply
-- back (a blocking command), waited beyond the timeout.
local function exchange(c, payload, n, block)
    local ok, err = revive(c)
    if not ok then
        return nil, err
    end
    c._busy = true
    local sock = c._sock
    if block then
        sock:settimeout(c._opts.timeout + block)
    end
    ok, err = sock:send(payload)
    local v, e, kind
    if not ok then
        e, kind = err, "io"
    elseif n then
        v, e, kind = read_array(sock, n)
    else
        v, e, kind = read_reply(sock)
    end
    if block and kind ~= "io" then
        sock:settimeout(c._opts.timeout)
    end
    c._busy = nil
    if kind == "io" then
        -- A reply may be on its way: nothing more on this connection.
        c._broken = true
        sock:close()
        return nil, e
    end
    return v, e
end

--- A handle on the server: spec is a URL or { host =, port =, password
--- =, username =, db =, timeout =, tls =, pool_size =, idle_timeout = };
--- opts adds to it. It connects (once per server: the shared connection)
--- and returns the handle, or nil, err.
function _M.connect(spec, opts)
    local o = options(spec, opts)
    local p = pool_of(o)
    local mux, err = mux_of(p, o)
    if not mux then
        return nil, err
    end
    return setmetatable({ _opts = o, _pool = p }, conn_mt)
end

-- Whether the running task is the one that took c's dedicated
-- connection (or none did: one taken at a module's top level).
local function held_here(c)
    local h = c._holder
    return h == nil or h == task_coroutine()
end

-- Misuse raises at the caller's line.
local function check(c, fname)
    if c._done then
        raise(fname .. ": the connection was released or closed")
    end
    if c._busy then
        raise(fname .. ": the connection is busy with another call (one task at a time)")
    end
end

-- ---- pub/sub ----

-- The commands of a subscription, their confirmations' kind, and which
-- set of names each adds to or takes from.
local PUBSUB = { SUBSCRIBE = "subscribe", PSUBSCRIBE = "psubscribe", SSUBSCRIBE = "ssubscribe",
    UNSUBSCRIBE = "subscribe", PUNSUBSCRIBE = "psubscribe", SUNSUBSCRIBE = "ssubscribe" }
local MESSAGES = { message = true, pmessage = true, smessage = true, pong = true }

local function count_keys(t)
    local n = 0
    for _ in pairs(t) do
        n = n + 1
    end
    return n
end

-- (P|S)(UN)SUBSCRIBE: sends it and reads its confirmations, one a name
-- (for UNSUBSCRIBE without names, one a name subscribed). Messages that
-- come meanwhile wait in c._inbox for recv. When nothing is subscribed
-- any more the connection is an ordinary one again.
local function pubsub(c, cmd, fname, ...)
    if c._sock and not held_here(c) then
        raise(fname .. ": the handle's own connection is another task's (a transaction, a subscription): "
            .. "connect in each task")
    end
    check(c, fname)
    local count = select("#", ...)
    local set_kind = PUBSUB[cmd]
    local adding = cmd == "SUBSCRIBE" or cmd == "PSUBSCRIBE" or cmd == "SSUBSCRIBE"
    if adding and count == 0 then
        raise(fname .. ": expected at least one channel")
    end
    local buf = {}
    local n, i, t = encode(buf, 0, cmd, ...)
    if not n then
        raise(format("%s: argument %d is a %s (channel names are strings)", fname, i, t))
    end
    if not adding and not c._subscribed then
        return true -- nothing to leave
    end
    local ok, err = take(c)
    if not ok then
        return nil, err
    end
    ok, err = revive(c)
    if not ok then
        return nil, err
    end
    local topics = c._topics or { subscribe = {}, psubscribe = {}, ssubscribe = {} }
    c._topics = topics
    local set = topics[set_kind]
    local expected = count > 0 and count or math.max(1, count_keys(set))
    local kind = lower(cmd)
    local sock = c._sock
    c._subscribed, c._busy = true, true
    ok, err = sock:send(concat(buf, "", 1, n))
    local got = 0
    while ok and got < expected do
        local v, e, io = read_reply(sock)
        if io or type(v) ~= "table" then
            -- (an error reply: what follows it cannot be told apart)
            ok, err = nil, e or "protocol error: expected a confirmation"
        elseif v[1] == kind then
            got = got + 1
            if v[2] ~= nil and v[2] ~= null then
                set[v[2]] = adding or nil
            end
        elseif MESSAGES[v[1]] then
            local inbox = c._inbox or { head = 1, tail = 0 }
            c._inbox = inbox
            inbox.tail = inbox.tail + 1
            inbox[inbox.tail] = v
        else
            ok, err = nil, "protocol error: unexpected " .. tostring(v[1])
        end
    end
    c._busy = nil
    if not ok then
        c._broken = true
        hand_back(c) -- closed (broken), and the handle is an ordinary one again
        return nil, err
    end
    -- Out of subscribed mode once none of the three kinds is left (our own
    -- count: Redis 7's counts shard subscriptions apart from the others);
    -- what came before the last confirmation goes with the subscriptions.
    if not (next(topics.subscribe) or next(topics.psubscribe) or next(topics.ssubscribe)) then
        c._subscribed, c._inbox = nil, nil
    end
    return true
end

-- A command on a subscribed connection: PING (its answer comes through
-- recv as { "pong", "" }) and the subscription commands; nothing else.
local function subscribed_command(c, fname, cmd, ...)
    if PUBSUB[cmd] then
        return pubsub(c, cmd, fname, ...)
    end
    check(c, fname)
    if cmd ~= "PING" then
        raise(fname .. ": the connection is subscribed: only subscribe, unsubscribe, ping and recv")
    end
    local buf = {}
    local n = encode(buf, 0, cmd, ...)
    local ok, err = c._sock:send(concat(buf, "", 1, n))
    if not ok then
        c._broken = true
        hand_back(c) -- closed (broken), and the handle is an ordinary one again
        return nil, err
    end
    return true
end

-- One command: its reply as a command returns it. fname names the method
-- for misuse errors (raised at the caller of the method).
local function command(c, fname, cmd, ...)
    -- The handle's own connection, if it has one, is the task's that took
    -- it: another task's plain commands go on the shared connection, its
    -- exclusive ones are misuse.
    local mine = not c._sock or held_here(c)
    if not mine and EXCLUSIVE[cmd] then
        raise(fname .. ": the handle's own connection is another task's (a transaction, a subscription): "
            .. "connect in each task")
    end
    if mine and (c._subscribed or PUBSUB[cmd]) then
        return subscribed_command(c, fname, cmd, ...)
    end
    if cmd == "HELLO" and select("#", ...) > 0 and tonumber((...)) ~= 2 then
        raise(fname .. ": RESP3 is not supported (tendril.redis speaks RESP2)")
    end
    local buf = {}
    local n, i, t = encode(buf, 0, cmd, ...)
    if not n then
        raise(format("%s: argument %d is a %s (strings and numbers only)", fname, i, t))
    end
    local payload = n == 1 and buf[1] or concat(buf, "", 1, n)
    if not EXCLUSIVE[cmd] and (not c._sock or not mine) then
        if c._done then
            raise(fname .. ": the connection was released or closed")
        end
        -- (Another task's transaction on this handle is not this call's.)
        return mux_call(c, payload)
    end
    check(c, fname)
    local ok, err = take(c)
    if not ok then
        return nil, err
    end
    local v
    v, err = exchange(c, payload, nil, block_time(cmd, ...))
    if cmd == "MULTI" and v then
        c._multi = true
    elseif cmd == "EXEC" or cmd == "DISCARD" then
        c._multi, c._watching = nil, nil
    elseif cmd == "WATCH" then
        c._watching = true
    elseif cmd == "UNWATCH" then
        c._watching = nil
    elseif STATEFUL[cmd] then
        -- The connection is not what the pool's key says any more (another
        -- database, user, protocol): closed, not pooled, when given back.
        c._dirty = true
    end
    return v, err
end

--- Any command: r:call("HSET", "h", "f", "v").
function Conn.call(c, name, ...)
    if type(name) ~= "string" then
        raise("redis:call: expected a command name, got " .. type(name))
    end
    return command(c, "redis:call", upper(name), ...)
end

--- Runs fn(p), where p records commands as r does, then sends them all at
--- once: the array of replies (null for a missing value, { false, "ERR
--- ..." } for an error), or nil, err when the connection failed.
function Conn.pipeline(c, fn)
    if c._done then
        raise("redis:pipeline: the connection was released or closed")
    end
    if c._subscribed and held_here(c) then
        raise("redis:pipeline: the connection is subscribed: only subscribe, unsubscribe, ping and recv")
    end
    if type(fn) ~= "function" then
        raise("redis:pipeline: expected a function, got " .. type(fn))
    end
    local buf, n, count, exclusive, block = {}, 0, 0, false, nil
    local p = setmetatable({}, {
        __index = function(_, name)
            return function(_, ...)
                local cmd = upper(name)
                if PUBSUB[cmd] then
                    raise("redis:pipeline: " .. lower(name) .. " is r:" .. lower(name) .. "'s, not a pipeline's")
                end
                local m, i, t = encode(buf, n, cmd, ...)
                if not m then
                    raise(format("redis:%s: argument %d is a %s (strings and numbers only)", name, i, t))
                end
                n = m
                count = count + 1
                exclusive = exclusive or EXCLUSIVE[cmd] or false
                local b = block_time(cmd, ...)
                if b then
                    block = (block or 0) + b
                end
            end
        end,
    })
    fn(p)
    if count == 0 then
        return {}
    end
    local payload = concat(buf, "", 1, n)
    if not exclusive and (not c._sock or not held_here(c)) then
        return mux_call(c, payload, count)
    end
    if c._sock and not held_here(c) then
        raise("redis:pipeline: the handle's own connection is another task's (a transaction, a subscription): "
            .. "connect in each task")
    end
    check(c, "redis:pipeline")
    -- MULTI, SELECT, SUBSCRIBE, a blocking command...: not on the shared
    -- connection, where every task's commands go.
    local ok, err = take(c)
    if not ok then
        return nil, err
    end
    if exclusive then
        -- What state they leave is not followed: the connection is closed,
        -- not pooled, when given back.
        c._dirty = true
    end
    return exchange(c, payload, count, block)
end

--- Subscribes to channels; then r:recv() gives their messages. The
--- connection takes no other command but ping and (un)subscribing until
--- it has left every channel.
function Conn.subscribe(c, ...)
    return pubsub(c, "SUBSCRIBE", "redis:subscribe", ...)
end

function Conn.psubscribe(c, ...)
    return pubsub(c, "PSUBSCRIBE", "redis:psubscribe", ...)
end

--- Leaves channels (every one without names).
function Conn.unsubscribe(c, ...)
    return pubsub(c, "UNSUBSCRIBE", "redis:unsubscribe", ...)
end

function Conn.punsubscribe(c, ...)
    return pubsub(c, "PUNSUBSCRIBE", "redis:punsubscribe", ...)
end

--- The next message of a subscription: { "message", channel, payload } or
--- { "pmessage", pattern, channel, payload } ({ "pong", "" } after a
--- ping); nil, "timeout" after timeout seconds (the connection's timeout
--- by default); nil, err when it failed.
function Conn.recv(c, timeout)
    if c._sock and not held_here(c) then
        raise("redis:recv: the subscription is another task's: subscribe in each task")
    end
    check(c, "redis:recv")
    if not c._subscribed then
        if c._sub_over then
            return nil, "closed" -- its task ended, and the subscription with it
        end
        raise("redis:recv: subscribe first")
    end
    if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
        raise("redis:recv: a timeout is a number of seconds >= 0, got " .. tostring(timeout))
    end
    local inbox = c._inbox
    if inbox and inbox.head <= inbox.tail then
        local m = inbox[inbox.head]
        inbox[inbox.head] = nil
        inbox.head = inbox.head + 1
        return m
    end
    local sock = c._sock
    if c._broken or not sock_usable(sock) then
        c._broken = true
        hand_back(c) -- closed, and the handle is an ordinary one again
        return nil, "closed"
    end
    if timeout then
        sock:settimeout(timeout)
    end
    c._busy = true
    local line, err, partial = sock:receive("*l")
    if timeout then
        sock:settimeout(c._opts.timeout)
    end
    if not line then
        c._busy = nil
        if err == "timeout" and partial == "" then
            return nil, "timeout"
        end
        c._broken = true
        hand_back(c) -- closed (broken), and the handle is an ordinary one again
        return nil, err
    end
    local count = byte(line) == 42 and tonumber(sub(line, 2))
    local v, e, kind
    if count then
        v, e, kind = read_array(sock, count)
    else
        v, e, kind = nil, "protocol error: a message is an array", "io"
    end
    c._busy = nil
    if kind == "io" then
        c._broken = true
        hand_back(c) -- closed (broken), and the handle is an ordinary one again
        return nil, e
    end
    return v
end

--- Gives back what r holds (its dedicated connection goes back to the
--- pool, or is closed when it is not clean); r is unusable afterwards.
function Conn.release(c)
    if c._busy then
        raise("redis:release: the connection is busy with another call")
    end
    c._done = true
    hand_back(c)
    return true
end

--- Like release, but a dedicated connection is closed.
function Conn.close(c)
    if c._sock then
        c._broken = true
    end
    c._done = true
    hand_back(c)
    return true
end

-- Every other method name is a command of that name.
local commands = {}
conn_mt.__index = function(_, name)
    local f = Conn[name] or commands[name]
    if f or type(name) ~= "string" or sub(name, 1, 1) == "_" then
        return f
    end
    local cmd, fname = upper(name), "redis:" .. lower(name)
    f = function(c, ...)
        return command(c, fname, cmd, ...)
    end
    commands[name] = f
    return f
end

--- The pools, for checks and metrics: an array of { server =
--- "host:port/db", open =, idle =, waiting =, pending = } (open, idle and
--- waiting: dedicated connections; pending: replies the shared connection
--- owes; credentials left out).
function _M.pools()
    local out = {}
    for _, p in pairs(pools) do
        p:prune(sock_usable, close_socket)
        local mux = p.mux
        out[#out + 1] = { server = p.server, open = p.open, idle = #p.idle, waiting = #p.waiting,
            pending = mux and (mux.tail - mux.head + 1) or 0 }
    end
    return out
end

return _M
