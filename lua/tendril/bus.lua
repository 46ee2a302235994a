-- Publish/subscribe inside the process: local bus = require "tendril.bus"
--
-- bus.publish(topic, message) hands the message to every subscriber of the
-- topic and returns how many it reached; bus.subscribe(topic) returns a
-- subscription whose recv waits for the next one. The bus is runtime state,
-- outside the code generations: a subscription made by the code before a
-- reload still gets what the new code publishes.
--
-- Memory is bounded per subscriber: one that falls more than max_queue
-- messages behind (default 1000) is dropped, and its recv says "overflow".
-- A subscription ends with sub:close(), or when the handler or thread that
-- made it returns (tendril.owned); one made outside any task (at a
-- module's top level) is collected when nobody holds it (the topics hold
-- them weakly).
--
-- bus.bridge(redis_url) joins the buses of several instances (processes,
-- machines) through Redis pub/sub (below).
local core = require "tendril.core"
local tendril = require "tendril"
local owned = require "tendril.owned"
local mailbox = require "tendril.mailbox"

local type, error, setmetatable, next, pairs, pcall = type, error, setmetatable, next, pairs, pcall
local format, match, strsub = string.format, string.match, string.sub
local spawn_daemon = core.spawn_daemon

local DEFAULT_MAX_QUEUE = 1000

local _M = {}

local topics = {} -- topic -> { [subscription] = true }, weak keys
local weak_keys = { __mode = "k" }

local sub_methods = {}
local sub_mt = { __index = sub_methods }

local function check_topic(fname, topic)
    if type(topic) ~= "string" then
        error(fname .. ": a topic is a string, got " .. type(topic), 3)
    end
end

local function leave(sub)
    local subs = topics[sub.topic]
    if subs then
        subs[sub] = nil
        if next(subs) == nil then
            topics[sub.topic] = nil
        end
    end
end

-- Ends a subscription: its waiter (if any) wakes and sees why.
local function finish(sub, why)
    if sub.ended then
        return
    end
    sub.ended = why
    owned.remove(sub)
    leave(sub)
    sub.box:clear()
    sub.box:wake()
end

-- To this process's subscribers: how many it reached.
local function deliver(topic, message)
    local subs = topics[topic]
    if not subs then
        return 0
    end
    local n = 0
    for sub in pairs(subs) do
        if sub.box:put(message) then
            n = n + 1
        else
            finish(sub, "overflow")
        end
    end
    return n
end

-- ---- across instances: bus.bridge ----

local bridges = {} -- "url|prefix" -> bridge

-- This process's name on every bridge (a worker is one process): what
-- comes back with it was published here, through whichever bridge.
local process_id

local function instance_id()
    if not process_id then
        local f = io.open("/dev/urandom", "rb")
        local bytes = f and f:read(8)
        if f then
            f:close()
        end
        bytes = bytes or (tostring(os.time()) .. tostring({}))
        process_id = bytes:gsub(".", function(c) return format("%02x", c:byte()) end)
    end
    return process_id
end

-- The bridge's two tasks are runtime services (core.spawn_daemon): at the
-- shutdown (or once a `tendril run` script is done) every wait of theirs
-- fails with "closed", and they end.

-- The publisher: sends what local publishes queued, in pipelines. At most
-- once: a batch that fails is lost (counted), and it tries again a second
-- later.
local function send_out(b)
    local redis = require "tendril.redis"
    local r
    while true do
        local batch, n = {}, 0
        while n < 1000 do
            local item = b.box:take()
            if item == nil then
                break
            end
            n = n + 1
            batch[n] = item
        end
        if n == 0 then
            if not b.box:wait() then
                break -- the shutdown
            end
        else
            local err
            if not r then
                r, err = redis.connect(b.url)
            end
            local replies
            if r then
                replies, err = r:pipeline(function(p)
                    for i = 1, n do
                        p:publish(batch[i][1], batch[i][2])
                    end
                end)
            end
            if not replies then
                b.lost = b.lost + n
                b.error = err or "closed"
                if r then
                    r:close()
                end
                r = nil
                if not tendril.sleep(1) then
                    break
                end
            else
                for i = 1, n do
                    local v = replies[i]
                    if type(v) == "table" and v[1] == false then
                        -- An error reply (out of memory, a read-only replica).
                        b.lost, b.error = b.lost + 1, v[2]
                    else
                        b.sent = b.sent + 1
                    end
                end
            end
        end
    end
    if r then
        r:close()
    end
end

-- The listener: every instance's messages but this one's, to the local
-- subscribers. It reconnects a second after a failure. After ping_every
-- seconds without a message it pings Redis; a ping unanswered as long
-- again means the connection is dead (a silent network partition).
local function listen(b)
    local redis = require "tendril.redis"
    local json = require "tendril.json"
    local skip = #b.prefix + 1
    while true do
        local r, err = redis.connect(b.url)
        local ok
        if r then
            ok, err = r:psubscribe(b.prefix .. "*")
        end
        if ok then
            b.listening, b.error = true, nil
            local pinged = false
            while true do
                local m
                m, err = r:recv(b.ping_every)
                if m then
                    pinged = false
                    if m[1] == "pmessage" then
                        local id, body = match(m[4] or "", "^(%x+) (.*)$")
                        if id and id ~= b.id then
                            local ok_json, v = pcall(json.decode, body)
                            if ok_json and v ~= nil then
                                b.received = b.received + 1
                                deliver(strsub(m[3], skip), v)
                            end
                        end
                    end
                elseif err == "timeout" and not pinged then
                    pinged = true
                    ok, err = r:ping()
                    if not ok then
                        break
                    end
                else
                    if err == "timeout" then
                        err = "no answer to a ping"
                    end
                    break -- closed (or the shutdown)
                end
            end
            b.listening = false
        end
        b.error = err
        if r then
            r:close()
        end
        if not tendril.sleep(1) then
            break
        end
    end
