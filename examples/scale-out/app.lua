-- The chat of examples/chat, for several instances behind a load balancer:
-- the bus bridged through Redis (a message said on one instance reaches the
-- visitors of all), the room's history and a visit counter in Redis, so no
-- instance holds state the others need.
--
--   redis-server &
--   REDIS_URL=redis://127.0.0.1:6379 INSTANCE=a tendril serve examples/scale-out/app.lua --port 8081 --workers 2
--   REDIS_URL=redis://127.0.0.1:6379 INSTANCE=b tendril serve examples/scale-out/app.lua --port 8082 --workers 2
--   haproxy -f examples/scale-out/haproxy.cfg       (port 8080, health checks on /health)
--
-- GET /health   "ok": what the load balancer checks
-- GET /count    one more visit, counted in Redis: "visit N (instance a)"
-- GET /history  the room's last messages, one a line
-- GET /ws       the room as a WebSocket: each text message goes to everyone
local tendril = require "tendril"
local websocket = require "tendril.websocket"
local bus = require "tendril.bus"
local redis = require "tendril.redis"

local REDIS = os.getenv("REDIS_URL") or "redis://127.0.0.1:6379"
local INSTANCE = os.getenv("INSTANCE") or "?"
local ROOM, HISTORY = "chat", 20

-- Every worker of every instance joins the one bus (a reload keeps it).
assert(bus.bridge(REDIS))

local function say(text)
    local r = redis.connect(REDIS)
    if r then
        r:pipeline(function(p)
            p:lpush("chat:history", text)
            p:ltrim("chat:history", 0, HISTORY - 1)
        end)
    end
    bus.publish(ROOM, text)
end

local function chat(req, res)
    local ws, err = websocket.upgrade(req, res, { max_message_bytes = 4096 })
    if not ws then
        tendril.log("info", "chat: no WebSocket: " .. err)
        return
    end
    local sub = bus.subscribe(ROOM)
    tendril.spawn(function()
        while true do
            local text = sub:recv()
            if not text or not ws:send(text) then
                return
            end
        end
    end)
    while true do
        local text, kind = ws:recv()
        if not text then
            break
        end
        if kind == "text" then
            say(text)
        end
    end
    sub:close()
end

return function(req, res)
    local p = req.path
    if p == "/health" then
        return "ok\n"
    elseif p == "/count" then
        local r, err = redis.connect(REDIS)
        local n = r and r:incr("visits")
        if not n then
            return 503, nil, "redis: " .. tostring(err) .. "\n"
        end
        return string.format("visit %d (instance %s)\n", n, INSTANCE)
    elseif p == "/history" then
        local r, err = redis.connect(REDIS)
        local lines = r and r:lrange("chat:history", 0, -1)
        if not lines then
            return 503, nil, "redis: " .. tostring(err) .. "\n"
        end
        local out = {}
        for i = #lines, 1, -1 do
            out[#out + 1] = lines[i]
        end
        return table.concat(out, "\n") .. (#out > 0 and "\n" or "")
    elseif p == "/ws" then
        return chat(req, res)
    end
    return 404, nil, "not found\n"
end
