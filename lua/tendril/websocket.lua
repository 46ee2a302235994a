-- WebSockets (RFC 6455): local websocket = require "tendril.websocket"
--
-- websocket.upgrade(req, res [, opts]) turns a request into a WebSocket;
-- websocket.connect(url [, opts]) opens one to a server. Both return the
-- same object: ws:recv, ws:send, ws:ping, ws:close. The frames, pings,
-- the closing handshake and the limits are handled in C (core/ws_conn.c);
-- the handshake's policy is here.
local core = require "tendril.core"
local http = require "tendril.http"
local tcp = require "tendril.tcp"

local type, error, tostring, setmetatable, tonumber, pairs = type, error, tostring, setmetatable, tonumber, pairs
local find, lower, gmatch, match, format = string.find, string.lower, string.gmatch, string.match, string.format
local concat = table.concat

local ws_upgrade, ws_client, ws_recv, ws_send, ws_close, ws_accept, ws_key = core.ws_upgrade, core.ws_client,
    core.ws_recv, core.ws_send, core.ws_close, core.ws_accept, core.ws_key
local req_header, ws_utf8 = core.req_header, core.ws_utf8
local rawget = rawget

local TEXT, BINARY, PING = 1, 2, 9
local DEFAULT_MAX_MESSAGE = 1024 * 1024
local DEFAULT_PING_INTERVAL = 30
local DEFAULT_CLOSE_TIMEOUT = 5

local _M = {}

-- A WebSocket is the userdata that holds its state in C (nothing more per
-- connection: ten thousand idle ones should cost little); ws.protocol is
-- kept aside, for those that chose one.
local methods = {}
local protocols = setmetatable({}, { __mode = "k" })
core.websocket_mt.__index = function(self, k)
    local m = methods[k]
    if m ~= nil then
        return m
    end
    if k == "protocol" then
        return protocols[self]
    end
    return nil
end

---------------------------------------------------------------- options

local function check_seconds(fname, name, v)
    if v ~= nil and v ~= false and (type(v) ~= "number" or v < 0 or v ~= v) then
        error(fname .. ": opts." .. name .. " must be a number of seconds >= 0, got " .. tostring(v), 3)
    end
end

local function check_list(fname, name, v)
    if v == nil then
        return
    end
    if type(v) ~= "table" then
        error(fname .. ": opts." .. name .. " must be an array of strings, got " .. type(v), 3)
    end
    for i = 1, #v do
        if type(v[i]) ~= "string" then
            error(fname .. ": opts." .. name .. "[" .. i .. "] must be a string, got " .. type(v[i]), 3)
        end
    end
end

-- The options both sides share, checked; returns the C arguments.
local function limits(fname, opts)
    local max = opts.max_message_bytes
    if max ~= nil and (type(max) ~= "number" or max < 1 or max % 1 ~= 0) then
        error(fname .. ": opts.max_message_bytes must be a whole number of bytes >= 1, got " .. tostring(max), 3)
    end
    check_seconds(fname, "idle_timeout", opts.idle_timeout)
    check_seconds(fname, "ping_interval", opts.ping_interval)
    check_seconds(fname, "close_timeout", opts.close_timeout)
    local ping = opts.ping_interval
    if ping == nil then
        ping = DEFAULT_PING_INTERVAL
    end
    return max or DEFAULT_MAX_MESSAGE, opts.idle_timeout or 0, ping or 0, opts.close_timeout or DEFAULT_CLOSE_TIMEOUT
end

