-- The app tendril serves in bench/ws.py: the same endpoints as Node's ws peer
-- (bench/peers/servers/node-ws.js). /echo sends every message back with its
-- kind; /broadcast sends each message to every client of /broadcast (through
-- the bus: a thread per connection forwards what is published). Any other
-- path answers "Hello World\n" (the readiness check).
local tendril = require "tendril"
local websocket = require "tendril.websocket"
local bus = require "tendril.bus"

local function echo(ws)
    while true do
        local data, kind = ws:recv()
        if not data then
            return
        end
        ws:send(data, kind)
    end
end

local function broadcast(ws)
    local sub = bus.subscribe("room")
    tendril.spawn(function()
        while true do
            local m = sub:recv()
            if not m or not ws:send(m[1], m[2]) then
                return
            end
        end
    end)
    while true do
        local data, kind = ws:recv()
        if not data then
            break
        end
        bus.publish("room", { data, kind })
    end
    sub:close()
end

return function(req, res)
    local p = req.path
    if p == "/echo" or p == "/broadcast" then
        local ws = websocket.upgrade(req, res)
        if ws then
            (p == "/echo" and echo or broadcast)(ws)
        end
        return
    end
    return "Hello World\n"
end
