-- Static files: local static = require "tendril.static"
--   router:get("/assets/*path", static("public", opts))  -- req.params.path
--   return static("public")                              -- the whole handler
-- opts: follow_symlinks (false: a file whose real path leaves the root is
-- 404), hidden (false: dot-files are 404), index ("index.html"), gzip
-- (true: a ".gz" twin goes to clients that accept gzip), mime_types (a
-- path, "/etc/mime.types"), listing (false: a directory without its index
-- is 404; true: an HTML list of its entries).
-- Files leave through res:sendfile (sendfile(2) on plain connections);
-- ETag and Last-Modified with 304s, one Range per request (206, 416).
-- Directory listings are made only when asked (opts.listing).
local core = require "tendril.core"

local type, tonumber, tostring, error = type, tonumber, tostring, error
local find, sub, lower, format, match, gmatch = string.find, string.sub, string.lower, string.format, string.match,
    string.gmatch
local concat, byte = table.concat, string.byte
local DOT, SLASH = byte("."), byte("/")
local floor = math.floor
local file_open, file_close, realpath, req_header = core.file_open, core.file_close, core.realpath, core.req_header
local dir_open, dir_list = core.dir_open, core.dir_list
local url_encode = require("tendril.url").encode
local gsub, sort = string.gsub, table.sort
local rawget = rawget

local _M = {}

local DEFAULT_TYPE = "application/octet-stream"
-- When /etc/mime.types is missing (a container without media-types).
local FALLBACK = {
    html = "text/html", htm = "text/html", css = "text/css", js = "text/javascript", mjs = "text/javascript",
    json = "application/json", txt = "text/plain", svg = "image/svg+xml", png = "image/png",
    jpg = "image/jpeg", jpeg = "image/jpeg", gif = "image/gif", webp = "image/webp", ico = "image/x-icon",
    wasm = "application/wasm", pdf = "application/pdf", xml = "application/xml", woff2 = "font/woff2",
}
-- Text types are sent with a charset, as nginx's charset utf-8 would.
local TEXT = { ["text/html"] = true, ["text/css"] = true, ["text/plain"] = true, ["text/javascript"] = true }

local types_by_path = {} -- parsed once per file, shared by every handler

local function load_types(path)
    local t = types_by_path[path]
    if t then
        return t
    end
    t = {}
    for k, v in pairs(FALLBACK) do
        t[k] = v
    end
    -- Read once, when the handler is made (the app's load), not per request.
    local f = io.open(path, "r")
    if f then
        for line in f:lines() do
            if not find(line, "^%s*#") then
                local mime, rest = match(line, "^%s*(%S+)%s+(.*)$")
                if mime then
                    for ext in gmatch(rest, "%S+") do
                        t[lower(ext)] = mime
                    end
                end
            end
        end
        f:close()
    end
    types_by_path[path] = t
    return t
end

local function content_type(types, name)
    local ext = match(name, "%.([^./]+)$")
    local t = ext and types[lower(ext)] or DEFAULT_TYPE
    if TEXT[t] then
        return t .. "; charset=utf-8"
    end
    return t
end

local DAYS = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
local MONTHS = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }
local MONTH_NUM = {}
for i, m in ipairs(MONTHS) do
    MONTH_NUM[m] = i
end

-- Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm): no
-- os.time, which works in local time.
local function days_from_civil(y, m, d)
    if m <= 2 then
        y = y - 1
    end
    local era = floor(y / 400)
    local yoe = y - era * 400
    local mp = (m + 9) % 12
    local doy = floor((153 * mp + 2) / 5) + d - 1
    local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
end

-- The last date made: a site's files share few mtimes, and os.date is
-- the costliest call of a small file's answer.
local last_t, last_date
local function http_date(t)
    if t ~= last_t then
        last_t, last_date = t, os.date("!%a, %d %b %Y %H:%M:%S GMT", t)
    end
    return last_date
end

