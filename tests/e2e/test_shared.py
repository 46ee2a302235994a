"""tendril.shared in one process (--shared without --workers): every
method's answers as a handler sees them, eviction and "too large", expiry,
misuse raising at the caller's line, and watches (prefixes, timeouts,
overflow, the end of the handler that made one)."""
import threading
import time

from harness import STATS_FILES, Server, ServerTestCase, assert_nothing_left, deadline, get, main, poll

APP = r'''
local tendril = require "tendril"
local shared = require "tendril.shared"
local json_ok, cjson = pcall(require, "cjson")
local d = shared.dict("cache")
local small = shared.dict("small")

local function show(...)
    local n = select("#", ...)
    local out = {}
    for i = 1, n do
        local v = select(i, ...)
        out[i] = type(v) == "string" and string.format("%q", v) or tostring(v)
    end
    return table.concat(out, " ")
end

local routes = {}

routes["/basics"] = function()
    d:flush_all()
    local r = {}
    r[#r + 1] = show(d:get("a"))
    r[#r + 1] = show(d:set("a", "x"))
    r[#r + 1] = show(d:get("a"))
    r[#r + 1] = show(d:set("n", 1.5))
    r[#r + 1] = show(d:get("n"))
    r[#r + 1] = show(d:set("b", false))
    r[#r + 1] = show(d:get("b"))
    r[#r + 1] = show(d:set("e", ""))
    r[#r + 1] = show(d:get("e"))
    r[#r + 1] = show(d:add("a", "y"))
    r[#r + 1] = show(d:add("c", "y"))
    r[#r + 1] = show(d:replace("zz", 1))
    r[#r + 1] = show(d:replace("c", "z"))
    r[#r + 1] = show(d:get("c"))
    r[#r + 1] = show(d:incr("cnt", 1))
    r[#r + 1] = show(d:incr("cnt", 1, 10))
    r[#r + 1] = show(d:incr("cnt", -3))
    r[#r + 1] = show(d:incr("a", 1))
    r[#r + 1] = show(d:delete("a"))
    r[#r + 1] = show(d:get("a"))
    r[#r + 1] = show(d:set("c", nil))
    r[#r + 1] = show(d:get("c"))
    r[#r + 1] = show(d:ttl("n"))
    r[#r + 1] = show(d:ttl("nope"))
    local keys = d:keys()
    table.sort(keys)
    r[#r + 1] = table.concat(keys, ",")
    r[#r + 1] = show(#d:keys(2))
    r[#r + 1] = show(d:flush_all())
    r[#r + 1] = show(#d:keys(0))
    r[#r + 1] = show(d:name(), tostring(d) == "tendril.shared.dict(cache)", shared.dict("cache") == d)
    return table.concat(r, "\n")
end

routes["/ttl"] = function()
    d:set("t", "v", 0.05)
    local before = d:ttl("t")
    d:incr("i", 1, 0, 0.05)
    tendril.sleep(0.1)
    return show(before > 0 and before <= 0.05, d:get("t"), d:get("i"), d:ttl("t"))
end

routes["/evict"] = function()
    small:flush_all()
    local big = string.rep("x", 1000)
    local evicted = 0
    for i = 1, 200 do
        local ok, err, how = small:set("k" .. i, big)
        assert(ok == true and err == nil)
        if how == "evicted" then evicted = evicted + 1 end
    end
    local first, last = small:get("k1"), small:get("k200")
    local huge = show(small:set("huge", string.rep("y", 128 * 1024)))
    return show(evicted > 0, first, last == big) .. " " .. huge .. " " .. show(small:get("k200") == big)
end

routes["/misuse"] = function(req)
    local what = req.query.what
    local ok, err = pcall(function()
        if what == "key" then d:get(42)                      -- the line
        elseif what == "value" then d:set("k", {})
        elseif what == "ttl" then d:set("k", 1, -1)
        elseif what == "incr" then d:incr("k", "1")
        elseif what == "empty" then d:get("")
        elseif what == "unknown" then shared.dict("nope")
        end
    end)
    return tostring(err)
end

routes["/watch"] = function(req)
    local sub = d:watch("user:")
    local got = {}
    while true do
        local key, err = sub:recv(tonumber(req.query.timeout) or 5)
        if not key then
            got[#got + 1] = "<" .. err .. ">"
            break
        end
        got[#got + 1] = key
        if key == "user:last" then break end
    end
    return table.concat(got, " ")
end

routes["/watch-overflow"] = function()
    local sub = d:watch("o:", {max_queue = 3})
    for i = 1, 10 do d:set("o:" .. i, i) end
    tendril.sleep(0.05)
    local out = {}
    for _ = 1, 5 do
        local key, err = sub:recv(0.2)
        out[#out + 1] = key or "<" .. err .. ">"
    end
    d:set("o:again", 1)
    out[#out + 1] = sub:recv(1) or "?"
    sub:close()
    out[#out + 1] = select(2, sub:recv(0))
    return table.concat(out, " ")
end

routes["/ring-loss"] = function()
    -- a burst of changes to other keys, more than the ring holds, before
    -- this worker reads it: the loss comes first, then what was read
    local sub = d:watch("cfg:")
    for i = 1, 6000 do d:set("session:" .. i, i) end
    d:set("cfg:a", 1)
    local out = {}
    for _ = 1, 3 do
        local key, err = sub:recv(0.5)
        out[#out + 1] = key or "<" .. err .. ">"
    end
    sub:close()
    return table.concat(out, " ")
end

routes["/set"] = function(req)
    d:set(req.query.key, "v")
    return "set " .. req.query.key
end

routes["/rewatch"] = function()
    -- the last watch closes, and a new one comes before the pump ends
    local a = d:watch("a")
    a:recv(0.05)
    a:close()
    local b = d:watch("b")
    d:set("b1", 1)
    local k1, e1 = b:recv(1)
    b:close()
    tendril.sleep(0.05)
    local c = d:watch("c")
    d:set("c1", 1)
    local k2, e2 = c:recv(1)
    return tostring(k1 or e1) .. " " .. tostring(k2 or e2)
end

routes["/keep-watching"] = function()
    d:watch("left:")  -- never closed: it ends with this handler
    return "done"
end

return function(req, res)
    if req.path == "/stats" then
        return require("stats_line")()
    end
    local f = routes[req.path]
    if not f then
        res.status = 404
        return "no"
    end
    return f(req, res)
end
'''


