-- bus.bridge: the bus across instances through Redis pub/sub. The other
-- instances are played by a plain Redis client publishing and
-- subscribing on the bridge's channels.
local tendril = require "tendril"
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

    it("delivers once locally when two bridges reach the same Redis", function()
        -- Another URL for the same server and database: a bridge of its own.
        local second = assert(bus.bridge(url .. "/0"))
        assert.are_not.equal(bridge, second)
        assert(wait_until(function() return second.listening end, 10))
        local local_sub = bus.subscribe("twice")
        local sent1, sent2, received1, received2 = bridge.sent, second.sent, bridge.received, second.received
        assert.are.equal(1, bus.publish("twice", "once"))
        assert.are.equal("once", local_sub:recv(1))
        -- Both bridges published it; neither brings it back here.
        assert(wait_until(function() return bridge.sent > sent1 and second.sent > sent2 end, 5))
        tendril.sleep(0.2)
        assert.are.same({ received1, received2 }, { bridge.received, second.received })
        assert.are.same({ nil, "timeout" }, { local_sub:recv(0.3) })
        local_sub:close()
    end)

    it("counts what Redis refused to publish as lost, not sent", function()
        local admin = assert(redis.connect(url))
        assert.are.equal("OK", admin:acl("SETUSER", "muted", "on", ">pw", "~*", "&*", "+@all", "-publish"))
        admin:release()
        local muted = assert(bus.bridge("redis://muted:pw@127.0.0.1:" .. server.port, { prefix = "muted:" }))
        assert(wait_until(function() return muted.listening end, 10))
        bus.publish("refused", "x")
        assert(wait_until(function() return muted.lost == 1 end, 5))
        assert.are.equal(0, muted.sent)
        assert.matches("NOPERM", muted.error)
    end)

    it("notices a Redis that stopped answering by its ping", function()
        local quiet = assert(bus.bridge(url, { prefix = "quiet:", ping_every = 0.2 }))
        assert(wait_until(function() return quiet.listening end, 10))
        local pid = assert(tendril.run({ "cat", server.dir .. "/redis.pid" })).stdout:gsub("%s+$", "")
        assert(tendril.run({ "kill", "-STOP", pid }))
        local noticed = wait_until(function() return not quiet.listening end, 5)
        assert(tendril.run({ "kill", "-CONT", pid }))
        assert.is_true(noticed)
        assert.are.equal("no answer to a ping", quiet.error)
        assert(wait_until(function() return quiet.listening end, 15))
        assert.is_nil(quiet.error) -- (the last failure's, while it is down)
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
