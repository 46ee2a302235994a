-- The app tendril serves in scripts/bench: the same endpoints as the peers.
-- /proxy makes one keep-alive GET to http://127.0.0.1:$UPSTREAM_PORT/; /proxy-tls one to
-- https://127.0.0.1:$UPSTREAM_TLS_PORT/, verified against the bench certificate
-- ($CERT_DIR/cert.pem, made by bench/peers/make-cert.sh).
local tendril = require "tendril"
local http = require "tendril.http"

local upstream = "http://127.0.0.1:" .. (os.getenv("UPSTREAM_PORT") or "1") .. "/"
local upstream_tls = "https://127.0.0.1:" .. (os.getenv("UPSTREAM_TLS_PORT") or "1") .. "/"
local tls_opts = {ca_file = (os.getenv("CERT_DIR") or "/tmp/tendril-bench-cert") .. "/cert.pem"}
local big = string.rep("x", 65536) -- /big: for slow readers (bench/slowloris.py)
-- /incr: one increment of a shared counter (--shared counters=SIZE, as start.sh gives it)
local counters = require("tendril.shared").dict("counters")

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
    elseif p == "/proxy-tls" then
        local res, err = http.get(upstream_tls, tls_opts)
        if not res then
            return 502, nil, err
        end
        return res.body
    elseif p == "/big" then
        return big
    elseif p == "/incr" then
        return counters:incr("hits", 1, 0) .. "\n"
    end
    return "Hello World\n"
end
