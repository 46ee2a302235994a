-- An HTTP/1.1 client: local http = require "tendril.http"
--
-- http.get(url [, opts]) and http.request{ method, url, headers, body,
-- timeout, connect_timeout, read_timeout, max_redirects, stream, verify,
-- ca_file } return { status =, headers =, body = } (header names
-- lower-case), or nil, err. https:// URLs verify the server's certificate
-- (against the system's store, or ca_file) and host name unless
-- verify = false.
-- Connections are kept alive in tendril.tcp's pools; a request that fails
-- on a reused connection before any byte of the answer came back is sent
-- once more on a new one (the server had closed the idle connection).
local core = require "tendril.core"
local tcp = require "tendril.tcp"
local tcp_open = tcp._open
local tendril = require "tendril"

local type, error, tostring, tonumber, pairs, concat = type, error, tostring, tonumber, pairs, table.concat
local lower, find, sub, match, gsub = string.lower, string.find, string.sub, string.match, string.gsub
local httpc_begin, httpc_head, httpc_body = core.httpc_begin, core.httpc_head, core.httpc_body
local http_bad_header, http_valid_method = core.http_bad_header, core.http_valid_method
local format, byte = string.format, string.byte

local DEFAULT_TIMEOUT = tendril.DEFAULT_TIMEOUT
local POOL_IDLE = 60
local POOL_SIZE = 64

local _M = {}

-- schemes: the default port of each scheme allowed (http and https unless
-- given), and what the error names.
local HTTP_SCHEMES = { http = 80, https = 443, _names = "http and https" }

local function parse_url(url, schemes)
    schemes = schemes or HTTP_SCHEMES
    -- Spaces and control bytes would end the request line or start a
    -- header of the caller's choosing.
    if find(url, "[%z\1-\32\127]") then
        return nil, "invalid url"
    end
    local scheme, rest = match(url, "^(%a[%w+.-]*)://(.*)$")
    if not scheme then
        return nil, "invalid url"
    end
    scheme = lower(scheme)
    if scheme == "_names" or not schemes[scheme] then
        return nil, "unsupported scheme " .. scheme .. " (" .. schemes._names .. " only)"
    end
    local authority, target = match(rest, "^([^/?#]*)(.*)$")
    target = gsub(target, "#.*$", "")
    if sub(target, 1, 1) ~= "/" then
        target = "/" .. target
    end
    authority = gsub(authority, "^.*@", "")
    local host, port
    if sub(authority, 1, 1) == "[" then
        host, port = match(authority, "^%[([^%]]+)%]:?(%d*)$")
    else
        host, port = match(authority, "^([^:]+):?(%d*)$")
    end
    if not host or host == "" then
        return nil, "invalid url"
    end
    port = tonumber(port) or schemes[scheme]
    if port < 1 or port > 65535 then
        return nil, "invalid url"
    end
    return { scheme = scheme, host = host, port = port, target = target, authority = authority }
end

-- Parsed URLs, kept: a service calls the same few URLs again and again.
-- A cached entry also holds the head of a plain GET to it. Bounded: the
-- whole cache goes when it is full.
local URL_CACHE_MAX = 256
local url_cache, url_cached = {}, 0

local function cached_url(url)
    local u = url_cache[url]
    if u then
        return u
    end
    local err
    u, err = parse_url(url)
    if not u then
        return nil, err
    end
    if url_cached >= URL_CACHE_MAX then
        url_cache, url_cached = {}, 0
    end
    url_cache[url] = u
    url_cached = url_cached + 1
    return u
end

--- Splits an http:// or https:// URL. Returns { scheme, host, port, target,
--- authority } or nil, err.
_M.parse_url = parse_url

-- Where a redirect's Location points, relative to the URL that gave it.
local function join_url(base, location)
    if find(location, "^%a[%w+.-]*://") then
        return location
    end
    local b = _M.parse_url(base)
    if sub(location, 1, 2) == "//" then
        return b.scheme .. ":" .. location
    elseif sub(location, 1, 1) == "/" then
        return b.scheme .. "://" .. b.authority .. location
    end
    local dir = match(b.target, "^([^?]*/)") or "/"
    return b.scheme .. "://" .. b.authority .. dir .. location
