-- TCP clients and servers: local tcp = require "tendril.tcp"
--
-- Every call that waits suspends only the calling coroutine. Failure
-- returns nil, err (and, for receive, the partial data); misuse raises.
-- Idle connections go back to a pool per host and port with
-- sock:setkeepalive, and tcp.connect takes them from there first.
local core = require "tendril.core"
local tendril = require "tendril"
local generation = require "tendril.generation"
local trace = require "tendril.traceback"
local release_owned = require("tendril.owned").release

local type, error, tostring, setmetatable, remove, xpcall, pairs = type, error, tostring, setmetatable, table.remove,
    xpcall, pairs
local find = string.find
local sock_connect, sock_send, sock_receive = core.sock_connect, core.sock_send, core.sock_receive
local sock_settimeout, sock_close, sock_usable = core.sock_settimeout, core.sock_close, core.sock_usable
local sock_pool, sock_unpool, sock_starttls, sock_open = core.sock_pool, core.sock_unpool, core.sock_starttls,
    core.sock_open
local tls_trust = core.tls_trust

local DEFAULT_TIMEOUT = tendril.DEFAULT_TIMEOUT
local DEFAULT_POOL_IDLE = 60
local DEFAULT_POOL_SIZE = 64

local _M = {}

local methods = {}
core.socket_mt.__index = methods

local pools = {} -- "host:port" (and the TLS options) -> idle sockets, oldest first
local weak = { __mode = "k" }
local pool_key = setmetatable({}, weak) -- socket -> "host:port" (client sockets)
local reuses = setmetatable({}, weak)   -- socket -> times taken from a pool
local shared = setmetatable({}, weak)   -- socket -> true: a library's long-lived connection

local function check_timeout(fname, t)
    if t ~= nil and (type(t) ~= "number" or t < 0) then
        error(fname .. ": a timeout is a number of seconds >= 0, got " .. tostring(t), 3)
    end
end

-- TLS options: { tls =, server_name =, verify =, ca_file = }, checked;
-- misuse raises at the caller of fname (level 3 from here).
local function check_tls(fname, o)
    if o.server_name ~= nil and (type(o.server_name) ~= "string" or o.server_name == "") then
        error(fname .. ": server_name must be a host name, got " .. (o.server_name == "" and "\"\""
            or type(o.server_name)), 3)
    end
    if o.alpn ~= nil and type(o.alpn) ~= "string" then
        error(fname .. ": alpn must be a protocol name, got " .. type(o.alpn), 3)
    end
    if o.verify ~= nil and type(o.verify) ~= "boolean" then
        error(fname .. ": verify must be true or false, got " .. type(o.verify), 3)
    end
    if o.ca_file ~= nil and type(o.ca_file) ~= "string" then
        error(fname .. ": ca_file must be a file name, got " .. type(o.ca_file), 3)
    end
    if (o.server_name and find(o.server_name, "\0", 1, true)) or (o.ca_file and find(o.ca_file, "\0", 1, true)) then
        error(fname .. ": server_name and ca_file must not hold a NUL byte", 3)
    end
end

-- The pool of a connection: its address and everything that makes a TLS
-- connection what it is (a connection verified for one name is not one
-- for another); tendril.http's connections have pools of their own (their
-- waits count as http, a raw socket's as tcp).
-- Each field that a caller chooses is length-prefixed, so that no two
-- different sets of options can spell the same key (a session resumed or a
-- connection pooled under it skips verification).
local function key_of(host, port, tls, verify, server_name, ca_file, alpn, for_http)
    local addr = (for_http and "http|" or "") .. host .. ":" .. port
    if not tls then
        return addr
    end
    local ca, protos = ca_file or "", alpn or ""
    return addr .. "|tls|" .. (verify and "1" or "0") .. "|" .. #server_name .. ":" .. server_name
        .. #ca .. ":" .. ca .. #protos .. ":" .. protos
end

local function take_pooled(key)
    local pool = pools[key]
    while pool and #pool > 0 do
        local s = remove(pool)
        if sock_unpool(s) then
            reuses[s] = (reuses[s] or 0) + 1
            return s
        end
    end
    return nil
end

