-- Values as the database clients send them: local wire = require "tendril.wire"
--
-- wire.number(v): the text of a number that reads back as the same number,
-- the shortest such: integers whole (2^60 as 1152921504606846976, not
-- 1.1529215046068e+18), 19.99 as "19.99" (not "19.989999999999998", which
-- a numeric column or INCRBYFLOAT would keep). NaN and infinities as
-- "NaN", "Infinity", "-Infinity" (PostgreSQL's spelling; Redis takes "inf").
local format, tonumber = string.format, tonumber
local huge = math.huge

local _M = {}

function _M.number(v)
    if v % 1 == 0 and v > -2 ^ 63 and v < 2 ^ 63 then
        return format("%d", v)
    elseif v ~= v then
        return "NaN"
    elseif v == huge then
        return "Infinity"
    elseif v == -huge then
        return "-Infinity"
    end
    for digits = 15, 16 do
        local s = format("%." .. digits .. "g", v)
        if tonumber(s) == v then
            return s
        end
    end
    return format("%.17g", v)
end

return _M
