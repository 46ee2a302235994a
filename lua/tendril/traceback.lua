-- Tracebacks that stop at the script: the runtime's own frames below the
-- protected call (xpcall, the driver) say nothing about the script.
local traceback, find, sub, type, tostring = debug.traceback, string.find, string.sub, type, tostring
local getmetatable = debug.getmetatable

local _M = {}

--- For xpcall: the message with a traceback from the failing frame up to
--- the function xpcall ran.
function _M.handler(err)
    local t = type(err)
    if t == "number" or (t ~= "string" and getmetatable(err) and getmetatable(err).__tostring) then
        err = tostring(err)
    elseif t ~= "string" then
        err = "(error object is a " .. t .. " value)"
    end
    local tb = traceback(err, 2)
    local cut = find(tb, "\n%s*%[C%]: in function 'xpcall'")
    if cut then
        tb = sub(tb, 1, cut - 1)
    end
    return tb
end

return _M
