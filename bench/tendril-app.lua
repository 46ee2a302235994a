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
-- /echo-json: a JSON body decoded and encoded back (bench/json_echo.py) with tendril.json; /echo-cjson
-- the same with cjson alone (no array marks), to show what the marks cost.
require "tendril.json" -- loaded at start, not by the first request
local cjson = require "cjson"
-- /redis: one GET of key "hello" from $REDIS_URL (bench/redis.py), as node-redis's /redis;
-- /redis-pipe: a pipeline of 100 GETs of it.
local redis = require "tendril.redis"
local redis_url = os.getenv("REDIS_URL") or "redis://127.0.0.1:6379"
-- /pg: one primary-key SELECT (SELECT v FROM kv WHERE k = $1, k = 1) from $PG_URL (bench/pg_bench.py),
-- as node-pg's /pg; a pool of 16, as node-pg has.
local pg = require "tendril.pg"
local pg_url = os.getenv("PG_URL") or "postgres://127.0.0.1/postgres"

return function(req, res)
    local p = req.path
    if p == "/sleep1ms" then
        tendril.sleep(0.001)
    elseif p == "/sleep" then
        tendril.sleep(1)
    elseif p == "/proxy" then
        local answer, err = http.get(upstream)
        if not answer then
            return 502, nil, err
        end
        return answer.body
    elseif p == "/proxy-tls" then
        local answer, err = http.get(upstream_tls, tls_opts)
        if not answer then
            return 502, nil, err
        end
        return answer.body
    elseif p == "/redis" then
        local r, err = redis.connect(redis_url)
        local v
        if r then
            v, err = r:get("hello")
        end
        if v == nil then
            return 502, nil, tostring(err)
        end
        return v .. "\n"
    elseif p == "/redis-pipe" then
        local r, err = redis.connect(redis_url)
        local replies
        if r then
            replies, err = r:pipeline(function(pipe)
                for _ = 1, 100 do
                    pipe:get("hello")
                end
            end)
        end
        if not replies then
            return 502, nil, tostring(err)
        end
        return #replies .. " " .. replies[100] .. "\n"
    elseif p == "/pg" then
        local db, err = pg.connect(pg_url)
        local rows
        if db then
            rows, err = db:query("SELECT v FROM kv WHERE k = $1", 1)
            db:release()
        end
        if not rows then
            return 502, nil, tostring(err)
        end
        return tostring(rows[1] and rows[1].v) .. "\n"
    elseif p == "/big" then
        return big
    elseif p == "/incr" then
        return counters:incr("hits", 1, 0) .. "\n"
    elseif p == "/echo-json" then
        local v, err = req:json()
        if v == nil then
            return 400, nil, err
        end
        return res:json(v)
    elseif p == "/echo-cjson" then
        local body, err = req:body()
        if not body then
            return 400, nil, err
        end
        local ok, v = pcall(cjson.decode, body)
        if not ok then
            return 400, nil, v
        end
        res:header("Content-Type", "application/json")
        res:finish(cjson.encode(v))
        return
    end
    return "Hello World\n"
end