-- The tokens of a comma-separated header value, lower-cased unless keep_case.
local function tokens(value, keep_case)
    local t = {}
    if value then
        for tok in gmatch(value, "[^,]+") do
            tok = match(tok, "^%s*(.-)%s*$")
            if tok ~= "" then
                t[#t + 1] = keep_case and tok or lower(tok)
            end
        end
    end
    return t
end

-- Whether a comma-separated header value holds the token (any case),
-- without making a table per header.
local function has_token(value, want)
    if not value then
        return false
    end
    for tok in gmatch(value, "[^,]+") do
        if lower(match(tok, "^%s*(.-)%s*$")) == want then
            return true
        end
    end
    return false
end

---------------------------------------------------------------- permessage-deflate

-- The parameters of one extension in a Sec-WebSocket-Extensions value:
-- name, { lower-case parameter = value or true }, or nil when malformed or
-- a parameter repeats.
local function parse_extension(text)
    local name, rest = match(text, "^%s*([%w!#$%%&'*+%-%.^_`|~]+)%s*(.-)%s*$")
    if not name then
        return nil
    end
    local params = {}
    for p in gmatch(rest, "[^;]+") do
        local k, v = match(p, "^%s*([%w_%-]+)%s*=%s*\"?([^\"]-)\"?%s*$")
        if not k then
            k = match(p, "^%s*([%w_%-]+)%s*$")
            v = true
        end
        if not k then
            if match(p, "^%s*$") then
                k = nil
            else
                return nil
            end
        end
        if k then
            k = lower(k)
            if params[k] ~= nil then
                return nil
            end
            params[k] = v
        end
    end
    return lower(name), params
end

local function window_bits(v, min)
    local n = v ~= true and tonumber(v)
    return n and n % 1 == 0 and n >= min and n <= 15 and n or nil
end

-- The first permessage-deflate offer this side can accept: the response's
-- value and the window bits of what we send. No context takeover either
-- way: a server may ask for both (RFC 7692, 7.1.1).
local function accept_deflate(value)
    if not value then
        return nil
    end
    for offer in gmatch(value, "[^,]+") do
        local name, params = parse_extension(offer)
        if name == "permessage-deflate" then
            local ok, bits = true, 15
            for k, v in pairs(params) do
                if k == "server_no_context_takeover" or k == "client_no_context_takeover" then
                    ok = ok and v == true
                elseif k == "server_max_window_bits" then
                    -- zlib cannot make a window of 8 bits: that offer is declined.
                    bits = window_bits(v, 9)
                    ok = ok and bits ~= nil
                elseif k == "client_max_window_bits" then
                    ok = ok and (v == true or window_bits(v, 8) ~= nil)
                else
                    ok = false
                end
            end
            if ok then
                local resp = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
                if params.server_max_window_bits then
                    resp = resp .. "; server_max_window_bits=" .. bits
                end
                return resp, bits
            end
        end
    end
    return nil
end

local DEFLATE_OFFER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

-- The server's answer to DEFLATE_OFFER: 15 (the bits we send with), false
-- when it declined, or nil, why when it answered what was not offered.
local function deflate_answer(value)
    if not value then
        return false
    end
    local name, params = parse_extension(value)
    if name ~= "permessage-deflate" or find(value, ",", 1, true) then
        return nil, "an extension that was not offered"
    end
    for k, v in pairs(params) do
        -- A server may bound its own window (RFC 7692, 7.1.2.1): this side
        -- inflates with the largest, so any bound will do.
        local ok = ((k == "server_no_context_takeover" or k == "client_no_context_takeover") and v == true)
            or (k == "server_max_window_bits" and window_bits(v, 8) ~= nil)
        if not ok then
            return nil, "a permessage-deflate parameter that was not offered (" .. k .. ")"
        end
    end
    if not params.server_no_context_takeover then
        return nil, "permessage-deflate with the server's context takeover"
    end
    return 15
end

local function wrap(u, protocol)
    if protocol then
        protocols[u] = protocol
    end
    return u
end

---------------------------------------------------------------- the server

-- A bad handshake: answered here, and the reason returned.
local function refuse(res, status, reason, extra)
    res:status(status)
    res:header("Content-Type", "text/plain")
    if extra then
        res:header("Sec-WebSocket-Version", "13")
    end
    res:finish("WebSocket handshake refused: " .. reason .. "\n")
    return nil, reason
end

local KEY_PATTERN = "^[A-Za-z0-9+/][A-Za-z0-9+/][A-Za-z0-9+/]*==$"

--- Completes the handshake of a WebSocket request and returns the
--- WebSocket, or answers 400 (426 for another version, 403 for an origin
--- not allowed) and returns nil, reason. opts: protocols (the
--- subprotocols this side speaks: the first the client offers is chosen,
--- ws.protocol), origins (the Origin values allowed), max_message_bytes
--- (default 1 MiB), idle_timeout, ping_interval (default 30 s; false:
--- none), close_timeout (default 5 s), compress (permessage-deflate when
--- the client offers it).
function _M.upgrade(req, res, opts)
    if type(req) ~= "table" or type(res) ~= "table" then
        error("websocket.upgrade: expected the handler's req and res", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("websocket.upgrade: expected an options table, got " .. type(opts), 2)
    end
    opts = opts or {}
    check_list("websocket.upgrade", "protocols", opts.protocols)
    check_list("websocket.upgrade", "origins", opts.origins)
    local max, idle, ping, close_timeout = limits("websocket.upgrade", opts)
    if res._done or res:head_sent() then
        error("websocket.upgrade: the response was sent already", 2)
    end
    -- The few headers the handshake needs, without the table of them all
    -- (a handler that did not read req.headers keeps none for its life).
    local upgrade, connection, version, key, origin, offered_protocols, extensions
    local h = rawget(req, "headers")
    if h then
        upgrade, connection, version, key, origin, offered_protocols, extensions = h.upgrade, h.connection,
            h["sec-websocket-version"], h["sec-websocket-key"], h.origin, h["sec-websocket-protocol"],
            h["sec-websocket-extensions"]
    else
        upgrade, connection, version, key, origin, offered_protocols, extensions = req_header(req[1], req[2],
            "upgrade", "connection", "sec-websocket-version", "sec-websocket-key", "origin",
            "sec-websocket-protocol", "sec-websocket-extensions")
    end
    if req.method ~= "GET" then
        return refuse(res, 400, "the method is " .. tostring(req.method) .. ", not GET")
    end
    if req.version ~= "1.1" then
        return refuse(res, 400, "HTTP/" .. tostring(req.version) .. " (a WebSocket needs HTTP/1.1)")
    end
    if not has_token(upgrade, "websocket") then
        return refuse(res, 400, "no Upgrade: websocket")
    end
    if not has_token(connection, "upgrade") then
        return refuse(res, 400, "no Connection: upgrade")
    end
    if version ~= "13" then
        return refuse(res, 426, "Sec-WebSocket-Version is not 13", true)
    end
    if not key or #key ~= 24 or not find(key, KEY_PATTERN) then
        return refuse(res, 400, "no valid Sec-WebSocket-Key")
    end
    if opts.origins then
        local allowed = false
        for i = 1, #opts.origins do
            if origin == opts.origins[i] then
                allowed = true
                break
            end
        end
        if not allowed then
            return refuse(res, 403, "origin " .. tostring(origin) .. " is not allowed")
        end
    end
    local lines = { "Sec-WebSocket-Accept: ", ws_accept(key), "\r\n" }
    local protocol
    if opts.protocols then
        local offered = tokens(offered_protocols, true)
        for i = 1, #offered do
            for j = 1, #opts.protocols do
                if offered[i] == opts.protocols[j] then
                    protocol = offered[i]
                    break
                end
            end
            if protocol then
                break
            end
        end
        if protocol then
            lines[#lines + 1] = "Sec-WebSocket-Protocol: " .. protocol .. "\r\n"
        end
    end
    local deflate_bits = 0
    if opts.compress then
        local ext, bits = accept_deflate(extensions)
        if ext then
            lines[#lines + 1] = "Sec-WebSocket-Extensions: " .. ext .. "\r\n"
            deflate_bits = bits
        end
    end
    -- What the connection knows is read now: after the switch the request
    -- is over (its head is gone).
    if req.scheme == "https" then
        local _ = req.tls
    end
    local _ = req.remote_addr
    local u, err = ws_upgrade(req[1], req[2], concat(lines), max, idle, ping, close_timeout, deflate_bits)
    if not u then
        if err == "bad argument" then -- a body is still arriving
            return refuse(res, 400, "a request body (a WebSocket handshake has none)")
        end
        return nil, err
    end
    req[2] = false -- upgraded: req.headers says why it has none now
    -- When the handler returns, its WebSocket closes: the server driver
    -- calls res._after:_finish().
    res._done, res._after = true, u
    return wrap(u, protocol)
end

---------------------------------------------------------------- the client

local WS_SCHEMES = { ws = 80, wss = 443, _names = "ws and wss" }

-- The response head, line by line: status and lower-cased headers.
local function read_head(sock)
    local line, err = sock:receive("*l")
    if not line then
        return nil, err
    end
    local status = tonumber(match(line, "^HTTP/1%.1 (%d%d%d)"))
    if not status then
        return nil, "not an HTTP/1.1 response"
    end
    local headers = {}
    for _ = 1, 100 do
        line, err = sock:receive("*l")
        if not line then
            return nil, err
        end
        if line == "" then
            return status, headers
        end
        local name, value = match(line, "^([^:%s]+):%s*(.-)%s*$")
        if not name then
            return nil, "an invalid header line"
        end
        name = lower(name)
        headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
    end
    return nil, "too many header lines"
end

--- Opens a WebSocket to a ws:// or wss:// URL. opts: headers (extra
--- request headers), protocols (offered, in order of preference),
--- origin, timeout (connecting and the handshake, default 60 s), the TLS
--- options of tcp.connect (verify, ca_file, server_name), compress (offer
--- permessage-deflate) and the limits of websocket.upgrade. Returns the
--- WebSocket, or nil, err.
function _M.connect(url, opts)
    if type(url) ~= "string" then
        error("websocket.connect: expected a ws:// or wss:// URL, got " .. type(url), 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("websocket.connect: expected an options table, got " .. type(opts), 2)
    end
    opts = opts or {}
    check_list("websocket.connect", "protocols", opts.protocols)
    check_seconds("websocket.connect", "timeout", opts.timeout)
    if opts.headers ~= nil and type(opts.headers) ~= "table" then
        error("websocket.connect: opts.headers must be a table, got " .. type(opts.headers), 2)
    end
    local max, idle, ping, close_timeout = limits("websocket.connect", opts)
    local u, err = http.parse_url(url, WS_SCHEMES)
    if not u then
        return nil, err
    end
    local tls = u.scheme == "wss"
    local sock
    sock, err = tcp._open(u.host, u.port, { timeout = opts.timeout, verify = opts.verify, ca_file = opts.ca_file },
        tls, opts.server_name, tls and "http/1.1" or nil, true)
    if not sock then
        return nil, err
    end
    local key = ws_key()
    local lines = {
        "GET ", u.target, " HTTP/1.1\r\nHost: ", u.authority,
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ", key,
        "\r\nSec-WebSocket-Version: 13\r\n",
    }
    if opts.protocols and #opts.protocols > 0 then
        lines[#lines + 1] = "Sec-WebSocket-Protocol: " .. concat(opts.protocols, ", ") .. "\r\n"
    end
    if opts.origin then
        lines[#lines + 1] = "Origin: " .. tostring(opts.origin) .. "\r\n"
    end
    if opts.compress then
        lines[#lines + 1] = "Sec-WebSocket-Extensions: " .. DEFLATE_OFFER .. "\r\n"
    end
    for name, value in pairs(opts.headers or {}) do
        name, value = tostring(name), tostring(value)
        if find(name, "[^%w!#$%%&'*+%-%.^_`|~]") or find(value, "[\r\n%z]") then
            sock:close()
            error("websocket.connect: header '" .. name .. "' is not a valid name and value", 2)
        end
        lines[#lines + 1] = name .. ": " .. value .. "\r\n"
    end
    lines[#lines + 1] = "\r\n"
    local ok
    ok, err = sock:send(concat(lines))
    if not ok then
        sock:close()
        return nil, err
    end
    local status, h = read_head(sock)
    if not status then
        sock:close()
        return nil, "websocket handshake: " .. tostring(h)
    end
    local fail
    if status ~= 101 then
        fail = format("the server answered %d, not 101", status)
    elseif not has_token(h.upgrade, "websocket") or not has_token(h.connection, "upgrade") then
        fail = "the server did not switch to websocket"
    elseif h["sec-websocket-accept"] ~= ws_accept(key) then
        fail = "a wrong Sec-WebSocket-Accept"
    end
    local deflate_bits
    if not fail then
        if opts.compress then
            deflate_bits, fail = deflate_answer(h["sec-websocket-extensions"])
        elseif h["sec-websocket-extensions"] then
            fail = "an extension that was not offered"
        end
    end
    local protocol = h["sec-websocket-protocol"]
    if not fail and protocol then
        fail = "a subprotocol that was not offered"
        for i = 1, #(opts.protocols or {}) do
            if opts.protocols[i] == protocol then
                fail = nil
            end
        end
    end
    if fail then
        sock:close()
        return nil, "websocket handshake: " .. fail
    end
    local w
    w, err = ws_client(sock, max, idle, ping, close_timeout, deflate_bits or 0)
    if not w then
        sock:close()
        return nil, err
    end
    return wrap(w, protocol)
end

---------------------------------------------------------------- the object

--- The next message: data, "text" | "binary"; nil, "timeout" after
--- `timeout` seconds (the WebSocket stays usable; without one it waits as
--- long as the connection lives); nil, "closed", code, reason at the end.
function methods.recv(self, timeout)
    if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0 or timeout ~= timeout) then
        error("ws:recv: a timeout is a number of seconds >= 0, got " .. tostring(timeout), 2)
    end
    return ws_recv(self, timeout)
end

--- Sends a message: a text one unless kind is "binary". Waits while the
--- peer is slower than the sender. true, or nil, "closed".
function methods.send(self, data, kind)
    local td = type(data)
    if td == "number" then
        data = tostring(data)
    elseif td ~= "string" then
        error("ws:send: expected a string, got " .. td, 2)
    end
    local op = TEXT
    if kind == "binary" then
        op = BINARY
    elseif kind ~= nil and kind ~= "text" then
        error("ws:send: the kind is \"text\" or \"binary\", got " .. tostring(kind), 2)
    end
    local ok, err = ws_send(self, data, op)
    while ok == false do -- it waited for room
        ok, err = ws_send(self, data, op)
    end
    return ok, err
end

--- Sends a ping (its data at most 125 bytes); the pong is not reported.
function methods.ping(self, data)
    data = data or ""
    if type(data) ~= "string" or #data > 125 then
        error("ws:ping: the data is a string of at most 125 bytes", 2)
    end
    return ws_send(self, data, PING)
end

--- Runs the closing handshake: sends a close (code default 1000, reason at
--- most 123 bytes), waits for the peer's (at most close_timeout), then the
--- connection closes. true, or nil, "closed" if it had ended already.
function methods.close(self, code, reason)
    if code ~= nil and (type(code) ~= "number" or code % 1 ~= 0
        or not (code == 1000 or (code >= 3000 and code <= 4999))) then
        error("ws:close: a close code is 1000 or from 3000 to 4999, got " .. tostring(code), 2)
    end
    if reason ~= nil and (type(reason) ~= "string" or #reason > 123 or not ws_utf8(reason)) then
        error("ws:close: the reason is a UTF-8 string of at most 123 bytes", 2)
    end
    return ws_close(self, code or 1000, reason or "", true)
end

-- The handler returned (see upgrade): close without waiting (1011 when it
-- raised), and end the threads it spawned.
function methods._finish(self, failed)
    ws_close(self, failed and 1011 or 1000, failed and "handler error" or "", false, true)
end

return _M
