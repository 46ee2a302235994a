-- The request driver and the req/res objects handed to handlers.
--
-- Each pooled coroutine runs `driver`: one request after another, the
-- handler inside xpcall so that an error (even one raised after the
-- handler yielded and was resumed) is logged with its traceback and
-- answered with a 500, and the coroutine goes back to the pool.
--
-- req and res hold the request as its connection's handle { slot, serial };
-- every primitive checks that pair, so a req or res kept after its request
-- ended answers nil, "closed". The request line comes with the dispatch;
-- the other fields are read from C on first use only.
local core = require "tendril.core"
local url = require "tendril.url"
local cookie = require "tendril.cookie"
local trace = require "tendril.traceback"

local setmetatable, getmetatable, rawget, rawset, type, tostring, pairs, next, error, xpcall, collectgarbage =
    setmetatable, getmetatable, rawget, rawset, type, tostring, pairs, next, error, xpcall, collectgarbage
local lower, sub, find, match, concat = string.lower, string.sub, string.find, string.match, table.concat
local getinfo = debug.getinfo
local new_table = require "table.new"
local yield, running = coroutine.yield, coroutine.running

local req_headers, req_remote, req_body = core.req_headers, core.req_remote, core.req_body
local req_read, req_body_limit = core.req_read, core.req_body_limit
local req_deadline, req_tls, req_timings = core.req_deadline, core.req_tls, core.req_timings
local res_send, res_room, res_fail, res_head_sent = core.res_send, core.res_room, core.res_fail, core.res_head_sent
local log = core.log
local file_open, file_close = core.file_open, core.file_close
local res_sendfile, res_drain = core.res_sendfile, core.res_drain

local _M = {}

local generation = require "tendril.generation"
local pin, unpin, current_generation = generation.pin, generation.unpin, generation.current
local owned = require "tendril.owned"
local release_owned = owned.release

---------------------------------------------------------------- req

-- method, target and version come with the request (the dispatch passes
-- them); the rest is read on first use.
local getters = {}

local function fill_target(self)
    local target = self.target or ""
    local path, query, host = url.split_target(target)
    rawset(self, "path", path)
    rawset(self, "query_string", query)
    rawset(self, "_target_host", host or false)
end

function getters.path(self)
    fill_target(self)
    return rawget(self, "path")
end

function getters.query_string(self)
    fill_target(self)
    return rawget(self, "query_string")
end

function getters.query(self)
    local q = url.parse_query(self.query_string)
    rawset(self, "query", q)
    return q
end

function getters.headers(self)
    if self[2] == false then
        error("req.headers: the request's head is gone after websocket.upgrade (read the headers before it)", 2)
    end
    local h = req_headers(self[1], self[2]) or {}
    -- An absolute-form target's host replaces Host (RFC 9112 section 3.2.2).
    local host = rawget(self, "_target_host")
    if host == nil and sub(self.target or "", 1, 1) ~= "/" then
        fill_target(self)
        host = rawget(self, "_target_host")
    end
    if host then
        h.host = host
    end
    rawset(self, "headers", h)
    return h
end

-- The Cookie header as { name = value } (tendril.cookie: first pair of a
-- name wins, values as sent).
function getters.cookies(self)
    local c = cookie.parse(self.headers.cookie)
    rawset(self, "cookies", c)
    return c
end

function getters.remote_addr(self)
    local a = req_remote(self[1], self[2])
    rawset(self, "remote_addr", a or false)
    return a
end

-- "https" on a TLS connection, else "http".
function getters.scheme(self)
    local s = req_tls(self[1], self[2]) and "https" or "http"
    rawset(self, "scheme", s)
    return s
end

-- { version =, cipher =, server_name = } on a TLS connection, else nil
-- (not kept, so that it reads nil each time: the scheme is).
function getters.tls(self)
    if rawget(self, "scheme") == "http" then
        return nil
    end
    local version, cipher, server_name = req_tls(self[1], self[2])
    if not version then
        rawset(self, "scheme", "http")
        return nil
    end
    local t = { version = version, cipher = cipher, server_name = server_name }
    rawset(self, "tls", t)
    return t
end

local req_methods = {}