class SharedTest(ServerTestCase):
    APP = APP
    ARGS = ["--shared", "cache=1m", "--shared", "small=64k"]
    FILES = STATS_FILES

    def test_every_method(self):
        lines = get(self.port, "/basics").body.decode().split("\n")
        self.assertEqual(lines, [
            "nil",
            "true",
            '"x"',
            "true",
            "1.5",
            "true",
            "false",
            "true",
            '""',
            'nil "exists"',
            "true",
            'nil "not found"',
            "true",
            '"z"',
            'nil "not found"',
            "11",
            "8",
            'nil "not a number"',
            "true",
            "nil",
            "true",
            "nil",
            "0",
            'nil "not found"',
            "b,cnt,e,n",
            "2",
            "true",
            "0",
            '"cache" true true',
        ])

    def test_expiry(self):
        self.assertEqual(get(self.port, "/ttl").body, b'true nil nil nil "not found"')

    def test_full_evicts_least_recently_used_and_refuses_too_large(self):
        self.assertEqual(get(self.port, "/evict").body, b'true nil true nil "too large" true')

    def test_misuse_raises_at_the_callers_line(self):
        cases = {
            "key": "get: a key is a string, got number",
            "value": "set: a value is a string, a number or a boolean, got table",
            "ttl": "set: a ttl is a number of seconds >= 0",
            "incr": "incr: the increment is a number, got string",
            "empty": "get: a key is 1 to 65535 bytes, got 0",
            "unknown": "shared.dict: no dictionary named 'nope' (declare it: tendril serve APP.lua "
                       "--shared nope=SIZE; declared: cache, small)",
        }
        for what, message in cases.items():
            body = get(self.port, "/misuse?what=" + what).body.decode()
            self.assertIn(message, body, what)
            self.assertRegex(body, r"app\.lua:\d+: ", what)
        line = 1 + APP.split("\n").index(next(x for x in APP.split("\n") if x.endswith("-- the line")))
        self.assertIn("app.lua:%d:" % line, get(self.port, "/misuse?what=key").body.decode())

    def test_watch_by_prefix(self):
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", get(self.port, "/watch")))
        t.start()
        time.sleep(deadline(0.2))
        for key in ("other:1", "user:1", "user:2", "nouser:3", "user:last"):
            get(self.port, "/set?key=" + key)
        t.join()
        self.assertEqual(out["r"].body, b"user:1 user:2 user:last")
        self.assertEqual(get(self.port, "/watch?timeout=0.05").body, b"<timeout>")

    def test_watch_overflow_is_reported_once(self):
        self.assertEqual(get(self.port, "/watch-overflow").body, b"o:1 o:2 o:3 <overflow> <timeout> o:again closed")

    def test_a_ring_overflow_comes_before_what_follows_it(self):
        self.assertEqual(get(self.port, "/ring-loss").body, b"<overflow> cfg:a <timeout>")

    def test_watching_again_after_the_last_watch_closed(self):
        self.assertEqual(get(self.port, "/rewatch").body, b"b1 c1")

    def test_a_watch_ends_with_its_handler(self):
        for _ in range(3):
            self.assertEqual(get(self.port, "/keep-watching").body, b"done")
        get(self.port, "/set?key=left:1")
        assert_nothing_left(self, self.port)


class SharedAbsentTest(ServerTestCase):
    APP = 'local ok, err = pcall(require("tendril.shared").dict, "x")\nreturn function() return err end\n'

    def test_without_declarations(self):
        self.assertIn("no dictionary named 'x' (declare it: tendril serve APP.lua --shared x=SIZE)",
                      get(self.port).body.decode())


class WatchAtShutdownTest(ServerTestCase):
    APP = r'''
        local d = require("tendril.shared").dict("c")
        return function()
            local sub = d:watch("")
            return tostring(select(2, sub:recv()))
        end
    '''
    ARGS = ["--shared", "c=64k"]

    def test_sigterm_ends_a_waiting_watch(self):
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", get(self.port, "/")))
        t.start()
        time.sleep(deadline(0.3))
        self.server.signal(15)
        t.join()
        self.assertEqual(out["r"].body, b"closed")


if __name__ == "__main__":
    main()
