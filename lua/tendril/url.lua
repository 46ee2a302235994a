-- Percent-decoding and query strings (pure Lua, no runtime needed).
local tonumber, char, type = tonumber, string.char, type
local gsub, find, sub = string.gsub, string.find, string.sub

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

--- Splits a request target into its decoded path and its raw query string.
function _M.split_target(target)
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
    return _M.decode(path), query
end

return _M