-- The whole body, for req:body, req:json and req:form (fname: which one,
-- for the error raised at its caller's line).
local function whole_body(self, fname)
    local b = rawget(self, "_body")
    if b then
        return b
    end
    local body, err = req_body(self[1], self[2])
    if body == false then
        error(fname .. ": the body is being read in pieces (req:read, req:parts): it cannot be read whole too", 3)
    end
    if body then
        rawset(self, "_body", body)
    end
    return body, err
end

--- The whole request body (chunked bodies decoded), waiting for it if it is
--- still arriving; nil, err ("closed", "timeout", "too large") on failure.
--- "too large": the body passes the limit and the server answered 413.
function req_methods.body(self)
    local body, err = whole_body(self, "req:body") -- not a tail call: error levels
    return body, err
end

-- The largest piece req:read returns by default, and at most.
local READ_DEFAULT, READ_MAX = 65536, 2 ^ 30

--- The body in pieces, never held whole: the next piece (what has arrived,
--- up to `max` bytes, 64 KiB by default), nil when the body is over, or
--- nil, err ("closed", "timeout", "too large"). Reading in pieces is a
--- transfer: the body timeout bounds each pause, the request's deadline
--- does not end it.
function req_methods.read(self, max)
    if max == nil then
        max = READ_DEFAULT
    elseif type(max) ~= "number" or max < 1 or max ~= max then
        error("req:read: expected a number of bytes >= 1, got " .. tostring(max), 2)
    elseif max > READ_MAX then
        max = READ_MAX
    end
    local piece, err = req_read(self[1], self[2], max)
    if piece == false then
        error("req:read: the body was read whole already (req:body, req:json, req:form)", 2)
    end
    return piece, err
end

--- This request's body limit in bytes, instead of --max-body-bytes (a
--- route's { max_body_bytes = } calls it). Set it before reading the body:
--- a body that passes it gets 413 when read; a larger limit admits a body
--- held for passing the old one. Returns req, or nil, "closed" once the
--- request is over.
function req_methods.set_max_body_bytes(self, bytes)
    if type(bytes) ~= "number" or bytes < 0 or bytes ~= bytes or bytes == 1 / 0 then
        error("req:set_max_body_bytes: expected a number of bytes >= 0, got " .. tostring(bytes), 2)
    end
    local ok, err = req_body_limit(self[1], self[2], bytes)
    if ok == false then
        error("req:set_max_body_bytes: the body is being read already: set its limit before reading it", 2)
    end
    if not ok then
        return nil, err
    end
    return self
end

-- tendril.multipart loads on first use.
local multipart

--- The parts of a multipart/form-data body as they arrive, never holding
--- the body: `for part, err in req:parts() do ... end`. Each part has
--- name, filename, content_type and headers, part:read([max]) (a piece,
--- nil at the part's end, or nil, err) and part:save(path) (the bytes
--- written, or nil, err); moving to the next part skips what is left of
--- this one. A failure (not multipart, malformed, the body's own errors)
--- comes once as false, err and ends the loop.
function req_methods.parts(self)
    multipart = multipart or require "tendril.multipart"
    local boundary, err = multipart.boundary(self.headers["content-type"])
    if not boundary then
        local told = false
        return function()
            if told then
                return nil
            end
            told = true
            return false, err == "not multipart" and "not a form" or err
        end
    end
    return multipart.reader(boundary, function(max)
        return self:read(max)
    end):parts()
end

-- tendril.json loads on first use: a server that never reads JSON does
-- not need cjson.
local json_decode

--- The body decoded as JSON (arrays marked, see tendril.json), whatever the
--- Content-Type says (`curl -d` sends a form type); decoded once. nil, err
--- on failure: the body's own errors ("closed", "timeout", "too large"),
--- or "invalid JSON: " and cjson's message with the position.
function req_methods.json(self)
    local v = rawget(self, "_json")
    if v ~= nil then
        return v
    end
    local body, err = whole_body(self, "req:json")
    if not body then
        return nil, err
    end
    if body == "" then
        return nil, "invalid JSON: empty body"
    end
    json_decode = json_decode or require("tendril.json").decode
    v, err = json_decode(body)
    if v == nil then
        return nil, "invalid JSON: " .. err
    end
    rawset(self, "_json", v)
    return v
end


--- The body decoded as a form, once: application/x-www-form-urlencoded as
--- url.parse_query does (a repeated name gives an array), multipart/form-data
--- by tendril.multipart (fields as strings, files as { filename =,
--- content_type =, headers =, data = }). nil, err: the body's own errors,
--- "not a form" for another Content-Type, "bad multipart: ..." when
--- malformed. The whole body is in memory (--max-body-bytes bounds it).
function req_methods.form(self)
    local v = rawget(self, "_form")
    if v then
        return v
    end
    local ct = self.headers["content-type"]
    local mt = ct and lower(match(ct, "^%s*([^;%s]*)")) or ""
    local urlencoded = mt == "application/x-www-form-urlencoded"
    if not urlencoded and mt ~= "multipart/form-data" then
        return nil, "not a form"
    end
    local body, err = whole_body(self, "req:form")
    if not body then
        return nil, err
    end
    if urlencoded then
        v = url.parse_query(body)
    else
        multipart = multipart or require "tendril.multipart"
        v, err = multipart.parse(body, ct)
        if not v then
            return nil, err
        end
    end
    rawset(self, "_form", v)
    return v
end

--- Sets the request's deadline: `seconds` from now (nil: none). When it
--- passes, every wait of the request and of the threads it spawned fails
--- with nil, "timeout", except writing the answer and reading the body in
--- pieces (req:read, req:parts), which their own timeouts bound.
function req_methods.deadline(self, seconds)
    if seconds ~= nil and (type(seconds) ~= "number" or seconds < 0 or seconds ~= seconds) then
        error("req:deadline: expected a number of seconds >= 0 or nil, got " .. tostring(seconds), 2)
    end
    req_deadline(self[1], self[2], seconds)
    return self
end

--- Where the request's time went so far, in seconds: `lua` (running its
--- handler and threads), a field per kind of wait (`http`, `tcp`, `sleep`,
--- `fs`, `dns`, `run`, `body`, `ws`, `other`; every task of the request
--- counts, so parallel waits add up) and `total` since its first byte.
--- nil, "closed" once the request is over.
function req_methods.timings(self)
    return req_timings(self[1], self[2])
end

local req_mt = {
    __index = function(self, k)
        local get = getters[k]
        if get then
            return get(self)
        end
        return req_methods[k]
    end,
}

---------------------------------------------------------------- res

local res_methods = {}
local res_mt = { __index = res_methods }

local function check_status(fname, code, level)
    if type(code) ~= "number" or code % 1 ~= 0 or code < 200 or code > 599 then
        error(fname .. ": expected an integer status from 200 to 599, got " .. tostring(code), level + 1)
    end
end

--- Sets the status code of a response whose head has not gone yet.
function res_methods.status(self, code)
    check_status("res:status", code, 2)
    if self._sent then
        error("res:status: the head was sent already", 2)
    end
    self._status = code
    return self
end

-- A header value holds CR, LF or NUL. Three plain searches: the JIT
-- compiles them (about 10 ns), where it calls out for a pattern's class
-- (about 170 ns), and every answer's headers come through here.
local function bad_value(v)
    return find(v, "\r", 1, true) or find(v, "\n", 1, true) or find(v, "\0", 1, true)
end

-- Header names found valid, and their lower case: handlers set the same
-- few names on every answer, and checking each costs more than the rest
-- of res:header. Bounded: names past the bound are checked every time.
local valid_names, nvalid, MAX_VALID_NAMES = {}, 0, 256

--- Sets (replaces) a response header; a table value sends the header once
--- per element; nil removes it.
function res_methods.header(self, name, value)
    local key = valid_names[name]
    if not key then
        if type(name) ~= "string" then
            error("res:header: expected a header name (string), got " .. type(name), 2)
        end
        if name == "" or find(name, "[^%w!#$%%&'*+%-%.^_`|~]") then
            error("res:header: '" .. name .. "' is not a valid header name", 2)
        end
        key = lower(name)
        if nvalid < MAX_VALID_NAMES then
            valid_names[name], nvalid = key, nvalid + 1
        end
    end
    local tv = type(value)
    if tv == "string" then
        if bad_value(value) then
            error("res:header: the value of '" .. name .. "' holds CR, LF or NUL", 2)
        end
    elseif tv == "table" then
        for i = 1, #value do
            local v = value[i]
            if (type(v) ~= "string" and type(v) ~= "number") or bad_value(tostring(v)) then
                error("res:header: value " .. i .. " of '" .. name .. "' is not a string without CR, LF or NUL", 2)
            end
        end
    elseif tv ~= "number" and value ~= nil then
        error("res:header: expected a string, number or table value for '" .. name .. "', got " .. tv, 2)
    end
    if value ~= nil and key == "content-length"
        and (tv == "table" or not find(tostring(value), "^%d+$") or #tostring(value) > 18) then
        error("res:header: Content-Length takes one number of bytes, not " .. (tv == "table" and "a list"
            or "'" .. tostring(value) .. "'"), 2)
    end
    if self._sent then
        error("res:header: the head was sent already", 2)
    end
    local h = self._h
    if not h then
        h = {}
        self._h = h
        self._hi = {}
    end
    local i = self._hi[key]
    if value == nil then
        value = false
    end
    if i then
        h[i] = name
        h[i + 1] = value
    else
        i = #h + 1
        h[i] = name
        h[i + 1] = value
        self._hi[key] = i
    end
    return self
end

--- Adds a Set-Cookie header (one line per cookie); a bad name, value or
--- option raises (tendril.cookie).
function res_methods.cookie(self, name, value, opts)
    local line = cookie.serialize("res:cookie", name, value, opts, 2)
    local i = self._hi and self._hi["set-cookie"]
    local old = i and self._h[i + 1]
    local lines
    if type(old) == "table" then
        lines = { unpack(old) }
    elseif old then
        lines = { old }
    else
        lines = {}
    end
    lines[#lines + 1] = line
    if self._sent then
        error("res:cookie: the head was sent already", 2)
    end
    self:header("Set-Cookie", lines)
    return self
end

-- A piece of body: a string, or a number (its text). Raises at the caller
-- of the caller (res:write's, res:finish's), naming fname.
local function check_chunk(fname, chunk)
    local t = type(chunk)
    if t == "string" then
        return chunk
    elseif t == "number" then
        return tostring(chunk)
    end
    error(fname .. ": expected a string, got " .. t, 3)
end
_M.check_chunk = check_chunk

local function where(level)
    local info = getinfo(level + 1, "Sl")
    return info and info.currentline > 0 and (info.short_src .. ":" .. info.currentline) or "?"
end

-- What res_send said: a body past the handler's Content-Length raises; one
-- short of it closed the connection, and is logged.
local function sent(fname, ok, a, b, at)
    if a == "too large" then
        error(fname .. ": the body would pass the Content-Length set for it", 3)
    end
    if b then
        log("error", at .. ": the response ended after " .. a .. " of the " .. b ..
            " bytes its Content-Length announced; the connection is closed")
        return ok
    end
    return ok, a
end

--- Sends a piece of the body (the head first, on the first write). Returns
--- true, or nil, "closed" when the client is gone. Waits, before taking
--- the chunk, while the client is slower than the handler.
function res_methods.write(self, chunk)
    chunk = check_chunk("res:write", chunk)
    if self._done then
        error("res:write: the response was finished already", 2)
    end
    local ok, a = res_room(self[1], self[2])
    if not ok then
        return nil, a
    end
    ok, a = res_send(self[1], self[2], self._status, self._h, chunk, false)
    if ok then
        self._sent = true
    end
    ok, a = sent("res:write", ok, a) -- not a tail call: error levels
    return ok, a
end

--- Ends the response, with an optional last piece of body.
function res_methods.finish(self, body)
    if body ~= nil then
        body = check_chunk("res:finish", body)
    end
    if self._done then
        error("res:finish: the response was finished already", 2)
    end
    local sent_before = self._sent
    self._done = true
    self._sent = true
    local ok, a, b = res_send(self[1], self[2], self._status, self._h, body, true)
    if a == "too large" then
        -- The head went back: the handler can still answer.
        self._done, self._sent = false, sent_before
    end
    ok, a = sent("res:finish", ok, a, b, b and where(2)) -- not a tail call: error levels
    return ok, a
end

local json_encode
local pcall = pcall

--- Answers with value encoded as JSON (Content-Type application/json unless
--- one was set) and an optional status, and finishes the response. Returns
--- nothing, so that `return res:json(v)` ends a handler.
function res_methods.json(self, value, code)
    if code ~= nil then
        check_status("res:json", code, 2)
    end
    if self._done then
        error("res:json: the response was finished already", 2)
    end
    if self._sent then
        error("res:json: the head was sent already", 2)
    end
    json_encode = json_encode or require("tendril.json").encode
    local ok, body = pcall(json_encode, value)
    if not ok then
        error("res:json: " .. tostring(body):gsub("^json%.encode: ", ""), 2)
    end
    if code then
        self._status = code
    end
    if not (self._hi and self._hi["content-type"]) then
        self:header("Content-Type", "application/json")
    end
    self:finish(body)
end

--- True once the head has gone to the client.
--- Answers with a file: a path, or a file from core.file_open (then the
--- caller's, left open). opts: offset (0), length (to the end). Sets
--- Content-Length, sends the head, then the bytes (sendfile(2) on plain
--- connections), waiting while the client is slower; ends the response.
--- true, or nil, err (a missing file before anything is sent; "closed"
--- or "file shrank" after, when the connection ends).
function res_methods.sendfile(self, file, opts)
    if self._done or self._sent then
        error("res:sendfile: the response was started already", 2)
    end
    local size, kind
    local opened = type(file) == "string"
    if opened then
        local _
        file, size, _, kind = file_open(file)
        if not file then
            return nil, size
        end
        if kind ~= "file" then
            return nil, "not a file"
        end
    elseif type(file) == "userdata" then
        size = opts and opts.size
    else
        error("res:sendfile: expected a path or a file, got " .. type(file), 2)
    end
    local offset = opts and opts.offset or 0
    local length = opts and opts.length or (size and size - offset)
    if type(offset) ~= "number" or type(length) ~= "number" or offset < 0 or length < 0
        or (size and offset + length > size) then
        error("res:sendfile: offset and length must lie within the file", 2)
    end
    self:header("Content-Length", length)
    self._done, self._sent = true, true
    local conn, serial = self[1], self[2]
    local ok, e = res_send(conn, serial, self._status, self._h, nil, false)
    while ok and length > 0 do
        local n
        n, e = res_sendfile(conn, serial, file, offset, length)
        if not n then
            ok = nil
        else
            offset, length = offset + n, length - n
            if length > 0 then
                ok, e = res_drain(conn, serial)
            end
        end
    end
    if opened then
        file_close(file)
    end
    if ok then
        ok, e = res_send(conn, serial, self._status, self._h, nil, true)
    end
    if not ok then
        return nil, e
    end
    return true
end

function res_methods.head_sent(self)
    return self._sent or res_head_sent(self[1], self[2])
end

---------------------------------------------------------------- driver

-- res_send's headers `true`: Content-Type text/plain, written from a
-- constant in C (the most common answer, `return body`).
local TEXT_PLAIN = true

local on_error = trace.handler
local MEMORY_ERROR = "not enough memory"

local function describe(req)
    return tostring(req.method) .. " " .. tostring(req.target)
end

local RETURN_FORMS = "(return nothing, a body, or status[, headers[, body]]; "
    .. "a body is a string or an array of strings)"

-- Where the handler was defined: a return value has no line of its own.
local function handler_where(handler)
    if type(handler) ~= "function" then
        -- A callable table (a tendril.router): its __call is the code.
        handler = getmetatable(handler).__call
    end
    local info = getinfo(handler, "S")
    return info and (info.short_src .. ":" .. info.linedefined) or "the handler"
end

-- A body given as an array of strings (nested arrays too), joined in order.
local function join_body(v, at)
    local parts, n = {}, 0
    local function add(t, depth)
        if depth > 32 then
            error(at .. ": the handler returned a body nested deeper than 32 arrays", 0)
        end
        for i = 1, #t do
            local x = t[i]
            local tx = type(x)
            if tx == "string" then
                n = n + 1
                parts[n] = x
            elseif tx == "table" then
                add(x, depth + 1)
            else
                error(at .. ": the handler returned a body array holding a " .. tx .. " at index " .. i
                    .. " " .. RETURN_FORMS, 0)
            end
        end
    end
    add(v, 1)
    return concat(parts, "", 1, n)
end

local function body_value(v, handler)
    local tv = type(v)
    if v == nil or tv == "string" then
        return v
    elseif tv == "table" and (v[1] ~= nil or next(v) == nil) then
        return join_body(v, handler_where(handler))
    elseif tv == "table" then
        tv = "table without array items"
    end
    error(handler_where(handler) .. ": the handler returned a body that is a " .. tv .. " " .. RETURN_FORMS, 0)
end

-- What the handler returned, when it did not finish the response itself:
-- nothing; a body; or status[, headers[, body]].
local function respond(res, handler, a, b, c)
    local conn, serial = res[1], res[2]
    -- A router names the route or middleware whose answer this is.
    handler = res._handler or handler
    if res._done then
        return
    end
    local ta = type(a)
    local body, status, h
    if a == nil then
        status, h = res._status, res._h
    elseif ta == "string" or ta == "table" then
        if b ~= nil or c ~= nil then
            error(handler_where(handler) .. ": the handler returned a body and then more values " .. RETURN_FORMS, 0)
        end
        body = body_value(a, handler)
        status, h = res._status, res._h
        if not res._sent and not (res._hi and res._hi["content-type"]) then
            if h then
                h[#h + 1] = "Content-Type"
                h[#h + 1] = "text/plain"
            else
                h = TEXT_PLAIN
            end
        end
    elseif ta == "number" and not res._sent then
        if a % 1 ~= 0 or a < 200 or a > 599 then
            error(handler_where(handler) .. ": the handler returned status " .. tostring(a)
                .. " (a final status is an integer from 200 to 599)", 0)
        end
        if b ~= nil then
            if type(b) ~= "table" then
                error(handler_where(handler) .. ": the handler returned headers that are a " .. type(b)
                    .. ", not a table", 0)
            end
            for name, value in pairs(b) do
                res:header(name, value)
            end
        end
        body = body_value(c, handler)
        status, h = a, res._h
        res._sent = false
    else
        error(handler_where(handler) .. ": the handler returned a " .. ta .. " " .. RETURN_FORMS, 0)
    end
    local filter = res._filter
    if filter then
        -- A middleware rewrites the answer (tendril.compress gzips it).
        status, h, body = filter(res, status, h, body)
    end
    res._done = true
    local ok, x, y = res_send(conn, serial, status, h, body, true)
    sent(handler_where(handler) .. ": the handler's answer", ok, x, y, y and handler_where(handler))
end

-- One request, on the generation that is current when it starts.
local function serve(me, conn, serial, method, target, version)
    local gen = current_generation()
    pin(me, gen)
    -- Room for the fields read lazily too (path, query_string): growing
    -- the hash part one field at a time rehashes it each time.
    local req = new_table(2, 8)
    req[1], req[2] = conn, serial
    req.method, req.target, req.version = method, target, version
    setmetatable(req, req_mt)
    local res = setmetatable({ conn, serial, _status = 200 }, res_mt)
    local handler = gen.handler
    local ok, a, b, c = xpcall(handler, on_error, req, res)
    if ok then
        if type(a) == "string" and b == nil and not res._done and not res._sent and not res._h then
            -- The common case, `return body`: nothing in it can raise.
            res._done = true
            res_send(conn, serial, res._status, TEXT_PLAIN, a, true)
        else
            ok, a = xpcall(respond, on_error, res, handler, a, b, c)
        end
    end
    if not ok then
        if a == MEMORY_ERROR then
            -- LuaJIT's own memory error: its garbage is still here (the
            -- error path needs room) and it has no position to give.
            collectgarbage()
            a = a .. " (" .. core.memory_note() .. ")"
        end
        log("error", describe(req) .. ": " .. a)
        res_fail(conn, serial)
    end
    -- What outlives the response ends with the handler (a WebSocket, an
    -- event stream's keep-alive).
    local after = res._after
    if after then
        after:_finish(not ok)
    end
    if owned.tasks > 0 then
        release_owned(me)
    end
    unpin(gen)
end

--- The function every pooled coroutine runs (see vm.h).
function _M.driver(marker, conn, serial, method, target, version)
    local me = running()
    while true do
        serve(me, conn, serial, method, target, version)
        conn, serial, method, target, version = yield(marker)
    end
end

return _M