-- Connects (the checks done): opts gives the timeouts and, with tls, verify
-- and ca_file; server_name, alpn and fresh come apart, so that a caller such
-- as tendril.http passes its user's options without letting others in.
-- fresh: a new connection whatever the pool holds (tendril.http's retry:
-- idle connections often die together, at the server's keep-alive timeout,
-- and the next pooled one may be as stale as the last). for_http: the
-- socket's waits count as http in the request's timings, not tcp.
local function open(host, port, opts, tls, server_name, alpn, fresh, for_http)
    local timeout = opts.timeout or DEFAULT_TIMEOUT
    local read_timeout = opts.read_timeout or timeout
    local verify = opts.verify ~= false
    server_name = server_name or host
    local key = key_of(host, port, tls, verify, server_name, opts.ca_file, alpn, for_http)
    local s = not fresh and take_pooled(key)
    if s then
        sock_settimeout(s, read_timeout)
        return s
    end
    -- looked up at each call: a script may wrap tendril.resolve
    local addrs, err = tendril.resolve(host)
    if not addrs then
        return nil, err
    end
    -- The trust store loads once, off the loop (the system's takes tens of
    -- milliseconds); after that this is a lookup.
    if tls and verify then
        local ok, e = tls_trust(opts.ca_file)
        if not ok then
            return nil, e
        end
    end
    for i = 1, #addrs do
        -- The pool's key says what makes two connections alike: a session
        -- kept under it resumes the next one's handshake.
        s, err = sock_connect(addrs[i], port, opts.connect_timeout or timeout, tls, server_name, verify,
            opts.ca_file, alpn, tls and key or nil, for_http)
        if s then
            sock_settimeout(s, read_timeout)
            pool_key[s] = key
            return s
        end
    end
    return nil, err
end

--- For tendril.http: open without the checks (it made its own).
_M._open = open

--- A library's connection whose end the library sees to (tendril.redis's
--- shared one, and its dedicated ones, given back when their task ends),
--- like a pool's: tendril test does not count it as a test's.
function _M._shared(s)
    shared[s] = true
end

--- For tendril test: the client sockets open now and not idle in a pool
--- (those not yet collected count: a socket dropped unclosed is open until
--- the collector finds it).
function _M._open_count()
    local n = 0
    for s in pairs(pool_key) do
        if not shared[s] and sock_open(s) then
            n = n + 1
        end
    end
    return n
end

--- Connects to host:port, trying each address the name resolves to in turn;
--- a pooled idle connection to the same host and port is used first.
--- opts: timeout (connecting and each read or write, default 60 s),
--- connect_timeout, read_timeout; tls = true speaks TLS, verifying the
--- certificate against the system's store (or ca_file) and its name
--- against server_name (default: host), unless verify = false. Returns a
--- socket, or nil, err ("tls: certificate verify failed: ...").
function _M.connect(host, port, opts)
    if type(host) ~= "string" then
        error("tcp.connect: expected a host name, got " .. type(host), 2)
    end
    if find(host, "\0", 1, true) then
        error("tcp.connect: the host name holds a NUL byte", 2)
    end
    if type(port) ~= "number" or port < 1 or port > 65535 or port % 1 ~= 0 then
        error("tcp.connect: expected a port from 1 to 65535, got " .. tostring(port), 2)
    end
    opts = opts or {}
    check_timeout("tcp.connect", opts.timeout)
    check_timeout("tcp.connect", opts.connect_timeout)
    check_timeout("tcp.connect", opts.read_timeout)
    local tls = opts.tls and true or false
    if tls then
        check_tls("tcp.connect", opts)
    end
    local s, err = open(host, port, opts, tls, opts.server_name, opts.alpn, false)
    return s, err
end

--- Sends all of data: the number of bytes, or nil, err.
function methods.send(self, data)
    local t = type(data)
    if t == "number" then
        data = tostring(data)
    elseif t ~= "string" then
        error("sock:send: expected a string, got " .. t, 2)
    end
    return sock_send(self, data)
end

--- Receives n bytes, a line without its end ("*l", the default) or
--- everything until the peer closes ("*a"). On failure: nil, err, partial.
function methods.receive(self, pattern)
    return sock_receive(self, pattern)
end

--- Upgrades the connection to TLS (after a protocol's STARTTLS), this side
--- being the TLS client: opts as tcp.connect's (server_name defaults to the
--- host connected to; a tcp.listen socket has none). true, or nil, err; a
--- failure closes the socket.
function methods.starttls(self, opts)
    if opts ~= nil and type(opts) ~= "table" then
        error("sock:starttls: expected an options table, got " .. type(opts), 2)
    end
    opts = opts or {}
    check_tls("sock:starttls", opts)
    local key = pool_key[self]
    local server_name = opts.server_name or (key and key:match("^(.*):%d+$"))
    if opts.verify ~= false and not server_name then
        error("sock:starttls: a server_name is needed to verify the certificate (or verify = false)", 2)
    end
    if opts.verify ~= false then
        local ok, e = tls_trust(opts.ca_file)
        if not ok then
            return nil, e
        end
    end
    local ok, err = sock_starttls(self, server_name, opts.verify ~= false, opts.ca_file, opts.alpn)
    if ok and key then
        local host, port = key:match("^(.*):(%d+)$")
        pool_key[self] = key_of(host, port, true, opts.verify ~= false, server_name or host, opts.ca_file, opts.alpn)
    end
    return ok, err
