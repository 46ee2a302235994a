-- PostgreSQL on the event loop: local pg = require "tendril.pg"
--
--   local db, err = pg.connect("postgres://user:pass@127.0.0.1/app")
--   local rows, n = db:query("SELECT id, name FROM users WHERE id = $1", 42)
--   -- rows[1].name; n: the rows the statement returned or touched
--   db:release()
--
-- libpq's asynchronous API under libuv (core/api_pg.c): authentication
-- (SCRAM), TLS (sslmode) and the wire protocol are libpq's. Values come
-- back by type: integers as numbers (int8 past 2^53 as strings), floats,
-- booleans, text (numeric too, exact), SQL NULL as pg.null, JSON as text or
-- decoded with { json = true }. A failure is nil, message, sqlstate; a
-- connection lost is nil, "closed", and the next call connects again.
--
-- Connections are pooled per connection string and options: at most
-- pool_size (16) open, in use or idle; connect waits for one to come back
-- when all are in use, up to the timeout. A connection goes back at
-- db:release(), or when the task that took it ends, if it is clean (no
-- transaction open, not listening, nothing lost), else it is closed.
local core = require "tendril.core"
local owned = require "tendril.owned"
local raise = require "tendril.misuse"
local number_text = require("tendril.wire").number
local new_pool = require("tendril.pool").new

local type, tostring, error, select, setmetatable, pcall = type, tostring, error, select, setmetatable, pcall
local format, find, match, unpack = string.format, string.find, string.match, unpack
local pg_connect, pg_query, pg_notification = core.pg_connect, core.pg_query, core.pg_notification
local pg_prepare, pg_exec = core.pg_prepare, core.pg_exec
local pg_usable, pg_close, pg_escape, pg_state = core.pg_usable, core.pg_close, core.pg_escape_identifier,
    core.pg_state
local pg_park, pg_unpark = core.pg_park, core.pg_unpark

local now = core.now

local _M = {}

local function pack(...)
    return { n = select("#", ...), ... }
end

--- SQL NULL, in rows and as a parameter: json.null, so that rows encode
--- with it as null.
_M.null = require("tendril.json").null
core.pg_set_null(_M.null)
local null = _M.null

local DEFAULTS = { pool_size = 16, timeout = 10, query_timeout = 60, idle_timeout = 60 }

local pools = {} -- key -> a tendril.pool of connections (with its size beside them)

-- Statements prepared on each connection: conn -> { [sql] = name, n = count }.
-- A statement runs prepared from its second use: the server then parses
-- and plans it once per connection, not once per query.
local prepared = setmetatable({}, { __mode = "k" })
local MAX_PREPARED = 256 -- a connection's; past it, statements run unprepared
local MAX_SEEN = 1024     -- statements remembered as run once, a connection's


local function options(info, opts)
    if type(info) ~= "string" then
        raise("pg.connect: expected a connection string (postgres://... or key=value ...), got " .. type(info))
    end
    if opts ~= nil and type(opts) ~= "table" then
        raise("pg.connect: expected an options table, got " .. type(opts))
    end
    local o = { info = info, json = opts and opts.json or false }
    for k, v in pairs(DEFAULTS) do
        local given = opts and opts[k]
        if given ~= nil and (type(given) ~= "number" or given < 0 or given ~= given) then
            raise("pg.connect: " .. k .. " must be a number >= 0, got " .. tostring(given))
        end
        o[k] = given or v
    end
    if o.pool_size < 1 then
        raise("pg.connect: pool_size must be at least 1")
    end
    -- libpq's connect_timeout (in the URL or key=value) bounds connecting
    -- when no timeout option is given: libpq's asynchronous connect
    -- leaves it to the caller.
    local from_info = tonumber(match(info, "[?&]connect_timeout=(%d+)")
        or match(info, "connect_timeout%s*=%s*'?(%d+)"))
    o.connect_timeout = o.timeout
    if from_info and not (opts and opts.timeout ~= nil) then
        o.connect_timeout = from_info
    end
    o.key = #info .. ":" .. info .. "|" .. o.pool_size
    return o
end

-- Parsed options by connection string (bounded): connect comes once a
-- request, mostly without options.
local option_cache, cached = {}, 0

