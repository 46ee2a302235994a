-- A ticking clock as Server-Sent Events: one event a second.
--
--   tendril serve examples/clock-sse.lua
--   curl -N http://127.0.0.1:8080/
--
-- A browser's EventSource reconnects by itself after a break and sends the
-- last id it saw (Last-Event-ID): the clock goes on counting from there.
local tendril = require "tendril"
local sse = require "tendril.sse"

return function(req, res)
    local stream = sse.open(req, res)
    if not stream then
        return
    end
    local n = tonumber(stream.last_id) or 0
    stream:send{ retry = 2000 }
    while true do
        n = n + 1
        if not stream:send{ event = "tick", id = n, data = os.date("!%Y-%m-%dT%H:%M:%SZ") } then
            return -- the client left
        end
        tendril.sleep(1)
    end
end
