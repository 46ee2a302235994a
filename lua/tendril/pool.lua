-- A bounded pool of connections, for the clients that keep connections of
-- their own (tendril.pg's, tendril.redis's dedicated ones):
-- local pool = require "tendril.pool"
--
-- At most `size` connections (take's) are open, in use or idle. take() gives an
-- idle one, or room to open a new one, or waits (up to a timeout) for one
-- to come back; give() hands a connection back (to the first waiter, else
-- idle); closed() says one ended, so that a waiter may open one instead.
local core = require "tendril.core"

local setmetatable, remove, insert = setmetatable, table.remove, table.insert
local event_new, event_wait, event_set, now = core.event_new, core.event_wait, core.event_set, core.now

local _M = {}

local Pool = {}
Pool.__index = Pool

--- A pool (its fields are the caller's to add to: a client keeps its
--- shared connection there, say).
function _M.new()
    return setmetatable({ idle = {}, open = 0, waiting = {} }, Pool)
end

--- A connection: an idle one that usable(conn, idle_since) accepts (the
--- others are closed with close(conn) and leave the pool), or one given
--- back while the caller waited; false when there is room to open one,
--- fewer than size being open (counted already: call closed() if opening
--- it fails); nil, err when none came back within timeout seconds (0: no
--- limit). stale(conn, idle_since), if given, says whether an idle one
--- is past its time: the oldest is looked at too, so that a pool used from
--- its newest end does not keep the others open for ever.
function Pool:take(size, timeout, usable, close, stale)
    local idle = self.idle
    local oldest = idle[1]
    if stale and oldest and #idle > 1 and stale(oldest[1], oldest[2]) then
        remove(idle, 1)
        close(oldest[1])
        self:closed()
    end
    while #idle > 0 do
        local e = remove(idle)
        if usable(e[1], e[2]) then
            return e[1]
        end
        close(e[1])
        self:closed()
    end
    local deadline = timeout > 0 and now() + timeout or nil
    local woken = false
    while self.open >= size do
        local left = deadline and deadline - now()
        if left and left <= 0 then
            return nil, "timeout"
        end
        local w = { event = event_new() }
        local waiting = self.waiting
        if woken then
            insert(waiting, 1, w) -- it was first: it keeps its place
        else
            waiting[#waiting + 1] = w
        end
        local ok, err = event_wait(w.event, left)
        if w.conn then
            return w.conn
        end
        for i = 1, #waiting do
            if waiting[i] == w then
                remove(waiting, i)
                break
            end
        end
        if not ok then
            return nil, err
        end
        -- Woken by a connection that ended: room, unless another task took
        -- it first (then it waits on, first in line, for what is left of
        -- its time).
        woken = true
    end
    self.open = self.open + 1
    return false
end

--- Hands conn back: to the first waiter, else idle (park(conn) first, if
--- given: what an idle connection needs, such as a watch on its socket).
function Pool:give(conn, park)
    local w = remove(self.waiting, 1)
    if w then
        w.conn = conn
        event_set(w.event)
        return
    end
    if park then
        park(conn)
    end
    self.idle[#self.idle + 1] = { conn, now() }
end

--- One of the pool's connections ended (or was never opened).
function Pool:closed()
    self.open = self.open - 1
    local w = remove(self.waiting, 1)
    if w then
        event_set(w.event)
    end
end

--- Closes and forgets the idle connections alive(conn) says have ended
--- (closed by their idle timeout, or by the server), so that the counts
--- are true.
function Pool:prune(alive, close)
    local idle, kept = self.idle, {}
    for i = 1, #idle do
        local e = idle[i]
        if alive(e[1]) then
            kept[#kept + 1] = e
        else
            close(e[1])
            self:closed()
        end
    end
    self.idle = kept
end

--- { open =, idle =, waiting = }
function Pool:counts()
    return { open = self.open, idle = #self.idle, waiting = #self.waiting }
end

return _M