local function options_of(info, opts)
    if opts ~= nil or type(info) ~= "string" then
        return options(info, opts)
    end
    local o = option_cache[info]
    if not o then
        o = options(info)
        if cached >= 64 then
            option_cache, cached = {}, 0
        end
        option_cache[info], cached = o, cached + 1
    end
    return o
end

local Db = {}
local db_mt = { __index = Db }

-- Gives db's connection back (or closes it).
local function hand_back(db)
    local conn, p = db._conn, db._pool
    db._conn = nil
    if not conn then
        return
    end
    owned.remove(db._owned)
    if db._tx or db._listening or not pg_usable(conn) then
        pg_close(conn)
        p:closed()
        return
    end
    -- Idle, it closes after idle_timeout (C's timer), unless taken first.
    p:give(conn, p.park)
end

--- A connection from the pool (or a new one): db, or nil, err. opts:
--- pool_size (16), timeout (connecting and waiting for the pool, 10 s),
--- query_timeout (60 s; 0: none), idle_timeout (60 s), json (decode JSON
--- columns).
function _M.connect(info, opts)
    local o = options_of(info, opts)
    local p = pools[o.key]
    if not p then
        -- Its functions are made once (the idle timeout is the last
        -- connect's): nothing is allocated for a take.
        p = new_pool()
        p.size = o.pool_size
        p.park = function(c)
            pg_park(c, p.idle_timeout)
        end
        p.stale = function(_, since)
            return p.idle_timeout > 0 and now() - since > p.idle_timeout
        end
        p.usable = function(c, since)
            if not p.stale(c, since) and pg_usable(c) then
                pg_unpark(c)
                return true
            end
            return false
        end
        pools[o.key] = p
    end
    p.idle_timeout = o.idle_timeout
    local conn, err = p:take(o.pool_size, o.timeout, p.usable, pg_close, p.stale)
    if conn == nil then
        return nil, err
    end
    if not conn then
        -- (The pool counts it already: a raise gives the place back, then
        -- goes on.)
        local connected
        connected, conn, err = pcall(pg_connect, o.info, o.connect_timeout)
        if not connected or not conn then
            p:closed()
            if not connected then
                error(conn, 0)
            end
            return nil, err
        end
    end
    local db = setmetatable({ _conn = conn, _pool = p, _opts = o }, db_mt)
    db._owned = { close = function() hand_back(db) end }
    owned.add(db._owned)
    return db
end

local function check(db, fname)
    if not db._conn then
        raise(fname .. ": the connection was released or closed")
    end
end

-- A parameter as libpq takes it: text, or pg.null (false: a string with
-- a NUL byte, which text parameters cannot carry).
local json
local function param(v, i)
    local t = type(v)
    if v == nil or v == null then
        return null
    elseif t == "string" then
        return not find(v, "\0", 1, true) and v

    elseif t == "number" then
        return number_text(v)
    elseif t == "boolean" then
        return v and "true" or "false"
    elseif t == "table" then
        json = json or require "tendril.json"
        return json.encode(v)
    end
    raise(format("db:query: parameter %d is a %s (strings, numbers, booleans, tables as JSON, pg.null)", i, t))
end

-- JSON and JSONB columns decoded (json option).
local JSON_TYPES = { [114] = true, [3802] = true }
local function decode_json(rows)
    local cols, types = rows.columns, rows.types
    json = json or require "tendril.json"
    for c = 1, #cols do
        if JSON_TYPES[types[c]] then
            local name = cols[c]
            for r = 1, #rows do
                local v = rows[r][name]
                if type(v) == "string" then
                    rows[r][name] = json.decode(v)
                end
            end
        end
    end
end

-- A connection that died while clean comes back (not inside a
-- transaction: what it did is gone with it).
local function revive(db, state)
    if state ~= "closed" then
        return true
    end
    if db._tx then
        -- Inside db:transaction's function: what came before is gone with
        -- the connection, and what follows must not run outside it.
        return nil, "closed"
    end
    -- (A LISTEN is gone with its connection: the new one listens to
    -- nothing until db:listen again; recv said "closed".)
    db._listening = nil
    pg_close(db._conn)
    local conn, err = pg_connect(db._opts.info, db._opts.connect_timeout)
    if not conn then
        -- It keeps its place in the pool until given back.
        return nil, err
    end
    db._conn = conn
    return true
end

-- db's connection, live (one that died while clean is replaced): true |
-- nil, err; a call already running on it is misuse.
local function live(db, fname)
    local cstate = pg_state(db._conn)
    if cstate == "busy" then
        raise(fname .. ": the connection is busy with another call (one task at a time)")
    end
    return revive(db, cstate)
end

--- Runs sql with its $1, $2... parameters: rows (an array of { column =
--- value }, with rows.columns in order), and the count of rows returned or
--- touched; or nil, message, sqlstate.
function Db.query(db, sql, ...)
    check(db, "db:query")
    if type(sql) ~= "string" then
        raise("db:query: expected SQL text, got " .. type(sql))
    end
    if find(sql, "\0", 1, true) then
        -- libpq would cut it there (and run what comes before).
        raise("db:query: the SQL text holds a NUL byte")
    end
    local n = select("#", ...)
    local ok, err = live(db, "db:query")
    if not ok then
        return nil, err
    end
    local conn, timeout = db._conn, db._opts.query_timeout
    local args = n > 0 and { ... } or nil
    for i = 1, n do
        local v = param(args[i], i)
        if not v then
            -- PostgreSQL's own answer to a NUL in text; bytea takes its
            -- escaped form ('\x00...', or decode($1, 'base64')).
            return nil, format("parameter %d contains a NUL byte (text cannot hold one)", i), "22021"
        end
        args[i] = v
    end
    local stmts = prepared[conn]
    if not stmts then
        stmts = { names = {}, n = 0, seen = {}, nseen = 0 }
        prepared[conn] = stmts
    end
    local name = stmts.names[sql]
    if not name then
        local seen = stmts.seen[sql]
        if seen then
            -- Its second use on this connection: prepared from now on (one
            -- that cannot be, a syntax error say, runs unprepared and is
            -- not tried again).
            if stmts.n < MAX_PREPARED then
                name = "tendril_" .. (stmts.n + 1)
                local prepared_ok, perr, pstate = pg_prepare(conn, timeout, name, sql)
                if prepared_ok then
                    stmts.names[sql], stmts.n = name, stmts.n + 1
                else
                    name = nil
                    stmts.seen[sql] = false
                    if perr == "timeout" then
                        return nil, perr, pstate
                    end
                end
            end
        elseif seen == nil then
            if stmts.nseen < MAX_SEEN then
                stmts.seen[sql], stmts.nseen = true, stmts.nseen + 1
            else
                -- Statements built with their values inline are all new:
                -- what was seen once is forgotten rather than kept for ever.
                stmts.seen, stmts.nseen = { [sql] = true }, 1
            end
        end
    end
    local rows, affected, state
    if name then
        rows, affected, state = pg_exec(conn, timeout, name, unpack(args or {}, 1, n))
        if not rows and (state == "0A000" or state == "26000") then
            -- The schema changed under it ("cached plan must not change
            -- result type"), or it is gone: unprepared, once. Not inside a
            -- transaction, which the failure aborted: its own error is
            -- the answer (the retry's would be "transaction is aborted").
            stmts.names[sql] = nil
            if pg_state(conn) ~= "failed" then
                rows, affected, state = pg_query(conn, timeout, sql, unpack(args or {}, 1, n))
            end
        end
    else
        rows, affected, state = pg_query(conn, timeout, sql, unpack(args or {}, 1, n))
    end
    if not db._conn then
        return nil, "closed" -- closed (db:close, its task's end) while it ran
    end
    if not rows then
        -- The connection went with the statement (the server shut down,
        -- a network failure): "closed", whatever the server said first.
        -- (0A000 with the connection given up: a COPY, which tendril.pg
        -- refuses; its message says so.)
        if pg_state(db._conn) == "closed" and state ~= "0A000" and affected ~= "timeout" then
            return nil, "closed", state
        end
        return nil, affected, state
    end
    if db._opts.json then
        decode_json(rows)
    end
    return rows, affected
end

--- Runs fn(db) in a transaction: COMMIT when it returns (its results are
--- returned), ROLLBACK when it raises (then the same error is raised).
--- nil, err when BEGIN or COMMIT fails.
-- ROLLBACK or COMMIT: the transaction is over when it answers, or when
-- its connection is gone (the server ended it; a COMMIT's fate is then
-- unknown, and the call says "closed"), and the handle connects again at
-- its next call. Otherwise (the request's deadline passed) _tx stays: the
-- connection is closed, never pooled with the transaction open.
local function end_tx(db, sql)
    local ok, err, state = db:query(sql)
    if ok or (db._conn and pg_state(db._conn) == "closed") then
        db._tx = nil
    end
    return ok, err, state
end

function Db.transaction(db, fn)
    check(db, "db:transaction")
    if type(fn) ~= "function" then
        raise("db:transaction: expected a function, got " .. type(fn))
    end
    if db._tx then
        raise("db:transaction: a transaction is open already")
    end
    local ok, err, state = db:query("BEGIN")
    if not ok then
        return nil, err, state
    end
    db._tx = true
    local res = pack(pcall(fn, db))
    if not db._conn then
        -- fn released or closed it (closed, then: _tx was set): fn's error
        -- stands, else the transaction is gone with the connection.
        if not res[1] then
            error(res[2], 0)
        end
        return nil, "closed"
    end
    if not res[1] then
        end_tx(db, "ROLLBACK")
        error(res[2], 0)
    end
    if pg_state(db._conn) == "failed" then
        -- A statement failed and fn went on: COMMIT would roll back and say
        -- COMMIT; say it.
        end_tx(db, "ROLLBACK")
        return nil, "transaction aborted: a statement in it failed", "25P02"
    end
    ok, err, state = end_tx(db, "COMMIT")
    if not ok then
        return nil, err, state
    end
    return unpack(res, 2, res.n or #res)
end

--- LISTEN channel: then db:recv() gives its notifications. The connection
--- is closed, not pooled, when it is given back.
function Db.listen(db, channel)
    check(db, "db:listen")
    if type(channel) ~= "string" or find(channel, "\0", 1, true) then
        raise("db:listen: expected a channel name, got " .. (type(channel) == "string" and "one with a NUL byte"
            or type(channel)))
    end
    -- On a live connection (one that died is replaced first, outside a
    -- transaction), marked before LISTEN: one that timed out may have
    -- taken on the server, so the connection is closed, never pooled,
    -- whatever the answer.
    local alive, lerr = live(db, "db:listen")
    if not alive then
        return nil, lerr
    end
    db._listening = true
    local ok, err, state = db:query("LISTEN " .. pg_escape(db._conn, channel))
    if not ok then
        return nil, err, state
    end
    return true
end

--- The next notification: { channel =, payload =, pid = }; nil, "timeout"
--- after timeout seconds (none: as long as it takes); nil, err.
function Db.recv(db, timeout)
    check(db, "db:recv")
    if not db._listening then
        raise("db:recv: listen first")
    end
    if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
        raise("db:recv: a timeout is a number of seconds >= 0, got "
            .. (type(timeout) == "number" and tostring(timeout) or type(timeout)))
    end
    -- (For the C side 0 is no timeout; here it is "only what came already".)
    local note, err = pg_notification(db._conn, timeout == nil and 0 or math.max(timeout, 0.001))
    if not note and err ~= "timeout" and (not db._conn or pg_state(db._conn) == "closed") then
        -- The server went (libpq's words are several lines), or another
        -- task closed or released the handle.
        return nil, "closed"
    end
    return note, err
end

--- Back to the pool (closed when not clean); db is unusable afterwards.
function Db.release(db)
    hand_back(db)
    return true
end

--- Closes the connection; db is unusable afterwards.
function Db.close(db)
    local conn = db._conn
    if conn then
        db._conn = nil
        owned.remove(db._owned)
        pg_close(conn)
        db._pool:closed()
    end
    return true
end

--- The pools' counts: an array of { open =, idle =, waiting =, size = }
--- (connection strings left out: they may hold passwords).
function _M.pools()
    local out = {}
    for _, p in pairs(pools) do
        p:prune(pg_usable, pg_close)
        out[#out + 1] = { open = p.open, idle = #p.idle, waiting = #p.waiting, size = p.size }
    end
    return out
end

return _M
