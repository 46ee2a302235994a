-- The app tendril serves in scripts/bench: the same endpoints as the peers.
-- /proxy makes one keep-alive GET to http://127.0.0.1:$UPSTREAM_PORT/.
local tendril = require "tendril"
local http = require "tendril.http"

local upstream = "http://127.0.0.1:" .. (os.getenv("UPSTREAM_PORT") or "1") .. "/"
local big = string.rep("x", 65536) -- /big: for slow readers (bench/slowloris.py)

return function(req)
    local p = req.path
    if p == "/sleep1ms" then
        tendril.sleep(0.001)
    elseif p == "/sleep" then
        tendril.sleep(1)
    elseif p == "/proxy" then
        local res, err = http.get(upstream)
        if not res then
            return 502, nil, err
        end
        return res.body
    elseif p == "/big" then
        return big
    end
    return "Hello World\n"
end
