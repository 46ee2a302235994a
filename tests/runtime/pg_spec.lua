-- tendril.pg against a real PostgreSQL (helpers/pg_server.lua).
local tendril = require "tendril"
local pg = require "tendril.pg"
local testing = require "tendril.testing"

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = dir .. "/helpers/?.lua;" .. package.path
local pg_server = require "pg_server"
local util = require "spec_util"

describe("tendril.pg", function()
    local server, url

    setup(function()
        server = pg_server.start()
        url = server:url()
        local db = assert(pg.connect(url))
        assert(db:query("CREATE TABLE kv (k int PRIMARY KEY, v text, doc jsonb)"))
        db:release()
    end)

    teardown(function()
        server:remove()
    end)

    it("turns values into Lua by type", function()
        local db = assert(pg.connect(url))
        local rows, n = assert(db:query([[SELECT 1 AS i, 9007199254740993::int8 AS big, 42::int8 AS small,
            1.5::float8 AS f, true AS b, 'text' AS t, 12.30::numeric AS num, NULL AS n, '{"a":[1,2]}'::json AS j]]))
        assert.are.equal(1, n)
        local r = rows[1]
        assert.are.same({ 1, "9007199254740993", 42, 1.5, true, "text", "12.30", pg.null, '{"a":[1,2]}' },
            { r.i, r.big, r.small, r.f, r.b, r.t, r.num, r.n, r.j })
        assert.are.same({ "i", "big", "small", "f", "b", "t", "num", "n", "j" }, rows.columns)
        db:release()
    end)

    it("passes parameters and counts the rows touched", function()
        local db = assert(pg.connect(url))
        local _, n = assert(db:query("INSERT INTO kv VALUES ($1, $2, $3), ($4, $5, $6)", 1, "one", { x = 1 },
            2, pg.null, nil))
        assert.are.equal(2, n)
        local rows = assert(db:query("SELECT k, v, doc FROM kv WHERE k = ANY($1::int[]) ORDER BY k", "{1,2}"))
        assert.are.same({ 1, "one", '{"x": 1}' }, { rows[1].k, rows[1].v, rows[1].doc })
        assert.are.equal(pg.null, rows[2].v)
        assert.are.equal(pg.null, rows[2].doc)
        _, n = assert(db:query("UPDATE kv SET v = $1 WHERE k > $2", "x", 0))
        assert.are.equal(2, n)
        rows = assert(db:query("SELECT $1::bool AS t, $2::float8 AS f, $3::text AS s", true, 0.25, 7))
        assert.are.same({ true, 0.25, "7" }, { rows[1].t, rows[1].f, rows[1].s })
        assert(db:query("DELETE FROM kv"))
        db:release()
    end)

    it("prepares a statement it runs again, and copes with the schema changing under it", function()
        local db = assert(pg.connect(url, { pool_size = 1 }))
        assert(db:query("CREATE TABLE prep (a int)"))
        assert(db:query("INSERT INTO prep VALUES (1)"))
        for _ = 1, 3 do
            local rows = assert(db:query("SELECT * FROM prep WHERE a = $1", 1))
            assert.are.same({ "a" }, rows.columns)
        end
        local names = assert(db:query("SELECT name FROM pg_prepared_statements"))
        assert.is_true(#names >= 1)
        assert(db:query("ALTER TABLE prep ADD COLUMN b int"))
        local rows = assert(db:query("SELECT * FROM prep WHERE a = $1", 1))
        assert.are.same({ "a", "b" }, rows.columns)
        assert(db:query("DROP TABLE prep"))
        db:release()
    end)

    it("decodes JSON columns when asked", function()
        local db = assert(pg.connect(url, { json = true }))
        local rows = assert(db:query([[SELECT '{"a":[1,2]}'::json AS j, '[]'::jsonb AS e]]))
        assert.are.same({ a = { 1, 2 } }, rows[1].j)
        assert.are.same({}, rows[1].e)
        db:release()
    end)

    it("returns nil, message, sqlstate for a failure, and goes on", function()
        local db = assert(pg.connect(url))
        assert.are.same({ nil, 'relation "nope" does not exist', "42P01" }, { db:query("SELECT * FROM nope") })
        assert.are.same({ nil, "division by zero", "22012" }, { db:query("SELECT 1/0") })
        assert.are.equal(2, assert(db:query("SELECT 2 AS x"))[1].x)
        local ok, err = pcall(function() return db:query("SELECT $1", function() end) end)
        assert.is_false(ok)
        assert.matches("pg_spec%.lua:%d+: db:query: parameter 1 is a function", err)
        db:release()
        ok, err = pcall(function() return db:query("SELECT 1") end)
        assert.is_false(ok)
        assert.matches("released or closed", err)
    end)

    it("commits a transaction, or rolls it back and raises again", function()
        local db = assert(pg.connect(url))
        assert.are.equal("done", db:transaction(function(tx)
            assert(tx:query("INSERT INTO kv (k, v) VALUES (10, 'kept')"))
            return "done"
        end))
        local ok, err = pcall(db.transaction, db, function(tx)
            assert(tx:query("INSERT INTO kv (k, v) VALUES (11, 'gone')"))
            error("changed my mind")
        end)
        assert.is_false(ok)
        assert.matches("changed my mind", err)
        local rows = assert(db:query("SELECT k FROM kv WHERE k >= 10 ORDER BY k"))
        assert.are.equal(1, #rows)
        assert.are.equal(10, rows[1].k)
        assert(db:query("DELETE FROM kv"))
        db:release()
    end)

    it("says an aborted transaction is one, and never pools a connection left in one", function()
        local db = assert(pg.connect(url, { pool_size = 5 }))
        local res = { db:transaction(function(tx)
            assert(tx:query("INSERT INTO kv (k, v) VALUES (20, 'x')"))
            tx:query("SELECT 1/0") -- fails; the function goes on
            return "done"
        end) }
        assert.are.same({ nil, "transaction aborted: a statement in it failed", "25P02" }, res)
        assert.are.equal(0, #assert(db:query("SELECT k FROM kv WHERE k = 20")))
        -- A BEGIN of the caller's own, given back: closed, not pooled.
        local function open5()
            for _, p in ipairs(pg.pools()) do
                if p.size == 5 then
                    return p.open
                end
            end
        end
        local before = open5()
        assert(db:query("BEGIN"))
        db:release()
        assert.are.equal(before - 1, open5())
    end)

    it("ends a query in flight with closed when its connection is closed, and refuses two at once", function()
        local db = assert(pg.connect(url))
        local th = tendril.spawn(function()
            return db:query("SELECT pg_sleep(5)")
        end)
        tendril.sleep(0.05)
        local ok, err = pcall(function()
            local rows = db:query("SELECT 1")
            return rows
        end)
        assert.is_false(ok)
        assert.matches("pg_spec%.lua:%d+: db:query: the connection is busy", err)
        local t0 = tendril.now()
        db:close()
        assert.are.same({ true, nil, "closed" }, { th:join() })
        assert.is_true(tendril.now() - t0 < 2)
    end)

    it("refuses COPY rather than hang", function()
        local db = assert(pg.connect(url))
        assert.are.same({ nil, "COPY is not supported", "0A000" }, { db:query("COPY (SELECT 1) TO STDOUT") })
        db:release()
    end)

    it("cancels a query on the server at its timeout", function()
        local db = assert(pg.connect(url, { query_timeout = 0.3 }))
        local pid = assert(db:query("SELECT pg_backend_pid() AS pid"))[1].pid
        local t0 = tendril.now()
        assert.are.same({ nil, "timeout", "57014" }, { db:query("SELECT pg_sleep(10)") })
        assert.is_true(tendril.now() - t0 < 5)
        -- The cancel took and is back: the same connection goes on.
        assert.are.equal(pid, assert(db:query("SELECT pg_backend_pid() AS pid"))[1].pid)
        db:release()
    end)

    it("gives up a query the server does not stop within the grace, and its connection", function()
        local db = assert(pg.connect(url, { query_timeout = 0.3, pool_size = 5 }))
        local pid = assert(db:query("SELECT pg_backend_pid() AS pid"))[1].pid
        local th = tendril.spawn(function()
            return db:query("SELECT pg_sleep(1)")
        end)
        tendril.sleep(0.05)
        -- A stopped backend takes no cancel: the call ends at its timeout
        -- and the grace after it (as long again here), not when it wakes.
        assert(tendril.run({ "kill", "-STOP", tostring(pid) }))
        local t0 = tendril.now()
        local ok, rows, err, state = th:join()
        local took = tendril.now() - t0
        assert(tendril.run({ "kill", "-CONT", tostring(pid) }))
        assert.are.same({ true, nil, "timeout", "57014" }, { ok, rows, err, state })
        assert.is_true(took < 1.5, took)
        -- The cancel may still land: the next call runs on a new connection.
        local again = assert(db:query("SELECT pg_backend_pid() AS pid"))
        assert.are_not.equal(pid, again[1].pid)
        db:release()
    end)

    it("closes a failed connection's socket at once, not when the collector runs", function()
        local function fds()
            local f = assert(io.open("/proc/self/stat"))
            local pid = f:read("*l"):match("^%d+")
            f:close()
            local r = assert(tendril.run({ "sh", "-c", "ls /proc/" .. pid .. "/fd | wc -l" }))
            return tonumber(r.stdout)
        end
        collectgarbage("stop")
        local before = fds()
        local bad = string.format("postgres://postgres:wrong@127.0.0.1:%d/postgres", server.port)
        for _ = 1, 20 do
            assert.is_nil((pg.connect(bad)))
        end
        local after = fds()
        collectgarbage("restart")
        assert.is_true(after - before < 5, before .. " -> " .. after)
    end)

    it("refuses a text parameter with a NUL byte as PostgreSQL would", function()
        local db = assert(pg.connect(url))
        assert.are.same({ nil, "parameter 2 contains a NUL byte (text cannot hold one)", "22021" },
            { db:query("SELECT $1::text, $2::text", "ok", "a\0b") })
        assert.are.equal("a", assert(db:query("SELECT $1::text AS t", "a"))[1].t)
        db:release()
    end)

    it("keeps the newest 10,000 notifications nobody has read", function()
        local listener = assert(pg.connect(url))
        assert(listener:listen("many"))
        local sender = assert(pg.connect(url))
        assert(sender:query("SELECT pg_notify('many', g::text) FROM generate_series(1, 10005) g"))
        sender:release()
        tendril.sleep(0.5) -- all of them in, as an app busy elsewhere would let them
        local first = assert(listener:recv(5))
        assert.are.equal("6", first.payload)
        for i = 7, 10005 do
            local note = assert(listener:recv(5))
            if note.payload ~= tostring(i) then
                assert.are.equal(tostring(i), note.payload)
            end
        end
        assert.are.same({ nil, "timeout" }, { listener:recv(0.05) })
        listener:release()
    end)

    it("lets a long-lived task take and give back connections without keeping a record of each", function()
        local owned = require "tendril.owned"
        for _ = 1, 50 do
            local db = assert(pg.connect(url))
            db:release()
        end
        local db = assert(pg.connect(url))
        assert.are.equal(1, owned.count())
        db:close()
        assert.are.equal(0, owned.count())
    end)

    it("connects over TLS as sslmode says, verifying the server's certificate", function()
        local function ssl_of(conninfo)
            local db, err = pg.connect(conninfo, { timeout = 5 })
            if not db then
                return nil, err
            end
            local rows = assert(db:query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
            db:release()
            return rows[1].ssl
        end
        assert.is_true(ssl_of(url .. "?sslmode=require"))
        assert.is_true(ssl_of(url .. "?sslmode=verify-full&sslrootcert=" .. server.cert))
        assert.is_false(ssl_of(url .. "?sslmode=disable"))
        -- Verified against the system's roots, the self-signed one fails.
        local ok, err = ssl_of(url .. "?sslmode=verify-full&sslrootcert=system")
        assert.is_nil(ok)
        assert.matches("certificate", err)
    end)

    it("sends numbers as the shortest text that reads back the same", function()
        local db = assert(pg.connect(url))
        local rows = assert(db:query("SELECT $1::numeric::text AS price, $2::int8::text AS big, $3::float8 AS f",
            19.99, 2 ^ 60, 0.1))
        assert.are.same({ "19.99", "1152921504606846976", 0.1 }, { rows[1].price, rows[1].big, rows[1].f })
        db:release()
    end)

    it("answers with the real cause when a statement's schema changed inside a transaction", function()
        local db = assert(pg.connect(url, { pool_size = 1 }))
        assert(db:query("CREATE TABLE shifting (a int)"))
        for _ = 1, 3 do
            assert(db:query("SELECT * FROM shifting"))
        end
        assert(db:query("ALTER TABLE shifting ADD COLUMN b int"))
        local inside
        assert.are.same({ nil, "transaction aborted: a statement in it failed", "25P02" }, { db:transaction(
            function(tx)
                inside = { tx:query("SELECT * FROM shifting") }
            end) })
        assert.is_nil(inside[1])
        assert.matches("cached plan must not change result type", inside[2])
        assert.are.equal("0A000", inside[3])
        -- Outside one, the next run prepares it afresh.
        assert(db:query("SELECT * FROM shifting"))
        assert(db:query("DROP TABLE shifting"))
        db:release()
    end)

    it("keeps the caller's own error when a transaction's function gives its connection up", function()
        local db = assert(pg.connect(url))
        local ok, err = pcall(db.transaction, db, function(tx)
            tx:release()
            error("mine", 0)
        end)
        assert.are.same({ false, "mine" }, { ok, err })
        db = assert(pg.connect(url))
        assert.are.same({ nil, "closed" }, { db:transaction(function(tx) tx:close() return 1 end) })
    end)

    it("closes a connection idle in its pool past idle_timeout", function()
        -- (The watcher first: under a sanitizer its connecting alone can
        -- take longer than a short idle_timeout.)
        local watcher = assert(pg.connect(url))
        local db = assert(pg.connect(url, { idle_timeout = 1, pool_size = 7 }))
        local pid = assert(db:query("SELECT pg_backend_pid() AS pid"))[1].pid
        db:release()
        local function alive()
            return assert(watcher:query("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1", pid))[1].n
        end
        assert.are.equal(1, alive())
        assert(util.wait_until(function() return alive() == 0 end, 5))
        watcher:release()
        -- The pool's counts know it is gone.
        for _, p in ipairs(pg.pools()) do
            if p.size == 7 then
                assert.are.same({ 0, 0 }, { p.open, p.idle })
            end
        end
        -- The pool opens another in its place.
        db = assert(pg.connect(url, { idle_timeout = 1, pool_size = 7 }))
        assert.are_not.equal(pid, assert(db:query("SELECT pg_backend_pid() AS pid"))[1].pid)
        db:release()
    end)

    it("takes connect_timeout from the connection string, and says a failure on one line", function()
        local tcp = require "tendril.tcp"
        local port = tcp.listen("127.0.0.1", 0, function(sock)
            sock:receive("*a") -- takes the connection, answers nothing
        end)
        local t0 = tendril.now()
        local db, err = pg.connect(string.format("postgres://u:p@127.0.0.1:%d/x?connect_timeout=1", port))
        assert.are.same({ nil, "timeout" }, { db, err })
        local took = tendril.now() - t0
        assert.is_true(took > 0.9 and took < 3, took)
        db, err = pg.connect("postgres://postgres:x@127.0.0.1:1/postgres", { timeout = 2 })
        assert.is_nil(db)
        assert.matches("refused", err)
        assert.is_nil(err:find("\n"))
    end)

    it("ends a listener's recv with closed when the server goes, and recv(0) looks without waiting", function()
        local listener = assert(pg.connect(url))
        assert(listener:listen("restart"))
        local t0 = tendril.now()
        assert.are.same({ nil, "timeout" }, { listener:recv(0) })
        assert.is_true(tendril.now() - t0 < 0.5)
        local th = tendril.spawn(function()
            return listener:recv(10)
        end)
        tendril.sleep(0.05)
        server:stop()
        assert.are.same({ true, nil, "closed" }, { th:join() })
        assert(server:start())
        listener:release()
    end)

    it("gives the pool its place back when connecting raises", function()
        local opts = { pool_size = 1, timeout = 1 }
        local ok, err = pcall(string.gsub, "x", "x", function()
            pg.connect(url .. "?application_name=raising", opts)
        end)
        assert.is_false(ok)
        assert.matches("cannot yield", err)
        local db = assert(pg.connect(url .. "?application_name=raising", opts))
        db:release()
    end)

    it("gives rows that encode as a JSON array, NULL as null", function()
        local json = require "tendril.json"
        local db = assert(pg.connect(url))
        local rows = assert(db:query("SELECT 1 AS a, NULL::int AS b UNION ALL SELECT 2, 3"))
        assert.are.same({ "a", "b" }, rows.columns)
        assert.are.equal(json.null, pg.null)
        assert.are.same({ { a = 1, b = json.null }, { a = 2, b = 3 } }, json.decode(json.encode(rows)))
        assert.are.equal("[]", json.encode(assert(db:query("SELECT 1 WHERE false"))))
        -- json.null is a parameter's NULL too.
        assert.are.equal(pg.null, assert(db:query("SELECT $1::int AS n", json.null))[1].n)
        db:release()
    end)

    it("refuses SQL text with a NUL byte rather than run what comes before it", function()
        local db = assert(pg.connect(url))
        local ok, err = pcall(function()
            local rows = db:query("SELECT 1\0; DROP TABLE kv")
            return rows
        end)
        assert.is_false(ok)
        assert.matches("pg_spec%.lua:%d+: db:query: the SQL text holds a NUL byte", err)
        db:release()
    end)

    it("connects again after losing its connection inside a transaction or while listening", function()
        local db = assert(pg.connect(url))
        local pid = assert(db:query("SELECT pg_backend_pid() AS pid"))[1].pid
        local admin = assert(pg.connect(url))
        local ok, err = db:transaction(function(tx)
            assert(admin:query("SELECT pg_terminate_backend($1)", pid))
            tendril.sleep(0.1)
            return tx:query("SELECT 1")
        end)
        assert.is_nil(ok)
        assert.are.equal("closed", err)
        assert.are.equal(1, assert(db:query("SELECT 1 AS x"))[1].x)
        -- A listener: recv says closed; listening again works on a new one.
        assert(db:listen("relisten"))
        pid = assert(db:query("SELECT pg_backend_pid() AS pid"))[1].pid
        assert(admin:query("SELECT pg_terminate_backend($1)", pid))
        assert.are.same({ nil, "closed" }, { db:recv(5) })
        assert(db:listen("relisten"))
        assert(admin:query("SELECT pg_notify('relisten', 'again')"))
        assert.are.equal("again", assert(db:recv(5)).payload)
        admin:release()
        db:close()
    end)

    it("ends a recv with closed when another task closes the handle", function()
        local db = assert(pg.connect(url))
        assert(db:listen("shut"))
        local th = tendril.spawn(function()
            return db:recv(5)
        end)
        tendril.sleep(0.05)
        db:close()
        assert.are.same({ true, nil, "closed" }, { th:join() })
    end)

    it("delivers notifications", function()
        local listener = assert(pg.connect(url))
        assert(listener:listen("events"))
        local sender = assert(pg.connect(url))
        assert(sender:query("SELECT pg_notify('events', 'hello')"))
        local note = assert(listener:recv(5))
        assert.are.same({ "events", "hello" }, { note.channel, note.payload })
        assert.are.same({ nil, "timeout" }, { listener:recv(0.1) })
        sender:release()
        listener:release()
    end)

    it("bounds the pool, and waits for a connection to come back", function()
        local opts = { pool_size = 2, timeout = 0.3 }
        local a = assert(pg.connect(url, opts))
        local b = assert(pg.connect(url, opts))
        local t0 = tendril.now()
        assert.are.same({ nil, "timeout" }, { pg.connect(url, opts) })
        assert.is_true(tendril.now() - t0 >= 0.29)
        local th = tendril.spawn(function()
            local c = assert(pg.connect(url, opts))
            local rows = assert(c:query("SELECT 3 AS x"))
            c:release()
            return rows[1].x
        end)
        tendril.sleep(0.05)
        a:release()
        assert.are.same({ true, 3 }, { th:join() })
        b:release()
    end)

    it("holds its bound under 1,000 concurrent callers", function()
        -- (a size of its own: pg.pools() names no connection strings)
        local opts = { pool_size = 13, timeout = 60 }
        local most, threads = 0, {}
        local function open()
            for _, p in ipairs(pg.pools()) do
                if p.size == 13 then
                    return p.open
                end
            end
            return 0
        end
        for i = 1, 1000 do
            threads[i] = tendril.spawn(function()
                local db = assert(pg.connect(url, opts))
                most = math.max(most, open())
                local rows = assert(db:query("SELECT $1::int AS i", i))
                db:release()
                return rows[1].i
            end)
        end
        for i = 1, 1000 do
            assert.are.same({ true, i }, { threads[i]:join() })
        end
        assert.is_true(most >= 1 and most <= 13, most)
    end)

    it("gives a request's connection back when it is clean, else closes it", function()
        local app = testing.app(function(req)
            local db = assert(pg.connect(url, { pool_size = 3 }))
            if req.path == "/open-tx" then
                assert(db:query("BEGIN"))
                db._tx = true -- as db:transaction marks it, had the handler raised inside
            end
            return tostring(assert(db:query("SELECT 1 AS x"))[1].x)
        end)
        local function counts()
            for _, p in ipairs(pg.pools()) do
                if p.size == 3 then
                    return p.open, p.idle
                end
            end
        end
        assert.are.equal("1", assert(app:get("/")).body)
        local open, idle = counts()
        assert.are.equal(open, idle)
        assert.are.equal("1", assert(app:get("/open-tx")).body)
        local open2, idle2 = counts()
        assert.are.same({ open - 1, idle - 1 }, { open2, idle2 })
        app:close()
    end)

    it("survives a server restart: a call in flight fails, the next one reconnects", function()
        local db = assert(pg.connect(url))
        local th = tendril.spawn(function()
            return db:query("SELECT pg_sleep(10)")
        end)
        tendril.sleep(0.1)
        server:stop()
        local ok, rows, err = th:join()
        assert.is_true(ok)
        assert.is_nil(rows)
        assert.are.equal("closed", err)
        assert(server:start())
        assert.are.equal(1, assert(db:query("SELECT 1 AS x"))[1].x)
        db:release()
    end)

    it("fails within its timeout when the server cannot be reached, or refuses the password", function()
        local t0 = tendril.now()
        local db, err = pg.connect("postgres://postgres:x@127.0.0.1:1/postgres", { timeout = 2 })
        assert.is_nil(db)
        assert.matches("refused", err)
        assert.is_true(tendril.now() - t0 < 2.5)
        db, err = pg.connect(string.format("postgres://postgres:wrong@127.0.0.1:%d/postgres", server.port))
        assert.is_nil(db)
        assert.matches("password authentication failed", err)
    end)
end)

describe("the README's PostgreSQL block", function()
    it("runs as written", function()
        local server = pg_server.start()
        local db = assert(pg.connect(server:url()))
        assert(db:query("CREATE TABLE users (id int PRIMARY KEY, name text)"))
        assert(db:query("INSERT INTO users VALUES (1, 'ada')"))
        db:release()
        local app = testing.app(util.readme_handler('require "tendril.pg"',
            '"postgres://app:secret@127.0.0.1/app"', '"' .. server:url() .. '"'))
        assert.are.equal("ada\n", assert(app:get("/?id=1")).body)
        assert.are.equal(404, assert(app:get("/?id=2")).status)
        app:close()
        server:remove()
    end)
end)
