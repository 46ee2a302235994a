-- A bounded queue that a task waits on: what a bus subscription and a
-- shared-dictionary watch hold. local mailbox = require "tendril.mailbox"
--
-- box:put(v) adds at the end and wakes the waiter (false when full);
-- box:take() the oldest (nil when empty); box:wait([timeout]) waits for
-- the next put or wake (true, or nil, "timeout"). The owner decides what
-- full means (bus drops the subscriber, a watch reports "overflow").
local core = require "tendril.core"

local type, error, tostring, setmetatable = type, error, tostring, setmetatable
local event_new, event_wait, event_set = core.event_new, core.event_wait, core.event_set

local _M = {}

local methods = {}
local mt = { __index = methods }

--- A mailbox of at most max items.
function _M.new(max)
    return setmetatable({ q = {}, head = 1, tail = 0, max = max }, mt)
end

--- Checks the max_queue option of a subscription (fname names the caller's
--- function): the default when opts has none; raises at the caller's caller.
function _M.check_max(fname, opts, default)
    if opts ~= nil and type(opts) ~= "table" then
        error(fname .. ": expected an options table, got " .. type(opts), 3)
    end
    local max = opts and opts.max_queue or default
    if type(max) ~= "number" or max < 1 or max % 1 ~= 0 then
        error(fname .. ": opts.max_queue must be a whole number >= 1, got " .. tostring(max), 3)
    end
    return max
end

--- Checks a recv timeout (nil: none), raising at the caller's caller.
function _M.check_timeout(fname, timeout)
    if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0 or timeout ~= timeout) then
        error(fname .. ": a timeout is a number of seconds >= 0, got " .. tostring(timeout), 3)
    end
end

--- Wakes the task waiting, if any.
function methods.wake(self)
    local ev = self.ev
    if ev then
        self.ev = nil
        event_set(ev)
    end
end

--- Adds v (not nil) and wakes the waiter; false, and nothing added, when
--- the mailbox holds max items.
function methods.put(self, v)
    local tail = self.tail + 1
    if tail - self.head >= self.max then
        return false
    end
    self.tail = tail
    self.q[tail] = v
    self:wake()
    return true
end

--- The oldest item, or nil when empty.
function methods.take(self)
    local head = self.head
    if head > self.tail then
        return nil
    end
    local q = self.q
    local v = q[head]
    q[head] = nil
    if head == self.tail then
        self.head, self.tail = 1, 0 -- empty: the array starts again
    else
        self.head = head + 1
    end
    return v
end

--- Drops every item.
function methods.clear(self)
    self.q, self.head, self.tail = {}, 1, 0
end

--- Waits for the next put or wake: true, or nil, err ("timeout" after
--- timeout seconds; none: as long as it takes).
function methods.wait(self, timeout)
    local ev = self.ev
    if not ev then
        ev = event_new()
        self.ev = ev
    end
    return event_wait(ev, timeout)
end

return _M
