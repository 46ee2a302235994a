-- tendril.compress: a middleware that gzips text-like responses, for
-- router:use.
--
--   router:use(require("tendril.compress"){ min_size = 1024, level = 6,
--       types = { "text/*", "application/json" } })
--
-- The answer is compressed when its Content-Type matches `types`, the
-- request's Accept-Encoding allows gzip (q=0 forbids it), and it is not a
-- HEAD, a 204, 206 or 304, a Content-Range, an answer that already has a
-- Content-Encoding or asks for Cache-Control: no-transform, nor a body
-- known to be shorter than min_size. Answers of a matching type get
-- `Vary: Accept-Encoding` whether compressed or not (a cache must keep
-- both); compressed ones lose Content-Length and a strong ETag turns weak.
--
-- Both ways of answering go through it: res:write / res:finish are
-- replaced on this request's res (each write is compressed and flushed, so
-- a stream stays a stream), and a body the handler returns goes through
-- res._filter, which the server's respond calls. Without this middleware
-- nothing of it runs.
local type, error, tostring, ipairs, tonumber = type, error, tostring, ipairs, tonumber
local find, lower, match, gmatch, gsub, sub = string.find, string.lower, string.match, string.gmatch, string.gsub,
    string.sub

local DEFAULT_TYPES = {
    "text/*", "application/json", "application/*+json", "application/javascript", "application/x-javascript",
    "application/xml", "application/*+xml", "image/svg+xml", "application/x-ndjson",
}

-- core loads on first use, so that the option checks run without the server.
local gzip_new

-- Whether Accept-Encoding allows gzip: "gzip" (or "x-gzip") with q > 0,
-- else "*" with q > 0. No header: no (RFC 9110 allows anything, but
-- clients that want compression say so).
local function accepts_gzip(ae)
    if not ae then
        return false
    end
    local gz, star
    for item in gmatch(ae, "[^,]+") do
        local coding, rest = match(item, "^%s*([^;%s]+)%s*(.*)$")
        if coding then
            coding = lower(coding)
            local q = tonumber(match(rest, "^;%s*[qQ]%s*=%s*([%d.]+)") or "1") or 0
            if coding == "gzip" or coding == "x-gzip" then
                gz = (gz or false) or q > 0
            elseif coding == "*" then
                star = q > 0
            end
        end
    end
    if gz ~= nil then
        return gz
    end
    return star == true
end

-- A header's value in a server.lua header list (name, value, ...; false
-- for a removed one), found by scanning: respond adds its default
-- Content-Type to the list without indexing it.
local function header_of(h, name)
    if type(h) ~= "table" then
        return nil
    end
    for i = 1, #h, 2 do
        if lower(h[i]) == name then
            local v = h[i + 1]
            if type(v) == "table" then
                v = v[1]
            end
            if v then
                return tostring(v)
            end
        end
    end
    return nil
end

-- Decides for this response, setting the headers: "gz" (res._gz holds the
-- stream) or "plain". size: the body's length when known.
local function start(res, status, size)
    local cfg = res._gz_cfg
    local st = "plain"
    res._gz_state = st
    if status < 200 or status == 204 or status == 206 or status == 304 then
        return st
    end
    local h = res._h
    local ct = header_of(h, "content-type")
    if not ct or not cfg.match(lower(match(ct, "^%s*([^;%s]*)"))) then
        return st
    end
    if header_of(h, "content-encoding") or header_of(h, "content-range") then
        return st
    end
    local vary = header_of(h, "vary")
    if not vary then
        res:header("Vary", "Accept-Encoding")
    elseif not find(lower(vary), "accept-encoding", 1, true) and vary ~= "*" then
        res:header("Vary", vary .. ", Accept-Encoding")
    end
    if not res._gz_ok then
        return st
    end
    local cc = header_of(h, "cache-control")
    if cc and find(lower(cc), "no-transform", 1, true) then
        return st
    end
    size = size or tonumber(header_of(h, "content-length"))
    if size and (size == 0 or size < cfg.min_size) then
        return st
    end
    gzip_new = gzip_new or require("tendril.core").gzip_new
    local gz = gzip_new(cfg.level)
    if not gz then
        return st -- no memory for zlib: the body goes as it is
    end
    res._gz = gz
    res:header("Content-Encoding", "gzip")
    res:header("Content-Length", nil)
    local etag = header_of(h, "etag")
    if etag and sub(etag, 1, 1) == '"' then
        -- Another representation: byte-for-byte equality no longer holds.
        res:header("ETag", "W/" .. etag)
    end
    st = "gz"
    res._gz_state = st
    return st
