-- tendril.multipart: multipart/form-data (RFC 7578 over RFC 2046), pure Lua.
--
-- The parser is incremental: feed it the body in pieces of any size (a
-- delimiter may be split across them) and it returns what each piece
-- completed, as events. req:form() feeds it the whole body at once; the
-- streaming reader (multipart.reader, behind req:parts()) feeds it what
-- the socket gives, holding at most one part's headers, one piece and a
-- delimiter's length of data.
--
--   local p = multipart.new(boundary)
--   local events, err = p:feed(chunk)   -- nil, "bad multipart: ..." on error
--   -- { type = "part", name =, filename =, content_type =, headers = }
--   -- { type = "data", data = "..." }   (any number per part, maybe none)
--   -- { type = "end" }                  (the part is complete)
--   local ok, err = p:finish()          -- the final delimiter was seen?
--
--   local r = multipart.reader(boundary, read) -- read(max): piece | nil | nil, err
--   for part, err in r:parts() do ... part:read() ... part:save(path) end
local type, error, setmetatable, tostring = type, error, setmetatable, tostring
local find, sub, lower, gsub, match, byte = string.find, string.sub, string.lower, string.gsub, string.match,
    string.byte

local _M = {}

-- A part's head larger than this is refused: it is held whole.
local MAX_HEAD = 16 * 1024

local function bad(why)
    return nil, "bad multipart: " .. why
end

