-- Dictionaries shared by every worker: local shared = require "tendril.shared"
--
-- shared.dict(name) returns the dictionary declared with --shared NAME=SIZE
-- (it works with one worker too). Its methods run in C (api_shared.c):
-- get, set, add, replace, incr, delete, ttl, keys, flush_all, stats.
--
-- d:watch(prefix) returns a subscription whose recv([timeout]) returns the
-- next key under prefix that changed, in any worker. A subscription holds
-- at most max_queue keys (default 1000); past that, recv says "overflow"
-- once (keys were lost: read again what matters) and goes on. It ends with
-- sub:close(), or with the handler or thread that made it (tendril.owned).
-- One task per process (the pump) reads the changes and hands them out.
local core = require "tendril.core"
local owned = require "tendril.owned"
local mailbox = require "tendril.mailbox"

local type, error, setmetatable, next, pairs = type, error, setmetatable, next, pairs
local sub_find = string.find
local shared_watch, shared_wait, shared_changes = core.shared_watch, core.shared_wait, core.shared_changes

local DEFAULT_MAX_QUEUE = 1000
-- In a subscription's mailbox: changes were lost here (the worker read the
-- dictionary's ring too late); recv says "overflow" in its place.
local LOST = {}

local _M = {}

-- dictionary name -> { [subscription] = true }
local watchers = {}
local pump_running = false

local sub_methods = {}
local sub_mt = { __index = sub_methods }

local function deliver(sub, key)
    local box = sub.box
    -- Keys were dropped while the mailbox was full: that comes first.
    if sub.lost and box:put(LOST) then
        sub.lost = nil
    end
    if sub.lost or not box:put(key) then
        sub.lost = true
        box:wake()
    end
end

-- The pump: waits for the eventfd, reads the changes, hands them out. It
-- ends when no watch is left (a watch made meanwhile keeps it going: it
-- saw the pump running), or at shutdown, which ends every subscription.
local function pump()
    local why
    while true do
        local ok, err = shared_wait()
        if not ok then
            if err ~= "idle" or next(watchers) == nil then
                why = err
                break
            end
        end
        local changes, lost = shared_changes()
        -- What was lost came before what is read now.
        for name in pairs(lost) do
            for sub in pairs(watchers[name] or {}) do
                if not sub.box:put(LOST) then
                    sub.lost = true
                    sub.box:wake()
                end
            end
        end
        for i = 1, #changes, 2 do
            local subs = watchers[changes[i]]
            if subs then
                local key = changes[i + 1]
                for sub in pairs(subs) do
                    if sub_find(key, sub.prefix, 1, true) == 1 then
                        deliver(sub, key)
                    end
                end
            end
        end
    end
    pump_running = false
    if why == "idle" then
        return
    end
    -- Shutdown: every subscription hears it.
    for _, subs in pairs(watchers) do
        for sub in pairs(subs) do
            if not sub.ended then
                sub.ended = "closed"
                sub.box:wake()
            end
        end
    end
end

local function finish(sub, why)
    if sub.ended then
        return
    end
    sub.ended = why
    owned.remove(sub)
    local subs = watchers[sub.name]
    if subs and subs[sub] then
        subs[sub] = nil
        if next(subs) == nil then
            watchers[sub.name] = nil
        end
        shared_watch(sub.dict, false)
    end
    sub.box:clear()
    sub.box:wake()
end

local function watch(self, prefix, opts)
    prefix = prefix or ""
    if type(prefix) ~= "string" then
        error("watch: a prefix is a string, got " .. type(prefix), 2)
    end
    local max = mailbox.check_max("watch", opts, DEFAULT_MAX_QUEUE)
    local name = self:name()
    local sub = setmetatable({ dict = self, name = name, prefix = prefix, box = mailbox.new(max) }, sub_mt)
    local ok, err = shared_watch(self, true)
    if not ok then
        sub.ended = err
        return sub
    end
    local subs = watchers[name]
    if not subs then
        subs = {}
        watchers[name] = subs
    end
    subs[sub] = true
    if not pump_running then
        pump_running = true
        core.spawn_detached(pump)
    end
    owned.add(sub)
    return sub
end
core.shared_methods.watch = watch

--- The next key that changed; nil, "timeout" after timeout seconds (none:
--- as long as it takes); nil, "overflow" once after keys were lost; nil,
--- "closed" after sub:close() or at shutdown.
function sub_methods.recv(self, timeout)
    mailbox.check_timeout("sub:recv", timeout)
    local box = self.box
    while true do
        local key = box:take()
        if key == LOST then
            return nil, "overflow"
        elseif key then
            return key
        end
        -- After what came before the loss.
        if self.lost then
            self.lost = nil
            return nil, "overflow"
        end
        if self.ended then
            return nil, self.ended
        end
        local ok, err = box:wait(timeout)
        if not ok then
            return nil, err
        end
    end
end

--- Ends the subscription; a recv waiting returns nil, "closed".
function sub_methods.close(self)
    finish(self, "closed")
    return true
end

--- The dictionary declared with --shared NAME=SIZE.
function _M.dict(name)
    if type(name) ~= "string" then
        error("shared.dict: a name is a string, got " .. type(name), 2)
    end
    local d = core.shared_dict(name)
    if not d then
        local names = core.shared_names()
        error("shared.dict: no dictionary named '" .. name .. "' (declare it: tendril serve APP.lua --shared "
              .. name .. "=SIZE" .. (#names > 0 and "; declared: " .. table.concat(names, ", ") or "") .. ")", 2)
    end
    return d
end

--- The names of the declared dictionaries.
function _M.names()
    return core.shared_names()
end

return _M
