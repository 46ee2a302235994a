-- Cookies (RFC 6265): parsing a Cookie header and writing a Set-Cookie
-- line. Pure Lua; server.lua builds req.cookies and res:cookie on it.
--
-- Values are opaque to HTTP (RFC 6265 section 4.1.1 says nothing about
-- their encoding), so they are neither percent-decoded nor encoded here:
-- what res:cookie sets, req.cookies reads back byte for byte. A value
-- outside the cookie-octet set raises rather than being silently escaped;
-- url.encode makes any string fit.
local type, tostring, error, pairs, floor = type, tostring, error, pairs, math.floor
local find, sub, lower, gsub = string.find, string.sub, string.lower, string.gsub
local concat = table.concat
local date = os.date

local _M = {}

local function trim(s)
    return (gsub(s, "^[ \t]+", "", 1):gsub("[ \t]+$", "", 1))
end

--- Parses a Cookie header ("a=1; b=2") into { a = "1", b = "2" }. The
--- first pair of a name wins: a browser sends the cookie of the longest
--- path first (RFC 6265 section 5.4). Pairs without "=" are skipped.
function _M.parse(header)
    local t = {}
    if type(header) ~= "string" or header == "" then
        return t
    end
    local start, len = 1, #header
    while start <= len do
        local semi = find(header, ";", start, true) or len + 1
        local eq = find(header, "=", start, true)
        if eq and eq < semi then
            local name = trim(sub(header, start, eq - 1))
            if name ~= "" and t[name] == nil then
                t[name] = trim(sub(header, eq + 1, semi - 1))
            end
        end
        start = semi + 1
    end
    return t
end

-- RFC 6265 section 4.1.1: a name is a token; a value is cookie-octets,
-- optionally in double quotes (no space, DQUOTE, comma, ;, \ or controls).
local TOKEN = "^[%w!#$%%&'*+%-%.^_`|~]+$"
local NOT_OCTET = '[^\33-\126]' -- and '"', ',', ';', '\\' (BAD_OCTET)
local BAD_OCTET = '[",;\\]'

local SAME_SITE = { strict = "Strict", lax = "Lax", none = "None" }
local OPTIONS = {
    path = true, domain = true, max_age = true, expires = true,
    secure = true, http_only = true, same_site = true,
}

--- The Set-Cookie value for name, value and opts; raises at `level` on a
--- bad name, value or option.
function _M.serialize(fname, name, value, opts, level)
    level = level + 1
    if type(name) ~= "string" or not find(name, TOKEN) then
        error(fname .. ": '" .. tostring(name) .. "' is not a valid cookie name (a token)", level)
    end
    if type(value) == "number" then
        value = tostring(value)
    end
    if type(value) ~= "string" then
        error(fname .. ": expected a string value for cookie '" .. name .. "', got " .. type(value), level)
    end
    local bare = value
    if #value >= 2 and sub(value, 1, 1) == '"' and sub(value, -1) == '"' then
        bare = sub(value, 2, -2)
    end
    if find(bare, NOT_OCTET) or find(bare, BAD_OCTET) then
        error(fname .. ": the value of cookie '" .. name .. "' holds a space, '\"', ',', ';', '\\' or a control"
            .. " byte (url.encode it)", level)
    end
    local out = { name .. "=" .. value }
    if opts == nil then
        return out[1]
    end
    if type(opts) ~= "table" then
        error(fname .. ": expected an options table, got " .. type(opts), level)
    end
    for k in pairs(opts) do
        if not OPTIONS[k] then
            error(fname .. ": unknown option '" .. tostring(k) .. "'", level)
        end
    end
    for _, k in pairs({ "path", "domain" }) do
        local v = opts[k]
        if v ~= nil then
            if type(v) ~= "string" or find(v, "[%c;]") then
                error(fname .. ": " .. k .. " must be a string without ';' or control bytes", level)
            end
            out[#out + 1] = (k == "path" and "Path=" or "Domain=") .. v
        end
    end
    local max_age = opts.max_age
    if max_age ~= nil then
        if type(max_age) ~= "number" or max_age % 1 ~= 0 then
            error(fname .. ": max_age must be a whole number of seconds, got " .. tostring(max_age), level)
        end
        out[#out + 1] = "Max-Age=" .. ("%d"):format(max_age)
    end
    local expires = opts.expires
    if expires ~= nil then
        if type(expires) == "number" then
            expires = date("!%a, %d %b %Y %H:%M:%S GMT", floor(expires))
        elseif type(expires) ~= "string" or find(expires, "[%c;]") then
            error(fname .. ": expires must be seconds since the epoch or an HTTP date", level)
        end
        out[#out + 1] = "Expires=" .. expires
    end
    if opts.secure then
        out[#out + 1] = "Secure"
    end
    if opts.http_only then
        out[#out + 1] = "HttpOnly"
    end
    local ss = opts.same_site
    if ss ~= nil then
        local v = type(ss) == "string" and SAME_SITE[lower(ss)]
        if not v then
            error(fname .. ": same_site must be \"Strict\", \"Lax\" or \"None\", got " .. tostring(ss), level)
        end
        if v == "None" and not opts.secure then
            -- Browsers drop a SameSite=None cookie that is not Secure.
            error(fname .. ": same_site \"None\" needs secure = true", level)
        end
        out[#out + 1] = "SameSite=" .. v
    end
    return concat(out, "; ")
end

return _M