end

-- The server's own check, so that res:write says the same with or without
-- compression (loaded on first use: the specs run without the server).
local check_chunk

-- res:write on a compressing request.
local function cwrite(self, chunk)
    check_chunk = check_chunk or require("tendril.server").check_chunk
    chunk = check_chunk("res:write", chunk)
    if self._done then
        error("res:write: the response was finished already", 2)
    end
    local st = self._gz_state or start(self, self._status, nil)
    if st == "gz" and chunk ~= "" then
        local err
        chunk, err = self._gz:write(chunk)
        if not chunk then
            return nil, err
        end
    end
    return self._gz_write(self, chunk)
end

-- res:finish on a compressing request (res:json ends here too).
local function cfinish(self, body)
    if body ~= nil then
        check_chunk = check_chunk or require("tendril.server").check_chunk
        body = check_chunk("res:finish", body)
    end
    if self._done then
        error("res:finish: the response was finished already", 2)
    end
    local st = self._gz_state or start(self, self._status, body and #body or 0)
    if st == "gz" then
        local err
        body, err = self._gz:finish(body)
        if not body then
            return nil, err
        end
    end
    return self._gz_finish(self, body)
end

-- What the server's respond sends when the handler returned its answer:
-- status, headers (a list, or true for respond's text/plain constant) and
-- body, rewritten.
local function filter(res, status, h, body)
    local st = res._gz_state
    if not st then
        if res._sent then
            return status, h, body
        end
        if h == true then
            res:header("Content-Type", "text/plain")
        end
        st = start(res, status, body and #body or 0)
        h = res._h or h
    end
    if st == "gz" then
        local err
        body, err = res._gz:finish(body)
        if not body then
            error("tendril.compress: " .. tostring(err), 0)
        end
    end
    return status, h, body
end

-- The route's values, passed on as they are (so that the router still
-- names the route as their author); a plain `return body` would take the
-- server's fast path, which knows nothing of res._filter: giving it its
-- Content-Type here sends it through respond, which does.
local function after(res, ...)
    local a, b = ...
    if type(a) == "string" and b == nil and not res._done and not res._sent and not res._h then
        res:header("Content-Type", "text/plain")
    end
    return ...
end

-- "text/*" and "application/*+json" as anchored Lua patterns.
local function compile(fname, types)
    if type(types) ~= "table" then
        error(fname .. ": expected types to be a list of media types, got " .. type(types), 3)
    end
    local pats = {}
    for i, t in ipairs(types) do
        if type(t) ~= "string" then
            error(fname .. ": types[" .. i .. "] is a " .. type(t) .. ", not a string", 3)
        end
        local p = gsub(lower(t), "[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0")
        pats[i] = "^" .. gsub(p, "%*", ".*") .. "$"
    end
    return function(mt)
        for i = 1, #pats do
            if find(mt, pats[i]) then
                return true
            end
        end
        return false
    end
end

return function(opts)
    local fname = "tendril.compress"
    opts = opts or {}
    if type(opts) ~= "table" then
        error(fname .. ": expected an options table, got " .. type(opts), 2)
    end
    local min_size = opts.min_size or 1024
    if type(min_size) ~= "number" or min_size < 0 or min_size % 1 ~= 0 then
        error(fname .. ": min_size must be a whole number of bytes, got " .. tostring(min_size), 2)
    end
    local level = opts.level or -1
    if type(level) ~= "number" or (level ~= -1 and (level < 1 or level > 9 or level % 1 ~= 0)) then
        error(fname .. ": level must be from 1 to 9, got " .. tostring(level), 2)
    end
    local cfg = { min_size = min_size, level = level, match = compile(fname, opts.types or DEFAULT_TYPES) }

    return function(req, res, nxt)
        -- Once per request: a second compress (a mounted router's) would
        -- wrap the wrappers and gzip twice.
        if req.method == "HEAD" or res._gz_cfg then
            return nxt()
        end
        res._gz_cfg = cfg
        res._gz_ok = accepts_gzip(req.headers["accept-encoding"])
        res._gz_write, res._gz_finish = res.write, res.finish
        res.write, res.finish = cwrite, cfinish
        res._filter = filter
        return after(res, nxt())
    end
end
