"""Synchronous-looking I/O inside handlers, as only the outside sees it: a
thread's failure in the log, a thousand upstream calls at once and the
descriptors they leave. What a script sees of the HTTP client, TCP, DNS,
files, processes, threads, coroutines and require is specified in
tests/runtime (run by `tendril test`)."""
from harness import Server, TestCase, burst, get, main, poll

APP = r'''
local tendril = require "tendril"
local http = require "tendril.http"
local UP2 = os.getenv("UP2")

local routes = {}
function routes.burst()
    local res, err = http.get(UP2 .. "/")
    if not res then return "error: " .. tostring(err) end
    return res.status .. " " .. tostring(res.body)
end
function routes.spawn_errors()
    local th = tendril.spawn(function() tendril.sleep(0.01) error("thread boom") end)
    local ok, err = th:join()
    local slow = tendril.spawn(function() tendril.sleep(0.5) tendril.log("warn", "slow thread done") end)
    local ok2, err2 = slow:join(0.1)
    return tostring(ok) .. " " .. err .. " | " .. tostring(ok2) .. " " .. err2
end

return function(req, res)
    local route = routes[req.path:sub(2)]
    if not route then return 404, nil, "no route" end
    return route(req, res)
end
'''


class IoTest(TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up2 = Server("return function() return 'upstream two' end\n").start()
        cls.server = Server(APP, env={"UP2": "http://127.0.0.1:%d" % cls.up2.port}).start()
        cls.port = cls.server.port

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        cls.up2.stop()
        assert code == 0, cls.server.stderr()

    def body(self, target):
        return get(self.port, target).body.decode()

    def test_thread_errors_are_logged_and_a_join_times_out(self):
        text = self.body("/spawn_errors")
        self.assertRegex(text, r"^false \S*app\.lua:\d+: thread boom \| false timeout$")
        self.assertTrue(poll(lambda: "tendril.spawn: a thread failed" in self.server.stderr(), 5))
        # The join timed out; the thread ran on and ended.
        self.assertTrue(poll(lambda: "slow thread done" in self.server.stderr(), 5))

    def test_thousand_concurrent_upstream_gets(self):
        fds_before = self.server.open_fds()
        n = 1000
        results = burst(self.port, "/burst", n)
        failures = [r for r in results if r != b"200 upstream two"]
        self.assertEqual(failures, [], "%d of %d failed" % (len(failures), n))
        # Once the burst is over the upstream pool keeps at most 64 idle
        # connections; everything else is closed.
        self.assertTrue(poll(lambda: self.server.open_fds() <= fds_before + 64, 10),
                        "%d fds before, %d after" % (fds_before, self.server.open_fds()))


if __name__ == "__main__":
    main()
