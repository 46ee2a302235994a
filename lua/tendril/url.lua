-- Percent-decoding and query strings (pure Lua, no runtime needed).
local tonumber, char, type = tonumber, string.char, type
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
