"""The task model: a coroutine kept across requests never acts on another
request's task, objects with several waiters wake them all, and nothing is
left behind afterwards."""
import threading
import time

from harness import (STATS_FILES, Reader, ServerTestCase, assert_nothing_left, connect, deadline, get, main,
                     poll)

APP = r'''
local tendril = require "tendril"
local stats_line = require "stats_line"

-- A generator kept across requests: created by one request's task, resumed
-- by later requests' tasks.
local gen

local routes = {}

function routes.make()
    gen = coroutine.wrap(function()
        while true do
            tendril.sleep(0.4)
            coroutine.yield("tick")
        end
    end)
    return "made"
end

function routes.tick()
    local t0 = tendril.now()
    local v = gen()
    return string.format("%s %.2f", tostring(v), tendril.now() - t0)
end

function routes.sleep()
    local t0 = tendril.now()
    tendril.sleep(1)
    return string.format("slept %.2f", tendril.now() - t0)
end

function routes.body2(req)
    local th = tendril.spawn(function() return req:body() end)
    local mine, err = req:body()
    local ok, theirs = th:join(10)
    return table.concat({ tostring(mine), tostring(err), tostring(ok), tostring(theirs) }, "|")
end

function routes.stats() return stats_line() end

return function(req, res)
    local route = routes[req.path:sub(2)]
    if not route then return 404 end
    return route(req, res)
end
'''


def timed_get(port, target, out, key):
    t0 = time.monotonic()
    try:
        out[key] = (get(port, target).body.decode(), time.monotonic() - t0)
    except Exception as e:  # noqa: BLE001 - recorded and asserted by the test
        out[key] = (repr(e), time.monotonic() - t0)


class TaskTest(ServerTestCase):
    APP = APP
    FILES = STATS_FILES

    def test_coroutine_kept_across_requests_waits_for_its_resumer(self):
        # Finding 1: the generator made by one request's task used to act on
        # whatever request held that (recycled) task when another request
        # resumed it: a sleeping request woke early and tasks went back to
        # the pool twice.
        self.assertEqual(get(self.port, "/make").body, b"made")
        out = {}
        sleeper = threading.Thread(target=timed_get, args=(self.port, "/sleep", out, "sleep"))
        sleeper.start()
        time.sleep(0.1)  # the sleeper holds the recycled task now
        ticker = threading.Thread(target=timed_get, args=(self.port, "/tick", out, "tick"))
        ticker.start()
        sleeper.join(deadline(10))
        ticker.join(deadline(10))
        body, _ = out["sleep"]
        self.assertRegex(body, r"^slept \d\.\d\d$")
        self.assertGreaterEqual(float(body.split()[1]), 0.99, "the sleeping request woke early")
        body, _ = out["tick"]
        self.assertRegex(body, r"^tick \d\.\d\d$")
        self.assertGreaterEqual(float(body.split()[1]), 0.39, "the generator's sleep did not wait")
        # Every later request is answered, and the generator still works.
        for _ in range(10):
            self.assertEqual(get(self.port, "/make").body, b"made")
        self.assertRegex(get(self.port, "/tick").body.decode(), r"^tick ")
        assert_nothing_left(self, self.port)

    def test_two_waiters_on_one_request_body(self):
        # Finding 2: a second wait for the body used to overwrite the first;
        # the spawned thread hung for ever and a wait stayed counted.
        s = connect(self.port)
        s.sendall(b"POST /body2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        time.sleep(0.3)  # both wait for the body now
        s.sendall(b"hello")
        r = Reader(s).response()
        s.close()
        self.assertEqual(r.body, b"hello|nil|true|hello")
        assert_nothing_left(self, self.port)


if __name__ == "__main__":
    main()
