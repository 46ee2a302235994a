-- The Lua side of bench/redis_bench.py's parser comparison: tendril.redis
-- (RESP in Lua) sends ROUNDS pipelines of 100 GETs of key "hello" and
-- reads the replies; prints the process's CPU microseconds per reply.
-- usage: tendril run redis_pipe.lua PORT ROUNDS
local redis = require "tendril.redis"
local port, rounds = tonumber(arg[1]), tonumber(arg[2])
local r = assert(redis.connect("redis://127.0.0.1:" .. port))
local function batch()
    return assert(r:pipeline(function(p)
        for _ = 1, 100 do
            p:get("hello")
        end
    end))
end
batch() -- compiled before it is timed
local t0 = os.clock()
for _ = 1, rounds do
    batch()
end
print(string.format("%.3f", (os.clock() - t0) * 1e6 / (rounds * 100)))
