-- bus.bridge: the bus across instances through Redis pub/sub. The other
-- instances are played by a plain Redis client publishing and
-- subscribing on the bridge's channels.
local bus = require "tendril.bus"
local json = require "tendril.json"
local redis = require "tendril.redis"

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = dir .. "/helpers/?.lua;" .. package.path
local redis_server = require "redis_server"
local wait_until = require("spec_util").wait_until

describe("bus.bridge", function()
    local server, url, bridge

    setup(function()
        server = redis_server.start()
        url = server:url()
        bridge = assert(bus.bridge(url))
        assert(wait_until(function() return bridge.listening end, 10))
    end)

    teardown(function()
        server:remove()
    end)

    it("keeps one bridge per URL", function()
        assert.are.equal(bridge, bus.bridge(url))
        assert.is_string(bridge.id)
    end)

    it("sends what is published here to the other instances, once to local subscribers", function()
        local other = assert(redis.connect(url))
        assert(other:psubscribe("tendril:bus:*"))
        local local_sub = bus.subscribe("news")
        assert.are.equal(1, bus.publish("news", { title = "hello", tags = { "a", "b" } }))
        local m = assert(other:recv(5))
        assert.are.equal("pmessage", m[1])
        assert.are.equal("tendril:bus:news", m[3])
        local id, body = m[4]:match("^(%x+) (.*)$")
        assert.are.equal(bridge.id, id)
        assert.are.same({ title = "hello", tags = { "a", "b" } }, json.decode(body))
        assert.are.same({ title = "hello", tags = { "a", "b" } }, local_sub:recv(1))
        -- It does not come back from Redis to the local subscriber.
        assert.are.same({ nil, "timeout" }, { local_sub:recv(0.2) })
        -- A value JSON cannot carry stays local.
        local f = function() end
        assert.are.equal(1, bus.publish("news", f))
        assert.are.equal(f, local_sub:recv(1))
        assert.are.same({ nil, "timeout" }, { other:recv(0.2) })
        local_sub:close()
        other:close()
    end)

    it("gives the local subscribers what other instances publish", function()
        local local_sub = bus.subscribe("chat")
        local other = assert(redis.connect(url))
        assert.are.equal(1, other:publish("tendril:bus:chat", "0123abcd " .. json.encode({ text = "hi" })))
        assert.are.same({ text = "hi" }, local_sub:recv(5))
        -- Its own messages (its id) and what is not the bridge's are not delivered.
        other:publish("tendril:bus:chat", bridge.id .. ' "mine"')
        other:publish("tendril:bus:chat", "not a bridge message")
        other:publish("tendril:bus:chat", "0123abcd " .. json.encode("after"))
        assert.are.equal("after", local_sub:recv(5))
        local_sub:close()
        other:release()
    end)

    it("comes back after Redis restarted", function()
        server:stop()
        assert(wait_until(function() return not bridge.listening end, 10))
        assert(server:start())
        assert(wait_until(function() return bridge.listening end, 10))
        local local_sub = bus.subscribe("after-restart")
        local other = assert(redis.connect(url))
        other:publish("tendril:bus:after-restart", "0123abcd 42")
        assert.are.equal(42, local_sub:recv(5))
        local_sub:close()
        other:release()
    end)
end)