-- An IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") as seconds, or nil.
local function parse_date(s)
    local d, mon, y, hh, mm, ss = match(s or "", "^%a+, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    local m = mon and MONTH_NUM[mon]
    if not m then
        return nil
    end
    return days_from_civil(tonumber(y), m, tonumber(d)) * 86400 + tonumber(hh) * 3600 + tonumber(mm) * 60
        + tonumber(ss)
end
_M._parse_date, _M._http_date, _M._days = parse_date, http_date, DAYS

-- The one range of "bytes=a-b", "bytes=a-", "bytes=-n": first, last; or
-- false when unsatisfiable; or nil to ignore the header (several ranges,
-- another unit, nonsense: the whole file, as RFC 9110 allows).
local function parse_range(h, size)
    local a, b = match(h, "^%s*bytes%s*=%s*(%d*)%s*%-%s*(%d*)%s*$")
    if not a or (a == "" and b == "") then
        return nil
    end
    if a == "" then
        local n = tonumber(b)
        if n == 0 or size == 0 then
            return false
        end
        return n >= size and 0 or size - n, size - 1
    end
    local first, last = tonumber(a), b ~= "" and tonumber(b) or size - 1
    if first >= size then
        return false
    end
    if last < first then
        return nil
    end
    if last >= size then
        last = size - 1
    end
    return first, last
end
_M._parse_range = parse_range

local function accepts_gzip(ae)
    if not ae then
        return false
    end
    for coding in gmatch(lower(ae), "[^,]+") do
        local name, q = match(coding, "^%s*([%w%*%-]+)%s*;?%s*q?=?%s*([%d%.]*)")
        if name == "gzip" or name == "x-gzip" then
            return q == "" or (tonumber(q) or 0) > 0
        end
    end
    return false
end

local function etag_matches(inm, etag)
    if find(inm, "*", 1, true) then
        return true
    end
    -- Weak comparison, as If-None-Match asks.
    local bare = sub(etag, 2, -2)
    for tag in gmatch(inm, "\"([^\"]*)\"") do
        if tag == bare then
            return true
        end
    end
    return false
end

local function not_found()
    return 404, nil, "not found\n"
end

local HTML_ESCAPES = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }
local function html(s)
    return (gsub(s, "[&<>\"']", HTML_ESCAPES))
end

-- An entry's name as a relative link: url.encode's, the trailing "/" of
-- a directory kept ("a b/" -> "a%20b/", "x?y" -> "x%3Fy").
local function href(name)
    return (gsub(url_encode(name), "%%2F", "/"))
end

