-- tendril.json: JSON on top of lua-cjson, with arrays that stay arrays.
--
-- Debian ships lua-cjson 2.1.0, which has no array metatable: an empty
-- table encodes as `{}` and `decode("[]")` gives a bare empty table, so
-- `[]` and `{}` cannot survive a round trip through it. Here a table marked
-- with json.array (every array json.decode returns carries the mark) encodes
-- as `[]` when it is empty. cjson does all the parsing and printing; the
-- extra work happens only when the text could hold an array:
--
-- * decode: with no `[` in the text, one cjson call. Otherwise a walk of the
--   decoded tables marks the arrays (a non-empty one is told by its key 1,
--   as cjson gives objects string keys only). An empty array cannot be told
--   from an empty object after cjson: with no `{ }` anywhere in the text
--   every empty table is an array; with no `[ ]`, none is. Only a text
--   holding both is first rewritten, each `[ ]` outside strings into a
--   sentinel string that no JSON text can spell (it starts with a byte that
--   is never UTF-8 and that the text does not hold raw; \u escapes only
--   make valid UTF-8), which the walk turns back into a marked empty table.
-- * encode: one cjson call; only when its output holds `{}` can a marked
--   empty table be inside, and then a walk looks for the empty tables. When
--   all are marked and the text holds no other `{}` (none in a string),
--   every `{}` becomes `[]`; otherwise each marked one gets a sentinel
--   element for a second cjson call, whose sentinel arrays become `[]`.
--
-- A private cjson instance (cjson.new) keeps the settings apart from an
-- app's own `require "cjson"`, and decodes strictly: no NaN, Infinity or
-- hexadecimal numbers, which JSON does not have.
local cjson = require("cjson").new()

local type, pcall, error, next, pairs, setmetatable, getmetatable, tostring =
    type, pcall, error, next, pairs, setmetatable, getmetatable, tostring
local find, sub, char, byte = string.find, string.sub, string.char, string.byte
local concat = table.concat

cjson.decode_invalid_numbers(false)
cjson.encode_invalid_numbers(false)

local cjson_encode, cjson_decode = cjson.encode, cjson.decode

local _M = {}

