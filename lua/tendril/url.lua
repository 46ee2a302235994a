-- Percent-decoding and query strings (pure Lua, no runtime needed).
local tonumber, tostring, char, type, error, pairs = tonumber, tostring, string.char, type, error, pairs
local format, sort, concat = string.format, table.sort, table.concat
local gsub, find, sub, byte = string.gsub, string.find, string.sub, string.byte
local SLASH = 47 -- "/"

local _M = {}

local function unhex(h)
    return char(tonumber(h, 16))
end

--- Decodes %XX escapes; "+" stays "+" (paths).
function _M.decode(s)
    if not find(s, "%", 1, true) then
        return s
    end
    return (gsub(s, "%%(%x%x)", unhex))
end

--- Decodes a query component: "+" is a space, then %XX escapes.
function _M.decode_component(s)
    if find(s, "+", 1, true) then
        s = gsub(s, "+", " ")
    end
    if not find(s, "%", 1, true) then
        return s
    end
    return (gsub(s, "%%(%x%x)", unhex))
end

local decode_component = _M.decode_component

local function hex(c)
    return format("%%%02X", byte(c))
end

--- Percent-encodes every byte but RFC 3986's unreserved ones (letters,
--- digits, "-", ".", "_", "~"): safe in a path segment, a query name or
--- value, or a cookie value.
function _M.encode(s)
    local t = type(s)
    if t == "number" then
        s = tostring(s)
    elseif t ~= "string" then
        error("url.encode: expected a string, got " .. t, 2)
    end
    return (gsub(s, "[^%w%-%._~]", hex))
end

local encode = _M.encode

--- Builds "a=1&b=x%20y" from { a = 1, b = "x y" }: names in sorted order
--- (the same table gives the same string), an array value repeats its
--- name, true gives a bare name. parse_query reads it back.
function _M.build_query(args)
    if type(args) ~= "table" then
        error("url.build_query: expected a table, got " .. type(args), 2)
    end
    local names = {}
    for k in pairs(args) do
        if type(k) ~= "string" then
            error("url.build_query: expected string names, got a " .. type(k), 2)
        end
        names[#names + 1] = k
    end
    sort(names)
    local out = {}
    for i = 1, #names do
        local k = names[i]
        local v = args[k]
        local values = type(v) == "table" and v or { v }
        for j = 1, #values do
            local x = values[j]
            local tx = type(x)
            if x == true then
                out[#out + 1] = encode(k)
            elseif tx == "string" or tx == "number" then
                out[#out + 1] = encode(k) .. "=" .. encode(x)
            elseif x ~= false then
                error("url.build_query: the value of '" .. k .. "' is a " .. tx, 2)
            end
        end
    end
    return concat(out, "&")
end

--- Parses "a=1&b=x+y&a=2" into { a = { "1", "2" }, b = "x y" }: a name seen
--- twice gets an array of its values; a name without "=" gets "".
function _M.parse_query(q)
    local args = {}
    if not q or q == "" then
        return args
    end
    for pair in q:gmatch("[^&]+") do
        local eq = find(pair, "=", 1, true)
        local k, v
        if eq then
            k, v = decode_component(sub(pair, 1, eq - 1)), decode_component(sub(pair, eq + 1))
        else
            k, v = decode_component(pair), ""
        end
        if k ~= "" then
            local old = args[k]
            if old == nil then
                args[k] = v
            elseif type(old) == "table" then
                old[#old + 1] = v
            else
                args[k] = { old, v }
            end
        end
    end
    return args
end

--- Removes "." and ".." segments (RFC 3986 section 5.2.4) from an absolute
--- path: "/a/../b" is "/b", and nothing climbs above "/".
function _M.remove_dot_segments(path)
    if not find(path, "/.", 1, true) then
        return path
    end
    local out, n = {}, 0
    local start = 2 -- after the leading "/"
    local len = #path
    while start <= len + 1 do
        local slash = find(path, "/", start, true) or len + 1
        local seg = sub(path, start, slash - 1)
        if seg == ".." then
            if n > 0 then
                out[n] = nil
                n = n - 1
            end
        elseif seg ~= "." then
            n = n + 1
            out[n] = seg
        end
        -- A path ending in "/." or "/.." names a directory: keep the slash.
        if slash > len and (seg == "." or seg == "..") then
            n = n + 1
            out[n] = ""
        end
        start = slash + 1
    end
    return "/" .. table.concat(out, "/", 1, n)
end

--- Splits a request target into its decoded path (dot segments removed),
--- its raw query string and, for an absolute-form target
--- ("http://host/x"), its host.
function _M.split_target(target)
    local host
    -- origin-form ("/...") is nearly every request: one byte tells.
    local scheme_end = byte(target, 1) ~= SLASH and find(target, "://", 1, true)
    if scheme_end then
        local auth_end = find(target, "[/?]", scheme_end + 3) or #target + 1
        host = sub(target, scheme_end + 3, auth_end - 1)
        target = sub(target, auth_end)
        if sub(target, 1, 1) ~= "/" then
            target = "/" .. target
        end
    end
    local q = find(target, "?", 1, true)
    local path, query
    if q then
        path, query = sub(target, 1, q - 1), sub(target, q + 1)
    else
        path, query = target, ""
    end
    local hash = find(query, "#", 1, true)
    if hash then
        query = sub(query, 1, hash - 1)
    end
    path = _M.decode(path)
    if byte(path, 1) == SLASH and find(path, "/.", 1, true) then
        path = _M.remove_dot_segments(path)
    end
    return path, query, host
end

return _M
