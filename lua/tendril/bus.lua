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
local owned = require "tendril.owned"
local mailbox = require "tendril.mailbox"

local type, error, setmetatable, next, pairs = type, error, setmetatable, next, pairs

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
    leave(sub)
    sub.box:clear()
    sub.box:wake()
end

--- Publishes message (any Lua value) to topic. Returns the number of
--- subscribers it reached.
function _M.publish(topic, message)
    check_topic("bus.publish", topic)
    if message == nil then
        error("bus.publish: a message cannot be nil", 2)
    end
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
