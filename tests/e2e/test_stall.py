"""The loop-stall guard: Lua code that holds the event loop is reported
with the request, the duration and, where a hook can see it, file:line,
while it lasts; a stop signal still ends a server whose loop is stuck."""
import re
import signal
import socket
import time

from harness import Server, TestCase, connect, deadline, get, main, poll

APP = r'''
local function busy(seconds)
    local t = os.clock()
    while os.clock() - t < seconds do end    -- line 4
end
jit.off(busy, true)

local function compiled(n)
    local x = 0
    for i = 1, n do x = (x + i) % 1000003 end
    return x
end

return function(req)
    local p = req.path
    if p == "/interpreted" then
        busy(0.4)
    elseif p == "/c-call" then
        os.execute("sleep 0.4")                  -- line 19
    elseif p == "/forever" then
        busy(1e9)
    elseif p == "/forever-compiled" then
        local x = 0
        while true do x = x + 1 end
    elseif p == "/compiled" then
        local n, t = 1e6, os.clock()
        repeat
            compiled(n)
            n = n * 2
        until os.clock() - t > 0.3
    end
    return "done"
end
'''

STALL = re.compile(r"\[warn\] stall: (\S+ \S+) held the event loop for (\d+) ms(.*)")


ONGOING = re.compile(r"\[warn\] stall: (\S+ \S+) has held the event loop for (\d+) ms and is still running(.*)")


def stalls(server):
    return [m.groups() for m in STALL.finditer(server.stderr())]


def ongoing(server):
    return [m.groups() for m in ONGOING.finditer(server.stderr())]


def start_forever(srv, path):
    """Sends a request whose handler never yields; returns its socket."""
    s = connect(srv.port)
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
    return s


class StallTest(TestCase):
    def test_reports_request_duration_and_line(self):
        with Server(APP) as srv:
            self.assertEqual(get(srv.port, "/").body, b"done")
            self.assertEqual(get(srv.port, "/interpreted").body, b"done")
            self.assertEqual(get(srv.port, "/c-call").body, b"done")
            self.assertTrue(poll(lambda: len(stalls(srv)) == 2, 5), srv.stderr())
            (who1, ms1, where1), (who2, ms2, where2) = stalls(srv)
            self.assertEqual(who1, "GET /interpreted")
            # Reported only once past the threshold, whatever the machine's load.
            self.assertGreaterEqual(int(ms1), 200)
            self.assertRegex(where1, r"^, at \S*app\.lua:4$")
            self.assertEqual(who2, "GET /c-call")
            self.assertGreaterEqual(int(ms2), 200)
            self.assertRegex(where2, r"^, at \S*app\.lua:19$")

    def test_compiled_code_is_reported_without_a_line_guarantee(self):
        with Server(APP) as srv:
            self.assertEqual(get(srv.port, "/compiled").body, b"done")
            self.assertTrue(poll(lambda: stalls(srv), 5), srv.stderr())
            who, ms, _ = stalls(srv)[0]
            self.assertEqual(who, "GET /compiled")
            self.assertGreaterEqual(int(ms), 200)

    def test_threshold_and_off(self):
        # Far above 0.4 s of CPU, even on a loaded machine.
        with Server(APP, args=["--stall-warn-ms", "6000"]) as srv:
            get(srv.port, "/interpreted")
            get(srv.port, "/c-call")
        self.assertEqual(stalls(srv), [])
        with Server(APP, args=["--stall-warn-ms", "0"]) as srv:
            get(srv.port, "/interpreted")
        self.assertEqual(stalls(srv), [])
        with Server(APP, args=["--stall-warn-ms", "100"]) as srv:
            get(srv.port, "/interpreted")
            self.assertTrue(poll(lambda: stalls(srv), 5))



class RunawayTest(TestCase):
    def test_reported_while_it_lasts(self):
        with Server(APP, leftovers_ok=True) as srv:
            c = start_forever(srv, "/forever")
            # At the threshold, then again every few seconds.
            self.assertTrue(poll(lambda: len(ongoing(srv)) >= 2, 15), srv.stderr())
            (who1, ms1, where1), (who2, ms2, where2) = ongoing(srv)[:2]
            self.assertEqual(who1, "GET /forever")
            self.assertGreaterEqual(int(ms1), 200)
            self.assertLess(int(ms1), deadline(2000))
            self.assertRegex(where1, r"^, at \S*app\.lua:4$")
            self.assertEqual(who2, "GET /forever")
            self.assertGreaterEqual(int(ms2) - int(ms1), 4000)
            self.assertEqual(stalls(srv), [])  # not over yet
            srv.proc.kill()
            srv.proc.wait()
            c.close()

    def test_compiled_loop_names_the_request(self):
        with Server(APP, leftovers_ok=True) as srv:
            c = start_forever(srv, "/forever-compiled")
            self.assertTrue(poll(lambda: ongoing(srv), 10), srv.stderr())
            who, ms, _ = ongoing(srv)[0]
            self.assertEqual(who, "GET /forever-compiled")
            srv.proc.kill()
            srv.proc.wait()
            c.close()

    def stop_stuck(self, args, signals, path="/forever"):
        """Signals a server stuck in a handler; returns (exit status,
        seconds from the first signal to the exit, stderr)."""
        srv = Server(APP, args=args, leftovers_ok=True).start()
        c = start_forever(srv, path)
        time.sleep(0.5 * deadline(1))
        start = time.monotonic()
        for sig in signals:
            srv.signal(sig)
            time.sleep(0.2)
        code = srv.wait(20)
        took = time.monotonic() - start
        c.close()
        srv.assert_clean()
        return code, took, srv.stderr()

    def test_sigterm_stops_a_stuck_server_at_the_shutdown_timeout(self):
        code, took, err = self.stop_stuck(["--shutdown-timeout", "2"], [signal.SIGTERM])
        self.assertEqual(code, 1)
        self.assertGreaterEqual(took, 1.9)
        self.assertLess(took, deadline(6))
        last = err.strip().splitlines()[-1]
        self.assertRegex(last, r"\[crit\] shutdown: GET /forever has held the event loop for \d+ ms, "
                               r"at \S*app\.lua:4; exiting without draining$")

    def test_a_second_signal_stops_it_at_once(self):
        code, took, err = self.stop_stuck(["--shutdown-timeout", "30"], [signal.SIGINT, signal.SIGINT],
                                          "/forever-compiled")
        self.assertEqual(code, 1)
        self.assertLess(took, deadline(5))
        self.assertIn("[crit] shutdown: GET /forever-compiled has held the event loop", err)

    def test_sigint_with_the_guard_off(self):
        code, took, err = self.stop_stuck(["--shutdown-timeout", "1", "--stall-warn-ms", "0"], [signal.SIGINT])
        self.assertEqual(code, 1)
        self.assertLess(took, deadline(5))
        self.assertEqual(ongoing_text(err), [])
        self.assertIn("[crit] shutdown: GET /forever has held the event loop", err)


def ongoing_text(err):
    return ONGOING.findall(err)


if __name__ == "__main__":
    main()