end

--- Bridges the bus through Redis pub/sub (url as tendril.redis takes it):
--- what is published here reaches the subscribers of every instance
--- bridged to the same Redis, and what they publish reaches this one's;
--- local subscribers get a message once (it does not come back). Messages
--- cross as JSON: strings, numbers, booleans and tables of them (other
--- values stay local). Calling it again with the same URL keeps the one
--- bridge (a reload re-runs the app's top level). opts.prefix: the Redis
--- channels' (default "tendril:bus:"); opts.max_queue: messages waiting to
--- go out before new ones are dropped (default 10000); opts.ping_every:
--- seconds without a message before the listener pings Redis, and as long
--- again for the answer before it reconnects (default 15). Returns the
--- bridge ({ id =, sent =, received =, lost =, dropped =, listening =,
--- error = }), or nil, err when Redis cannot be reached. Its tasks end at
--- the shutdown.
function _M.bridge(url, opts)
    if type(url) ~= "string" then
        error("bus.bridge: expected a redis:// URL, got " .. type(url), 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("bus.bridge: expected an options table, got " .. type(opts), 2)
    end
    local prefix = opts and opts.prefix or "tendril:bus:"
    if type(prefix) ~= "string" then
        error("bus.bridge: opts.prefix must be a string, got " .. type(prefix), 2)
    end
    local key = url .. "|" .. prefix
    local b = bridges[key]
    if b then
        return b
    end
    local max = mailbox.check_max("bus.bridge", opts and { max_queue = opts.max_queue }, 10000)
    local ping_every = opts and opts.ping_every or 15
    if type(ping_every) ~= "number" or ping_every ~= ping_every or ping_every <= 0 then
        error("bus.bridge: opts.ping_every must be a number of seconds > 0, got " .. tostring(ping_every), 2)
    end
    local redis = require "tendril.redis"
    local r, err = redis.connect(url)
    if not r then
        return nil, err
    end
    r:release()
    b = { url = url, prefix = prefix, id = instance_id(), box = mailbox.new(max), sent = 0, received = 0,
        lost = 0, dropped = 0, listening = false, ping_every = ping_every }
    bridges[key] = b
    -- Runtime tasks, outside the generations (no code of the app runs in
    -- them) and outside any request.
    spawn_daemon(send_out, b)
    spawn_daemon(listen, b)
    return b
end

-- A local publish, out to the bridges.
local function forward(topic, message)
    local json
    for _, b in pairs(bridges) do
        json = json or require "tendril.json"
        local ok, text = pcall(json.encode, message)
        if ok and not b.box:put({ b.prefix .. topic, b.id .. " " .. text }) then
            b.dropped = b.dropped + 1
        end
    end
end

--- Publishes message (any Lua value) to topic. Returns the number of
--- this process's subscribers it reached (a bridge takes it to the other
--- instances' after).
function _M.publish(topic, message)
    check_topic("bus.publish", topic)
    if message == nil then
        error("bus.publish: a message cannot be nil", 2)
    end
    if next(bridges) then
        forward(topic, message)
    end
    return deliver(topic, message)
end

--- Subscribes to topic. opts.max_queue: messages it may fall behind before
--- it is dropped (default 1000).
function _M.subscribe(topic, opts)
    check_topic("bus.subscribe", topic)
    local max = mailbox.check_max("bus.subscribe", opts, DEFAULT_MAX_QUEUE)
    local sub = setmetatable({ topic = topic, box = mailbox.new(max) }, sub_mt)
    local subs = topics[topic]
    if not subs then
        subs = setmetatable({}, weak_keys)
        topics[topic] = subs
    end
    subs[sub] = true
    -- It ends with the handler or thread that made it.
    owned.add(sub)
    return sub
end

--- The next message; nil, "timeout" after timeout seconds (none: waits as
--- long as it takes); nil, "closed" after sub:close(); nil, "overflow" once
--- it fell max_queue messages behind.
function sub_methods.recv(self, timeout)
    mailbox.check_timeout("sub:recv", timeout)
    local box = self.box
    while true do
        if self.ended then
            return nil, self.ended
        end
        local m = box:take()
        if m ~= nil then
            return m
        end
        local ok, err = box:wait(timeout)
        if not ok then
            return nil, err
        end
    end
end

--- Ends the subscription: nothing more comes; a recv waiting returns nil,
--- "closed".
function sub_methods.close(self)
    finish(self, "closed")
    return true
end

--- Subscribers of topic now.
function _M.count(topic)
    check_topic("bus.count", topic)
    local n = 0
    for _ in pairs(topics[topic] or {}) do
        n = n + 1
    end
    return n
end

return _M