--- The value that stands for JSON null (cjson's own: a lightuserdata), so
--- that a decoded array keeps its length and an object keeps the key.
_M.null = cjson.null

-- The mark: a metatable that is the same table for every array, or any
-- metatable with __jsonarray = true (tendril.pg's rows carry their columns
-- through one).
local array_mt = { __name = "tendril.json.array", __jsonarray = true }
_M.array_mt = array_mt

local function marked_mt(mt)
    return mt ~= nil and rawget(mt, "__jsonarray") == true
end

--- Marks t as an array, so that it encodes as `[]` when empty; returns t.
--- A table with a metatable of its own cannot be marked (it raises).
function _M.array(t)
    if t == nil then
        return setmetatable({}, array_mt)
    end
    if type(t) ~= "table" then
        error("json.array: expected a table, got " .. type(t), 2)
    end
    local mt = getmetatable(t)
    if marked_mt(mt) then
        return t
    end
    if mt ~= nil then
        error("json.array: the table has a metatable of its own", 2)
    end
    return setmetatable(t, array_mt)
end

--- True when t carries the array mark.
function _M.is_array(t)
    return type(t) == "table" and marked_mt(getmetatable(t))
end

-- A sentinel string the text does not hold raw. Its first byte is never in
-- UTF-8, so only the same raw bytes could spell it; the counter makes one
-- whatever the text holds. Letters and digits only: it goes into patterns.
local function sentinel(s)
    local i = 0
    while true do
        local sent = "\255" .. char(65 + i % 26) .. (i >= 26 and tostring(i) or "")
        if not find(s, sent, 1, true) then
            return sent
        end
        i = i + 1
    end
end

---------------------------------------------------------------- decode

-- The text with each empty array outside strings replaced by the quoted
-- sentinel, or nil when it has none (a `[]` inside a string only). A byte
-- loop: LuaJIT compiles it, where a find per string costs ten times more.
local function rewrite_empty_arrays(s, sent)
    local parts, n, from = {}, 0, 1
    local quoted = '"' .. sent .. '"'
    local i, len, in_string = 1, #s, false
    while i <= len do
        local b = byte(s, i)
        if in_string then
            if b == 92 then -- \: the next byte is escaped
                i = i + 1
            elseif b == 34 then
                in_string = false
            end
        elseif b == 34 then
            in_string = true
        elseif b == 91 then -- [
            local j = i + 1
            b = byte(s, j)
            while b == 32 or b == 9 or b == 10 or b == 13 do
                j = j + 1
                b = byte(s, j)
            end
            if b == 93 then -- ]
                n = n + 1
                parts[n] = sub(s, from, i - 1)
                n = n + 1
                parts[n] = quoted
                from = j + 1
                i = j
            end
        end
        i = i + 1
    end
    if n == 0 then
        return nil
    end
    parts[n + 1] = sub(s, from)
    return concat(parts)
end

-- Marks the arrays under t (t itself included) and collects the empty
-- tables into `empty`; with a sentinel, turns it into a marked empty table.
-- Returns false when the sentinel stands as an object key, where `[]` was
-- not valid JSON in the first place.
local function mark(t, sent, empty)
    if t[1] ~= nil then
        setmetatable(t, array_mt)
        for i = 1, #t do
            local v = t[i]
            if type(v) == "table" then
                if not mark(v, sent, empty) then
                    return false
                end
            elseif v == sent then
                t[i] = setmetatable({}, array_mt)
            end
        end
    elseif next(t) == nil then
        if empty then
            empty[#empty + 1] = t
        end
    else
        for k, v in pairs(t) do
            if k == sent then
                return false
            end
            if type(v) == "table" then
                if not mark(v, sent, empty) then
                    return false
                end
            elseif v == sent then
                t[k] = setmetatable({}, array_mt)
            end
        end
    end
    return true
end

-- Whether s holds `open`, blanks, then `close_pattern` (outside strings or
-- in). A plain find per `open` then an anchored match: an unanchored
-- pattern makes Lua try a match at every byte of the text.
local function has_empty(s, open, close_pattern)
    local at = find(s, open, 1, true)
    while at do
        if find(s, close_pattern, at + 1) then
            return true
        end
        at = find(s, open, at + 1, true)
    end
    return false
end

-- Decodes s into a value without marks; or nil, err.
local function plain_decode(s)
    local ok, v = pcall(cjson_decode, s)
    if ok then
        return v
    end
    return nil, v
end

--- Decodes a JSON text. Returns the value, or nil and cjson's message
--- naming the position ("Expected value but found T_END at character 4").
--- Arrays come back marked (json.array); null comes back as json.null.
function _M.decode(s)
    if type(s) ~= "string" then
        error("json.decode: expected a string, got " .. type(s), 2)
    end
    if not find(s, "[", 1, true) then
        return plain_decode(s)
    end
    if not has_empty(s, "[", "^[ \t\r\n]*%]") then
        -- No empty array: the non-empty ones are told by their key 1.
        local v, err = plain_decode(s)
        if type(v) == "table" then
            mark(v)
        end
        return v, err
    end
    if not has_empty(s, "{", "^[ \t\r\n]*}") then
        -- No empty object anywhere (not even in a string): every empty
        -- table is an array.
        local v, err = plain_decode(s)
        if type(v) == "table" then
            local empty = {}
            mark(v, nil, empty)
            for i = 1, #empty do
                setmetatable(empty[i], array_mt)
            end
        end
        return v, err
    end
    -- Both: the empty arrays outside strings become the sentinel first.
    local sent = sentinel(s)
    local text = rewrite_empty_arrays(s, sent) or s
    local ok, v = pcall(cjson_decode, text)
    if ok then
        if type(v) == "table" then
            if mark(v, sent) then
                return v
            end
        elseif v ~= sent then
            return v
        else
            return setmetatable({}, array_mt)
        end
    end
    -- The rewritten text moved the positions (or hid an error): the
    -- message comes from the text as given.
    ok, v = pcall(cjson_decode, s)
    if ok then
        -- Unreachable unless the rewrite is wrong; never hand back a
        -- value without its marks.
        error("json.decode: internal error: the text decoded only without its empty arrays", 2)
    end
    return nil, v
end

---------------------------------------------------------------- encode

-- Collects the empty tables under t, marked ones into `marked`, the others
-- into `plain`.
local function find_empty(t, marked, plain)
    if next(t) == nil then
        if marked_mt(getmetatable(t)) then
            marked[#marked + 1] = t
        else
            plain[#plain + 1] = t
        end
        return
    end
    for _, v in pairs(t) do
        if type(v) == "table" then
            find_empty(v, marked, plain)
        end
    end
end

-- s with every `needle` replaced, and their count. Plain finds: gsub's
-- pattern would try a match at every byte.
local function replace(s, needle, by)
    local parts, n, from, len = {}, 0, 1, #needle
    local at = find(s, needle, 1, true)
    while at do
        n = n + 1
        parts[n] = sub(s, from, at - 1)
        from = at + len
        at = find(s, needle, from, true)
    end
    parts[n + 1] = sub(s, from)
    return concat(parts, by), n
end

-- out is cjson's text for v, which holds `{}`: the marked empty tables in
-- it become `[]`.
local function encode_marked(v, out)
    local marked, plain = {}, {}
    find_empty(v, marked, plain)
    if #marked == 0 then
        return out
    end
    if #plain == 0 then
        -- Each empty table gave one `{}`; when the text holds no other
        -- (none in a string), all of them are the marked ones.
        local arrays, count = replace(out, "{}", "[]")
        if count == #marked then
            return arrays
        end
    end
    -- Mixed: each marked one gets a sentinel element for a second call.
    local sent = sentinel(out)
    for i = 1, #marked do
        marked[i][1] = sent
    end
    local ok, again = pcall(cjson_encode, v)
    for i = 1, #marked do
        marked[i][1] = nil
    end
    if not ok then
        return nil, again
    end
    -- The sentinel is not in the first output, and `[` opens the needle
    -- only: every match is one of the arrays put in.
    return replace(again, '["' .. sent .. '"]', "[]")
end

--- Encodes a value as JSON text. Tables with the array mark encode as `[]`
--- when empty; other empty tables as `{}`. A value JSON cannot hold (a
--- function, a userdata other than json.null, NaN or an infinity, a cycle
--- or nesting deeper than 1000, a table key that is not a string or
--- number, an excessively sparse array) raises.
function _M.encode(v)
    local ok, out = pcall(cjson_encode, v)
    if not ok then
        error("json.encode: " .. tostring(out), 2)
    end
    if type(v) == "table" and find(out, "{}", 1, true) then
        local err
        out, err = encode_marked(v, out)
        if not out then
            error("json.encode: " .. tostring(err), 2)
        end
    end
    return out
end

return _M
