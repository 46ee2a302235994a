-- Misuse raised at the line of the code that called the library:
-- local raise = require "tendril.misuse"
--
-- raise(msg) names the first Lua frame outside tendril's own Lua, however
-- deep the helper that found the misuse and whatever tail calls lie
-- between (a fixed error level points at the wrong line as soon as one
-- call on the way is a tail call). C frames are passed over too: a caller
-- that tail-called the library is gone from the stack, and the line that
-- called it (pcall(function() return r:get(t) end)) is the next best.
local getinfo, error, sub = debug.getinfo, error, string.sub

local PREFIX = "@lua/tendril/"

return function(msg)
    local level = 2
    local info = getinfo(level, "S")
    while info and (info.what == "C" or sub(info.source, 1, #PREFIX) == PREFIX) do
        level = level + 1
        info = getinfo(level, "S")
    end
    error(msg, level)
end
