-- The app tendril serves in scripts/bench: the same endpoints as the peers.
local tendril = require "tendril"

return function(req)
    local p = req.path
    if p == "/sleep1ms" then
        tendril.sleep(0.001)
    elseif p == "/sleep" then
        tendril.sleep(1)
    end
    return "Hello World\n"
end
