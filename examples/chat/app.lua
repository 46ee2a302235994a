-- A chat room: a page, a WebSocket per visitor and the bus between them.
--
--   tendril serve examples/chat/app.lua     then open http://127.0.0.1:8080/
--
-- GET /        the page (index.html, next to this file)
-- GET /ws      the WebSocket: each text message is published to the room,
--              and every message of the room comes back to every visitor
-- GET /events  the same room as Server-Sent Events (a read-only feed),
--              starting with the last messages
local tendril = require "tendril"
local websocket = require "tendril.websocket"
local sse = require "tendril.sse"
local bus = require "tendril.bus"

local ROOM = "chat"
local HISTORY = 20

-- What the room said last, kept across reloads (tendril.keep): a visitor
-- who arrives sees the conversation so far.
local history = tendril.keep("chat.history", function()
    return { n = 0 }
end)

local function say(text)
    history.n = history.n + 1
    history[history.n] = text
    history[history.n - HISTORY] = nil
    bus.publish(ROOM, text)
end

local page do
    local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
    local f = assert(io.open(dir .. "/index.html", "rb"))
    page = f:read("*a")
    f:close()
end

local function chat(req, res)
    local ws, err = websocket.upgrade(req, res, { compress = true, max_message_bytes = 4096 })
    if not ws then
        tendril.log("info", "chat: no WebSocket: " .. err)
        return
    end
    local sub = bus.subscribe(ROOM)
    -- The room to the visitor, in a thread of this handler: it ends with
    -- the WebSocket (its recv returns nil, "closed").
    tendril.spawn(function()
        while true do
            local text = sub:recv()
            if not text or not ws:send(text) then
                return
            end
        end
    end)
    -- The visitor to the room.
    while true do
        local text, kind = ws:recv()
        if not text then
            break
        end
        if kind == "text" and text ~= "" then
            say(text)
        end
    end
    sub:close()
end

local function feed(req, res)
    local stream = sse.open(req, res, { keepalive = 15 })
    if not stream then
        return
    end
    local sub = bus.subscribe(ROOM)
    for i = math.max(1, history.n - HISTORY + 1), history.n do
        stream:send{ data = history[i], id = i }
    end
    while true do
        local text = sub:recv()
        if not text or not stream:send{ data = text, id = history.n } then
            break
        end
    end
    sub:close()
end

return function(req, res)
    if req.path == "/" then
        return 200, { ["Content-Type"] = "text/html; charset=utf-8" }, page
    elseif req.path == "/ws" then
        return chat(req, res)
    elseif req.path == "/events" then
        return feed(req, res)
    end
    return 404, {}, "not found\n"
end