-- The entries of the directory at path (its URL path is `at`, ending in
-- "/"), as a page of links; hidden names only when allowed.
local function listing(res, at, path, within, dir, rel, hidden)
    local names = dir_list(path, within, dir, rel)
    if not names then
        return not_found()
    end
    local shown = {}
    for i = 1, #names do
        if hidden or byte(names[i], 1) ~= DOT then
            shown[#shown + 1] = names[i]
        end
    end
    sort(shown)
    local title = "Index of " .. html(at)
    local out = { "<!doctype html>\n<meta charset=\"utf-8\">\n<title>", title, "</title>\n<h1>", title,
        "</h1>\n<ul>\n" }
    if at ~= "/" then
        out[#out + 1] = "<li><a href=\"../\">../</a></li>\n"
    end
    for i = 1, #shown do
        out[#out + 1] = "<li><a href=\"" .. href(shown[i]) .. "\">" .. html(shown[i]) .. "</a></li>\n"
    end
    out[#out + 1] = "</ul>\n"
    res:header("Content-Type", "text/html; charset=utf-8")
    return concat(out)
end

-- The request's path relative to the root: the path itself (no segment
-- starts with a dot), or its segments and their count; nil when it
-- may not be served: dot segments, encoded slashes or backslashes, NUL,
-- hidden names.
local function segments(req, rel, hidden)
    -- The decoded path cannot tell "%2F" from "/": the raw target can.
    local target = req.target or ""
    if find(target, "%", 1, true) then
        local raw = lower(match(target, "^[^?#]*"))
        if find(raw, "%2f", 1, true) or find(raw, "%5c", 1, true) or find(raw, "%00", 1, true) then
            return nil
        end
    end
    if find(rel, "\\", 1, true) or find(rel, "\0", 1, true) then
        return nil
    end
    -- Nearly every path: no segment starts with a dot, nothing to split.
    if not find(rel, "/.", 1, true) and byte(rel, 1) ~= DOT then
        return rel
    end
    local segs, n = {}, 0
    for seg in gmatch(rel, "[^/]+") do
        if seg == "." or seg == ".." or (not hidden and sub(seg, 1, 1) == ".") then
            return nil
        end
        n = n + 1
        segs[n] = seg
    end
    return segs, n
end

--- A handler serving the files under root.
function _M.new(root, opts)
    if type(root) ~= "string" then
        error("static: expected the root directory (string), got " .. type(root), 2)
    end
    opts = opts or {}
    if type(opts) ~= "table" then
        error("static: expected an options table, got " .. type(opts), 2)
    end
    local real_root, err = realpath(root)
    if not real_root then
        error("static: the root '" .. root .. "': " .. tostring(err), 2)
    end
    local follow, hidden, list = opts.follow_symlinks, opts.hidden, opts.listing
    local index = opts.index == nil and "index.html" or opts.index
    local gzip = opts.gzip ~= false
    local types = load_types(opts.mime_types or "/etc/mime.types")
    local within = not follow and real_root or nil
    -- Paths are opened under the root's descriptor (openat2 keeps them
    -- there in one call) unless symbolic links may lead out.
    local dir = within and dir_open(real_root) or nil

    return function(req, res)
        local method = req.method
        if method ~= "GET" and method ~= "HEAD" then
            return 405, { Allow = "GET, HEAD" }, "method not allowed\n"
        end
        local params = req.params
        local segs, n = segments(req, params and params.path or req.path, hidden)
        if not segs then
            return not_found()
        end
        local path, rel
        if n then
            rel = n > 0 and concat(segs, "/", 1, n) or "."
        else
            rel = byte(segs, 1) == SLASH and sub(segs, 2) or segs -- the path as it came
            if rel == "" then
                rel = "."
            end
        end
        path = rel == "." and real_root or real_root .. "/" .. rel
        local file, size, mtime, kind = file_open(path, within, dir, rel)
        if file == nil then
            return not_found()
        end
        if kind == "directory" then
            local dir_path, dir_rel = path, rel
            if index then
                path, rel = path .. "/" .. index, rel .. "/" .. index
                file, size, mtime, kind = file_open(path, within, dir, rel)
            end
            if not index or (file == nil and list) then
                if not list then
                    return not_found() -- no listings unless asked
                end
                -- Relative links need the trailing slash.
                local at = req.path
                if sub(at, -1) ~= "/" then
                    return 301, { Location = href(at) .. "/" }, ""
                end
                return listing(res, at, dir_path, within, dir, dir_rel, hidden)
            end
        end
        if kind ~= "file" then
            return not_found()
        end
        -- The five fields asked of C: the table of every header costs more
        -- than the rest of a small file's answer.
        local ae, inm, ims, range, if_range
        local h = rawget(req, "headers")
        if h then
            ae, inm, ims, range, if_range = h["accept-encoding"], h["if-none-match"], h["if-modified-since"],
                h.range, h["if-range"]
        else
            ae, inm, ims, range, if_range = req_header(req[1], req[2], "accept-encoding", "if-none-match",
                "if-modified-since", "range", "if-range")
        end
        local encoding
        if gzip and accepts_gzip(ae) then
            local gz, gsize, gmtime, gkind = file_open(path .. ".gz", within, dir, rel .. ".gz")
            if gz and gkind == "file" then
                file_close(file)
                file, size, mtime, encoding = gz, gsize, gmtime, "gzip"
            end
        end
        local etag = format("\"%x-%x%s\"", size, mtime, encoding and "-gz" or "")
        local last_modified = http_date(mtime)
        res:header("ETag", etag)
        res:header("Last-Modified", last_modified)
        res:header("Accept-Ranges", "bytes")
        if gzip then
            res:header("Vary", "Accept-Encoding")
        end
        if (inm and etag_matches(inm, etag)) or (not inm and ims and (parse_date(ims) or -1) >= mtime) then
            file_close(file)
            return 304
        end
        res:header("Content-Type", content_type(types, path))
        if encoding then
            res:header("Content-Encoding", encoding)
        end
        local offset, length = 0, size
        if range and (not if_range or if_range == etag or if_range == last_modified) then
            local first, last = parse_range(range, size)
            if first == false then
                file_close(file)
                res:header("Content-Range", "bytes */" .. format("%d", size))
                return 416, nil, "range not satisfiable\n"
            elseif first then
                res:status(206)
                res:header("Content-Range", format("bytes %d-%d/%d", first, last, size))
                offset, length = first, last - first + 1
            end
        end
        local ok
        ok, err = res:sendfile(file, { offset = offset, length = length, size = size })
        file_close(file)
        if not ok and err ~= "closed" then
            core.log("info", "static: " .. path .. ": " .. tostring(err))
        end
    end
end

return setmetatable(_M, { __call = function(_, root, opts) return _M.new(root, opts) end })
