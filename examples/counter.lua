-- A visit counter shared by every worker:
--   tendril serve examples/counter.lua --workers auto --shared counters=1m
local tendril = require "tendril"
local shared = require "tendril.shared"

local hits = shared.dict("counters")

return function(req, res)
    res:header("Content-Type", "text/plain")
    local n = hits:incr("visits", 1, 0)
    return string.format("visit %d, served by worker %d of %d\n", n, tendril.worker_id(), tendril.worker_count())
end
