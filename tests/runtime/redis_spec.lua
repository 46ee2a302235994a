-- tendril.redis against a real redis-server (helpers/redis_server.lua).
local tendril = require "tendril"
local redis = require "tendril.redis"
local testing = require "tendril.testing"

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = dir .. "/helpers/?.lua;" .. package.path
local redis_server = require "redis_server"
local util = require "spec_util"

describe("tendril.redis", function()
    local server, url

    setup(function()
        server = redis_server.start()
        url = server:url()
    end)

    teardown(function()
        server:remove()
    end)

    it("runs commands as methods and as call, with Lua values", function()
        local r = assert(redis.connect(url))
        assert.are.equal("OK", r:set("greeting", "hello"))
        assert.are.equal("hello", r:get("greeting"))
        assert.is_nil(r:get("no such key"))
        assert.are.equal(1, r:del("greeting"))
        assert.are.equal(2, r:call("hset", "h", "a", "1", "b", 2))
        assert.are.same({ "a", "1", "b", "2" }, r:hgetall("h"))
        assert.are.equal("OK", r:set("ttl", "x", "EX", 10))
        assert.is_true(r:ttl("ttl") > 0)
        -- A missing value inside an array is redis.null.
        assert.are.same({ "1", redis.null, "2" }, r:hmget("h", "a", "zz", "b"))
        -- It is json.null: a reply encodes with it as null.
        assert.are.equal(require("tendril.json").null, redis.null)
        assert.are.equal('["1",null,"2"]', require("tendril.json").encode(r:hmget("h", "a", "zz", "b")))
        -- Binary-safe.
        r:set("bin", "a\0b\r\nc")
        assert.are.equal("a\0b\r\nc", r:get("bin"))
        r:del("h", "ttl", "bin")
        r:release()
    end)

    it("counts a request's plain commands as db in its timings", function()
        local seen
        local app = testing.app(function(req)
            local r = assert(redis.connect(url))
            assert(r:ping())
            seen = req:timings()
            return "ok"
        end)
        assert.are.equal("ok", assert(app:get("/")).body)
        app:close()
        assert.is_true(seen.db > 0, "db " .. seen.db)
        assert.are.equal(0, seen.other)
    end)

    it("returns nil, err for an error reply and goes on", function()
        local r = assert(redis.connect(url))
        r:set("s", "text")
        local v, err = r:incr("s")
        assert.is_nil(v)
        assert.matches("^ERR value is not an integer", err)
        v, err = r:lpush("s", "x")
        assert.is_nil(v)
        assert.matches("^WRONGTYPE", err)
        assert.are.equal("text", r:get("s"))
        r:del("s")
        r:release()
    end)

    it("raises at the caller's line for misuse", function()
        local r = assert(redis.connect(url))
        local ok, err = pcall(function() return r:set("k", {}) end)
        assert.is_false(ok)
        assert.matches("redis_spec%.lua:%d+: redis:set: argument 2 is a table", err)
        r:release()
        ok, err = pcall(function() return r:get("k") end)
        assert.is_false(ok)
        assert.matches("redis_spec%.lua:%d+: redis:get: the connection was released or closed", err)
        ok, err = pcall(redis.connect, "http://x")
        assert.is_false(ok)
        assert.matches("redis%.connect: expected a redis:// or rediss:// URL", err)
    end)

    it("pipelines commands: one reply each, nulls and errors in place", function()
        local r = assert(redis.connect(url))
        r:del("counter")
        local replies = assert(r:pipeline(function(p)
            p:set("p1", "v1")
            p:incr("counter")
            p:incr("counter")
            p:get("missing")
            p:lpush("p1", "x")
            p:get("p1")
        end))
        assert.are.equal(6, #replies)
        assert.are.equal("OK", replies[1])
        assert.are.same({ 1, 2 }, { replies[2], replies[3] })
        assert.are.equal(redis.null, replies[4])
        assert.is_false(replies[5][1])
        assert.matches("^WRONGTYPE", replies[5][2])
        assert.are.equal("v1", replies[6])
        assert.are.same({}, r:pipeline(function() end))
        r:del("p1", "counter")
        r:release()
    end)

    it("sends numbers whole, and runs a pipeline with MULTI on a connection of its own", function()
        local r = assert(redis.connect(url))
        assert.are.equal("OK", r:set("big", 1234567890123456))
        assert.are.equal("1234567890123456", r:get("big"))
        assert.are.equal("OK", r:set("half", 0.5))
        assert.are.equal("0.5", r:get("half"))
        local replies = assert(r:pipeline(function(p)
            p:multi()
            p:incr("tx")
            p:incr("tx")
            p:exec()
        end))
        assert.are.same({ "OK", "QUEUED", "QUEUED", { 1, 2 } }, replies)
        -- Meanwhile the shared connection serves the others as before.
        local other = assert(redis.connect(url))
        assert.are.equal("2", other:get("tx"))
        r:del("big", "half", "tx")
        r:release()
    end)

    it("runs a transaction", function()
        local r = assert(redis.connect(url))
        assert.are.equal("OK", r:multi())
        assert.are.equal("QUEUED", r:set("t", "1"))
        assert.are.equal("QUEUED", r:incr("t"))
        assert.are.same({ "OK", 2 }, r:exec())
        assert.are.equal("2", r:get("t"))
        r:del("t")
        r:release()
    end)

    it("selects the database and authenticates from the URL", function()
        local r1 = assert(redis.connect(server:url(1)))
        local r0 = assert(redis.connect(url))
        r1:set("where", "one")
        assert.is_nil(r0:get("where"))
        assert.are.equal("one", r1:get("where"))
        r1:del("where")
        r1:release()
        r0:release()
        local secured = redis_server.start({ password = "s3cret" })
        local bad, err = redis.connect("redis://:wrong@127.0.0.1:" .. secured.port)
        assert.is_nil(bad)
        assert.matches("WRONGPASS", err)
        local r = assert(redis.connect(secured:url()))
        assert.are.equal("PONG", r:ping())
        r:close()
        secured:remove()
    end)

    it("delivers pub/sub messages", function()
        local sub = assert(redis.connect(url))
        assert(sub:subscribe("news", "sports"))
        local pub = assert(redis.connect(url))
        assert.are.equal(1, pub:publish("news", "hello"))
        assert.are.same({ "message", "news", "hello" }, sub:recv(5))
        assert.are.same({ nil, "timeout" }, { sub:recv(0.05) })
        pub:publish("sports", "goal")
        assert.are.same({ "message", "sports", "goal" }, sub:recv(5))
        pub:release()
        -- Subscribed: it is closed, not pooled.
        sub:release()
        local ok, err = pcall(function() return sub:recv() end)
        assert.is_false(ok)
        assert.matches("released or closed", err)
    end)

    -- The pool of dedicated connections to the spec's server, database 0.
    local function pool(key)
        for _, p in ipairs(redis.pools()) do
            if p.server == "127.0.0.1:" .. server.port .. "/" .. (key or 0) then
                return p
            end
        end
    end

    it("speaks TLS to a rediss:// server, verifying its certificate", function()
        local secure = redis_server.start({ tls = true, password = "s3cret" })
        local tls_url = "rediss://:s3cret@127.0.0.1:" .. secure.port
        local r = assert(redis.connect(tls_url, { ca_file = secure.cert }))
        assert.are.equal("OK", r:set("over", "tls"))
        assert.are.equal("tls", r:get("over"))
        -- A dedicated connection too.
        assert(r:multi())
        r:incr("n")
        assert.are.same({ 1 }, r:exec())
        r:release()
        -- Unverified, the certificate (self-signed) is refused.
        local bad, err = redis.connect(tls_url, { timeout = 2 })
        assert.is_nil(bad)
        assert.matches("certificate", err)
        -- As tcp.connect, verify = false takes any.
        local trusting = assert(redis.connect(tls_url, { verify = false }))
        assert.are.equal("tls", trusting:get("over"))
        trusting:release()
        secure:remove()
    end)

    it("sends numbers as the shortest text that reads back the same, and integers past 2^53 as text", function()
        local r = assert(redis.connect(url))
        r:set("price", 19.99)
        assert.are.equal("19.99", r:get("price"))
        r:del("fl")
        assert.are.equal("0.1", r:incrbyfloat("fl", 0.1))
        r:set("huge", "9007199254740994")
        assert.are.equal("9007199254740995", r:incr("huge"))
        assert.are.equal(9007199254740992, r:decrby("huge", 3))
        assert.are.equal("9007199254740993", r:incr("huge")) -- 2^53 + 1: a double would round it
        r:del("price", "fl", "huge")
        r:release()
    end)

    it("keeps another task's plain commands off a handle's transaction", function()
        local r = assert(redis.connect(url))
        r:set("seen", "outside")
        local holder = tendril.spawn(function()
            assert.are.equal("OK", r:multi())
            r:set("seen", "inside")
            tendril.sleep(0.2)
            return r:exec()
        end)
        tendril.sleep(0.05)
        -- This task's GET is not queued in the other's transaction.
        assert.are.equal("outside", r:get("seen"))
        local ok, err = pcall(function()
            local v = r:multi()
            return v
        end)
        assert.is_false(ok)
        assert.matches("redis_spec%.lua:%d+: redis:multi: the handle's own connection is another task's", err)
        assert.are.same({ true, { "OK" } }, { holder:join() })
        assert.are.equal("inside", r:get("seen"))
        r:release()
    end)

    it("keeps another task off a handle's subscription, and its plain commands on the shared connection", function()
        local r = assert(redis.connect(url))
        r:set("plain", "yes")
        local holder = tendril.spawn(function()
            assert(r:subscribe("mine"))
            local m = r:recv(5)
            return m and m[3]
        end)
        tendril.sleep(0.05)
        assert.are.equal("yes", r:get("plain"))
        for _, call in ipairs({ function() return r:subscribe("x") end, function() return r:recv(0.1) end,
            function() return r:multi() end }) do
            local ok, err = pcall(call)
            assert.is_false(ok)
            assert.matches("another task's", err)
        end
        local pub = assert(redis.connect(url))
        assert(util.wait_until(function() return pub:publish("mine", "hello") == 1 end, 5))
        assert.are.same({ true, "hello" }, { holder:join() })
        pub:release()
        r:release()
    end)

    it("lets each caller on the shared connection wait as long as its own timeout", function()
        local quick = assert(redis.connect(url, { timeout = 0.3 }))
        local patient = assert(redis.connect(url, { timeout = 10 }))
        assert.are.equal("PONG", quick:ping())
        patient:set("patience", "rewarded")
        local pid = assert(tendril.run({ "cat", server.dir .. "/redis.pid" })).stdout:gsub("%s+$", "")
        assert(tendril.run({ "kill", "-STOP", pid }))
        local slow = tendril.spawn(function()
            return patient:get("patience")
        end)
        local t0 = tendril.now()
        assert.are.same({ nil, "timeout" }, { quick:get("patience") })
        assert.is_true(tendril.now() - t0 < 1)
        tendril.sleep(0.7)
        assert(tendril.run({ "kill", "-CONT", pid }))
        assert.are.same({ true, "rewarded" }, { slow:join() })
        patient:del("patience")
        quick:release()
        patient:release()
    end)

    it("makes a handle whose subscribed connection died an ordinary one again", function()
        local r = assert(redis.connect(url))
        assert(r:subscribe("doomed"))
        local admin = assert(redis.connect(url))
        assert(admin:client("KILL", "TYPE", "pubsub"))
        assert.are.same({ nil, "closed" }, { r:recv(5) })
        assert.are.same({ nil, "closed" }, { r:recv(0.1) })
        assert.are.equal("PONG", r:ping())
        assert(r:subscribe("again"))
        assert(util.wait_until(function() return admin:publish("again", "back") == 1 end, 5))
        assert.are.same({ "message", "again", "back" }, r:recv(5))
        admin:release()
        r:release()
    end)

    it("refuses RESP3 and a timeout that is not a number", function()
        local r = assert(redis.connect(url))
        assert.has_error(function() r:hello(3) end, "redis:hello: RESP3 is not supported (tendril.redis speaks RESP2)")
        assert(r:subscribe("n"))
        local ok, err = pcall(function() return r:recv(0 / 0) end)
        assert.is_false(ok)
        assert.matches("redis:recv: a timeout is a number of seconds >= 0", err)
        r:close()
    end)

    it("refuses a URL whose port is not a number, and a server that does not answer", function()
        assert.has_error(function() redis.connect("redis://127.0.0.1:notaport") end,
            'redis.connect: expected host[:port] in the URL, got "127.0.0.1:notaport"')
        local port = require("tendril.tcp").listen("127.0.0.1", 0, function(sock)
            sock:receive("*a")
        end)
        local t0 = tendril.now()
        assert.are.same({ nil, "timeout" }, { redis.connect("redis://127.0.0.1:" .. port, { timeout = 0.3 }) })
        assert.is_true(tendril.now() - t0 < 2)
    end)

    it("reads messages that come while it subscribes again, and leaves channels", function()
        local sub = assert(redis.connect(url))
        assert(sub:subscribe("first"))
        local pub = assert(redis.connect(url))
        -- Published before the second SUBSCRIBE is read: they come ahead
        -- of its confirmation, and are messages, not confirmations.
        assert(pub:pipeline(function(p)
            for i = 1, 3 do
                p:publish("first", "m" .. i)
            end
        end))
        assert(sub:subscribe("second", "third"))
        assert(pub:publish("second", "m4"))
        for i = 1, 3 do
            assert.are.same({ "message", "first", "m" .. i }, sub:recv(5))
        end
        assert.are.same({ "message", "second", "m4" }, sub:recv(5))
        -- Subscribed, a connection takes ping (its answer comes through
        -- recv) and (un)subscribing; anything else is misuse.
        assert.is_true(sub:ping())
        assert.are.same({ "pong", "" }, sub:recv(5))
        local ok, err = pcall(function()
            local v = sub:get("k")
            return v
        end)
        assert.is_false(ok)
        assert.matches("redis_spec%.lua:%d+: redis:get: the connection is subscribed", err)
        assert(sub:unsubscribe("first"))
        assert.are.equal(0, pub:publish("first", "nobody"))
        -- Out of every channel, it is an ordinary connection again, and
        -- goes back to the pool clean.
        assert(sub:unsubscribe())
        assert.are.equal("PONG", sub:ping())
        assert.are.equal(0, pub:publish("second", "nobody"))
        local before = pool().idle
        sub:release()
        assert.are.equal(before + 1, pool().idle)
        pub:release()
    end)

    it("waits for a blocking command as long as it may block, beyond the timeout", function()
        local r = assert(redis.connect(url, { timeout = 0.3 }))
        local t0 = tendril.now()
        assert.is_nil((r:blpop("empty list", 0.8)))
        local took = tendril.now() - t0
        assert.is_true(took >= 0.7 and took < 3, took)
        -- An element pushed while it blocks is its reply, not lost.
        local pusher = tendril.spawn(function()
            tendril.sleep(0.5)
            local p = assert(redis.connect(url))
            return p:rpush("later", "x")
        end)
        assert.are.same({ "later", "x" }, r:blpop("later", 5))
        assert.are.same({ true, 1 }, { pusher:join() })
        assert.are.same({ redis.null }, r:pipeline(function(p) p:brpop("empty list", 0.6) end))
        -- The connection's own timeout is back for the next reply.
        assert.are.equal("PONG", r:ping())
        r:release()
    end)

    it("dials once for every caller waiting on the shared connection, and tells them why it failed", function()
        -- A server that refuses the password a moment after it is asked.
        local accepted = 0
        local port = require("tendril.tcp").listen("127.0.0.1", 0, function(sock)
            accepted = accepted + 1
            sock:receive("*l")
            tendril.sleep(0.1)
            sock:send("-WRONGPASS invalid username-password pair\r\n")
        end)
        local dead = "redis://:pw@127.0.0.1:" .. port
        local threads = {}
        for i = 1, 20 do
            threads[i] = tendril.spawn(function()
                return redis.connect(dead, { timeout = 2 })
            end)
        end
        for i = 1, 20 do
            assert.are.same({ true, nil, "WRONGPASS invalid username-password pair" }, { threads[i]:join() })
        end
        assert.are.equal(1, accepted)
    end)

    it("closes an idle dedicated connection at idle_timeout, and counts it gone", function()
        local r = assert(redis.connect(url .. "/3", { idle_timeout = 0.2 }))
        assert(r:multi())
        assert(r:exec())
        r:release()
        assert.are.same({ 1, 1 }, { pool(3).open, pool(3).idle })
        assert(util.wait_until(function() return pool(3).open == 0 end, 5))
        assert.are.equal(0, pool(3).idle)
    end)

    it("keeps a connection with shard subscriptions out of the pool, and knows when it is free", function()
        local r = assert(redis.connect(url))
        assert(r:ssubscribe("shard"))
        assert(r:subscribe("plain"))
        assert(r:unsubscribe())
        -- Still subscribed (the shard channel): ping's answer is a message.
        assert.is_true(r:ping())
        assert.are.same({ "pong", "" }, r:recv(5))
        assert(r:sunsubscribe())
        assert.are.equal("PONG", r:ping())
        r:release()
        local again = assert(redis.connect(url))
        assert.are.equal("OK", again:multi())
        assert.are.same({}, again:exec())
        again:release()
    end)

    it("finds a stream option by its place, not its name", function()
        local r = assert(redis.connect(url, { timeout = 0.3 }))
        r:del("st", "block")
        assert(r:xgroup("CREATE", "st", "block", "$", "MKSTREAM"))
        local t0 = tendril.now()
        -- A group named "block" and BLOCK 800: it waits the 800 ms.
        assert.is_nil((r:xreadgroup("GROUP", "block", "c1", "BLOCK", 800, "STREAMS", "st", ">")))
        local took = tendril.now() - t0
        assert.is_true(took >= 0.7 and took < 3, took)
        -- A stream named "block" read without BLOCK does not wait.
        assert(r:xadd("block", "*", "f", "v"))
        local got = assert(r:xread("STREAMS", "block", 0))
        assert.are.equal("block", got[1][1])
        assert.are.equal("PONG", r:ping())
        r:del("st", "block")
        r:release()
    end)

    it("says closed, not misuse, to a handle whose subscription ended with its task", function()
        local r = assert(redis.connect(url))
        assert(tendril.spawn(function()
            assert(r:subscribe("gone"))
        end):join())
        assert.are.same({ nil, "closed" }, { r:recv(0.1) })
        assert.are.equal("PONG", r:ping())
        r:set("after", "1")
        assert.are.equal("1", r:get("after"))
        r:del("after")
        r:release()
    end)

    it("sends nothing for a request that is over", function()
        local r0 = assert(redis.connect(url))
        r0:del("doomed")
        local app = testing.app(function(req)
            local r = assert(redis.connect(url))
            req:deadline(0.05)
            tendril.sleep(0.2) -- past it: every wait fails at once now
            local v, err = r:incr("doomed")
            return tostring(v) .. " " .. tostring(err)
        end)
        app:get("/")
        tendril.sleep(0.1)
        assert.is_nil(r0:get("doomed"))
        app:close()
        r0:release()
    end)

    it("says busy rather than queue without bound for a server that stopped reading", function()
        local r = assert(redis.connect(url, { timeout = 20 }))
        local pid = assert(tendril.run({ "cat", server.dir .. "/redis.pid" })).stdout:gsub("%s+$", "")
        assert(tendril.run({ "kill", "-STOP", pid }))
        local big = string.rep("x", 1024 * 1024)
        local threads, busy = {}, 0
        for i = 1, 100 do
            threads[i] = tendril.spawn(function()
                return r:set("big" .. i, big)
            end)
            tendril.sleep(0) -- one loop turn each: the output is written, then piles up
        end
        tendril.sleep(0.2)
        assert(tendril.run({ "kill", "-CONT", pid }))
        for i = 1, 100 do
            local ok, v, err = threads[i]:join()
            assert.is_true(ok)
            if v == nil then
                assert.are.equal("busy", err)
                busy = busy + 1
            else
                assert.are.equal("OK", v)
            end
        end
        assert.is_true(busy > 0 and busy < 100, busy)
        for i = 1, 100 do
            r:del("big" .. i)
        end
        r:release()
    end)

    it("refuses a timeout of 0, which would fail every call", function()
        assert.has_error(function() redis.connect(url, { timeout = 0 }) end,
            "redis.connect: timeout must be more than 0 seconds")
    end)

    it("lets a long-lived task take and give back dedicated connections without keeping a record of each", function()
        local owned = require "tendril.owned"
        for _ = 1, 50 do
            local r = assert(redis.connect(url))
            assert(r:multi())
            assert(r:exec())
            r:release()
        end
        assert.are.equal(0, owned.count())
    end)

    it("sends the commands of many tasks on one shared connection", function()
        local r = assert(redis.connect(url))
        r:set("n", 0)
        local open = pool().open
        local threads = {}
        for i = 1, 50 do
            threads[i] = tendril.spawn(function()
                local c = assert(redis.connect(url))
                return c:incr("n")
            end)
        end
        local seen = {}
        for i = 1, 50 do
            local ok, v = threads[i]:join()
            assert.is_true(ok)
            seen[v] = true
        end
        for v = 1, 50 do
            assert.is_true(seen[v], v)
        end
        assert.are.equal("50", r:get("n"))
        -- No dedicated connection was needed.
        assert.are.equal(open, pool().open)
        r:del("n")
    end)

    it("holds its bounds under 1,000 concurrent callers", function()
        local opts = { pool_size = 8, timeout = 60 }
        local most, threads = 0, {}
        for i = 1, 1000 do
            threads[i] = tendril.spawn(function()
                -- Database 3: a pool of its own.
                local r = assert(redis.connect(server:url(3), opts))
                -- Plain commands share one connection; WATCH takes one of
                -- the 8 of its own.
                assert.are.equal(i, tonumber(r:echo(tostring(i))))
                assert.are.equal("OK", r:watch("k" .. i))
                most = math.max(most, pool(3).open)
                r:unwatch()
                r:release()
                return true
            end)
        end
        for i = 1, 1000 do
            assert.are.same({ true, true }, { threads[i]:join() })
        end
        assert.is_true(most >= 1 and most <= 8, most)
    end)

    it("bounds the dedicated connections, waiting for one to come back", function()
        local opts = { pool_size = 2, timeout = 0.3 }
        local a = assert(redis.connect(url, opts))
        local b = assert(redis.connect(url, opts))
        -- WATCH needs a connection of its own: both are in use now.
        assert.are.equal("OK", a:watch("w"))
        assert.are.equal("OK", b:watch("w"))
        local c = assert(redis.connect(url, opts))
        local t0 = tendril.now()
        assert.are.same({ nil, "timeout" }, { c:watch("w") })
        assert.is_true(tendril.now() - t0 >= 0.29)
        local th = tendril.spawn(function()
            local r = assert(redis.connect(url, opts))
            local v = r:watch("w")
            r:unwatch()
            r:release()
            return v
        end)
        tendril.sleep(0.05)
        assert.are.equal("OK", a:unwatch())
        a:release()
        assert.are.same({ true, "OK" }, { th:join() })
        b:unwatch()
        b:release()
        c:release()
        local p = pool()
        assert.are.equal(2, p.open)
        assert.are.equal(2, p.idle)
        -- One given back still watching, or on another database, is closed.
        local d = assert(redis.connect(url, opts))
        assert.are.equal("OK", d:watch("w"))
        d:release()
        local e = assert(redis.connect(url, opts))
        assert.are.equal("OK", e:select(0))
        e:release()
        p = pool()
        assert.are.same({ 0, 0 }, { p.open, p.idle })
    end)

    it("gives a request's dedicated connection back when the request ends, closed if unfit", function()
        local app = testing.app(function(req)
            local r = assert(redis.connect(url))
            if req.path == "/plain" then
                return r:ping()
            end
            r:multi()
            if req.path == "/clean" then
                r:ping()
                return tostring(#r:exec())
            end
            return "open" -- a transaction left open: not fit for the pool
        end)
        assert.are.equal("PONG", assert(app:get("/plain")).body)
        assert.are.equal("1", assert(app:get("/clean")).body)
        local p = pool()
        local open = p.open
        assert.is_true(open >= 1)
        assert.are.equal(open, p.idle)
        assert.are.equal("open", assert(app:get("/dirty")).body)
        p = pool()
        assert.are.same({ open - 1, open - 1 }, { p.open, p.idle })
        app:close()
    end)

    it("survives a server restart: calls in flight fail, the next one reconnects", function()
        local r = assert(redis.connect(url))
        assert.are.equal("PONG", r:ping())
        local waiter = tendril.spawn(function()
            return r:blpop("never", 0)
        end)
        tendril.sleep(0.05)
        server:stop()
        local ok, v, err = waiter:join()
        assert.is_true(ok)
        assert.is_nil(v)
        assert.are.equal("closed", err)
        assert(server:start())
        assert.are.equal("PONG", r:ping())
        r:release()
        -- Pooled connections that died are not handed out.
        local r2 = assert(redis.connect(url))
        assert.are.equal("PONG", r2:ping())
        r2:release()
    end)

    it("fails within its timeout when nothing answers", function()
        local t0 = tendril.now()
        local r, err = redis.connect("redis://127.0.0.1:1", { timeout = 1 })
        assert.is_nil(r)
        assert.are.equal("connection refused", err)
        assert.is_true(tendril.now() - t0 < 1.5)
    end)
end)

describe("the README's Redis block", function()
    it("runs as written", function()
        local server = redis_server.start()
        local app = testing.app(util.readme_handler('require "tendril.redis"', '"redis://127.0.0.1:6379"',
            '"' .. server:url() .. '"'))
        assert.are.equal("visit number 1\n", assert(app:get("/")).body)
        assert.are.equal("visit number 2\n", assert(app:get("/")).body)
        app:close()
        server:remove()
    end)
end)