-- Media type parameters: ; name=token or ; name="quoted \" string".
-- Returns { lower(name) = value }.
local function params(s, from)
    local out = {}
    local i = from
    while true do
        local _, e, name = find(s, "^%s*;%s*([^%s=;]+)%s*=%s*", i)
        if not e then
            break
        end
        name = lower(name)
        local value
        if byte(s, e + 1) == 34 then -- '"'
            local j, v = e + 2, {}
            while true do
                local c = sub(s, j, j)
                if c == "" then
                    return out -- unterminated: keep what was whole
                elseif c == "\\" then
                    v[#v + 1] = sub(s, j + 1, j + 1)
                    j = j + 2
                elseif c == '"' then
                    break
                else
                    v[#v + 1] = c
                    j = j + 1
                end
            end
            value = table.concat(v)
            i = j + 1
        else
            local _, e2, v = find(s, "^([^;]*)", e + 1)
            value = gsub(v, "%s+$", "")
            i = e2 + 1
        end
        if out[name] == nil then
            out[name] = value
        end
    end
    return out
end

--- The boundary of a multipart Content-Type (quoted or not), or nil, err.
function _M.boundary(content_type)
    if type(content_type) ~= "string" or not find(lower(content_type), "^%s*multipart/") then
        return nil, "not multipart"
    end
    local b = params(content_type, (find(content_type, ";", 1, true) or #content_type + 1))["boundary"]
    if not b or b == "" or #b > 70 then
        return bad("no boundary (1 to 70 characters) in the Content-Type")
    end
    return b
end

-- The percent-decoded value of an RFC 8187 ext-value (charset''text).
local function ext_value(v)
    local text = match(v, "^[^']*'[^']*'(.*)$")
    if not text then
        return nil
    end
    return (gsub(text, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- Parses a part's head ("Name: value" lines) into the part event.
local function parse_head(head)
    local headers = {}
    for line in (head .. "\r\n"):gmatch("(.-)\r\n") do
        if line ~= "" then
            local name, value = match(line, "^([^:%s]+)%s*:%s*(.-)%s*$")
            if not name then
                return bad("malformed part header '" .. sub(line, 1, 60) .. "'")
            end
            name = lower(name)
            local old = headers[name]
            headers[name] = old and (old .. ", " .. value) or value
        end
    end
    local part = { type = "part", headers = headers, content_type = headers["content-type"] }
    local cd = headers["content-disposition"]
    if cd then
        local p = params(cd, (find(cd, ";", 1, true) or #cd + 1))
        part.name = p.name
        part.filename = p["filename*"] and ext_value(p["filename*"]) or p.filename
    end
    return part
end

local Parser = {}
Parser.__index = Parser

--- A parser for one body whose Content-Type gave `boundary`.
function _M.new(boundary)
    if type(boundary) ~= "string" or boundary == "" then
        error("multipart.new: expected a boundary string, got " .. tostring(boundary), 2)
    end
    -- The body is read as if a CRLF came before it, so that the first
    -- delimiter (which may open the body, without one) is found like the
    -- others: every delimiter is CRLF "--" boundary.
    return setmetatable({ _delim = "\r\n--" .. boundary, _buf = "\r\n", _state = "preamble" }, Parser)
end

--- Takes the next piece of the body; returns the events it completed (an
--- array, maybe empty), or nil, err once the body is malformed.
function Parser:feed(chunk)
    if self._err then
        return nil, self._err
    end
    -- buf is read from pos on: cutting it at each part would copy the rest
    -- of the body once per part.
    local buf = self._buf == "" and chunk or self._buf .. chunk
    local pos = 1
    local delim = self._delim
    local dl = #delim
    local out, n = {}, 0
    local state = self._state
    while true do
        if state == "preamble" or state == "body" then
            local i = find(buf, delim, pos, true)
            if not i then
                -- Keep what could be the start of a delimiter.
                local keep = #buf - (dl - 1)
                if keep >= pos then
                    if state == "body" then
                        n = n + 1
                        out[n] = { type = "data", data = sub(buf, pos, keep) }
                    end
                    pos = keep + 1
                end
                break
            end
            if state == "body" then
                if i > pos then
                    n = n + 1
                    out[n] = { type = "data", data = sub(buf, pos, i - 1) }
                end
                n = n + 1
                out[n] = { type = "end" }
            end
            pos = i + dl
            state = "boundary"
        elseif state == "boundary" then
            -- After a delimiter: "--" closes the body; else optional
            -- whitespace (RFC 2046's transport padding), then CRLF.
            if #buf - pos < 1 then
                break
            end
            if sub(buf, pos, pos + 1) == "--" then
                state = "epilogue"
                pos = #buf + 1
            else
                local _, e = find(buf, "^[ \t]*\r\n", pos)
                if not e then
                    if find(buf, "^[ \t]*\r?$", pos) and #buf - pos < 256 then
                        break -- the CRLF may be in the next piece
                    end
                    self._err = "bad multipart: a boundary line ends with something else than CRLF"
                    return nil, self._err
                end
                pos = e + 1
                state = "head"
            end
        elseif state == "head" then
            local e, body_at
            if sub(buf, pos, pos + 1) == "\r\n" then
                e, body_at = pos, pos + 2 -- a part without headers
            else
                e = find(buf, "\r\n\r\n", pos, true)
                if (e or #buf) - pos > MAX_HEAD then
                    self._err = "bad multipart: a part's headers pass " .. MAX_HEAD .. " bytes"
                    return nil, self._err
                end
                if not e then
                    break
                end
                -- The CRLF before the next delimiter belongs to the
                -- delimiter: an empty body is the blank line followed by it.
                body_at = e + 4
            end
            local part, err = parse_head(sub(buf, pos, e - 1))
            if not part then
                self._err = err
                return nil, err
            end
            n = n + 1
            out[n] = part
            pos = body_at
            state = "body"
        else -- epilogue: ignored
            pos = #buf + 1
            break
        end
    end
    self._buf, self._state = sub(buf, pos), state
    return out
end

--- Ends the body: true when its final delimiter was seen, else nil, err.
function Parser:finish()
    if self._err then
        return nil, self._err
    end
    if self._state ~= "epilogue" then
        self._err = self._state == "preamble" and "bad multipart: no boundary in the body"
            or "bad multipart: the body ends before its final boundary"
        return nil, self._err
    end
    return true
end

-- Adds value under name: a name seen again gets an array of its values.
local function add(form, name, value)
    local old = form[name]
    if old == nil then
        form[name] = value
    elseif type(old) == "table" and old[1] ~= nil then
        old[#old + 1] = value
    else
        form[name] = { old, value }
    end
end

---------------------------------------------------------------- reader

local Reader = {}
Reader.__index = Reader

local Part = {}
Part.__index = Part

--- Parts of a body that read(max) gives in pieces (a piece, nil at its end,
--- or nil, err), one at a time.
function _M.reader(boundary, read)
    if type(read) ~= "function" then
        error("multipart.reader: expected a read function, got " .. type(read), 2)
    end
    return setmetatable({ _p = _M.new(boundary), _read = read, _q = {}, _qi = 1 }, Reader)
end

-- The next event, reading more of the body (at most max bytes) when none
-- is queued; nil at the end of a well-formed body, nil, err otherwise.
function Reader:_event(max)
    while true do
        local q, i = self._q, self._qi
        local ev = q[i]
        if ev then
            q[i] = nil -- what was handed out is not held
            self._qi = i + 1
            return ev
        end
        if self._ended then
            return nil
        end
        local piece, err = self._read(max)
        if piece == nil then
            if err then
                return nil, err
            end
            local ok
            ok, err = self._p:finish()
            if not ok then
                return nil, err
            end
            self._ended = true
            return nil
        end
        local events
        events, err = self._p:feed(piece)
        if not events then
            return nil, err
        end
        self._q, self._qi = events, 1
    end
end

--- An iterator over the parts: each call gives the next part (skipping
--- what is left of the one before), nil after the last, or once false,
--- err (then nil), even when a part's read told the error already.
function Reader:parts()
    local function failed(err)
        self._err = self._err or err
        if self._told then
            return nil
        end
        self._told = true
        return false, self._err
    end
    return function()
        if self._err then
            return failed()
        end
        local cur = self._cur
        if cur and not cur._done then
            repeat
                local piece, err = cur:read()
                if piece == nil and err then
                    return failed(err)
                end
            until piece == nil
        end
        local ev, err = self:_event()
        if ev == nil then
            if err then
                return failed(err)
            end
            return nil
        end
        -- After a part's end event only a part (or the end) comes.
        if not ev.name then
            return failed("bad multipart: a part without a Content-Disposition name")
        end
        ev.type = nil
        ev._r = self
        self._cur = setmetatable(ev, Part)
        return ev
    end
end

--- The part's next piece of data (at most max bytes, 64 KiB by default),
--- nil when the part is over, or nil, err.
function Part:read(max)
    if max == nil then
        max = 65536
    elseif type(max) ~= "number" or max < 1 or max ~= max then
        error("part:read: expected a number of bytes >= 1, got " .. tostring(max), 2)
    end
    if self._done then
        return nil
    end
    local r = self._r
    if r._err then
        return nil, r._err
    end
    -- What an earlier, larger piece left.
    local rest = self._rest
    if rest then
        if #rest > max then
            self._rest = sub(rest, max + 1)
            return sub(rest, 1, max)
        end
        self._rest = nil
        return rest
    end
    local ev, err = r:_event(max)
    if ev == nil then
        -- A well-formed body ends each part before it ends.
        r._err = err or "bad multipart: the body ends before its final boundary"
        return nil, r._err
    end
    if ev.type == "data" then
        local data = ev.data
        if #data > max then
            self._rest = sub(data, max + 1)
            return sub(data, 1, max)
        end
        return data
    end
    self._done = true -- its "end" event
    return nil
end

--- Writes the rest of the part to the file at path (tendril.fs, on the
--- thread pool); the bytes written, or nil, err.
function Part:save(path)
    local fs = require "tendril.fs"
    local n, first = 0, true
    while true do
        local piece, err = self:read()
        if piece == nil then
            if err then
                return nil, err
            end
            break
        end
        local ok, werr
        if first then
            ok, werr = fs.write(path, piece)
            first = false
        else
            ok, werr = fs.append(path, piece)
        end
        if not ok then
            return nil, werr
        end
        n = n + #piece
    end
    if first then
        local ok, werr = fs.write(path, "")
        if not ok then
            return nil, werr
        end
    end
    return n
end

---------------------------------------------------------------- whole bodies

--- Parses a whole multipart/form-data body into { name = value }: a field
--- is a string, a file (a part with a filename) a table { filename =,
--- content_type =, headers =, data = }, a repeated name an array of these.
--- nil, err ("bad multipart: ...") when the body or a part is malformed.
function _M.parse(body, content_type)
    local boundary, err = _M.boundary(content_type)
    if not boundary then
        return nil, err
    end
    local p = _M.new(boundary)
    local events
    events, err = p:feed(body)
    if not events then
        return nil, err
    end
    local ok
    ok, err = p:finish()
    if not ok then
        return nil, err
    end
    local form = {}
    local part, pieces, np
    for i = 1, #events do
        local ev = events[i]
        local t = ev.type
        if t == "part" then
            if not ev.name then
                return bad("a part without a Content-Disposition name")
            end
            part, pieces, np = ev, {}, 0
        elseif t == "data" then
            np = np + 1
            pieces[np] = ev.data
        else
            local data = table.concat(pieces, "", 1, np)
            if part.filename then
                add(form, part.name, { filename = part.filename, content_type = part.content_type,
                    headers = part.headers, data = data })
            else
                add(form, part.name, data)
            end
        end
    end
    return form
end

return _M