end

-- Control bytes shown as escapes, for a message.
local function printable(s)
    return (gsub(s, "[%c\127]", function(c)
        local n = byte(c)
        return n == 13 and "\\r" or n == 10 and "\\n" or n == 0 and "\\0" or format("\\x%02X", n)
    end))
end

-- Misuse raises at the caller of the public function (level 4 from here).
local function check_request(fname, method, headers)
    if not http_valid_method(method) then
        error(fname .. ": method '" .. printable(method) .. "': not a valid method", 4)
    end
    if headers then
        for name, value in pairs(headers) do
            if type(name) ~= "string" then
                error(fname .. ": header names must be strings, got " .. type(name), 4)
            end
            local tv = type(value)
            local bad = (tv ~= "string" and tv ~= "number") and "its value is not a string or a number"
                or http_bad_header(name, value)
            if bad then
                error(fname .. ": header '" .. printable(name) .. "': " .. bad, 4)
            end
        end
    end
end

local function build_request(method, u, headers, body)
    if method == "GET" and not headers and not body then
        local head = u.get_head
        if not head then
            head = "GET " .. u.target .. " HTTP/1.1\r\nHost: " .. u.authority .. "\r\nUser-Agent: tendril/"
                .. tendril._VERSION .. "\r\n\r\n"
            u.get_head = head
        end
        return head
    end
    local lines = { method, " ", u.target, " HTTP/1.1\r\n" }
    local have = {}
    if headers then
        for name, value in pairs(headers) do
            have[lower(name)] = true
            lines[#lines + 1] = name .. ": " .. tostring(value) .. "\r\n"
        end
    end
    if not have.host then
        lines[#lines + 1] = "Host: " .. u.authority .. "\r\n"
    end
    if not have["user-agent"] then
        lines[#lines + 1] = "User-Agent: tendril/" .. tendril._VERSION .. "\r\n"
    end
    if body and not have["content-length"] and not have["transfer-encoding"] then
        lines[#lines + 1] = "Content-Length: " .. #body .. "\r\n"
    end
    lines[#lines + 1] = "\r\n"
    if body then
        lines[#lines + 1] = body
    end
    return concat(lines)
end

-- The connection goes back to the pool when the server allows it.
local function release(sock, keep_alive)
    if keep_alive then
        sock:setkeepalive(POOL_IDLE, POOL_SIZE)
    else
        sock:close()
    end
end

-- httpc_body gives a piece, then false (and whether the connection may be
-- kept) at the end; a piece that ends the message says so at once (piece,
-- true, keep_alive), which spares the usual second call.
local function read_all(sock, read_timeout)
    local piece, done, keep_alive = httpc_body(sock, read_timeout)
    if piece and done == true then
        release(sock, keep_alive)
        return piece
    end
    local parts = {}
    while true do
        if piece == nil then
            sock:close()
            return nil, done
        elseif piece == false then
            release(sock, done)
            return concat(parts)
        end
        parts[#parts + 1] = piece
        piece, done, keep_alive = httpc_body(sock, read_timeout)
        if piece and done == true then
            parts[#parts + 1] = piece
            release(sock, keep_alive)
            return concat(parts)
        end
    end
end

local function streaming_reader(sock, read_timeout)
    local finished = false
    return function()
        if finished then
            return nil
        end
        local piece, more, keep_alive = httpc_body(sock, read_timeout)
        if piece == nil then
            finished = true
            sock:close()
            return nil, more
        elseif piece == false then
            finished = true
            release(sock, more)
            return nil
        elseif more == true then -- the last piece
            finished = true
            release(sock, keep_alive)
        end
        return piece
    end
end

-- One exchange on one connection; retried once on a stale pooled one.
local function exchange(method, u, headers, body, opts, retried)
    local timeout = opts.timeout or DEFAULT_TIMEOUT
    local read_timeout = opts.read_timeout or timeout
    local https = u.scheme == "https"
    local sock, err = tcp_open(u.host, u.port, opts, https, nil, https and "http/1.1" or nil, retried, true)
    if not sock then
        return nil, err
    end
    local reused = sock:reused() > 0
    local ok
    httpc_begin(sock, method == "HEAD")
    ok, err = sock:send(build_request(method, u, headers, body))
    local status, res_headers, got_bytes
    if ok then
        status, res_headers, got_bytes = httpc_head(sock, read_timeout)
        if not status then
            err = res_headers
        end
    end
    if not status then
        sock:close()
        if reused and not retried and not got_bytes and err ~= "timeout" then
            return exchange(method, u, headers, body, opts, true)
        end
        return nil, err
    end
    local res = { status = status, headers = res_headers }
    if opts.stream then
        -- res:read() (res.read() works too)
        local reader = streaming_reader(sock, read_timeout)
        res.read = function()
            return reader()
        end
        return res
    end
    res.body, err = read_all(sock, read_timeout)
    if not res.body then
        return nil, err
    end
    return res
end

-- The options that are numbers (seconds, or a count).
local NUMBERS = { "timeout", "connect_timeout", "read_timeout", "max_redirects" }

local REDIRECTS = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }

-- http.request and http.get: fname names the public function, whose caller
-- misuse errors point at (level 3 from here).
local function request(req, fname)
    local url, method, body = req.url, req.method or "GET", req.body
    if type(url) ~= "string" then
        error(fname .. ": expected url to be a string, got " .. type(url), 3)
    end
    if type(method) ~= "string" then
        error(fname .. ": expected method to be a string, got " .. type(method), 3)
    end
    if body ~= nil and type(body) ~= "string" then
        error(fname .. ": expected body to be a string, got " .. type(body), 3)
    end
    if req.headers ~= nil and type(req.headers) ~= "table" then
        error(fname .. ": expected headers to be a table, got " .. type(req.headers), 3)
    end
    for i = 1, #NUMBERS do
        local k = NUMBERS[i]
        local v = req[k]
        if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0 or v == math.huge) then
            error(fname .. ": expected " .. k .. " to be a finite number >= 0, got " .. printable(tostring(v)), 3)
        end
    end
    if req.verify ~= nil and type(req.verify) ~= "boolean" then
        error(fname .. ": expected verify to be true or false, got " .. type(req.verify), 3)
    end
    if req.ca_file ~= nil and (type(req.ca_file) ~= "string" or find(req.ca_file, "\0", 1, true)) then
        error(fname .. ": expected ca_file to be a file name, got " .. printable(tostring(req.ca_file)), 3)
    end
    check_request(fname, method, req.headers)
    method = method:upper()
    local max_redirects = req.max_redirects or 0
    local redirects = 0
    while true do
        local u, err = cached_url(url)
        if not u then
            return nil, err
        end
        local res
        res, err = exchange(method, u, req.headers, body, req)
        if not res then
            return nil, err
        end
        local location = res.headers.location
        if not (REDIRECTS[res.status] and location and redirects < max_redirects) then
            return res
        end
        if res.read then
            repeat
                local piece = res.read()
            until not piece
        end
        url = join_url(url, location)
        if res.status == 303 or ((res.status == 301 or res.status == 302) and method == "POST") then
            method, body = "GET", nil
        end
        redirects = redirects + 1
    end
end

--- Sends a request; see the module's comment for the fields.
function _M.request(req)
    if type(req) ~= "table" then
        error("http.request: expected a table { method =, url =, ... }, got " .. type(req), 2)
    end
    local res, err = request(req, "http.request") -- not a tail call: error levels
    return res, err
end

--- GET url; opts as in http.request.
function _M.get(url, opts)
    local req = {}
    if opts ~= nil then
        if type(opts) ~= "table" then
            error("http.get: expected an options table, got " .. type(opts), 2)
        end
        for k, v in pairs(opts) do
            req[k] = v
        end
    end
    req.url = url
    req.method = "GET"
    local res, err = request(req, "http.get") -- not a tail call: error levels
    return res, err
end

return _M
