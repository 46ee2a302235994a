-- What the runtime specs share.
local tendril = require "tendril"

local _M = {}

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

--- Polls f (every interval seconds, 0.02 by default) until it returns a
--- true value, for up to seconds: whether it did.
function _M.wait_until(f, seconds, interval)
    local t0 = tendril.now()
    while tendril.now() - t0 < seconds do
        if f() then
            return true
        end
        tendril.sleep(interval or 0.02)
    end
    return false
end

--- The handler of the README's first ```lua block that holds marker (a
--- plain string), loaded with the text `from` replaced by `to` (once: a
--- server's address, say).
function _M.readme_handler(marker, from, to)
    local f = assert(io.open(here .. "/../../../README.md"))
    local text = f:read("*a")
    f:close()
    for code in text:gmatch("```lua\n(.-)```") do
        if code:find(marker, 1, true) then
            local start, stop = code:find(from, 1, true)
            assert(start, "the README's block has no " .. from)
            code = code:sub(1, start - 1) .. to .. code:sub(stop + 1)
            return assert(loadstring(code, "=README"))()
        end
    end
    error("no README block holds " .. marker)
end

return _M