end

--- Sets the timeout (seconds) of each later send and receive.
function methods.settimeout(self, seconds)
    check_timeout("sock:settimeout", seconds)
    sock_settimeout(self, seconds or DEFAULT_TIMEOUT)
    return true
end

function methods.close(self)
    return sock_close(self)
end

--- Puts a client connection in its host's pool for a later tcp.connect
--- (idle_seconds default 60, pool_size default 64). true, or nil, err (the
--- connection was not reusable and is closed).
function methods.setkeepalive(self, idle_seconds, pool_size)
    check_timeout("sock:setkeepalive", idle_seconds)
    if pool_size ~= nil and (type(pool_size) ~= "number" or pool_size < 1) then
        error("sock:setkeepalive: a pool size is a number >= 1, got " .. tostring(pool_size), 2)
    end
    local key = pool_key[self]
    if not key then
        sock_close(self)
        return nil, "not a client connection"
    end
    local ok, err = sock_pool(self, idle_seconds or DEFAULT_POOL_IDLE)
    if not ok then
        return nil, err
    end
    local pool = pools[key]
    if not pool then
        pool = {}
        pools[key] = pool
    end
    -- Connections that die idle stay until tcp.connect comes across them,
    -- or the pool is full: then they go first, then the oldest.
    local size = pool_size or DEFAULT_POOL_SIZE
    if #pool >= size then
        for i = #pool, 1, -1 do
            if not sock_usable(pool[i]) then
                remove(pool, i)
            end
        end
        while #pool >= size do
            sock_close(remove(pool, 1))
        end
    end
    pool[#pool + 1] = self
    return true
end

--- How many times this connection came from a pool.
function methods.reused(self)
    return reuses[self] or 0
end

--- Serves a TCP service: handler(sock) runs in its own coroutine for each
--- connection, which closes when the handler returns. Call it from the
--- app's top level. opts.timeout: each read and write (default 60 s);
--- opts.tls = { cert = FILE, key = FILE } serves TLS (a reload rereads
--- them). Returns the port listened on, or nil, err.
function _M.listen(host, port, handler, opts)
    if type(host) ~= "string" then
        error("tcp.listen: expected a host, got " .. type(host), 2)
    end
    if find(host, "\0", 1, true) then
        error("tcp.listen: the host holds a NUL byte", 2)
    end
    if type(port) ~= "number" or port < 0 or port > 65535 or port % 1 ~= 0 then
        error("tcp.listen: expected a port from 0 to 65535, got " .. tostring(port), 2)
    end
    if type(handler) ~= "function" then
        error("tcp.listen: expected a handler function, got " .. type(handler), 2)
    end
    opts = opts or {}
    check_timeout("tcp.listen", opts.timeout)
    local tls = opts.tls
    if tls ~= nil then
        if type(tls) ~= "table" or type(tls.cert) ~= "string" or type(tls.key) ~= "string" then
            error("tcp.listen: tls must be { cert = FILE, key = FILE }", 2)
        end
        if find(tls.cert, "\0", 1, true) or find(tls.key, "\0", 1, true) then
            error("tcp.listen: a tls file name holds a NUL byte", 2)
        end
    end
    local addrs, err = tendril.resolve(host)
    if not addrs then
        return nil, err
    end
    -- Each connection runs the code of the generation that listened.
    local gen = generation.of_caller()
    local function session(sock)
        if gen then
            generation.pin(core.task_coroutine(), gen)
        end
        local ok, e = xpcall(handler, trace.handler, sock)
        release_owned(core.task_coroutine())
        if gen then
            generation.unpin(gen)
        end
        if not ok then
            core.log("error", "tcp.listen " .. host .. ":" .. port .. ": " .. e)
        end
    end
    return core.tcp_listen(addrs[1], port, session, opts.timeout or DEFAULT_TIMEOUT, tls and tls.cert, tls and tls.key)
end

return _M
