-- The chat of examples/chat, for several instances behind a load balancer:
-- the bus bridged through Redis (a message said on one instance reaches the
-- visitors of all), the room's history, a visit counter and sessions in
-- Redis, so no instance holds state the others need.
--
--   redis-server &
--   REDIS_URL=redis://127.0.0.1:6379 INSTANCE=a tendril serve examples/scale-out/app.lua --port 8081 --workers 2
--   REDIS_URL=redis://127.0.0.1:6379 INSTANCE=b tendril serve examples/scale-out/app.lua --port 8082 --workers 2
--   haproxy -f examples/scale-out/haproxy.cfg       (port 8080, health checks on /health)
--
-- GET /         the chat page (examples/chat/index.html)
-- GET /health   "ok": what the load balancer checks
-- GET /count    one more visit, counted in Redis: "visit N (instance a)"
-- GET /session  this visitor's visits, a session in Redis behind a cookie
--               (whichever instance answers): "session visit N (instance a)"
-- GET /history  the room's last messages, one a line
-- GET /ws       the room as a WebSocket: each text message goes to everyone
local tendril = require "tendril"
local websocket = require "tendril.websocket"
local bus = require "tendril.bus"
local redis = require "tendril.redis"

local REDIS = os.getenv("REDIS_URL") or "redis://127.0.0.1:6379"
local INSTANCE = os.getenv("INSTANCE") or "?"
local ROOM, HISTORY = "chat", 20
local SESSION_SECONDS = 24 * 3600

-- The page is examples/chat's: it speaks to /ws on the host it came from.
local page do
    local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
    local f = assert(io.open(dir .. "/../chat/index.html", "rb"))
    page = f:read("*a")
    f:close()
end

-- A session id nobody can guess: 16 random bytes, as hex.
local function new_session_id()
    local f = assert(io.open("/dev/urandom", "rb"))
    local bytes = f:read(16)
    f:close()
    return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

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

-- This visitor's session (a hash in Redis that expires a day after the
-- last visit), made on the first: its visit count, or nil, err.
local function session_visit(req, res, r)
    local id = req.cookies.sid
    if not id or not id:match("^%x+$") or #id ~= 32 then
        id = new_session_id()
        res:cookie("sid", id, { path = "/", http_only = true, max_age = SESSION_SECONDS })
    end
    local key = "session:" .. id
    local replies, err = r:pipeline(function(p)
        p:hincrby(key, "visits", 1)
        p:expire(key, SESSION_SECONDS)
    end)
    if not replies then
        return nil, err
    end
    if type(replies[1]) ~= "number" then
        return nil, replies[1][2]
    end
    return replies[1]
end

return function(req, res)
    local p = req.path
    if p == "/" then
        res:header("Content-Type", "text/html; charset=utf-8")
        return page
    elseif p == "/health" then
        return "ok\n"
    elseif p == "/count" then
        local r, err = redis.connect(REDIS)
        local n
        if r then
            n, err = r:incr("visits")
        end
        if not n then
            return 503, nil, "redis: " .. tostring(err) .. "\n"
        end
        return string.format("visit %d (instance %s)\n", n, INSTANCE)
    elseif p == "/session" then
        local r, err = redis.connect(REDIS)
        local n
        if r then
            n, err = session_visit(req, res, r)
        end
        if not n then
            return 503, nil, "redis: " .. tostring(err) .. "\n"
        end
        return string.format("session visit %d (instance %s)\n", n, INSTANCE)
    elseif p == "/history" then
        local r, err = redis.connect(REDIS)
        local lines
        if r then
            lines, err = r:lrange("chat:history", 0, -1)
        end
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
