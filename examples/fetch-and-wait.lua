-- The classic comparison's handler, in straight-line code: write "hello ",
-- fetch a page from an upstream, wait two seconds, then finish with the
-- upstream response's Location header. Every wait suspends only this
-- request's coroutine.
--
--   UPSTREAM=http://127.0.0.1:9000/ ./scripts/serve examples/fetch-and-wait.lua
local tendril = require "tendril"
local http = require "tendril.http"

local upstream = os.getenv("UPSTREAM") or "http://127.0.0.1:9000/"

return function(req, res)
    res:write("hello ")
    local answer, err = http.get(upstream)
    tendril.sleep(2)
    if not answer then
        return res:finish("(upstream failed: " .. err .. ")\n")
    end
    res:finish((answer.headers.location or "(no location)") .. "\n")
end
