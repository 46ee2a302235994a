-- Server-Sent Events: local sse = require "tendril.sse"
--
-- local stream = sse.open(req, res [, opts]) answers with an event stream
-- (text/event-stream, not cached) that stays open as long as the handler
-- and the client want: the request deadline no longer applies, and a
-- server shutdown ends the stream (its waits return nil, "closed").
-- stream:send{event =, data =, id =, retry =} and stream:comment(text)
-- return true, or nil, "closed" once the client has left.
local core = require "tendril.core"
local tendril = require "tendril"

local type, error, tostring, setmetatable, floor = type, error, tostring, setmetatable, math.floor
local find, gsub, gmatch = string.find, string.gsub, string.gmatch
local concat = table.concat
local event_new, event_wait, event_set, req_stream = core.event_new, core.event_wait, core.event_set,
    core.req_stream
local req_header, rawget = core.req_header, rawget

local _M = {}

local methods = {}
local mt = { __index = methods }

local function check_field(name, v)
    if v == nil then
        return nil
    end
    local tv = type(v)
    if tv == "number" then
        v = tostring(v)
    elseif tv ~= "string" then
        error("stream:send: " .. name .. " must be a string, got " .. tv, 3)
    end
    if find(v, "[\r\n]") then
        error("stream:send: " .. name .. " must not hold CR or LF", 3)
    end
    return v
end

--- Sends one event: data (a string, split into one "data:" line per line;
--- a number is written as text), event (its type), id (the client sends it
--- back as Last-Event-ID when it reconnects), retry (milliseconds before
--- a reconnection). true, or nil, "closed".
function methods.send(self, ev)
    if type(ev) ~= "table" then
        error("stream:send: expected a table {event =, data =, id =, retry =}, got " .. type(ev), 2)
    end
    local event, id = check_field("event", ev.event), check_field("id", ev.id)
    local retry = ev.retry
    if retry ~= nil and (type(retry) ~= "number" or retry < 0 or retry % 1 ~= 0) then
        error("stream:send: retry must be a whole number of milliseconds, got " .. tostring(retry), 2)
    end
    local data = ev.data
    if data ~= nil and type(data) ~= "string" then
        if type(data) ~= "number" then
            error("stream:send: data must be a string, got " .. type(data), 2)
        end
        data = tostring(data)
    end
    local out, n = {}, 0
    if event then
        n = n + 1
        out[n] = "event: " .. event .. "\n"
    end
    if id then
        n = n + 1
        out[n] = "id: " .. id .. "\n"
    end
    if retry then
        n = n + 1
        out[n] = "retry: " .. floor(retry) .. "\n"
    end
    if data then
        -- Every line of the data (CRLF, CR and LF all end one) gets its own
        -- "data:" line; the client joins them with LF.
        data = gsub(gsub(data, "\r\n", "\n"), "\r", "\n")
        for line in gmatch(data .. "\n", "([^\n]*)\n") do
            n = n + 1
            out[n] = "data: " .. line .. "\n"
        end
    end
    if n == 0 then
        error("stream:send: an event needs data, event, id or retry", 2)
    end
    n = n + 1
    out[n] = "\n"
    return self:_write(concat(out, "", 1, n))
end

--- A comment line (clients ignore it; it keeps proxies from closing an
--- idle stream). true, or nil, "closed".
function methods.comment(self, text)
    text = text == nil and "" or text
    if type(text) ~= "string" then
        error("stream:comment: expected a string, got " .. type(text), 2)
    end
    local lines = {}
    for line in gmatch(gsub(gsub(text, "\r\n", "\n"), "\r", "\n") .. "\n", "([^\n]*)\n") do
        lines[#lines + 1] = ":" .. (line == "" and "" or " " .. line) .. "\n"
    end
    return self:_write(concat(lines) .. "\n")
end

-- The handler returned: the keep-alive thread stops.
function methods._finish(self)
    if self._stop then
        event_set(self._stop)
    end
end

-- After the handler returned the stream is over, as for the client.
function methods._write(self, text)
    local res = self._res
    if res._done then
        return nil, "closed"
    end
    return res:write(text)
end

--- Opens the stream. opts.keepalive: seconds between automatic comments
--- (none by default). Returns the stream, or nil, err when the client left.
function _M.open(req, res, opts)
    if type(req) ~= "table" or type(res) ~= "table" then
        error("sse.open: expected the handler's req and res", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("sse.open: expected an options table, got " .. type(opts), 2)
    end
    local keepalive = opts and opts.keepalive
    if keepalive ~= nil and (type(keepalive) ~= "number" or keepalive <= 0 or keepalive ~= keepalive) then
        error("sse.open: opts.keepalive must be a number of seconds > 0, got " .. tostring(keepalive), 2)
    end
    if res:head_sent() then
        error("sse.open: the response was sent already", 2)
    end
    local draining = req_stream(req[1], req[2])
    res:status(200)
    res:header("Content-Type", "text/event-stream")
    res:header("Cache-Control", "no-cache")
    res:header("X-Accel-Buffering", "no") -- proxies: pass events on at once
    local ok, err = res:write("")
    if not ok then
        return nil, err
    end
    -- One header, without the table of them all (a stream lives long).
    local h = rawget(req, "headers")
    local last_id
    if h then
        last_id = h["last-event-id"]
    else
        last_id = req_header(req[1], req[2], "last-event-id")
    end
    local stream = setmetatable({ _res = res, last_id = last_id }, mt)
    if draining then
        -- Opened after the shutdown began: it ends at once (its sends
        -- return nil, "closed").
        res:finish()
        return stream
    end
    if keepalive then
        -- A thread of the request: it ends with the handler (the driver
        -- calls res._after:_finish()) or when the client leaves.
        local stop = event_new()
        stream._stop = stop
        res._after = stream
        tendril.spawn(function()
            while true do
                local stopped, why = event_wait(stop, keepalive)
                if stopped or why ~= "timeout" or not stream:comment() then
                    return
                end
            end
        end)
    end
    return stream
end

return _M
